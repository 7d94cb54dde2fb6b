//! `cairn up --drill`: the HA drill of `compose/ha-drill.sh` (scenarios 1–4)
//! against local processes, for machines without Docker.
//!
//! It starts `cairn up`'s topology (the same ports, fresh data under
//! `<data-dir>/drill-<pid>`) plus a second control plane (control1 on :9000
//! as `cairn up` starts it, control2 on :9001), stops and kills processes by
//! PID, and checks through Cairn's own client and the admin API:
//!
//! 1. stop control1: the admin API through control2 still reads and writes
//!    (also the route written through control1 before it stopped);
//! 2. stop s1: writes and reads succeed through the client and through both
//!    control planes; stop the leader too: writes are refused within a bound,
//!    by the store and by both admin APIs (a 5xx with an `error_msg`), and
//!    serializable reads answer;
//! 3. restart them: every member has the same HashKV at the same revision and
//!    every acknowledged write (keys and admin API routes) is there;
//! 4. SIGKILL the leader under a write load: acknowledged writes survive; the
//!    time until writes succeed again is printed.
//!
//! Every wait is bounded, and the whole drill gives up after [`DRILL_LIMIT`].
//! The data dir is removed when everything passed and kept (with the logs)
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::{Client, ClientOptions, GetOptions, KeyRange, PutOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::up::{CONTROL_PORT, NODES};

/// Upper bound for anything that involves an election or a process start.
const SLOW: Duration = Duration::from_secs(60);

/// The whole drill, start to summary (it takes about half a minute).
const DRILL_LIMIT: Duration = Duration::from_secs(600);

/// The second control plane's port (as in compose/docker-compose.yaml).
const CONTROL2_PORT: u16 = 9001;

/// Bound of one admin API request. The control plane's store client gives up
/// after its retry budget (8 s) plus one request timeout (3 s), so a request
/// still unanswered after this has hung.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A store or a control plane: a child process of this binary.
struct Member {
    name: &'static str,
    /// `http://host:port`: the client URL of a store, the admin API of a
    /// control plane.
    client_url: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self, exe: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM (a clean stop, as `docker stop`), then SIGKILL after 10 s.
    async fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(pid) = c.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }

    /// SIGKILL, as `docker kill`.
    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

struct Drill {
    exe: PathBuf,
    /// The three stores.
    members: Vec<Member>,
    /// control1 (:9000) and control2 (:9001).
    controls: Vec<Member>,
    admin_key: String,
    /// Writes the cluster acknowledged: (key, value).
    acked: Arc<Mutex<Vec<(String, String)>>>,
    /// Route ids the admin API acknowledged.
    acked_routes: Vec<String>,
    results: Vec<(bool, String)>,
}

/// One HTTP/1.1 exchange (`Connection: close`) with a control plane at
/// `base` (`http://host:port`), bounded by [`ADMIN_TIMEOUT`]: the status and
/// the body. A plain socket, so that the binary needs no HTTP client crate.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let addr = base.strip_prefix("http://").unwrap_or(base).to_string();
    let body = body.unwrap_or("");
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-KEY: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        anyhow::Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    let resp = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} {base}{path}: no answer within {ADMIN_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {base}{path}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {base}{path}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn route_body(id: &str) -> String {
    format!(
        r#"{{"uri":"/drill/{id}","upstream":{{"type":"roundrobin","nodes":{{"127.0.0.1:1980":1}}}}}}"#
    )
}

fn opts(request: Duration, budget: Duration) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: request,
        retry_budget: budget,
        ..Default::default()
    }
}

pub async fn run(data_dir: &Path, host: &str) -> Result<()> {
    let ports = NODES
        .iter()
        .flat_map(|&(_, client, peer)| [client, peer])
        .chain([CONTROL_PORT, CONTROL2_PORT]);
    for port in ports {
        if std::net::TcpListener::bind((host, port)).is_err() {
            bail!("port {port} on {host} is already in use: the drill uses `cairn up`'s ports and {CONTROL2_PORT}; stop whatever listens there");
        }
    }
    let dir = data_dir.join(format!("drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe().context("cannot find the cairn binary")?;
    let initial = NODES
        .iter()
        .map(|(n, _, p)| format!("{n}=http://{host}:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let members = NODES
        .iter()
        .map(|&(name, client, peer)| {
            let c = format!("http://{host}:{client}");
            let p = format!("http://{host}:{peer}");
            let args = [
                "store",
                "--name",
                name,
                "--data-dir",
                &dir.join(name).display().to_string(),
                "--listen-client-urls",
                &c,
                "--advertise-client-urls",
                &c,
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "cairn-drill",
            ]
            .map(String::from)
            .to_vec();
            Member {
                name,
                client_url: c,
                args,
                env: Vec::new(),
                log: dir.join(format!("{name}.log")),
                child: None,
            }
        })
        .collect();
    let endpoints = NODES
        .iter()
        .map(|(_, c, _)| format!("http://{host}:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    // Both control planes share one admin key, handed over in the
    // environment as `cairn up` does.
    let admin_key = cairn_control::auth::random_token();
    let controls = [("control1", CONTROL_PORT), ("control2", CONTROL2_PORT)]
        .into_iter()
        .map(|(name, port)| Member {
            name,
            client_url: format!("http://{host}:{port}"),
            args: ["control", "--listen", &format!("{host}:{port}")]
                .into_iter()
                .map(String::from)
                .chain(["--endpoints".into(), endpoints.clone()])
                .collect(),
            env: vec![("CAIRN_ADMIN_KEY", admin_key.clone())],
            log: dir.join(format!("{name}.log")),
            child: None,
        })
        .collect();
    let mut d = Drill {
        exe,
        members,
        controls,
        admin_key,
        acked: Arc::default(),
        acked_routes: Vec::new(),
        results: Vec::new(),
    };
    println!(
        "cairn up --drill: three stores and two control planes (:{CONTROL_PORT}, :{CONTROL2_PORT}) on {host}, data and logs under {}",
        dir.display()
    );
    let started = Instant::now();
    let outcome = match tokio::time::timeout(DRILL_LIMIT, d.scenarios()).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("the drill did not finish within {DRILL_LIMIT:?}")),
    };
    for m in d.controls.iter_mut().chain(d.members.iter_mut()) {
        m.stop().await;
    }
    println!(
        "\n==== HA drill summary ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    for (ok, line) in &d.results {
        println!("{} {line}", if *ok { "PASS " } else { "FAIL " });
    }
    let failed = d.results.iter().filter(|(ok, _)| !ok).count();
    match outcome {
        Err(e) => bail!("drill aborted: {e:#} (logs in {})", dir.display()),
        Ok(()) if failed > 0 => bail!("{failed} scenario(s) FAILED (logs in {})", dir.display()),
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("cairn up --drill: all scenarios passed");
            Ok(())
        }
    }
}

impl Drill {
    fn result(&mut self, ok: bool, line: String) {
        println!("{} {line}", if ok { "PASS " } else { "FAIL " });
        self.results.push((ok, line));
    }

    fn endpoints(&self, which: &[usize]) -> Vec<String> {
        which
            .iter()
            .map(|&i| self.members[i].client_url.clone())
            .collect()
    }

    async fn client(&self, which: &[usize], request: Duration, budget: Duration) -> Result<Client> {
        Ok(Client::connect(self.endpoints(which), opts(request, budget)).await?)
    }

    /// A put that is recorded as acknowledged when it succeeds.
    async fn put_acked(&self, c: &Client, key: &str, value: &str) -> Result<()> {
        c.put(key, value, PutOptions::default())
            .await
            .with_context(|| format!("put {key}"))?;
        self.acked
            .lock()
            .unwrap()
            .push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// (member id, leader id) as member `i` reports them.
    async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let c = self
            .client(&[i], Duration::from_secs(2), Duration::ZERO)
            .await
            .ok()?;
        let st = c.status(&self.members[i].client_url).await.ok()?;
        Some((st.header.as_ref()?.member_id, st.leader))
    }

    /// Index of the member that `which` agree is leader, waiting for one.
    async fn leader(&self, which: &[usize]) -> Result<usize> {
        let deadline = Instant::now() + SLOW;
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for &i in which {
                if let Some((id, leader)) = self.status(i).await {
                    ids.push((i, id));
                    leaders.push(leader);
                }
            }
            if leaders.len() == which.len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leaders[0]) {
                    return Ok(*i);
                }
            }
            if Instant::now() > deadline {
                bail!("members {which:?} agree on no leader after {SLOW:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let exe = self.exe.clone();
        self.members[i].spawn(&exe)
    }

    /// Starts control plane `i` and waits until its `/readyz` is 200.
    async fn start_control(&mut self, i: usize) -> Result<()> {
        let exe = self.exe.clone();
        self.controls[i].spawn(&exe)?;
        self.control_ready(i).await
    }

    /// Waits (at most [`SLOW`]) until control plane `i` answers `/readyz`
    /// with 200, i.e. it reaches a store quorum.
    async fn control_ready(&self, i: usize) -> Result<()> {
        let c = &self.controls[i];
        let deadline = Instant::now() + SLOW;
        loop {
            let last = http(&c.client_url, "GET", "/readyz", "", None).await;
            if matches!(last, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {SLOW:?}: {last:?}", c.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes route `id` through control plane `i` and reads it back there;
    /// records it as acknowledged. Prints what went wrong.
    async fn route_rw(&mut self, i: usize, id: &str) -> bool {
        let base = self.controls[i].client_url.clone();
        let name = self.controls[i].name;
        let path = format!("/apisix/admin/routes/{id}");
        match http(&base, "PUT", &path, &self.admin_key, Some(&route_body(id))).await {
            Ok((200 | 201, _)) => self.acked_routes.push(id.to_string()),
            other => {
                println!("  PUT {path} via {name}: {other:?}");
                return false;
            }
        }
        self.route_readable(i, id).await
    }

    /// Route `id` reads back through control plane `i`.
    async fn route_readable(&self, i: usize, id: &str) -> bool {
        let base = &self.controls[i].client_url;
        let path = format!("/apisix/admin/routes/{id}");
        match http(base, "GET", &path, &self.admin_key, None).await {
            Ok((200, body)) if body.contains(&format!("/drill/{id}")) => true,
            other => {
                println!("  GET {path} via {}: {other:?}", self.controls[i].name);
                false
            }
        }
    }

    /// 1: stop control1; control2 reads and writes, including what control1
    /// wrote; control1 comes back.
    async fn control_failover(&mut self) -> Result<()> {
        let mut ok = self.route_rw(0, "s1-before").await;
        self.controls[0].stop().await;
        println!("stopped control1");
        let t = Instant::now();
        ok &= self.route_rw(1, "s1-via-control2").await;
        ok &= self.route_readable(1, "s1-before").await;
        let took = t.elapsed();
        self.start_control(0).await?;
        ok &= self.route_rw(0, "s1-after").await;
        self.result(
            ok,
            format!(
                "1 stop control1: admin API via control2 reads and writes (answered in {} ms)",
                took.as_millis()
            ),
        );
        Ok(())
    }

    /// 2b, the admin API part: a write through each control plane is refused
    /// with a 5xx and an `error_msg` within [`ADMIN_TIMEOUT`]. Returns
    /// (all refused, "ms per control plane").
    async fn admin_writes_refused(&self) -> (bool, String) {
        let mut ok = true;
        let mut took = Vec::new();
        for c in &self.controls {
            let t = Instant::now();
            let r = http(
                &c.client_url,
                "PUT",
                "/apisix/admin/routes/s2-no-quorum",
                &self.admin_key,
                Some(&route_body("s2-no-quorum")),
            )
            .await;
            let ms = t.elapsed().as_millis();
            match r {
                Ok((code @ 500..=599, body)) if body.contains("\"error_msg\"") => {
                    println!(
                        "  admin PUT via {} refused after {ms} ms: {code} {body}",
                        c.name
                    );
                }
                other => {
                    println!("  admin PUT via {} without quorum, after {ms} ms: {other:?} (want a 5xx with an error_msg)", c.name);
                    ok = false;
                }
            }
            took.push(format!("{} in {ms} ms", c.name));
        }
        (ok, took.join(", "))
    }

    async fn scenarios(&mut self) -> Result<()> {
        let started = Instant::now();
        for i in 0..3 {
            self.start(i)?;
        }
        let all = [0, 1, 2];
        self.leader(&all).await?;
        println!("cluster up in {:?}", started.elapsed());
        let c = self
            .client(&all, Duration::from_secs(2), Duration::from_secs(10))
            .await?;
        self.put_acked(&c, "/drill/setup/1", "v1").await?;
        let t = Instant::now();
        for i in 0..self.controls.len() {
            self.start_control(i).await?;
        }
        println!("control planes ready in {:?}", t.elapsed());

        // 1: stop control1.
        self.control_failover().await?;

        // 2: stop s1, then the leader.
        self.members[0].stop().await;
        println!("stopped s1");
        let mut ok = true;
        for n in 0..3 {
            if let Err(e) = self
                .put_acked(&c, &format!("/drill/s2/put-{n}"), &format!("v{n}"))
                .await
            {
                println!("  write with s1 down failed: {e:#}");
                ok = false;
            }
        }
        match c.get("/drill/s2/put-2", GetOptions::default()).await {
            Ok(r) if r.kvs.first().map(|kv| kv.value.as_slice()) == Some(b"v2") => {}
            other => {
                println!("  read with s1 down: {other:?}");
                ok = false;
            }
        }
        ok &= self.route_rw(0, "s2-control1").await;
        ok &= self.route_rw(1, "s2-control2").await;
        self.result(
            ok,
            "2a stop s1: writes and reads succeed through the client and both control planes"
                .into(),
        );

        let leader = self.leader(&[1, 2]).await?;
        let survivor = if leader == 1 { 2 } else { 1 };
        self.members[leader].stop().await;
        println!(
            "stopped the leader {}; {} is alone",
            self.members[leader].name, self.members[survivor].name
        );
        let mut ok = true;
        // A request timeout above the store's own, so the error is the
        // store's answer ("etcdserver: no leader"), not the client giving up.
        let alone = self
            .client(&[survivor], Duration::from_secs(15), Duration::from_secs(5))
            .await?;
        let t = Instant::now();
        let refused = match tokio::time::timeout(
            Duration::from_secs(30),
            alone.put("/drill/s2/no-quorum", "x", PutOptions::default()),
        )
        .await
        {
            Err(_) => {
                println!("  a write without quorum hung for 30 s");
                ok = false;
                String::new()
            }
            Ok(Ok(_)) => {
                println!("  a write without quorum succeeded");
                ok = false;
                String::new()
            }
            Ok(Err(e)) => {
                println!("  write refused after {:?}: {e}", t.elapsed());
                format!("refused in {} ms", t.elapsed().as_millis())
            }
        };
        let serializable = GetOptions {
            serializable: true,
            ..Default::default()
        };
        match alone.get("/drill/s2/put-2", serializable).await {
            Ok(r) if r.kvs.first().map(|kv| kv.value.as_slice()) == Some(b"v2") => {}
            other => {
                println!("  serializable read on the survivor: {other:?}");
                ok = false;
            }
        }
        let (admin_ok, admin_took) = self.admin_writes_refused().await;
        ok &= admin_ok;
        self.result(
            ok,
            format!(
                "2b stop the leader too: writes refused (client {refused}; admin API via {admin_took}), serializable reads answer"
            ),
        );

        // 3: restart both; same HashKV at the same revision, nothing lost.
        self.start(0)?;
        self.start(leader)?;
        self.leader(&all).await?;
        for i in 0..self.controls.len() {
            self.control_ready(i).await?;
        }
        let mut ok = true;
        if let Err(e) = self.put_acked(&c, "/drill/s3/after-rejoin", "v1").await {
            println!("  write after rejoin: {e:#}");
            ok = false;
        }
        ok &= self.check(&c).await;
        self.result(
            ok,
            "3 restart: same HashKV at the same revision, no acknowledged write lost".into(),
        );

        // 4: SIGKILL the leader under a write load.
        let leader = self.leader(&all).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log: Arc<Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
        let load = {
            let c = self
                .client(&all, Duration::from_secs(2), Duration::from_secs(5))
                .await?;
            let (stop, log, acked) = (stop.clone(), log.clone(), self.acked.clone());
            tokio::spawn(async move {
                let end = Instant::now() + SLOW;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                    n += 1;
                    let key = format!("/drill/s4/{n:06}");
                    let s = Instant::now();
                    let r = c
                        .put(key.as_str(), n.to_string(), PutOptions::default())
                        .await;
                    if r.is_ok() {
                        acked.lock().unwrap().push((key, n.to_string()));
                    }
                    log.lock().unwrap().push((s, Instant::now(), r.is_ok()));
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while log.lock().unwrap().iter().filter(|e| e.2).count() < 20 {
            if Instant::now() > deadline {
                bail!("the write load made no progress");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed = Instant::now();
        self.members[leader].kill9().await;
        println!("SIGKILL {} (the leader)", self.members[leader].name);
        let recovered = loop {
            let first = log
                .lock()
                .unwrap()
                .iter()
                .find(|(s, _, ok)| *ok && *s >= killed)
                .map(|(_, e, _)| e.duration_since(killed));
            if let Some(d) = first {
                break Some(d);
            }
            if killed.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Keep writing a little longer on the two survivors.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.await?;
        self.start(leader)?;
        self.leader(&all).await?;
        let writes = log.lock().unwrap().len();
        let mut ok = recovered.is_some();
        match recovered {
            Some(d) => println!(
                "writes succeeded again {} ms after the SIGKILL",
                d.as_millis()
            ),
            None => println!("  no write succeeded within 30 s of the SIGKILL"),
        }
        ok &= self.check(&c).await;
        self.result(
            ok,
            format!(
                "4 kill -9 the leader under load: acknowledged writes survive (writes again after {} ms; {writes} writes)",
                recovered.map_or("?".into(), |d| d.as_millis().to_string())
            ),
        );
        Ok(())
    }

    /// All members at one revision with the same HashKV there, and every
    /// acknowledged write readable (linearizably) with its value.
    async fn check(&self, c: &Client) -> bool {
        let mut ok = true;
        match self.same_hash().await {
            Ok(line) => println!("  {line}"),
            Err(e) => {
                println!("  {e:#}");
                ok = false;
            }
        }
        let acked = self.acked.lock().unwrap().clone();
        let got = match c
            .get(
                "/drill/",
                GetOptions {
                    range: KeyRange::Prefix,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                println!("  reading /drill/: {e}");
                return false;
            }
        };
        let have: std::collections::HashMap<&[u8], &[u8]> = got
            .kvs
            .iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
            .collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(k, v)| have.get(k.as_bytes()) != Some(&v.as_bytes()))
            .map(|(k, _)| k)
            .collect();
        println!(
            "  {} acknowledged writes checked, {} missing or wrong{}",
            acked.len(),
            missing.len(),
            missing
                .first()
                .map_or(String::new(), |k| format!(" (first: {k})"))
        );
        // Routes written through the admin API: their keys are there.
        let routes = match c
            .get(
                "/apisix/routes/",
                GetOptions {
                    keys_only: true,
                    ..GetOptions::prefix()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                println!("  reading /apisix/routes/: {e}");
                return false;
            }
        };
        let keys: std::collections::HashSet<&[u8]> =
            routes.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        let lost: Vec<&String> = self
            .acked_routes
            .iter()
            .filter(|id| !keys.contains(format!("/apisix/routes/{id}").as_bytes()))
            .collect();
        println!(
            "  {} routes written through the admin API checked, {} missing{}",
            self.acked_routes.len(),
            lost.len(),
            lost.first()
                .map_or(String::new(), |k| format!(" (first: {k})"))
        );
        ok && missing.is_empty() && lost.is_empty()
    }

    async fn same_hash(&self) -> Result<String> {
        let all = [0, 1, 2];
        let c = self
            .client(&all, Duration::from_secs(2), Duration::ZERO)
            .await?;
        let deadline = Instant::now() + SLOW;
        let rev = loop {
            let mut revs = Vec::new();
            for m in &self.members {
                if let Ok(st) = c.status(&m.client_url).await {
                    revs.push(st.header.map_or(0, |h| h.revision));
                }
            }
            if revs.len() == 3 && revs.iter().all(|r| *r == revs[0]) {
                break revs[0];
            }
            if Instant::now() > deadline {
                bail!("members did not reach one revision: {revs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut hashes = Vec::new();
        for m in &self.members {
            let h = c
                .hash_kv(&m.client_url, rev)
                .await
                .map_err(|e| anyhow!("hashkv of {}: {e}", m.name))?;
            hashes.push(h.hash);
        }
        if hashes.iter().any(|h| *h != hashes[0]) {
            bail!("HashKV differs at revision {rev}: {hashes:?}");
        }
        Ok(format!(
            "revision {rev}: HashKV {} on all three members",
            hashes[0]
        ))
    }
}
