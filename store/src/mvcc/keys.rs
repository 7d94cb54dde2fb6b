//! Byte layout of the state-machine tree. Everything lives in ONE ordered tree
//! so that a batch of log entries lands at once, the tree can be swapped whole
//! when a snapshot is installed, and a snapshot is simply its records in order.
//!
//! | prefix | key                                   | value                          |
//! |--------|---------------------------------------|--------------------------------|
//! | `k`    | user key                              | `KV_REF` + revision of its `h` |
//! | `h`    | revision main (8 BE) + sub (4 BE)     | `mvccpb.Event` of that change  |
//! | `i`    | escaped user key + main + sub         | `[0]` put / `[1]` delete       |
//! | `m`    | meta name                             | meta value (revision, applied…)|
//! | `n`    | member id (8 BE)                      | member attributes (JSON)       |
//! | `l`    | lease id (8 BE)                       | granted TTL in seconds (8 BE)  |
//! | `a`    | lease id (8 BE) + user key            | empty: the key uses the lease  |
//! | `u`    | auth user name                        | `authpb.User` (password hashed)|
//! | `r`    | auth role name                        | `authpb.Role`                  |
//!
//! `k` answers reads at the current revision: one lookup per key gives the
//! revision of the key's latest put, whose `h` record holds the value. The
//! value is stored once; compaction never removes that record, since it is
//! the newest put of a live key. (Trees written before this layout hold the
//! `mvccpb.KeyValue` itself in `k`; both are read.) `h` is the history in
//! revision order: watch replays it. `i` lists the revisions of
//! each key in key order, so a read at a past revision, or a `prev_kv`, is a
//! short scan. User keys in `i` are escaped (0x00 → 0x00 0xFF, then 0x00 0x01)
//! so that the revisions of one key stay contiguous and key order is kept.

use std::ops::Bound;

pub const KV: u8 = b'k';
pub const HIST: u8 = b'h';
pub const IDX: u8 = b'i';
pub const META: u8 = b'm';
pub const MEMBER: u8 = b'n';
pub const LEASE: u8 = b'l';
pub const ATTACH: u8 = b'a';
pub const USER: u8 = b'u';
pub const ROLE: u8 = b'r';

/// Key of an auth user (`USER`) or role (`ROLE`) record.
pub fn auth_key(kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Revision as etcd's (main, sub): main is the store revision, sub orders the
/// changes made by one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rev {
    pub main: i64,
    pub sub: u32,
}

impl Rev {
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Rev> {
        if b.len() != 12 {
            return None;
        }
        Some(Rev {
            main: u64::from_be_bytes(b[..8].try_into().ok()?) as i64,
            sub: u32::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// First byte of a `k` value that points into `h`. A protobuf KeyValue
/// never starts with it: as a first byte it would begin a field tag of wire
/// type 6, which protobuf does not define.
pub const KV_REF: u8 = 0xfe;

/// The `k` value of a key whose latest put is at `rev`.
pub fn kv_ref(rev: Rev) -> Vec<u8> {
    let mut v = Vec::with_capacity(13);
    v.push(KV_REF);
    v.extend_from_slice(&rev.to_bytes());
    v
}

/// The revision a `k` value points at; `None` if it is not such a pointer.
pub fn parse_kv_ref(v: &[u8]) -> Option<Rev> {
    match v.split_first() {
        Some((&KV_REF, rest)) => Rev::from_bytes(rest),
        _ => None,
    }
}

pub fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KV);
    k.extend_from_slice(key);
    k
}

pub fn hist_key(rev: Rev) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(HIST);
    k.extend_from_slice(&rev.to_bytes());
    k
}

pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn member_key(id: u64) -> Vec<u8> {
    let mut k = vec![MEMBER];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn lease_key(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

/// The lease id of a [`lease_key`], `None` for any other key.
pub fn parse_lease_key(k: &[u8]) -> Option<i64> {
    match k.split_first() {
        Some((&LEASE, id)) if id.len() == 8 => {
            Some(u64::from_be_bytes(<[u8; 8]>::try_from(id).ok()?) as i64)
        }
        _ => None,
    }
}

/// A lease record's value: its TTL in seconds.
pub fn parse_lease_ttl(v: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes)
}

/// Prefix of every attachment of lease `id`.
pub fn attach_prefix(id: i64) -> Vec<u8> {
    let mut k = vec![ATTACH];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = attach_prefix(id);
    k.extend_from_slice(key);
    k
}

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// `i` + escaped key: the prefix shared by every revision of `key`.
pub fn idx_group(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 3);
    k.push(IDX);
    escape_into(&mut k, key);
    k
}

pub fn idx_key(key: &[u8], rev: Rev) -> Vec<u8> {
    let mut k = idx_group(key);
    k.extend_from_slice(&rev.to_bytes());
    k
}

/// Splits an `i` key into user key and revision.
pub fn parse_idx(k: &[u8]) -> Option<(Vec<u8>, Rev)> {
    let body = k.strip_prefix(&[IDX])?;
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    while i + 1 < body.len() {
        match (body[i], body[i + 1]) {
            (0, 0xff) => {
                key.push(0);
                i += 2;
            }
            (0, 1) => return Some((key, Rev::from_bytes(&body[i + 2..])?)),
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    None
}

/// A user key range as etcd defines it: empty `end` is the single key, `"\0"`
/// is every key ≥ `key`, otherwise `[key, end)`.
#[derive(Debug, Clone)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { key, end }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    fn to_all(&self) -> bool {
        self.end == [0]
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.is_single() {
            k == self.key
        } else {
            k >= self.key && (self.to_all() || k < self.end)
        }
    }

    /// Bounds over the `k` prefix.
    pub fn kv_bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let lo = Bound::Included(kv_key(self.key));
        let hi = if self.is_single() {
            Bound::Included(kv_key(self.key))
        } else if self.to_all() {
            Bound::Excluded(vec![KV + 1])
        } else {
            Bound::Excluded(kv_key(self.end))
        };
        (lo, hi)
    }

    /// Bounds over the `i` prefix.
    pub fn idx_bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let lo = Bound::Included(idx_group(self.key));
        let hi = if self.is_single() {
            let mut g = idx_group(self.key);
            g.extend_from_slice(&[0xff; 12]);
            Bound::Included(g)
        } else if self.to_all() {
            Bound::Excluded(vec![IDX + 1])
        } else {
            Bound::Excluded(idx_group(self.end))
        };
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_keys_keep_order_and_roundtrip() {
        let keys: [&[u8]; 5] = [b"a", b"a\x00", b"a\x00\x01", b"a\x01", b"b"];
        let rev = Rev { main: 7, sub: 2 };
        let enc: Vec<_> = keys.iter().map(|k| idx_key(k, rev)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        for (k, e) in keys.iter().zip(&enc) {
            assert_eq!(parse_idx(e), Some((k.to_vec(), rev)));
        }
        // All revisions of "a" sort before any revision of "a\0".
        assert!(
            idx_key(
                b"a",
                Rev {
                    main: i64::MAX,
                    sub: u32::MAX
                }
            ) < idx_key(b"a\x00", rev)
        );
    }

    #[test]
    fn ranges() {
        let r = KeyRange::new(b"a", b"\0");
        assert!(r.contains(b"zzz") && !r.contains(b"\x01"));
        let r = KeyRange::new(b"a", b"b");
        assert!(r.contains(b"a\xff") && !r.contains(b"b"));
        assert!(KeyRange::new(b"a", b"").contains(b"a"));
    }
}
