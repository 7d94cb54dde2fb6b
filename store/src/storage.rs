//! The one place that knows the on-disk layout of a data dir and how sled is
//! opened and flushed. Keeping sled (a beta database) behind this module lets
//! crash tests pin its behaviour down in one spot.
//!
//! ```text
//! <data-dir>/CAIRN_VERSION   "cairn-store 1": written once the node has an identity
//! <data-dir>/wal/            the Raft log: segment files (see raft::wal)
//! <data-dir>/db/             sled database
//!   tree "raft"              vote, last purged log id, committed log id, identity
//! <data-dir>/snapshot        the state machine at one applied log id (see
//!                            raft::snapshot_file); with wal/, its durable form
//! ```

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

pub const VERSION_FILE: &str = "CAIRN_VERSION";
pub const VERSION: &str = "cairn-store 1";

/// An open data dir.
#[derive(Clone)]
pub struct Storage {
    pub dir: PathBuf,
    pub db: sled::Db,
    /// Raft metadata: vote, purge point, identity, current sm generation.
    pub raft: sled::Tree,
    /// sled's log file, for `fdatasync` (see [`Storage::sync`]).
    db_file: Arc<std::fs::File>,
    /// Blob files already fsynced.
    synced_blobs: Arc<Mutex<std::collections::HashSet<std::ffi::OsString>>>,
}

impl Storage {
    /// Opens (or creates) the data dir. A directory that holds something other
    /// than a Cairn data dir is refused rather than silently used.
    pub fn open(dir: &Path) -> Result<(Storage, bool)> {
        let fresh = check_dir(dir)?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            // sled's default cache is 1 GiB; it holds only Raft metadata
            // here (vote, purge point, identity: a few records).
            .cache_capacity(4 << 20)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                anyhow::anyhow!("data dir {}: cannot open database: {e}", dir.display())
            })?;
        let raft = db.open_tree("raft").context("open raft tree")?;
        if !fresh && raft.get("identity")?.is_none() {
            bail!(
                "data dir {} has no member identity: it is damaged or was not written by Cairn",
                dir.display()
            );
        }
        let db_file = std::fs::File::open(dir.join("db").join("db")).with_context(|| {
            format!("data dir {}: cannot open the database file", dir.display())
        })?;
        Ok((
            Storage {
                dir: dir.to_path_buf(),
                db,
                raft,
                db_file: Arc::new(db_file),
                synced_blobs: Arc::default(),
            },
            fresh,
        ))
    }

    /// Marks the data dir as a complete Cairn data dir (after the identity is
    /// durable), so a crash during the very first start is recognised.
    pub fn mark_initialized(&self) -> Result<()> {
        let tmp = self.dir.join(format!("{VERSION_FILE}.tmp"));
        std::fs::write(&tmp, format!("{VERSION}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(VERSION_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Makes everything written so far durable, and returns only then.
    ///
    /// sled 0.34's own `flush()` writes its log with `pwrite` +
    /// `sync_file_range`, which persists neither file metadata nor the
    /// device's write cache, and it never fsyncs the blob files that hold
    /// large values. A process crash loses nothing either way (the page cache
    /// survives it); a power loss would. So after sled's flush, new blob files
    /// are fsynced, then sled's log file gets a real `fdatasync`: the same
    /// guarantee etcd's WAL gives.
    pub fn sync(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.sync_new_blobs()?;
        self.db_file.sync_data()
    }

    /// [`Storage::sync`] off the async runtime.
    pub async fn flush(&self) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync()).await??;
        Ok(())
    }

    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let dir = self.dir.join("db").join("blobs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut any_new = false;
        for e in entries.flatten() {
            let name = e.file_name();
            if !synced.contains(&name) {
                // A blob sled removed meanwhile is no longer needed.
                if let Ok(f) = std::fs::File::open(e.path()) {
                    f.sync_data()?;
                    any_new = true;
                }
            }
            present.insert(name);
        }
        if any_new {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }
}

/// Returns whether `dir` is new (absent or empty). Refuses foreign content.
fn check_dir(dir: &Path) -> Result<bool> {
    let entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => bail!("data dir {}: {e}", dir.display()),
    };
    if !dir.is_dir() {
        bail!("data dir {} is not a directory", dir.display());
    }
    if entries.is_empty() {
        return Ok(true);
    }
    match std::fs::read_to_string(dir.join(VERSION_FILE)) {
        Ok(v) if v.trim() == VERSION => Ok(false),
        Ok(v) => bail!(
            "data dir {} was written by an unsupported version ({:?}, expected {VERSION:?})",
            dir.display(),
            v.trim()
        ),
        Err(_) => {
            if entries.len() == 1 && entries[0] == "db" {
                // A first start that crashed before its identity was durable:
                // this member never took part in Raft, so starting over is safe.
                std::fs::remove_dir_all(dir.join("db"))
                    .with_context(|| format!("data dir {}: cannot reset", dir.display()))?;
                return Ok(true);
            }
            let names: Vec<_> = entries
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            if names.iter().any(|n| n == "member") {
                bail!(
                    "data dir {} looks like an etcd data dir (it has member/); Cairn cannot read it. \
                     Use an empty directory, or restore a Cairn snapshot into one",
                    dir.display()
                );
            }
            bail!(
                "data dir {} is not empty and is not a Cairn data dir (found: {}); \
                 refusing to use it. Point --data-dir at an empty directory",
                dir.display(),
                names.join(", ")
            )
        }
    }
}
