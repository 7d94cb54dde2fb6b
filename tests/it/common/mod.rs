//! Test harness: real 3-member clusters of either the reference `etcd` or
//! `cairn store`, as child processes on free 127.0.0.1 ports with temp dirs.
//!
//! `cairn store` takes etcd's flags, so both implementations are started with the
//! very same command line (Cairn gets `store` first, and the Cairn-only
//! `--snapshot-catchup-entries` when asked for).
//!
//! Rules kept here: every wait polls a condition under a deadline (no bare
//! sleeps for synchronization); children are killed by PID on drop; each node's
//! stdout+stderr goes to `<tempdir>/<name>.log`, and when a test panics the logs'
//! tails are printed and the temp dir is kept (its path is printed).
//!
//! Tools: `/usr/bin/etcd` and `/usr/bin/etcdctl` (override with `ETCD_BIN`,
//! `ETCDCTL_BIN`). Under `CI=true` a missing tool fails the test; otherwise the
//! test prints why and returns early.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions};

pub mod control;
pub mod tls;

/// Which server implementation a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// The reference: Debian's etcd 3.4.23.
    Etcd,
    /// `cairn store` (this repository's binary).
    Cairn,
}

/// Generous deadline for things that involve elections or process starts on a
/// loaded 2-core machine. Only an upper bound: tests never assert timings.
pub const SLOW: Duration = Duration::from_secs(60);

pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcd".into())
}

pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcdctl".into())
}

pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True if `tool` exists. Missing: panics under CI, else prints a skip reason.
pub fn have_tool(tool: &Path) -> bool {
    if tool.is_file() {
        return true;
    }
    if in_ci() {
        panic!(
            "required tool {} is missing (CI=true: this is a failure)",
            tool.display()
        );
    }
    eprintln!("SKIP: {} is not installed", tool.display());
    false
}

/// Whether a test on `imp` can run (the etcd binary for `Impl::Etcd`).
pub fn available(imp: Impl) -> bool {
    match imp {
        Impl::Etcd => have_tool(&etcd_bin()),
        Impl::Cairn => true,
    }
}

/// Generates `mod etcd { #[tokio::test] fn name() }` and `mod cairn { ... }`
/// wrappers calling `async fn name(imp: Impl)` for each listed test, so one
/// body runs against both (`cargo test etcd::`, `cargo test cairn::`).
#[macro_export]
macro_rules! cluster_tests {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if !$crate::common::available($crate::common::Impl::Etcd) {
                        return;
                    }
                    super::$name($crate::common::Impl::Etcd).await
                }
            )*
        }
        mod cairn {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Impl::Cairn).await
                }
            )*
        }
    };
}

/// Polls `cond` until it is true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let f = cond();
        async move { f.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some`; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // Poll interval, not synchronization: the condition decides.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port below the ephemeral range (so our own outgoing
/// connections cannot take it between now and the server's bind).
pub fn free_port() -> u16 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::os::fd::AsRawFd;
    // Each test runs in its own process (nextest); a port is claimed by an
    // flock on a file named after it, held until this process exits (the
    // kernel drops it even on a crash), so two tests running at once never
    // get the same port, even before either has bound it.
    static CLAIMED: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("cairn-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..1000 {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 15000 + (h.finish() % 17000) as u16;
        // `cairn up` (tests/it/up.rs) needs these two fixed ports.
        if port == 22379 || port == 22380 {
            continue;
        }
        let Ok(lock) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMED.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            return port;
        }
    }
    panic!("no free port found");
}

/// The program and the etcd flags that place one member: both etcd and
/// `cairn store` take exactly these.
pub fn member_command(
    imp: Impl,
    name: &str,
    data_dir: &Path,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
    state: &str,
) -> (PathBuf, Vec<String>) {
    let (program, mut args) = match imp {
        Impl::Etcd => (etcd_bin(), vec![]),
        Impl::Cairn => (cairn_bin(), vec!["store".to_string()]),
    };
    for (k, v) in [
        ("--name", name),
        ("--data-dir", &data_dir.display().to_string()),
        ("--listen-client-urls", client_url),
        ("--advertise-client-urls", client_url),
        ("--listen-peer-urls", peer_url),
        ("--initial-advertise-peer-urls", peer_url),
        ("--initial-cluster", initial_cluster),
        ("--initial-cluster-state", state),
    ] {
        args.push(k.to_string());
        args.push(v.to_string());
    }
    (program, args)
}

/// How to start one member process.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Cluster settings; by default each implementation runs as it ships.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--heartbeat-interval` / `--election-timeout`; `None`: what each
    /// implementation ships with (etcd 100 / 1000 ms, Cairn 25 / 150 ms), so
    /// Cairn is tested as it runs.
    pub heartbeat_ms: Option<u64>,
    pub election_ms: Option<u64>,
    pub snapshot_count: Option<u64>,
    /// Cairn only (etcd 3.4 has no such flag; it keeps 5000 entries).
    pub snapshot_catchup_entries: Option<u64>,
    /// Flags both etcd and Cairn take, passed to every member.
    pub extra_args: Vec<String>,
    /// Serve both ports over TLS with these files (`https://` URLs), and
    /// give the harness's own clients the matching client settings.
    pub tls: Option<TestTls>,
    /// Environment variables for every member (e.g. Cairn's `CAIRN_FAILPOINTS`).
    pub env: Vec<(String, String)>,
}

/// PEM files of a test PKI: every member presents `cert`/`key` (for
/// 127.0.0.1) on both ports and requires client certificates signed by `ca`.
#[derive(Debug, Clone)]
pub struct TestTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestTls {
    fn member_args(&self) -> Vec<String> {
        let (ca, cert, key) = (
            self.ca.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string(),
        );
        [
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .chain([
            "--client-cert-auth".into(),
            "--peer-client-cert-auth".into(),
        ])
        .collect()
    }

    /// Client settings presenting the members' own certificate.
    pub fn client(&self) -> cairn_client::TlsOptions {
        cairn_client::TlsOptions::from_files(&self.ca, Some(&self.cert), Some(&self.key))
            .expect("read test PEM files")
    }
}

impl ClusterOptions {
    /// etcd's default timeouts, on either implementation.
    pub fn etcd_timeouts() -> Self {
        Self {
            heartbeat_ms: Some(100),
            election_ms: Some(1000),
            ..Self::default()
        }
    }

    /// The election timeout `imp` runs with under these options.
    pub fn election_ms_for(&self, imp: Impl) -> u64 {
        self.election_ms.unwrap_or(match imp {
            Impl::Etcd => 1000,
            Impl::Cairn => 150,
        })
    }
}

/// One member process.
#[derive(Debug)]
pub struct Node {
    pub imp: Impl,
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Settings of the harness's clients (TLS when the cluster uses it).
    pub client_opts: ClientOptions,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// A member logging to `<dir>/<name>.log`, started at once.
    fn start(
        imp: Impl,
        dir: &Path,
        name: String,
        client_url: String,
        peer_url: String,
        data_dir: PathBuf,
        launch: Launch,
    ) -> Node {
        let Launch { program, args, env } = launch;
        let mut node = Node {
            imp,
            client_opts: test_client_options(),
            log_path: dir.join(format!("{name}.log")),
            name,
            client_url,
            peer_url,
            data_dir,
            program,
            args,
            env,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let mut header = log.try_clone().expect("clone log");
        let _ = writeln!(
            header,
            "==== harness: starting {} {}",
            self.program.display(),
            self.args.join(" ")
        );
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while the process exists (stopped by SIGSTOP counts as running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The exit code once the process has exited on its own (reaping it).
    pub fn exit_code(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Panics (with the log) if the process has exited on its own.
    pub fn assert_alive(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "{} exited early ({status}); log:\n{}",
                    self.name,
                    tail(&self.log_path, 60)
                );
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet
        // (so the PID cannot have been reused).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 20 s for the exit, then SIGKILL. Returns whether it
    /// exited on its own after SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // A stopped process cannot handle SIGTERM: continue it first.
        // SAFETY: see `signal`.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
            libc::kill(c.id() as i32, libc::SIGCONT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Starts the node again with the same flags and data dir.
    pub fn restart(&mut self) {
        if self.is_running() {
            panic!("restart of {} while it is running", self.name);
        }
        self.child = None;
        self.spawn();
    }

    /// SIGSTOPs the member and returns once every thread of it has stopped.
    /// kill(2) only queues the stop: one thread is woken to start the group
    /// stop, and the others keep serving until it is scheduled, which on a
    /// loaded machine can be after the test's next request was answered.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid().expect("running");
        let deadline = Instant::now() + SLOW;
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "{} not stopped after {SLOW:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// A client talking to this member only.
    pub async fn client(&self) -> Client {
        Client::connect(vec![self.client_url.clone()], self.client_opts.clone())
            .await
            .expect("client")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Client options for tests: short per-attempt timeouts so a dead member is
/// skipped quickly; a generous retry budget to ride through elections.
pub fn test_client_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Last `lines` lines of a file (the robustness suite's, shared).
pub use cairn_robustness::cluster::tail;

/// A running cluster. Dropping it kills every member.
pub struct Cluster {
    pub imp: Impl,
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` members with default options and waits until they agree on a leader.
    pub async fn start(imp: Impl, n: usize) -> Cluster {
        Self::start_with(imp, n, ClusterOptions::default()).await
    }

    pub async fn start_with(imp: Impl, n: usize, opts: ClusterOptions) -> Cluster {
        let mut c = Self::spawn(imp, n, &opts);
        c.wait_ready().await;
        c
    }

    /// Spawns the members without waiting for them.
    pub fn spawn(imp: Impl, n: usize, opts: &ClusterOptions) -> Cluster {
        let tempdir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let mut taken = Vec::new();
        let mut port = || loop {
            let p = free_port();
            if !taken.contains(&p) {
                taken.push(p);
                return p;
            }
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (port(), port())).collect();
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("n{i}={scheme}://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("cairn-test-{}", free_port());
        let mut nodes = Vec::new();
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let client_url = format!("{scheme}://127.0.0.1:{cp}");
            let peer_url = format!("{scheme}://127.0.0.1:{pp}");
            let data_dir = dir.join(format!("{name}.data"));
            let (program, mut args) = member_command(
                imp,
                &name,
                &data_dir,
                &client_url,
                &peer_url,
                &initial_cluster,
                "new",
            );
            args.extend(["--initial-cluster-token".into(), token.clone()]);
            if let Some(ms) = opts.heartbeat_ms {
                args.extend(["--heartbeat-interval".into(), ms.to_string()]);
            }
            if let Some(ms) = opts.election_ms {
                args.extend(["--election-timeout".into(), ms.to_string()]);
            }
            if let Some(s) = opts.snapshot_count {
                args.extend(["--snapshot-count".into(), s.to_string()]);
            }
            if let (Impl::Cairn, Some(e)) = (imp, opts.snapshot_catchup_entries) {
                args.extend(["--snapshot-catchup-entries".into(), e.to_string()]);
            }
            args.extend(opts.extra_args.iter().cloned());
            if let Some(tls) = &opts.tls {
                args.extend(tls.member_args());
            }
            let mut node = Node::start(
                imp,
                &dir,
                name,
                client_url,
                peer_url,
                data_dir,
                Launch {
                    program,
                    args,
                    env: opts.env.clone(),
                },
            );
            node.client_opts.tls = opts.tls.as_ref().map(TestTls::client);
            nodes.push(node);
        }
        Cluster {
            imp,
            nodes,
            dir,
            tempdir: Some(tempdir),
        }
    }

    /// Starts a new member that joins this running cluster (after
    /// `etcdctl member add`): `initial_cluster` is the `ETCD_INITIAL_CLUSTER`
    /// that `member add` printed; the new member uses `peer_port` and a free
    /// client port. Returns its index in `nodes`.
    pub fn join_member(&mut self, name: &str, peer_port: u16, initial_cluster: &str) -> usize {
        let cp = free_port();
        let client_url = format!("http://127.0.0.1:{cp}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = self.dir.join(format!("{name}.data"));
        let (program, args) = member_command(
            self.imp,
            name,
            &data_dir,
            &client_url,
            &peer_url,
            initial_cluster,
            "existing",
        );
        let node = Node::start(
            self.imp,
            &self.dir,
            name.to_string(),
            client_url,
            peer_url,
            data_dir,
            Launch {
                program,
                args,
                env: Vec::new(),
            },
        );
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Waits until every running member answers Status and all of them name
    /// the same leader.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + SLOW;
        loop {
            for n in &mut self.nodes {
                n.assert_alive();
            }
            if let Some(leader) = self.agreed_leader().await {
                if self.all_published(leader).await {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "cluster not ready after {SLOW:?} (dir {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the leader's member list has every running member's name and
    /// client URLs. A member publishes them through Raft after it starts
    /// (etcd's `publish`), and only then counts as started for a membership
    /// change: etcd does not answer clients before that, Cairn does, so
    /// answering Status alone does not prove it.
    async fn all_published(&mut self, leader: usize) -> bool {
        let running: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then(|| n.name.clone()))
            .collect();
        let Ok(c) = Client::connect(
            vec![self.nodes[leader].client_url.clone()],
            self.nodes[leader].client_opts.clone(),
        )
        .await
        else {
            return false;
        };
        let Ok(list) = c.member_list().await else {
            return false;
        };
        running.iter().all(|name| {
            list.members
                .iter()
                .any(|m| m.name == *name && !m.client_ur_ls.is_empty())
        })
    }

    /// The leader's node index if every running member answers Status and
    /// names the same leader, which is itself running.
    async fn agreed_leader(&mut self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                ids.push(None);
                continue;
            }
            let st = self.status(i).await?;
            if st.leader == 0 || leader.is_some_and(|l| l != st.leader) {
                return None;
            }
            leader = Some(st.leader);
            ids.push(st.header.map(|h| h.member_id));
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Maintenance.Status of node `i`, `None` if it does not answer.
    pub async fn status(&self, i: usize) -> Option<cairn_client::pb::StatusResponse> {
        let opts = ClientOptions {
            request_timeout: Duration::from_secs(2),
            ..self.nodes[i].client_opts.clone()
        };
        let c = Client::connect(vec![self.nodes[i].client_url.clone()], opts)
            .await
            .ok()?;
        c.status(&self.nodes[i].client_url).await.ok()
    }

    /// The current leader's index, as the running members agree (waits for one).
    pub async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + SLOW;
        loop {
            if let Some(l) = self.agreed_leader().await {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no agreed leader after {SLOW:?} (dir {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Indices of the running members other than the leader.
    pub async fn followers(&mut self) -> Vec<usize> {
        let l = self.leader().await;
        (0..self.nodes.len())
            .filter(|i| *i != l && self.nodes[*i].is_running())
            .collect()
    }

    /// Client URLs of all members (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_url.clone()).collect()
    }

    /// A cairn-client over all members.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), self.nodes[0].client_opts.clone())
            .await
            .expect("client")
    }

    /// Keep the temp dir after the test (its path is printed).
    pub fn keep_dir(&mut self) {
        if let Some(t) = self.tempdir.take() {
            let p = t.keep();
            eprintln!("harness: kept {}", p.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "==== {} ({:?}) log tail [{}]:\n{}",
                    n.name,
                    n.imp,
                    n.log_path.display(),
                    tail(&n.log_path, 40)
                );
            }
            self.keep_dir();
        }
    }
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `etcdctl` (API v3) against `endpoints` with `args`, feeding `stdin`.
/// etcdctl's own dial/command timeouts bound it.
pub fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// etcdctl's `-w json` output, parsed (panics naming the text if it is not JSON).
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// `etcdctl put`; returns the revision of the write.
pub fn etcdctl_put(eps: &[String], k: &str, v: &str) -> i64 {
    let out = etcdctl_ok(eps, &["put", k, v, "-w", "json"], None);
    json(&out)["header"]["revision"].as_i64().unwrap()
}

/// Like [`etcdctl`] but panics unless it succeeds; returns stdout.
pub fn etcdctl_ok(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> String {
    let o = etcdctl(endpoints, args, stdin);
    assert!(
        o.success,
        "etcdctl {args:?} failed:\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    o.stdout
}

/// One raw HTTP/1.1 request to `base` (`http://host:port`) with extra
/// `headers`; returns the status and the JSON body (a string if not JSON;
/// chunked bodies joined). Raw, because that is what lua-resty-etcd sends.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let mut raw = Vec::new();
    let exchange = async {
        s.write_all(req.as_bytes()).await?;
        s.read_to_end(&mut raw).await
    };
    tokio::time::timeout(SLOW, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {base}{path}: no answer within {SLOW:?}"))
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, v)
}

/// Joins the chunks of a chunked HTTP/1.1 body.
pub fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}

/// A txn of `n` puts of `value` to keys `prefix0`, `prefix1`, ...
pub fn many_puts(prefix: &str, n: usize, value: &[u8]) -> cairn_client::txn::Txn {
    use cairn_client::txn::{op_put, Txn};
    let ops = (0..n).map(|i| {
        op_put(
            format!("{prefix}{i}"),
            value.to_vec(),
            cairn_client::PutOptions::default(),
        )
    });
    Txn::new().and_then(ops.collect::<Vec<_>>())
}

/// etcd's refusal of a txn over `--max-txn-ops`.
pub fn assert_too_many_ops(e: &cairn_client::Error) {
    assert_eq!(
        (e.code(), e.message()),
        (
            cairn_client::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        ),
        "{e:?}"
    );
}

/// True when every thread of `pid` is in the stopped state (`T` in
/// `/proc/<pid>/task/<tid>/stat`, the field after the parenthesised name).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
                Some(state == 'T' || state == 't')
            })
            // A thread that exited meanwhile is not serving anything.
            .unwrap_or(true)
    })
}
