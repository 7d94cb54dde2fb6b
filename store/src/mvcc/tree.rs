//! The state tree: raw keys and values in key order, in memory.
//!
//! A member holds its whole state here, so the per-record overhead decides
//! its RSS. Each record is ONE allocation (key length, key, value) and the
//! ordered set holds an 8-byte pointer to it ([`ThinBytes`]) plus the key's
//! first eight bytes (the "head"). A `BTreeMap<Vec<u8>, Vec<u8>>` took two
//! allocations and 48 bytes of node slot per record: at 100k keys (three
//! records each) that was about a fifth of a member's memory.
//!
//! The head is there for speed: a search compares its key with about six
//! records per tree level, and without the head each comparison read a
//! record's allocation, a cache miss once the tree outgrew the caches. Heads
//! order records as their keys do wherever they differ, so most comparisons
//! end inside the tree node; only keys that share their first eight bytes
//! read the allocations.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;

use super::counts::{Counts, Keys};
use super::thin::ThinBytes;

/// One record: its key's head and `key len u32 LE | key | value`.
pub struct Record {
    head: u64,
    data: ThinBytes,
}

/// The key's first eight bytes as a big-endian number, zero-padded. For two
/// keys `a < b`, `head(a) <= head(b)`: a shorter key pads with zeros, which no
/// byte sorts below. So different heads decide an order and equal heads
/// leave it to the keys.
#[inline]
fn head(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

impl Record {
    fn new(key: &[u8], value: &[u8]) -> Record {
        Record {
            head: head(key),
            data: ThinBytes::concat(&[&(key.len() as u32).to_le_bytes(), key, value]),
        }
    }

    /// A value-less record to search the set with: one small allocation, far
    /// cheaper than the cache misses the head saves.
    fn probe(key: &[u8]) -> Record {
        Record::new(key, &[])
    }

    #[inline]
    fn split(&self) -> (&[u8], &[u8]) {
        let d = self.data.as_slice();
        let n = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
        d[4..].split_at(n)
    }

    #[inline]
    fn key(&self) -> &[u8] {
        self.split().0
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// Called for every key comparison of a tree search.
impl Ord for Record {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.key().cmp(other.key()))
    }
}

/// Raw keys to values, in key order.
#[derive(Default)]
pub struct Tree {
    set: BTreeSet<Record>,
    /// Ranks, for [`Tree::count`].
    counts: Counts,
}

/// The set as [`Counts`] walks it.
struct Records<'a>(&'a BTreeSet<Record>);

impl Keys for Records<'_> {
    fn keys_from<'a>(&'a self, lo: Bound<&[u8]>) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        let lo = lo.map(Record::probe);
        Box::new(
            self.0
                .range((lo.as_ref(), Bound::Unbounded))
                .map(Record::key),
        )
    }

    fn count_between(&self, lo: &[u8], hi: Bound<&[u8]>) -> usize {
        if !ordered(Bound::Included(lo), hi) {
            return 0;
        }
        let (lo, hi) = (Record::probe(lo), hi.map(Record::probe));
        self.0.range((Bound::Included(&lo), hi.as_ref())).count()
    }
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
        self.set.get(&Record::probe(key)).map(|r| r.split().1)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.set.contains(&Record::probe(key))
    }

    /// Sets `key` to `value`; returns the length of the value it replaced.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<usize> {
        let old = self
            .set
            .replace(Record::new(key, value))
            .map(|old| old.split().1.len());
        if old.is_none() {
            self.counts.added(key, &Records(&self.set));
        }
        old
    }

    /// Removes `key`; returns the length of its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<usize> {
        let old = self
            .set
            .take(&Record::probe(key))
            .map(|old| old.split().1.len());
        if old.is_some() {
            self.counts.removed(key);
        }
        old
    }

    /// Keeps only the records `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        self.set.retain(|r| {
            let (k, v) = r.split();
            keep(k, v)
        });
        self.counts.rebuild(self.set.iter().map(Record::key));
    }

    /// Records between the bounds; none if they are reversed (a request's
    /// `range_end` below its key), where `BTreeSet::range` would panic.
    pub fn range<'a>(&'a self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Iter<'a> {
        let pair: fn(&'a Record) -> (&'a [u8], &'a [u8]) = Record::split;
        let (lo, hi) = if ordered(lo, hi) {
            (lo, hi)
        } else {
            (Bound::Included(&[][..]), Bound::Excluded(&[][..]))
        };
        let (lo, hi) = (lo.map(Record::probe), hi.map(Record::probe));
        self.set.range((lo.as_ref(), hi.as_ref())).map(pair)
    }

    /// How many records lie between the bounds, in O(√N)-ish time rather
    /// than a walk of the range (see [`Counts`]).
    pub fn count(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> usize {
        if !ordered(lo, hi) {
            return 0;
        }
        self.counts.count(lo, hi, &Records(&self.set))
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

    /// Random inserts, replaces, removes, retains and bounded ranges against
    /// a `BTreeMap`: keys of 0–11 bytes over {0, 1, 'a', 0xff} (so many share
    /// their first eight bytes, the record's head), values of 0–40 bytes.
    #[test]
    fn random_edits_match_a_btreemap() {
        use std::collections::BTreeMap;
        let mut g = crate::testing::Rng::new(7);
        let mut next = move |n: u64| g.below(n);
        let key = |next: &mut dyn FnMut(u64) -> u64| -> Vec<u8> {
            let len = next(12) as usize;
            (0..len)
                .map(|_| [0u8, 1, b'a', 0xff][next(4) as usize])
                .collect()
        };
        let bound = |next: &mut dyn FnMut(u64) -> u64, k: Vec<u8>| match next(3) {
            0 => Bound::Unbounded,
            1 => Bound::Included(k),
            _ => Bound::Excluded(k),
        };
        for round in 0..200 {
            let mut t = Tree::new();
            let mut m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for step in 0..200 {
                let at = format!("round {round} step {step}");
                let k = key(&mut next);
                match next(8) {
                    0..=2 => {
                        let v: Vec<u8> = (0..next(41)).map(|i| i as u8).collect();
                        let old = m.insert(k.clone(), v.clone()).map(|o| o.len());
                        assert_eq!(t.insert(&k, &v), old, "{at}: insert");
                    }
                    3 | 4 => {
                        let old = m.remove(&k).map(|o| o.len());
                        assert_eq!(t.remove(&k), old, "{at}: remove");
                    }
                    5 => {
                        let cut = next(256) as u8;
                        t.retain(|k, v| k.len() + v.len() != cut as usize % 20);
                        m.retain(|k, v| k.len() + v.len() != cut as usize % 20);
                    }
                    6 => {
                        let lo = bound(&mut next, k.clone());
                        let k2 = key(&mut next);
                        let hi = bound(&mut next, k2);
                        fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
                            match b {
                                Bound::Included(k) => Bound::Included(k.as_slice()),
                                Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                                Bound::Unbounded => Bound::Unbounded,
                            }
                        }
                        let got: Vec<_> = t
                            .range(as_ref(&lo), as_ref(&hi))
                            .map(|(k, v)| (k.to_vec(), v.to_vec()))
                            .collect();
                        let want: Vec<_> = if ordered(as_ref(&lo), as_ref(&hi)) {
                            m.range::<[u8], _>((as_ref(&lo), as_ref(&hi)))
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        assert_eq!(got, want, "{at}: range {lo:?}..{hi:?}");
                        let n = t.count(as_ref(&lo), as_ref(&hi));
                        assert_eq!(n, want.len(), "{at}: count {lo:?}..{hi:?}");
                    }
                    _ => {
                        assert_eq!(t.get(&k), m.get(&k).map(Vec::as_slice), "{at}: get");
                        let got: Vec<_> = t.prefix(&k).map(|(k, _)| k.to_vec()).collect();
                        let want: Vec<_> =
                            m.keys().filter(|x| x.starts_with(&k)).cloned().collect();
                        assert_eq!(got, want, "{at}: prefix");
                    }
                }
                assert_eq!(t.len(), m.len(), "{at}: len");
            }
            let all: Vec<_> = t.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            let want: Vec<_> = m.into_iter().collect();
            assert_eq!(all, want, "round {round}: contents");
        }
    }

    /// Enough keys that the rank index splits and merges its buckets many
    /// times: counts over random bounds against a `BTreeMap`, while keys come
    /// and go in waves (so whole stretches empty out) and a retain rebuilds it.
    #[test]
    fn counts_match_a_btreemap_through_splits_and_merges() {
        use std::collections::BTreeMap;
        let mut g = crate::testing::Rng::new(11);
        let mut t = Tree::new();
        let mut m: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        let key = |n: u64| format!("k{:05}", n).into_bytes();
        for step in 0..40_000u64 {
            // Inserts dominate in the first half of every 10,000 steps,
            // removals in the second.
            let k = key(g.below(6000));
            if (step / 5000) % 2 == 0 || g.below(10) == 0 {
                let new = t.insert(&k, b"v").is_none();
                assert_eq!(new, m.insert(k.clone(), ()).is_none());
            } else {
                assert_eq!(t.remove(&k).is_some(), m.remove(&k).is_some());
            }
            if step == 25_000 {
                t.retain(|k, _| k[5] != b'7');
                m.retain(|k, _| k[5] != b'7');
            }
            if step % 97 == 0 {
                for _ in 0..4 {
                    let (a, b) = (key(g.below(6100)), key(g.below(6100)));
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    let bounds = [
                        (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
                        (Bound::Excluded(&lo[..]), Bound::Included(&hi[..])),
                        (Bound::Unbounded, Bound::Excluded(&hi[..])),
                        (Bound::Included(&lo[..]), Bound::Unbounded),
                    ];
                    for (l, h) in bounds {
                        let want = if ordered(l, h) {
                            m.range::<[u8], _>((l, h)).count()
                        } else {
                            0
                        };
                        assert_eq!(t.count(l, h), want, "step {step}: {l:?}..{h:?}");
                    }
                }
                assert_eq!(t.count(Bound::Unbounded, Bound::Unbounded), m.len());
            }
        }
        assert!(t.counts.buckets() > 1, "the index never split");
    }

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

    /// The head must never order two records unlike their keys: zero bytes,
    /// keys shorter and longer than the head, keys equal in their first
    /// eight bytes, and pseudo-random keys over a small alphabet.
    #[test]
    fn heads_order_like_keys() {
        let mut keys: Vec<Vec<u8>> = [
            &b""[..],
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"a\0\0\0\0\0\0\0",
            b"a\0\0\0\0\0\0\0\0",
            b"a\0\0\0\0\0\0\0\x01",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"abcdefgg\xff\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\0",
        ]
        .iter()
        .map(|k| k.to_vec())
        .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 12) as usize;
            keys.push(
                (0..len)
                    .map(|i| [0u8, 1, b'a', 0xff][(x >> (8 + 2 * i)) as usize & 3])
                    .collect(),
            );
        }
        let mut t = Tree::new();
        for (i, k) in keys.iter().enumerate() {
            t.insert(k, &i.to_le_bytes());
        }
        let mut want = keys.clone();
        want.sort();
        want.dedup();
        let got: Vec<Vec<u8>> = t.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(got, want);
        for k in &want {
            assert!(t.contains_key(k), "{k:?}");
            let after: Vec<_> = t
                .range(Bound::Excluded(k), Bound::Unbounded)
                .map(|(k, _)| k.to_vec())
                .collect();
            assert!(
                after.iter().all(|a| a > k)
                    && after.len() == want.iter().filter(|w| *w > k).count()
            );
        }
    }
}
