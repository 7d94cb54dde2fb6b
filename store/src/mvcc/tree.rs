//! The state tree: raw keys and values in key order, in memory.
//!
//! A member holds its whole state here, so the per-record overhead decides
//! its RSS. Each record is ONE allocation (key length, key, value) and the
//! ordered set holds a 16-byte pointer to it. A `BTreeMap<Vec<u8>, Vec<u8>>`
//! took two allocations and 48 bytes of node slot per record: at 100k keys
//! (three records each) that was about a fifth of a member's memory.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;

/// One record: `key len u32 LE | key | value`.
pub struct Record(Box<[u8]>);

impl Record {
    fn new(key: &[u8], value: &[u8]) -> Record {
        let mut b = Vec::with_capacity(4 + key.len() + value.len());
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        Record(b.into_boxed_slice())
    }

    // Called for every key comparison of a tree search.
    #[inline]
    fn split(&self) -> (&[u8], &[u8]) {
        let n = u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize;
        self.0[4..].split_at(n)
    }

    #[inline]
    fn key(&self) -> &[u8] {
        self.split().0
    }
}

// Ordered by key alone, so the set can be searched by a key slice.
impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Record {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// Raw keys to values, in key order.
#[derive(Default)]
pub struct Tree {
    set: BTreeSet<Record>,
}

/// Key-ordered `(key, value)` pairs of a [`Tree`].
pub type Iter<'a> = std::iter::Map<
    std::collections::btree_set::Range<'a, Record>,
    fn(&'a Record) -> (&'a [u8], &'a [u8]),
>;

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.set.get(key).map(|r| r.split().1)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.set.contains(key)
    }

    /// Sets `key` to `value`; returns the length of the value it replaced.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<usize> {
        self.set
            .replace(Record::new(key, value))
            .map(|old| old.split().1.len())
    }

    /// Removes `key`; returns the length of its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<usize> {
        self.set.take(key).map(|old| old.split().1.len())
    }

    /// Keeps only the records `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        self.set.retain(|r| {
            let (k, v) = r.split();
            keep(k, v)
        });
    }

    /// Records between the bounds; none if they are reversed (a request's
    /// `range_end` below its key), where `BTreeSet::range` would panic.
    pub fn range<'a>(&'a self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Iter<'a> {
        let pair: fn(&'a Record) -> (&'a [u8], &'a [u8]) = Record::split;
        let bounds = if ordered(lo, hi) {
            (lo, hi)
        } else {
            (Bound::Included(&[][..]), Bound::Excluded(&[][..]))
        };
        self.set.range::<[u8], _>(bounds).map(pair)
    }

    /// Every record whose key starts with `prefix`.
    pub fn prefix<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let lo = prefix.to_vec();
        self.range(Bound::Included(&lo), Bound::Unbounded)
            .take_while(move |(k, _)| k.starts_with(&lo))
    }

    pub fn iter(&self) -> Iter<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }
}

/// Whether `(lo, hi)` is a range `BTreeMap::range` accepts: start not after
/// end, and not both excluded at the same key.
pub fn ordered(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
        (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a <= b
        }
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_key_with_replace_and_remove() {
        let mut t = Tree::new();
        assert_eq!(t.insert(b"b", b"2"), None);
        assert_eq!(t.insert(b"a", b"1"), None);
        assert_eq!(t.insert(b"ab", b""), None);
        assert_eq!(t.insert(b"b", b"22"), Some(1));
        assert_eq!(t.get(b"b"), Some(&b"22"[..]));
        assert_eq!(t.get(b"c"), None);
        let keys: Vec<_> = t.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, [b"a".to_vec(), b"ab".to_vec(), b"b".to_vec()]);
        let mid: Vec<_> = t
            .range(Bound::Excluded(b"a"), Bound::Included(b"b"))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(
            mid,
            [(b"ab".to_vec(), vec![]), (b"b".to_vec(), b"22".to_vec())]
        );
        assert_eq!(t.prefix(b"a").count(), 2);
        // Reversed bounds are an empty range, not a panic.
        assert_eq!(
            t.range(Bound::Included(b"b"), Bound::Excluded(b"a"))
                .count(),
            0
        );
        assert_eq!(
            t.range(Bound::Excluded(b"a"), Bound::Excluded(b"a"))
                .count(),
            0
        );
        assert_eq!(t.remove(b"ab"), Some(0));
        assert_eq!(t.remove(b"ab"), None);
        assert_eq!(t.len(), 2);
    }
}
