//! Key and value generation.
//!
//! Keys are printable zero-padded decimals of exactly `key_size` bytes
//! (`00000042` for key 42 at 8 bytes). etcd's tool writes a varint into a
//! zeroed buffer instead; printable keys cost the same on the wire and keep
//! `etcdctl get` output readable when something needs checking by hand.

use anyhow::{bail, Result};

/// Picks the key of each request.
#[derive(Debug, Clone)]
pub struct KeyGen {
    key_size: usize,
    key_space: u64,
    sequential: bool,
}

impl KeyGen {
    /// Fails when `key_space` keys cannot be told apart in `key_size` digits.
    pub fn new(key_size: usize, key_space: u64, sequential: bool) -> Result<Self> {
        if key_size == 0 {
            bail!("--key-size must be at least 1");
        }
        if key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        // 10^key_size distinct keys fit; beyond 19 digits u64 cannot overflow it.
        if key_size < 20 && key_space > 10u64.pow(key_size as u32) {
            bail!("--key-space {key_space} does not fit in --key-size {key_size} decimal digits");
        }
        Ok(Self {
            key_size,
            key_space,
            sequential,
        })
    }

    /// The index of the key used by request number `ticket`.
    pub fn index(&self, ticket: u64, rng: &mut fastrand::Rng) -> u64 {
        if self.sequential {
            ticket % self.key_space
        } else {
            rng.u64(0..self.key_space)
        }
    }

    /// The key with index `i`.
    pub fn key(&self, i: u64) -> Vec<u8> {
        format_key(i % self.key_space, self.key_size)
    }
}

/// `i` as zero-padded decimal, exactly `size` bytes (left-padded with `0`).
pub fn format_key(i: u64, size: usize) -> Vec<u8> {
    let digits = i.to_string();
    let mut k = vec![b'0'; size.saturating_sub(digits.len())];
    // Only the low `size` digits: `KeyGen::new` rules out key spaces that need more.
    k.extend_from_slice(&digits.as_bytes()[digits.len().saturating_sub(size)..]);
    k
}

/// A value of `size` bytes. Not all one byte, so a store that compresses
/// values gets no unfair advantage; not random, so runs are repeatable.
pub fn value(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_decimals() {
        assert_eq!(format_key(42, 8), b"00000042");
        assert_eq!(format_key(0, 3), b"000");
        assert_eq!(format_key(12345, 3), b"345");
        assert_eq!(format_key(7, 1), b"7");
    }

    #[test]
    fn sequential_keys_wrap_around_the_key_space() {
        let g = KeyGen::new(4, 3, true).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let idx: Vec<u64> = (0..7).map(|t| g.index(t, &mut rng)).collect();
        assert_eq!(idx, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(g.key(2), b"0002");
    }

    #[test]
    fn random_keys_stay_in_the_key_space() {
        let g = KeyGen::new(8, 10, false).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for t in 0..1000 {
            assert!(g.index(t, &mut rng) < 10);
        }
    }

    #[test]
    fn rejects_key_space_larger_than_key_size_allows() {
        assert!(KeyGen::new(2, 100, false).is_ok());
        assert!(KeyGen::new(2, 101, false).is_err());
        assert!(KeyGen::new(0, 1, false).is_err());
        assert!(KeyGen::new(8, 0, false).is_err());
        assert!(KeyGen::new(32, u64::MAX, false).is_ok());
    }

    #[test]
    fn values_have_the_requested_size() {
        assert_eq!(value(0).len(), 0);
        assert_eq!(value(256).len(), 256);
        assert_eq!(&value(3), b"abc");
    }
}
