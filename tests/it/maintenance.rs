//! Maintenance through etcdctl 3.4: `endpoint hashkv`, `defrag` and
//! `Maintenance.Hash`, against etcd too (the same assertions must hold on
//! the reference). Snapshots are in `snapshot.rs`.

use crate::common;

use common::{etcdctl, etcdctl_ok, etcdctl_put as put, json, wait_for, Cluster, Impl, SLOW};

cluster_tests!(
    hashkv_agrees_on_every_member,
    defrag_succeeds,
    hash_of_the_whole_state
);

/// `Maintenance.Hash` through the generated gRPC client (what etcd client
/// libraries call): every member answers one; on Cairn members at the same
/// revision answer the same hash, and a write changes it.
async fn hash_of_the_whole_state(imp: Impl) {
    use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn_proto::etcdserverpb::HashRequest;
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    let last = put(&eps[..1], "a", "1");
    let hash_on = |ep: String| async move {
        let mut c = MaintenanceClient::connect(ep).await.expect("connect");
        let r = c.hash(HashRequest {}).await.expect("Hash").into_inner();
        (r.hash, r.header.expect("header").revision)
    };
    let mut hashes = Vec::new();
    for ep in &eps {
        let h = wait_for(SLOW, "the member to reach the last write", || {
            let ep = ep.clone();
            async move { Some(hash_on(ep).await).filter(|(_, rev)| *rev >= last) }
        })
        .await;
        hashes.push(h.0);
    }
    if imp == Impl::Cairn {
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    }
    put(&eps[..1], "a", "2");
    let after = hash_on(eps[0].clone()).await.0;
    assert_ne!(after, hashes[0], "a write changes the hash");
}

/// `endpoint hashkv --rev=rev` on one member: Ok((hash, compact_revision)),
/// or Err(etcdctl's stderr).
pub fn hashkv(ep: &str, rev: i64) -> Result<(u64, i64), String> {
    let rev = format!("--rev={rev}");
    let o = etcdctl(
        &[ep.to_string()],
        &["endpoint", "hashkv", &rev, "-w", "json"],
        None,
    );
    if !o.success {
        return Err(o.stderr);
    }
    let v = json(&o.stdout);
    let h = &v[0]["HashKV"];
    Ok((
        h["hash"].as_u64().unwrap_or(0),
        h["compact_revision"].as_i64().unwrap_or(0),
    ))
}

/// The hash at `rev` on `ep`, waiting while the member has not applied
/// `rev` yet (it answers "future revision" until then).
pub async fn hash_at(ep: &str, rev: i64) -> (u64, i64) {
    wait_for(SLOW, &format!("hashkv at {rev} on {ep}"), || {
        let r = hashkv(ep, rev);
        async move {
            match r {
                Ok(h) => Some(h),
                Err(e) if e.contains("future revision") => None,
                Err(e) => panic!("hashkv --rev={rev} on {ep}: {e}"),
            }
        }
    })
    .await
}

async fn hashkv_agrees_on_every_member(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    let leader = &eps[..1];
    put(leader, "a", "1");
    put(leader, "b", "2");
    let mid = put(leader, "a", "3");
    etcdctl_ok(leader, &["del", "b"], None);
    let last = put(leader, "c", "4");

    let first = hash_at(&eps[0], last).await;
    for ep in &eps[1..] {
        assert_eq!(hash_at(ep, last).await, first, "hash at {last} on {ep}");
    }
    let at_mid = hash_at(&eps[0], mid).await;
    assert_ne!(
        at_mid.0, first.0,
        "history after {mid} must change the hash"
    );
    for ep in &eps[1..] {
        assert_eq!(hash_at(ep, mid).await, at_mid, "hash at {mid} on {ep}");
    }

    // Past the current revision: etcd's future-revision error.
    let err = hashkv(&eps[0], last + 100).unwrap_err();
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );

    // Compaction: the same on every member, and the compacted revisions are
    // refused with etcd's error (HashKV refuses the compaction revision itself).
    etcdctl_ok(leader, &["compaction", &mid.to_string()], None);
    let after = hash_at(&eps[0], last).await;
    assert_eq!(after.1, mid, "compact_revision after compaction");
    for ep in &eps[1..] {
        let h = wait_for(SLOW, "compaction applied everywhere", || {
            let r = hash_at(ep, last);
            async move {
                let h = r.await;
                (h.1 == mid).then_some(h)
            }
        })
        .await;
        assert_eq!(h, after, "hash after compaction on {ep}");
    }
    let err = hashkv(&eps[0], mid).unwrap_err();
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
}

async fn defrag_succeeds(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    put(&eps, "k", "v");
    let out = etcdctl_ok(&eps, &["defrag"], None);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("Finished defragmenting etcd member"))
            .count(),
        3,
        "{out}"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["get", "k", "--print-value-only"], None).trim(),
        "v"
    );
}
