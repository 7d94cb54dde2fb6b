//! `cairn up`: a three-node store on this machine, as three child processes
//! of this same binary, the control plane on port 9000, a gateway on 9080
//! and an echo upstream for it, for a first try. Ctrl-C stops them all.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::process::{Child, Command};

use crate::topology::{CONTROL_PORT, ECHO_PORT, GATEWAY_PORTS, NODES};

#[derive(Args)]
pub struct UpArgs {
    /// Where the three data dirs go.
    #[arg(long, default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// Address to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Run the HA drill (scenarios 1-4 of compose/ha-drill.sh) against fresh
    /// local processes on these ports instead, then stop (see `drill`).
    #[arg(long)]
    drill: bool,
}

pub async fn run(args: UpArgs) -> Result<()> {
    if args.drill {
        return crate::drill::run(&args.data_dir, &args.host).await;
    }
    let extra: Vec<u16> = [CONTROL_PORT, ECHO_PORT]
        .into_iter()
        .chain(GATEWAY_PORTS)
        .collect();
    for (_, client, peer) in NODES {
        for port in [client, peer].into_iter().chain(extra.iter().copied()) {
            if std::net::TcpListener::bind((args.host.as_str(), port)).is_err() {
                bail!("port {port} on {} is already in use: stop whatever listens there (another etcd or cairn?)", args.host);
            }
        }
    }
    let exe = std::env::current_exe().context("cannot find the cairn binary")?;
    let h = &args.host;
    let initial: Vec<String> = NODES
        .iter()
        .map(|(n, _, p)| format!("{n}=http://{h}:{p}"))
        .collect();
    let initial = initial.join(",");
    std::fs::create_dir_all(&args.data_dir)?;
    let mut children: Vec<Child> = Vec::new();
    for (name, client, peer) in NODES {
        let log = std::fs::File::create(args.data_dir.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg("store")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(args.data_dir.join(name))
            .args(["--listen-client-urls", &format!("http://{h}:{client}")])
            .args(["--advertise-client-urls", &format!("http://{h}:{client}")])
            .args(["--listen-peer-urls", &format!("http://{h}:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{h}:{peer}"),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start store {name}"))?;
        children.push(child);
    }
    let endpoints: Vec<String> = NODES
        .iter()
        .map(|(_, c, _)| format!("http://{h}:{c}"))
        .collect();
    // A fresh admin key each run, handed over in the environment (not argv,
    // which `ps` shows), so it can be printed here.
    let admin_key = cairn_control::auth::random_token();
    let control_log = std::fs::File::create(args.data_dir.join("control.log"))?;
    let control = Command::new(&exe)
        .arg("control")
        .args(["--listen", &format!("{h}:{CONTROL_PORT}")])
        .args(["--endpoints", &endpoints.join(",")])
        .env("CAIRN_ADMIN_KEY", &admin_key)
        .stdout(Stdio::null())
        .stderr(control_log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the control plane")?;
    children.push(control);
    let [gw_http, gw_tls, gw_metrics] = GATEWAY_PORTS;
    let gateway_log = std::fs::File::create(args.data_dir.join("gateway.log"))?;
    let gateway = Command::new(&exe)
        .arg("gateway")
        .args(["--endpoints", &endpoints.join(",")])
        .args(["--listen", &format!("{h}:{gw_http}")])
        .args(["--listen-tls", &format!("{h}:{gw_tls}")])
        .args(["--metrics", &format!("{h}:{gw_metrics}")])
        // No load balancer to leave here: Ctrl-C stops it at once.
        .args(["--drain", "0"])
        .stdout(Stdio::null())
        .stderr(gateway_log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the gateway")?;
    children.push(gateway);
    let echo_log = std::fs::File::create(args.data_dir.join("echo.log"))?;
    let echo = Command::new(&exe)
        .arg("echo")
        .args(["--listen", &format!("{h}:{ECHO_PORT}")])
        .stdout(Stdio::null())
        .stderr(echo_log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the echo upstream")?;
    children.push(echo);
    println!(
        "cairn: three store nodes starting (logs and data under {})",
        args.data_dir.display()
    );
    println!("  endpoints: {}", endpoints.join(","));
    println!(
        "  try:       etcdctl --endpoints={} put hello world",
        endpoints.join(",")
    );
    println!(
        "             etcdctl --endpoints={} endpoint status -w table",
        endpoints.join(",")
    );
    println!("  console:   http://{h}:{CONTROL_PORT}/ (sign in with the admin key)");
    println!("  admin API: curl -H 'X-API-KEY: {admin_key}' http://{h}:{CONTROL_PORT}/apisix/admin/routes");
    println!("  admin key: {admin_key}");
    println!("  gateway:   http://{h}:{gw_http} (metrics http://{h}:{gw_metrics}/apisix/prometheus/metrics), echo upstream on {h}:{ECHO_PORT}");
    println!("  a route:   curl -X PUT -H 'X-API-KEY: {admin_key}' http://{h}:{CONTROL_PORT}/apisix/admin/routes/1 -d '{{\"uri\":\"/get\",\"hosts\":[\"test.com\"],\"upstream\":{{\"nodes\":{{\"{h}:{ECHO_PORT}\":1}}}}}}'");
    println!("  through:   curl http://{h}:{gw_http}/get -H 'Host: test.com'");
    println!("Press Ctrl-C to stop.");

    let exited = async {
        loop {
            for (i, c) in children.iter_mut().enumerate() {
                if let Ok(Some(status)) = c.try_wait() {
                    return (i, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        (i, status) = exited => Some((i, status)),
    };
    for c in &children {
        if let Some(pid) = c.id() {
            // SIGTERM: each store shuts down cleanly and flushes.
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    if let Some((i, status)) = outcome {
        let (what, log) = match i.checked_sub(NODES.len()) {
            None => (format!("store {}", NODES[i].0), NODES[i].0),
            Some(0) => ("the control plane".to_string(), "control"),
            Some(1) => ("the gateway".to_string(), "gateway"),
            Some(_) => ("the echo upstream".to_string(), "echo"),
        };
        bail!(
            "{what} exited ({status}); see {}",
            args.data_dir.join(format!("{log}.log")).display()
        );
    }
    println!("cairn: stopped");
    Ok(())
}
