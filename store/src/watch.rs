//! The watchers of one stream, served together by the stream's task.
//!
//! A watcher never holds events of its own: it remembers the next revision it
//! owes its client ([`Watcher::next`]). Each step of the stream picks the
//! watchers owed the same revision, reads the history from there once
//! ([`crate::mvcc::Mvcc::read_history`]), and gives every watcher whose
//! filter is the same one shared copy of the matching events
//! ([`SharedEvents`]), encoded once for all of them. A step starts only once
//! the stream's queue has room for its answer, so a client that does not
//! read costs its watches' specs, not their backlogs, and no event can be
//! skipped or sent twice. The header revision of a response is the last
//! revision the watcher has fully read: everything up to it that matches
//! has been sent.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes};
use cairn_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use cairn_proto::mvccpb::{event::EventType, Event};
use prost::Message;

use crate::mvcc::keys::{KeyRange, Rev};
use crate::mvcc::view::View;
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
}

/// Bytes of history read per step; a step becomes one response per watcher
/// unless the events of a single revision are larger.
const READ_STEP_BYTES: usize = 256 * 1024;

/// Bytes of events one step may copy for watchers whose filters differ;
/// the others wait for the next step. Watchers with the same filter share
/// one copy, which counts once.
const STEP_COPY_BYTES: usize = 1024 * 1024;

/// Events several watchers receive alike, encoded once for all of them.
pub struct SharedEvents {
    events: Vec<Event>,
    /// The events as `WatchResponse.events` entries (field 11), made the
    /// first time a gRPC stream sends them.
    encoded: OnceLock<Bytes>,
}

impl SharedEvents {
    fn new(events: Vec<Event>) -> Self {
        SharedEvents {
            events,
            encoded: OnceLock::new(),
        }
    }

    fn encoded(&self) -> &Bytes {
        self.encoded.get_or_init(|| {
            let len = self
                .events
                .iter()
                .map(|e| prost::encoding::message::encoded_len(11, e))
                .sum();
            let mut buf = Vec::with_capacity(len);
            for e in &self.events {
                prost::encoding::message::encode(11, e, &mut buf);
            }
            buf.into()
        })
    }

    fn encoded_len(&self) -> usize {
        self.events
            .iter()
            .map(|e| prost::encoding::message::encoded_len(11, e))
            .sum()
    }
}

/// One response on a watch stream.
pub enum WatchOut {
    /// A response built whole: created, canceled, progress, fragments.
    Whole(WatchResponse),
    /// `head` (no events of its own) followed by events shared with other
    /// watchers of the stream.
    Shared {
        head: WatchResponse,
        events: Arc<SharedEvents>,
    },
}

impl WatchOut {
    /// The response as one message (for the JSON gateway).
    pub fn into_response(self) -> WatchResponse {
        match self {
            WatchOut::Whole(r) => r,
            WatchOut::Shared { head, events } => WatchResponse {
                events: events.events.clone(),
                ..head
            },
        }
    }

    /// Writes the message as prost would encode [`Self::into_response`]:
    /// the head's fields all have lower numbers than `events` (11).
    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            WatchOut::Whole(r) => r.encode_raw(buf),
            WatchOut::Shared { head, events } => {
                head.encode_raw(buf);
                buf.put_slice(events.encoded());
            }
        }
    }
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

    /// What decides which events (and which copies of them) a watcher
    /// gets: watchers with the same filter share them.
    fn filter(&self) -> (&[u8], &[u8], bool, bool, bool) {
        (
            &self.key,
            &self.range_end,
            self.no_put,
            self.no_delete,
            self.prev_kv,
        )
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

/// One watch of a stream.
struct Watcher {
    spec: WatchSpec,
    /// The next revision this watcher owes its client.
    next: i64,
    /// Nothing was sent since the last progress tick (etcd's rule for
    /// progress notifications).
    quiet: bool,
}

/// The watches of one stream, and the IDs of those that ended on their own
/// (canceled by compaction), which stay taken until the client cancels them
/// or the stream ends, as in etcd.
pub struct Watchers {
    live: BTreeMap<i64, Watcher>,
    /// Ended watches, with the bytes of their keys.
    ended: BTreeMap<i64, usize>,
    /// The watch served first by the last step: steps take turns by ID, so
    /// a watch catching up on old history cannot hold back live ones.
    cursor: i64,
    /// Bytes of keys and range ends of all the watches above.
    key_bytes: usize,
    cfg: WatchConfig,
}

fn key_bytes(spec: &WatchSpec) -> usize {
    spec.key.len() + spec.range_end.len()
}

impl Watchers {
    pub fn new(cfg: WatchConfig) -> Self {
        Watchers {
            live: BTreeMap::new(),
            ended: BTreeMap::new(),
            cursor: i64::MIN,
            key_bytes: 0,
            cfg,
        }
    }

    /// Watches on the stream, live or ended.
    pub fn count(&self) -> usize {
        self.live.len() + self.ended.len()
    }

    /// Bytes of the keys and range ends of the stream's watches.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Whether `id` names a watch of the stream, live or ended.
    pub fn contains(&self, id: i64) -> bool {
        self.live.contains_key(&id) || self.ended.contains_key(&id)
    }

    /// Adds a watch that owes its client everything from `spec.start_rev`.
    pub fn add(&mut self, spec: WatchSpec) {
        self.key_bytes += key_bytes(&spec);
        let next = spec.start_rev;
        if let Some(old) = self.live.insert(
            spec.watch_id,
            Watcher {
                spec,
                next,
                quiet: true,
            },
        ) {
            // The caller checks `contains` first; keep the count right anyway.
            self.key_bytes -= key_bytes(&old.spec);
        }
    }

    /// Removes a watch; false if the stream had none with that ID.
    pub fn remove(&mut self, id: i64) -> bool {
        let bytes = match self.live.remove(&id) {
            Some(w) => key_bytes(&w.spec),
            None => match self.ended.remove(&id) {
                Some(b) => b,
                None => return false,
            },
        };
        self.key_bytes -= bytes;
        true
    }

    /// Whether some live watch is owed a revision at or below `rev`.
    pub fn owed(&self, rev: i64) -> bool {
        self.live.values().any(|w| w.next <= rev)
    }

    /// The revision every live watch has been brought up to, if any.
    pub fn delivered(&self) -> Option<i64> {
        self.live.values().map(|w| w.next - 1).min()
    }

    /// Whether some watch asked for progress notifications.
    pub fn wants_progress(&self) -> bool {
        self.live.values().any(|w| w.spec.progress_notify)
    }

    /// A progress tick (etcd's rule): each caught-up watch that asked for
    /// progress notifications and was sent nothing since the last tick
    /// hears how far it is.
    pub fn progress_tick(&mut self, rev: i64, term: u64) -> Vec<WatchOut> {
        let mut out = Vec::new();
        for w in self.live.values_mut() {
            if w.spec.progress_notify && w.quiet && w.next > rev {
                out.push(WatchOut::Whole(WatchResponse {
                    header: header(&self.cfg, w.next - 1, term),
                    watch_id: w.spec.watch_id,
                    ..Default::default()
                }));
            }
            w.quiet = true;
        }
        out
    }

    /// Serves the watches owed the same revision as the first owed watch
    /// after the cursor: one history read from there, one copy of the
    /// events per distinct filter. Empty if no watch is owed anything up to
    /// `rev`.
    pub fn step(&mut self, mvcc: &Mvcc, rev: i64, term: u64) -> Vec<WatchOut> {
        let after = self
            .live
            .range((Bound::Excluded(self.cursor), Bound::Unbounded))
            .chain(self.live.range(..=self.cursor));
        let Some((first, from)) = after
            .filter(|(_, w)| w.next <= rev)
            .map(|(id, w)| (*id, w.next))
            .next()
        else {
            return Vec::new();
        };
        self.cursor = first;
        let group: Vec<i64> = self
            .live
            .range(first..)
            .chain(self.live.range(..first))
            .filter(|(_, w)| w.next == from)
            .map(|(id, _)| *id)
            .collect();
        let live = &self.live;
        let read = mvcc.read_history(from, READ_STEP_BYTES, |view, events, upto| {
            let mut made = HashMap::new();
            let mut copied = 0;
            let mut served = Vec::with_capacity(group.len());
            for id in &group {
                let spec = &live[id].spec;
                if let Some(shared) = made.get(&spec.filter()) {
                    served.push((*id, Arc::clone(shared)));
                    continue;
                }
                if copied >= STEP_COPY_BYTES {
                    // This watch waits for the next step (the same read).
                    continue;
                }
                let shared = Arc::new(SharedEvents::new(matching(view, spec, events)));
                copied += shared.encoded_len();
                made.insert(spec.filter(), shared.clone());
                served.push((*id, shared));
            }
            (served, upto)
        });
        match read {
            Ok((served, upto)) => self.deliver(served, upto, term),
            Err(compact_rev) => {
                // The history these watches still owe is gone: cancel them
                // as etcd does, so their clients know to re-read everything.
                let now = mvcc.revision();
                let mut out = Vec::with_capacity(group.len());
                for id in group {
                    if let Some(w) = self.live.remove(&id) {
                        self.ended.insert(id, key_bytes(&w.spec));
                    }
                    out.push(WatchOut::Whole(WatchResponse {
                        header: header(&self.cfg, now, term),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact_rev,
                        ..Default::default()
                    }));
                }
                out
            }
        }
    }

    /// Moves the served watches past `upto` and answers those that have
    /// events: one response each, unless a watch allowed fragments and its
    /// events are larger than a response may be.
    fn deliver(
        &mut self,
        served: Vec<(i64, Arc<SharedEvents>)>,
        upto: i64,
        term: u64,
    ) -> Vec<WatchOut> {
        let mut out = Vec::with_capacity(served.len());
        for (id, events) in served {
            let Some(w) = self.live.get_mut(&id) else {
                continue;
            };
            w.next = upto + 1;
            if events.events.is_empty() {
                continue;
            }
            w.quiet = false;
            let head = WatchResponse {
                header: header(&self.cfg, upto, term),
                watch_id: id,
                ..Default::default()
            };
            if w.spec.fragment && events.encoded_len() > self.cfg.max_response_bytes {
                let parts = fragments(self.cfg.max_response_bytes, &head, &events.events);
                out.extend(parts.into_iter().map(WatchOut::Whole));
            } else {
                out.push(WatchOut::Shared { head, events });
            }
        }
        out
    }
}

/// The events a watch wants, with their previous values if it asked.
fn matching(view: &View, spec: &WatchSpec, events: &[Event]) -> Vec<Event> {
    let mut out = Vec::new();
    for ev in events.iter().filter(|e| spec.matches(e)) {
        let mut ev = ev.clone();
        if spec.prev_kv {
            if let Some(kv) = &ev.kv {
                let before = Rev {
                    main: kv.mod_revision,
                    sub: 0,
                };
                ev.prev_kv = view.prev_kv(&kv.key, before).ok().flatten();
            }
        }
        out.push(ev);
    }
    out
}

/// Splits events into responses of at most `max` bytes (or one event, if
/// larger); all but the last are marked as fragments.
fn fragments(max: usize, head: &WatchResponse, events: &[Event]) -> Vec<WatchResponse> {
    let part = |events: Vec<Event>, fragment: bool| WatchResponse {
        events,
        fragment,
        ..head.clone()
    };
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for ev in events {
        let n = ev.encoded_len();
        if !cur.is_empty() && size + n > max {
            out.push(part(std::mem::take(&mut cur), true));
            size = 0;
        }
        size += n;
        cur.push(ev.clone());
    }
    out.push(part(cur, false));
    out
}

#[cfg(test)]
mod tests;
