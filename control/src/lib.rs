//! `cairn-control`: the control plane (`cairn control`), an APISIX Admin
//! API compatible HTTP API and a web console in front of the Cairn store.
//! Stateless: run several behind any load balancer.
//!
//! Modules, in layers: each imports only from the layers above it, or from
//! a module listed before it in its own layer, so dependencies point one way
//! and nothing imports the crate root (this file wires the router).
//!
//! 1. Leaves, importing nothing of the crate:
//!    - [`config`]: flags, the YAML config file, resolved [`config::Settings`], roles.
//!    - [`error`]: [`error::ApiError`], APISIX-shaped error bodies.
//!    - [`resources`]: the table of Admin API resources (one row per resource).
//!    - [`patch`]: JSON merge patches (PATCH, audit revert patches).
//!    - [`x509`]: certificate validity and key matching for SSL checks.
//!    - [`crypto`]: SHA-256, hex, constant-time compare, random tokens.
//!    - [`clock`]: the wall clock as records and sessions stamp it.
//!    - [`limit`]: the rate limiter of logins and wrong API keys.
//!    - [`metrics`]: the Prometheus registry of request counts and latencies.
//! 2. The store, the rules, the keys:
//!    - [`store`]: the only path to the store (`cairn-client`, every endpoint);
//!      the write txn that checks the revision and appends the audit record.
//!    - [`validate`]: field rules, JSON Schemas (`schemas/*.json`, after APISIX's
//!      `schema_def.lua`), known plugins and the common plugins' schemas.
//!    - [`keys`]: the accepted API keys and shared secrets, and their bootstrap.
//! 3. [`state`]: [`AppState`], what every handler shares, built from layers 1–2.
//! 4. Services over the state:
//!    - [`ids`]: resource lookup by name, id rules, store keys of items.
//!    - [`secrets`]: secret fields decrypted on read, encrypted on write
//!      (APISIX's `data_encryption`, crate `cairn-apisix`), shown as fingerprints.
//!    - [`session`]: console session cookies: issue, verify, revoke.
//!    - [`refs`]: the reference index behind the in-use check of a delete.
//!    - [`audit`]: audit records (keyed per resource) and the audit log endpoint.
//!    - [`auth`]: who is calling (API key or session), roles, the middleware.
//! 5. Handlers:
//!    - [`admin`]: the one generic handler for every resource: list, get, put,
//!      post, patch, delete, history, rollback (its own map of submodules).
//!    - [`openapi`]: `/openapi.json`, built from the resource table.
//!    - [`plugins`]: the plugin catalog (`/apisix/admin/plugins/list`, schemas).
//!    - [`console`]: the embedded web console, login/logout.
//!    - [`cluster`]: store member status for the console.
//!    - [`gateways`]: the gateways' registrations and sync state.
//!    - [`retention`]: audit log pruning by one instance under a leased key.
//!    - [`health`]: `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod crypto;
pub mod error;
pub mod gateways;
pub mod health;
pub mod ids;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod plugins;
pub mod refs;
pub mod resources;
pub mod retention;
pub mod secrets;
pub mod session;
pub mod state;
pub mod store;
pub mod validate;
pub mod x509;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use config::{ControlArgs, Settings};
pub use state::AppState;

/// APISIX's Admin API body limit.
const BODY_LIMIT: usize = 1536 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let authed = Router::new()
        .route("/apisix/admin/schema/{resource}", get(admin::schema))
        .route("/apisix/admin/schema/plugins/{name}", get(plugins::schema))
        .route("/apisix/admin/plugins/list", get(plugins::list))
        .route("/apisix/admin/plugins/{name}", get(plugins::schema))
        .route(
            "/apisix/admin/{resource}",
            get(admin::collection)
                .post(admin::collection)
                .put(admin::collection),
        )
        .route(
            "/apisix/admin/{resource}/{*rest}",
            get(admin::item)
                .put(admin::item)
                .post(admin::item)
                .patch(admin::item)
                .delete(admin::item),
        )
        .route("/api/session", get(console::whoami))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/gateways", get(gateways::list))
        .route("/api/audit", get(audit::list))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        // APISIX 3's Admin API says which shape it answers in.
        .layer(axum::middleware::map_response(
            |mut r: axum::response::Response| async move {
                r.headers_mut()
                    .insert("x-api-version", axum::http::HeaderValue::from_static("v3"));
                r
            },
        ));
    Router::new()
        .merge(authed)
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/style.css", get(console::style))
        .route("/login", post(console::login))
        .route("/logout", post(console::logout))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            health::track,
        ))
        .with_state(state)
}

/// `cairn control`.
pub async fn run(args: ControlArgs) -> Result<()> {
    if args.hash_password {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        println!(
            "{}",
            console::hash_password(line.trim_end_matches(['\r', '\n']))?
        );
        return Ok(());
    }
    let settings = Settings::resolve(&args)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let state = AppState::connect(settings).await?;
    serve(state, listener).await
}

/// Serves on `listener` until Ctrl-C or SIGTERM; the secrets bootstrap runs
/// in the background (until it is done, only configured keys are accepted).
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener) -> Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(
        "control plane on http://{addr} (console at /, admin API at /apisix/admin/), store {}",
        state.settings.endpoints.join(",")
    );
    if state.settings.default_keyring {
        tracing::warn!("data_encryption: using APISIX's default keyring, which is public; set data_encryption.keyring in the config file");
    }
    let s = state.clone();
    tokio::spawn(async move { s.keys.bootstrap(&s.settings, &s.store).await });
    let name = format!("{addr}/{}", crypto::random_token().get(..8).unwrap_or("0"));
    tokio::spawn(retention::run(state.clone(), name));
    let s = state.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = refs::build_once(&s).await {
            tracing::warn!("reference index: {:?}", e.body);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // The console's pages and assets are bursts of tens of KiB: the same
    // socket settings as the store's client port (no BBR on loopback).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| cairn_client::tcp::tune(tcp));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("http server")
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
