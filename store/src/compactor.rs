//! Automatic compaction, as etcd's `--auto-compaction-mode` /
//! `--auto-compaction-retention`. Only the leader proposes compactions, so a
//! cluster compacts once, not once per member.
//!
//! - periodic: keeps `retention` of history. The revision is sampled every
//!   tenth of the retention; the compaction target is the revision that was
//!   current one retention ago.
//! - revision: keeps the last `retention` revisions, checked every 5 minutes
//!   as etcd (tests shorten that with a hidden flag).

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use cairn_proto::etcdserverpb::CompactionRequest;
use tracing::info;

use crate::command::{Command, Proto};
use crate::config::compaction::Policy;
use crate::node::Node;

/// Runs until the member stops; `revision_interval` is how often revision
/// mode checks.
pub async fn run(node: Weak<Node>, policy: Policy, revision_interval: Duration) {
    let step = match policy {
        Policy::Periodic(d) => (d / 10).max(Duration::from_secs(1)),
        Policy::Revision(_) => revision_interval,
    };
    let keep = match policy {
        Policy::Periodic(d) => (d.as_secs_f64() / step.as_secs_f64()).round() as usize,
        Policy::Revision(_) => 0,
    };
    let mut samples: VecDeque<i64> = VecDeque::new();
    let mut tick = tokio::time::interval(step);
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else { return };
        let rev = n.mvcc.revision();
        let target = match policy {
            Policy::Periodic(_) => {
                samples.push_back(rev);
                if samples.len() <= keep {
                    continue;
                }
                samples.pop_front().unwrap_or(0)
            }
            Policy::Revision(keep) => rev - keep,
        };
        if n.leader() != Some(n.id) || target <= n.mvcc.compact_revision() || target <= 1 {
            continue;
        }
        let cmd = Command::Compact(Proto(CompactionRequest {
            revision: target,
            physical: false,
        }));
        if n.propose(None, cmd).await.is_ok() {
            info!(revision = target, "auto-compacted");
        }
    }
}
