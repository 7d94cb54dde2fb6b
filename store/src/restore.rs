//! The snapshot file of `etcdctl snapshot save` and `cairn snapshot restore`.
//!
//! File layout (what `Maintenance.Snapshot` streams), etcd's own:
//!
//! ```text
//! body      an etcd 3.4 backend database (bbolt), see `etcd_db`
//! trailer   sha256 of the body (32 bytes)
//! ```
//!
//! etcd's tools read it: `etcdctl snapshot status` (hash, revision, keys),
//! `etcdctl snapshot restore` and an etcd started on the result. `cairn
//! snapshot restore` reads it too, whether Cairn or etcd 3.4 saved it, and
//! still reads the files earlier versions of Cairn wrote (Cairn's own state
//! tree, zero-padded to a multiple of 512 bytes before the trailer, as
//! etcdctl requires: it only accepts a stream whose size is 32 more than a
//! multiple of 512).
//!
//! Restore makes a data dir that `cairn store` starts as a NEW cluster, as
//! etcdctl's restore does: member and cluster IDs come from the flags, the
//! keys, history, revision, compaction point, leases, users and roles from
//! the snapshot; the old Raft position (applied index, membership) and
//! published member attributes are dropped, because they describe the old
//! cluster.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use sha2::{Digest, Sha256};

use crate::config::StoreConfig;
use crate::identity::{bootstrap_identity, write_identity};
use crate::mvcc::{keys, Mvcc, Tree};
use crate::raft::snapshot_file::{self, decode_tree, encode_tree, SNAP_MAGIC};
use crate::raft::SnapshotMeta;
use crate::storage::Storage;

/// etcdctl checks `size % 512 == 32`: a bbolt file is whole pages, and
/// etcd appends the sha256.
const BLOCK: usize = 512;
const TRAILER: usize = 32;

/// The snapshot of a state (`payload`: its records as `encode_tree` writes
/// them) as etcd streams it: an etcd backend database and its sha256, sent
/// as the last chunk. The body is whole 4 KiB pages, so body + trailer has
/// the size etcdctl expects.
pub fn seal(payload: &[u8], consistent_index: u64) -> Result<(Vec<u8>, [u8; TRAILER])> {
    let records = snapshot_file::decode_records(payload)?;
    let body = crate::etcd_db::to_etcd(&records, consistent_index)?;
    debug_assert_eq!(body.len() % BLOCK, 0);
    let sha: [u8; TRAILER] = Sha256::digest(&body).into();
    Ok((body, sha))
}

/// Checks the size and sha256 trailer of a snapshot file, as etcdctl's
/// restore does; returns the body.
pub fn unseal(file: &[u8]) -> Result<&[u8]> {
    if file.len() < TRAILER || file.len() % BLOCK != TRAILER {
        bail!(
            "not a snapshot saved by etcdctl: size {} is not a multiple of {BLOCK} plus a \
             {TRAILER}-byte sha256",
            file.len()
        );
    }
    let (body, sha) = file.split_at(file.len() - TRAILER);
    if Sha256::digest(body).as_slice() != sha {
        bail!("snapshot sha256 mismatch: the file is damaged or truncated");
    }
    Ok(body)
}

/// `cairn snapshot restore`: etcdctl's restore flags (defaults as `cairn store`'s).
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Snapshot file written by `etcdctl snapshot save`, against Cairn or etcd 3.4.
    pub file: PathBuf,
    /// Data dir to create (must be absent or empty; default `<name>.cairn`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Name of the member this data dir is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new cluster: `name=peer-url,...` (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Token of the new cluster (member and cluster IDs derive from it).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs; must match its `--initial-cluster` entry.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
}

/// Parses `cairn store`'s own flags, so that the identity is computed from
/// exactly the config `cairn store` would see.
#[derive(Parser)]
struct StoreFlags {
    #[command(flatten)]
    cfg: StoreConfig,
}

impl RestoreArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name)))
    }

    fn store_config(&self) -> Result<StoreConfig> {
        // Every flag the identity depends on is passed explicitly, so no
        // ETCD_* variable of the environment can change it.
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls));
        let cfg = StoreFlags::try_parse_from([
            "cairn-store",
            "--name",
            &self.name,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.initial_cluster_token,
            "--initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .cfg;
        let members = cfg.initial_members()?;
        let mut adv = cfg.advertise_peer_urls();
        adv.sort();
        if members[&cfg.name] != adv {
            bail!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                cfg.name,
                members[&cfg.name].join(","),
                adv.join(",")
            );
        }
        Ok(cfg)
    }
}

/// What a restore produced (printed by the binary).
#[derive(Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
    pub compact_revision: i64,
}

/// Restores `args.file` into a new data dir. The data dir is built beside
/// the target and renamed into place at the end, so a failed or interrupted
/// restore never leaves a half-written data dir that `cairn store` would
/// accept.
pub async fn restore(args: &RestoreArgs) -> Result<Restored> {
    let cfg = args.store_config()?;
    let file = std::fs::read(&args.file)
        .with_context(|| format!("cannot read snapshot {}", args.file.display()))?;
    let body = unseal(&file).with_context(|| args.file.display().to_string())?;

    let dir = args.data_dir();
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "data dir {} is not empty; restore needs a new (absent or empty) directory",
            dir.display()
        );
    }
    let tmp = staging_dir(&dir)?;
    let _ = std::fs::remove_dir_all(&tmp);
    let res = build(&tmp, body, &cfg).await;
    let restored = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // rename(2) replaces an empty directory, and the target was checked to be
    // absent or empty.
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("cannot move restored data into {}", dir.display()));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(Restored {
        data_dir: dir,
        ..restored
    })
}

/// `<parent>/.<name>.restoring`: same file system as the target, for rename.
fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("data dir {} has no name", dir.display()))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".restoring");
    Ok(dir.with_file_name(tmp))
}

async fn build(dir: &Path, body: &[u8], cfg: &StoreConfig) -> Result<Restored> {
    let (storage, fresh) = Storage::open(dir)?;
    if !fresh {
        bail!("staging dir {} is not empty", dir.display());
    }
    let mut tree = read_body(body)?;
    forget_old_members(&mut tree);
    // The image has no log position: the new cluster's log starts after it,
    // and it is not offered to peers as a Raft snapshot.
    let meta = SnapshotMeta {
        last_log_id: None,
        last_membership: Default::default(),
        snapshot_id: "restored".into(),
    };
    snapshot_file::save(&storage.snapshot_path(), &meta, &encode_tree(&tree))?;
    let mvcc = Mvcc::open(tree);
    let (revision, compact_revision) = (mvcc.revision(), mvcc.compact_revision());
    drop(mvcc);

    let identity = bootstrap_identity(cfg)?;
    write_identity(&storage, &identity).await?;
    drop(storage);
    Ok(Restored {
        data_dir: dir.to_path_buf(),
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        revision,
        compact_revision,
    })
}

/// The state tree in a snapshot body: an etcd backend (what Cairn and etcd
/// write), or the state tree of an earlier Cairn's snapshot.
fn read_body(body: &[u8]) -> Result<Tree> {
    if body.starts_with(SNAP_MAGIC) {
        return decode_tree(body).map_err(|e| anyhow::anyhow!("damaged Cairn snapshot: {e}"));
    }
    if !crate::bbolt::is_bbolt(body) {
        bail!("neither an etcd snapshot (bbolt database) nor a Cairn one");
    }
    crate::etcd_db::from_etcd(body).context("cannot read the etcd snapshot")
}

/// Removes what describes the old cluster rather than its data: the old
/// members' published attributes (the new cluster's members publish theirs).
fn forget_old_members(tree: &mut Tree) {
    tree.retain(|k, _| k.first() != Some(&keys::MEMBER));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::snapshot_file::SNAP_END;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert(&keys::meta_key("rev"), &1i64.to_be_bytes());
        t.insert(&keys::meta_key("compact"), &0i64.to_be_bytes());
        t
    }

    fn file_of(body: &[u8], sha: &[u8]) -> Vec<u8> {
        let mut file = body.to_vec();
        file.extend_from_slice(sha);
        file
    }

    #[test]
    fn seal_has_etcdctls_size_and_roundtrips() {
        let src = sample();
        let (body, sha) = seal(&encode_tree(&src), 3).unwrap();
        let file = file_of(&body, &sha);
        assert_eq!(file.len() % 512, 32);
        assert_eq!(read_body(unseal(&file).unwrap()).unwrap(), src);
    }

    #[test]
    fn unseal_refuses_damage() {
        let (body, sha) = seal(&encode_tree(&sample()), 3).unwrap();
        let file = file_of(&body, &sha);
        let mut bad = file.clone();
        bad[20] ^= 1;
        assert!(unseal(&bad).is_err());
        assert!(unseal(&file[..file.len() - 1]).is_err());
        let junk = vec![7u8; 4096];
        let err = read_body(&junk).unwrap_err().to_string();
        assert!(err.contains("neither an etcd snapshot"), "{err}");
    }

    #[test]
    fn files_of_earlier_versions_still_restore() {
        // Cairn's own tree, the end marker, zero padding to 512.
        let src = sample();
        let mut body = encode_tree(&src);
        body.extend_from_slice(&SNAP_END);
        body.resize(body.len().div_ceil(BLOCK) * BLOCK, 0);
        let sha: [u8; TRAILER] = Sha256::digest(&body).into();
        let file = file_of(&body, &sha);
        assert_eq!(read_body(unseal(&file).unwrap()).unwrap(), src);
        // Garbage after the end marker is not padding.
        let n = body.len();
        body[n - 1] = 1;
        assert!(read_body(&body).is_err());
    }
}
