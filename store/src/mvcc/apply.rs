//! Applying committed requests: etcd's Put, DeleteRange, Txn and Compact
//! semantics on top of [`View`], writing into an overlay that the state machine
//! commits atomically once the whole batch of log entries is applied.

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request as Op;
use cairn_proto::etcdserverpb::response_op::Response as OpResp;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use super::keys::{self, KeyRange, Rev};
use super::view::{delete_event, scan, Overlay, View};
use super::Tree;
use crate::error::EtcdError;

/// etcd's `AlarmType::NOSPACE`.
pub const ALARM_NOSPACE: i32 = 1;

/// A raw key and the overlay entry it had before a write (`None`: none).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// Pending writes of one apply batch.
pub struct Writer<'a> {
    pub tree: &'a Tree,
    pub overlay: Overlay,
    /// Revision after the requests applied so far in this batch.
    pub rev: i64,
    pub compact_rev: i64,
    /// Undo records of the request in progress, to roll back on error.
    undo: Vec<Undo>,
}

/// Revision bookkeeping of one request: every change gets (main, sub).
struct Ctx {
    main: i64,
    sub: u32,
}

impl Ctx {
    fn changed(&self) -> bool {
        self.sub > 0
    }

    /// The revision reads inside this request observe.
    fn read_rev(&self) -> i64 {
        if self.changed() {
            self.main
        } else {
            self.main - 1
        }
    }

    fn next(&mut self) -> Rev {
        let r = Rev {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        r
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl<'a> Writer<'a> {
    pub fn new(tree: &'a Tree, rev: i64, compact_rev: i64) -> Self {
        Writer {
            tree,
            overlay: Overlay::new(),
            rev,
            compact_rev,
            undo: Vec::new(),
        }
    }

    fn view_at(&self, rev: i64) -> View<'_> {
        View {
            tree: self.tree,
            overlay: Some(&self.overlay),
            rev,
            compact_rev: self.compact_rev,
        }
    }

    pub fn view(&self) -> View<'_> {
        self.view_at(self.rev)
    }

    fn write(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        let old = self.overlay.insert(k.clone(), v);
        self.undo.push((k, old));
    }

    pub fn put_meta(&mut self, name: &str, v: Vec<u8>) {
        self.overlay.insert(keys::meta_key(name), Some(v));
    }

    pub fn put_raw(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        self.overlay.insert(k, v);
    }

    /// Runs one request; on error every write it made is rolled back, so a
    /// failed request changes nothing and adds no revision.
    fn request<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Ctx) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        self.undo.clear();
        let mut ctx = Ctx {
            main: self.rev + 1,
            sub: 0,
        };
        match f(self, &mut ctx) {
            Ok(t) => {
                if ctx.changed() {
                    self.rev = ctx.main;
                }
                Ok(t)
            }
            Err(e) => {
                for (k, old) in self.undo.drain(..).rev() {
                    match old {
                        Some(v) => self.overlay.insert(k, v),
                        None => self.overlay.remove(&k),
                    };
                }
                Err(e)
            }
        }
    }

    pub fn put(&mut self, r: &PutRequest) -> Result<PutResponse, EtcdError> {
        self.request(|w, ctx| {
            w.check_put(r)?;
            w.do_put(ctx, r)
        })
    }

    pub fn delete_range(
        &mut self,
        r: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        self.request(|w, ctx| w.do_delete(ctx, r))
    }

    pub fn txn(&mut self, r: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.request(|w, ctx| {
            // As etcd: every compare on the chosen path is evaluated against the
            // state before the txn, then puts and ranges on that path are
            // checked, and only then anything is written.
            let mut path = Vec::new();
            w.compare_path(r, &mut path)?;
            let mut it = path.iter().copied();
            w.check_ops(r, &mut it)?;
            let mut it = path.iter().copied();
            let mut resp = w.do_txn(ctx, r, &mut it)?;
            resp.header = header(ctx.read_rev());
            Ok(resp)
        })
    }

    /// Compaction at `rev`: per key, the newest revision below `rev` survives
    /// if it is a put and nothing newer ≤ `rev` supersedes it; every event at
    /// exactly `rev` survives (a watch may start there). Everything else below
    /// `rev` leaves the history.
    pub fn compact(&mut self, r: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        if r.revision <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if r.revision > self.rev {
            return Err(EtcdError::FutureRev);
        }
        let all = KeyRange::new(b"\0", b"\0");
        let (lo, hi) = all.idx_bounds();
        let mut doomed: Vec<(Vec<u8>, Rev)> = Vec::new();
        let mut group: Option<Vec<u8>> = None;
        // The newest entry below `rev` seen so far in this key's group.
        let mut newest_below: Option<(Vec<u8>, Rev, bool)> = None;
        let settle =
            |entry: Option<(Vec<u8>, Rev, bool)>, superseded: bool, doomed: &mut Vec<_>| {
                if let Some((k, rev, is_put)) = entry {
                    if superseded || !is_put {
                        doomed.push((k, rev));
                    }
                }
            };
        for item in scan(self.tree, Some(&self.overlay), lo, hi) {
            let (k, v) = item?;
            let Some((key, rev)) = keys::parse_idx(&k) else {
                continue;
            };
            if group.as_deref() != Some(&key[..]) {
                settle(newest_below.take(), false, &mut doomed);
                group = Some(key);
            }
            if rev.main < r.revision {
                settle(newest_below.take(), true, &mut doomed);
                newest_below = Some((k, rev, v.first() == Some(&0)));
            } else if rev.main == r.revision {
                settle(newest_below.take(), true, &mut doomed);
            }
        }
        settle(newest_below.take(), false, &mut doomed);
        for (k, rev) in doomed {
            self.overlay.insert(k, None);
            self.overlay.insert(keys::hist_key(rev), None);
        }
        self.compact_rev = r.revision;
        self.put_meta("compact", self.compact_rev.to_be_bytes().to_vec());
        Ok(CompactionResponse {
            header: header(self.rev),
        })
    }

    /// Creates lease `id` with `ttl` seconds (already raised to the minimum).
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, EtcdError> {
        self.check_space()?;

        if self.view().lease_ttl(id)?.is_some() {
            return Err(EtcdError::LeaseExists);
        }
        self.put_raw(keys::lease_key(id), Some(ttl.to_be_bytes().to_vec()));
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// Removes lease `id` and deletes its keys, all in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, EtcdError> {
        if self.view().lease_ttl(id)?.is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        let keys = self.view().lease_keys(id)?;
        self.request(|w, ctx| {
            for key in &keys {
                w.do_delete(
                    ctx,
                    &DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    },
                )?;
            }
            w.write(keys::lease_key(id), None);
            Ok(LeaseRevokeResponse {
                header: header(ctx.read_rev()),
            })
        })
    }

    /// Raises (`activate`) or clears an alarm of `member` (0 with `activate`
    /// false clears that alarm type on every member, as etcd's disarm).
    pub fn alarm(
        &mut self,
        activate: bool,
        member: u64,
        alarm: i32,
    ) -> Result<Vec<(u64, i32)>, EtcdError> {
        let mut alarms = self.view().alarms()?;
        if activate {
            if !alarms.contains(&(member, alarm)) {
                alarms.push((member, alarm));
            }
        } else {
            alarms.retain(|(m, a)| !(*a == alarm && (member == 0 || *m == member)));
        }
        alarms.sort_unstable();
        self.put_meta("alarms", bincode::serialize(&alarms).unwrap_or_default());
        Ok(alarms)
    }

    /// While a NOSPACE alarm is raised, only requests that free space pass
    /// (etcd's capped applier).
    fn check_space(&self) -> Result<(), EtcdError> {
        if self
            .view()
            .alarms()?
            .iter()
            .any(|(_, a)| *a == ALARM_NOSPACE)
        {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    // --- checks (before any write) ---

    fn check_put(&self, r: &PutRequest) -> Result<(), EtcdError> {
        self.check_space()?;

        if r.lease != 0 && !r.ignore_lease && self.view().lease_ttl(r.lease)?.is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        if (r.ignore_value || r.ignore_lease) && self.view().get(&r.key)?.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        Ok(())
    }

    fn check_range(&self, r: &RangeRequest) -> Result<(), EtcdError> {
        if r.revision > self.rev {
            return Err(EtcdError::FutureRev);
        }
        if r.revision > 0 && r.revision < self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        Ok(())
    }

    fn compare_path(&self, r: &TxnRequest, path: &mut Vec<bool>) -> Result<(), EtcdError> {
        let mut ok = true;
        for c in &r.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &r.success } else { &r.failure };
        for op in ops {
            if let Some(Op::RequestTxn(t)) = &op.request {
                self.compare_path(t, path)?;
            }
        }
        Ok(())
    }

    fn check_ops(
        &self,
        r: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<(), EtcdError> {
        let ops = if path.next().unwrap_or(false) {
            &r.success
        } else {
            &r.failure
        };
        for op in ops {
            match &op.request {
                Some(Op::RequestPut(p)) => self.check_put(p)?,
                Some(Op::RequestRange(q)) => self.check_range(q)?,
                Some(Op::RequestTxn(t)) => self.check_ops(t, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool, EtcdError> {
        let view = self.view();
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs = if range.is_single() {
            view.get(&c.key)?.into_iter().collect()
        } else {
            view.kvs_at(&range, self.rev)?
        };
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            // etcd: a value compare on a missing key always fails; other targets
            // compare against zero.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }

    // --- execution ---

    fn do_put(&mut self, ctx: &mut Ctx, r: &PutRequest) -> Result<PutResponse, EtcdError> {
        let prev = self.view().get(&r.key)?;
        let (value, lease) = match &prev {
            Some(p) => (
                if r.ignore_value {
                    p.value.clone()
                } else {
                    r.value.clone()
                },
                if r.ignore_lease { p.lease } else { r.lease },
            ),
            None => (r.value.clone(), r.lease),
        };
        let rev = ctx.next();
        let kv = KeyValue {
            key: r.key.clone(),
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let event = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.write(keys::attach_key(p.lease, &r.key), None);
            }
        }
        if lease != 0 {
            self.write(keys::attach_key(lease, &r.key), Some(Vec::new()));
        }
        self.write(keys::kv_key(&r.key), Some(keys::kv_ref(rev)));
        self.write(keys::hist_key(rev), Some(event.encode_to_vec()));
        self.write(keys::idx_key(&r.key, rev), Some(vec![0]));
        Ok(PutResponse {
            header: header(rev.main),
            prev_kv: if r.prev_kv { prev } else { None },
        })
    }

    fn do_delete(
        &mut self,
        ctx: &mut Ctx,
        r: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        let range = KeyRange::new(&r.key, &r.range_end);
        let kvs = self
            .view_at(ctx.read_rev())
            .kvs_at(&range, ctx.read_rev())?;
        for kv in &kvs {
            let rev = ctx.next();
            let event = delete_event(&kv.key, rev.main);
            if kv.lease != 0 {
                self.write(keys::attach_key(kv.lease, &kv.key), None);
            }
            self.write(keys::kv_key(&kv.key), None);
            self.write(keys::hist_key(rev), Some(event.encode_to_vec()));
            self.write(keys::idx_key(&kv.key, rev), Some(vec![1]));
        }
        Ok(DeleteRangeResponse {
            header: header(ctx.read_rev()),
            deleted: kvs.len() as i64,
            prev_kvs: if r.prev_kv { kvs } else { Vec::new() },
        })
    }

    fn do_range(&self, ctx: &Ctx, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.view_at(ctx.read_rev()).range(r)
    }

    fn do_txn(
        &mut self,
        ctx: &mut Ctx,
        r: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResponse, EtcdError> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded { &r.success } else { &r.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(Op::RequestRange(q)) => OpResp::ResponseRange(self.do_range(ctx, q)?),
                Some(Op::RequestPut(p)) => OpResp::ResponsePut(self.do_put(ctx, p)?),
                Some(Op::RequestDeleteRange(d)) => {
                    OpResp::ResponseDeleteRange(self.do_delete(ctx, d)?)
                }
                Some(Op::RequestTxn(t)) => {
                    let mut sub = self.do_txn(ctx, t, path)?;
                    sub.header = header(ctx.read_rev());
                    OpResp::ResponseTxn(sub)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
            kv.value.as_slice().cmp(v.as_slice())
        }
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        // As etcd: a target_union that does not match the target compares with 0.
        (CompareTarget::Version, _) => kv.version.cmp(&0),
        (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
        (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
        (CompareTarget::Lease, _) => kv.lease.cmp(&0),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
