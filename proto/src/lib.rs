//! Generated protobuf and gRPC types.
//!
//! - [`etcdserverpb`], [`mvccpb`], [`authpb`]: etcd v3.4's client API, wire-identical
//!   to etcd (same packages, services and field numbers), so every etcd client works.
//! - [`peer`]: Cairn's node-to-node protocol (Raft messages, read index, forwarding).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod peer {
    tonic::include_proto!("cairn.peer");
}
