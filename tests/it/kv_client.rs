//! KV semantics through cairn-client against a real 3-process cluster, run on
//! both etcd (the reference: these must pass there) and Cairn.
//! `cargo test --test it kv_client::etcd::` / `cairn::`.

use crate::common;

use cairn_client::pb::{ResponseHeader, TxnResponse};
use cairn_client::txn::{self, op_delete, op_put, op_range, op_txn, CompareResult, Txn};
use cairn_client::{
    Client, Code, DeleteOptions, GetOptions, KeyRange, PutOptions, SortOrder, SortTarget,
};
use common::{wait_until, Cluster, Impl, SLOW};

cluster_tests!(
    revision_rules,
    range_selection_and_limit,
    sort_and_projection,
    revision_filters,
    revision_reads_and_compaction,
    put_and_delete_options,
    txn_compares_and_nesting,
    etcd_error_strings,
    request_too_large_writes_nothing,
    write_via_follower_read_via_other_follower,
    client_fails_over,
    frozen_member_gives_outcome_unknown_for_writes_only,
    member_list_and_status,
    large_nested_txns_are_checked_as_etcd_checks_them,
);

/// A txn near the request limit, built to be expensive to check (thousands
/// of deletes and puts across nested txns), answers with etcd's errors; and
/// a nested txn gets only the ops its parent left of `--max-txn-ops`.
async fn large_nested_txns_are_checked_as_etcd_checks_them(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let mut branches = Vec::new();
    for b in 0..100 {
        let dels: Vec<_> = (0..27)
            .map(|i| op_delete(format!("d{b}-{i}"), Default::default()))
            .collect();
        let puts: Vec<_> = (0..27)
            .map(|i| op_put(format!("p{b}-{i}"), "v", PutOptions::default()))
            .collect();
        branches.push(op_txn(Txn::new().and_then(dels).or_else(puts)));
    }
    // The last branch puts a key an earlier branch deletes.
    branches.push(op_txn(Txn::new().and_then([op_put(
        "d3-7",
        "v",
        PutOptions::default(),
    )])));
    let err = c
        .txn(Txn::new().and_then(branches.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: duplicate key given in txn request"
    );
    branches.pop();
    assert!(c.txn(Txn::new().and_then(branches)).await.is_ok());

    // 100 ops at the top leave 28 for a nested txn: 29 is too many.
    let mut top: Vec<_> = (0..100)
        .map(|i| op_put(format!("t{i}"), "v", PutOptions::default()))
        .collect();
    let nested: Vec<_> = (0..29)
        .map(|i| op_put(format!("n{i}"), "v", PutOptions::default()))
        .collect();
    top[99] = op_txn(Txn::new().and_then(nested));
    let err = c.txn(Txn::new().and_then(top)).await.unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: too many operations in txn request"
    );
}

fn rev(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().expect("header").revision
}

async fn current_rev(c: &Client) -> i64 {
    rev(&c.get("any", GetOptions::default()).await.unwrap().header)
}

fn keys(r: &cairn_client::pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn put(c: &Client, k: &str, v: &str) -> i64 {
    rev(&c.put(k, v, PutOptions::default()).await.unwrap().header)
}

async fn revision_rules(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;

    // Empty store: revision 1.
    let r = c.get("k", GetOptions::default()).await.unwrap();
    assert_eq!(rev(&r.header), 1);
    assert_eq!(r.count, 0);
    assert!(r.kvs.is_empty());

    // First put: revision 2, create = mod = 2, version 1.
    let p = c.put("k", "v1", PutOptions::default()).await.unwrap();
    assert_eq!(rev(&p.header), 2);
    let kv = &c.get("k", GetOptions::default()).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(kv.value, b"v1");

    // Overwrite: version 2, create kept.
    assert_eq!(put(&c, "k", "v2").await, 3);
    let kv = &c.get("k", GetOptions::default()).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    // A delete that deletes nothing adds no revision (single key and range).
    let d = c.delete("missing", DeleteOptions::default()).await.unwrap();
    assert_eq!((d.deleted, rev(&d.header)), (0, 3));
    let d = c.delete("zz", DeleteOptions::prefix()).await.unwrap();
    assert_eq!((d.deleted, rev(&d.header)), (0, 3));

    // A txn that changes nothing (failed compare, no failure ops; or only reads) adds none.
    let t = c
        .txn(
            Txn::new()
                .when([txn::value("k", CompareResult::Equal, "nope")])
                .and_then([op_put("k", "x", PutOptions::default())]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(rev(&t.header), 3);
    let t = c
        .txn(Txn::new().and_then([op_range("k", GetOptions::default())]))
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(rev(&t.header), 3);
    assert_eq!(current_rev(&c).await, 3);

    // A txn with many puts adds exactly one; every key gets that mod revision.
    let ops: Vec<_> = (0..10)
        .map(|i| op_put(format!("m{i}"), "v", PutOptions::default()))
        .collect();
    let t = c.txn(Txn::new().and_then(ops)).await.unwrap();
    assert_eq!(rev(&t.header), 4);
    let r = c.get("m", GetOptions::prefix()).await.unwrap();
    assert_eq!(r.count, 10);
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.mod_revision == 4 && kv.create_revision == 4 && kv.version == 1));

    // A delete of several keys adds one.
    let d = c.delete("m", DeleteOptions::prefix()).await.unwrap();
    assert_eq!((d.deleted, rev(&d.header)), (10, 5));

    // Delete then put again: a new generation.
    assert_eq!(
        rev(&c
            .delete("k", DeleteOptions::default())
            .await
            .unwrap()
            .header),
        6
    );
    assert_eq!(put(&c, "k", "v3").await, 7);
    let kv = &c.get("k", GetOptions::default()).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (7, 7, 1));

    // Every member reports the same revision (serializable reads, per member).
    for n in &cl.nodes {
        let nc = n.client().await;
        wait_until(SLOW, "member catches up to revision 7", || {
            let nc = nc.clone();
            async move {
                let o = GetOptions {
                    serializable: true,
                    ..Default::default()
                };
                nc.get("k", o)
                    .await
                    .map(|r| rev(&r.header) == 7)
                    .unwrap_or(false)
            }
        })
        .await;
    }
}

async fn range_selection_and_limit(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    for k in ["a", "a/1", "a/2", "a/3", "ab", "b", "c", "\u{7f}"] {
        put(&c, k, &format!("val-{k}")).await;
    }
    // Single key; missing key.
    let r = c.get("a/1", GetOptions::default()).await.unwrap();
    assert_eq!(keys(&r), ["a/1"]);
    assert_eq!(r.count, 1);
    assert!(!r.more);
    assert_eq!(c.get("a/", GetOptions::default()).await.unwrap().count, 0);

    // Explicit range_end [a/1, a/3).
    let r = c.get("a/1", GetOptions::range_end("a/3")).await.unwrap();
    assert_eq!(keys(&r), ["a/1", "a/2"]);

    // Prefix.
    let r = c.get("a/", GetOptions::prefix()).await.unwrap();
    assert_eq!(keys(&r), ["a/1", "a/2", "a/3"]);
    let r = c.get("a", GetOptions::prefix()).await.unwrap();
    assert_eq!(keys(&r), ["a", "a/1", "a/2", "a/3", "ab"]);

    // From key ("\0" range_end): every key >= key.
    let r = c.get("b", GetOptions::from_key()).await.unwrap();
    assert_eq!(keys(&r), ["b", "c", "\u{7f}"]);
    // key "\0" + range_end "\0": all keys.
    let r = c.get(vec![0u8], GetOptions::from_key()).await.unwrap();
    assert_eq!(r.count, 8);

    // Limit: count is the whole range, more says it was cut.
    let r = c
        .get(
            "a",
            GetOptions {
                limit: 2,
                ..GetOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["a", "a/1"]);
    assert_eq!(r.count, 5);
    assert!(r.more);
    let r = c
        .get(
            "a",
            GetOptions {
                limit: 5,
                ..GetOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.count, 5);
    assert!(!r.more);
    let r = c
        .get(
            "a",
            GetOptions {
                limit: 50,
                ..GetOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (5, 5, false));

    // Raw range request, same semantics.
    let r = c
        .range(cairn_client::pb::RangeRequest {
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&r), ["a/1", "a/2", "a/3"]);
}

async fn sort_and_projection(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    // Revisions: k3@2, k1@3, k2@4, then k3 again @5 (version 2), k1 again @6, @7 (version 3).
    put(&c, "k3", "b").await;
    put(&c, "k1", "c").await;
    put(&c, "k2", "a").await;
    put(&c, "k3", "b2").await;
    put(&c, "k1", "c2").await;
    put(&c, "k1", "c3").await;
    let sorted = |order, target| GetOptions {
        sort: Some((order, target)),
        ..GetOptions::prefix()
    };
    let get = |o: GetOptions| {
        let c = c.clone();
        async move { keys(&c.get("k", o).await.unwrap()) }
    };
    assert_eq!(
        get(sorted(SortOrder::Descend, SortTarget::Key)).await,
        ["k3", "k2", "k1"]
    );
    assert_eq!(
        get(sorted(SortOrder::Ascend, SortTarget::Key)).await,
        ["k1", "k2", "k3"]
    );
    assert_eq!(
        get(sorted(SortOrder::Ascend, SortTarget::Version)).await,
        ["k2", "k3", "k1"]
    );
    assert_eq!(
        get(sorted(SortOrder::Descend, SortTarget::Version)).await,
        ["k1", "k3", "k2"]
    );
    assert_eq!(
        get(sorted(SortOrder::Ascend, SortTarget::Create)).await,
        ["k3", "k1", "k2"]
    );
    assert_eq!(
        get(sorted(SortOrder::Descend, SortTarget::Mod)).await,
        ["k1", "k3", "k2"]
    );
    assert_eq!(
        get(sorted(SortOrder::Ascend, SortTarget::Value)).await,
        ["k2", "k3", "k1"]
    );
    assert_eq!(
        get(sorted(SortOrder::Descend, SortTarget::Value)).await,
        ["k1", "k3", "k2"]
    );
    // Order NONE with a non-key target sorts ascending (etcd's rule).
    assert_eq!(
        get(sorted(SortOrder::None, SortTarget::Create)).await,
        ["k3", "k1", "k2"]
    );
    // Sort then limit: the limit applies to the sorted result.
    let r = c
        .get(
            "k",
            GetOptions {
                limit: 1,
                ..sorted(SortOrder::Descend, SortTarget::Key)
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k3"]);
    assert_eq!((r.count, r.more), (3, true));

    // keys_only: keys and metadata, no values.
    let r = c
        .get(
            "k",
            GetOptions {
                keys_only: true,
                ..GetOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2", "k3"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(r.kvs[0].version, 3);
    assert_eq!(r.kvs[0].mod_revision, 7);

    // count_only: no kvs, count set.
    let r = c
        .get(
            "k",
            GetOptions {
                count_only: true,
                ..GetOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    assert!(!r.more);

    // serializable reads work on every member.
    for n in &cl.nodes {
        let nc = n.client().await;
        wait_until(SLOW, "serializable read sees all keys", || {
            let nc = nc.clone();
            async move {
                let o = GetOptions {
                    serializable: true,
                    ..GetOptions::prefix()
                };
                nc.get("k", o)
                    .await
                    .map(|r| r.count == 3 && rev(&r.header) == 7)
                    .unwrap_or(false)
            }
        })
        .await;
    }
}

async fn revision_filters(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    put(&c, "f1", "x").await; // create 2 mod 2
    put(&c, "f2", "x").await; // create 3 mod 3
    put(&c, "f3", "x").await; // create 4 mod 4
    put(&c, "f1", "y").await; // f1 mod 5
    let get = |o: GetOptions| {
        let c = c.clone();
        async move {
            c.get(
                "f",
                GetOptions {
                    range: KeyRange::Prefix,
                    ..o
                },
            )
            .await
            .unwrap()
        }
    };
    let r = get(GetOptions {
        min_mod_revision: 4,
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&r), ["f1", "f3"]);
    let r = get(GetOptions {
        max_mod_revision: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&r), ["f2"]);
    let r = get(GetOptions {
        min_create_revision: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&r), ["f2", "f3"]);
    let r = get(GetOptions {
        max_create_revision: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&r), ["f1", "f2"]);
    let r = get(GetOptions {
        min_create_revision: 3,
        max_mod_revision: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&r), ["f2"]);
    // etcd 3.4: with a filter, `count` is still the size of the whole range
    // (filters apply after counting).
    assert_eq!(r.count, 3);
}

async fn revision_reads_and_compaction(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    assert_eq!(put(&c, "k", "v1").await, 2);
    assert_eq!(put(&c, "k", "v2").await, 3);
    assert_eq!(
        rev(&c
            .delete("k", DeleteOptions::default())
            .await
            .unwrap()
            .header),
        4
    );
    assert_eq!(put(&c, "k", "v3").await, 5);
    put(&c, "other", "o").await; // 6

    let at = |r: i64| {
        let c = c.clone();
        async move {
            c.get(
                "k",
                GetOptions {
                    revision: r,
                    ..Default::default()
                },
            )
            .await
        }
    };
    let r = at(2).await.unwrap();
    assert_eq!(r.kvs[0].value, b"v1");
    // The header carries the current revision, not the requested one.
    assert_eq!(rev(&r.header), 6);
    assert_eq!(at(3).await.unwrap().kvs[0].value, b"v2");
    assert_eq!(at(4).await.unwrap().count, 0);
    let kv = &at(5).await.unwrap().kvs[0];
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.version),
        (&b"v3"[..], 5, 1)
    );
    let r = c
        .get(
            "k",
            GetOptions {
                revision: 2,
                serializable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.kvs[0].value, b"v1");

    let e = at(7).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    // Compaction does not add a revision.
    let cr = c.compact(3, false).await.unwrap();
    assert_eq!(rev(&cr.header), 6);
    let e = at(2).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    assert_eq!(at(3).await.unwrap().kvs[0].value, b"v2");
    // Compacting at or below the compacted revision again.
    let e = c.compact(3, false).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let e = c.compact(2, false).await.unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = c.compact(100, false).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    // Physical compaction up to the current revision.
    c.compact(6, true).await.unwrap();
    assert_eq!(
        at(5).await.unwrap_err().message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(at(6).await.unwrap().kvs[0].value, b"v3");
    assert_eq!(
        c.get("k", GetOptions::default()).await.unwrap().kvs[0].value,
        b"v3"
    );
    assert_eq!(current_rev(&c).await, 6);
}

async fn put_and_delete_options(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let prev = PutOptions {
        prev_kv: true,
        ..Default::default()
    };

    // prev_kv: none on the first put, the old pair after.
    let p = c.put("k", "v1", prev.clone()).await.unwrap();
    assert!(p.prev_kv.is_none());
    let p = c.put("k", "v2", prev.clone()).await.unwrap();
    let pk = p.prev_kv.expect("prev_kv");
    assert_eq!(
        (pk.value.as_slice(), pk.mod_revision, pk.version),
        (&b"v1"[..], 2, 1)
    );
    // Without prev_kv: none returned.
    assert!(c
        .put("k", "v3", PutOptions::default())
        .await
        .unwrap()
        .prev_kv
        .is_none());

    // ignore_value keeps the value, bumps version and revision.
    let p = c
        .put(
            "k",
            "",
            PutOptions {
                ignore_value: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rev(&p.header), 5);
    let kv = &c.get("k", GetOptions::default()).await.unwrap().kvs[0];
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.mod_revision),
        (&b"v3"[..], 4, 5)
    );
    // ignore_value on a missing key.
    let e = c
        .put(
            "nokey",
            "",
            PutOptions {
                ignore_value: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );
    // ignore_value with a value.
    let e = c
        .put(
            "k",
            "x",
            PutOptions {
                ignore_value: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: value is provided")
    );

    // Leases: attach, keep with ignore_lease, reject lease + ignore_lease.
    let lease = c.lease_grant(60, 0).await.unwrap().id;
    assert_ne!(lease, 0);
    c.put(
        "lk",
        "v",
        PutOptions {
            lease,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.get("lk", GetOptions::default()).await.unwrap().kvs[0].lease,
        lease
    );
    c.put(
        "lk",
        "v2",
        PutOptions {
            ignore_lease: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let kv = &c.get("lk", GetOptions::default()).await.unwrap().kvs[0];
    assert_eq!((kv.lease, kv.value.as_slice()), (lease, &b"v2"[..]));
    let e = c
        .put(
            "lk",
            "v",
            PutOptions {
                lease,
                ignore_lease: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: lease is provided")
    );
    // A plain put detaches the lease.
    c.put("lk", "v3", PutOptions::default()).await.unwrap();
    assert_eq!(
        c.get("lk", GetOptions::default()).await.unwrap().kvs[0].lease,
        0
    );
    // ignore_lease on a missing key.
    let e = c
        .put(
            "nolk",
            "v",
            PutOptions {
                ignore_lease: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );

    // Unknown lease: NotFound, nothing written.
    let before = current_rev(&c).await;
    let e = c
        .put(
            "x",
            "v",
            PutOptions {
                lease: 0x1234_5678,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    assert_eq!(current_rev(&c).await, before);
    assert_eq!(c.get("x", GetOptions::default()).await.unwrap().count, 0);

    // Revoking a lease deletes its keys.
    c.put(
        "lk2",
        "v",
        PutOptions {
            lease,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.lease_revoke(lease).await.unwrap();
    assert_eq!(c.get("lk2", GetOptions::default()).await.unwrap().count, 0);

    // delete prev_kv.
    put(&c, "d/1", "one").await;
    put(&c, "d/2", "two").await;
    let d = c
        .delete(
            "d/",
            DeleteOptions {
                prev_kv: true,
                ..DeleteOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert_eq!(d.deleted, 2);
    let mut got: Vec<_> = d
        .prev_kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"d/1".to_vec(), b"one".to_vec()),
            (b"d/2".to_vec(), b"two".to_vec())
        ]
    );
    let d = c.delete("k", DeleteOptions::default()).await.unwrap();
    assert_eq!(d.deleted, 1);
    assert!(d.prev_kvs.is_empty(), "no prev_kvs unless asked");
    // Range delete via from_key / range_end.
    put(&c, "r1", "x").await;
    put(&c, "r2", "x").await;
    put(&c, "r3", "x").await;
    assert_eq!(
        c.delete("r1", DeleteOptions::range_end("r3"))
            .await
            .unwrap()
            .deleted,
        2
    );
    assert_eq!(
        c.delete("r", DeleteOptions::from_key())
            .await
            .unwrap()
            .deleted,
        1
    );
}

fn succeeded(t: &TxnResponse) -> bool {
    t.succeeded
}

async fn txn_compares_and_nesting(imp: Impl) {
    use CompareResult::*;
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    put(&c, "a", "5").await; // rev 2
    put(&c, "a", "6").await; // rev 3, version 2
    let lease = c.lease_grant(60, 0).await.unwrap().id; // no revision
    c.put(
        "l",
        "x",
        PutOptions {
            lease,
            ..Default::default()
        },
    )
    .await
    .unwrap(); // rev 4

    let check = |cmp: cairn_client::pb::Compare| {
        let c = c.clone();
        async move { succeeded(&c.txn(Txn::new().when([cmp])).await.unwrap()) }
    };
    assert!(check(txn::value("a", Equal, "6")).await);
    assert!(!check(txn::value("a", Equal, "5")).await);
    assert!(check(txn::value("a", NotEqual, "5")).await);
    assert!(check(txn::value("a", Greater, "5")).await);
    assert!(check(txn::value("a", Less, "7")).await);
    assert!(check(txn::version("a", Equal, 2)).await);
    assert!(check(txn::version("a", Greater, 1)).await);
    assert!(check(txn::version("a", Less, 3)).await);
    assert!(check(txn::version("missing", Equal, 0)).await);
    assert!(check(txn::create_revision("a", Equal, 2)).await);
    assert!(check(txn::create_revision("missing", Equal, 0)).await);
    assert!(check(txn::mod_revision("a", Equal, 3)).await);
    assert!(check(txn::mod_revision("a", Less, 4)).await);
    assert!(check(txn::mod_revision("a", NotEqual, 2)).await);
    assert!(check(txn::lease("l", Equal, lease)).await);
    assert!(check(txn::lease("a", Equal, 0)).await);
    assert!(!check(txn::lease("l", NotEqual, lease)).await);
    // A value compare on a missing key fails (no key to compare).
    assert!(!check(txn::value("missing", Equal, "")).await);
    // Compares are ANDed.
    let t = c
        .txn(Txn::new().when([txn::value("a", Equal, "6"), txn::version("a", Equal, 1)]))
        .await
        .unwrap();
    assert!(!t.succeeded);
    // Range compare: every key in [a, m) has mod_revision < 5.
    assert!(check(txn::with_range_end(txn::mod_revision("a", Less, 5), "m")).await);
    assert!(!check(txn::with_range_end(txn::mod_revision("a", Less, 4), "m")).await);

    // Branches: success ops and their responses in order.
    let t = c
        .txn(
            Txn::new()
                .when([txn::value("a", Equal, "6")])
                .and_then([
                    op_put("b", "1", PutOptions::default()),
                    op_range("a", GetOptions::default()),
                    op_delete("l", DeleteOptions::default()),
                ])
                .or_else([op_put("never", "x", PutOptions::default())]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(rev(&t.header), 5);
    use cairn_client::pb::response_op::Response;
    match &t.responses[..] {
        [a, b, d] => {
            assert!(matches!(&a.response, Some(Response::ResponsePut(_))));
            match &b.response {
                Some(Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"6"),
                other => panic!("expected range response, got {other:?}"),
            }
            match &d.response {
                Some(Response::ResponseDeleteRange(r)) => assert_eq!(r.deleted, 1),
                other => panic!("expected delete response, got {other:?}"),
            }
        }
        other => panic!("expected 3 responses, got {other:?}"),
    }
    assert_eq!(
        c.get("never", GetOptions::default()).await.unwrap().count,
        0
    );

    // Failure branch.
    let t = c
        .txn(
            Txn::new()
                .when([txn::version("b", Equal, 0)])
                .or_else([op_put("b", "2", PutOptions::default())]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(
        c.get("b", GetOptions::default()).await.unwrap().kvs[0].value,
        b"2"
    );

    // Nested txns: the inner txn's compare decides its own branch; one revision for all.
    let before = current_rev(&c).await;
    let inner_ok = Txn::new()
        .when([txn::value("b", Equal, "2")])
        .and_then([op_put("n1", "x", PutOptions::default())]);
    let inner_no = Txn::new()
        .when([txn::value("b", Equal, "nope")])
        .and_then([op_put("n2", "x", PutOptions::default())])
        .or_else([op_put("n3", "x", PutOptions::default())]);
    let t = c
        .txn(Txn::new().when([txn::version("b", Greater, 0)]).and_then([
            op_txn(inner_ok),
            op_txn(inner_no),
            op_put("n4", "x", PutOptions::default()),
        ]))
        .await
        .unwrap();
    assert!(t.succeeded);
    match (&t.responses[0].response, &t.responses[1].response) {
        (Some(Response::ResponseTxn(x)), Some(Response::ResponseTxn(y))) => {
            assert!(x.succeeded);
            assert!(!y.succeeded);
        }
        other => panic!("expected nested txn responses, got {other:?}"),
    }
    assert_eq!(rev(&t.header), before + 1);
    let r = c.get("n", GetOptions::prefix()).await.unwrap();
    assert_eq!(keys(&r), ["n1", "n3", "n4"]);
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == before + 1));
}

async fn etcd_error_strings(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let invalid = |e: cairn_client::Error, msg: &str| {
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, msg),
            "{e:?}"
        );
    };
    // Empty key.
    invalid(
        c.put("", "v", PutOptions::default()).await.unwrap_err(),
        "etcdserver: key is not provided",
    );
    invalid(
        c.get("", GetOptions::default()).await.unwrap_err(),
        "etcdserver: key is not provided",
    );
    invalid(
        c.delete("", DeleteOptions::default()).await.unwrap_err(),
        "etcdserver: key is not provided",
    );
    let t = Txn::new().and_then([op_put("", "v", PutOptions::default())]);
    invalid(
        c.txn(t).await.unwrap_err(),
        "etcdserver: key is not provided",
    );

    // 128 ops is the limit; 129 is too many (compares count on their own).
    let ops = |n: usize, p: &str| {
        (0..n)
            .map(|i| op_put(format!("{p}{i}"), "v", PutOptions::default()))
            .collect::<Vec<_>>()
    };
    let t = c.txn(Txn::new().and_then(ops(128, "ok"))).await.unwrap();
    assert!(t.succeeded);
    invalid(
        c.txn(Txn::new().and_then(ops(129, "no")))
            .await
            .unwrap_err(),
        "etcdserver: too many operations in txn request",
    );
    let many_cmps: Vec<_> = (0..129)
        .map(|i| txn::version(format!("c{i}"), CompareResult::Equal, 0))
        .collect();
    invalid(
        c.txn(Txn::new().when(many_cmps)).await.unwrap_err(),
        "etcdserver: too many operations in txn request",
    );
    assert_eq!(c.get("no", GetOptions::prefix()).await.unwrap().count, 0);

    // The same key written twice in one txn (put/put, put/delete, nested).
    let dup = "etcdserver: duplicate key given in txn request";
    let t = Txn::new().and_then([
        op_put("d", "1", PutOptions::default()),
        op_put("d", "2", PutOptions::default()),
    ]);
    invalid(c.txn(t).await.unwrap_err(), dup);
    let t = Txn::new().and_then([
        op_put("d", "1", PutOptions::default()),
        op_delete("d", DeleteOptions::default()),
    ]);
    invalid(c.txn(t).await.unwrap_err(), dup);
    let t = Txn::new().and_then([
        op_put("d/x", "1", PutOptions::default()),
        op_delete("d/", DeleteOptions::prefix()),
    ]);
    invalid(c.txn(t).await.unwrap_err(), dup);
    let t = Txn::new().and_then([
        op_put("d", "1", PutOptions::default()),
        op_txn(Txn::new().and_then([op_put("d", "2", PutOptions::default())])),
    ]);
    invalid(c.txn(t).await.unwrap_err(), dup);
    // The same key in the success and the failure branch is fine (only one runs).
    let t = Txn::new()
        .and_then([op_put("d", "1", PutOptions::default())])
        .or_else([op_put("d", "2", PutOptions::default())]);
    c.txn(t).await.unwrap();
    // Reading a key twice is fine.
    let t = Txn::new().and_then([
        op_range("d", GetOptions::default()),
        op_range("d", GetOptions::default()),
    ]);
    c.txn(t).await.unwrap();

    // Future revision and compacted are covered in revision_reads_and_compaction.
    // Lease not found via txn too.
    let t = Txn::new().and_then([op_put(
        "lx",
        "v",
        PutOptions {
            lease: 777,
            ..Default::default()
        },
    )]);
    let e = c.txn(t).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
}

async fn request_too_large_writes_nothing(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    put(&c, "small", "v").await;
    let before = current_rev(&c).await;
    let big = vec![b'x'; 1024 * 1024 + 600 * 1024]; // 1.6 MiB > 1.5 MiB limit
    let e = c
        .put("big", big.clone(), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let t = Txn::new().and_then([op_put("big", big, PutOptions::default())]);
    let e = c.txn(t).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    // Too large and too many operations: etcd counts first.
    let e = c
        .txn(common::many_puts("big", 200, &[b'z'; 8 * 1024]))
        .await
        .unwrap_err();
    common::assert_too_many_ops(&e);
    assert_eq!(current_rev(&c).await, before);
    assert_eq!(c.get("big", GetOptions::default()).await.unwrap().count, 0);
    // Just under the limit is accepted.
    let ok = vec![b'y'; 1024 * 1024];
    c.put("big", ok.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        c.get("big", GetOptions::default()).await.unwrap().kvs[0].value,
        ok
    );
}

async fn write_via_follower_read_via_other_follower(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let f = cl.followers().await;
    assert_eq!(f.len(), 2);
    let w = cl.nodes[f[0]].client().await;
    let r = cl.nodes[f[1]].client().await;
    for i in 0..20 {
        let v = format!("v{i}");
        let p = w.put("fk", v.clone(), PutOptions::default()).await.unwrap();
        // Linearizable read through the other follower sees the acknowledged write.
        let got = r.get("fk", GetOptions::default()).await.unwrap();
        assert_eq!(got.kvs[0].value, v.as_bytes());
        assert!(rev(&got.header) >= rev(&p.header));
    }
    // Txn through a follower.
    let t = w.txn(
        Txn::new()
            .when([txn::value("fk", CompareResult::Equal, "v19")])
            .and_then([op_put("fk", "t", PutOptions::default())]),
    );
    assert!(t.await.unwrap().succeeded);
    assert_eq!(
        r.get("fk", GetOptions::default()).await.unwrap().kvs[0].value,
        b"t"
    );
    // Leader's serializable view converges too.
    let l = cl.leader().await;
    let lc = cl.nodes[l].client().await;
    wait_until(SLOW, "leader applied the txn", || {
        let lc = lc.clone();
        async move {
            let o = GetOptions {
                serializable: true,
                ..Default::default()
            };
            lc.get("fk", o)
                .await
                .is_ok_and(|g| g.kvs.first().is_some_and(|kv| kv.value == b"t"))
        }
    })
    .await;
}

async fn client_fails_over(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    // A dead endpoint first: connect refused, so even a write moves on safely.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let mut eps = vec![dead.clone()];
    eps.extend(cl.endpoints());
    let c = Client::connect(eps, common::test_client_options())
        .await
        .unwrap();
    assert_eq!(c.endpoints()[0], format!("http://{dead}"));
    c.put("fo", "1", PutOptions::default()).await.unwrap();
    assert_eq!(
        c.get("fo", GetOptions::default()).await.unwrap().kvs[0].value,
        b"1"
    );
    // Only dead endpoints: Unavailable, nothing sent.
    let short = cairn_client::ClientOptions {
        retry_budget: std::time::Duration::from_millis(500),
        ..common::test_client_options()
    };
    let only_dead = Client::connect(vec![dead], short).await.unwrap();
    let e = only_dead
        .put("fo", "2", PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, cairn_client::Error::Unavailable(_)), "{e:?}");
    assert_eq!(
        c.get("fo", GetOptions::default()).await.unwrap().kvs[0].value,
        b"1"
    );

    // Kill the member the client is pinned to (it answered last): the client
    // moves on; reads keep working, writes work once a leader exists.
    let c = cl.client().await;
    c.put("fo", "3", PutOptions::default()).await.unwrap();
    let victim = cl.leader().await;
    cl.nodes[victim].kill9();
    let g = c.get("fo", GetOptions::default()).await.unwrap();
    assert_eq!(g.kvs[0].value, b"3");
    wait_until(SLOW, "a write succeeds after the leader died", || {
        let c = c.clone();
        async move {
            match c.put("fo", "4", PutOptions::default()).await {
                Ok(_) => true,
                Err(e) => {
                    // Only errors that are not server answers are acceptable here.
                    assert!(
                        matches!(
                            e,
                            cairn_client::Error::Unavailable(_)
                                | cairn_client::Error::OutcomeUnknown(_)
                        ),
                        "{e:?}"
                    );
                    false
                }
            }
        }
    })
    .await;
    assert_eq!(
        c.get("fo", GetOptions::default()).await.unwrap().kvs[0].value,
        b"4"
    );
    cl.nodes[victim].restart();
    cl.wait_ready().await;
}

async fn member_list_and_status(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let ml = c.member_list().await.unwrap();
    assert_eq!(ml.members.len(), 3);
    let mut names: Vec<_> = ml.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["n0", "n1", "n2"]);
    for m in &ml.members {
        let n = cl.nodes.iter().find(|n| n.name == m.name).unwrap();
        assert_eq!(m.client_ur_ls, vec![n.client_url.clone()]);
        assert_eq!(m.peer_ur_ls, vec![n.peer_url.clone()]);
        assert!(!m.is_learner);
        assert_ne!(m.id, 0);
    }
    let cluster_id = ml.header.as_ref().unwrap().cluster_id;
    assert_ne!(cluster_id, 0);

    let leader = cl.leader().await;
    let mut leader_ids = Vec::new();
    for (i, n) in cl.nodes.iter().enumerate() {
        let st = c.status(&n.client_url).await.unwrap();
        let h = st.header.as_ref().unwrap();
        assert_eq!(h.cluster_id, cluster_id);
        // member_id in the header is the answering member.
        let me = ml.members.iter().find(|m| m.name == n.name).unwrap();
        assert_eq!(h.member_id, me.id);
        assert!(h.raft_term >= 1);
        assert_eq!(st.version, "3.4.23");
        assert!(st.raft_index >= 1);
        assert!(st.db_size > 0);
        leader_ids.push(st.leader);
        if i == leader {
            assert_eq!(st.leader, me.id);
        }
    }
    assert!(leader_ids.iter().all(|l| *l == leader_ids[0]));
    // status() only accepts this client's endpoints.
    assert_eq!(
        c.status("127.0.0.1:1").await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

/// A SIGSTOPped member still accepts TCP connections (the kernel does), so a
/// request to it is sent and then times out: a write must surface
/// OutcomeUnknown (not be re-sent elsewhere), while a read moves on.
async fn frozen_member_gives_outcome_unknown_for_writes_only(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let frozen = cl.followers().await[0];
    let mut eps = vec![cl.nodes[frozen].client_url.clone()];
    eps.extend(
        (0..3)
            .filter(|i| *i != frozen)
            .map(|i| cl.nodes[i].client_url.clone()),
    );
    let opts = cairn_client::ClientOptions {
        request_timeout: std::time::Duration::from_secs(2),
        ..common::test_client_options()
    };
    let c = Client::connect(eps, opts).await.unwrap();
    // Warm the connection to the first member while it still runs.
    put(&c, "fz", "1").await;
    cl.nodes[frozen].sigstop();
    let e = c.put("fz", "2", PutOptions::default()).await.unwrap_err();
    assert!(e.is_outcome_unknown(), "{e:?}");
    // Reads (and read-only txns) fail over. The pin moved on, so the next
    // write goes to a live member and succeeds.
    let g = c
        .get(
            "fz",
            GetOptions {
                revision: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(g.kvs[0].value, b"1");
    put(&c, "fz", "3").await;
    let t = c
        .txn(Txn::new().and_then([op_range("fz", GetOptions::default())]))
        .await
        .unwrap();
    assert!(t.succeeded);
    // A fresh client pinned on the frozen member: a read-only txn fails over too.
    let mut eps2 = vec![cl.nodes[frozen].client_url.clone()];
    eps2.extend(
        (0..3)
            .filter(|i| *i != frozen)
            .map(|i| cl.nodes[i].client_url.clone()),
    );
    let c2 = Client::connect(
        eps2,
        cairn_client::ClientOptions {
            request_timeout: std::time::Duration::from_secs(2),
            ..common::test_client_options()
        },
    )
    .await
    .unwrap();
    let t = c2
        .txn(Txn::new().and_then([op_range("fz", GetOptions::default())]))
        .await
        .unwrap();
    assert!(t.succeeded);
    cl.nodes[frozen].sigcont();
    cl.wait_ready().await;
}
