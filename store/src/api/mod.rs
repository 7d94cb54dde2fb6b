//! The client-facing etcd v3 API, one file per gRPC service.
//!
//! - [`gateway`]: the HTTP/JSON gateway (APISIX's path) and `/health`;
//!   `json_frames` reads its bodies within the request limit, and `bulk`
//!   parses the large ones on a low-priority thread; `refusal_pace` paces
//!   what is refused; `inflight` bounds the bytes of requests in flight,
//!   gRPC and JSON together.
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`lease`]: Grant, Revoke, KeepAlive, TimeToLive, Leases.
//! - [`maintenance`]: Status, Alarm, Hash, HashKV, Snapshot, Defragment,
//!   MoveLeader.
//! - [`cluster`]: MemberList, MemberAdd/Remove/Update/Promote.
//! - [`auth`]: the Auth service, and the caller behind a request's token.
//! - [`watch`]: Watch streams (the watchers themselves are in [`crate::watch`]);
//!   `watch_grpc` serves them on gRPC with events encoded once per stream step.
//! - [`validate`]: etcd's request checks, before anything is proposed;
//!   `txn_screen` makes the first of them on a gRPC txn's bytes as they arrive.
//! - [`peer`]: the peer protocol's server side (openraft's RPCs, forwarded writes, read index, lease and membership calls).

pub mod auth;
mod bulk;
pub mod cluster;
pub mod gateway;
mod inflight;
mod json_frames;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
mod refusal_pace;
mod txn_screen;
pub mod validate;
pub mod watch;
mod watch_grpc;

use std::sync::Arc;

use cairn_proto::etcdserverpb::auth_server::AuthServer;
use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use tonic::service::Routes;

use crate::node::Node;

/// Everything the client port serves: etcd's gRPC services, the HTTP/JSON
/// gateway and `/health`, on one axum router (gRPC needs HTTP/2, the gateway
/// HTTP/1.1; the server speaks both).
pub fn client_router(node: Arc<Node>) -> axum::Router {
    // etcd accepts gRPC messages up to the request limit plus 512 KiB, and
    // rejects larger *requests* with "request is too large" itself.
    let max = node.max_request_bytes + 512 * 1024;
    let max_txn_ops = node.max_txn_ops;
    // JSON inflates bytes by 4/3 (base64); the services enforce the real limit.
    let body_limit = max * 2;
    let budget = inflight::Budget::new(node.max_request_bytes_in_flight, max, body_limit);
    let services = gateway::Services {
        kv: Arc::new(kv::KvService { node: node.clone() }),
        lease: Arc::new(lease::LeaseService { node: node.clone() }),
        watch: Arc::new(watch::WatchService {
            node: node.clone(),
            progress_interval: node.watch_progress_interval,
            limits: watch::StreamLimits {
                watches: node.max_watches_per_stream,
                key_bytes: 16 << 20,
            },
        }),
        cluster: Arc::new(cluster::ClusterService { node: node.clone() }),
        maintenance: Arc::new(maintenance::MaintenanceService { node: node.clone() }),
        auth: Arc::new(auth::AuthService {
            node: node.clone(),
            token_ttl: node.auth_token_ttl,
        }),
        body_limit,
        bulk: bulk::Bulk::start(),
    };
    // Replies are bounded by the request limit of what was written; streamed
    // ones (watch, snapshot) are split by the services themselves.
    macro_rules! limited {
        ($server:ident, $svc:expr) => {
            $server::from_arc($svc)
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let mut b = Routes::builder();
    b.add_service(limited!(KvServer, services.kv.clone()));
    b.add_service(limited!(LeaseServer, services.lease.clone()));
    b.add_service(watch_grpc::WatchServer::new(services.watch.clone(), max));
    b.add_service(limited!(ClusterServer, services.cluster.clone()));
    b.add_service(limited!(MaintenanceServer, services.maintenance.clone()));
    b.add_service(limited!(AuthServer, services.auth.clone()));
    b.routes()
        .into_axum_router()
        .merge(gateway::router(services))
        .merge(gateway::health_router(node.clone()))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let node = node.clone();
                async move { crate::metrics::render(node.metrics_snapshot()) }
            }),
        )
        .layer(axum::middleware::map_request(move |req: axum::extract::Request| async move {
            txn_screen::screen(req, max_txn_ops, max)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            inflight::admit(budget.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(crate::metrics::count_grpc))
}
