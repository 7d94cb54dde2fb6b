//! The faults: what each one does to the cluster, and when. Every choice a
//! fault makes (which member, how long) comes from the run's seeded RNG, so
//! a run is reproduced by its seed (timing on a loaded machine aside).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::cluster::Cluster;
use crate::history::Clock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillFollower,
    KillLeader,
    /// kill -9 every member, then start them again (the old leader first).
    KillAll,
    /// SIGSTOP the leader for a while, then SIGCONT.
    PauseLeader,
    /// Cut the leader off from its peers; clients still reach it.
    PartitionLeader,
    PartitionFollower,
    /// `member remove`, wipe, `member add`, start again, under load.
    ReplaceMember,
    /// A follower stops while enough is written to send it a snapshot.
    SnapshotCatchup,
    /// SIGTERM and restart each member in turn.
    RollingRestart,
    /// `etcdctl move-leader` to a follower, three times in a row.
    MoveLeader,
    /// The leader loses what it had not fsynced, then restarts (Cairn only).
    PowerLossLeader,
    /// Every member loses what it had not fsynced (Cairn only).
    PowerLossAll,
}

pub const ALL: &[Fault] = &[
    Fault::KillFollower,
    Fault::KillLeader,
    Fault::KillAll,
    Fault::PauseLeader,
    Fault::PartitionLeader,
    Fault::PartitionFollower,
    Fault::ReplaceMember,
    Fault::SnapshotCatchup,
    Fault::RollingRestart,
    Fault::MoveLeader,
    Fault::PowerLossLeader,
    Fault::PowerLossAll,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillFollower => "kill-follower",
            Fault::KillLeader => "kill-leader",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionFollower => "partition-follower",
            Fault::ReplaceMember => "replace-member",
            Fault::SnapshotCatchup => "snapshot-catchup",
            Fault::RollingRestart => "rolling-restart",
            Fault::MoveLeader => "move-leader",
            Fault::PowerLossLeader => "power-loss-leader",
            Fault::PowerLossAll => "power-loss-all",
        }
    }

    /// Whether the target can take this fault (power loss needs Cairn's hook).
    pub fn supported(self, cairn: bool) -> bool {
        cairn || !matches!(self, Fault::PowerLossLeader | Fault::PowerLossAll)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter().copied().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {s:?}; one of {}", names.join(", "))
        })
    }
}

/// What the nemesis did, for the run's report.
#[derive(Default, Debug)]
pub struct FaultLog {
    pub lines: Vec<String>,
}

impl FaultLog {
    fn note(&mut self, clock: &Clock, s: String) {
        self.lines
            .push(format!("{:>8.3}s {s}", clock.now() as f64 / 1e6));
    }
}

fn ms(rng: &mut fastrand::Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.u64(lo..=hi))
}

/// The leader, or (when none is agreed within a few seconds) any running member.
async fn leader_or_any(c: &mut Cluster, rng: &mut fastrand::Rng) -> usize {
    match c.wait_leader(Duration::from_secs(5)).await {
        Ok(l) => l,
        Err(_) => rng.usize(..c.members.len()),
    }
}

async fn follower(c: &mut Cluster, rng: &mut fastrand::Rng) -> usize {
    let l = leader_or_any(c, rng).await;
    let n = c.members.len();
    (l + 1 + rng.usize(..n - 1)) % n
}

/// Applies `fault` once and heals it.
pub async fn inject(
    c: &mut Cluster,
    fault: Fault,
    rng: &mut fastrand::Rng,
    clock: &Clock,
    log: &mut FaultLog,
) -> Result<()> {
    if !fault.supported(c.target.is_cairn()) {
        bail!("{fault} is not supported on {}", c.target.name());
    }
    match fault {
        Fault::KillFollower | Fault::KillLeader => {
            let i = if fault == Fault::KillLeader {
                leader_or_any(c, rng).await
            } else {
                follower(c, rng).await
            };
            c.kill9(i);
            log.note(clock, format!("kill -9 m{i}"));
            tokio::time::sleep(ms(rng, 200, 2000)).await;
            c.restart(i)?;
            log.note(clock, format!("restart m{i}"));
        }
        Fault::KillAll => {
            let l = leader_or_any(c, rng).await;
            for i in 0..c.members.len() {
                c.kill9(i);
            }
            log.note(clock, "kill -9 all members".into());
            // The old leader first: its first reads come before its peers
            // can tell it what was committed.
            c.restart(l)?;
            tokio::time::sleep(ms(rng, 0, 400)).await;
            for i in 0..c.members.len() {
                c.restart(i)?;
            }
            log.note(clock, format!("restarted m{l}, then the others"));
        }
        Fault::PauseLeader => {
            let i = leader_or_any(c, rng).await;
            c.pause(i)?;
            log.note(clock, format!("SIGSTOP m{i}"));
            tokio::time::sleep(ms(rng, 1000, 4000)).await;
            c.resume(i)?;
            log.note(clock, format!("SIGCONT m{i}"));
        }
        Fault::PartitionLeader | Fault::PartitionFollower => {
            let i = if fault == Fault::PartitionLeader {
                leader_or_any(c, rng).await
            } else {
                follower(c, rng).await
            };
            c.isolate(i)?;
            log.note(clock, format!("isolate m{i} from its peers"));
            tokio::time::sleep(ms(rng, 2500, 6000)).await;
            c.heal_network()?;
            log.note(clock, "heal the network".into());
        }
        Fault::ReplaceMember => {
            let i = follower(c, rng).await;
            c.replace_member(i).await?;
            log.note(
                clock,
                format!("m{i} removed, wiped, added back and started"),
            );
        }
        Fault::SnapshotCatchup => {
            let i = follower(c, rng).await;
            c.kill9(i);
            log.note(clock, format!("kill -9 m{i}"));
            let l = leader_or_any(c, rng).await;
            let n = c.opts.snapshot_count as usize + c.opts.catchup_entries as usize + 200;
            crate::workload::fill(c.members[l].client_url.clone(), n, 8).await;
            log.note(clock, format!("{n} filler writes through m{l}"));
            c.restart(i)?;
            log.note(clock, format!("restart m{i}"));
        }
        Fault::RollingRestart => {
            for i in 0..c.members.len() {
                c.terminate(i);
                log.note(clock, format!("SIGTERM m{i}"));
                c.restart(i)?;
                c.wait_leader(Duration::from_secs(30)).await?;
                log.note(clock, format!("m{i} back"));
            }
        }
        Fault::MoveLeader => {
            for _ in 0..3 {
                let l = c.wait_leader(Duration::from_secs(30)).await?;
                let to = follower(c, rng).await;
                match c.move_leader(l, to).await {
                    Ok(()) => log.note(clock, format!("move-leader m{l} -> m{to}")),
                    // Refused or timed out: no harm done, and the checkers
                    // judge the history either way.
                    Err(e) => log.note(clock, format!("move-leader m{l} -> m{to}: {e:#}")),
                }
                tokio::time::sleep(ms(rng, 200, 1000)).await;
            }
        }
        Fault::PowerLossLeader => {
            let i = leader_or_any(c, rng).await;
            let pl = c.power_loss(i, rng)?;
            log.note(clock, format!("power loss on m{i}: {pl:?}"));
            tokio::time::sleep(ms(rng, 0, 1000)).await;
            c.restart(i)?;
            log.note(clock, format!("restart m{i}"));
        }
        Fault::PowerLossAll => {
            for i in 0..c.members.len() {
                let pl = c.power_loss(i, rng)?;
                log.note(clock, format!("power loss on m{i}: {pl:?}"));
            }
            for i in 0..c.members.len() {
                c.restart(i)?;
            }
            log.note(clock, "restart all members".into());
        }
    }
    Ok(())
}

/// Undoes anything a failed injection may have left: heals the network,
/// continues paused members and starts stopped ones.
pub fn heal_all(c: &mut Cluster) -> Result<()> {
    c.heal_network()?;
    for i in 0..c.members.len() {
        if c.is_running(i) {
            let _ = c.resume(i);
        } else {
            c.restart(i)?;
        }
    }
    Ok(())
}
