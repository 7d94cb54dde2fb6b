//! `cairn-robustness`: Cairn's robustness suite, in the manner of etcd's
//! `tests/robustness` and Jepsen. A run starts a fresh three-member cluster
//! (Cairn, or etcd 3.4 as the reference), drives a recorded workload through
//! clients pinned to members, injects faults, heals them, and judges the
//! recorded history.
//!
//! Map of the crate (dependencies point down):
//! - [`run`]: one seeded run, start to verdict ([`run::RunConfig`], [`run::RunReport`]).
//! - [`nemesis`]: the faults ([`nemesis::Fault`]) and how each is applied and healed.
//! - [`workload`]: KV clients, lease clients and watchers, recording everything.
//! - [`cluster`]: members as processes in network namespaces; kill, stop,
//!   pause, partition, replace, power loss.
//! - [`net`]: the namespaces, veth pairs, bridge and iptables rules.
//! - Checkers, each over a [`history::History`] only:
//!   - [`linearizable`]: per-key register linearizability (Wing & Gong / Lowe);
//!   - [`watch_check`]: ordered, unique, atomic, reliable, and agreeing with
//!     what writes and reads answered;
//!   - [`lease_check`]: no lease taken away while its holder may rely on it.
//! - [`history`]: the recorded operations and the run's clock.
//!
//! The `robustness` binary runs seeded runs on demand (`--runs 100` for a
//! soak); `tests/it/robustness.rs` in the workspace root runs the short set.

pub mod cluster;
pub mod history;
pub mod lease_check;
pub mod linearizable;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod watch_check;
pub mod workload;
