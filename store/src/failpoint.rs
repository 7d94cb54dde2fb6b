//! Failpoints for fault-injection tests, as etcd's gofail: named places in
//! the storage code that start failing when a test asks for it. Off unless
//! `CAIRN_FAILPOINTS` is set (`name=N,...`: the N-th and every later pass
//! through `name` fails), so production never takes the branch.
//!
//! Names: `wal-sync` (the WAL's fdatasync returns an I/O error).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Point {
    from: u64,
    passes: AtomicU64,
}

fn points() -> &'static HashMap<String, Point> {
    static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("CAIRN_FAILPOINTS").unwrap_or_default();
        spec.split(',')
            .filter_map(|p| {
                let (name, n) = p.split_once('=')?;
                Some((
                    name.trim().to_string(),
                    Point {
                        from: n.trim().parse().ok()?,
                        passes: AtomicU64::new(0),
                    },
                ))
            })
            .collect()
    })
}

/// Whether this pass through `name` must fail.
pub fn hit(name: &str) -> bool {
    match points().get(name) {
        None => false,
        Some(p) => p.passes.fetch_add(1, Ordering::Relaxed) + 1 >= p.from,
    }
}
