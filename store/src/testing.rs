//! Test-only helpers shared by the generated-input tests: a seedable
//! generator and mutations of valid encodings (the inputs that reach deepest
//! into a decoder are almost valid ones).

/// xorshift64*: small, seedable, good enough to pick operations and bytes.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `cases` inputs derived from `valid`: random bytes, truncations, bit flips,
/// overwritten spans, 32-bit fields set to huge or small values (length
/// prefixes), and duplicated or spliced tails.
pub fn mutations(valid: &[u8], cases: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut g = Rng::new(seed);
    let mut out = Vec::with_capacity(cases);
    for _ in 0..cases {
        let mut v = valid.to_vec();
        match g.below(6) {
            0 => {
                let n = g.below(64) as usize;
                v = g.bytes(n);
            }
            1 => v.truncate(g.below(v.len() as u64 + 1) as usize),
            2 => {
                for _ in 0..=g.below(4) {
                    if !v.is_empty() {
                        let i = g.below(v.len() as u64) as usize;
                        v[i] ^= 1 << g.below(8);
                    }
                }
            }
            3 if v.len() >= 4 => {
                let i = g.below(v.len() as u64 - 3) as usize;
                let n: u32 = [u32::MAX, 0x7fff_ffff, 1 << 20, 0, 1][g.below(5) as usize];
                let le = g.below(2) == 0;
                let b = if le { n.to_le_bytes() } else { n.to_be_bytes() };
                v[i..i + 4].copy_from_slice(&b);
            }
            4 if !v.is_empty() => {
                let i = g.below(v.len() as u64) as usize;
                let tail = v[i..].to_vec();
                v.extend_from_slice(&tail);
            }
            _ => {
                let i = g.below(v.len() as u64 + 1) as usize;
                let n = g.below(16) as usize;
                let junk = g.bytes(n);
                v.splice(i..i, junk);
            }
        }
        out.push(v);
    }
    out
}
