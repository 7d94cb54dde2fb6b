//! `cairn up`: three local store nodes as child processes, stopped by Ctrl-C
//! (SIGINT), and a clear error when a port it needs is taken; then
//! `cairn up --drill` on the same ports.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cairn_bin, etcdctl, wait_until};

const ENDPOINTS: &str = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379";

/// `cairn up` needs fixed ports (and `--drill` a second control plane on
/// 9001); when something else holds them (another test run, a local etcd)
/// this test cannot run, and says so.
fn ports_free() -> bool {
    // Stores, control planes, gateways (HTTP, HTTPS, metrics) and echo.
    [
        2379, 2380, 22379, 22380, 32379, 32380, 9000, 9001, 9080, 9081, 9443, 9444, 9091, 9092,
        9088,
    ]
    .iter()
    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_three_nodes_and_stops_on_ctrl_c() {
    if !ports_free() {
        // The harness keeps its random ports off these; in CI nothing else
        // may hold them.
        assert!(
            !common::in_ci(),
            "cairn up's fixed ports (2379/22379/32379 …) are in use"
        );
        eprintln!("SKIP: cairn up's fixed ports (2379/22379/32379 …) are in use");
        return;
    }
    // A port already in use is named in the error (one test, so that holding
    // the port cannot race with the cluster below).
    {
        let _guard = std::net::TcpListener::bind(("127.0.0.1", 22380)).unwrap();
        let out = Command::new(cairn_bin())
            .args(["up", "--data-dir", "/nonexistent-cairn-test"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("port 22380") && err.contains("in use"),
            "{err}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(cairn_bin())
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let eps: Vec<String> = ENDPOINTS.split(',').map(String::from).collect();
    wait_until(
        Duration::from_secs(30),
        "cairn up's cluster to serve",
        || {
            let eps = eps.clone();
            async move { etcdctl(&eps, &["put", "up-key", "v"], None).success }
        },
    )
    .await;
    // The control plane answers on :9000 (admin API behind the printed key).
    wait_until(
        Duration::from_secs(30),
        "the control plane on :9000",
        || async {
            common::control::request("GET", "http://127.0.0.1:9000/readyz", &[], None)
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    let r = common::control::request(
        "GET",
        "http://127.0.0.1:9000/apisix/admin/routes",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "the admin API needs the key: {}", r.body);
    let out = etcdctl(&eps, &["endpoint", "status"], None);
    let status = out.stdout.clone();
    assert_eq!(status.lines().count(), 3, "{status}");
    assert_eq!(
        status.matches(", true,").count(),
        1,
        "exactly one leader: {status}"
    );

    // Ctrl-C stops all three cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = exited.expect("cairn up exits after Ctrl-C");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "exit {status}; stdout: {stdout}");
    assert!(
        stdout.contains("etcdctl --endpoints="),
        "prints a line to try: {stdout}"
    );
    assert!(
        stdout.contains("console:   http://127.0.0.1:9000/"),
        "prints the console URL: {stdout}"
    );
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("  admin key: "))
        .unwrap_or_else(|| panic!("prints the admin key: {stdout}"));
    assert_eq!(key.len(), 64, "{key}");
    assert!(ports_free(), "every node stopped and released its ports");

    // `cairn up --drill` on the same ports (so in this test, not beside it):
    // the HA scenarios against local processes, which exits non-zero on any
    // FAIL and removes its data dir only when everything passed.
    let out = Command::new(cairn_bin())
        .args(["up", "--drill", "--data-dir"])
        .arg(dir.path().join("drill"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cairn up --drill failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scenarios = ["PASS  0a", "PASS  0b", "PASS  1", "PASS  2a", "PASS  2b"];
    for scenario in scenarios.into_iter().chain(["PASS  3", "PASS  4"]) {
        assert!(stdout.contains(scenario), "{scenario} missing:\n{stdout}");
    }
    // The gateway tier's traffic ran through every scenario (each result
    // is printed as it comes and again in the summary).
    let traffic: std::collections::HashSet<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") && l.contains("gateways kept serving"))
        .collect();
    let traffic = traffic.len();
    assert_eq!(traffic, 5, "{stdout}"); // 0b, 1, 2, 3, 4
    assert!(
        !stdout.contains("FAIL") && !stdout.contains("SKIP"),
        "{stdout}"
    );
    assert!(ports_free(), "the drill stopped every node");
}
