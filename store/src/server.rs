//! `cairn store`: open the data dir, settle this member's identity (bootstrap,
//! join or restart), start Raft, and serve the peer and client ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cairn_proto::peer::peer_server::PeerServer;
use cairn_proto::peer::HelloRequest;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::peer::PeerService;
use crate::command::Command;
use crate::config::{host_port, split_urls, ClusterState, StoreConfig};
use crate::identity::{bootstrap_identity, write_identity, Identity};
use crate::ids;
use crate::net::authority::AuthorityFix;
use crate::net::peers::PeerPool;
use crate::net::MAX_PEER_MESSAGE;
use crate::node::{Node, NodeConfig};
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::state_machine::{member_attrs, StateMachine};
use crate::raft::Raft;
use crate::storage::Storage;

/// Runs a store node until SIGINT/SIGTERM.
pub async fn run(cfg: StoreConfig) -> Result<()> {
    cfg.validate()?;
    for v in crate::config::unknown_env_vars() {
        warn!("unrecognized environment variable {v} is ignored");
    }
    let dir = cfg.data_dir();
    let (storage, fresh) = Storage::open(&dir)?;
    let client_tls = crate::net::tls::TlsFiles::client(&cfg);
    let peer_tls = crate::net::tls::TlsFiles::peer(&cfg);
    let pool = PeerPool::new(crate::net::tls::peer_client_config(&peer_tls)?);

    let identity = if fresh {
        let id = match cfg.initial_cluster_state {
            ClusterState::New => new_cluster_identity(&cfg, &pool).await?,
            ClusterState::Existing => join_identity(&cfg, &pool).await?,
        };
        write_identity(&storage, &id).await?;
        id
    } else {
        let raw = storage.raft.get("identity")?.context("identity missing")?;
        let id: Identity = serde_json::from_slice(&raw).context("data dir: unreadable identity")?;
        if id.name != cfg.name {
            warn!(
                "data dir {} belongs to member {:?}; --name {:?} is ignored",
                dir.display(),
                id.name,
                cfg.name
            );
        }
        id
    };
    info!(
        member = %ids::hex(identity.member_id),
        cluster = %ids::hex(identity.cluster_id),
        data_dir = %dir.display(),
        "starting cairn store {:?}",
        identity.name
    );

    let sm = StateMachine::open(storage.clone())?;
    let mvcc = sm.mvcc.clone();
    let log = LogStore::open(storage.clone())?.purge_behind(sm.snapshot_slot().durable());
    let raft_config = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval,
        // openraft 0.9 makes a follower that knew a leader wait its leader
        // lease (= `election_timeout_max`) plus a random timeout in
        // [min, max) before it campaigns. With min = E/2 and max = E that is
        // [1.5 E, 2 E) of silence, inside etcd's [E, 2 E) for the same flag;
        // a split or refused vote is retried after E/2..E.
        election_timeout_min: cfg.election_timeout / 2,
        election_timeout_max: cfg.election_timeout,
        install_snapshot_timeout: (cfg.election_timeout * 10).max(5000),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: 1024,
        ..Default::default()
    }
    .validate()?;
    let factory = NetworkFactory {
        pool: pool.clone(),
        retry_base: Duration::from_millis(cfg.heartbeat_interval),
    };
    let raft = Raft::new(identity.member_id, Arc::new(raft_config), factory, log, sm).await?;

    let request_timeout = Duration::from_millis(5000 + 2 * cfg.election_timeout);
    let node_cfg = NodeConfig {
        id: identity.member_id,
        cluster_id: identity.cluster_id,
        name: identity.name.clone(),
        cluster_token: cfg.initial_cluster_token.clone(),
        request_timeout,
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        watch_progress_interval: Duration::from_millis(cfg.watch_progress_notify_interval_ms),
        max_watches_per_stream: cfg.max_watches_per_stream,
        max_request_bytes_in_flight: cfg.max_request_bytes_in_flight,
        min_lease_ttl: crate::lease::min_ttl(cfg.election_timeout),
        quota_bytes: if cfg.quota_backend_bytes == 0 {
            2 << 30
        } else {
            cfg.quota_backend_bytes
        },
        auth_token_ttl: Duration::from_secs(cfg.auth_token_ttl),
    };
    let node = Node::start(node_cfg, raft.clone(), mvcc, storage.clone(), pool);

    // Peer port first: the other members need it to elect a leader.
    for url in split_urls(&cfg.listen_peer_urls) {
        let listener = bind(&url, "peer").await?;
        let svc = PeerServer::new(PeerService { node: node.clone() })
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut server = tonic::transport::Server::builder();
        if is_https(&url) {
            server = server
                .tls_config(crate::net::tls::peer_server_config(&peer_tls)?)
                .context("peer TLS")?;
        }
        let router = server.tcp_nodelay(true).add_service(svc);
        if is_https(&url) {
            tokio::spawn(async move {
                // tonic applies `tcp_nodelay` only to listeners it binds itself;
                // accepted peer sockets need it too (and the rest of `tune`),
                // or every small Raft reply waits ~40 ms for a delayed ACK.
                use tokio_stream::StreamExt;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
                    .map(|c| c.inspect(cairn_client::tcp::tune));
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!("peer server stopped: {e}");
                }
            });
        } else {
            // Raft frames and gRPC share the port (see net::wire).
            let (grpc_tx, grpc_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(accept_peers(listener, node.clone(), grpc_tx));
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(grpc_rx);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!("peer server stopped: {e}");
                }
            });
        }
    }

    if !identity.initial.is_empty() && !raft.is_initialized().await? {
        match raft.initialize(identity.initial.clone()).await {
            Ok(()) => info!(
                "bootstrapped a new cluster of {} members",
                identity.initial.len()
            ),
            Err(e) => info!("cluster already initialized: {e}"),
        }
    }

    // Client connections, so a stop can let them finish what they carry.
    let drain = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut accept_loops = Vec::new();
    for url in split_urls(&cfg.listen_client_urls) {
        let listener = bind(&url, "client").await?;
        let router = crate::api::client_router(node.clone());
        let tls = match is_https(&url) {
            true => Some(tokio_rustls::TlsAcceptor::from(
                crate::net::tls::client_server_config(&client_tls)?,
            )),
            false => None,
        };
        accept_loops.push(tokio::spawn(serve_clients(
            listener,
            router,
            tls,
            drain.clone(),
        )));
        info!("serving client requests on {url}");
    }

    tokio::spawn(publish_attributes(
        node.clone(),
        cfg.advertise_client_urls(),
    ));
    tokio::spawn(crate::lease::expiry_loop(
        Arc::downgrade(&node),
        Duration::from_millis(100),
    ));
    tokio::spawn(crate::membership::finish_joint_loop(
        Arc::downgrade(&node),
        Duration::from_secs(1),
    ));
    let policy = crate::config::compaction::parse(
        &cfg.auto_compaction_mode,
        &cfg.auto_compaction_retention,
    )?;
    if let Some(policy) = policy {
        info!(?policy, "auto compaction enabled");
        let every = Duration::from_millis(cfg.revision_compaction_interval_ms);
        tokio::spawn(crate::compactor::run(Arc::downgrade(&node), policy, every));
    }

    shutdown_signal().await;
    info!("shutting down");
    // Before anything stops: a leader hands over, so writes never wait out
    // an election timeout because this member restarted.
    let hand_over = Duration::from_millis(2 * cfg.election_timeout + 1000);
    crate::transfer::hand_over_before_stop(&node, hand_over).await;
    // Then no new connections, and the open ones are asked to close once
    // their requests are answered (HTTP/2 GOAWAY: a client sends nothing
    // more on them and retries elsewhere what the GOAWAY says was not taken;
    // HTTP/1.1 `Connection: close`), while Raft still runs so those requests
    // can finish. Bounded: watch streams never finish on their own.
    for a in accept_loops {
        a.abort();
        let _ = a.await;
    }
    if let Ok(drain) = Arc::try_unwrap(drain) {
        if tokio::time::timeout(CLIENT_DRAIN, drain.shutdown())
            .await
            .is_err()
        {
            info!("stopping: client streams still open after {CLIENT_DRAIN:?} are cut");
        }
    }
    node.stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    snapshot_before_exit(&raft).await;
    let _ = raft.shutdown().await;
    storage.flush().await?;
    Ok(())
}

/// A start re-applies the log after the last snapshot (the state lives in
/// memory), so a clean stop takes a snapshot first and the next start only
/// loads it. Bounded, because a stop must stay quick (docker gives 10 s);
/// an unfinished snapshot changes nothing, the old one and the log remain.
async fn snapshot_before_exit(raft: &Raft) {
    let m = raft.metrics().borrow().clone();
    let applied = m.last_applied.map(|l| l.index);
    if applied.is_none() || applied <= m.snapshot.map(|l| l.index) {
        return;
    }
    if raft.trigger().snapshot().await.is_err() {
        return;
    }
    let done = raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.snapshot.map(|l| l.index) >= applied,
            "snapshot before exit",
        )
        .await;
    if done.is_err() {
        tracing::warn!("no snapshot within 5 s of stopping; the next start replays the log");
    }
}

/// Accepts plain-TCP peer connections: those that open with Raft frames are
/// answered here, the others go on to the gRPC server through `grpc`.
async fn accept_peers(
    listener: TcpListener,
    node: Arc<Node>,
    grpc: tokio::sync::mpsc::UnboundedSender<std::io::Result<tokio::net::TcpStream>>,
) {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("peer accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if grpc.is_closed() {
            return;
        }
        cairn_client::tcp::tune(&conn);
        let (node, grpc) = (node.clone(), grpc.clone());
        tokio::spawn(async move {
            if crate::net::wire::is_wire(&conn).await {
                crate::net::wire::serve(conn, |method, data| {
                    let node = node.clone();
                    async move { crate::api::peer::peer_rpc(&node, method, &data).await }
                })
                .await;
            } else {
                let _ = grpc.send(Ok(conn));
            }
        });
    }
}

fn is_https(url: &str) -> bool {
    url.trim().starts_with("https://")
}

/// Serves the client port: each connection gets [`cairn_client::tcp::tune`]
/// (no Nagle; no BBR on loopback), its TLS handshake when the URL is
/// `https://` (in its own task, so a slow handshake holds up no one), and
/// [`AuthorityFix`] inside the TLS layer, so that etcdctl's
/// `:authority: http(s)://host:port` does not get its streams reset.
/// How long a stopping member waits for its client connections to finish.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);

async fn serve_clients(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    drain: Arc<hyper_util::server::graceful::GracefulShutdown>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        cairn_client::tcp::tune(&tcp);
        let (router, tls, drain) = (router.clone(), tls.clone(), drain.watcher());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(AuthorityFix::new(tcp), router, drain).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(s)) => serve_connection(AuthorityFix::new(s), router, drain).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// A client that connects but never finishes its handshake is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 or HTTP/2 (whichever the client speaks) on one connection.
async fn serve_connection<I>(
    io: I,
    router: axum::Router,
    drain: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let r = drain.watch(conn).await;
    if let Err(e) = r {
        tracing::debug!("client connection ended: {e}");
    }
}

async fn bind(url: &str, what: &str) -> Result<TcpListener> {
    let addr = host_port(url)?;
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {what} URL {url} (port in use?)"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Proposes this member's name and client URLs until the cluster has them
/// (etcd's `publish`), so `member list` shows them on every member.
async fn publish_attributes(node: Arc<Node>, client_urls: Vec<String>) {
    loop {
        let current = member_attrs(&node.mvcc)
            .into_iter()
            .find(|(id, _)| *id == node.id);
        if let Some((_, a)) = current {
            if a.name == node.name && a.client_urls == client_urls {
                return;
            }
        }
        let cmd = Command::MemberAttributes {
            id: node.id,
            name: node.name.clone(),
            client_urls: client_urls.clone(),
        };
        if node.propose(None, cmd).await.is_ok() {
            info!("published member attributes");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A new cluster: IDs from `--initial-cluster` and the token, as etcd. Refuses
/// to start if a peer already knows this member as part of a running cluster
/// (its data dir was wiped): bootstrapping again would fork the cluster.
async fn new_cluster_identity(cfg: &StoreConfig, pool: &PeerPool) -> Result<Identity> {
    let identity = bootstrap_identity(cfg)?;
    let members = cfg.initial_members()?;
    let (cluster_id, member_id) = (identity.cluster_id, identity.member_id);

    let mine = &members[&cfg.name];
    for (name, urls) in &members {
        if urls == mine {
            continue;
        }
        for url in urls {
            let req = HelloRequest {
                from_id: member_id,
                cluster_id,
            };
            let Ok(reply) = pool.hello(url, req, Duration::from_millis(700)).await else {
                continue;
            };
            // As etcd: a member counts as bootstrapped once it has published
            // its attributes. Peers that bootstrapped a moment before us list
            // us too, but not as started.
            let started = reply.members.iter().any(|m| m.id == member_id && m.started);
            if reply.initialized && reply.cluster_id == cluster_id && started {
                bail!(
                    "member {} ({}) is already part of running cluster {} (member {name} at {url} says so), \
                     but data dir {} is empty: this member's data was lost. Bootstrapping again would fork the \
                     cluster. To replace it: `etcdctl member remove {}`, then `etcdctl member add {} --peer-urls={}`, \
                     then start this node with an empty data dir and --initial-cluster-state existing",
                    ids::hex(member_id),
                    cfg.name,
                    ids::hex(cluster_id),
                    cfg.data_dir().display(),
                    ids::hex(member_id),
                    cfg.name,
                    mine.join(",")
                );
            }
            if reply.initialized && reply.cluster_id != cluster_id {
                warn!(
                    "peer {name} at {url} belongs to another cluster ({}); check --initial-cluster-token",
                    ids::hex(reply.cluster_id)
                );
            }
        }
    }
    Ok(identity)
}

/// Joining an existing cluster: ask its members for the ID that was added
/// for our peer URLs (`etcdctl member add`).
async fn join_identity(cfg: &StoreConfig, pool: &PeerPool) -> Result<Identity> {
    let members = cfg.initial_members()?;
    let mut mine = cfg.advertise_peer_urls();
    mine.sort();
    for _attempt in 0..10 {
        for (name, urls) in &members {
            if *name == cfg.name {
                continue;
            }
            for url in urls {
                let Ok(reply) = pool
                    .hello(url, HelloRequest::default(), Duration::from_millis(700))
                    .await
                else {
                    continue;
                };
                if !reply.initialized {
                    continue;
                }
                for m in &reply.members {
                    let mut urls = m.peer_urls.clone();
                    urls.sort();
                    if urls == mine {
                        return Ok(Identity {
                            member_id: m.id,
                            cluster_id: reply.cluster_id,
                            name: cfg.name.clone(),
                            initial: BTreeMap::new(),
                        });
                    }
                }
                bail!(
                    "no member with peer URLs {} in the cluster that {url} belongs to: add it first with \
                     `etcdctl member add {} --peer-urls={}`",
                    mine.join(","),
                    cfg.name,
                    mine.join(",")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("--initial-cluster-state existing: no member of --initial-cluster could be reached")
}
