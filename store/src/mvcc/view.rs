//! Reads over the state-machine tree, optionally through the pending writes of
//! the batch being applied (so later ops of a batch see earlier ones).

use std::collections::BTreeMap;
use std::ops::Bound;

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use super::keys::{self, KeyRange, Rev};
use super::Tree;
use crate::error::EtcdError;

/// Pending raw writes of a batch: `None` is a delete.
pub type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A read-only view: the tree, the revisions it is at, and pending writes.
pub struct View<'a> {
    pub tree: &'a Tree,
    pub overlay: Option<&'a Overlay>,
    /// Current (highest committed, or pending) main revision.
    pub rev: i64,
    pub compact_rev: i64,
}

pub(crate) fn storage_err(e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Internal(format!("storage: {e}"))
}

fn decode<M: Message + Default>(b: &[u8]) -> Result<M, EtcdError> {
    M::decode(b).map_err(storage_err)
}

type OverlayIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;

/// While walking `i`: the key being looked at and its newest revision ≤ the
/// read revision, with whether that revision was a put.
type Candidate = Option<(Vec<u8>, Option<(Rev, bool)>)>;

/// Raw tree entries in a key range, with the overlay merged on top.
pub fn scan<'a>(
    tree: &'a Tree,
    overlay: Option<&'a Overlay>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), EtcdError>> + 'a {
    let (lo_s, hi_s) = (
        lo.as_ref().map(Vec::as_slice),
        hi.as_ref().map(Vec::as_slice),
    );
    let ordered = super::tree::ordered(lo_s, hi_s);
    let base = tree.range(lo_s, hi_s);
    let ov: OverlayIter<'a> = match overlay {
        // Reversed bounds (a `range_end` below the key) are empty, not a panic.
        Some(o) if ordered => Box::new(o.range((lo, hi))),
        _ => Box::new(std::iter::empty()),
    };
    Merge {
        base: base.peekable(),
        ov: ov.peekable(),
    }
}

struct Merge<'a> {
    base: std::iter::Peekable<super::tree::Iter<'a>>,
    ov: std::iter::Peekable<OverlayIter<'a>>,
}

impl Iterator for Merge<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), EtcdError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let base_key = self.base.peek().map(|(k, _)| *k);
            let Some(&(ok, ov)) = self.ov.peek() else {
                let (k, v) = self.base.next()?;
                return Some(Ok((k.to_vec(), v.to_vec())));
            };
            match base_key {
                Some(bk) if bk < ok.as_slice() => {
                    let (k, v) = self.base.next()?;
                    return Some(Ok((k.to_vec(), v.to_vec())));
                }
                Some(bk) if bk == ok.as_slice() => {
                    // The pending write replaces the stored entry.
                    self.base.next();
                }
                _ => {}
            }
            self.ov.next();
            if let Some(v) = ov {
                return Some(Ok((ok.clone(), v.clone())));
            }
            // A pending delete hides the key; look further.
        }
    }
}

impl View<'_> {
    pub fn get_raw(&self, k: &[u8]) -> Result<Option<Vec<u8>>, EtcdError> {
        if let Some(v) = self.overlay.and_then(|o| o.get(k)) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k).map(<[u8]>::to_vec))
    }

    /// The live KeyValue of `key` at the current revision.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        self.get_raw(&keys::kv_key(key))?
            .map(|b| self.resolve_kv(&b))
            .transpose()
    }

    /// The KeyValue a `k` record stands for (see [`keys::KV_REF`]).
    fn resolve_kv(&self, v: &[u8]) -> Result<KeyValue, EtcdError> {
        let Some(rev) = keys::parse_kv_ref(v) else {
            return Err(storage_err(
                "a live-key record that does not point into the history",
            ));
        };
        self.event_at(rev)?
            .and_then(|e| e.kv)
            .ok_or_else(|| storage_err(format!("no history record at revision {rev:?}")))
    }

    /// Every live key in `range` at revision `at` (≤ current), in key order.
    /// `at == self.rev` reads the `k` prefix; older revisions walk `i` + `h`.
    pub fn kvs_at(&self, range: &KeyRange, at: i64) -> Result<Vec<KeyValue>, EtcdError> {
        let mut out = Vec::new();
        if at >= self.rev {
            let (lo, hi) = range.kv_bounds();
            for item in scan(self.tree, self.overlay, lo, hi) {
                let (_, v) = item?;
                out.push(self.resolve_kv(&v)?);
            }
            return Ok(out);
        }
        let (lo, hi) = range.idx_bounds();
        // Per key: the newest revision ≤ at, and whether it was a put.
        let mut cur: Candidate = None;
        let flush = |cur: Candidate, out: &mut Vec<KeyValue>| -> Result<(), EtcdError> {
            if let Some((_, Some((rev, true)))) = cur {
                if let Some(ev) = self.event_at(rev)? {
                    out.extend(ev.kv);
                }
            }
            Ok(())
        };
        for item in scan(self.tree, self.overlay, lo, hi) {
            let (k, v) = item?;
            let Some((key, rev)) = keys::parse_idx(&k) else {
                continue;
            };
            if cur.as_ref().map(|c| c.0 != key).unwrap_or(true) {
                flush(cur.take(), &mut out)?;
                cur = Some((key, None));
            }
            if rev.main <= at {
                if let Some(c) = cur.as_mut() {
                    c.1 = Some((rev, v.first() == Some(&0)));
                }
            }
        }
        flush(cur, &mut out)?;
        Ok(out)
    }

    pub fn event_at(&self, rev: Rev) -> Result<Option<Event>, EtcdError> {
        self.get_raw(&keys::hist_key(rev))?
            .map(|b| decode(&b))
            .transpose()
    }

    /// The value `key` had just before revision `before` (for `prev_kv` of
    /// watch events), if it was live and not compacted away.
    pub fn prev_kv(&self, key: &[u8], before: Rev) -> Result<Option<KeyValue>, EtcdError> {
        let lo = Bound::Included(keys::idx_group(key));
        let hi = Bound::Excluded(keys::idx_key(key, before));
        let last = scan(self.tree, self.overlay, lo, hi).last().transpose()?;
        match last {
            Some((k, v)) if v.first() == Some(&0) => {
                let Some((_, rev)) = keys::parse_idx(&k) else {
                    return Ok(None);
                };
                Ok(self.event_at(rev)?.and_then(|e| e.kv))
            }
            _ => Ok(None),
        }
    }

    /// Raised alarms as (member ID, etcd AlarmType).
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, EtcdError> {
        match self.get_raw(&keys::meta_key("alarms"))? {
            Some(b) => bincode::deserialize(&b).map_err(storage_err),
            None => Ok(Vec::new()),
        }
    }

    /// The granted TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        Ok(self
            .get_raw(&keys::lease_key(id))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes))
    }

    /// Every lease as (id, granted TTL).
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, EtcdError> {
        let lo = Bound::Included(vec![keys::LEASE]);
        let hi = Bound::Excluded(vec![keys::LEASE + 1]);
        let mut out = Vec::new();
        for item in scan(self.tree, self.overlay, lo, hi) {
            let (k, v) = item?;
            if let (Some(id), Some(ttl)) = (keys::parse_lease_key(&k), keys::parse_lease_ttl(&v)) {
                out.push((id, ttl));
            }
        }
        Ok(out)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        let prefix = keys::attach_prefix(id);
        let mut out = Vec::new();
        for item in scan(
            self.tree,
            self.overlay,
            Bound::Included(prefix.clone()),
            Bound::Unbounded,
        ) {
            let (k, _) = item?;
            match k.strip_prefix(prefix.as_slice()) {
                Some(key) => out.push(key.to_vec()),
                None => break,
            }
        }
        Ok(out)
    }

    /// History from revision `from` on: whole revisions, in order, until
    /// about `max_bytes` of events have been read. Returns the events and the
    /// last revision read completely (`from - 1` if none), so a watcher can
    /// report progress up to exactly what it has seen.
    pub fn history(&self, from: i64, max_bytes: usize) -> Result<(Vec<Event>, i64), EtcdError> {
        let lo = Bound::Included(keys::hist_key(Rev { main: from, sub: 0 }));
        let hi = Bound::Excluded(keys::hist_key(Rev {
            main: self.rev + 1,
            sub: 0,
        }));
        let mut events = Vec::new();
        let mut upto = from - 1;
        let mut bytes = 0;
        for item in scan(self.tree, self.overlay, lo, hi) {
            let (k, v) = item?;
            let main = Rev::from_bytes(&k[1..]).map(|r| r.main).unwrap_or(upto);
            if main != upto && bytes >= max_bytes {
                // Stop at a revision boundary: a txn's events stay together.
                return Ok((events, upto));
            }
            if main != upto {
                upto = main;
            }
            bytes += v.len();
            events.push(decode(&v)?);
        }
        Ok((events, self.rev))
    }

    /// Checks a read revision against the compacted and current revisions.
    pub fn check_rev(&self, rev: i64) -> Result<i64, EtcdError> {
        let at = if rev <= 0 { self.rev } else { rev };
        if at > self.rev {
            return Err(EtcdError::FutureRev);
        }
        if at < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        Ok(at)
    }

    /// etcd's Range: filters, sort, limit with `more`, count of the whole range.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let at = self.check_rev(r.revision)?;
        let range = KeyRange::new(&r.key, &r.range_end);
        let header = Some(ResponseHeader {
            revision: self.rev,
            ..Default::default()
        });
        if let Some(resp) = self.range_page(r, &range, at)? {
            return Ok(RangeResponse { header, ..resp });
        }
        let mut kvs = self.kvs_at(&range, at)?;
        let count = kvs.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                header,
                count,
                ..Default::default()
            });
        }
        let (min_mod, max_mod) = (r.min_mod_revision, r.max_mod_revision);
        let (min_create, max_create) = (r.min_create_revision, r.max_create_revision);
        kvs.retain(|kv| {
            !(max_mod != 0 && kv.mod_revision > max_mod
                || min_mod != 0 && kv.mod_revision < min_mod
                || max_create != 0 && kv.create_revision > max_create
                || min_create != 0 && kv.create_revision < min_create)
        });
        let target =
            SortTarget::try_from(r.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
        let mut order =
            SortOrder::try_from(r.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
        if target != SortTarget::Key && order == SortOrder::None {
            // etcd sorts ascending by default when the target is not the key.
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            match target {
                SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }
}

impl View<'_> {
    /// The cheap cases of a range at the current revision: `count_only`, and
    /// a `limit` in key order without filters. The keys are counted without
    /// touching their values, and only the page returned is decoded, so a
    /// paged list costs its page plus a walk of the keys, not a decode of the
    /// whole range (etcd, too, counts from its index and fetches `limit`
    /// values). `None`: the general path must run (another sort order,
    /// filters, a past revision, or a writer's pending changes).
    fn range_page(
        &self,
        r: &RangeRequest,
        range: &KeyRange,
        at: i64,
    ) -> Result<Option<RangeResponse>, EtcdError> {
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let target =
            SortTarget::try_from(r.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
        let order = SortOrder::try_from(r.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
        // By key, ascending or descending (etcd sorts by any other target
        // ascending even when no order is given).
        let key_order = target == SortTarget::Key;
        if at < self.rev || self.overlay.is_some() {
            return Ok(None);
        }
        if !r.count_only && (filtered || !key_order || r.limit <= 0) {
            return Ok(None);
        }
        let (lo, hi) = range.kv_bounds();
        let bounds = (
            lo.as_ref().map(Vec::as_slice),
            hi.as_ref().map(Vec::as_slice),
        );
        let count = self.tree.count(bounds.0, bounds.1) as i64;
        if r.count_only {
            return Ok(Some(RangeResponse {
                count,
                ..Default::default()
            }));
        }
        let n = r.limit as usize;
        let records = self.tree.range(bounds.0, bounds.1);
        let page: Vec<&[u8]> = if order == SortOrder::Descend {
            records.rev().take(n).map(|(_, v)| v).collect()
        } else {
            records.take(n).map(|(_, v)| v).collect()
        };
        let mut kvs = Vec::with_capacity(page.len());
        for v in page {
            let mut kv = self.resolve_kv(v)?;
            if r.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        Ok(Some(RangeResponse {
            more: count > r.limit,
            kvs,
            count,
            ..Default::default()
        }))
    }
}

/// Delete events carry only the key and the revision, as etcd's.
pub fn delete_event(key: &[u8], rev: i64) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: key.to_vec(),
            mod_revision: rev,
            ..Default::default()
        }),
        prev_kv: None,
    }
}
