//! The Raft log as append-only segment files (a write-ahead log, as etcd's).
//!
//! The log used to live in a sled tree. Every commit then paid for a sled
//! flush, which hands its buffer to sled's IO thread pool and waits on a
//! condition variable: several thread switches per fsync, the largest single
//! cost of a write on a follower. Here an append is one `write` into the
//! current segment and a sync is one `fdatasync`, both on the caller's thread.
//!
//! ```text
//! <data-dir>/wal/<first index, 16 hex digits>.wal   one segment (format: [`record`])
//! ```
//!
//! - A segment is closed once it reaches [`SEGMENT_BYTES`]; it is fdatasynced
//!   before the next append starts a new one named after its first index, so
//!   a later segment never holds data while an earlier one is torn.
//! - Opening scans every segment. A bad record with nothing valid after it is
//!   a torn write (a crash cut an unsynced write short, so it was never
//!   acknowledged): it is cut off, and so are later segments that hold no
//!   valid record (a tear at a segment roll). A bad record followed by a valid
//!   one is corruption: the member refuses to start rather than serve a log
//!   with a hole.
//! - What opening read may have come from the page cache of a process that
//!   died before its fsync: every segment is fsynced before the log counts
//!   as durable (openraft treats the log it reads back as persisted).
//! - Directory order: a truncation deletes the later segments and fsyncs the
//!   directory before it shortens the segment it cuts, so a power loss in
//!   between never brings back a later segment after a shortened one (a hole).
//! - A record whose checksum matches but whose payload does not decode is
//!   never a torn write: the member refuses to start.
//! - With `CAIRN_SYNC_JOURNAL=1` (the robustness suite's power-loss
//!   simulation) each durable point is recorded ([`journal`]).
//! - Entries at or below the purge point are skipped when opening, so a
//!   segment deleted by a purge that the crash undid changes nothing.
//! - Entries are read back with `pread` (the page cache holds recent ones);
//!   only each entry's position and log id are kept in memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::RaftLogId;

use super::{Entry, LogId};

mod journal;
mod record;

use journal::SyncJournal;
use record::{
    check_header, corrupt, decode, encode, segment_header, valid_record_follows, Record,
    SEGMENT_HEADER,
};

/// A segment is closed once it holds this many bytes (etcd: 64 MiB too).
pub const SEGMENT_BYTES: u64 = 64 << 20;

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Bytes known durable.
    synced: u64,
    /// Bumped by a truncation: a sync that began before it covers bytes that
    /// are no longer the segment's, and must not record their length.
    generation: u64,
}

impl Segment {
    fn name(&self) -> String {
        segment_name(self.first)
    }

    /// Whether it holds a record (not only its header, or nothing at all).
    fn has_records(&self) -> bool {
        self.len > SEGMENT_HEADER as u64
    }
}

/// Where one entry sits.
#[derive(Clone, Copy)]
struct Slot {
    segment_first: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Inner {
    segments: Vec<Segment>,
    /// One slot per entry, in index order.
    slots: VecDeque<Slot>,
    /// Segments written since the last sync (by first index).
    unsynced: Vec<u64>,
    /// A segment was created or deleted since the last sync.
    dir_dirty: bool,
}

pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    journal: SyncJournal,
}

fn segment_name(first: u64) -> String {
    format!("{first:016x}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether the segment at `path` starts with a valid record (reading only
/// its header and that record).
fn starts_with_record(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = [0u8; SEGMENT_HEADER + record::RECORD_HEADER];
    let n = (size as usize).min(head.len());
    file.read_exact_at(&mut head[..n], 0)?;
    if !check_header(&head[..n], &path.display().to_string())? || n < head.len() {
        return Ok(false);
    }
    let len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as u64;
    let end = (head.len() as u64).saturating_add(len).min(size);
    let mut rec = vec![0u8; (end - SEGMENT_HEADER as u64) as usize];
    file.read_exact_at(&mut rec, SEGMENT_HEADER as u64)?;
    Ok(!matches!(decode(&rec), Record::Bad))
}

impl Wal {
    /// Opens (or creates) the log in `dir`. Entries at or below `purged` are
    /// not part of the log any more.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        Self::open_with(dir, purged, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        firsts.sort_unstable();
        let paths: Vec<PathBuf> = firsts.iter().map(|f| dir.join(segment_name(*f))).collect();
        let mut inner = Inner {
            segments: Vec::new(),
            slots: VecDeque::new(),
            unsynced: Vec::new(),
            dir_dirty: false,
        };
        // Segments are read one at a time; a torn write ends the log at
        // (segment position, byte offset).
        let mut tear: Option<(usize, usize)> = None;
        for (k, (first, path)) in firsts.iter().zip(&paths).enumerate() {
            let data = std::fs::read(path)?;
            let name = path.display().to_string();
            let mut offset = 0usize;
            let later_has_record = || -> io::Result<bool> {
                for p in &paths[k + 1..] {
                    if starts_with_record(p)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            if check_header(&data, &name)? {
                offset = SEGMENT_HEADER;
            } else {
                tear = Some((k, 0));
            }
            while tear.is_none() && offset < data.len() {
                match decode(&data[offset..]) {
                    Record::Entry(entry, n) => {
                        let log_id = *entry.get_log_id();
                        if purged.is_none_or(|p| log_id.index > p) {
                            let expected = inner.slots.back().map(|s| s.log_id.index + 1);
                            if expected.is_some_and(|x| x != log_id.index) {
                                return Err(corrupt(format!(
                                    "{name}: entry {} follows entry {}; the Raft log has a hole",
                                    log_id.index,
                                    log_id.index.saturating_sub(1)
                                )));
                            }
                            inner.slots.push_back(Slot {
                                segment_first: *first,
                                offset: offset as u64,
                                len: n as u32,
                                log_id,
                            });
                        }
                        offset += n;
                    }
                    Record::Undecodable => {
                        return Err(corrupt(format!(
                            "{name}: the record at byte {offset} has a valid checksum but is not \
                             an entry this build reads"
                        )))
                    }
                    Record::Bad => tear = Some((k, offset)),
                }
            }
            if let Some((_, at)) = tear {
                // A torn header with a record after it is damage too.
                let damaged = if at == 0 {
                    data.len() > SEGMENT_HEADER
                        && !matches!(decode(&data[SEGMENT_HEADER..]), Record::Bad)
                } else {
                    valid_record_follows(&data, at)
                };
                if damaged || later_has_record()? {
                    return Err(corrupt(format!(
                        "{name}: corrupt record at byte {at} followed by valid records; \
                         the Raft log has a hole"
                    )));
                }
            }
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            inner.segments.push(Segment {
                first: *first,
                path: path.clone(),
                file: Arc::new(file),
                len: offset as u64,
                synced: 0,
                generation: 0,
            });
            if tear.is_some() {
                break;
            }
        }
        let journal = SyncJournal::open(dir)?;
        let mut removed = false;
        if let Some((k, offset)) = tear {
            tracing::warn!(
                segment = %paths[k].display(),
                offset,
                later_segments = paths.len() - k - 1,
                "cutting a torn write off the end of the Raft log"
            );
            // Later segments first (they hold no valid record), then the cut.
            for later in &paths[k + 1..] {
                std::fs::remove_file(later)?;
                removed = true;
            }
            if removed {
                sync_dir(dir)?;
            }
            let seg = inner.segments.last().expect("the torn segment was pushed");
            seg.file.set_len(offset as u64)?;
        }
        if let (Some(p), Some(front)) = (purged, inner.slots.front()) {
            if front.log_id.index != p + 1 {
                return Err(corrupt(format!(
                    "{}: the Raft log starts at entry {} but was purged only up to {p}",
                    dir.display(),
                    front.log_id.index
                )));
            }
        }
        // Segments that hold nothing the log still needs go (one with no
        // record from a crash right after it was created, or ones a purge
        // had deleted before a crash brought them back).
        let first_kept = inner.slots.front().map(|s| s.segment_first);
        inner.segments.retain(|s| {
            let keep = s.has_records() && first_kept.is_some_and(|f| s.first >= f);
            if !keep {
                let _ = std::fs::remove_file(&s.path);
                removed = true;
            }
            keep
        });
        // What was read may be only in the page cache of a process that died
        // before its fsync: make it durable before it counts as the log.
        for seg in &mut inner.segments {
            seg.file.sync_all()?;
            seg.synced = seg.len;
            journal.record(&seg.name(), seg.len);
        }
        if removed || !inner.segments.is_empty() {
            sync_dir(dir)?;
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(inner),
            journal,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.lock().slots.back().map(|s| s.log_id)
    }

    /// Writes `entries` (consecutive, following the last entry) to the page
    /// cache. They are durable after the next [`Wal::sync`].
    pub fn append(&self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first = first.get_log_id().index;
        let (buf, lens) = encode(entries)?;
        let mut inner = self.lock();
        if let Some(last) = inner.slots.back() {
            if last.log_id.index + 1 != first {
                return Err(corrupt(format!(
                    "append of entry {first} after entry {}",
                    last.log_id.index
                )));
            }
        }
        let roll = inner
            .segments
            .last()
            .is_none_or(|s| s.len >= self.segment_bytes);
        if roll {
            // The closed segment is made durable before anything goes into
            // the next one (see the module doc: no tear before a later write).
            if let Some(prev) = inner.segments.last_mut() {
                if prev.synced < prev.len {
                    prev.file.sync_data()?;
                    prev.synced = prev.len;
                    self.journal.record(&prev.name(), prev.len);
                }
                let done = prev.first;
                inner.unsynced.retain(|f| *f != done);
            }
            let path = self.dir.join(segment_name(first));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            file.write_all_at(&segment_header(), 0)?;
            self.journal.record(&segment_name(first), 0);
            inner.segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                len: SEGMENT_HEADER as u64,
                synced: 0,
                generation: 0,
            });
            inner.dir_dirty = true;
        }
        let seg = inner
            .segments
            .last_mut()
            .expect("a segment was just ensured");
        seg.file.write_all_at(&buf, seg.len)?;
        let (segment_first, mut offset) = (seg.first, seg.len);
        seg.len += buf.len() as u64;
        for (len, log_id) in lens {
            inner.slots.push_back(Slot {
                segment_first,
                offset,
                len,
                log_id,
            });
            offset += len as u64;
        }
        if !inner.unsynced.contains(&segment_first) {
            inner.unsynced.push(segment_first);
        }
        Ok(())
    }

    /// Makes every append so far durable. Runs the `fdatasync`s outside the
    /// lock, so appends go on meanwhile (they are covered by the next sync).
    pub fn sync(&self) -> io::Result<()> {
        // (file, segment, length and generation it is synced up to), for the
        // segments that still exist (a truncation or purge may have deleted some).
        let (files, firsts, dir_dirty) = {
            let mut inner = self.lock();
            let firsts = std::mem::take(&mut inner.unsynced);
            let files: Vec<(Arc<File>, u64, u64, u64)> = firsts
                .iter()
                .filter_map(|f| inner.segment(*f))
                .map(|s| (s.file.clone(), s.first, s.len, s.generation))
                .collect();
            (files, firsts, std::mem::take(&mut inner.dir_dirty))
        };
        let res = (|| {
            if crate::failpoint::hit("wal-sync") {
                return Err(io::Error::other("failpoint wal-sync: injected I/O error"));
            }
            for (f, ..) in &files {
                f.sync_data()?;
            }
            if dir_dirty {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        let mut inner = self.lock();
        match &res {
            Ok(()) => {
                for (_, first, len, generation) in &files {
                    let Some(seg) = inner.segment_mut(*first) else {
                        continue;
                    };
                    if seg.generation == *generation && *len > seg.synced {
                        seg.synced = *len;
                        self.journal.record(&seg.name(), *len);
                    }
                }
            }
            Err(_) => {
                // Not known to be durable: the next sync tries again.
                for f in firsts {
                    if !inner.unsynced.contains(&f) {
                        inner.unsynced.push(f);
                    }
                }
                inner.dir_dirty |= dir_dirty;
            }
        }
        res
    }

    /// Entries with index in `[start, end)` that the log holds.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        // Positions are looked up under the lock, read outside it: one read
        // per run of adjacent records.
        let mut runs: Vec<(Arc<File>, u64, usize, usize)> = Vec::new(); // file, offset, bytes, entries
        {
            let inner = self.lock();
            let Some(front) = inner.slots.front() else {
                return Ok(Vec::new());
            };
            let base = front.log_id.index;
            let len = inner.slots.len();
            let lo = ((start.max(base) - base).min(len as u64)) as usize;
            let hi = (end.saturating_sub(base).min(len as u64)) as usize;
            let mut run_segment = None;
            for slot in inner.slots.range(lo..hi.max(lo)) {
                match runs.last_mut() {
                    Some((_, off, bytes, n))
                        if run_segment == Some(slot.segment_first)
                            && *off + *bytes as u64 == slot.offset =>
                    {
                        *bytes += slot.len as usize;
                        *n += 1;
                    }
                    _ => {
                        let seg = inner.segment(slot.segment_first).ok_or_else(|| {
                            corrupt(format!("no segment for entry {}", slot.log_id.index))
                        })?;
                        run_segment = Some(slot.segment_first);
                        runs.push((seg.file.clone(), slot.offset, slot.len as usize, 1));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(runs.iter().map(|r| r.3).sum());
        for (file, offset, bytes, n) in runs {
            let mut buf = vec![0; bytes];
            file.read_exact_at(&mut buf, offset)?;
            let mut at = 0;
            for _ in 0..n {
                let Record::Entry(entry, used) = decode(&buf[at..]) else {
                    return Err(corrupt(format!(
                        "corrupt log record at byte {}",
                        offset + at as u64
                    )));
                };
                out.push(*entry);
                at += used;
            }
        }
        Ok(out)
    }

    /// Removes the entries from `index` on (a conflicting suffix), durably.
    /// Later segments go first and the directory is fsynced before the cut
    /// segment is shortened (see the module doc).
    pub fn truncate(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(front) = inner.slots.front() else {
            return Ok(());
        };
        let keep = index.saturating_sub(front.log_id.index) as usize;
        if keep >= inner.slots.len() {
            return Ok(());
        }
        let cut = inner.slots[keep];
        inner.slots.truncate(keep);
        let mut dropped = false;
        while inner
            .segments
            .last()
            .is_some_and(|s| s.first > cut.segment_first)
        {
            if let Some(s) = inner.segments.pop() {
                std::fs::remove_file(&s.path)?;
                dropped = true;
            }
        }
        if dropped {
            sync_dir(&self.dir)?;
        }
        if let Some(s) = inner.segments.last_mut() {
            s.file.set_len(cut.offset)?;
            s.file.sync_all()?;
            s.len = cut.offset;
            s.synced = cut.offset;
            s.generation += 1;
            self.journal.record(&s.name(), s.len);
        }
        Ok(())
    }

    /// Forgets the entries up to and including `index`, and deletes the
    /// segments that hold nothing else. The caller has recorded the purge
    /// point durably first.
    pub fn purge(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        while inner.slots.front().is_some_and(|s| s.log_id.index <= index) {
            inner.slots.pop_front();
        }
        let first_kept = inner.slots.front().map(|s| s.segment_first);
        let mut dropped = false;
        while let Some(s) = inner.segments.first() {
            if first_kept.is_some_and(|f| s.first >= f) {
                break;
            }
            let s = inner.segments.remove(0);
            std::fs::remove_file(&s.path)?;
            dropped = true;
        }
        if dropped {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Inner {
    fn segment(&self, first: u64) -> Option<&Segment> {
        self.segments
            .binary_search_by_key(&first, |s| s.first)
            .ok()
            .map(|i| &self.segments[i])
    }

    fn segment_mut(&mut self, first: u64) -> Option<&mut Segment> {
        self.segments
            .binary_search_by_key(&first, |s| s.first)
            .ok()
            .map(|i| &mut self.segments[i])
    }
}

#[cfg(test)]
mod tests;
