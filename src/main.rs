//! The `cairn` binary: parses flags and hands over to the crates.
//!
//! - `cairn store`: one member of the Raft store (`cairn-store`).
//! - `cairn control`: admin API and web console (`cairn-control`).
//! - `cairn gateway`: the APISIX-compatible data plane (`cairn-gateway`).
//! - `cairn echo`: a tiny upstream answering with the request (`cairn-gateway`).
//! - `cairn up`: a local three-node cluster for a first try (`up`); with
//!   `--drill`, the HA drill against local processes (`drill`); the ports
//!   both use are in `topology`.
//! - `cairn snapshot restore`: a data dir from a snapshot (`cairn_store::restore`).
//! - `cairn bench`: load generator for any etcd v3 cluster (`cairn-bench`).
//! - `cairn healthcheck URL`: GET, exit 0 on 2xx (compose health checks in a
//!   `scratch` image, which has no curl) (`healthcheck`).

mod drill;
mod healthcheck;
mod topology;
mod up;

/// glibc's malloc took about a fifth of a store member's CPU under write
/// load (its free-list upkeep: `_int_malloc`, `malloc_consolidate`); mimalloc's
/// thread-local free lists cut that. See bench/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on the arenas it commits up front,
/// so each first touch of a 4 KiB page brought in 2 MiB: a store member's peak
/// RSS after loading 20k keys was ~100 MiB; with THP off for the process it is
/// ~56 MiB, throughput unchanged. (mimalloc's own eager-commit option would
/// come too late: its first arena exists before `main`. The prctl also covers
/// mappings that already exist.)
///
/// mimalloc also keeps freed pages for 10 ms before returning them; returning
/// them at once took peak RSS after 100k keys from ~90 to ~80 MiB (etcd:
/// 150-180), throughput unchanged. `MIMALLOC_PURGE_DELAY` still overrides it.
fn tune_allocator() {
    // SAFETY: prctl with an integer flag; no pointers are passed.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // mi_option_purge_delay in mimalloc 2.x's `mi_option_t` (the version
    // libmimalloc-sys builds by default).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's runtime options; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    }
}

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Config store and control plane for API gateways"
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, global = true, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one member of the store (takes etcd's flags and ETCD_* variables).
    Store(Box<cairn_store::StoreConfig>),
    /// Run the control plane: APISIX-compatible admin API and web console.
    Control(cairn_control::ControlArgs),
    /// Run a gateway: APISIX-compatible data plane reading routes from the store.
    Gateway(cairn_gateway::GatewayArgs),
    /// Run a tiny upstream answering any path with the request as JSON (like httpbin /get).
    Echo(cairn_gateway::EchoArgs),
    /// Start a local three-node cluster as child processes.
    Up(up::UpArgs),
    /// Snapshots taken with `etcdctl snapshot save` against Cairn.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Load generator for any etcd v3 cluster (etcd's `benchmark` flags).
    Bench(cairn_bench::BenchArgs),
    /// GET a URL; exit 0 on a 2xx answer, 1 otherwise (for container health checks).
    Healthcheck(healthcheck::HealthcheckArgs),
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Create a data dir for a NEW cluster holding the snapshot's data
    /// (run once per member, with that member's flags).
    Restore(cairn_store::restore::RestoreArgs),
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},openraft=warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Store(cfg) => cairn_store::run(*cfg).await,
            Cmd::Control(args) => cairn_control::run(args).await,
            Cmd::Gateway(args) => cairn_gateway::run(args).await,
            Cmd::Echo(args) => cairn_gateway::run_echo(args).await,
            Cmd::Up(args) => up::run(args).await,
            Cmd::Snapshot(SnapshotCmd::Restore(args)) => {
                cairn_store::restore::restore(&args).await.map(|r| {
                    println!(
                        "restored {} into {}: revision {}, compacted at {}, member {:x} of new cluster {:x}",
                        args.file.display(),
                        r.data_dir.display(),
                        r.revision,
                        r.compact_revision,
                        r.member_id,
                        r.cluster_id
                    )
                })
            }
            Cmd::Bench(args) => cairn_bench::run(args).await,
            Cmd::Healthcheck(args) => healthcheck::run(args).await,
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
