//! `cairn-gateway`: the data plane (`cairn gateway`), an APISIX-compatible
//! API gateway fed by the store, and `cairn echo`, a tiny upstream.
//!
//! Layers, each using only those above it:
//! - [`config`]: flags, the YAML file, resolved settings.
//! - `cidr`, `vars`: addresses and blocks; nginx variables and `vars` expressions.
//! - `resources`: the APISIX resources as read from the store.
//! - `router`: `radixtree_host_uri` matching, changed incrementally.
//! - `connect`, `health`, `upstream`, `probes`: the upstream connector
//!   (TCP, TLS), health-check rules (active and passive), node choice, and
//!   the task that probes an upstream's nodes.
//! - `h1`, `pool`: HTTP/1.1 to upstreams as bytes (heads written and
//!   parsed, body framing), and the keep-alive connections per upstream,
//!   serving thread and node, read and written by the request's own task.
//! - `pages`: the gateway's own answers (the 404 JSON, nginx's error pages,
//!   JSON bodies).
//! - `plugins`: the plugin trait, sets and merges, each plugin.
//! - `state`: the served [`state::Config`] (resources parsed, routes compiled).
//! - `shared`, `metrics`: what tasks share; Prometheus text.
//! - `sync`: range + watch of the prefix into `state`; `register`: the
//!   gateway's registration under the control plane's prefix.
//! - `request`, `proxy`, `guarded`: one request's context, the upstream
//!   call, panics turned into 500s.
//! - `listener`, `tls`, `server`: accept loops, certificates by SNI, and
//!   the request pipeline; `drain`: the clean stop on SIGTERM.
//! - [`echo`]: `cairn echo`.

pub mod config;
pub mod echo;

mod cidr;
mod connect;
mod drain;
mod guarded;
mod h1;
mod health;
mod listener;
mod metrics;
mod pages;
mod plugins;
mod pool;
mod probes;
mod proxy;
mod register;
mod resources;
mod router;
mod server;
mod shared;
mod state;
mod sync;
mod tls;
mod upstream;
mod vars;

use std::sync::Arc;

use anyhow::Context as _;
use cairn_client::{Client, ClientOptions};
use hyper::{Request, Response};

pub use config::GatewayArgs;
pub use echo::EchoArgs;

use crate::listener::{full, Body};
use crate::shared::Shared;

/// Runs `cairn gateway` until the process ends.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let s = config::Settings::resolve(&args)?;
    let opts = ClientOptions {
        credentials: s.store_credentials.clone(),
        tls: s.store_tls.clone(),
        ..ClientOptions::default()
    };
    let client = Client::connect(s.endpoints.clone(), opts)
        .await
        .context("store endpoints")?;
    let shared = Arc::new(Shared::new(
        s.prefix.clone(),
        s.keyring.clone(),
        metrics::Metrics::new(config::hostname()),
    ));
    // Fails early with a clear error when the port is taken; the serving
    // threads then bind it again with SO_REUSEPORT.
    let http = listener::bind(s.listen, "--listen").await?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    upstream::set_workers(workers);
    let https = listener::bind(s.listen_tls, "--listen-tls").await?;
    let metrics_l = listener::bind(s.metrics, "--metrics").await?;
    tokio::spawn(sync::run(client.clone(), shared.clone()));
    let me = register::Identity::new(&s.cairn_prefix, &s.id, s.listen);
    let registration = register::Registration::start(client.clone(), shared.clone(), me);
    let m = shared.clone();
    tokio::spawn(listener::serve(
        metrics_l,
        None,
        None,
        None,
        move |req, _| {
            let m = m.clone();
            async move { status_api(&m, &req) }
        },
    ));
    tracing::info!(plugins = ?plugins::SUPPORTED, "plugins implemented");
    tracing::info!(listen = %s.listen, listen_tls = %s.listen_tls, metrics = %s.metrics, prefix = %s.prefix, id = %s.id, "cairn gateway started");
    let acceptor = tls::acceptor(shared.sni.clone());
    let conns = Some(shared.metrics.connections_active.clone());
    // Both client listeners run on one thread per core, each with its own
    // current-thread runtime and SO_REUSEPORT sockets (the kernel spreads
    // connections), so a request and its upstream connection stay on one
    // thread: the multi-threaded scheduler's wake-ups across threads were
    // most of the proxying cost.
    drop((http, https));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    for w in 0..workers {
        let worker = Worker {
            index: w,
            http: s.listen,
            https: s.listen_tls,
            acceptor: acceptor.clone(),
            shared: shared.clone(),
            conns: conns.clone(),
        };
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("gateway-{w}"))
            .spawn(move || worker.run(ready))
            .context("cannot start a serving thread")?;
    }
    drop(ready_tx);
    for _ in 0..workers {
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("a serving thread ended before it was listening"))??;
    }
    drain::signalled().await;
    drain::drain(&shared, s.drain).await;
    registration.withdraw().await;
    Ok(())
}

/// One request on a client listener.
async fn serve_one(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
    peer: listener::Peer,
) -> Response<Body> {
    let version = req.version();
    // Boxed: hyper keeps the service's future inline and moves it a few
    // times per request; the handler's state machine is kilobytes.
    let mut r = Box::pin(server::handle(shared.clone(), req, peer)).await;
    drain::close_if_draining(&shared, version, &mut r);
    r
}

/// One serving thread: a current-thread runtime with its own sockets on
/// both client listeners.
struct Worker {
    index: usize,
    http: std::net::SocketAddr,
    https: std::net::SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    conns: Option<Arc<std::sync::atomic::AtomicI64>>,
}

impl Worker {
    /// Serves until the process ends; reports on `ready` once listening.
    fn run(self, ready: std::sync::mpsc::Sender<anyhow::Result<()>>) {
        upstream::enter_worker(self.index);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("serving thread {}: {e}", self.index)));
                return;
            }
        };
        rt.block_on(async move {
            let bound = reuseport(self.http, "--listen")
                .and_then(|h| Ok((h, reuseport(self.https, "--listen-tls")?)));
            let (http, https) = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let close = Some(self.shared.closing.clone());
            let serve = |l, tls| {
                let shared = self.shared.clone();
                listener::serve(
                    l,
                    tls,
                    self.conns.clone(),
                    close.clone(),
                    move |req, peer| serve_one(shared.clone(), req, peer),
                )
            };
            tokio::join!(serve(http, None), serve(https, Some(self.acceptor.clone())));
        });
    }
}

/// A listening socket on `addr` that other serving threads share
/// (SO_REUSEPORT).
fn reuseport(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = || {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr)?;
        sock.listen(1024)
    };
    listen().map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}

/// The metrics listener: Prometheus text and readiness.
fn status_api<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/apisix/prometheus/metrics" => {
            let mut text = shared.metrics.render();
            text.push_str(
                &shared
                    .metrics
                    .upstream_status(&shared.config(), &shared.prefix),
            );
            (200, "text/plain; version=0.0.4", text)
        }
        "/readyz" | "/status/ready" => {
            if shared.draining() {
                (
                    503,
                    "application/json",
                    r#"{"status":"error","error":"shutting down"}"#.to_string(),
                )
            } else if shared.ready() {
                (200, "application/json", r#"{"status":"ok"}"#.to_string())
            } else {
                (
                    503,
                    "application/json",
                    r#"{"status":"error","error":"config not loaded yet"}"#.to_string(),
                )
            }
        }
        "/healthz" | "/status" => (200, "application/json", r#"{"status":"ok"}"#.to_string()),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// Runs `cairn echo`.
pub async fn run_echo(args: EchoArgs) -> anyhow::Result<()> {
    // A test upstream has nothing to drain: it stops at once.
    tokio::select! {
        r = echo::run(args) => r,
        _ = drain::signalled() => Ok(()),
    }
}
