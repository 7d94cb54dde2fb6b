//! Durability and recovery with real faults (kill -9, SIGTERM, SIGSTOP), run on
//! both etcd (the reference) and Cairn.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_client::pb::RangeResponse;
use cairn_client::txn::{op_put, Txn};
use cairn_client::{Client, Error, GetOptions, PutOptions};
use common::{wait_for, wait_until, Cluster, ClusterOptions, Impl, SLOW};

cluster_tests!(
    acked_writes_survive_leader_kill9,
    all_members_kill9_and_restart_keep_data_and_revision,
    stopped_member_catches_up_past_snapshot,
    sigstopped_leader_is_replaced_and_rejoins,
    linearizable_reads_right_after_a_full_restart_see_every_acked_write,
);

/// Puts, each acknowledged; right after the last, kill -9 every member and
/// start them all again (the old leader first); then a linearizable get on each member,
/// repeated until it answers, must return the last acknowledged value. A
/// restarted leader that resumed its old term served these reads from the
/// committed index it had saved, which can trail what it acknowledged.
async fn linearizable_reads_right_after_a_full_restart_see_every_acked_write(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let pinned: Vec<Client> = {
        let mut v = Vec::new();
        for n in &cl.nodes {
            let opts = cairn_client::ClientOptions {
                connect_timeout: std::time::Duration::from_millis(200),
                request_timeout: std::time::Duration::from_secs(2),
                retry_budget: std::time::Duration::ZERO,
                ..Default::default()
            };
            v.push(
                Client::connect(vec![n.client_url.clone()], opts)
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let mut stale = Vec::new();
    for round in 0..6 {
        let mut last = String::new();
        for i in 0..30 {
            last = format!("r{round}-{i}");
            c.put("k", last.clone(), PutOptions::default())
                .await
                .unwrap();
        }
        let leader = cl.leader().await;
        for n in &mut cl.nodes {
            n.kill9();
        }
        // The old leader first, the others a moment later: its first reads
        // then come before its peers can tell it what was committed.
        cl.nodes[leader].restart();
        tokio::time::sleep(std::time::Duration::from_millis(100 * round as u64)).await;
        for (i, n) in cl.nodes.iter_mut().enumerate() {
            if i != leader {
                n.restart();
            }
        }
        for (m, p) in pinned.iter().enumerate() {
            let got = wait_for(
                SLOW,
                "a linearizable get to answer after the restart",
                || {
                    let p = p.clone();
                    async move { p.get("k", GetOptions::default()).await.ok() }
                },
            )
            .await;
            let v = got
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            if v.as_deref() != Some(last.as_str()) {
                stale.push(format!(
                    "round {round}, member {m}: read {v:?}, last acked {last}"
                ));
            }
        }
        cl.wait_ready().await;
    }
    assert!(stale.is_empty(), "stale linearizable reads: {stale:#?}");
}

/// A member whose storage fails (here: every WAL fsync from the 30th on,
/// through Cairn's `wal-sync` failpoint) must not linger as a process that
/// still answers serializable reads from state that no longer moves: it
/// exits with a clear message, for its supervisor to restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_storage_fails_exits() {
    let opts = ClusterOptions {
        env: vec![("CAIRN_FAILPOINTS".into(), "wal-sync=30".into())],
        ..Default::default()
    };
    let mut c = Cluster::start_with(Impl::Cairn, 3, opts).await;
    let client = c.client().await;
    // Writes until the members' fsyncs fail; each write may fail once they do.
    for i in 0..200 {
        let _ = client
            .put(format!("/f/{i}"), "v", PutOptions::default())
            .await;
        if (0..3).any(|n| !c.nodes[n].is_running()) {
            break;
        }
    }
    wait_until(SLOW, "a member to exit after its storage failed", || {
        let gone = (0..3).filter(|n| !c.nodes[*n].is_running()).count();
        async move { gone > 0 }
    })
    .await;
    let n = (0..3)
        .find(|n| !c.nodes[*n].is_running())
        .expect("an exited member");
    let log = c.nodes[n].log();
    assert!(
        log.contains("fatal Raft error") && log.contains("failpoint wal-sync"),
        "the member's log names the cause:\n{}",
        common::tail(&c.nodes[n].log_path, 30)
    );
    assert_eq!(c.nodes[n].exit_code(), Some(70));
}

fn rev(r: &RangeResponse) -> i64 {
    r.header.as_ref().expect("header").revision
}

/// Everything under `prefix` as (key, value, create, mod, version), read
/// serializably from one member once it has reached `min_rev`.
async fn member_view(
    c: &Client,
    prefix: &str,
    min_rev: i64,
) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> {
    let r = wait_for(SLOW, &format!("member reaches revision {min_rev}"), || {
        let c = c.clone();
        async move {
            let o = GetOptions {
                serializable: true,
                ..GetOptions::prefix()
            };
            c.get(prefix, o).await.ok().filter(|r| rev(r) >= min_rev)
        }
    })
    .await;
    r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                (kv.value, kv.create_revision, kv.mod_revision, kv.version),
            )
        })
        .collect()
}

/// Like [`member_view`], but read at exactly revision `at` (so writes landing
/// later do not matter).
async fn view_at(c: &Client, prefix: &str, at: i64) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> {
    member_view(c, prefix, at).await;
    let o = GetOptions {
        serializable: true,
        revision: at,
        ..GetOptions::prefix()
    };
    let r = c.get(prefix, o).await.unwrap();
    r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                (kv.value, kv.create_revision, kv.mod_revision, kv.version),
            )
        })
        .collect()
}

#[derive(Default)]
struct Ledger {
    /// key → (value, revision of the acknowledged put)
    acked: BTreeMap<String, (String, i64)>,
    unknown: Vec<String>,
    /// Refused without being applied (client said Unavailable, or a server answer).
    refused: Vec<(String, String)>,
}

async fn acked_writes_survive_leader_kill9(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let c = cl.client().await;
        let (ledger, acked, stop) = (ledger.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2000 writes each, normally stopped far earlier.
            for seq in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("w/{w}/{seq:05}");
                let val = format!("{w}-{seq}");
                let res = c.put(key.clone(), val.clone(), PutOptions::default()).await;
                let mut l = ledger.lock().unwrap();
                match res {
                    Ok(p) => {
                        l.acked
                            .insert(key, (val, p.header.expect("header").revision));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::OutcomeUnknown(_)) => l.unknown.push(key),
                    Err(e) => l.refused.push((key, e.to_string())),
                }
            }
        }));
    }
    let count = |a: &Arc<AtomicUsize>| a.load(Ordering::Relaxed);
    wait_until(SLOW, "100 acknowledged writes", || {
        let a = acked.clone();
        async move { count(&a) >= 100 }
    })
    .await;
    let leader = cl.leader().await;
    cl.nodes[leader].kill9();
    let at_kill = count(&acked);
    // The cluster accepts writes again: acknowledgements keep coming.
    wait_until(
        SLOW,
        "100 more acknowledged writes after the leader's kill -9",
        || {
            let a = acked.clone();
            async move { count(&a) >= at_kill + 100 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    cl.nodes[leader].restart();
    cl.wait_ready().await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let max_rev = ledger.acked.values().map(|(_, r)| *r).max().unwrap();
    eprintln!(
        "acked {}, outcome unknown {}, refused {}",
        ledger.acked.len(),
        ledger.unknown.len(),
        ledger.refused.len()
    );
    for n in &cl.nodes {
        let view = member_view(&n.client().await, "w/", max_rev).await;
        for (k, (v, r)) in &ledger.acked {
            match view.get(k.as_bytes()) {
                Some((got, _, m, _)) => {
                    assert_eq!(got, v.as_bytes(), "{}: {k}", n.name);
                    assert_eq!(
                        m, r,
                        "{}: {k} mod_revision differs from the acked revision",
                        n.name
                    );
                }
                None => panic!(
                    "{}: acknowledged write {k} (revision {r}) is missing",
                    n.name
                ),
            }
        }
        // Writes the client reported as not applied must indeed be absent.
        for (k, why) in &ledger.refused {
            assert!(
                !view.contains_key(k.as_bytes()),
                "{}: {k} present although refused: {why}",
                n.name
            );
        }
    }
    // And the cluster (with the old leader back) takes writes.
    cl.client()
        .await
        .put("after", "x", PutOptions::default())
        .await
        .unwrap();
}

async fn all_members_kill9_and_restart_keep_data_and_revision(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    for i in 0..60 {
        c.put(format!("d/{i:03}"), format!("v{i}"), PutOptions::default())
            .await
            .unwrap();
    }
    let ops: Vec<_> = (0..20)
        .map(|i| op_put(format!("d/t{i:02}"), "t", PutOptions::default()))
        .collect();
    c.txn(Txn::new().and_then(ops)).await.unwrap();
    c.delete("d/000", Default::default()).await.unwrap();
    c.put("d/001", "again", PutOptions::default())
        .await
        .unwrap();
    let before = c.get("d/", GetOptions::prefix()).await.unwrap();
    let before_rev = rev(&before);
    assert_eq!(before_rev, 1 + 60 + 1 + 1 + 1);
    let expected = member_view(&c, "d/", before_rev).await;

    for n in &mut cl.nodes {
        n.kill9();
    }
    for n in &mut cl.nodes {
        n.restart();
    }
    cl.wait_ready().await;

    for n in &cl.nodes {
        let nc = n.client().await;
        let view = member_view(&nc, "d/", before_rev).await;
        assert_eq!(view, expected, "{}: data differs after restart", n.name);
        let r = nc
            .get(
                "d/",
                GetOptions {
                    serializable: true,
                    ..GetOptions::prefix()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            rev(&r),
            before_rev,
            "{}: revision changed by the restart",
            n.name
        );
    }
    let c = cl.client().await;
    let r = c.get("d/", GetOptions::prefix()).await.unwrap();
    assert_eq!(rev(&r), before_rev);
    let p = c.put("d/new", "x", PutOptions::default()).await.unwrap();
    assert_eq!(p.header.unwrap().revision, before_rev + 1);
}

async fn stopped_member_catches_up_past_snapshot(imp: Impl) {
    let opts = ClusterOptions {
        snapshot_count: Some(50),
        snapshot_catchup_entries: Some(10),
        ..Default::default()
    };
    let mut cl = Cluster::start_with(imp, 3, opts).await;
    let c = cl.client().await;
    for i in 0..20 {
        c.put(format!("s/{i:03}"), "early", PutOptions::default())
            .await
            .unwrap();
    }
    let lagging = cl.followers().await[0];
    assert!(
        cl.nodes[lagging].stop(),
        "{} did not exit on SIGTERM",
        cl.nodes[lagging].name
    );
    // Well past the snapshot threshold (and the kept catch-up entries).
    for i in 0..300 {
        c.put(
            format!("s/{:03}", i % 150),
            format!("v{i}"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    }
    c.delete("s/000", Default::default()).await.unwrap();
    let lease = c.lease_grant(600, 0).await.unwrap().id;
    c.put(
        "s/leased",
        "x",
        PutOptions {
            lease,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let want = c.get("s/", GetOptions::prefix()).await.unwrap();
    let want_rev = rev(&want);
    let expected = member_view(&c, "s/", want_rev).await;

    cl.nodes[lagging].restart();
    cl.wait_ready().await;
    let lc = cl.nodes[lagging].client().await;
    let view = member_view(&lc, "s/", want_rev).await;
    assert_eq!(
        view, expected,
        "{} did not converge",
        cl.nodes[lagging].name
    );
    let r = lc
        .get(
            "s/leased",
            GetOptions {
                serializable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.kvs[0].lease, lease);
    assert_eq!(rev(&r), want_rev);
    // It keeps following: a new write shows up there too.
    c.put("s/final", "f", PutOptions::default()).await.unwrap();
    member_view(&lc, "s/final", want_rev + 1).await;

    // Every member has snapshotted and purged its log by now: all of them
    // must come back from a clean stop, and then from kill -9, with the data.
    let expected = member_view(&c, "s/", want_rev + 1).await;
    for kill in [false, true] {
        for n in &mut cl.nodes {
            if kill {
                n.kill9();
            } else {
                assert!(n.stop(), "{} did not exit on SIGTERM", n.name);
            }
        }
        for n in &mut cl.nodes {
            n.restart();
        }
        cl.wait_ready().await;
        for n in &cl.nodes {
            let nc = n.client().await;
            let view = member_view(&nc, "s/", want_rev + 1).await;
            assert_eq!(view, expected, "{} after restart (kill -9: {kill})", n.name);
        }
    }
}

async fn sigstopped_leader_is_replaced_and_rejoins(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    c.put("p/0", "0", PutOptions::default()).await.unwrap();
    let old = cl.leader().await;
    let old_id = cl.status(old).await.unwrap().header.unwrap().member_id;
    cl.nodes[old].sigstop();
    // The others elect a new leader and take writes (the client skips the
    // frozen member after a timeout; a write caught there is OutcomeUnknown).
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let oc = Client::connect(
        others
            .iter()
            .map(|i| cl.nodes[*i].client_url.clone())
            .collect(),
        common::test_client_options(),
    )
    .await
    .unwrap();
    let mut written = 0;
    wait_until(SLOW, "writes succeed without the frozen leader", || {
        let oc = oc.clone();
        written += 1;
        let key = format!("p/{written}");
        async move { oc.put(key, "x", PutOptions::default()).await.is_ok() }
    })
    .await;
    let unknown_while_frozen = c.put("p/maybe", "m", PutOptions::default()).await;
    if let Err(e) = &unknown_while_frozen {
        assert!(
            !matches!(e, Error::Status { .. }),
            "unexpected server answer {e:?}"
        );
    }
    wait_until(SLOW, "a new leader among the others", || {
        let cl = &cl;
        let i = others[0];
        async move {
            cl.status(i)
                .await
                .is_some_and(|s| s.leader != 0 && s.leader != old_id)
        }
    })
    .await;
    cl.nodes[old].sigcont();
    cl.wait_ready().await;
    // Writes that timed out (OutcomeUnknown) may still land later, so compare
    // both views at one fixed revision rather than "latest".
    let target = oc
        .put("p/end", "e", PutOptions::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let expected = view_at(&oc, "p/", target).await;
    assert!(expected.contains_key(&b"p/end"[..]));
    let view = view_at(&cl.nodes[old].client().await, "p/", target).await;
    assert_eq!(view, expected, "old leader did not converge after SIGCONT");
}
