//! The state machine's image on disk: `<data-dir>/snapshot`.
//!
//! The key-value state lives in memory ([`Tree`]); what makes it durable is
//! this file (the whole state at one applied log id) plus the Raft log after
//! that id, which openraft re-applies on start. The same bytes are the Raft
//! snapshot sent to a lagging member.
//!
//! ```text
//! file    = "CAIRNSNF" | format version u32 LE | meta len u64 BE | meta (bincode SnapshotMeta) | data
//! data    = SNAP_MAGIC | (key len u32 BE | key | value len u32 BE | value)*
//!           (records of the state tree in key order, see `mvcc::keys`)
//! ```
//!
//! A file is written beside its final name, fsynced, renamed over it and
//! the directory fsynced: a crash leaves the old image or the new one, and
//! openraft purges the log behind an image only once it is durable.

use std::io::Write;
use std::path::Path;

use openraft::StorageIOError;

use super::{SnapshotMeta, StorageError};
use crate::mvcc::Tree;

/// Version 2 of the records: `k` records point into the history (see
/// `mvcc::keys`). Data of another version is refused, never misread; the
/// same bytes travel as Raft snapshots and `etcdctl snapshot save` files.
pub(crate) const SNAP_MAGIC: &[u8] = b"CAIRNSNAP2";

/// The file's own header: its magic and format version, so the next change
/// of the file's layout is recognised.
const FILE_MAGIC: &[u8; 8] = b"CAIRNSNF";
const FILE_VERSION: u32 = 1;

/// Marks the end of the records where a key length would be. No record has a
/// 4 GiB key, so data written before the marker existed never contains it.
/// Raft snapshots are written without it; the `etcdctl snapshot save` files
/// of earlier versions carry it, so that the zero padding etcdctl requires
/// after the records is not read as more records (`restore` still reads them).
pub(crate) const SNAP_END: [u8; 4] = [0xff; 4];

pub(crate) fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

/// The whole state tree as `SNAP_MAGIC` + records. The caller makes it one
/// point in time (it holds the state's read lock).
pub(crate) fn encode_tree(tree: &Tree) -> Vec<u8> {
    let size: usize = tree.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(SNAP_MAGIC.len() + size);
    out.extend_from_slice(SNAP_MAGIC);
    for (k, v) in tree.iter() {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The records of an [`encode_tree`] payload, as a tree.
pub(crate) fn decode_tree(data: &[u8]) -> Result<Tree, StorageError> {
    let mut tree = Tree::new();
    for (k, v) in decode_records(data)? {
        tree.insert(k, v);
    }
    Ok(tree)
}

/// Records (key, value) of a payload, borrowed from it.
pub(crate) type RecordRefs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The records of an [`encode_tree`] payload in their (key) order, borrowed
/// from it. After a [`SNAP_END`] marker only zero padding may follow.
pub(crate) fn decode_records(data: &[u8]) -> Result<RecordRefs<'_>, StorageError> {
    let mut rest = data
        .strip_prefix(SNAP_MAGIC)
        .ok_or_else(|| snap_err("not a Cairn snapshot of this version"))?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(&SNAP_END) {
            if after.iter().any(|b| *b != 0) {
                return Err(snap_err("data after the end of the snapshot records"));
            }
            break;
        }
        let k = take_field(&mut rest)?;
        let v = take_field(&mut rest)?;
        records.push((k, v));
    }
    Ok(records)
}

/// One length-prefixed field off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], StorageError> {
    let truncated = || snap_err("truncated snapshot");
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(truncated)? as usize;
    let body = rest.get(4..4 + len).ok_or_else(truncated)?;
    *rest = &rest[4 + len..];
    Ok(body)
}

/// Durably replaces the image at `path` (see the module doc).
pub(crate) fn save(path: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let meta = bincode::serialize(meta).map_err(snap_err)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(snap_err)?;
    f.write_all(FILE_MAGIC)
        .and_then(|()| f.write_all(&FILE_VERSION.to_le_bytes()))
        .and_then(|()| f.write_all(&(meta.len() as u64).to_be_bytes()))
        .and_then(|()| f.write_all(&meta))
        .and_then(|()| f.write_all(data))
        .and_then(|()| f.sync_all())
        .map_err(snap_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(snap_err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_err)
}

/// The image at `path`: its meta and data. `None` if there is none yet.
pub(crate) fn load(path: &Path) -> anyhow::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let mut buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = || anyhow::anyhow!("snapshot file {} is damaged", path.display());
    if buf.get(..8) != Some(&FILE_MAGIC[..]) {
        anyhow::bail!("{} is not a Cairn snapshot file", path.display());
    }
    let version = buf
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(damaged)?;
    if version != FILE_VERSION {
        anyhow::bail!(
            "snapshot file {}: format version {version}; this build reads version {FILE_VERSION}",
            path.display()
        );
    }
    let n = buf
        .get(12..20)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(damaged)? as usize;
    let meta: SnapshotMeta =
        bincode::deserialize(buf.get(20..20usize.saturating_add(n)).ok_or_else(damaged)?)?;
    buf.drain(..20 + n);
    Ok(Some((meta, buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot file's records, damaged any way: decoded or refused with
    /// an error, never a panic, and never a field read past the input.
    #[test]
    fn tree_decoding_survives_any_input() {
        let mut tree = Tree::new();
        for i in 0..20u8 {
            tree.insert(&[b'k', i], &vec![i; i as usize]);
        }
        let valid = encode_tree(&tree);
        assert_eq!(decode_tree(&valid).unwrap(), tree);
        for input in crate::testing::mutations(&valid, 20_000, 3) {
            let _ = decode_tree(&input);
        }
    }
}
