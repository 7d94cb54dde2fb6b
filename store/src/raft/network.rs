//! Client side of the peer protocol: openraft's RPCs (as [`super::wire`]
//! frames, or gRPC for `https://` peers), read index and request forwarding
//! (over one cached tonic channel per member).
//!
//! openraft's messages are bincode-encoded into `RaftMessage.data`. An append
//! batch larger than [`APPEND_BATCH_BYTES`] is refused locally with
//! `PayloadTooLarge`, and openraft retries with fewer entries, so no message
//! runs into gRPC's size limits however large the entries are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::{HelloReply, HelloRequest, RaftMessage, ReadIndexRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::wire::{CallError, Method, WirePool};
use super::{MemberNode, TypeConfig, APPEND_BATCH_BYTES, MAX_PEER_MESSAGE};
use crate::command::{Request, Response};
use crate::error::EtcdError;

/// Answer of the leader to a forwarded request.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub enum ForwardReply {
    /// Applied at `index` on the leader with this result.
    Applied { index: u64, response: Response },
    /// The receiver is not the leader; nothing was proposed.
    NotLeader { leader: Option<u64> },
    /// The receiver could not tell whether the request was committed.
    Failed(EtcdError),
}

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
    wire: WirePool,
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

    /// Sends a membership change to `leader`.
    pub async fn membership(
        &self,
        leader: &MemberNode,
        call: &crate::membership::MemberCall,
        timeout: Duration,
    ) -> Result<crate::membership::MemberAnswer, String> {
        let mut c = self.client(leader)?;
        let data = bincode::serialize(call).map_err(|e| e.to_string())?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        let reply = c.membership(r).await.map_err(|e| e.to_string())?;
        bincode::deserialize(&reply.into_inner().data).map_err(|e| e.to_string())
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

    pub fn client(&self, node: &MemberNode) -> Result<PeerClient<Channel>, String> {
        let url = node.peer_urls.first().ok_or("member has no peer URL")?;
        Ok(PeerClient::new(self.channel(url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    pub async fn hello(
        &self,
        url: &str,
        req: HelloRequest,
        timeout: Duration,
    ) -> Result<HelloReply, String> {
        let node = MemberNode {
            name: String::new(),
            peer_urls: vec![url.to_string()],
        };
        let mut c = self.client(&node)?;
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        c.hello(r)
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    }

    /// Asks `leader` for a read index.
    pub async fn read_index(
        &self,
        leader: &MemberNode,
        timeout: Duration,
    ) -> Result<u64, EtcdError> {
        let mut c = self.client(leader).map_err(EtcdError::Internal)?;
        let mut r = tonic::Request::new(ReadIndexRequest {});
        r.set_timeout(timeout);
        let reply = c
            .read_index(r)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(if reply.error == EtcdError::NoLeader.to_string() {
                EtcdError::NoLeader
            } else if reply.error == EtcdError::NotCapable.to_string() {
                // It is no longer the leader: the caller looks for the new one.
                EtcdError::NotCapable
            } else {
                EtcdError::Timeout
            });
        }
        Ok(reply.index)
    }

    /// Sends a lease call to `leader`.
    pub async fn lease(
        &self,
        leader: &MemberNode,
        call: &crate::lease::LeaseCall,
        timeout: Duration,
    ) -> Result<crate::lease::LeaseAnswer, String> {
        let mut c = self.client(leader)?;
        let data = bincode::serialize(call).map_err(|e| e.to_string())?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        let reply = c.lease(r).await.map_err(|e| e.to_string())?;
        bincode::deserialize(&reply.into_inner().data).map_err(|e| e.to_string())
    }

    /// Forwards `req` to `leader`. `Err(true)` means the request certainly
    /// never reached it (safe to retry), `Err(false)` that the outcome is unknown.
    pub async fn forward(
        &self,
        leader: &MemberNode,
        req: &Request,
        timeout: Duration,
    ) -> Result<ForwardReply, bool> {
        let mut c = self.client(leader).map_err(|_| true)?;
        let data = bincode::serialize(req).map_err(|_| true)?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        match c.forward(r).await {
            Ok(reply) => bincode::deserialize(&reply.into_inner().data).map_err(|_| false),
            Err(status) => Err(never_sent(&status)),
        }
    }
}

/// Whether a failed call certainly never reached the server: the connection
/// could not be made.
pub fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        let s = e.to_string();
        if s.contains("error trying to connect")
            || s.contains("tcp connect error")
            || s.contains("Connection refused")
            || s.contains("(Connect)")
            || s == "dns error"
        {
            return true;
        }
        src = e.source();
    }
    status.message().contains("error trying to connect")
        || status.message().contains("tcp connect error")
}

pub struct NetworkFactory {
    pub pool: PeerPool,
    /// First retry delay after a peer was unreachable (the heartbeat interval).
    pub retry_base: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        PeerNetwork {
            target,
            node: node.clone(),
            pool: self.pool.clone(),
            retry_base: self.retry_base,
        }
    }
}

pub struct PeerNetwork {
    target: u64,
    node: MemberNode,
    pool: PeerPool,
    retry_base: Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, MemberNode, RaftError<u64, E>>;

fn encode<Req: serde::Serialize, E: std::error::Error>(req: &Req) -> Result<Vec<u8>, RpcErr<E>> {
    bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        self.call_encoded(method, encode(req)?, option).await
    }

    /// [`PeerNetwork::call`] with the request already bincode-encoded.
    async fn call_encoded<Resp, E>(
        &mut self,
        method: Method,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let started = std::time::Instant::now();
        let url = self
            .node
            .peer_urls
            .first()
            .map(String::as_str)
            .unwrap_or("");
        let mut reply = None;
        if self.pool.wire.usable(url) {
            match self
                .pool
                .wire
                .call(url, method, &data, option.hard_ttl())
                .await
            {
                Ok(bytes) => reply = Some(bytes),
                Err(CallError::NotSupported) => {}
                Err(CallError::Unreachable(e)) => {
                    return Err(RPCError::Unreachable(Unreachable::new(&e)))
                }
                Err(CallError::Failed(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
            }
        }
        let reply = match reply {
            Some(bytes) => bytes,
            None => self.grpc_call(method, data, option.hard_ttl()).await?,
        };
        let res: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.pool.mark_ok(self.target);
        crate::metrics::METRICS
            .peer_rtt
            .with_label_values(&[crate::ids::hex(self.target).as_str()])
            .observe(started.elapsed().as_secs_f64());
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    /// The same call over gRPC (`https://` peers, and members that do not
    /// take frames).
    async fn grpc_call<E>(
        &self,
        method: Method,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcErr<E>>
    where
        E: std::error::Error,
    {
        let mut client = self
            .pool
            .client(&self.node)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&openraft::AnyError::error(e))))?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        let reply = match method {
            Method::Append => client.append_entries(r).await,
            Method::Vote => client.vote(r).await,
            Method::Snapshot => client.install_snapshot(r).await,
        };
        match reply {
            Ok(r) => Ok(r.into_inner().data),
            Err(s) if never_sent(&s) => Err(RPCError::Unreachable(Unreachable::new(&s))),
            Err(s) => Err(RPCError::Network(NetworkError::new(&s))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        let n = rpc.entries.len();
        // Encoded once: its length decides whether the batch is sent.
        let data = encode(&rpc)?;
        let size = data.len();
        if n > 1 && size > APPEND_BATCH_BYTES {
            // Ask openraft for a batch that fits (at least one entry).
            let hint = ((n * APPEND_BATCH_BYTES) / size).clamp(1, n - 1) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call_encoded(Method::Append, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    /// openraft waits a flat 500 ms before retrying a peer it could not
    /// reach. After a failover that can hold up the new leader's first commit
    /// (a member that was restarting is reachable again long before), so the
    /// wait starts at one heartbeat and doubles up to 500 ms.
    fn backoff(&self) -> openraft::network::Backoff {
        let base = self.retry_base.max(Duration::from_millis(10));
        let cap = Duration::from_millis(500);
        openraft::network::Backoff::new(
            (0..).map(move |i: u32| (base * 2u32.saturating_pow(i.min(10))).min(cap)),
        )
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
