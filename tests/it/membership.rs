//! Membership changes through etcdctl 3.4, on etcd and on Cairn: replacing a
//! dead member without downtime, removing the leader, etcd's refusal of a
//! change that would leave too few started members, and what a learner
//! serves (etcd 3.4: serializable reads only; Cairn: reads, watches and
//! writes, so gateways can be spread over learners).

use crate::common;

use std::time::Duration;

use cairn_client::PutOptions;
use common::{etcdctl, etcdctl_ok, free_port, wait_until, Cluster, Impl, SLOW};

cluster_tests!(
    replace_dead_member_then_remove_leader,
    refuse_adding_a_voter_while_one_is_down,
    what_a_learner_serves
);

fn member_id(eps: &[String], name: &str) -> String {
    let list = etcdctl_ok(eps, &["member", "list"], None);
    list.lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("{name} not in member list:\n{list}"))
        .to_string()
}

/// Runs a membership command until the cluster accepts it: etcd answers
/// "unhealthy cluster" until every peer has been connected for its health
/// interval, and a refused change changes nothing, so retrying is safe.
async fn accepted(eps: &[String], args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    common::wait_for(SLOW, "membership change to be accepted", || {
        let eps = eps.to_vec();
        let args = args.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = etcdctl(&eps, &args, None);
            out.success.then_some(out.stdout)
        }
    })
    .await
}

/// Waits until the member at `url` answers a serializable get of `key`
/// with `value` (a new member has caught up).
async fn wait_serves(url: &str, key: &str, value: &str) {
    let what = format!("{url} to serve {key}={value}");
    wait_until(SLOW, &what, || {
        let url = vec![url.to_string()];
        async move {
            let out = etcdctl(
                &url,
                &["get", key, "--consistency=s", "--print-value-only"],
                None,
            );
            out.success && out.stdout.trim() == value
        }
    })
    .await;
}

/// `etcdctl member add <name>` (with `extra` flags, e.g. `--learner`), then
/// starts the member with the lines `member add` printed; returns its index.
async fn add_and_start(c: &mut Cluster, eps: &[String], name: &str, extra: &[&str]) -> usize {
    let peer_port = free_port();
    let peer = format!("--peer-urls=http://127.0.0.1:{peer_port}");
    let mut args = vec!["member", "add", name, &peer];
    args.extend_from_slice(extra);
    let added = accepted(eps, &args).await;
    let initial = added
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in:\n{added}"))
        .to_string();
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    c.join_member(name, peer_port, &initial)
}

/// A learner added with `member add --learner` and never promoted. etcd 3.4
/// serves only serializable reads (and Status) on it and refuses the rest
/// with `rpc not supported for learner`. Cairn serves serializable reads and
/// watches from the learner's own applied state (its header names the
/// learner), and forwards writes and linearizable reads to the leader, so a
/// gateway fleet can read from learners without adding voters to the write
/// quorum.
async fn what_a_learner_serves(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    etcdctl_ok(&eps, &["put", "k", "before"], None);
    let l = add_and_start(&mut c, &eps, "l1", &["--learner"]).await;
    let learner = vec![c.nodes[l].client_url.clone()];
    wait_serves(&learner[0], "k", "before").await;
    let list = etcdctl_ok(&eps, &["member", "list", "-w", "json"], None);
    let list = common::json(&list);
    let me = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "l1")
        .unwrap_or_else(|| panic!("l1 not listed: {list}"))
        .clone();
    assert_eq!(me["isLearner"], serde_json::json!(true), "{me}");
    let got = common::json(&etcdctl_ok(
        &learner,
        &["get", "k", "--consistency=s", "-w", "json"],
        None,
    ));
    assert_eq!(got["header"]["member_id"], me["ID"], "the learner answers");

    // A watch on the learner from the next revision (so it sees the write
    // whenever it starts), a write through a voter.
    let rev = got["header"]["revision"].as_i64().unwrap();
    let watch = etcdctl_watch_once(&learner, rev + 1);
    etcdctl_ok(&eps, &["put", "k", "during"], None);
    let watched = watch.await;
    let write = etcdctl(&learner, &["put", "k", "through-the-learner"], None);
    let linearizable = etcdctl(&learner, &["get", "k", "--print-value-only"], None);
    match imp {
        Impl::Etcd => {
            // etcdctl's watch against a learner neither fails nor delivers:
            // the client keeps retrying the refused stream.
            assert!(!watched.success, "{watched:?}");
            for out in [&write, &linearizable] {
                assert!(
                    out.stderr.contains("rpc not supported for learner"),
                    "{out:?}"
                );
            }
        }
        Impl::Cairn => {
            assert!(watched.success, "{watched:?}");
            assert!(watched.stdout.contains("during"), "{watched:?}");
            assert!(write.success, "{write:?}");
            assert!(linearizable.success, "{linearizable:?}");
            assert_eq!(linearizable.stdout.trim(), "through-the-learner");
        }
    }
}

/// `etcdctl watch k --rev=<from>` on `eps` until its first event or for 10 s.
fn etcdctl_watch_once(
    eps: &[String],
    from: i64,
) -> impl std::future::Future<Output = common::Output> {
    let eps = eps.to_vec();
    let rev = format!("--rev={from}");
    let task = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(common::etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(["watch", "k", &rev])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl watch");
        let started = std::time::Instant::now();
        let mut stdout = child.stdout.take().expect("stdout");
        let mut buf = Vec::new();
        // The first event is three lines (PUT, key, value).
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut chunk = [0u8; 256];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.iter().filter(|b| **b == b'\n').count() >= 3 {
                    break;
                }
            }
            buf
        });
        while !reader.is_finished() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("etcdctl watch output");
        let seen = if reader.is_finished() {
            reader.join().unwrap_or_default()
        } else {
            Vec::new()
        };
        let stdout = String::from_utf8_lossy(&seen).into_owned();
        common::Output {
            success: stdout.lines().count() >= 3,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    });
    async move { task.await.expect("watch task") }
}

async fn replace_dead_member_then_remove_leader(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    let client = c.client().await;
    client
        .put("before", "1", PutOptions::default())
        .await
        .unwrap();

    // n2 dies for good; the two others keep serving.
    c.nodes[2].kill9();
    // If n2 led, the survivors elect a new leader first.
    c.leader().await;
    let eps: Vec<String> = c.nodes[..2].iter().map(|n| n.client_url.clone()).collect();
    let dead = member_id(&eps, "n2");
    etcdctl_ok(&eps, &["member", "remove", &dead], None);
    client
        .put("during", "2", PutOptions::default())
        .await
        .unwrap();

    // Its replacement is added, then started with the lines `member add` printed.
    let n3 = add_and_start(&mut c, &eps, "n3", &[]).await;
    let n3_url = c.nodes[n3].client_url.clone();
    wait_serves(&n3_url, "during", "2").await;
    let eps3 = vec![eps[0].clone(), eps[1].clone(), n3_url.clone()];
    let list = etcdctl_ok(&eps3, &["member", "list"], None);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains(", n3, "), "{list}");

    // Removing the leader: a new one takes over and writes go on.
    let leader = c.leader().await;
    let name = c.nodes[leader].name.clone();
    let id = member_id(&eps3, &name);
    accepted(&eps3, &["member", "remove", &id]).await;
    let rest: Vec<String> = eps3
        .iter()
        .filter(|u| **u != c.nodes[leader].client_url)
        .cloned()
        .collect();
    wait_until(
        Duration::from_secs(30),
        "writes after removing the leader",
        || {
            let rest = rest.clone();
            async move { etcdctl(&rest, &["put", "after", "3"], None).success }
        },
    )
    .await;
    let list = etcdctl_ok(&rest, &["member", "list"], None);
    assert_eq!(list.lines().count(), 2, "{list}");
}

async fn refuse_adding_a_voter_while_one_is_down(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    // With one of three members down, adding a fourth voter would need three
    // started members for a quorum of four: refused.
    c.nodes[2].kill9();
    let eps: Vec<String> = c.nodes[..2].iter().map(|n| n.client_url.clone()).collect();
    // etcd and Cairn both count a peer as started while they heard from it
    // within their health interval (5 s); only time reveals a dead one, so
    // this waits that long on purpose.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = etcdctl(
        &eps,
        &[
            "member",
            "add",
            "n9",
            &format!("--peer-urls=http://127.0.0.1:{}", free_port()),
        ],
        None,
    );
    assert!(!out.success, "member add must be refused: {}", out.stdout);
    let last = out.stderr;
    // etcd's words exactly: every member has started, but one is not
    // connected.
    assert!(
        last.contains("Error: etcdserver: unhealthy cluster"),
        "{last}"
    );
    // And nothing changed: still the three members.
    let list = etcdctl(&eps, &["member", "list"], None);
    assert!(list.success, "{}", list.stderr);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    assert!(!list.stdout.contains("n9"), "{}", list.stdout);
}
