//! Watch semantics through cairn-client (and etcdctl 3.4) against a real
//! 3-process cluster, run on both etcd (the reference) and Cairn.
//! `cargo test --test it watch::etcd::` / `cairn::`.
//!
//! Every expectation is built from a log of the writes the test made (key,
//! type and the revision each write's response reported), so the comparisons
//! are exact: same events, same order, no gaps, no duplicates.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cairn_client::mvccpb::event::EventType;
use cairn_client::pb::WatchResponse;
use cairn_client::txn::{op_delete, op_put, Txn};
use cairn_client::{Client, DeleteOptions, GetOptions, PutOptions, WatchOptions, Watcher};
use common::{etcdctl_bin, have_tool, Cluster, Impl, SLOW};

cluster_tests!(
    prefix_from_old_revision_while_writing_matches_write_log,
    prev_kv_and_filters,
    cancel_stops_events,
    compacted_start_revision_is_created_then_canceled,
    txn_events_arrive_in_one_response_in_order,
    header_revision_never_ahead_of_sent_events,
    thousand_watchers_on_one_member_see_every_event,
    watch_on_follower_from_future_revision,
    etcdctl_watch_prefix_rev_and_prev_kv,
    large_responses_fragment_and_reassemble,
    require_leader_watch_ends_when_member_loses_leader,
    stream_bookkeeping_as_etcd_keeps_it,
);

/// (type, key, mod_revision) of one event; `'P'` or `'D'`.
type Ev = (char, String, i64);

fn ev_of(e: &cairn_client::mvccpb::Event) -> Ev {
    let kv = e.kv.as_ref().expect("event kv");
    let t = if e.r#type == EventType::Delete as i32 {
        'D'
    } else {
        'P'
    };
    (
        t,
        String::from_utf8_lossy(&kv.key).into_owned(),
        kv.mod_revision,
    )
}

fn hrev(r: &WatchResponse) -> i64 {
    r.header.as_ref().expect("header").revision
}

/// The next response, within the deadline; panics if the stream breaks.
async fn next(w: &mut Watcher) -> WatchResponse {
    tokio::time::timeout(SLOW, w.next())
        .await
        .expect("a watch response within the deadline")
        .expect("watch stream healthy")
}

/// Reads responses of watch `id` until `n` events were collected; checks that
/// every response's header revision covers its events. Returns events and
/// responses.
async fn collect(w: &mut Watcher, id: i64, n: usize) -> (Vec<Ev>, Vec<WatchResponse>) {
    let mut evs = Vec::new();
    let mut resps = Vec::new();
    while evs.len() < n {
        let r = next(w).await;
        assert_eq!(r.watch_id, id, "unexpected response {r:?}");
        assert!(!r.canceled, "watch canceled: {r:?}");
        for e in &r.events {
            let e = ev_of(e);
            assert!(
                e.2 <= hrev(&r),
                "event {e:?} is ahead of its header revision {}",
                hrev(&r)
            );
            evs.push(e);
        }
        resps.push(r);
    }
    assert_eq!(evs.len(), n, "more events than expected: {evs:?}");
    (evs, resps)
}

async fn put(c: &Client, k: &str, v: &str) -> i64 {
    c.put(k, v, PutOptions::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision
}

async fn del(c: &Client, k: &str) -> i64 {
    let d = c.delete(k, DeleteOptions::default()).await.unwrap();
    assert_eq!(d.deleted, 1, "delete of {k} deleted nothing");
    d.header.unwrap().revision
}

/// A deterministic mix of puts, deletes and two-put txns, inside and outside
/// `prefix`; returns the log of what each write did.
async fn write_mix(c: &Client, prefix: &str, seed: usize, n: usize) -> Vec<Ev> {
    let mut log = Vec::new();
    let mut live: Vec<String> = Vec::new();
    for i in 0..n {
        let j = seed * 1000 + i;
        match i % 6 {
            0 | 1 | 3 => {
                let k = format!("{prefix}k{}", j % 7);
                log.push(('P', k.clone(), put(c, &k, &format!("v{j}")).await));
                if !live.contains(&k) {
                    live.push(k);
                }
            }
            2 => {
                // Outside the prefix: the watcher must not see it.
                let k = format!("other/{j}");
                log.push(('P', k.clone(), put(c, &k, "x").await));
            }
            4 => {
                if let Some(k) = live.pop() {
                    log.push(('D', k.clone(), del(c, &k).await));
                }
            }
            _ => {
                let (a, b) = (format!("{prefix}t{j}a"), format!("{prefix}t{j}b"));
                let t = c
                    .txn(Txn::new().and_then([
                        op_put(a.clone(), "1", PutOptions::default()),
                        op_put(b.clone(), "2", PutOptions::default()),
                    ]))
                    .await
                    .unwrap();
                let r = t.header.unwrap().revision;
                log.push(('P', a, r));
                log.push(('P', b, r));
            }
        }
    }
    log
}

fn in_prefix(log: &[Ev], prefix: &str, from: i64) -> Vec<Ev> {
    log.iter()
        .filter(|e| e.1.starts_with(prefix) && e.2 >= from)
        .cloned()
        .collect()
}

async fn prefix_from_old_revision_while_writing_matches_write_log(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let mut log = write_mix(&c, "w/", 0, 30).await;
    let start = log[10].2;

    let mut w = c
        .watch(
            "w/",
            WatchOptions {
                start_revision: start,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert!(w.created().created && !w.created().canceled);
    let id = w.watch_id();

    // Writes continue while the watcher catches up on history.
    let wc = c.clone();
    let writer = tokio::spawn(async move { write_mix(&wc, "w/", 1, 60).await });
    let more = writer.await.unwrap();
    log.extend(more);

    let expected = in_prefix(&log, "w/", start);
    let (got, resps) = collect(&mut w, id, expected.len()).await;
    assert_eq!(got, expected);
    // Revisions never go back; a revision never spans two responses.
    let mut last = 0;
    for r in &resps {
        if let (Some(f), Some(l)) = (r.events.first(), r.events.last()) {
            assert!(
                ev_of(f).2 > last,
                "revision {} repeated or reordered",
                ev_of(f).2
            );
            last = ev_of(l).2;
        }
    }
    // Nothing else is pending: a progress request is answered next.
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!(p.watch_id, -1, "expected the progress response, got {p:?}");
    assert!(p.events.is_empty());
    assert!(hrev(&p) >= log.last().unwrap().2);
}

async fn prev_kv_and_filters(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let r1 = put(&c, "f/a", "1").await;
    let r2 = put(&c, "f/a", "2").await;
    let r3 = del(&c, "f/a").await;

    // prev_kv: none for the first put, the old value for the overwrite and the delete.
    let mut w = c
        .watch(
            "f/",
            WatchOptions {
                start_revision: r1,
                prev_kv: true,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let id = w.watch_id();
    let mut events = Vec::new();
    while events.len() < 3 {
        let r = next(&mut w).await;
        assert_eq!(r.watch_id, id);
        events.extend(r.events);
    }
    let got: Vec<Ev> = events.iter().map(ev_of).collect();
    assert_eq!(
        got,
        vec![
            ('P', "f/a".into(), r1),
            ('P', "f/a".into(), r2),
            ('D', "f/a".into(), r3)
        ]
    );
    assert!(events[0].prev_kv.is_none());
    let p = events[1].prev_kv.as_ref().expect("prev_kv of overwrite");
    assert_eq!((p.value.as_slice(), p.mod_revision), (&b"1"[..], r1));
    let p = events[2].prev_kv.as_ref().expect("prev_kv of delete");
    assert_eq!(
        (p.value.as_slice(), p.mod_revision, p.version),
        (&b"2"[..], r2, 2)
    );
    // A DELETE event carries only key and mod_revision.
    let kv = events[2].kv.as_ref().unwrap();
    assert!(kv.value.is_empty() && kv.create_revision == 0 && kv.version == 0);
    // Without prev_kv, none is sent.
    let mut w = c
        .watch(
            "f/",
            WatchOptions {
                start_revision: r2,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let r = next(&mut w).await;
    assert!(r.events.iter().all(|e| e.prev_kv.is_none()), "{r:?}");

    // NOPUT: only the delete; NODELETE: only the puts. A later write of the
    // other kind then proves the filtered events were not just late.
    let mut noput = c
        .watch(
            "f/",
            WatchOptions {
                start_revision: r1,
                no_put: true,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let mut nodel = c
        .watch(
            "f/",
            WatchOptions {
                start_revision: r1,
                no_delete: true,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let (ids_np, ids_nd) = (noput.watch_id(), nodel.watch_id());
    let (got, _) = collect(&mut noput, ids_np, 1).await;
    assert_eq!(got, vec![('D', "f/a".into(), r3)]);
    let (got, _) = collect(&mut nodel, ids_nd, 2).await;
    assert_eq!(got, vec![('P', "f/a".into(), r1), ('P', "f/a".into(), r2)]);
    let r4 = put(&c, "f/b", "x").await;
    let r5 = del(&c, "f/b").await;
    let r6 = put(&c, "f/c", "y").await;
    let (got, _) = collect(&mut noput, ids_np, 1).await;
    assert_eq!(got, vec![('D', "f/b".into(), r5)]);
    let (got, _) = collect(&mut nodel, ids_nd, 2).await;
    assert_eq!(got, vec![('P', "f/b".into(), r4), ('P', "f/c".into(), r6)]);
}

async fn cancel_stops_events(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let mut w = c.watch("c/", WatchOptions::prefix()).await.unwrap();
    let id = w.watch_id();
    // A second watch on the same stream keeps running after the first is canceled.
    w.create(
        "c/",
        WatchOptions {
            watch_id: 0,
            ..WatchOptions::prefix()
        },
    )
    .await
    .unwrap();
    let created2 = next(&mut w).await;
    assert!(created2.created && !created2.canceled, "{created2:?}");
    let id2 = created2.watch_id;
    assert_ne!(id, id2);

    let r1 = put(&c, "c/1", "a").await;
    let mut seen: HashMap<i64, Vec<Ev>> = HashMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 2 {
        let r = next(&mut w).await;
        seen.entry(r.watch_id)
            .or_default()
            .extend(r.events.iter().map(ev_of));
    }
    assert_eq!(seen[&id], vec![('P', "c/1".into(), r1)]);
    assert_eq!(seen[&id2], vec![('P', "c/1".into(), r1)]);

    w.cancel().await.unwrap();
    let r2 = put(&c, "c/2", "b").await;
    let r3 = put(&c, "c/3", "c").await;
    // Until the canceled response: maybe events of `id` (sent before the
    // cancel was processed); after it: none of `id`, and `id2` sees everything.
    let mut canceled = false;
    let mut after_cancel = Vec::new();
    let mut of_id2 = Vec::new();
    while !canceled || of_id2.len() < 2 {
        let r = next(&mut w).await;
        if r.watch_id == id && r.canceled {
            assert!(!canceled, "two canceled responses");
            canceled = true;
        } else if r.watch_id == id {
            assert!(!canceled, "event of a canceled watch: {r:?}");
        } else if r.watch_id == id2 {
            of_id2.extend(r.events.iter().map(ev_of));
        }
    }
    assert_eq!(
        of_id2,
        vec![('P', "c/2".into(), r2), ('P', "c/3".into(), r3)]
    );
    // More writes, then a progress request marks the end of what the stream
    // will say about them: nothing of `id` in between.
    let r4 = put(&c, "c/4", "d").await;
    loop {
        let r = next(&mut w).await;
        assert_ne!(r.watch_id, id, "response of a canceled watch: {r:?}");
        if r.watch_id == id2 {
            after_cancel.extend(r.events.iter().map(ev_of));
            if after_cancel.last().is_some_and(|e| e.2 == r4) {
                break;
            }
        }
    }
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!(p.watch_id, -1, "{p:?}");
    // Canceling an unknown watch is not an error for the stream.
    w.cancel_id(id).await.unwrap();
    put(&c, "c/5", "e").await;
    let r = next(&mut w).await;
    assert_ne!(r.watch_id, id, "{r:?}");
}

async fn compacted_start_revision_is_created_then_canceled(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(put(&c, "z/k", &format!("{i}")).await);
    }
    let compact = revs[3];
    c.compact(compact, true).await.unwrap();
    // Wait until every member has applied the compaction (it is replicated).
    let r0 = revs[0];
    for n in &cl.nodes {
        let nc = n.client().await;
        common::wait_until(SLOW, "member applied the compaction", || {
            let nc = nc.clone();
            async move {
                let o = GetOptions {
                    revision: r0,
                    serializable: true,
                    ..Default::default()
                };
                nc.get("z/k", o).await.is_err()
            }
        })
        .await;
    }
    for n in &cl.nodes {
        let nc = n.client().await;
        let mut w = nc
            .watch(
                "z/",
                WatchOptions {
                    start_revision: revs[1],
                    ..WatchOptions::prefix()
                },
            )
            .await
            .unwrap();
        let cr = w.created().clone();
        assert!(cr.created, "{cr:?}");
        assert!(
            !cr.canceled,
            "the created response must not be the cancel: {cr:?}"
        );
        let r = next(&mut w).await;
        assert_eq!(r.watch_id, cr.watch_id);
        assert!(r.canceled, "{r:?}");
        assert_eq!(r.compact_revision, compact, "{r:?}");
        assert!(r.events.is_empty());
    }
    // From the compaction revision itself the watch works.
    let mut w = c
        .watch(
            "z/",
            WatchOptions {
                start_revision: compact,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let id = w.watch_id();
    let (got, _) = collect(&mut w, id, 2).await;
    assert_eq!(
        got,
        vec![('P', "z/k".into(), revs[3]), ('P', "z/k".into(), revs[4])]
    );
}

async fn txn_events_arrive_in_one_response_in_order(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    put(&c, "t/c", "old").await;
    let mut w = c
        .watch(
            "t/",
            WatchOptions {
                prev_kv: true,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let t = c
        .txn(Txn::new().and_then([
            op_put("t/z", "1", PutOptions::default()),
            op_put("t/a", "2", PutOptions::default()),
            op_delete("t/c", DeleteOptions::default()),
            op_put("t/m", "3", PutOptions::default()),
        ]))
        .await
        .unwrap();
    let rev = t.header.unwrap().revision;
    let r = next(&mut w).await;
    let got: Vec<Ev> = r.events.iter().map(ev_of).collect();
    assert_eq!(
        got,
        vec![
            ('P', "t/z".into(), rev),
            ('P', "t/a".into(), rev),
            ('D', "t/c".into(), rev),
            ('P', "t/m".into(), rev),
        ],
        "all events of the txn, in op order, in one response"
    );
    assert_eq!(
        r.events[2].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"old".to_vec())
    );
    assert!(hrev(&r) >= rev);
}

async fn header_revision_never_ahead_of_sent_events(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let f = cl.followers().await;
    let (a, b) = (cl.nodes[f[0]].client().await, cl.nodes[f[1]].client().await);
    let writer = cl.client().await;
    let base = put(&writer, "other/base", "x").await;

    // A watch from an old revision: its created response must not claim more
    // than it has sent (APISIX resumes from any header revision + 1).
    let mut w = a
        .watch(
            "h/",
            WatchOptions {
                start_revision: base,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let created_rev = hrev(w.created());
    if imp == Impl::Cairn {
        assert!(
            created_rev < base,
            "created header {created_rev} ahead of the start revision {base}"
        );
    } else {
        // etcd 3.4 answers the current revision here; recorded, not asserted.
        eprintln!("etcd: created header revision {created_rev} for start {base}");
    }
    let id = w.watch_id();

    let wc = writer.clone();
    let log = tokio::spawn(async move { write_mix(&wc, "h/", 0, 60).await })
        .await
        .unwrap();
    let expected = in_prefix(&log, "h/", base);
    let (got, resps) = collect(&mut w, id, expected.len()).await;
    assert_eq!(got, expected);

    // Every response's header R: all events of the range with revision <= R
    // were sent by the end of that response.
    let mut sent = 0;
    for r in &resps {
        sent += r.events.len();
        let due = expected.iter().filter(|e| e.2 <= hrev(r)).count();
        assert!(
            due <= sent,
            "header revision {} claims {due} events but only {sent} were sent",
            hrev(r)
        );
    }
    // Resuming from the last header + 1 on ANOTHER member yields exactly the
    // later writes: nothing at or below that header.
    let last_h = hrev(resps.last().unwrap());
    let later = write_mix(&writer, "h/", 1, 12).await;
    let mut w2 = b
        .watch(
            "h/",
            WatchOptions {
                start_revision: last_h + 1,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let id2 = w2.watch_id();
    let want = in_prefix(&later, "h/", 0);
    let (got2, _) = collect(&mut w2, id2, want.len()).await;
    assert!(
        got2.iter().all(|e| e.2 > last_h),
        "{got2:?} vs header {last_h}"
    );
    assert_eq!(got2, want);

    // The same for a progress response (after everything was received).
    let (more, _) = collect(&mut w, id, want.len()).await;
    assert_eq!(more, want);
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!(p.watch_id, -1, "{p:?}");
    let prog = hrev(&p);
    assert!(prog >= later.last().unwrap().2);
    let last = write_mix(&writer, "h/", 2, 6).await;
    let mut w3 = b
        .watch(
            "h/",
            WatchOptions {
                start_revision: prog + 1,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    let id3 = w3.watch_id();
    let want = in_prefix(&last, "h/", 0);
    let (got3, _) = collect(&mut w3, id3, want.len()).await;
    assert_eq!(got3, want);
}

async fn thousand_watchers_on_one_member_see_every_event(imp: Impl) {
    const STREAMS: usize = 10;
    const PER_STREAM: usize = 100;
    const WRITES: usize = 20;
    let mut cl = Cluster::start(imp, 3).await;
    let f = cl.followers().await[0];
    let nc = cl.nodes[f].client().await;
    let writer = cl.client().await;

    // 10 streams × 100 watches on one member (a follower), alternately on the
    // prefix and on one key; created responses first.
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let mut w = nc.watch("m/", WatchOptions::prefix()).await.unwrap();
        let mut ids = vec![w.watch_id()];
        for i in 1..PER_STREAM {
            let o = if i % 2 == 0 {
                WatchOptions::prefix()
            } else {
                WatchOptions::default()
            };
            let key = if i % 2 == 0 { "m/" } else { "m/key" };
            w.create(key, o).await.unwrap();
        }
        while ids.len() < PER_STREAM {
            let r = next(&mut w).await;
            assert!(r.created && !r.canceled, "stream {s}: {r:?}");
            ids.push(r.watch_id);
        }
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), PER_STREAM, "watch IDs unique per stream");
        streams.push((w, ids));
    }

    // Readers run while the writes happen, as real watchers do. (A reader that
    // falls behind by ~16k small responses on one HTTP/2 connection makes the
    // h2 crate's DATA-frame budget close the connection: see the report.)
    let (log_tx, log_rx) = tokio::sync::watch::channel(Vec::<Ev>::new());
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(mut w, ids)| {
            let mut log_rx = log_rx.clone();
            tokio::spawn(async move {
                let mut got: HashMap<i64, Vec<Ev>> = HashMap::new();
                let mut total = 0;
                while total < PER_STREAM * WRITES {
                    let r = next(&mut w).await;
                    assert!(ids.contains(&r.watch_id) && !r.canceled, "{r:?}");
                    total += r.events.len();
                    got.entry(r.watch_id)
                        .or_default()
                        .extend(r.events.iter().map(ev_of));
                }
                let log = log_rx
                    .wait_for(|l| l.len() == WRITES)
                    .await
                    .unwrap()
                    .clone();
                for id in &ids {
                    assert_eq!(got.get(id), Some(&log), "watch {id}");
                }
            })
        })
        .collect();
    let mut log = Vec::new();
    for i in 0..WRITES {
        log.push((
            'P',
            "m/key".to_string(),
            put(&writer, "m/key", &i.to_string()).await,
        ));
    }
    log_tx.send(log).unwrap();
    for r in readers {
        r.await.unwrap();
    }
}

async fn watch_on_follower_from_future_revision(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let f = cl.followers().await[0];
    let fc = cl.nodes[f].client().await;
    let writer = cl.client().await;
    let now = put(&writer, "fu/0", "x").await;
    let mut w = fc
        .watch(
            "fu/",
            WatchOptions {
                start_revision: now + 5,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    assert!(w.created().created && !w.created().canceled);
    let id = w.watch_id();
    let mut log = Vec::new();
    for i in 1..=8 {
        log.push((
            'P',
            format!("fu/{i}"),
            put(&writer, &format!("fu/{i}"), "v").await,
        ));
    }
    let want = in_prefix(&log, "fu/", now + 5);
    assert_eq!(want.len(), 4);
    let (got, _) = collect(&mut w, id, want.len()).await;
    assert_eq!(got, want, "events start exactly at the future revision");
}

/// Spawns `etcdctl watch ...`, returns its first `n` stdout lines (within
/// the deadline), then kills it by PID.
fn etcdctl_watch_lines(eps: &[String], args: &[&str], n: usize) -> Vec<String> {
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl watch");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + SLOW;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    // Child::kill sends SIGKILL to this child's PID.
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "etcdctl watch printed only {lines:?}");
    lines
}

async fn etcdctl_watch_prefix_rev_and_prev_kv(imp: Impl) {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let mut cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let r1 = put(&c, "e/a", "1").await;
    put(&c, "x/out", "no").await;
    put(&c, "e/b", "2").await;
    put(&c, "e/a", "3").await;
    del(&c, "e/b").await;
    let f = cl.followers().await[0];
    let eps = vec![cl.nodes[f].client_url.clone()];
    let rev = format!("--rev={r1}");
    let eps2 = eps.clone();
    let lines = tokio::task::spawn_blocking(move || {
        etcdctl_watch_lines(&eps2, &["--prefix", &rev, "e/"], 12)
    })
    .await
    .unwrap();
    assert_eq!(
        lines,
        ["PUT", "e/a", "1", "PUT", "e/b", "2", "PUT", "e/a", "3", "DELETE", "e/b", ""]
    );
    let rev = format!("--rev={r1}");
    let lines = tokio::task::spawn_blocking(move || {
        etcdctl_watch_lines(&eps, &["--prefix", "--prev-kv", &rev, "e/"], 16)
    })
    .await
    .unwrap();
    assert_eq!(
        lines,
        [
            "PUT", "e/a", "1", // no previous value
            "PUT", "e/b", "2", //
            "PUT", "e/a", "1", "e/a", "3", // previous, then new
            "DELETE", "e/b", "2", "e/b", "", // previous, then the deleted key
        ]
    );
}

async fn large_responses_fragment_and_reassemble(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let big = |b: u8| vec![b; 600 * 1024];
    let ra = c
        .put("big/a", big(b'a'), PutOptions::default())
        .await
        .unwrap();
    c.put("big/b", big(b'b'), PutOptions::default())
        .await
        .unwrap();
    let from = ra.header.unwrap().revision;
    // One txn overwriting both: with prev_kv its events are ~2.4 MB, over the
    // 1.5 MiB limit, so a fragmenting watch gets them in pieces.
    let t = c
        .txn(Txn::new().and_then([
            op_put("big/a", big(b'c'), PutOptions::default()),
            op_put("big/b", big(b'd'), PutOptions::default()),
        ]))
        .await
        .unwrap();
    let rev = t.header.unwrap().revision;
    for fragment in [true, false] {
        let mut w = c
            .watch(
                "big/",
                WatchOptions {
                    start_revision: rev,
                    prev_kv: true,
                    fragment,
                    ..WatchOptions::prefix()
                },
            )
            .await
            .unwrap();
        let r = next(&mut w).await;
        assert!(!r.fragment);
        let got: Vec<Ev> = r.events.iter().map(ev_of).collect();
        assert_eq!(
            got,
            vec![('P', "big/a".into(), rev), ('P', "big/b".into(), rev)],
            "fragment={fragment}"
        );
        assert_eq!(r.events[0].kv.as_ref().unwrap().value, big(b'c'));
        assert_eq!(r.events[1].prev_kv.as_ref().unwrap().value, big(b'b'));
        assert!(r.events[0].prev_kv.as_ref().unwrap().mod_revision >= from);
    }
}

async fn require_leader_watch_ends_when_member_loses_leader(imp: Impl) {
    let mut cl = Cluster::start(imp, 3).await;
    let f = cl.followers().await;
    let keep = f[0];
    let nc = cl.nodes[keep].client().await;
    let mut w = nc
        .watch(
            "rl/",
            WatchOptions {
                require_leader: true,
                ..WatchOptions::prefix()
            },
        )
        .await
        .unwrap();
    // Quorum lost: the remaining member has no leader.
    for i in 0..3 {
        if i != keep {
            cl.nodes[i].kill9();
        }
    }
    let e = tokio::time::timeout(SLOW, async {
        loop {
            match w.next().await {
                Ok(r) => assert!(r.events.is_empty(), "{r:?}"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream ends within the deadline");
    assert_eq!(
        (e.code(), e.message()),
        (cairn_client::Code::Unavailable, "etcdserver: no leader"),
        "{e:?}"
    );
}

/// The details of one stream a client relies on: IDs the server chooses only
/// grow (a canceled ID is never handed out again), a client-chosen ID in use
/// is refused, and a watch canceled by compaction no longer holds the
/// stream back: a progress request answers with the current revision.
async fn stream_bookkeeping_as_etcd_keeps_it(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let c = cl.client().await;
    let mut w = c.watch("b/", WatchOptions::prefix()).await.unwrap();
    let first = w.watch_id();
    w.cancel().await.unwrap();
    let r = next(&mut w).await;
    assert!(r.canceled && r.watch_id == first, "{r:?}");
    w.create("b/", WatchOptions::prefix()).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created && !r.canceled, "{r:?}");
    assert!(r.watch_id > first, "a canceled ID came back: {r:?}");

    let chosen = WatchOptions {
        watch_id: 100,
        ..WatchOptions::prefix()
    };
    w.create("b/", chosen.clone()).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created && !r.canceled && r.watch_id == 100, "{r:?}");
    w.create("b/", chosen).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created && r.canceled, "{r:?}");
    assert_eq!(
        (r.watch_id, r.cancel_reason.as_str()),
        (-1, "mvcc: duplicate watch ID provided on the WatchStream")
    );

    // A watch from a compacted revision is created, then canceled...
    let old = put(&c, "b/k", "1").await;
    let compact = put(&c, "b/k", "2").await;
    c.compact(compact, true).await.unwrap();
    w.create(
        "b/",
        WatchOptions {
            start_revision: old,
            watch_id: 7,
            ..WatchOptions::prefix()
        },
    )
    .await
    .unwrap();
    let mut got_cancel = false;
    while !got_cancel {
        let r = next(&mut w).await;
        got_cancel = r.watch_id == 7 && r.canceled;
        assert!(r.events.is_empty() || r.watch_id != 7, "{r:?}");
    }
    // ...and then no longer holds back the stream's progress.
    let now = put(&c, "b/k", "3").await;
    let mut seen = 0;
    while seen < 2 {
        let r = next(&mut w).await;
        seen += r.events.iter().filter(|e| ev_of(e).2 == now).count();
    }
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!((p.watch_id, hrev(&p)), (-1, now), "{p:?}");
    // Its ID stays taken (etcd keeps it until the stream ends).
    w.create(
        "b/",
        WatchOptions {
            watch_id: 7,
            ..WatchOptions::prefix()
        },
    )
    .await
    .unwrap();
    let r = next(&mut w).await;
    assert!(r.canceled && r.watch_id == -1, "{r:?}");
}

/// Cairn bounds what one stream may hold (`--max-watches-per-stream`): a
/// create beyond it is refused with a reason, the stream and its other
/// watches go on, and a canceled watch makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_holds_at_most_its_limit_of_watches() {
    let opts = common::ClusterOptions {
        extra_args: vec!["--max-watches-per-stream=3".into()],
        ..Default::default()
    };
    let cl = Cluster::start_with(Impl::Cairn, 1, opts).await;
    let c = cl.client().await;
    let mut w = c.watch("l/", WatchOptions::prefix()).await.unwrap();
    let mut ids = vec![w.watch_id()];
    for _ in 0..2 {
        w.create("l/", WatchOptions::prefix()).await.unwrap();
        let r = next(&mut w).await;
        assert!(r.created && !r.canceled, "{r:?}");
        ids.push(r.watch_id);
    }
    w.create("l/", WatchOptions::prefix()).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created && r.canceled, "{r:?}");
    assert!(
        r.cancel_reason.contains("too many watches on one stream"),
        "{r:?}"
    );
    // The three still deliver.
    let rev = put(&c, "l/k", "v").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next(&mut w).await;
        if r.events.iter().any(|e| ev_of(e).2 == rev) {
            seen.push(r.watch_id);
        }
    }
    seen.sort();
    assert_eq!(seen, ids);
    w.cancel_id(ids[0]).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.canceled && r.watch_id == ids[0], "{r:?}");
    w.create("l/", WatchOptions::prefix()).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created && !r.canceled, "room again after a cancel: {r:?}");
}
