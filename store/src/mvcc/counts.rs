//! How many records lie below a key, without walking them all: the tree's
//! records cut into runs ("buckets") of at most [`MAX`] consecutive keys,
//! each known by its first key and its size.
//!
//! Every range answer carries `count`, the size of the whole range (etcd's
//! API), so a paged list over N keys would walk N records per page if the
//! count were taken by iterating. Here a rank is the sizes of the buckets
//! before the key's bucket, summed, plus a walk of at most [`MAX`] records
//! inside it: a page over 100,000 keys costs about what one over 1,000 does.
//! (etcd walks its key index for the count, O(N) per page.)
//!
//! Buckets split when they outgrow [`MAX`] and merge with a neighbour when
//! two together fit in half of it, so there are between N/MAX and about
//! 4N/MAX of them. The tree's set itself stays a `BTreeSet`: this index only
//! needs to hear of every key that appears or disappears.

use std::ops::Bound;

/// The most records a bucket holds before it splits.
const MAX: u32 = 512;

/// Bucket `i` holds the records with keys in `[starts[i], starts[i + 1])`;
/// `starts[0]` is the empty key, below or equal to every key.
#[derive(Debug)]
pub struct Counts {
    starts: Vec<Vec<u8>>,
    sizes: Vec<u32>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            starts: vec![Vec::new()],
            sizes: vec![0],
        }
    }
}

/// What the index needs of the tree: its keys in order from a bound.
pub trait Keys {
    fn keys_from<'a>(&'a self, lo: Bound<&[u8]>) -> Box<dyn Iterator<Item = &'a [u8]> + 'a>;
    /// Records from `lo` (included) up to `hi` (excluded).
    fn count_between(&self, lo: &[u8], hi: Bound<&[u8]>) -> usize;
}

impl Counts {
    /// The bucket `key` falls in.
    fn bucket(&self, key: &[u8]) -> usize {
        // starts[0] is the empty key, so at least one start is <= key.
        self.starts.partition_point(|s| s.as_slice() <= key) - 1
    }

    /// A new key was inserted.
    pub fn added(&mut self, key: &[u8], tree: &impl Keys) {
        let i = self.bucket(key);
        self.sizes[i] += 1;
        if self.sizes[i] > MAX {
            let half = self.sizes[i] / 2;
            let split = tree
                .keys_from(Bound::Included(&self.starts[i]))
                .nth(half as usize)
                .map(<[u8]>::to_vec);
            // The bucket holds more than `half` records, so the walk finds one.
            if let Some(split) = split {
                self.starts.insert(i + 1, split);
                self.sizes.insert(i + 1, self.sizes[i] - half);
                self.sizes[i] = half;
            }
        }
    }

    /// A key was removed.
    pub fn removed(&mut self, key: &[u8]) {
        let i = self.bucket(key);
        self.sizes[i] = self.sizes[i].saturating_sub(1);
        // Merge with the right neighbour, then with the left one, while two
        // together fit in half a bucket (bucket 0 keeps its empty start).
        if i + 1 < self.sizes.len() && self.sizes[i] + self.sizes[i + 1] <= MAX / 2 {
            self.sizes[i] += self.sizes[i + 1];
            self.sizes.remove(i + 1);
            self.starts.remove(i + 1);
        }
        if i > 0 && self.sizes[i - 1] + self.sizes[i] <= MAX / 2 {
            self.sizes[i - 1] += self.sizes[i];
            self.sizes.remove(i);
            self.starts.remove(i);
        }
    }

    /// Rebuilds the index from every key, in order.
    pub fn rebuild<'a>(&mut self, keys: impl Iterator<Item = &'a [u8]>) {
        *self = Counts::default();
        for key in keys {
            let last = self.sizes.len() - 1;
            if self.sizes[last] >= MAX / 2 {
                self.starts.push(key.to_vec());
                self.sizes.push(1);
            } else {
                self.sizes[last] += 1;
            }
        }
    }

    /// How many records have a key below `key` (`inclusive`: at or below).
    fn rank(&self, key: &[u8], inclusive: bool, tree: &impl Keys) -> usize {
        let i = self.bucket(key);
        let before: usize = self.sizes[..i].iter().map(|&s| s as usize).sum();
        let upto = if inclusive {
            Bound::Included(key)
        } else {
            Bound::Excluded(key)
        };
        before + tree.count_between(&self.starts[i], upto)
    }

    /// How many records lie between the bounds (which must be ordered).
    pub fn count(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>, tree: &impl Keys) -> usize {
        let total = || self.sizes.iter().map(|&s| s as usize).sum::<usize>();
        let below_lo = match lo {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.rank(k, false, tree),
            Bound::Excluded(k) => self.rank(k, true, tree),
        };
        let below_hi = match hi {
            Bound::Unbounded => total(),
            Bound::Included(k) => self.rank(k, true, tree),
            Bound::Excluded(k) => self.rank(k, false, tree),
        };
        below_hi.saturating_sub(below_lo)
    }

    #[cfg(test)]
    pub fn buckets(&self) -> usize {
        self.sizes.len()
    }
}
