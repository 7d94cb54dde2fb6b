//! APISIX's way of using etcd, on both etcd (the reference) and Cairn:
//! range the `/apisix/` prefix, watch it from `header.revision + 1` on a
//! follower while writes continue, and keep a local copy up to date from the
//! events. A member is killed with SIGKILL during the writes; the watch either
//! goes on (its member survived) or the client resumes it on another member
//! from its last delivered revision + 1 ([`cairn_client::ResumingWatcher`]).
//! At the end, the copy built from range + events equals a fresh range.
//! `cargo test --test it apisix_pattern::etcd::` / `cairn::`.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_client::mvccpb::event::EventType;
use cairn_client::mvccpb::KeyValue;
use cairn_client::txn::{op_put, Txn};
use cairn_client::{Client, DeleteOptions, GetOptions, PutOptions, WatchOptions};
use common::{test_client_options, wait_until, Cluster, Impl, SLOW};

cluster_tests!(
    follower_watch_survives_leader_kill9,
    watch_resumes_elsewhere_when_its_member_is_killed,
);

const PREFIX: &str = "/apisix/";
const DONE: &str = "/apisix/zz_done";
const WRITES: usize = 150;
const KILL_AFTER: usize = 50;
const OK_AFTER_KILL: usize = 20;

async fn follower_watch_survives_leader_kill9(imp: Impl) {
    run(imp, false).await
}

async fn watch_resumes_elsewhere_when_its_member_is_killed(imp: Impl) {
    run(imp, true).await
}

/// One APISIX-like write; errors (an election, an unknown outcome) are the
/// caller's to tolerate: the end state is compared, not the write log.
async fn write(c: &Client, i: usize) -> cairn_client::Result<()> {
    match i % 5 {
        0 | 1 => {
            let k = format!("{PREFIX}routes/{}", i % 23);
            c.put(k, format!("{{\"uri\":\"/r{i}\"}}"), PutOptions::default())
                .await?;
        }
        2 => {
            c.put(format!("/other/{i}"), "x", PutOptions::default())
                .await?;
        }
        3 => {
            let k = format!("{PREFIX}routes/{}", (i * 7) % 23);
            c.delete(k, DeleteOptions::default()).await?;
        }
        _ => {
            c.txn(Txn::new().and_then([
                op_put(
                    format!("{PREFIX}upstreams/{}", i % 5),
                    format!("u{i}"),
                    PutOptions::default(),
                ),
                op_put(
                    format!("{PREFIX}services/{}", i % 3),
                    format!("s{i}"),
                    PutOptions::default(),
                ),
            ]))
            .await?;
        }
    }
    Ok(())
}

async fn run(imp: Impl, kill_watched_member: bool) {
    let mut cl = Cluster::start(imp, 3).await;
    let leader = cl.leader().await;
    let f = cl.followers().await;
    let writer = cl.client().await;
    for i in 0..20 {
        write(&writer, i).await.unwrap();
    }

    // The reader prefers a follower; the others are its failover targets.
    let watched = f[0];
    let eps = vec![
        cl.nodes[f[0]].client_url.clone(),
        cl.nodes[f[1]].client_url.clone(),
        cl.nodes[leader].client_url.clone(),
    ];
    let reader = Client::connect(eps, test_client_options()).await.unwrap();
    let r = reader.get(PREFIX, GetOptions::prefix()).await.unwrap();
    let start = r.header.as_ref().unwrap().revision + 1;
    let mut state: BTreeMap<Vec<u8>, KeyValue> =
        r.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    let mut rw = reader
        .watch_resuming(
            PREFIX,
            WatchOptions {
                start_revision: start,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rw.endpoint(),
        Some(cl.nodes[watched].client_url.as_str()),
        "the watch starts on the follower"
    );

    let watcher = tokio::spawn(async move {
        let mut last_rev = start - 1;
        loop {
            let r = tokio::time::timeout(SLOW, rw.next())
                .await
                .expect("a watch response within the deadline")
                .expect("the watch goes on (resumed if needed)");
            assert!(!r.canceled, "watch canceled: {r:?}");
            let Some(first) = r.events.first() else {
                continue;
            };
            let first = first.kv.as_ref().unwrap().mod_revision;
            assert!(
                first > last_rev,
                "revision {first} after {last_rev}: duplicate or reordered"
            );
            let mut done = false;
            for e in r.events {
                let kv = e.kv.unwrap();
                assert!(kv.mod_revision >= last_rev, "out of order");
                last_rev = kv.mod_revision;
                if e.r#type == EventType::Delete as i32 {
                    state.remove(&kv.key);
                } else {
                    done |= kv.key == DONE.as_bytes();
                    state.insert(kv.key.clone(), kv);
                }
            }
            if done {
                return (state, rw.resumes());
            }
        }
    });

    let progress = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    // WRITES writes, and more until OK_AFTER_KILL of those started after the
    // kill have succeeded: the cluster must go on taking writes.
    let writes = {
        let (c, progress, killed) = (writer.clone(), progress.clone(), killed.clone());
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + SLOW;
            let (mut failed, mut ok_after, mut i) = (0, 0, 20);
            while i < 20 + WRITES || ok_after < OK_AFTER_KILL {
                assert!(
                    std::time::Instant::now() < deadline,
                    "only {ok_after} writes succeeded after the kill"
                );
                let after = killed.load(Ordering::Relaxed);
                match write(&c, i).await {
                    Ok(()) if after => ok_after += 1,
                    Ok(()) => {}
                    Err(_) => failed += 1,
                }
                i += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            failed
        })
    };
    wait_until(SLOW, "writes before the kill", || {
        let p = progress.clone();
        async move { p.load(Ordering::Relaxed) >= KILL_AFTER }
    })
    .await;
    let victim = if kill_watched_member { watched } else { leader };
    cl.nodes[victim].kill9();
    killed.store(true, Ordering::Relaxed);
    let failed = writes.await.unwrap();
    eprintln!("{failed} writes failed around the kill");
    // The end marker, retried until it is certainly written.
    wait_until(SLOW, "end marker written", || {
        let c = writer.clone();
        async move { c.put(DONE, "1", PutOptions::default()).await.is_ok() }
    })
    .await;

    let (state, resumes) = watcher.await.unwrap();
    if kill_watched_member {
        assert!(resumes >= 1, "the watch's member died but it never resumed");
    }
    let fresh = writer.get(PREFIX, GetOptions::prefix()).await.unwrap();
    let fresh: BTreeMap<Vec<u8>, KeyValue> = fresh
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    // A retried end marker may have been written twice; compare up to the
    // watcher's copy of it.
    let mut fresh_cmp = fresh.clone();
    let mut state_cmp = state.clone();
    fresh_cmp.remove(DONE.as_bytes());
    state_cmp.remove(DONE.as_bytes());
    assert_eq!(
        state_cmp.keys().collect::<Vec<_>>(),
        fresh_cmp.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        state_cmp, fresh_cmp,
        "watch-built state differs from a range"
    );
    assert!(fresh.contains_key(DONE.as_bytes()));
}
