//! Cached connections to the other members: one lazily connected tonic
//! channel per peer URL (re-resolving names on every reconnect), the frame
//! connections of [`super::wire`], and when each member last answered. The
//! etcd-level calls over them (forwarding, read index, leases, membership)
//! are in `crate::peer`; openraft's RPCs in `crate::raft::network`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use tonic::transport::{Channel, Endpoint};

use super::wire::WirePool;
use super::MAX_PEER_MESSAGE;

/// Cached channels to the other members, keyed by peer URL.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How `https://` peers are dialed (`None`: no `--peer-trusted-ca-file`).
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// When each member last answered a Raft RPC from this one (the leader's
    /// view of who is reachable, for etcd's reconfiguration safety checks).
    last_ok: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// Connections for openraft's RPCs as frames (see [`super::wire`]).
    pub wire: WirePool,
}

impl PeerPool {
    pub fn new(tls: Option<tonic::transport::ClientTlsConfig>) -> PeerPool {
        PeerPool {
            tls,
            ..Default::default()
        }
    }

    pub fn mark_ok(&self, id: u64) {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, std::time::Instant::now());
    }

    /// Whether member `id` answered within `within`.
    pub fn reachable(&self, id: u64, within: Duration) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|t| t.elapsed() <= within)
    }

    pub fn channel(&self, url: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad peer URL {url}: {e}"))?;
        if url.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                format!("peer URL {url} is https:// but --peer-trusted-ca-file is not set")
            })?;
            ep = ep.tls_config(tls).map_err(|e| format!("peer TLS: {e}"))?;
        }
        let ep = ep
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let ch = ep.connect_with_connector_lazy(cairn_client::resolve::connector());
        map.insert(url.to_string(), ch.clone());
        Ok(ch)
    }

    /// The gRPC stub of the peer at `url`.
    pub fn client(&self, url: &str) -> Result<PeerClient<Channel>, String> {
        Ok(PeerClient::new(self.channel(url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

/// Whether a failed call certainly never reached the server: the connection
/// could not be made (tonic reports every connector failure as a
/// `ConnectError`, as the client crate's classification relies on too).
pub fn never_sent(status: &tonic::Status) -> bool {
    cairn_client::error::is_connect_failure(status)
}
