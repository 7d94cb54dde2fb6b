//! `cairn store` configuration: etcd's own flags and `ETCD_*` environment
//! variables, so an etcd deployment (or etcd's docker line) works with the
//! binary swapped.

pub mod compaction;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Flags of `cairn store`; each also reads the `ETCD_*` variable etcd reads.
#[derive(Args, Debug, Clone)]
pub struct StoreConfig {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: `<name>.cairn`).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (gRPC and the HTTP/JSON gateway).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// Client URLs of this member as advertised to the cluster and clients.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,

    /// URLs to listen on for peer (Raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,

    /// Peer URLs of this member as advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration: `name=peer-url,name=peer-url,...`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to bootstrap a new cluster, `existing` to join one.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: ClusterState,

    /// Token that makes cluster and member IDs unique per cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Time (ms) of a heartbeat interval. openraft also uses it as the
    /// deadline of each heartbeat and leadership-confirmation round, so
    /// it must stay well above a follower's fsync time: raise it (and the
    /// election timeout) on slow disks or networks. See the README for how
    /// the default was measured.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 25)]
    pub heartbeat_interval: u64,

    /// Time (ms) without a heartbeat before a follower starts an election:
    /// it campaigns after 1.5 to 2 times this (etcd: 1 to 2 times).
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 150)]
    pub election_timeout: u64,

    /// Number of committed entries that trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Entries kept in the log behind a snapshot, so slow followers catch up
    /// from the log rather than a full snapshot (etcd 3.5's
    /// `--experimental-snapshot-catchup-entries`; etcd 3.4 keeps 5000).
    #[arg(long, env = "ETCD_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,

    /// Maximum client request size in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Interval (ms) of progress notifications to idle watches that asked
    /// for them (etcd: 10 minutes; a Cairn flag so tests need not wait that long).
    #[arg(
        long,
        env = "CAIRN_WATCH_PROGRESS_NOTIFY_INTERVAL_MS",
        default_value_t = 600_000,
        hide = true
    )]
    pub watch_progress_notify_interval_ms: u64,

    /// How often revision-mode auto compaction checks (etcd: 5 minutes);
    /// tests shorten it.
    #[arg(
        long,
        env = "CAIRN_REVISION_COMPACTION_INTERVAL_MS",
        default_value_t = 300_000,
        hide = true
    )]
    pub revision_compaction_interval_ms: u64,

    /// `periodic` (keep a duration of history) or `revision` (keep N revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// History to keep: in periodic mode hours (or a duration like `30m`), in
    /// revision mode a count. `0` disables auto compaction (etcd's default).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Raise the NOSPACE alarm when the data dir exceeds this many bytes
    /// (0: etcd's default, 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// Most watches one watch stream may hold (a create beyond it is
    /// canceled with a reason saying so); their keys together may take at
    /// most 16 MiB. etcd has no such limit: clientv3 puts every watch of a
    /// client on one stream, so raise it for a client with more.
    #[arg(long, env = "CAIRN_MAX_WATCHES_PER_STREAM", default_value_t = 10_000)]
    pub max_watches_per_stream: usize,

    /// Bytes of client requests taken in at once, all connections together
    /// (README, "Limits under hostile and heavy input"): a request that does
    /// not fit waits its turn, unread. etcd has no such bound.
    #[arg(
        long,
        env = "CAIRN_MAX_REQUEST_BYTES_IN_FLIGHT",
        default_value_t = 256 << 20
    )]
    pub max_request_bytes_in_flight: usize,

    /// Maximum number of operations per txn.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Token kind. Accepted for etcd compatibility: Cairn always issues
    /// signed tokens that every member accepts (see the README's auth section).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Seconds an auth token stays valid after it is issued.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// Certificate (PEM) this member presents on its client port (`https://` URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of `--cert-file`.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// CA bundle (PEM) that client certificates are checked against.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate signed by `--trusted-ca-file`.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub client_cert_auth: bool,

    /// Certificate (PEM) this member presents on its peer port (`https://` URLs).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of `--peer-cert-file`.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// CA bundle (PEM) that peer certificates are checked against.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require a peer certificate signed by `--peer-trusted-ca-file`.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_client_cert_auth: bool,
}

/// `--initial-cluster-state`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Every `ETCD_*` variable `cairn store` understands; others are warned about.
pub const KNOWN_ENV: &[&str] = &[
    "ETCD_NAME",
    "ETCD_DATA_DIR",
    "ETCD_LISTEN_CLIENT_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_CLUSTER_STATE",
    "ETCD_INITIAL_CLUSTER_TOKEN",
    "ETCD_HEARTBEAT_INTERVAL",
    "ETCD_ELECTION_TIMEOUT",
    "ETCD_SNAPSHOT_COUNT",
    "ETCD_SNAPSHOT_CATCHUP_ENTRIES",
    "ETCD_MAX_REQUEST_BYTES",
    "ETCD_MAX_TXN_OPS",
    "ETCD_QUOTA_BACKEND_BYTES",
    "ETCD_AUTO_COMPACTION_MODE",
    "ETCD_AUTO_COMPACTION_RETENTION",
    "ETCD_AUTH_TOKEN",
    "ETCD_AUTH_TOKEN_TTL",
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_CLIENT_CERT_AUTH",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
    "ETCD_PEER_CLIENT_CERT_AUTH",
];

/// `ETCD_*` variables present in the environment that Cairn does not read.
pub fn unknown_env_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("ETCD_") && !KNOWN_ENV.contains(&k.as_str()))
        .collect()
}

impl StoreConfig {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name)))
    }

    pub fn advertise_peer_urls(&self) -> Vec<String> {
        split_urls(&self.initial_advertise_peer_urls)
    }

    pub fn advertise_client_urls(&self) -> Vec<String> {
        split_urls(&self.advertise_client_urls)
    }

    /// The initial cluster as name → sorted peer URLs. Without
    /// `--initial-cluster`, this member alone (as etcd's default).
    pub fn initial_members(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match &self.initial_cluster {
            None => {
                members.insert(self.name.clone(), self.advertise_peer_urls());
            }
            Some(s) => {
                for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let Some((name, url)) = part.split_once('=') else {
                        bail!("--initial-cluster: `{part}` is not name=url");
                    };
                    check_url(url).with_context(|| format!("--initial-cluster member {name}"))?;
                    members
                        .entry(name.to_string())
                        .or_default()
                        .push(url.to_string());
                }
            }
        }
        for urls in members.values_mut() {
            urls.sort();
        }
        if !members.contains_key(&self.name) {
            bail!(
                "couldn't find local name {:?} in the initial cluster configuration {:?}",
                self.name,
                self.initial_cluster.as_deref().unwrap_or("")
            );
        }
        Ok(members)
    }

    /// Checks flags that etcd also refuses before starting.
    pub fn validate(&self) -> Result<()> {
        for u in split_urls(&self.listen_client_urls)
            .iter()
            .chain(split_urls(&self.listen_peer_urls).iter())
            .chain(self.advertise_peer_urls().iter())
            .chain(self.advertise_client_urls().iter())
        {
            check_url(u)?;
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            bail!(
                "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        compaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.initial_cluster_state == ClusterState::New {
            let mine = self.initial_members()?;
            let mut adv = self.advertise_peer_urls();
            adv.sort();
            if mine[&self.name] != adv {
                bail!(
                    "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                    self.name,
                    mine[&self.name].join(","),
                    adv.join(",")
                );
            }
        }
        Ok(())
    }
}

pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

fn check_url(u: &str) -> Result<()> {
    let parsed = url::Url::parse(u).with_context(|| format!("invalid URL {u:?}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        bail!("URL scheme must be http or https: {u:?}");
    }
    if parsed.host_str().is_none() || parsed.port_or_known_default().is_none() {
        bail!("URL must have a host and port: {u:?}");
    }
    Ok(())
}

/// `host:port` of an `http://host:port` URL, for binding and dialing.
pub fn host_port(u: &str) -> Result<String> {
    let parsed = url::Url::parse(u).with_context(|| format!("invalid URL {u:?}"))?;
    let host = parsed.host_str().context("URL has no host")?;
    let port = parsed.port_or_known_default().context("URL has no port")?;
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}
