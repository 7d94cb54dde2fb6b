//! [`ThinBytes`]: an owned, immutable byte string behind one 8-byte pointer.
//!
//! `Box<[u8]>` is a 16-byte (pointer, length) pair. The state tree keeps one
//! per record inside its nodes, next to an 8-byte key head (see `tree`), so
//! moving the length into the allocation brings a tree slot from 24 bytes
//! back to 16: several MB at 100k keys. The 4 length bytes mostly fit in the
//! allocator's rounding: a `k` or `i` record stays in the 32-byte size class.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Bytes of the length header in front of the data.
const HEADER: usize = std::mem::size_of::<u32>();

/// `len u32 (native endian) | bytes`, one allocation aligned for the header.
pub struct ThinBytes(NonNull<u8>);

// SAFETY: a ThinBytes owns its allocation outright and never mutates it
// after construction, like a Box<[u8]>.
unsafe impl Send for ThinBytes {}
// SAFETY: shared access only reads immutable bytes.
unsafe impl Sync for ThinBytes {}

fn layout(len: usize) -> Layout {
    // Cannot fail: HEADER + len is far below isize::MAX for any record (a
    // request is at most a few MiB) and the alignment is a power of two.
    Layout::from_size_align(HEADER + len, std::mem::align_of::<u32>()).expect("record layout")
}

impl ThinBytes {
    /// The concatenation of `parts`.
    ///
    /// Panics if it is 4 GiB or longer: records are keys and values of
    /// requests, which the server bounds at a few MiB before they get here.
    pub fn concat(parts: &[&[u8]]) -> ThinBytes {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).expect("record longer than 4 GiB");
        let layout = layout(len);
        // SAFETY: the layout has a non-zero size (HEADER > 0).
        let p = unsafe { alloc(layout) };
        let Some(p) = NonNull::new(p) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `p` is valid for HEADER + len bytes and aligned for u32;
        // each part is copied into its own, non-overlapping range of it.
        unsafe {
            p.as_ptr().cast::<u32>().write(len32);
            let mut at = p.as_ptr().add(HEADER);
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
        }
        ThinBytes(p)
    }

    #[inline]
    fn len(&self) -> usize {
        // SAFETY: the header was written by `concat` and is aligned.
        unsafe { self.0.as_ptr().cast::<u32>().read() as usize }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `concat` initialised `len` bytes after the header, and they
        // live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(HEADER), self.len()) }
    }
}

impl Drop for ThinBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `concat` with exactly this layout.
        unsafe { dealloc(self.0.as_ptr(), layout(self.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenates_and_frees() {
        let t = ThinBytes::concat(&[b"ab", b"", b"cde"]);
        assert_eq!(t.as_slice(), b"abcde");
        assert_eq!(ThinBytes::concat(&[]).as_slice(), b"");
        let big = vec![7u8; 100_000];
        assert_eq!(ThinBytes::concat(&[&big, b"x"]).as_slice().len(), 100_001);
        assert_eq!(std::mem::size_of::<ThinBytes>(), 8);
    }
}
