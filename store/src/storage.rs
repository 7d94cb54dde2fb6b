//! The one place that knows the on-disk layout of a data dir and how sled is
//! opened and flushed. Keeping sled (a beta database) behind this module lets
//! crash tests pin its behaviour down in one spot.
//!
//! ```text
//! <data-dir>/CAIRN_VERSION   "cairn-store 1": written once the node has an identity
//! <data-dir>/db/             sled database
//!   tree "raft"              vote, last purged log id, identity
//!   tree "log"               log entries by index (8 bytes BE)
//!   tree "sm.<generation>"   state machine (see mvcc::keys); the generation
//!                            changes when a snapshot is installed
//! <data-dir>/snapshot        last built or installed snapshot (meta + data)
//! ```

use std::path::{Path, PathBuf};

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
    pub log: sled::Tree,
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
            // sled's default cache is 1 GiB; the working set here is small.
            .cache_capacity(64 << 20)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                anyhow::anyhow!("data dir {}: cannot open database: {e}", dir.display())
            })?;
        let raft = db.open_tree("raft").context("open raft tree")?;
        let log = db.open_tree("log").context("open log tree")?;
        if !fresh && raft.get("identity")?.is_none() {
            bail!(
                "data dir {} has no member identity: it is damaged or was not written by Cairn",
                dir.display()
            );
        }
        Ok((
            Storage {
                dir: dir.to_path_buf(),
                db,
                raft,
                log,
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

    pub fn sm_tree(&self, generation: u64) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("sm.{generation}"))?)
    }

    pub fn sm_generation(&self) -> Result<u64> {
        Ok(self
            .raft
            .get("sm_gen")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Durably points the state machine at `generation` (snapshot install).
    pub async fn set_sm_generation(&self, generation: u64) -> Result<()> {
        self.raft.insert("sm_gen", &generation.to_be_bytes())?;
        self.flush().await
    }

    pub fn drop_sm_tree(&self, generation: u64) -> Result<()> {
        self.db.drop_tree(format!("sm.{generation}"))?;
        Ok(())
    }

    /// Writes everything to disk and fsyncs.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// Bytes the data dir takes on disk (for Status.dbSize).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
            + std::fs::metadata(self.snapshot_path())
                .map(|m| m.len())
                .unwrap_or(0)
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
