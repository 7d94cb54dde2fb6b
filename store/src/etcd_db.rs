//! etcd 3.4's backend database, the file `etcdctl snapshot save` writes:
//! Cairn's state tree laid out as etcd's buckets ([`to_etcd`]), and an etcd
//! backend turned back into a state tree ([`from_etcd`]).
//!
//! | bucket        | key                                   | value                       |
//! |---------------|---------------------------------------|-----------------------------|
//! | `key`         | main (8 BE) `_` sub (8 BE) [+ `t`]    | `mvccpb.KeyValue` (a deletion, marked `t`, holds the key alone) |
//! | `lease`       | lease id (8 BE)                       | `leasepb.Lease` (ID, TTL)   |
//! | `meta`        | `consistent_index`, `finishedCompactRev`, `scheduledCompactRev` | index (8 BE), revisions as in `key` |
//! | `auth`        | `authEnabled`, `authRevision`           | `[1]`/`[0]`, revision (8 BE)|
//! | `authUsers`   | user name                             | `authpb.User`               |
//! | `authRoles`   | role name                             | `authpb.Role`               |
//! | `alarm`       | `etcdserverpb.AlarmMember`            | empty                       |
//! | `members`, `members_removed`, `cluster` | empty here: they describe a cluster, and a restore makes a new one (etcdctl's restore deletes them) | |
//!
//! etcd keeps no lease attachments: a key's lease is the `lease` field of its
//! newest `KeyValue`, and its store revision is the highest revision in
//! `key` or the compaction point, whichever is higher. Cairn's `h` records
//! are exactly the `key` bucket's entries, so a round trip keeps every
//! revision and `HashKV`'s answer.
//!
//! Password hashes travel as they are: etcd's are bcrypt, which Cairn also
//! verifies; Cairn writes bcrypt too (`auth::credentials`), so users move
//! both ways with their passwords.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use cairn_proto::authpb::{Role, User};
use cairn_proto::etcdserverpb::AlarmMember;
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use crate::bbolt::{self, DbWriter};
use crate::mvcc::keys::{self, Rev};
use crate::mvcc::view::delete_event;
use crate::mvcc::Tree;

const ALARM: &[u8] = b"alarm";
const AUTH: &[u8] = b"auth";
const AUTH_ROLES: &[u8] = b"authRoles";
const AUTH_USERS: &[u8] = b"authUsers";
const CLUSTER: &[u8] = b"cluster";
const KEY: &[u8] = b"key";
const LEASE: &[u8] = b"lease";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const META: &[u8] = b"meta";

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

/// etcd's `leasepb.Lease` (lease/leasepb/lease.proto).
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's revision key: main and sub big-endian around `_`, and `t` after
/// a deletion (a "tombstone").
fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// The state tree's records in key order (what `encode_tree` writes, read
/// back with `decode_records`): a copy taken under the state's lock, laid
/// out as etcd's file after it is released.
pub type Records<'a> = [(&'a [u8], &'a [u8])];

fn lookup<'a>(records: &Records<'a>, key: &[u8]) -> Option<&'a [u8]> {
    records
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .ok()
        .map(|i| records[i].1)
}

fn meta_i64(records: &Records, name: &str) -> i64 {
    lookup(records, &keys::meta_key(name))
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, i64::from_be_bytes)
}

/// The records under one prefix byte, without the prefix.
fn with_prefix<'a>(
    records: &'a Records<'a>,
    prefix: u8,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    let lo = records.partition_point(|(k, _)| k.first() < Some(&prefix));
    let hi = records.partition_point(|(k, _)| k.first() <= Some(&prefix));
    records[lo..hi].iter().map(|(k, v)| (&k[1..], *v))
}

/// The state as an etcd 3.4 backend file (without etcd's sha256 trailer).
/// `consistent_index` is the Raft index the state is at.
pub fn to_etcd(records: &Records, consistent_index: u64) -> Result<Vec<u8>> {
    let mut db = DbWriter::new();

    let alarms: Vec<(u64, i32)> = match lookup(records, &keys::meta_key("alarms")) {
        Some(b) => bincode::deserialize(b).context("alarm record")?,
        None => Vec::new(),
    };
    let mut alarm_keys: Vec<Vec<u8>> = alarms
        .iter()
        .map(|&(member_id, alarm)| AlarmMember { member_id, alarm }.encode_to_vec())
        .collect();
    alarm_keys.sort();
    db.bucket(ALARM, alarm_keys.iter().map(|k| (k, b"")));

    let enabled = lookup(records, &keys::meta_key("auth_enabled")) == Some(&[1][..]);
    db.bucket(
        AUTH,
        [
            (AUTH_ENABLED, &[u8::from(enabled)][..]),
            (AUTH_REVISION, &1u64.to_be_bytes()[..]),
        ],
    );
    db.bucket(AUTH_ROLES, with_prefix(records, keys::ROLE));
    db.bucket(AUTH_USERS, with_prefix(records, keys::USER));
    db.bucket(CLUSTER, std::iter::empty::<(&[u8], &[u8])>());

    let mut history = Vec::new();
    for (k, v) in with_prefix(records, keys::HIST) {
        let rev = Rev::from_bytes(k).context("history record key")?;
        let ev = Event::decode(v).context("history record")?;
        let kv = ev.kv.unwrap_or_default();
        let tombstone = ev.r#type == EventType::Delete as i32;
        let value = if tombstone {
            KeyValue {
                key: kv.key,
                ..Default::default()
            }
        } else {
            kv
        };
        history.push((
            rev_key(rev.main, i64::from(rev.sub), tombstone),
            value.encode_to_vec(),
        ));
    }
    db.bucket(KEY, history);

    let leases: Vec<(Vec<u8>, Vec<u8>)> = with_prefix(records, keys::LEASE)
        .filter_map(|(k, v)| {
            let id = i64::from_be_bytes(k.try_into().ok()?);
            let ttl = keys::parse_lease_ttl(v)?;
            Some((
                k.to_vec(),
                LeasePb {
                    id,
                    ttl,
                    remaining_ttl: 0,
                }
                .encode_to_vec(),
            ))
        })
        .collect();
    db.bucket(LEASE, leases);
    db.bucket(MEMBERS, std::iter::empty::<(&[u8], &[u8])>());
    db.bucket(MEMBERS_REMOVED, std::iter::empty::<(&[u8], &[u8])>());

    let mut meta = vec![(CONSISTENT_INDEX, consistent_index.to_be_bytes().to_vec())];
    let compact = meta_i64(records, "compact");
    if compact > 0 {
        meta.push((FINISHED_COMPACT, rev_key(compact, 0, false)));
        meta.push((SCHEDULED_COMPACT, rev_key(compact, 0, false)));
    }
    db.bucket(META, meta);
    Ok(db.finish())
}

/// The state tree an etcd 3.4 backend holds: keys with their whole history
/// and revisions, the compaction point, leases (and which keys use them),
/// users, roles, the auth switch and alarms. A new token-signing secret is
/// made when auth is on (etcd's simple tokens do not survive a restore
/// either).
pub fn from_etcd(file: &[u8]) -> Result<Tree> {
    let buckets: HashMap<&[u8], bbolt::Entries> = bbolt::read(file)?.into_iter().collect();
    let bucket = |name: &[u8]| buckets.get(name).map(Vec::as_slice).unwrap_or_default();
    if !buckets.contains_key(KEY) || !buckets.contains_key(META) {
        bail!("a bbolt file, but not etcd's backend (it has no `key` and `meta` buckets)");
    }
    let mut tree = Tree::new();

    let mut leases = HashMap::new();
    for (k, v) in bucket(LEASE) {
        let l = LeasePb::decode(*v).context("lease record")?;
        let id = <[u8; 8]>::try_from(*k)
            .map(i64::from_be_bytes)
            .ok()
            .context("lease key is not 8 bytes")?;
        tree.insert(&keys::lease_key(id), &l.ttl.to_be_bytes());
        leases.insert(id, ());
    }

    // Replays the history in revision order, as etcd's restore does: the
    // newest put of a live key is its current value, its lease field the
    // lease it is attached to.
    let mut lease_of: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut top = 1i64;
    for (k, v) in bucket(KEY) {
        let (main, sub, tombstone) = parse_rev_key(k).context("key bucket: bad revision key")?;
        let rev = Rev {
            main,
            sub: u32::try_from(sub).context("key bucket: sub-revision out of range")?,
        };
        let kv = KeyValue::decode(*v).context("key bucket: bad KeyValue")?;
        top = top.max(main);
        if let Some(old) = lease_of.remove(&kv.key) {
            tree.remove(&keys::attach_key(old, &kv.key));
        }
        let event = if tombstone {
            tree.remove(&keys::kv_key(&kv.key));
            tree.insert(&keys::idx_key(&kv.key, rev), &[1]);
            delete_event(&kv.key, main)
        } else {
            tree.insert(&keys::kv_key(&kv.key), &keys::kv_ref(rev));
            tree.insert(&keys::idx_key(&kv.key, rev), &[0]);
            if kv.lease != 0 && leases.contains_key(&kv.lease) {
                tree.insert(&keys::attach_key(kv.lease, &kv.key), b"");
                lease_of.insert(kv.key.clone(), kv.lease);
            }
            Event {
                r#type: EventType::Put as i32,
                kv: Some(kv),
                prev_kv: None,
            }
        };
        tree.insert(&keys::hist_key(rev), &event.encode_to_vec());
    }

    // etcd compacts in the background: a snapshot taken meanwhile has a
    // scheduled compaction beyond the finished one (and a history it cut
    // only in part). etcd's restore takes the scheduled one (and finishes
    // the job); so does this, so that no revision it compacted is read.
    let meta: HashMap<&[u8], &[u8]> = bucket(META).iter().copied().collect();
    let mut compact = 0;
    for (name, what) in [
        (FINISHED_COMPACT, "meta: bad finishedCompactRev"),
        (SCHEDULED_COMPACT, "meta: bad scheduledCompactRev"),
    ] {
        if let Some(v) = meta.get(name) {
            compact = compact.max(parse_rev_key(v).context(what)?.0);
        }
    }
    tree.insert(&keys::meta_key("compact"), &compact.to_be_bytes());
    tree.insert(&keys::meta_key("rev"), &top.max(compact).to_be_bytes());

    for (name, kind) in [(AUTH_USERS, keys::USER), (AUTH_ROLES, keys::ROLE)] {
        for (k, v) in bucket(name) {
            let name = std::str::from_utf8(k).context("auth: user or role name is not UTF-8")?;
            if kind == keys::USER {
                User::decode(*v).context("authUsers: bad User")?;
            } else {
                Role::decode(*v).context("authRoles: bad Role")?;
            }
            tree.insert(&keys::auth_key(kind, name), v);
        }
    }
    let auth: HashMap<&[u8], &[u8]> = bucket(AUTH).iter().copied().collect();
    if auth.get(AUTH_ENABLED) == Some(&&[1][..]) {
        tree.insert(&keys::meta_key("auth_enabled"), &[1]);
        tree.insert(
            &keys::meta_key("auth_secret"),
            &crate::auth::credentials::new_secret(),
        );
    }

    let mut alarms = Vec::new();
    for (k, _) in bucket(ALARM) {
        let a = AlarmMember::decode(*k).context("alarm: bad AlarmMember")?;
        alarms.push((a.member_id, a.alarm));
    }
    if !alarms.is_empty() {
        alarms.sort_unstable();
        tree.insert(&keys::meta_key("alarms"), &bincode::serialize(&alarms)?);
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Mvcc;
    use cairn_proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
    };

    fn put(m: &Mvcc, k: &str, v: &str, lease: i64) {
        m.apply(|w| {
            w.put(&PutRequest {
                key: k.into(),
                value: v.into(),
                lease,
                ..Default::default()
            })
            .unwrap()
        });
    }

    #[test]
    fn a_state_survives_the_round_trip_through_etcds_layout() {
        let m = Mvcc::open(Tree::new());
        m.apply(|w| w.lease_grant(7, 60).unwrap());
        m.apply(|w| w.lease_grant(8, 30).unwrap());
        for i in 0..300 {
            put(&m, &format!("k{:03}", i % 40), &format!("v{i}"), 0);
        }
        put(&m, "leased", "x", 7);
        put(&m, "moved", "x", 7);
        put(&m, "moved", "y", 8);
        m.apply(|w| {
            w.delete_range(&DeleteRangeRequest {
                key: b"k010".to_vec(),
                ..Default::default()
            })
            .unwrap()
        });
        m.apply(|w| {
            w.compact(&CompactionRequest {
                revision: 100,
                physical: false,
            })
            .unwrap()
        });
        put(&m, "k011", "after", 0);
        m.apply(|w| w.alarm(true, 42, 1).unwrap());

        let flat = m.read(|v| crate::raft::snapshot_file::encode_tree(v.tree));
        let records = crate::raft::snapshot_file::decode_records(&flat).unwrap();
        let file = to_etcd(&records, 9).unwrap();
        let records = |t: &Tree| -> Vec<(Vec<u8>, Vec<u8>)> {
            t.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        };
        // Every record comes back byte for byte.
        let want = m.read(|v| records(v.tree));
        let m2 = Mvcc::open(from_etcd(&file).unwrap());
        assert_eq!(m2.read(|v| records(v.tree)), want);
        assert_eq!(m2.revision(), m.revision());
        assert_eq!(m2.compact_revision(), 100);
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let a = m.read(|v| v.range(&all)).unwrap();
        let b = m2.read(|v| v.range(&all)).unwrap();
        assert_eq!(a.kvs, b.kvs);
        assert_eq!(
            m.read(|v| v.hash_kv(0)).unwrap().hash,
            m2.read(|v| v.hash_kv(0)).unwrap().hash
        );
    }

    #[test]
    fn a_compaction_still_running_counts_as_done() {
        let m = Mvcc::open(Tree::new());
        for i in 0..20 {
            put(&m, "k", &format!("v{i}"), 0);
        }
        let flat = m.read(|v| crate::raft::snapshot_file::encode_tree(v.tree));
        let records = crate::raft::snapshot_file::decode_records(&flat).unwrap();
        let file = to_etcd(&records, 9).unwrap();
        // The same backend as etcd leaves it while compacting to 12: the
        // scheduled revision written, the finished one not yet.
        let mut db = DbWriter::new();
        for (name, entries) in bbolt::read(&file).unwrap() {
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = entries
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            if name == META {
                entries.push((SCHEDULED_COMPACT.to_vec(), rev_key(12, 0, false)));
                entries.sort();
            }
            db.bucket(name, entries);
        }
        let m2 = Mvcc::open(from_etcd(&db.finish()).unwrap());
        assert_eq!(m2.compact_revision(), 12);
        let old = RangeRequest {
            key: b"k".to_vec(),
            revision: 11,
            ..Default::default()
        };
        assert!(m2.read(|v| v.range(&old)).is_err());
    }

    #[test]
    fn revision_keys_are_etcds() {
        assert_eq!(
            rev_key(5, 2, true),
            [0, 0, 0, 0, 0, 0, 0, 5, b'_', 0, 0, 0, 0, 0, 0, 0, 2, b't']
        );
        assert_eq!(parse_rev_key(&rev_key(9, 1, false)), Some((9, 1, false)));
        assert_eq!(parse_rev_key(b"short"), None);
    }

    #[test]
    fn a_bbolt_file_that_is_not_etcds_is_refused() {
        let mut db = DbWriter::new();
        db.bucket(b"other", [(b"a", b"b")]);
        let err = from_etcd(&db.finish()).unwrap_err();
        assert!(err.to_string().contains("not etcd's backend"), "{err}");
    }
}
