//! Watchers: one task per watch, reading the store's history.
//!
//! A watcher never holds events of its own: it remembers the next revision it
//! owes its client, waits until the store has committed that far, reads the
//! history from there ([`crate::mvcc::view::View::history`]) and sends what
//! matches. A slow client only makes its watcher read history later, so memory
//! stays bounded however many watchers lag (a watcher reads only once its
//! stream has room for the answer), and no event can be skipped or sent
//! twice. The header revision of a response is the last revision the
//! watcher has fully read: everything up to it that matches has been sent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use cairn_proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;

use crate::mvcc::keys::{KeyRange, Rev};
use crate::mvcc::Mvcc;

/// What a client asked to watch.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub watch_id: i64,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// First revision to deliver.
    pub start_rev: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

/// Settings shared by every watcher of a member.
#[derive(Clone)]
pub struct WatchConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Largest response before fragmenting (the request size limit).
    pub max_response_bytes: usize,
    pub progress_interval: Duration,
}

/// Bytes of history read per step; a step becomes one response unless the
/// events of a single revision are larger.
const READ_STEP_BYTES: usize = 256 * 1024;

/// A running watcher's public state.
pub struct WatcherState {
    /// Last revision whose matching events have all been sent.
    pub delivered: AtomicI64,
}

impl WatchSpec {
    fn matches(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        let is_put = ev.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        KeyRange::new(&self.key, &self.range_end).contains(&kv.key)
    }
}

fn header(cfg: &WatchConfig, rev: i64, term: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: cfg.cluster_id,
        member_id: cfg.member_id,
        revision: rev,
        raft_term: term,
    })
}

/// Runs one watcher until its client goes away or it is cancelled (by the
/// caller dropping the task), sending responses into `tx`.
pub async fn run(
    mvcc: Arc<Mvcc>,
    cfg: WatchConfig,
    spec: WatchSpec,
    state: Arc<WatcherState>,
    term: impl Fn() -> u64 + Send + 'static,
    tx: mpsc::Sender<Result<WatchResponse, tonic::Status>>,
) {
    let mut next = spec.start_rev;
    let mut revs = mvcc.subscribe();
    let mut last_sent = tokio::time::Instant::now();
    loop {
        // Wait until the store has committed revision `next`.
        while *revs.borrow_and_update() < next {
            let progress_at = last_sent + cfg.progress_interval;
            tokio::select! {
                r = revs.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(progress_at), if spec.progress_notify => {
                    // Caught up and idle: tell the client how far it is.
                    let resp = WatchResponse {
                        header: header(&cfg, next - 1, term()),
                        watch_id: spec.watch_id,
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
        // A place in the stream's queue first, and only then the history:
        // a watcher whose client does not read waits here holding no events,
        // so ten thousand of them cost their specs, not their backlogs.
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        let read = mvcc.read_history(next, READ_STEP_BYTES, |v, events, upto| {
            let mut out = Vec::new();
            for ev in events.iter().filter(|e| spec.matches(e)) {
                let mut ev = ev.clone();
                if spec.prev_kv {
                    if let Some(kv) = &ev.kv {
                        ev.prev_kv = v
                            .prev_kv(
                                &kv.key,
                                Rev {
                                    main: kv.mod_revision,
                                    sub: 0,
                                },
                            )
                            .ok()
                            .flatten();
                    }
                }
                out.push(ev);
            }
            (out, upto)
        });
        let (events, upto) = match read {
            Ok(r) => r,
            Err(compact_rev) => {
                // The history this watcher still owes is gone: cancel it as
                // etcd does, so the client knows to re-read everything.
                let resp = WatchResponse {
                    header: header(&cfg, mvcc.revision(), term()),
                    watch_id: spec.watch_id,
                    canceled: true,
                    compact_revision: compact_rev,
                    ..Default::default()
                };
                permit.send(Ok(resp));
                return;
            }
        };
        if !events.is_empty() {
            let mut resps = responses(&cfg, &spec, events, upto, term()).into_iter();
            if let Some(first) = resps.next() {
                permit.send(Ok(first));
            }
            // Fragments of one revision too large for one response.
            for resp in resps {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            last_sent = tokio::time::Instant::now();
        } else {
            drop(permit);
        }
        state.delivered.store(upto, Ordering::Release);
        next = upto + 1;
    }
}

/// Splits events into responses: one unless the client allowed fragments and
/// they are larger than the response limit.
fn responses(
    cfg: &WatchConfig,
    spec: &WatchSpec,
    events: Vec<Event>,
    upto: i64,
    term: u64,
) -> Vec<WatchResponse> {
    use prost::Message;
    let mk = |events: Vec<Event>, fragment: bool| WatchResponse {
        header: header(cfg, upto, term),
        watch_id: spec.watch_id,
        fragment,
        events,
        ..Default::default()
    };
    if !spec.fragment {
        return vec![mk(events, false)];
    }
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for ev in events {
        let n = ev.encoded_len();
        if !cur.is_empty() && size + n > cfg.max_response_bytes {
            out.push(mk(std::mem::take(&mut cur), true));
            size = 0;
        }
        size += n;
        cur.push(ev);
    }
    out.push(mk(cur, false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_only_when_asked() {
        let cfg = WatchConfig {
            cluster_id: 1,
            member_id: 2,
            max_response_bytes: 100,
            progress_interval: Duration::from_secs(600),
        };
        let ev = |i: u8| Event {
            kv: Some(cairn_proto::mvccpb::KeyValue {
                key: vec![i],
                value: vec![0; 60],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut spec = WatchSpec {
            watch_id: 7,
            key: vec![0],
            range_end: vec![0],
            start_rev: 1,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
        };
        assert_eq!(
            responses(&cfg, &spec, vec![ev(1), ev(2), ev(3)], 5, 1).len(),
            1
        );
        spec.fragment = true;
        let r = responses(&cfg, &spec, vec![ev(1), ev(2), ev(3)], 5, 1);
        assert_eq!(r.len(), 3);
        assert!(r[0].fragment && r[1].fragment && !r[2].fragment);
        assert!(r.iter().all(|r| r.header.as_ref().unwrap().revision == 5));
    }
}
