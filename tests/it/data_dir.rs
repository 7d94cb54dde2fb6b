//! `cairn store` must refuse a data dir it did not write (etcd's `member/`
//! layout, or garbage): exit non-zero with a clear message naming the data dir,
//! never panic, never come up as an empty store. Cairn only: etcd has its own
//! (different) rules for foreign directories.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cairn_bin, free_port, Cluster, Impl};

/// Runs `cairn store` as a single-member cluster on `data_dir`; returns
/// (exit status, stderr) or panics if it is still running after the deadline
/// (it must refuse to start, not serve).
fn run_store(data_dir: &Path) -> (std::process::ExitStatus, String) {
    let (c, p) = (free_port(), free_port());
    let log = data_dir.parent().unwrap().join("cairn-refusal.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(cairn_bin())
        .arg("store")
        .args(["--name", "n0", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args(["--initial-cluster", &format!("n0=http://127.0.0.1:{p}")])
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "refusal",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn cairn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cairn store kept running on a foreign data dir {}; stderr:\n{}",
                data_dir.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_refused(data_dir: &Path) {
    let (status, stderr) = run_store(data_dir);
    assert!(
        !status.success(),
        "cairn store exited 0 on {}; stderr:\n{stderr}",
        data_dir.display()
    );
    assert!(
        !stderr.contains("panicked at"),
        "cairn store panicked instead of refusing cleanly:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("data dir"),
        "stderr does not explain the data dir problem:\n{stderr}"
    );
}

/// Files whose names snapshot the directory (to check that refusing did not
/// modify it).
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().strip_prefix(dir).unwrap().display().to_string(),
                    md.len(),
                ));
            }
        }
    }
    out.sort();
    out
}

mod cairn {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_etcd_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etcd.data");
        if common::available(Impl::Etcd) {
            // A real etcd 3.4 data dir: run a 1-member etcd, write, stop it.
            let mut cl = Cluster::start(Impl::Etcd, 1).await;
            cl.client()
                .await
                .put("k", "v", Default::default())
                .await
                .unwrap();
            assert!(cl.nodes[0].stop());
            std::fs::rename(&cl.nodes[0].data_dir, &dir).unwrap();
        } else {
            // etcd's layout, hand-made.
            std::fs::create_dir_all(dir.join("member/snap")).unwrap();
            std::fs::create_dir_all(dir.join("member/wal")).unwrap();
            std::fs::write(dir.join("member/snap/db"), vec![0u8; 16384]).unwrap();
            std::fs::write(
                dir.join("member/wal/0000000000000000-0000000000000000.wal"),
                vec![0u8; 4096],
            )
            .unwrap();
        }
        let before = listing(&dir);
        assert_refused(&dir);
        assert_eq!(
            listing(&dir),
            before,
            "refusing must not modify the data dir"
        );
    }

    #[tokio::test]
    async fn refuses_garbage_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("garbage.data");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        // Names sled uses, contents that are not sled's; and an unknown file.
        let noise: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join("conf"), &noise[..100]).unwrap();
        std::fs::write(dir.join("db"), &noise).unwrap();
        std::fs::write(dir.join("garbage.bin"), &noise[..777]).unwrap();
        assert_refused(&dir);
    }

    /// A member whose data dir was wiped, restarted with the flags that
    /// bootstrapped it, must not come up as a fresh member of a new cluster
    /// beside the old one: it refuses and says how to replace it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_a_wiped_member_the_cluster_still_knows() {
        let mut cl = Cluster::start(Impl::Cairn, 3).await;
        cl.client()
            .await
            .put("k", "v", Default::default())
            .await
            .unwrap();
        cl.nodes[2].kill9();
        std::fs::remove_dir_all(&cl.nodes[2].data_dir).unwrap();
        cl.nodes[2].restart();
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(code) = cl.nodes[2].exit_code() {
                break code;
            }
            assert!(
                Instant::now() < deadline,
                "a wiped member kept running:\n{}",
                cl.nodes[2].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = cl.nodes[2].log();
        assert_ne!(code, 0, "{log}");
        assert!(log.contains("member remove"), "no way out named:\n{log}");
        // The cluster is untouched: still the same data on the others.
        let r = cl.nodes[0]
            .client()
            .await
            .get("k", Default::default())
            .await
            .unwrap();
        assert_eq!(r.kvs[0].value, b"v");
    }

    /// `ETCD_*` variables Cairn does not read are named in a warning, so a
    /// migrated setting that silently does nothing is noticed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_etcd_variables_are_warned_about() {
        let opts = common::ClusterOptions {
            env: vec![("ETCD_NOT_A_REAL_FLAG".into(), "1".into())],
            ..Default::default()
        };
        let cl = Cluster::start_with(Impl::Cairn, 1, opts).await;
        let log = cl.nodes[0].log();
        assert!(log.contains("ETCD_NOT_A_REAL_FLAG"), "{log}");
    }

    #[tokio::test]
    async fn refuses_data_dir_that_is_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"hello").unwrap();
        assert_refused(&file);
    }
}
