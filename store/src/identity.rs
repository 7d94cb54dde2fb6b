//! Who a member is: its ID, its cluster's ID, its name and (for a new
//! cluster) the members Raft starts with. Computed as etcd computes them,
//! written once into the data dir; shared by the first start and by
//! `cairn snapshot restore`.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;
use crate::ids;
use crate::raft::MemberNode;
use crate::storage::Storage;

/// Who this member is; written once, on the first start (or by
/// `cairn snapshot restore`), under the raft tree's `identity` key.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    /// Members to bootstrap Raft with (a new cluster), empty when joining.
    pub initial: BTreeMap<u64, MemberNode>,
}

/// The identity of member `cfg.name` of a new cluster: IDs from
/// `--initial-cluster` and the token, as etcd computes them. Shared by a first
/// start with `--initial-cluster-state new` and by `cairn snapshot restore`.
pub fn bootstrap_identity(cfg: &StoreConfig) -> Result<Identity> {
    let members = cfg.initial_members()?;
    let mut initial = BTreeMap::new();
    for (name, urls) in &members {
        let id = ids::member_id(urls, &cfg.initial_cluster_token, None);
        initial.insert(
            id,
            MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
            },
        );
    }
    let ids_list: Vec<u64> = initial.keys().copied().collect();
    Ok(Identity {
        member_id: ids::member_id(&members[&cfg.name], &cfg.initial_cluster_token, None),
        cluster_id: ids::cluster_id(&ids_list),
        name: cfg.name.clone(),
        initial,
    })
}

/// Makes `id` durable, then marks the data dir complete (see
/// [`Storage::mark_initialized`]).
pub async fn write_identity(storage: &Storage, id: &Identity) -> Result<()> {
    storage.raft.insert("identity", serde_json::to_vec(id)?)?;
    storage.flush().await?;
    storage.mark_initialized()
}
