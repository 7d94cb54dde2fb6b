//! A three-member cluster of either `cairn store` or etcd 3.4, each member in
//! its own network namespace ([`crate::net`]), and the faults a nemesis can
//! apply to it: kill -9, SIGTERM, SIGSTOP/SIGCONT, partitions, membership
//! changes, and (Cairn only) power loss.
//!
//! Both implementations take the same etcd flags, so the command lines
//! differ only in the program (and `store` for Cairn).
//!
//! **Power loss** (Cairn): members run with `CAIRN_SYNC_JOURNAL=1`, under
//! which the WAL appends `<segment> <length>` to `wal/synced.journal` each
//! time a segment is durable up to that length (after its fdatasync, and
//! after a truncation's fsync). A simulated power loss kills the member and
//! cuts each segment back to its last durable length (a segment never made
//! durable goes), optionally leaving a torn tail as a real crash might: what
//! the disk would hold had the machine lost power at that instant. The vote
//! and metadata in sled are flushed before they are relied on, and the
//! snapshot file is replaced by an atomic rename, so the WAL is where
//! unflushed data lives.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_client::{Client, ClientOptions};

use crate::net::Net;

/// Which server a cluster runs.
#[derive(Clone, Debug)]
pub enum Target {
    Cairn { bin: PathBuf },
    Etcd { bin: PathBuf },
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Cairn { .. } => "cairn",
            Target::Etcd { .. } => "etcd",
        }
    }

    pub fn is_cairn(&self) -> bool {
        matches!(self, Target::Cairn { .. })
    }
}

/// Cluster settings shared by both targets.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `--snapshot-count`: small, so a member that falls behind is sent a snapshot.
    pub snapshot_count: u64,
    /// Cairn's `--snapshot-catchup-entries`.
    pub catchup_entries: u64,
    /// Extra flags for every member (e.g. timeouts).
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            snapshot_count: 2000,
            catchup_entries: 200,
            extra_args: Vec::new(),
        }
    }
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// etcd member ID (from Status), 0 until known.
    pub id: u64,
    /// `--initial-cluster-state` and `--initial-cluster` for the next start.
    state: String,
    initial_cluster: String,
    child: Option<Child>,
    /// A client to this member only, for Status.
    probe: Client,
}

pub struct Cluster {
    pub target: Target,
    pub opts: ClusterOptions,
    pub members: Vec<Member>,
    pub dir: PathBuf,
    token: String,
    net: Net,
}

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// Options of the harness's own probes: short, so a dead member is noticed fast.
fn probe_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        retry_budget: Duration::ZERO,
        ..Default::default()
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) on our own unreaped child's PID.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Cluster {
    /// Builds the network and starts `n` members (not waiting for them).
    pub async fn start(
        target: Target,
        n: usize,
        opts: ClusterOptions,
        dir: &Path,
    ) -> Result<Cluster> {
        let net = Net::create(n)?;
        let token = format!("robustness-{}", net.tag());
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://{}:{PEER_PORT}", net.ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let ip = net.ip(i);
            let client_url = format!("http://{ip}:{CLIENT_PORT}");
            members.push(Member {
                name: format!("m{i}"),
                peer_url: format!("http://{ip}:{PEER_PORT}"),
                data_dir: dir.join(format!("m{i}.data")),
                log: dir.join(format!("m{i}.log")),
                id: 0,
                state: "new".into(),
                initial_cluster: initial_cluster.clone(),
                child: None,
                probe: Client::connect(vec![client_url.clone()], probe_options()).await?,
                client_url,
            });
        }
        let mut c = Cluster {
            target,
            opts,
            members,
            dir: dir.to_path_buf(),
            token,
            net,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let target = self.target.clone();
        let opts = self.opts.clone();
        let token = self.token.clone();
        let ns = self.net.namespace(i).to_string();
        let m = &mut self.members[i];
        if m.child.is_some() {
            bail!("{} is already running", m.name);
        }
        let (program, mut args): (&Path, Vec<String>) = match &target {
            Target::Cairn { bin } => (bin, vec!["store".into()]),
            Target::Etcd { bin } => (bin, vec![]),
        };
        for (k, v) in [
            ("--name", m.name.clone()),
            ("--data-dir", m.data_dir.display().to_string()),
            ("--listen-client-urls", m.client_url.clone()),
            ("--advertise-client-urls", m.client_url.clone()),
            ("--listen-peer-urls", m.peer_url.clone()),
            ("--initial-advertise-peer-urls", m.peer_url.clone()),
            ("--initial-cluster", m.initial_cluster.clone()),
            ("--initial-cluster-state", m.state.clone()),
            ("--initial-cluster-token", token),
            ("--snapshot-count", opts.snapshot_count.to_string()),
        ] {
            args.push(k.into());
            args.push(v);
        }
        if target.is_cairn() {
            args.push("--snapshot-catchup-entries".into());
            args.push(opts.catchup_entries.to_string());
        }
        args.extend(opts.extra_args.iter().cloned());
        let mut log = OpenOptions::new().create(true).append(true).open(&m.log)?;
        writeln!(
            log,
            "==== robustness: starting {} {}",
            program.display(),
            args.join(" ")
        )?;
        // `ip netns exec` execs the program in place: the child's PID is the member's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(program)
            .args(&args)
            .env("CAIRN_SYNC_JOURNAL", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", m.name))?;
        m.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match &mut self.members[i].child {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    fn pid(&self, i: usize) -> Result<u32> {
        self.members[i]
            .child
            .as_ref()
            .map(|c| c.id())
            .with_context(|| format!("{} is not running", self.members[i].name))
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (20 s, then SIGKILL).
    pub fn terminate(&mut self, i: usize) {
        let Some(mut c) = self.members[i].child.take() else {
            return;
        };
        let _ = signal(c.id(), libc::SIGCONT);
        let _ = signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.is_running(i) {
            return Ok(());
        }
        self.members[i].child = None;
        self.spawn(i)
    }

    pub fn pause(&self, i: usize) -> Result<()> {
        signal(self.pid(i)?, libc::SIGSTOP)
    }

    pub fn resume(&self, i: usize) -> Result<()> {
        signal(self.pid(i)?, libc::SIGCONT)
    }

    pub fn isolate(&self, i: usize) -> Result<()> {
        self.net.isolate(i)
    }

    pub fn heal_network(&self) -> Result<()> {
        self.net.heal()
    }

    /// Kills member `i` and leaves its WAL as a power loss would have.
    /// `torn`: leave up to 3 KiB of a lost write after the durable end.
    pub fn power_loss(&mut self, i: usize, rng: &mut fastrand::Rng) -> Result<PowerLoss> {
        if !self.target.is_cairn() {
            bail!("power loss is simulated only for Cairn (needs its WAL's sync journal)");
        }
        self.kill9(i);
        cut_to_durable(&self.members[i].data_dir.join("wal"), rng)
    }

    /// Status of member `i`, `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<cairn_client::pb::StatusResponse> {
        let m = &self.members[i];
        m.probe.status(&m.client_url).await.ok()
    }

    /// Learns each running member's ID (from Status).
    async fn learn_ids(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].id == 0 {
                if let Some(id) = self
                    .status(i)
                    .await
                    .and_then(|s| s.header)
                    .map(|h| h.member_id)
                {
                    self.members[i].id = id;
                }
            }
        }
    }

    /// The index of the member every running member names as leader.
    pub async fn leader(&mut self) -> Option<usize> {
        self.learn_ids().await;
        let mut leader = None;
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let st = self.status(i).await?;
            if st.leader == 0 || leader.is_some_and(|l| l != st.leader) {
                return None;
            }
            leader = Some(st.leader);
        }
        let l = leader?;
        self.members.iter().position(|m| m.id == l)
    }

    /// Waits until the running members agree on a leader.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.members.len() {
                if let Some(c) = &mut self.members[i].child {
                    if let Ok(Some(st)) = c.try_wait() {
                        bail!(
                            "{} exited ({st}); log tail:\n{}",
                            self.members[i].name,
                            tail(&self.members[i].log, 30)
                        );
                    }
                }
            }
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `etcdctl move-leader` sent to member `from` (the leader), naming `to`.
    pub async fn move_leader(&mut self, from: usize, to: usize) -> Result<()> {
        self.learn_ids().await;
        let id = format!("{:x}", self.members[to].id);
        etcdctl(&self.members[from].client_url, &["move-leader", &id]).map(|_| ())
    }

    /// Removes member `i` from the cluster (through another member), wipes
    /// its data, adds it back under a fresh ID and starts it joining.
    pub async fn replace_member(&mut self, i: usize) -> Result<()> {
        self.learn_ids().await;
        let other = (0..self.members.len())
            .find(|j| *j != i && self.members[*j].child.is_some())
            .context("no other running member")?;
        let eps = self.members[other].client_url.clone();
        let id = format!("{:x}", self.members[i].id);
        // etcd refuses a removal until the members that stay have been
        // connected for a while ("unhealthy cluster"): retry, as an
        // operator would.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match etcdctl(&eps, &["member", "remove", &id]) {
                Ok(_) => break,
                Err(e)
                    if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.kill9(i);
        std::fs::remove_dir_all(&self.members[i].data_dir).ok();
        let name = self.members[i].name.clone();
        let peer = self.members[i].peer_url.clone();
        let out = etcdctl(
            &eps,
            &["member", "add", &name, &format!("--peer-urls={peer}")],
        )?;
        let initial = out
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .context("member add printed no ETCD_INITIAL_CLUSTER")?
            .to_string();
        let m = &mut self.members[i];
        m.state = "existing".into();
        m.initial_cluster = initial;
        m.id = 0;
        self.spawn(i)
    }

    /// Kills every member (the network goes with `self`).
    pub fn shutdown(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }

    /// The last lines of every member's log, for a failed run's report.
    pub fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "==== {} [{}]\n{}\n",
                    m.name,
                    m.log.display(),
                    tail(&m.log, lines)
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a simulated power loss did to one member's WAL.
#[derive(Debug, Default)]
pub struct PowerLoss {
    /// Bytes written but never made durable, now gone.
    pub lost_bytes: u64,
    /// Segment files that were never durable, now gone.
    pub lost_segments: usize,
    /// Bytes of a lost write left behind as a torn tail.
    pub torn_bytes: u64,
}

/// Cuts every segment in `wal` back to the length its sync journal last
/// recorded; may leave part of the lost bytes (or zeros) as a torn write.
fn cut_to_durable(wal: &Path, rng: &mut fastrand::Rng) -> Result<PowerLoss> {
    let journal = std::fs::read_to_string(wal.join("synced.journal")).unwrap_or_default();
    let mut durable: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for line in journal.lines() {
        if let Some((name, len)) = line.split_once(' ') {
            if let Ok(len) = len.trim().parse() {
                durable.insert(name, len);
            }
        }
    }
    let mut pl = PowerLoss::default();
    let Ok(dir) = std::fs::read_dir(wal) else {
        return Ok(pl);
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".wal") {
            continue;
        }
        let path = e.path();
        let len = e.metadata()?.len();
        match durable.get(name.as_str()) {
            None => {
                pl.lost_bytes += len;
                pl.lost_segments += 1;
                std::fs::remove_file(&path)?;
            }
            Some(&keep) if keep < len => {
                let lost = std::fs::read(&path)?.split_off(keep as usize);
                pl.lost_bytes += lost.len() as u64;
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(keep)?;
                if rng.bool() {
                    // A torn write: a prefix of what was lost, or zeros.
                    let n = rng.usize(1..=lost.len().min(3072));
                    let torn = if rng.bool() {
                        lost[..n].to_vec()
                    } else {
                        vec![0; n]
                    };
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(&torn, keep)?;
                    pl.torn_bytes += n as u64;
                }
                f.sync_all()?;
            }
            Some(_) => {}
        }
    }
    Ok(pl)
}

/// Runs etcdctl (API v3) against `endpoint`; returns stdout.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .context("running etcdctl")?;
    if !out.status.success() {
        bail!(
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcdctl".into())
}

/// Last `lines` lines of a file (its last 64 KiB at most).
pub fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
