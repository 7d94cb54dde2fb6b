//! bbolt's file format (go.etcd.io/bbolt 1.3, where etcd 3.4 keeps its
//! backend), as much of it as a snapshot needs: [`DbWriter`] lays out a fresh
//! database of top-level buckets in one pass, [`read`] walks one back.
//!
//! Why not the `bbolt-rs` crate: it is a whole transactional engine on an
//! mmapped file and brings 13 crates this workspace does not have (three of
//! them proc-macros). A snapshot needs neither transactions nor a file: it is
//! written once, in key order, and streamed from memory.
//!
//! ```text
//! page     = header (id u64, flags u16, count u16, overflow u32) | body
//!            (a node larger than a page runs on into `overflow` more pages)
//! page 0,1 = meta: magic, version 2, page size, flags, root bucket
//!            (root page u64, sequence u64), freelist page, page count
//!            ("high water mark"), txid, FNV-1a 64 of the fields before it
//! page 2   = the freelist (empty: every page of a fresh file is in use)
//! leaf     = elements (flags u32, pos u32, ksize u32, vsize u32), then keys
//!            and values; pos counts from the element itself
//! branch   = elements (pos u32, ksize u32, child page u64); the key is the
//!            first key of the child
//! bucket   = a leaf entry with flag 1 whose value is (root page u64,
//!            sequence u64), followed by the bucket's page itself when the
//!            root is 0 ("inline", bbolt's form for small buckets)
//! ```
//!
//! Integers are little-endian (bbolt writes its structs in the machine's
//! order; every platform etcd ships for is little-endian). Files this writer
//! makes pass bbolt's own consistency check (`tx.Check`, which `etcdctl
//! snapshot status` runs): every page below the high water mark is reachable
//! exactly once. The reader takes files bbolt wrote, with branch pages,
//! overflow pages, inline buckets and free pages, and is bounded on damaged
//! ones: every offset is checked, each page is visited at most once.

use std::collections::HashSet;

use anyhow::{bail, ensure, Context, Result};

/// What etcd uses on Linux (bbolt takes the OS page size for a new file).
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_SIZE: usize = 64;
/// The checksum covers the meta fields before it.
const META_CHECKSUM_AT: usize = 56;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
/// Bucket value header: root page and sequence.
const BUCKET_HEADER: usize = 16;
const FIRST_DATA_PAGE: u64 = 3;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One element of a node being written: a leaf's key and value (and flags),
/// or a branch's first key of a child and the child's page.
struct Elem {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
    child: u64,
}

impl Elem {
    fn size(&self, kind: u16) -> usize {
        ELEMENT + self.key.len() + if kind == LEAF { self.value.len() } else { 0 }
    }
}

/// Nodes of one level of a bucket's tree, filled a page at a time.
struct Level {
    kind: u16,
    elems: Vec<Elem>,
    size: usize,
}

impl Level {
    fn new(kind: u16) -> Level {
        Level {
            kind,
            elems: Vec::new(),
            size: HEADER,
        }
    }

    /// Whether `e` no longer fits the node being filled (a node always takes
    /// its first element, however large: it overflows onto more pages).
    fn full_for(&self, e: &Elem) -> bool {
        !self.elems.is_empty() && self.size + e.size(self.kind) > PAGE_SIZE
    }

    fn push(&mut self, e: Elem) {
        self.size += e.size(self.kind);
        self.elems.push(e);
    }
}

/// Builds a bbolt file: pages 0–2 are reserved for the metas and the
/// freelist, each bucket's pages follow as they fill, the root bucket's page
/// comes last and the metas are written by [`DbWriter::finish`].
pub struct DbWriter {
    file: Vec<u8>,
    /// Top-level buckets written so far, with their root pages.
    buckets: Vec<(Vec<u8>, u64)>,
}

impl Default for DbWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl DbWriter {
    pub fn new() -> DbWriter {
        DbWriter {
            file: vec![0; FIRST_DATA_PAGE as usize * PAGE_SIZE],
            buckets: Vec::new(),
        }
    }

    /// Adds the top-level bucket `name` holding `entries`. Names must come in
    /// increasing order, and the entries of a bucket in increasing key order
    /// (bbolt's cursors binary-search them).
    pub fn bucket<K, V>(&mut self, name: &[u8], entries: impl IntoIterator<Item = (K, V)>)
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        debug_assert!(self.buckets.last().is_none_or(|(n, _)| n.as_slice() < name));
        let elems = entries.into_iter().map(|(k, v)| Elem {
            flags: 0,
            key: k.as_ref().to_vec(),
            value: v.as_ref().to_vec(),
            child: 0,
        });
        let root = self.tree(elems);
        self.buckets.push((name.to_vec(), root));
    }

    /// Writes the leaves of `elems` and the branches above them; returns the
    /// root page. An empty bucket is one empty leaf.
    fn tree(&mut self, elems: impl Iterator<Item = Elem>) -> u64 {
        let mut level = Level::new(LEAF);
        let mut children = Vec::new();
        for e in elems {
            if level.full_for(&e) {
                children.push(self.node(std::mem::replace(&mut level, Level::new(LEAF))));
            }
            level.push(e);
        }
        if !level.elems.is_empty() || children.is_empty() {
            children.push(self.node(level));
        }
        while children.len() > 1 {
            let mut level = Level::new(BRANCH);
            let mut parents = Vec::new();
            for e in children {
                if level.full_for(&e) {
                    parents.push(self.node(std::mem::replace(&mut level, Level::new(BRANCH))));
                }
                level.push(e);
            }
            parents.push(self.node(level));
            children = parents;
        }
        children.pop().map_or(0, |e| e.child)
    }

    /// Writes one node at the end of the file; returns the element that
    /// points at it from the level above (its first key and its page).
    fn node(&mut self, level: Level) -> Elem {
        let id = (self.file.len() / PAGE_SIZE) as u64;
        let start = self.file.len();
        let count = level.elems.len();
        let pages = level.size.div_ceil(PAGE_SIZE).max(1);
        self.file.extend_from_slice(&id.to_le_bytes());
        self.file.extend_from_slice(&level.kind.to_le_bytes());
        // A page holds at most PAGE_SIZE / ELEMENT elements: the count fits.
        self.file.extend_from_slice(&(count as u16).to_le_bytes());
        self.file
            .extend_from_slice(&((pages - 1) as u32).to_le_bytes());
        let mut data = start + HEADER + count * ELEMENT;
        for (i, e) in level.elems.iter().enumerate() {
            let pos = (data - (start + HEADER + i * ELEMENT)) as u32;
            if level.kind == LEAF {
                self.file.extend_from_slice(&e.flags.to_le_bytes());
                self.file.extend_from_slice(&pos.to_le_bytes());
                self.file
                    .extend_from_slice(&(e.key.len() as u32).to_le_bytes());
                self.file
                    .extend_from_slice(&(e.value.len() as u32).to_le_bytes());
                data += e.key.len() + e.value.len();
            } else {
                self.file.extend_from_slice(&pos.to_le_bytes());
                self.file
                    .extend_from_slice(&(e.key.len() as u32).to_le_bytes());
                self.file.extend_from_slice(&e.child.to_le_bytes());
                data += e.key.len();
            }
        }
        for e in &level.elems {
            self.file.extend_from_slice(&e.key);
            if level.kind == LEAF {
                self.file.extend_from_slice(&e.value);
            }
        }
        self.file.resize(start + pages * PAGE_SIZE, 0);
        let first = level.elems.into_iter().next();
        Elem {
            flags: 0,
            key: first.map(|e| e.key).unwrap_or_default(),
            value: Vec::new(),
            child: id,
        }
    }

    /// Writes the root bucket, the freelist and both metas; returns the file.
    pub fn finish(mut self) -> Vec<u8> {
        let buckets = std::mem::take(&mut self.buckets);
        let root = self.tree(buckets.into_iter().map(|(name, root)| {
            let mut value = root.to_le_bytes().to_vec();
            value.extend_from_slice(&0u64.to_le_bytes());
            Elem {
                flags: BUCKET_FLAG,
                key: name,
                value,
                child: 0,
            }
        }));
        let high = (self.file.len() / PAGE_SIZE) as u64;
        self.write_header(2, FREELIST, 0);
        // bbolt's own init gives the two metas txids 0 and 1; the higher one
        // is current.
        for txid in 0..2u64 {
            let at = txid as usize * PAGE_SIZE;
            self.write_header(txid, META, 0);
            let mut meta = Vec::with_capacity(META_SIZE);
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes()); // flags
            meta.extend_from_slice(&root.to_le_bytes());
            meta.extend_from_slice(&0u64.to_le_bytes()); // root sequence
            meta.extend_from_slice(&2u64.to_le_bytes()); // freelist page
            meta.extend_from_slice(&high.to_le_bytes());
            meta.extend_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&meta[..META_CHECKSUM_AT]);
            meta.extend_from_slice(&sum.to_le_bytes());
            self.file[at + HEADER..at + HEADER + META_SIZE].copy_from_slice(&meta);
        }
        self.file
    }

    fn write_header(&mut self, id: u64, flags: u16, count: u16) {
        let at = id as usize * PAGE_SIZE;
        self.file[at..at + 8].copy_from_slice(&id.to_le_bytes());
        self.file[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        self.file[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
        self.file[at + 12..at + 16].copy_from_slice(&0u32.to_le_bytes());
    }
}

/// Whether `data` starts like a bbolt file (a valid first meta page).
pub fn is_bbolt(data: &[u8]) -> bool {
    Meta::parse(data, 0).is_ok()
}

/// A bucket's entries in key order, borrowed from the file.
pub type Entries<'a> = Vec<(&'a [u8], &'a [u8])>;

/// A top-level bucket: its name and its entries (entries that are themselves
/// buckets are left out: etcd's backend has none).
pub type Bucket<'a> = (&'a [u8], Entries<'a>);

/// Every top-level bucket of a bbolt file, in name order.
pub fn read(data: &[u8]) -> Result<Vec<Bucket<'_>>> {
    let meta = Meta::current(data)?;
    let mut r = Reader {
        data,
        page_size: meta.page_size,
        high: meta.high,
        seen: HashSet::new(),
    };
    let mut top = Vec::new();
    r.walk(Node::Page(meta.root), 0, &mut |flags, k, v| {
        if flags & BUCKET_FLAG != 0 {
            top.push((k, v));
        }
    })?;
    let mut out = Vec::with_capacity(top.len());
    for (name, value) in top {
        let node = r
            .bucket_root(value)
            .with_context(|| format!("bucket {:?}", String::from_utf8_lossy(name)))?;
        let mut entries = Vec::new();
        r.walk(node, 0, &mut |flags, k, v| {
            if flags & BUCKET_FLAG == 0 {
                entries.push((k, v));
            }
        })?;
        out.push((name, entries));
    }
    Ok(out)
}

struct Meta {
    page_size: usize,
    root: u64,
    high: u64,
    txid: u64,
}

impl Meta {
    fn parse(data: &[u8], at: usize) -> Result<Meta> {
        let m = data
            .get(at + HEADER..at + HEADER + META_SIZE)
            .context("file too short for a bbolt meta page")?;
        let u32_at = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or_default());
        ensure!(u32_at(0) == MAGIC, "not a bbolt file (no magic number)");
        ensure!(u32_at(4) == VERSION, "bbolt version {} is not 2", u32_at(4));
        ensure!(
            u64_at(META_CHECKSUM_AT) == fnv1a64(&m[..META_CHECKSUM_AT]),
            "bbolt meta page checksum mismatch"
        );
        let page_size = u32_at(8) as usize;
        ensure!(
            page_size.is_power_of_two() && (512..=1 << 16).contains(&page_size),
            "bbolt page size {page_size} is not a power of two from 512 to 64 KiB"
        );
        Ok(Meta {
            page_size,
            root: u64_at(16),
            high: u64_at(40),
            txid: u64_at(48),
        })
    }

    /// The meta of the last committed transaction: bbolt writes the two in
    /// turn, and one torn by a crash fails its checksum.
    fn current(data: &[u8]) -> Result<Meta> {
        let first = Meta::parse(data, 0);
        let size = first.as_ref().map_or(PAGE_SIZE, |m| m.page_size);
        let second = Meta::parse(data, size);
        match (first, second) {
            (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => Ok(m),
            (Err(e), Err(_)) => Err(e),
        }
    }
}

/// A node to read: a page of the file, or the page inside an inline
/// bucket's value.
enum Node<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

struct Reader<'a> {
    data: &'a [u8],
    page_size: usize,
    high: u64,
    /// Pages already read: a damaged file that points at a page twice (or
    /// in a cycle) fails instead of costing time.
    seen: HashSet<u64>,
}

/// Deeper than any real tree (bbolt's fan-out is at least 2 per level).
const MAX_DEPTH: usize = 64;

impl<'a> Reader<'a> {
    fn bucket_root(&self, value: &'a [u8]) -> Result<Node<'a>> {
        ensure!(value.len() >= BUCKET_HEADER, "bucket value too short");
        let root = u64::from_le_bytes(value[..8].try_into()?);
        Ok(if root == 0 {
            Node::Inline(&value[BUCKET_HEADER..])
        } else {
            Node::Page(root)
        })
    }

    fn page(&mut self, id: u64) -> Result<&'a [u8]> {
        // Pages 0 and 1 are the metas; any other page may hold data in a
        // file bbolt has written to (the first freelist page gets reused).
        ensure!(
            id >= 2 && id < self.high,
            "page {id} is outside the data pages (high water mark {})",
            self.high
        );
        ensure!(self.seen.insert(id), "page {id} is referenced twice");
        let ps = self.page_size;
        let at = usize::try_from(id)?
            .checked_mul(ps)
            .context("page offset overflows")?;
        let head = self
            .data
            .get(at..at + HEADER)
            .with_context(|| format!("page {id} is past the end of the file"))?;
        let overflow = u32::from_le_bytes(head[12..16].try_into()?) as usize;
        let len = (overflow + 1)
            .checked_mul(ps)
            .context("page size overflows")?;
        self.data
            .get(at..at.checked_add(len).context("page end overflows")?)
            .with_context(|| format!("page {id} (+{overflow} overflow) runs past the end"))
    }

    fn walk(
        &mut self,
        node: Node<'a>,
        depth: usize,
        visit: &mut dyn FnMut(u32, &'a [u8], &'a [u8]),
    ) -> Result<()> {
        ensure!(
            depth < MAX_DEPTH,
            "bbolt tree deeper than {MAX_DEPTH} levels"
        );
        let page = match node {
            Node::Page(id) => self.page(id)?,
            Node::Inline(p) => p,
        };
        ensure!(page.len() >= HEADER, "page shorter than its header");
        let flags = u16::from_le_bytes(page[8..10].try_into()?);
        let count = u16::from_le_bytes(page[10..12].try_into()?);
        let elem = |i: usize| -> Result<&'a [u8]> {
            page.get(HEADER + i * ELEMENT..HEADER + (i + 1) * ELEMENT)
                .context("element table runs past its page")
        };
        let field = |e: &[u8], at: usize| {
            u32::from_le_bytes(e[at..at + 4].try_into().unwrap_or_default()) as usize
        };
        let bytes = |start: usize, len: usize| -> Result<&'a [u8]> {
            page.get(start..start.checked_add(len).context("length overflows")?)
                .context("key or value runs past its page")
        };
        match flags {
            LEAF => {
                for i in 0..count as usize {
                    let e = elem(i)?;
                    let at = HEADER + i * ELEMENT + field(e, 4);
                    let (ks, vs) = (field(e, 8), field(e, 12));
                    let k = bytes(at, ks)?;
                    let v = bytes(at + ks, vs)?;
                    visit(field(e, 0) as u32, k, v);
                }
            }
            BRANCH => {
                ensure!(
                    !matches!(node, Node::Inline(_)),
                    "inline bucket with a branch"
                );
                for i in 0..count as usize {
                    let e = elem(i)?;
                    let child = u64::from_le_bytes(e[8..16].try_into()?);
                    self.walk(Node::Page(child), depth + 1, visit)?;
                }
            }
            other => bail!("page of type {other:#x} where a branch or leaf belongs"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = Vec<(Vec<u8>, Vec<u8>)>;

    fn kv(n: usize, vlen: usize) -> Owned {
        (0..n)
            .map(|i| {
                (
                    format!("key{i:08}").into_bytes(),
                    vec![(i % 251) as u8; vlen],
                )
            })
            .collect()
    }

    fn owned(b: Vec<Bucket<'_>>) -> Vec<(Vec<u8>, Owned)> {
        b.into_iter()
            .map(|(n, e)| {
                (
                    n.to_vec(),
                    e.into_iter()
                        .map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn written_buckets_read_back() {
        // Empty, one page, several leaves under a branch, values larger
        // than a page (overflow), and enough keys for two branch levels.
        let cases: Vec<(&[u8], Owned)> = vec![
            (b"a-empty", Vec::new()),
            (b"b-small", kv(3, 10)),
            (b"c-leaves", kv(1000, 50)),
            (b"d-overflow", kv(5, 3 * PAGE_SIZE)),
            (b"e-deep", kv(60_000, 0)),
        ];
        let mut w = DbWriter::new();
        for (name, entries) in &cases {
            w.bucket(name, entries.iter().map(|(k, v)| (k, v)));
        }
        let file = w.finish();
        assert_eq!(file.len() % PAGE_SIZE, 0);
        assert!(is_bbolt(&file));
        let got = owned(read(&file).unwrap());
        let want: Vec<_> = cases.into_iter().map(|(n, e)| (n.to_vec(), e)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_page_is_reachable_once() {
        // bbolt's tx.Check: pages below the high water mark are each reached
        // once (metas and freelist count as reached).
        let mut w = DbWriter::new();
        w.bucket(b"k", kv(5000, 100));
        w.bucket(b"v", kv(3, 9000));
        let file = w.finish();
        let meta = Meta::current(&file).unwrap();
        let mut r = Reader {
            data: &file,
            page_size: meta.page_size,
            high: meta.high,
            seen: HashSet::new(),
        };
        let mut tops = Vec::new();
        r.walk(Node::Page(meta.root), 0, &mut |_, _, v| tops.push(v))
            .unwrap();
        for v in tops {
            let node = r.bucket_root(v).unwrap();
            r.walk(node, 0, &mut |_, _, _| {}).unwrap();
        }
        let mut covered = vec![false; meta.high as usize];
        covered[0] = true;
        covered[1] = true;
        covered[2] = true;
        for id in r.seen {
            let at = id as usize * PAGE_SIZE;
            let overflow = u32::from_le_bytes(file[at + 12..at + 16].try_into().unwrap());
            for p in id..=id + u64::from(overflow) {
                assert!(!covered[p as usize], "page {p} reached twice");
                covered[p as usize] = true;
            }
        }
        assert!(covered.iter().all(|&c| c), "unreachable pages");
        assert_eq!(file.len(), meta.high as usize * PAGE_SIZE);
    }

    #[test]
    fn inline_buckets_and_the_newer_meta_are_read() {
        // What bbolt itself writes for a small bucket: root 0 and the page
        // inline in the value. And a second meta with a higher txid wins.
        let mut w = DbWriter::new();
        w.bucket(b"x", [(b"k", b"v")]);
        let mut file = w.finish();
        // Rewrite the root bucket's single entry as an inline bucket.
        let meta = Meta::current(&file).unwrap();
        let root_at = meta.root as usize * PAGE_SIZE;
        let mut inline = vec![0u8; BUCKET_HEADER];
        let mut page = Vec::new();
        page.extend_from_slice(&0u64.to_le_bytes());
        page.extend_from_slice(&LEAF.to_le_bytes());
        page.extend_from_slice(&1u16.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes());
        page.extend_from_slice(&(ELEMENT as u32).to_le_bytes());
        page.extend_from_slice(&2u32.to_le_bytes());
        page.extend_from_slice(&3u32.to_le_bytes());
        page.extend_from_slice(b"iki-v");
        inline.extend_from_slice(&page);
        // Root leaf: one element, key "y", the inline value.
        let mut root = Vec::new();
        root.extend_from_slice(&meta.root.to_le_bytes());
        root.extend_from_slice(&LEAF.to_le_bytes());
        root.extend_from_slice(&1u16.to_le_bytes());
        root.extend_from_slice(&0u32.to_le_bytes());
        root.extend_from_slice(&BUCKET_FLAG.to_le_bytes());
        root.extend_from_slice(&(ELEMENT as u32).to_le_bytes());
        root.extend_from_slice(&1u32.to_le_bytes());
        root.extend_from_slice(&(inline.len() as u32).to_le_bytes());
        root.push(b'y');
        root.extend_from_slice(&inline);
        file[root_at..root_at + root.len()].copy_from_slice(&root);
        let got = owned(read(&file).unwrap());
        assert_eq!(
            got,
            vec![(b"y".to_vec(), vec![(b"ik".to_vec(), b"i-v".to_vec())])]
        );
    }

    #[test]
    fn damaged_files_fail_without_panicking() {
        let mut w = DbWriter::new();
        w.bucket(b"k", kv(2000, 40));
        w.bucket(b"m", kv(2, 7000));
        let file = w.finish();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..3000 {
            let mut bad = file.clone();
            match next() % 3 {
                0 => bad.truncate((next() as usize) % file.len()),
                1 => {
                    for _ in 0..4 {
                        let i = (next() as usize) % bad.len();
                        bad[i] ^= 1 << (next() % 8);
                    }
                }
                _ => {
                    // A length, offset or page id set huge.
                    let i = ((next() as usize) % (bad.len() - 8)) & !3;
                    bad[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                }
            }
            let _ = read(&bad);
        }
        assert!(read(b"not a database").is_err());
        assert!(!is_bbolt(&[0; 8192]));
    }
}
