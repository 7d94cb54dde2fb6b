//! The snapshot file of `etcdctl snapshot save` and `cairn snapshot restore`.
//!
//! File layout (what `Maintenance.Snapshot` streams):
//!
//! ```text
//! payload   state tree as raft::state_machine::encode_tree writes it
//!           (magic + records), then the SNAP_END marker
//! padding   zeros up to a multiple of 512 bytes
//! trailer   sha256 of payload + padding (32 bytes)
//! ```
//!
//! etcdctl 3.4's `snapshot save` only accepts a stream whose size is 32 more
//! than a multiple of 512 (bbolt files are page-sized, and etcd appends the
//! sha256), hence the padding. The payload is not bbolt: etcdctl's
//! `snapshot status` / `snapshot restore` cannot read it, `cairn snapshot
//! restore` does.
//!
//! Restore makes a data dir that `cairn store` starts as a NEW cluster, as
//! etcdctl's restore does: member and cluster IDs come from the flags, the
//! keys, history, revision, compaction point and leases from the snapshot; the
//! old Raft position (applied index, membership) and published member
//! attributes are dropped, because they describe the old cluster.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use sha2::{Digest, Sha256};

use crate::config::StoreConfig;
use crate::identity::{bootstrap_identity, write_identity};
use crate::mvcc::{keys, Mvcc, Tree};
use crate::raft::snapshot_file::{self, decode_tree, encode_tree, SNAP_END};
use crate::raft::SnapshotMeta;
use crate::storage::Storage;

/// etcdctl checks `size % 512 == 32`.
const BLOCK: usize = 512;
const TRAILER: usize = 32;

/// Turns an `encode_tree` payload into the file body (marker + padding) and
/// its sha256 trailer, sent as the last chunk.
pub fn seal(mut payload: Vec<u8>) -> (Vec<u8>, [u8; TRAILER]) {
    payload.extend_from_slice(&SNAP_END);
    let padded = payload.len().div_ceil(BLOCK) * BLOCK;
    payload.resize(padded, 0);
    let sha: [u8; TRAILER] = Sha256::digest(&payload).into();
    (payload, sha)
}

/// Checks the size and sha256 trailer of a snapshot file; returns the body.
pub fn unseal(file: &[u8]) -> Result<&[u8]> {
    if file.len() < TRAILER || file.len() % BLOCK != TRAILER {
        bail!(
            "not a snapshot saved from Cairn: size {} is not a multiple of {BLOCK} plus a \
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
    /// Snapshot file written by `etcdctl snapshot save` against Cairn.
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
    let mut tree = decode_tree(body).map_err(|e| {
        anyhow::anyhow!(
            "not a Cairn snapshot ({e}); snapshots of etcd itself (bbolt) cannot be \
             restored by Cairn"
        )
    })?;
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

/// Removes what describes the old cluster rather than its data: the old
/// members' published attributes (the new cluster's members publish theirs).
fn forget_old_members(tree: &mut Tree) {
    tree.retain(|k, _| k.first() != Some(&keys::MEMBER));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        Tree::new()
    }

    #[test]
    fn seal_pads_to_etcdctl_size_and_roundtrips() {
        let mut src = tree();
        src.insert(b"kfoo", b"bar");
        src.insert(&keys::meta_key("rev"), &7i64.to_be_bytes());
        let payload = encode_tree(&src);
        let (body, sha) = seal(payload);
        let mut file = body.clone();
        file.extend_from_slice(&sha);
        assert_eq!(file.len() % 512, 32);

        let got = unseal(&file).unwrap();
        assert_eq!(decode_tree(got).unwrap(), src);
    }

    #[test]
    fn unseal_refuses_damage() {
        let (body, sha) = seal(encode_tree(&tree()));
        let mut file = body;
        file.extend_from_slice(&sha);
        let mut bad = file.clone();
        bad[20] ^= 1;
        assert!(unseal(&bad).is_err());
        assert!(unseal(&file[..file.len() - 1]).is_err());
        // Garbage after the end marker is not padding.
        let mut body = seal(encode_tree(&tree())).0;
        let n = body.len();
        body[n - 1] = 1;
        assert!(decode_tree(&body).is_err());
    }

    #[test]
    fn unsealed_raft_payload_still_decodes() {
        // Raft snapshots carry no end marker: the decoder stops at the end.
        let mut src = tree();
        src.insert(b"kx", b"y");
        assert_eq!(decode_tree(&encode_tree(&src)).unwrap(), src);
    }
}
