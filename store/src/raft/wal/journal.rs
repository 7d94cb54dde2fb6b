//! The power-loss simulation's record of durable lengths.
//!
//! With `CAIRN_SYNC_JOURNAL=1` (the robustness suite sets it) the WAL appends
//! `<segment file> <length>` to `<wal>/synced.journal` whenever a segment is
//! known durable up to that length: after its fdatasync, after a
//! truncation's fsync, after the fsync at open; a new segment starts at 0.
//! The suite's simulated power loss cuts each segment back to its last line.
//! The WAL writes these lines under its lock, in the order the lengths
//! became durable, so the last line is never behind the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

pub(super) struct SyncJournal(Option<Mutex<File>>);

impl SyncJournal {
    pub(super) const FILE: &'static str = "synced.journal";

    pub(super) fn open(dir: &Path) -> io::Result<SyncJournal> {
        if std::env::var("CAIRN_SYNC_JOURNAL").as_deref() != Ok("1") {
            return Ok(SyncJournal(None));
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(Self::FILE))?;
        Ok(SyncJournal(Some(Mutex::new(f))))
    }

    /// The segment named `name` is durable up to `len` bytes.
    pub(super) fn record(&self, name: &str, len: u64) {
        if let Some(f) = &self.0 {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            // Test-only bookkeeping: a failed write shows up as a lost segment.
            let _ = writeln!(f, "{name} {len}");
        }
    }
}
