//! The WAL's bytes on disk: the segment header and the records.
//!
//! ```text
//! segment = "CAIRNWAL" | format version u32 LE | record*
//! record  = len u32 LE | crc32 u32 LE (of the payload) | payload (bincode Entry)
//! ```
//!
//! The header lets the next format change be recognised: a build refuses a
//! segment of a version it does not know instead of misreading it.

use std::io;

use openraft::RaftLogId;

use super::super::{Entry, LogId};

pub(super) const MAGIC: &[u8; 8] = b"CAIRNWAL";
pub(super) const VERSION: u32 = 1;
/// Bytes before a segment's first record.
pub(super) const SEGMENT_HEADER: usize = 12;
/// Bytes before a record's payload.
pub(super) const RECORD_HEADER: usize = 8;

pub(super) fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(super) fn segment_header() -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a segment's header. `Ok(false)`: the header itself is torn (a
/// crash right after the segment was created: empty, zeros, or a prefix of
/// the header), so the segment holds nothing. Anything else that is not this
/// version's header is an error.
pub(super) fn check_header(data: &[u8], name: &str) -> io::Result<bool> {
    let expect = segment_header();
    let n = data.len().min(SEGMENT_HEADER);
    let head = &data[..n];
    if head.iter().all(|b| *b == 0) || (n < SEGMENT_HEADER && head == &expect[..n]) {
        return Ok(false);
    }
    if n < SEGMENT_HEADER || head[..8] != MAGIC[..] {
        return Err(corrupt(format!("{name}: not a Cairn WAL segment")));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(corrupt(format!(
            "{name}: WAL format version {version}; this build reads version {VERSION}"
        )));
    }
    Ok(true)
}

/// Records as written, and each one's length and log id.
pub(super) type Encoded = (Vec<u8>, Vec<(u32, LogId)>);

/// Encodes entries as records into one buffer.
pub(super) fn encode(entries: &[Entry]) -> io::Result<Encoded> {
    let mut buf = Vec::new();
    let mut lens = Vec::with_capacity(entries.len());
    for e in entries {
        let start = buf.len();
        buf.extend_from_slice(&[0; RECORD_HEADER]);
        bincode::serialize_into(&mut buf, e).map_err(io::Error::other)?;
        let payload = &buf[start + RECORD_HEADER..];
        let len = u32::try_from(payload.len()).map_err(|_| corrupt("entry over 4 GiB".into()))?;
        let crc = crc32fast::hash(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        lens.push((len + RECORD_HEADER as u32, *e.get_log_id()));
    }
    Ok((buf, lens))
}

/// What the bytes at some offset hold.
pub(super) enum Record {
    /// An entry and the record's length.
    Entry(Box<Entry>, usize),
    /// Too short, or its checksum does not match: a torn write, or damage.
    Bad,
    /// The checksum matches but the payload is not an entry this build
    /// knows: never a torn write.
    Undecodable,
}

/// Decodes the record at the start of `buf`.
pub(super) fn decode(buf: &[u8]) -> Record {
    let Some(head) = buf.get(..RECORD_HEADER) else {
        return Record::Bad;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    // No entry encodes to nothing, and the checksum of nothing is 0: zeros
    // (a torn write's usual shape) would otherwise pass as a valid record.
    if len == 0 {
        return Record::Bad;
    }
    let Some(payload) = buf.get(RECORD_HEADER..RECORD_HEADER.saturating_add(len)) else {
        return Record::Bad;
    };
    if crc32fast::hash(payload) != crc {
        return Record::Bad;
    }
    match bincode::deserialize(payload) {
        Ok(entry) => Record::Entry(Box::new(entry), RECORD_HEADER + len),
        Err(_) => Record::Undecodable,
    }
}

/// Whether the record after the bad one at `offset` (as its length field
/// places it) is a valid record: then the bad one is damage, not a torn tail.
pub(super) fn valid_record_follows(data: &[u8], offset: usize) -> bool {
    let Some(len) = data.get(offset..offset + 4) else {
        return false;
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let next = offset.saturating_add(RECORD_HEADER).saturating_add(len);
    next < data.len() && !matches!(decode(&data[next..]), Record::Bad)
}
