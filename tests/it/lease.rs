//! Leases through cairn-client and etcdctl 3.4 against a real 3-process
//! cluster, run on both etcd (the reference) and Cairn.
//! `cargo test --test it lease::etcd::` / `cairn::`.
//!
//! The minimum TTL is not a constant: etcd raises a grant to
//! ceil(1.5 × election timeout) seconds, and so must Cairn.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::mvccpb::event::EventType;
use cairn_client::{Client, ClientOptions, Code, GetOptions, PutOptions, WatchOptions, Watcher};
use common::{
    etcdctl, etcdctl_bin, etcdctl_ok, have_tool, test_client_options, wait_until, Cluster,
    ClusterOptions, Impl, SLOW,
};

cluster_tests!(
    grant_rules_and_minimum_ttl,
    expiry_deletes_keys_and_emits_delete_events,
    revoke_deletes_attached_keys_in_one_revision,
    time_to_live_and_keep_alive_answers,
    keep_alive_holds_key_across_leader_kill9,
    etcdctl_lease_commands,
);

const NOT_FOUND: &str = "etcdserver: requested lease not found";

/// etcd's minimum lease TTL in seconds: ceil(1.5 × election timeout).
/// The tests that check it run both stores at etcd's timeouts.
fn min_ttl(o: &ClusterOptions) -> i64 {
    (o.election_ms_for(Impl::Etcd) * 3).div_ceil(2 * 1000) as i64
}

fn rev(h: &Option<cairn_client::pb::ResponseHeader>) -> i64 {
    h.as_ref().expect("header").revision
}

async fn put_leased(c: &Client, k: &str, lease: i64) -> i64 {
    let o = PutOptions {
        lease,
        ..Default::default()
    };
    rev(&c.put(k, "v", o).await.unwrap().header)
}

async fn next(w: &mut Watcher) -> cairn_client::pb::WatchResponse {
    tokio::time::timeout(SLOW, w.next())
        .await
        .expect("a watch response within the deadline")
        .expect("watch stream healthy")
}

async fn grant_rules_and_minimum_ttl(imp: Impl) {
    let opts = ClusterOptions::etcd_timeouts();
    let cl = Cluster::start_with(imp, 3, opts.clone()).await;
    let c = cl.client().await;
    let min = min_ttl(&opts);
    assert_eq!(min, 2, "etcd's documented value for the default settings");

    // Below the minimum (and 0): raised to it.
    for ttl in [0, 1, min - 1] {
        let g = c.lease_grant(ttl, 0).await.unwrap();
        assert_eq!(g.ttl, min, "grant {ttl}");
        assert_ne!(g.id, 0);
        assert!(g.error.is_empty());
    }
    // Above it: kept.
    let g = c.lease_grant(min + 7, 0).await.unwrap();
    assert_eq!(g.ttl, min + 7);
    // A client-chosen ID, and the same ID again.
    let g = c.lease_grant(60, 0x1234_5678).await.unwrap();
    assert_eq!((g.id, g.ttl), (0x1234_5678, 60));
    let e = c.lease_grant(60, 0x1234_5678).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    // Too large.
    let e = c.lease_grant(9_000_000_001, 0).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    // Every member lists the live leases (the list is replicated state).
    for n in &cl.nodes {
        let nc = n.client().await;
        wait_until(SLOW, "member lists the client-chosen lease", || {
            let nc = nc.clone();
            async move {
                nc.lease_leases()
                    .await
                    .is_ok_and(|l| l.leases.iter().any(|s| s.id == 0x1234_5678))
            }
        })
        .await;
    }
}

async fn expiry_deletes_keys_and_emits_delete_events(imp: Impl) {
    let opts = ClusterOptions::etcd_timeouts();
    let mut cl = Cluster::start_with(imp, 3, opts.clone()).await;
    let c = cl.client().await;
    let g = c.lease_grant(1, 0).await.unwrap();
    assert_eq!(g.ttl, min_ttl(&opts));
    let f = cl.followers().await[0];
    let fc = cl.nodes[f].client().await;
    let mut w = fc.watch("x/", WatchOptions::prefix()).await.unwrap();
    put_leased(&c, "x/a", g.id).await;
    put_leased(&c, "x/b", g.id).await;
    c.put("x/keep", "v", PutOptions::default()).await.unwrap();

    // Two PUTs and the unleased one, then the expiry's DELETEs.
    let mut deletes = Vec::new();
    let mut puts = 0;
    while deletes.len() < 2 {
        let r = next(&mut w).await;
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            if e.r#type == EventType::Delete as i32 {
                deletes.push((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                ));
            } else {
                puts += 1;
            }
        }
    }
    assert_eq!(puts, 3);
    deletes.sort();
    assert_eq!(deletes[0].0, "x/a");
    assert_eq!(deletes[1].0, "x/b");
    assert_eq!(
        deletes[0].1, deletes[1].1,
        "an expiry deletes all of the lease's keys in one revision"
    );
    let r = c.get("x/", GetOptions::prefix()).await.unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"x/keep".to_vec()]);
    // The lease is gone.
    let t = c.lease_time_to_live(g.id, true).await.unwrap();
    assert_eq!(t.ttl, -1);
    assert_eq!(c.lease_keep_alive_once(g.id).await.unwrap().ttl, 0);
    assert!(!c
        .lease_leases()
        .await
        .unwrap()
        .leases
        .iter()
        .any(|s| s.id == g.id));
    // A put with the expired lease is refused.
    let e = c
        .put(
            "x/c",
            "v",
            PutOptions {
                lease: g.id,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, NOT_FOUND));
}

async fn revoke_deletes_attached_keys_in_one_revision(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let g = c.lease_grant(60, 0).await.unwrap();
    for k in ["r/1", "r/2", "r/3"] {
        put_leased(&c, k, g.id).await;
    }
    let before = rev(&c
        .put("r/free", "v", PutOptions::default())
        .await
        .unwrap()
        .header);
    let mut w = c
        .watch(
            "r/",
            WatchOptions {
                start_revision: before + 1,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let rv = c.lease_revoke(g.id).await.unwrap();
    assert_eq!(
        rev(&rv.header),
        before + 1,
        "one revision for the whole revoke"
    );
    let r = next(&mut w).await;
    let mut got: Vec<(i32, Vec<u8>, i64)> = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (e.r#type, kv.key.clone(), kv.mod_revision)
        })
        .collect();
    got.sort();
    let d = EventType::Delete as i32;
    assert_eq!(
        got,
        vec![
            (d, b"r/1".to_vec(), before + 1),
            (d, b"r/2".to_vec(), before + 1),
            (d, b"r/3".to_vec(), before + 1)
        ],
        "the revoke's deletes arrive together"
    );
    let left = c.get("r/", GetOptions::prefix()).await.unwrap();
    assert_eq!(left.kvs.len(), 1);
    assert_eq!(left.kvs[0].key, b"r/free");
    // Revoking it again, or an ID never granted: NotFound.
    for id in [g.id, 0x7777] {
        let e = c.lease_revoke(id).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, NOT_FOUND), "{id}");
    }
    // A revoke of a lease without keys changes no key but must not fail.
    let g2 = c.lease_grant(60, 0).await.unwrap();
    c.lease_revoke(g2.id).await.unwrap();
}

async fn time_to_live_and_keep_alive_answers(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let g = c.lease_grant(60, 0).await.unwrap();
    put_leased(&c, "l/k2", g.id).await;
    put_leased(&c, "l/k1", g.id).await;
    // From every member (followers forward to the leader).
    let f = cl.followers().await;
    for i in [f[0], f[1], cl.leader().await] {
        let nc = cl.nodes[i].client().await;
        let t = nc.lease_time_to_live(g.id, true).await.unwrap();
        assert_eq!((t.id, t.granted_ttl), (g.id, 60));
        assert!(t.ttl > 0 && t.ttl <= 60, "{t:?}");
        let mut keys = t.keys.clone();
        keys.sort();
        assert_eq!(keys, vec![b"l/k1".to_vec(), b"l/k2".to_vec()]);
        let t = nc.lease_time_to_live(g.id, false).await.unwrap();
        assert!(t.keys.is_empty());
        // Keep-alive answers the renewed (full) TTL.
        let k = nc.lease_keep_alive_once(g.id).await.unwrap();
        assert_eq!((k.id, k.ttl), (g.id, 60));
        let mut ka = nc.lease_keep_alive(g.id);
        for _ in 0..3 {
            let k = ka.keep_alive().await.unwrap();
            assert_eq!((k.id, k.ttl), (g.id, 60));
        }
        // Unknown lease: TTL -1 / TTL 0, no error.
        let t = nc.lease_time_to_live(0x4242, true).await.unwrap();
        assert_eq!(t.ttl, -1, "{t:?}");
        assert!(t.keys.is_empty());
        let k = nc.lease_keep_alive_once(0x4242).await.unwrap();
        assert_eq!(k.ttl, 0, "{k:?}");
        let mut ka = nc.lease_keep_alive(0x4242);
        assert_eq!(ka.keep_alive().await.unwrap().ttl, 0);
    }
    // After a revoke the same handle answers TTL 0.
    let mut ka = c.lease_keep_alive(g.id);
    assert_eq!(ka.keep_alive().await.unwrap().ttl, 60);
    c.lease_revoke(g.id).await.unwrap();
    assert_eq!(ka.keep_alive().await.unwrap().ttl, 0);
    assert_eq!(c.lease_time_to_live(g.id, true).await.unwrap().ttl, -1);
}

async fn keep_alive_holds_key_across_leader_kill9(imp: Impl) {
    const TTL: i64 = 5;
    let mut cl = Cluster::start(imp, 3).await;
    let leader = cl.leader().await;
    // The keep-alive stream starts on the leader, so the kill breaks it.
    let first = cl.nodes[leader].client_url.clone();
    let mut eps = vec![first.clone()];
    eps.extend(cl.endpoints().into_iter().filter(|e| *e != first));
    let c = Client::connect(eps, test_client_options()).await.unwrap();
    let g = c.lease_grant(TTL, 0).await.unwrap();
    assert_eq!(g.ttl, TTL);
    put_leased(&c, "ka/key", g.id).await;

    let stop = Arc::new(AtomicBool::new(false));
    let renewed = Arc::new(AtomicUsize::new(0));
    let keeper = {
        let (c, stop, renewed) = (c.clone(), stop.clone(), renewed.clone());
        tokio::spawn(async move {
            let mut ka = c.lease_keep_alive(g.id);
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ka.keep_alive().await {
                    Ok(r) => {
                        assert!(r.ttl > 0, "lease lost: {r:?}");
                        renewed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                // The keep-alive cadence (workload pacing, not synchronization).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            errors
        })
    };
    wait_until(SLOW, "first renewals", || {
        let renewed = renewed.clone();
        async move { renewed.load(Ordering::Relaxed) >= 2 }
    })
    .await;

    cl.nodes[leader].kill9();
    let killed_at = Instant::now();
    let at_kill = renewed.load(Ordering::Relaxed);
    // The key must stay for well over 2×TTL after the kill.
    let reader = Client::connect(
        cl.endpoints(),
        ClientOptions {
            retry_budget: Duration::from_secs(20),
            ..test_client_options()
        },
    )
    .await
    .unwrap();
    while killed_at.elapsed() < Duration::from_secs(2 * TTL as u64 + 3) {
        let r = reader.get("ka/key", GetOptions::default()).await.unwrap();
        assert_eq!(
            r.kvs.len(),
            1,
            "key expired {:?} after the leader kill",
            killed_at.elapsed()
        );
        assert_eq!(r.kvs[0].lease, g.id);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        renewed.load(Ordering::Relaxed) > at_kill,
        "no renewal succeeded after the leader was killed"
    );
    let t = reader.lease_time_to_live(g.id, true).await.unwrap();
    assert!(t.ttl > 0, "{t:?}");
    stop.store(true, Ordering::Relaxed);
    let errors = keeper.await.unwrap();
    eprintln!("keep-alive errors during failover: {errors:?}");
}

/// The hex lease ID from `lease <hex> granted with TTL(<n>s)`.
fn granted(out: &str) -> (String, i64) {
    let w: Vec<&str> = out.split_whitespace().collect();
    assert!(
        w.len() == 5 && w[0] == "lease" && w[2] == "granted",
        "unexpected grant output {out:?}"
    );
    let ttl = w[4]
        .trim_start_matches("TTL(")
        .trim_end_matches("s)")
        .parse()
        .unwrap();
    (w[1].to_string(), ttl)
}

async fn etcdctl_lease_commands(imp: Impl) {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let opts = ClusterOptions::etcd_timeouts();
    let mut cl = Cluster::start_with(imp, 3, opts.clone()).await;
    let f = cl.followers().await[0];
    let eps = vec![cl.nodes[f].client_url.clone()];
    let all = cl.endpoints();
    let (id, ttl) = granted(&etcdctl_ok(&eps, &["lease", "grant", "60"], None));
    assert_eq!(ttl, 60);
    let (_, min) = granted(&etcdctl_ok(&eps, &["lease", "grant", "1"], None));
    assert_eq!(min, min_ttl(&opts));
    assert_eq!(
        etcdctl_ok(&eps, &["put", &format!("--lease={id}"), "ek/1", "v1"], None),
        "OK\n"
    );
    assert_eq!(
        etcdctl_ok(&all, &["put", &format!("--lease={id}"), "ek/2", "v2"], None),
        "OK\n"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["lease", "keep-alive", "--once", &id], None),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let out = etcdctl_ok(&eps, &["lease", "timetolive", "--keys", &id], None);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(out.starts_with(&prefix), "{out:?}");
    let rest = &out[prefix.len()..];
    let (remaining, tail) = rest.split_once("s)").expect("remaining(...s)");
    let remaining: i64 = remaining.parse().unwrap();
    assert!(remaining > 0 && remaining <= 60, "{out:?}");
    // Go prints the keys in the order the server gave them.
    assert!(
        tail == ", attached keys([ek/1 ek/2])\n" || tail == ", attached keys([ek/2 ek/1])\n",
        "{out:?}"
    );
    let out = etcdctl_ok(&eps, &["lease", "list"], None);
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.remove(0), "found 2 leases", "{out:?}");
    assert!(lines.contains(&id.as_str()), "{out:?}");
    assert_eq!(
        etcdctl_ok(&eps, &["lease", "revoke", &id], None),
        format!("lease {id} revoked\n")
    );
    assert_eq!(etcdctl_ok(&eps, &["get", "ek/", "--prefix"], None), "");
    assert_eq!(
        etcdctl_ok(&eps, &["lease", "timetolive", &id], None),
        format!("lease {id} already expired\n")
    );
    let o = etcdctl(&eps, &["lease", "revoke", &id], None);
    assert!(!o.success);
    assert!(
        o.stderr
            .contains(&format!("Error: failed to revoke lease ({NOT_FOUND})")),
        "{o:?}"
    );
    let o = etcdctl(&eps, &["lease", "keep-alive", "--once", &id], None);
    assert!(!o.success, "{o:?}");
    assert!(o.stderr.contains(NOT_FOUND), "{o:?}");
    let o = etcdctl(&eps, &["put", &format!("--lease={id}"), "ek/3", "v"], None);
    assert!(!o.success);
    assert!(o.stderr.contains(&format!("Error: {NOT_FOUND}")), "{o:?}");
}
