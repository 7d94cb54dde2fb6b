//! openraft's network: its RPCs to one member, as [`crate::net::wire`]
//! frames for `http://` peers, or gRPC (`https://` peers, or a peer that does
//! not speak frames), over the connections of [`crate::net::peers`].
//!
//! openraft's messages are bincode-encoded into `RaftMessage.data`. An append
//! batch larger than [`APPEND_BATCH_BYTES`] is refused locally with
//! `PayloadTooLarge`, and openraft retries with fewer entries, so no message
//! runs into gRPC's size limits however large the entries are.

use std::time::Duration;

use cairn_proto::peer::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{MemberNode, TypeConfig, APPEND_BATCH_BYTES};
use crate::net::peers::{never_sent, PeerPool};
use crate::net::wire::{Call, CallError, Method};

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
                .call(
                    url,
                    Call {
                        method,
                        body: &data,
                        timeout: option.hard_ttl(),
                        repeatable: true,
                    },
                )
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
        let url = self
            .node
            .peer_urls
            .first()
            .map(String::as_str)
            .unwrap_or("");
        let mut client = self
            .pool
            .client(url)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&openraft::AnyError::error(e))))?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        let reply = match method {
            Method::Append => client.append_entries(r).await,
            Method::Vote => client.vote(r).await,
            Method::Snapshot => client.install_snapshot(r).await,
            // Only openraft's RPCs come through here.
            Method::Forward | Method::ReadIndex | Method::Lease => {
                let e = std::io::Error::other(format!("{method:?} is not an openraft RPC"));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
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
