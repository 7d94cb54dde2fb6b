//! Semantics of the MVCC store against what etcd 3.4 answers.

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::request_op::Request as Op;
use cairn_proto::etcdserverpb::response_op::Response as OpResp;
use cairn_proto::etcdserverpb::*;

use super::Mvcc;
use crate::error::EtcdError;

fn store() -> Mvcc {
    Mvcc::open(Default::default())
}

fn put(m: &Mvcc, k: &str, v: &str) -> PutResponse {
    m.apply(|w| {
        w.put(&PutRequest {
            key: k.into(),
            value: v.into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    })
}

fn range(m: &Mvcc, r: RangeRequest) -> Result<RangeResponse, EtcdError> {
    m.read(|v| v.range(&r))
}

fn get(m: &Mvcc, k: &str) -> RangeResponse {
    range(
        m,
        RangeRequest {
            key: k.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn prefix(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn txn(m: &Mvcc, t: TxnRequest) -> Result<TxnResponse, EtcdError> {
    m.apply(|w| w.txn(&t))
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn revisions_start_at_one_and_bump_once_per_change() {
    let m = store();
    assert_eq!(m.revision(), 1);
    let r = put(&m, "a", "1");
    assert_eq!(r.header.unwrap().revision, 2);
    let kv = &get(&m, "a").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    put(&m, "a", "2");
    let kv = &get(&m, "a").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    // A delete of nothing adds no revision.
    let d = m.apply(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "zzz".into(),
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(d.deleted, 0);
    assert_eq!(m.revision(), 3);

    // A txn of three puts adds exactly one.
    let t = txn(
        &m,
        TxnRequest {
            success: vec![put_op("x", "1"), put_op("y", "1"), put_op("z", "1")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.header.unwrap().revision, 4);
    assert_eq!(m.revision(), 4);
    assert!(get(&m, "z").kvs[0].mod_revision == 4);
}

#[test]
fn delete_then_recreate_starts_new_generation() {
    let m = store();
    put(&m, "a", "1");
    let d = m.apply(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "a".into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
    });
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value, b"1");
    assert_eq!(d.header.unwrap().revision, 3);
    put(&m, "a", "2");
    let kv = &get(&m, "a").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (4, 4, 1));
}

#[test]
fn past_revisions_limits_sort_and_filters() {
    let m = store();
    put(&m, "k1", "a"); // 2
    put(&m, "k2", "b"); // 3
    put(&m, "k1", "c"); // 4
    put(&m, "k3", "d"); // 5
    let at3 = range(
        &m,
        RangeRequest {
            revision: 3,
            ..prefix("k", "l")
        },
    )
    .unwrap();
    let vals: Vec<_> = at3.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(vals, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(
        at3.header.unwrap().revision,
        5,
        "header carries the current revision"
    );

    let lim = range(
        &m,
        RangeRequest {
            limit: 2,
            ..prefix("k", "l")
        },
    )
    .unwrap();
    assert_eq!((lim.kvs.len(), lim.count, lim.more), (2, 3, true));

    let by_mod = range(
        &m,
        RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..prefix("k", "l")
        },
    )
    .unwrap();
    let keys: Vec<_> = by_mod.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"k3".to_vec(), b"k1".to_vec(), b"k2".to_vec()]);

    let filtered = range(
        &m,
        RangeRequest {
            min_mod_revision: 4,
            ..prefix("k", "l")
        },
    )
    .unwrap();
    assert_eq!(filtered.kvs.len(), 2);
    assert_eq!(filtered.count, 3, "count is taken before filters, as etcd");

    let from_key = range(&m, prefix("k2", "\0")).unwrap();
    assert_eq!(from_key.count, 2);
    let all = range(&m, prefix("\0", "\0")).unwrap();
    assert_eq!(all.count, 3);
    let keys_only = range(
        &m,
        RangeRequest {
            keys_only: true,
            ..prefix("k", "l")
        },
    )
    .unwrap();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

    assert_eq!(
        range(
            &m,
            RangeRequest {
                revision: 6,
                ..prefix("k", "l")
            }
        )
        .unwrap_err(),
        EtcdError::FutureRev
    );
}

#[test]
fn compaction_keeps_latest_and_refuses_old_reads() {
    let m = store();
    put(&m, "a", "1"); // 2
    put(&m, "a", "2"); // 3
    put(&m, "b", "1"); // 4
    m.apply(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        })
        .unwrap(); // 5
    });
    m.apply(|w| {
        w.compact(&CompactionRequest {
            revision: 4,
            physical: true,
        })
        .unwrap();
    });
    assert_eq!(m.compact_revision(), 4);
    let r3 = range(
        &m,
        RangeRequest {
            revision: 3,
            ..prefix("a", "c")
        },
    );
    assert_eq!(r3.unwrap_err(), EtcdError::Compacted);
    let r4 = range(
        &m,
        RangeRequest {
            revision: 4,
            ..prefix("a", "c")
        },
    )
    .unwrap();
    assert_eq!(
        r4.kvs.len(),
        2,
        "revision == compacted revision is still readable"
    );
    assert_eq!(r4.kvs[0].value, b"2");
    m.apply(|w| {
        assert_eq!(
            w.compact(&CompactionRequest {
                revision: 4,
                physical: false
            })
            .unwrap_err(),
            EtcdError::Compacted
        );
        assert_eq!(
            w.compact(&CompactionRequest {
                revision: 99,
                physical: false
            })
            .unwrap_err(),
            EtcdError::FutureRev
        );
    });
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

#[test]
fn txn_compares_and_nesting() {
    let m = store();
    put(&m, "a", "1"); // 2
                       // Value compare on a missing key fails.
    let t = txn(
        &m,
        TxnRequest {
            compare: vec![cmp(
                "nope",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value(vec![]),
            )],
            success: vec![put_op("s", "1")],
            failure: vec![put_op("f", "1")],
        },
    )
    .unwrap();
    assert!(!t.succeeded);
    // Create revision 0 means absent: create-if-absent.
    let t = txn(
        &m,
        TxnRequest {
            compare: vec![cmp(
                "new",
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(0),
            )],
            success: vec![
                put_op("new", "x"),
                RequestOp {
                    request: Some(Op::RequestTxn(TxnRequest {
                        compare: vec![cmp(
                            "a",
                            CompareTarget::Mod,
                            CompareResult::Equal,
                            TargetUnion::ModRevision(2),
                        )],
                        success: vec![put_op("nested", "y")],
                        failure: vec![],
                    })),
                },
                RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key: "new".into(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        },
    )
    .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 4);
    match &t.responses[1].response {
        Some(OpResp::ResponseTxn(n)) => assert!(n.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    match &t.responses[2].response {
        Some(OpResp::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].value, b"x", "a txn reads its own writes")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(get(&m, "nested").kvs[0].mod_revision, 4);
}

#[test]
fn failed_request_changes_nothing() {
    let m = store();
    put(&m, "a", "1");
    let err = m.apply(|w| {
        w.txn(&TxnRequest {
            success: vec![
                put_op("b", "1"),
                RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: "missing".into(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        })
        .unwrap_err()
    });
    assert_eq!(err, EtcdError::KeyNotFound);
    assert_eq!(m.revision(), 2);
    assert!(get(&m, "b").kvs.is_empty());
    m.apply(|w| {
        let err = w
            .put(&PutRequest {
                key: "a".into(),
                lease: 42,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err, EtcdError::LeaseNotFound);
    });
}

#[test]
fn batch_reads_its_own_writes_across_entries() {
    let m = store();
    m.apply(|w| {
        w.put(&PutRequest {
            key: "a".into(),
            value: "1".into(),
            ..Default::default()
        })
        .unwrap();
        let r = w
            .put(&PutRequest {
                key: "a".into(),
                value: "2".into(),
                prev_kv: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.prev_kv.unwrap().value, b"1");
    });
    let kv = &get(&m, "a").kvs[0];
    assert_eq!((kv.version, kv.mod_revision), (2, 3));
    let old = m
        .read(|v| {
            v.range(&RangeRequest {
                key: "a".into(),
                revision: 2,
                ..Default::default()
            })
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
}

#[test]
fn a_range_end_below_the_key_is_empty_as_in_etcd() {
    let m = store();
    put(&m, "a", "1");
    put(&m, "c", "1");
    assert!(range(&m, prefix("c", "a")).unwrap().kvs.is_empty());
    let d = m.apply(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "c".into(),
            range_end: "a".into(),
            ..Default::default()
        })
    });
    assert_eq!(d.unwrap().deleted, 0);
    let t = txn(
        &m,
        TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestRange(prefix("c", "a"))),
            }],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.revision(), 3);
    assert!(t.succeeded);
}

#[test]
fn a_page_in_key_order_answers_as_the_full_range_does() {
    let m = store();
    for i in 0..50 {
        put(&m, &format!("p/{i:02}"), &format!("v{i}"));
    }
    put(&m, "p/07", "again");
    m.apply(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: b"p/3".to_vec(),
            range_end: b"p/4".to_vec(),
            ..Default::default()
        })
    })
    .unwrap();
    put(&m, "q", "outside");
    let cases = [
        (0, false, false, SortOrder::None as i32),
        (5, false, false, SortOrder::None as i32),
        (5, true, false, SortOrder::Descend as i32),
        (7, false, true, SortOrder::Ascend as i32),
        (100, false, false, SortOrder::Descend as i32),
        (3, false, false, SortOrder::None as i32),
    ];
    for (limit, keys_only, count_only, sort_order) in cases {
        let r = RangeRequest {
            limit,
            keys_only,
            count_only,
            sort_order,
            sort_target: SortTarget::Key as i32,
            ..prefix("p/", "p0")
        };
        // A filter that keeps everything sends the same request down the
        // general path (decode all, sort, truncate).
        let general = RangeRequest {
            min_mod_revision: 1,
            ..r.clone()
        };
        assert_eq!(range(&m, r.clone()), range(&m, general), "{r:?}");
    }
    let page = range(
        &m,
        RangeRequest {
            limit: 3,
            ..prefix("p/", "p0")
        },
    )
    .unwrap();
    assert_eq!(page.count, 40);
    assert!(page.more);
    assert_eq!(page.kvs.len(), 3);
}
