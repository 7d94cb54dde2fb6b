//! Member and cluster IDs, computed exactly as etcd computes them, so that IDs
//! printed by `etcdctl member list` look and behave like etcd's.

use sha1::{Digest, Sha1};

/// etcd's `NewMember`: sha1 over the sorted peer URLs, the cluster token and
/// (for MemberAdd) the Unix time; the first 8 bytes big-endian.
pub fn member_id(peer_urls: &[String], token: &str, unix_time: Option<i64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(t) = unix_time {
        h.update(t.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// etcd's `RaftCluster.genID`: sha1 over the sorted member IDs, 8 bytes each.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// IDs are shown in lower-case hex without padding, as etcd's `types.ID`.
pub fn hex(id: u64) -> String {
    format!("{id:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_default_member_id() {
        // etcd 3.4 started with defaults (`--name default`, peer
        // http://localhost:2380, token etcd-cluster) reports member 8e9e05c52164694d.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster", None);
        assert_eq!(hex(id), "8e9e05c52164694d");
        assert_eq!(hex(cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
