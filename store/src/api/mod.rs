//! The client-facing etcd v3 API, one file per gRPC service.
//!
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`lease`]: Grant, Revoke, KeepAlive, TimeToLive, Leases.
//! - [`maintenance`]: Status (more later).
//! - [`cluster`]: MemberList (membership changes later).
//! - [`watch`]: Watch streams (the watchers themselves are in [`crate::watch`]).
//! - [`validate`]: etcd's request checks, before anything is proposed.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::etcdserverpb::watch_server::WatchServer;
use tonic::service::Routes;

use crate::node::Node;

/// gRPC routes of the client port.
pub fn routes(node: Arc<Node>) -> Routes {
    // etcd accepts gRPC messages up to the request limit plus 512 KiB, and
    // rejects larger *requests* with "request is too large" itself.
    let max = node.max_request_bytes + 512 * 1024;
    let mut b = Routes::builder();
    b.add_service(
        KvServer::new(kv::KvService { node: node.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    );
    b.add_service(
        MaintenanceServer::new(maintenance::MaintenanceService { node: node.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    );
    b.add_service(
        LeaseServer::new(lease::LeaseService { node: node.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    );
    b.add_service(
        WatchServer::new(watch::WatchService {
            node: node.clone(),
            progress_interval: node.watch_progress_interval,
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX),
    );
    b.add_service(
        ClusterServer::new(cluster::ClusterService { node })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    );
    b.routes()
}
