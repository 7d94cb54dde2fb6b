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
//! Before them, the gateway tier (`gateways.rs`): two gateways and an echo
//! upstream on `cairn up`'s ports and the second gateway's of compose. A
//! route written through control1 must be served by both (0a, the time is
//! printed); then steady traffic runs through them to the end, and each
//! scenario, starting with stopping gateway1 (0b), must fail none of it: the
//! gateways keep serving with a control plane, a store member, or the whole
//! quorum down. After the restart (3) a new route must reach both again.
//!
//! Every wait is bounded, and the whole drill gives up after [`DRILL_LIMIT`].
//! The data dir is removed when everything passed and kept (with the logs)
//! otherwise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::{Client, ClientOptions, PutOptions};

use crate::topology::{CONTROL_PORT, ECHO_PORT, GATEWAY_PORTS, NODES};

mod admin;
mod gateways;
mod member;
mod scenarios;

use admin::{http, route_body};
use gateways::{Mark, Traffic};
use member::Member;

/// Upper bound for anything that involves an election or a process start.
const SLOW: Duration = Duration::from_secs(60);

/// The whole drill, start to summary (it takes about half a minute).
const DRILL_LIMIT: Duration = Duration::from_secs(600);

/// The second control plane's port (as in compose/docker-compose.yaml).
const CONTROL2_PORT: u16 = 9001;

/// The second gateway's HTTP, HTTPS and metrics ports (as in compose).
const GATEWAY2_PORTS: [u16; 3] = [9081, 9444, 9092];

/// Bound of one admin API request. The control plane's store client gives up
/// after its retry budget (8 s) plus one request timeout (3 s), so a request
/// still unanswered after this has hung.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

struct Drill {
    exe: PathBuf,
    /// The three stores.
    members: Vec<Member>,
    /// control1 (:9000) and control2 (:9001).
    controls: Vec<Member>,
    /// gateway1 and gateway2, with their status URLs (`/readyz`).
    gateways: Vec<Member>,
    gateway_status: Vec<String>,
    /// The echo upstream and its `host:port`.
    echo: Member,
    echo_addr: String,
    /// Steady traffic through the gateways, once they serve its route.
    traffic: Option<Traffic>,
    admin_key: String,
    /// Writes the cluster acknowledged: (key, value).
    acked: Arc<Mutex<Vec<(String, String)>>>,
    /// Route ids the admin API acknowledged.
    acked_routes: Vec<String>,
    results: Vec<(bool, String)>,
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
        .chain([CONTROL_PORT, CONTROL2_PORT, ECHO_PORT])
        .chain(GATEWAY_PORTS)
        .chain(GATEWAY2_PORTS);
    for port in ports {
        if std::net::TcpListener::bind((host, port)).is_err() {
            bail!("port {port} on {host} is already in use: the drill uses `cairn up`'s ports, {CONTROL2_PORT} and {GATEWAY2_PORTS:?}; stop whatever listens there");
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
    let [tier1, tier2] = [("gateway1", GATEWAY_PORTS), ("gateway2", GATEWAY2_PORTS)].map(
        |(name, [http, tls, status])| {
            let gateway = Member {
                name,
                client_url: format!("http://{host}:{http}"),
                args: ["gateway", "--endpoints", endpoints.as_str()]
                    .into_iter()
                    .map(String::from)
                    .chain(["--listen".into(), format!("{host}:{http}")])
                    .chain(["--listen-tls".into(), format!("{host}:{tls}")])
                    .chain(["--metrics".into(), format!("{host}:{status}")])
                    .collect(),
                env: Vec::new(),
                log: dir.join(format!("{name}.log")),
                child: None,
            };
            (gateway, format!("http://{host}:{status}"))
        },
    );
    let echo_addr = format!("{host}:{ECHO_PORT}");
    let echo = Member {
        name: "echo",
        client_url: format!("http://{echo_addr}"),
        args: vec!["echo".into(), "--listen".into(), echo_addr.clone()],
        env: Vec::new(),
        log: dir.join("echo.log"),
        child: None,
    };
    let mut d = Drill {
        exe,
        members,
        controls,
        gateways: vec![tier1.0, tier2.0],
        gateway_status: vec![tier1.1, tier2.1],
        echo,
        echo_addr,
        traffic: None,
        admin_key,
        acked: Arc::default(),
        acked_routes: Vec::new(),
        results: Vec::new(),
    };
    println!(
        "cairn up --drill: three stores, two control planes (:{CONTROL_PORT}, :{CONTROL2_PORT}) and two gateways (:{}, :{}) on {host}, data and logs under {}",
        GATEWAY_PORTS[0],
        GATEWAY2_PORTS[0],
        dir.display()
    );
    let started = Instant::now();
    let outcome = match tokio::time::timeout(DRILL_LIMIT, d.scenarios()).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("the drill did not finish within {DRILL_LIMIT:?}")),
    };
    if let Some(t) = d.traffic.take() {
        t.stop().await;
    }
    let tier = d.gateways.iter_mut().chain([&mut d.echo]);
    for m in tier
        .chain(d.controls.iter_mut())
        .chain(d.members.iter_mut())
    {
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

/// Waits (at most [`SLOW`]) until `base`/readyz answers 200; `name` is
/// for the error.
async fn ready(base: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + SLOW;
    loop {
        let last = http(base, "GET", "/readyz", "", None).await;
        if matches!(last, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} not ready after {SLOW:?}: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drill {
    /// Where the gateway traffic stands (nothing before it starts).
    fn traffic_mark(&self) -> Mark {
        self.traffic.as_ref().map_or(Mark::ZERO, Traffic::mark)
    }

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
        ready(&c.client_url, c.name).await
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
}
