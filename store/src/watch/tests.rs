//! The stream's watchers against an in-memory store.

use cairn_proto::etcdserverpb::{CompactionRequest, PutRequest};

use super::*;

fn cfg(max_response_bytes: usize) -> WatchConfig {
    WatchConfig {
        cluster_id: 1,
        member_id: 2,
        max_response_bytes,
    }
}

fn spec(id: i64, prefix: &str, start_rev: i64) -> WatchSpec {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchSpec {
        watch_id: id,
        key: prefix.into(),
        range_end: end,
        start_rev,
        prev_kv: false,
        no_put: false,
        no_delete: false,
        progress_notify: false,
        fragment: false,
    }
}

fn put(m: &Mvcc, k: &str, v: &[u8]) -> i64 {
    m.apply(|w| {
        w.put(&PutRequest {
            key: k.into(),
            value: v.to_vec(),
            ..Default::default()
        })
        .unwrap()
    })
    .header
    .unwrap()
    .revision
}

fn ids(out: &[WatchOut]) -> Vec<i64> {
    out.iter()
        .map(|o| match o {
            WatchOut::Whole(r) | WatchOut::Shared { head: r, .. } => r.watch_id,
        })
        .collect()
}

#[test]
fn shared_events_encode_as_one_message() {
    let m = Mvcc::open(Default::default());
    put(&m, "a/1", b"one");
    let rev = put(&m, "a/2", b"two");
    let mut ws = Watchers::new(cfg(1 << 20));
    ws.add(spec(5, "a/", 1));
    let out = ws.step(&m, rev, 3);
    assert_eq!(out.len(), 1);
    let mut bytes = Vec::new();
    out[0].encode(&mut bytes);
    let whole = match out.into_iter().next().unwrap() {
        o @ WatchOut::Shared { .. } => o.into_response(),
        WatchOut::Whole(r) => panic!("expected shared events, got {r:?}"),
    };
    assert_eq!(whole.events.len(), 2);
    assert_eq!(bytes, whole.encode_to_vec());
}

#[test]
fn same_filter_shares_one_copy() {
    let m = Mvcc::open(Default::default());
    let rev = put(&m, "a/1", b"x");
    let mut ws = Watchers::new(cfg(1 << 20));
    for id in 0..3 {
        ws.add(spec(id, "a/", rev));
    }
    ws.add(WatchSpec {
        prev_kv: true,
        ..spec(3, "a/", rev)
    });
    let out = ws.step(&m, rev, 1);
    assert_eq!(ids(&out), vec![0, 1, 2, 3]);
    let shared: Vec<&Arc<SharedEvents>> = out
        .iter()
        .map(|o| match o {
            WatchOut::Shared { events, .. } => events,
            WatchOut::Whole(r) => panic!("{r:?}"),
        })
        .collect();
    assert!(Arc::ptr_eq(shared[0], shared[1]) && Arc::ptr_eq(shared[0], shared[2]));
    assert!(
        !Arc::ptr_eq(shared[0], shared[3]),
        "prev_kv is another filter"
    );
    assert!(!ws.owed(rev), "everyone was brought up to {rev}");
    assert_eq!(ws.delivered(), Some(rev));
}

#[test]
fn a_watch_catching_up_takes_turns_with_live_ones() {
    let m = Mvcc::open(Default::default());
    // Far more history than one step reads.
    let big = vec![b'v'; 64 * 1024];
    for i in 0..40 {
        put(&m, &format!("a/{i}"), &big);
    }
    let rev = m.revision();
    let mut ws = Watchers::new(cfg(usize::MAX));
    ws.add(spec(1, "a/", 1)); // from the beginning
    ws.add(spec(2, "a/", rev)); // only the last revision
    let mut steps_until_live = 0;
    loop {
        steps_until_live += 1;
        if ids(&ws.step(&m, rev, 1)).contains(&2) {
            break;
        }
    }
    assert!(
        steps_until_live <= 2,
        "the live watch waited {steps_until_live} steps"
    );
    // The catching-up watch gets everything, in order, exactly once.
    let mut seen = Vec::new();
    while ws.owed(rev) {
        for o in ws.step(&m, rev, 1) {
            seen.extend(
                o.into_response()
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
    }
    let first_step = seen.first().copied().unwrap_or(rev);
    assert!(first_step > 2, "the first step already sent revision 2");
    assert_eq!(*seen.last().unwrap(), rev);
    assert!(seen.windows(2).all(|p| p[1] == p[0] + 1), "{seen:?}");
}

#[test]
fn fragments_only_when_asked() {
    let m = Mvcc::open(Default::default());
    let rev = m.apply(|w| {
        w.txn(&cairn_proto::etcdserverpb::TxnRequest {
            success: (0..3)
                .map(|i| cairn_proto::etcdserverpb::RequestOp {
                    request: Some(cairn_proto::etcdserverpb::request_op::Request::RequestPut(
                        PutRequest {
                            key: format!("a/{i}").into(),
                            value: vec![0; 60],
                            ..Default::default()
                        },
                    )),
                })
                .collect(),
            ..Default::default()
        })
        .unwrap()
        .header
        .unwrap()
        .revision
    });
    let mut ws = Watchers::new(cfg(100));
    ws.add(spec(1, "a/", rev));
    ws.add(WatchSpec {
        fragment: true,
        ..spec(2, "a/", rev)
    });
    let out: Vec<WatchResponse> = ws
        .step(&m, rev, 1)
        .into_iter()
        .map(WatchOut::into_response)
        .collect();
    let (one, two): (Vec<_>, Vec<_>) = out.into_iter().partition(|r| r.watch_id == 1);
    assert_eq!((one.len(), one[0].events.len()), (1, 3));
    assert_eq!(two.len(), 3);
    assert!(two[0].fragment && two[1].fragment && !two[2].fragment);
    assert!(two
        .iter()
        .all(|r| r.header.as_ref().unwrap().revision == rev));
}

#[test]
fn compaction_cancels_and_the_id_stays_taken() {
    let m = Mvcc::open(Default::default());
    let old = put(&m, "a/k", b"1");
    let rev = put(&m, "a/k", b"2");
    m.apply(|w| {
        w.compact(&CompactionRequest {
            revision: rev,
            ..Default::default()
        })
    })
    .unwrap();
    let mut ws = Watchers::new(cfg(1 << 20));
    ws.add(spec(7, "a/", old));
    let out: Vec<WatchResponse> = ws
        .step(&m, rev, 1)
        .into_iter()
        .map(WatchOut::into_response)
        .collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].canceled && out[0].compact_revision == rev, "{out:?}");
    assert!(ws.contains(7) && !ws.owed(rev) && ws.delivered().is_none());
    assert_eq!(ws.key_bytes(), 4);
    assert!(ws.remove(7));
    assert!(!ws.contains(7) && ws.key_bytes() == 0 && ws.count() == 0);
}
