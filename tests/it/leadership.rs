//! Leadership hand-over through etcdctl 3.4, on etcd and on Cairn:
//! `move-leader` to a follower, to the leader itself and to a stranger, and a
//! leader stopped with SIGTERM handing over before it exits.
//!
//! Writes run through a third member the whole time. On Cairn none may fail:
//! a hand-over holds writes back for the moment it takes instead of failing
//! them. etcd 3.4 drops proposals while a transfer is pending, so there the
//! failures are only counted.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_client::{Client, PutOptions};
use common::{etcdctl, etcdctl_ok, wait_until, Cluster, Impl, SLOW};

cluster_tests!(move_leader_to_a_follower, sigterm_on_the_leader_hands_over);

/// A member's ID as etcdctl prints and takes it (hex).
async fn member_id(c: &Cluster, i: usize) -> String {
    let st = c.status(i).await.expect("status");
    format!("{:x}", st.header.expect("header").member_id)
}

/// Puts through `client` until stopped; counts what succeeded and what failed.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(client: Client) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                let mut failed = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    i += 1;
                    match client
                        .put(
                            format!("w/{}", i % 50),
                            i.to_string(),
                            PutOptions::default(),
                        )
                        .await
                    {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                failed
            }
        });
        Writer { stop, ok, task }
    }

    /// Waits for `n` more successful writes.
    async fn progress(&self, n: usize) {
        let from = self.ok.load(Ordering::Relaxed);
        let ok = self.ok.clone();
        wait_until(SLOW, "writes to go on", move || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= from + n }
        })
        .await;
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.task.await.expect("writer");
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// The leader's index and a follower's, and the index of the third member.
async fn roles(c: &mut Cluster) -> (usize, usize, usize) {
    let leader = c.leader().await;
    let followers = c.followers().await;
    (leader, followers[0], followers[1])
}

async fn move_leader_to_a_follower(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    let (_, target, via) = roles(&mut c).await;
    let target_id = member_id(&c, target).await;
    let writer = Writer::start(c.nodes[via].client().await);
    writer.progress(50).await;

    // etcdctl names both ends once the target leads (asked again later, a
    // loaded machine may already have held another election).
    let out = etcdctl_ok(&eps, &["move-leader", &target_id], None);
    assert!(
        out.contains("Leadership transferred from") && out.contains(&format!(" to {target_id}")),
        "move-leader printed: {out}"
    );
    writer.progress(50).await;

    // To the leader itself: nothing to do, as etcd.
    let now = c.leader().await;
    let now_id = member_id(&c, now).await;
    let out = etcdctl_ok(&eps, &["move-leader", &now_id], None);
    assert!(out.contains("Leadership transferred"), "{out}");
    // To a member that does not exist: etcd's error.
    let out = etcdctl(&eps, &["move-leader", "1234abcd"], None);
    assert!(!out.success, "move-leader to a stranger succeeded: {out:?}");
    assert!(
        out.stderr.contains("etcdserver: bad leader transferee"),
        "{}",
        out.stderr
    );
    // To another member, still under load.
    let other = (0..3).find(|&i| i != now).expect("another member");
    let other_id = member_id(&c, other).await;
    let out = etcdctl_ok(&eps, &["move-leader", &other_id], None);
    assert!(
        out.contains(&format!("to {other_id}")),
        "move-leader printed: {out}"
    );
    writer.progress(50).await;

    let (ok, failed) = writer.finish().await;
    assert!(ok >= 150, "only {ok} writes succeeded");
    if imp == Impl::Cairn {
        assert!(
            failed.is_empty(),
            "writes failed during move-leader: {failed:?}"
        );
    }
}

async fn sigterm_on_the_leader_hands_over(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    let leader = c.leader().await;
    // Writes go through the two members that stay.
    let others: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| c.nodes[i].client_url.clone())
        .collect();
    let client = Client::connect(others, common::test_client_options())
        .await
        .expect("client");
    let writer = Writer::start(client);
    writer.progress(50).await;
    let log_before = c.nodes[leader].log().len();
    assert!(c.nodes[leader].stop(), "the leader did not exit on SIGTERM");
    writer.progress(50).await;
    let (ok, failed) = writer.finish().await;
    assert!(ok >= 100, "only {ok} writes succeeded");
    if imp == Impl::Cairn {
        assert!(
            failed.is_empty(),
            "writes failed while the leader stopped: {failed:?}"
        );
        let log = c.nodes[leader].log();
        let since = log.get(log_before..).unwrap_or_default();
        assert!(
            since.contains("stopping: leadership handed over"),
            "no hand-over in the stopped leader's log:\n{since}"
        );
    }
    // It comes back as a follower of the new leader.
    c.nodes[leader].restart();
    c.wait_ready().await;
}
