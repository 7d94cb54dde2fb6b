//! One pace for the bytes of requests that are refused.
//!
//! A body over the limit is still drained so its client gets the answer,
//! and a large txn refused by its operation count is answered long before
//! parsing it would have finished. Either way a client sending such
//! requests in a loop would, unchecked, have the member and the kernel copy
//! hundreds of megabytes a second that are thrown away, and the faster the
//! refusal the hungrier the loop. So what is refused is taken in, or
//! answered, no faster than [`BYTES_PER_SEC`] for all connections together:
//! such a client is held back by TCP's flow control or by waiting for its
//! answer (costing nobody CPU), and an honest client that sent too much
//! still gets its answer, a little later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pace, all connections together.
pub const BYTES_PER_SEC: f64 = (32 << 20) as f64;

/// Refused requests this large or larger are answered at the pace; small
/// ones (a mistyped key, a bad revision) are answered at once.
pub const PACED_FROM: usize = 64 << 10;

/// Answers a refusal of a request of `len` bytes: at the pace if it is
/// large, else at once.
pub async fn refused<E>(len: usize, e: E) -> E {
    if len >= PACED_FROM {
        pace(len).await;
    }
    e
}

/// When the pace next has room (shared by every connection).
static NEXT: Mutex<Option<Instant>> = Mutex::new(None);

/// When `bytes` more are admitted; the pace is booked for them.
pub fn deadline(bytes: usize) -> Instant {
    let now = Instant::now();
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let start = next.map_or(now, |n| n.max(now));
    let end = start + Duration::from_secs_f64(bytes as f64 / BYTES_PER_SEC);
    *next = Some(end);
    end
}

/// Waits until `bytes` more are admitted.
pub async fn pace(bytes: usize) {
    tokio::time::sleep_until(deadline(bytes).into()).await;
}
