//! Generated protobuf and gRPC types.
//!
//! - [`etcdserverpb`], [`mvccpb`], [`authpb`]: etcd v3.4's client API, wire-identical
//!   to etcd (same packages, services and field numbers), so every etcd client works.
//!   Their serde impls follow protobuf-JSON, as etcd's HTTP/JSON gateway.
//! - [`peer`]: Cairn's node-to-node protocol (Raft messages, read index, forwarding).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod peer {
    tonic::include_proto!("cairn.peer");
}
