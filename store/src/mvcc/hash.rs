//! `HashKV`: a checksum of the MVCC history, for comparing members; and
//! `Hash`: one of the whole keyspace.
//!
//! The hash is IEEE crc32 (`crc32fast`, the polynomial etcd uses) over every `h`
//! (history) entry with main revision ≤ the requested one, in revision order:
//! the entry's tree key (the 12-byte revision) then its value (the encoded
//! `mvccpb.Event`). Members apply the same log, compaction included, so at the
//! same revision they hold the same history bytes and answer the same hash; a
//! member whose history diverged answers a different one. The value differs
//! from etcd's own HashKV (which hashes bbolt's key layout): only equality
//! between members of one cluster is meaningful.

use std::ops::Bound;

use crc32fast::Hasher;

use super::keys::{self, Rev};
use super::view::View;
use crate::error::EtcdError;

/// What `HashKV` answers: the hash and the revisions it was taken at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed up to (the current one when 0 was asked).
    pub rev: i64,
    pub compact_rev: i64,
    /// The store's current revision (for the response header).
    pub current_rev: i64,
}

impl View<'_> {
    /// Hashes the history up to `rev` (0 = current). As etcd's `HashByRev`: a
    /// revision at or below the compaction point is compacted, one above the
    /// current revision is a future revision.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash, EtcdError> {
        if rev > 0 && rev <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if rev > self.rev {
            return Err(EtcdError::FutureRev);
        }
        let at = if rev <= 0 { self.rev } else { rev };
        let lo = keys::hist_key(Rev { main: 0, sub: 0 });
        // Every sub-revision of `at` is included: the bound is the next main.
        let hi = keys::hist_key(Rev {
            main: at.saturating_add(1),
            sub: 0,
        });
        let mut h = Hasher::new();
        for (k, v) in self.tree.range(Bound::Included(&lo), Bound::Excluded(&hi)) {
            h.update(k);
            h.update(v);
        }
        Ok(KvHash {
            hash: h.finalize(),
            rev: at,
            compact_rev: self.compact_rev,
            current_rev: self.rev,
        })
    }
}

impl View<'_> {
    /// etcd's `Maintenance.Hash`: a crc32 of the whole state (every record
    /// of the tree in order: keys, history, leases, auth, members, the
    /// revision counters), at the current revision. Like `HashKV`, only
    /// equality between members of one cluster means anything.
    pub fn hash_all(&self) -> u32 {
        let mut h = Hasher::new();
        for (k, v) in self.tree.iter() {
            h.update(&(k.len() as u32).to_be_bytes());
            h.update(k);
            h.update(&(v.len() as u32).to_be_bytes());
            h.update(v);
        }
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::{CompactionRequest, PutRequest};

    use crate::error::EtcdError;
    use crate::mvcc::Mvcc;

    fn store() -> Mvcc {
        Mvcc::open(Default::default())
    }

    fn put(m: &Mvcc, k: &str, v: &str) {
        m.apply(|w| {
            w.put(&PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .unwrap();
        });
    }

    fn hash(m: &Mvcc, rev: i64) -> Result<u32, EtcdError> {
        m.read(|v| v.hash_kv(rev)).map(|h| h.hash)
    }

    #[test]
    fn same_history_same_hash() {
        let (a, b) = (store(), store());
        for m in [&a, &b] {
            put(m, "foo", "bar");
            put(m, "foo", "baz");
            put(m, "zeta", "1");
        }
        assert_eq!(hash(&a, 0).unwrap(), hash(&b, 0).unwrap());
        assert_eq!(hash(&a, 3).unwrap(), hash(&b, 3).unwrap());
        // Asking for the current revision explicitly is the same as 0.
        assert_eq!(hash(&a, 4).unwrap(), hash(&a, 0).unwrap());
    }

    #[test]
    fn different_history_different_hash() {
        let (a, b) = (store(), store());
        put(&a, "foo", "bar");
        put(&b, "foo", "baz");
        assert_ne!(hash(&a, 0).unwrap(), hash(&b, 0).unwrap());
        // A later write changes the current hash but not the one at an
        // earlier revision.
        let before = hash(&a, 2).unwrap();
        put(&a, "foo", "more");
        assert_ne!(hash(&a, 0).unwrap(), before);
        assert_eq!(hash(&a, 2).unwrap(), before);
    }

    #[test]
    fn compacted_and_future_revisions_are_refused() {
        let m = store();
        for i in 0..4 {
            put(&m, "k", &i.to_string());
        }
        m.apply(|w| {
            w.compact(&CompactionRequest {
                revision: 3,
                ..Default::default()
            })
            .unwrap();
        });
        assert_eq!(hash(&m, 3), Err(EtcdError::Compacted));
        assert_eq!(hash(&m, 2), Err(EtcdError::Compacted));
        assert_eq!(hash(&m, 6), Err(EtcdError::FutureRev));
        let h = m.read(|v| v.hash_kv(0)).unwrap();
        assert_eq!((h.rev, h.compact_rev, h.current_rev), (5, 3, 5));
        assert!(hash(&m, 4).is_ok());
    }

    #[test]
    fn the_whole_state_hash_follows_every_change() {
        let (a, b) = (store(), store());
        for m in [&a, &b] {
            put(m, "k", "1");
        }
        let h = a.read(|v| v.hash_all());
        assert_eq!(h, b.read(|v| v.hash_all()), "same state, same hash");
        put(&b, "k", "2");
        assert_ne!(h, b.read(|v| v.hash_all()));
    }
}
