//! Every integration test, in one binary: a change links once, not once per
//! file. Each module holds one area (its own `//!` says what it covers);
//! `common` is the harness they share (clusters of etcd or Cairn, etcdctl,
//! raw HTTP, the control plane). Run one area with
//! `cargo nextest run -E 'test(/^watch::/)'`, one implementation with
//! `-E 'test(/::etcd::/)'`.

#[macro_use]
mod common;

mod alarm;
mod apisix_pattern;
mod auth;
mod bench;
mod bounded;
mod compaction;
mod console_browser;
mod control_api;
mod data_dir;
mod durability;
mod etcdctl_compat;
mod etcdctl_matrix;
mod gateway;
mod json_gateway;
mod kv_client;
mod leadership;
mod lease;
mod maintenance;
mod membership;
mod migration;
mod robustness;
mod snapshot;
mod structure;
mod tls;
mod up;
mod watch;
