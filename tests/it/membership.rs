//! Membership changes through etcdctl 3.4, on etcd and on Cairn: replacing a
//! dead member without downtime, removing the leader, and etcd's refusal of a
//! change that would leave too few started members.

use crate::common;

use std::time::Duration;

use cairn_client::PutOptions;
use common::{etcdctl, etcdctl_ok, free_port, wait_until, Cluster, Impl, SLOW};

cluster_tests!(
    replace_dead_member_then_remove_leader,
    refuse_adding_a_voter_while_one_is_down
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
    let peer_port = free_port();
    let added = accepted(
        &eps,
        &[
            "member",
            "add",
            "n3",
            &format!("--peer-urls=http://127.0.0.1:{peer_port}"),
        ],
    )
    .await;
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
    let n3 = c.join_member("n3", peer_port, &initial);
    let n3_url = c.nodes[n3].client_url.clone();
    wait_until(SLOW, "the new member to serve the old data", || {
        let url = vec![n3_url.clone()];
        async move {
            let out = etcdctl(
                &url,
                &["get", "during", "--consistency=s", "--print-value-only"],
                None,
            );
            out.success && out.stdout.trim() == "2"
        }
    })
    .await;
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
