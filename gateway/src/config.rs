//! Flags of `cairn gateway`, its YAML config file (the same keys), and the
//! settings both resolve to (a flag wins over the file, the file over the
//! default), as `cairn control` does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `cairn gateway` flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Store client URLs, comma-separated [default: http://127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Key prefix of the APISIX resources [default: /apisix].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Prefix of Cairn's own keys; the gateway registers itself under
    /// `<cairn-prefix>/gateways/<id>` [default: /cairn].
    #[arg(long)]
    pub cairn_prefix: Option<String>,
    /// HTTP listener (HTTP/1.1 and h2c) [default: 0.0.0.0:9080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// HTTPS listener, certificates from `ssls` by SNI [default: 0.0.0.0:9443].
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// Prometheus listener: `/apisix/prometheus/metrics` [default: 0.0.0.0:9091].
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Instance id in the registration [default: hostname-listen-port].
    #[arg(long)]
    pub id: Option<String>,
    /// Seconds between SIGTERM and the exit, during which `/readyz` answers
    /// 503 and requests are still served, so a load balancer takes this
    /// gateway out first [default: 2].
    #[arg(long)]
    pub drain: Option<f64>,
    /// YAML file with the same keys (store_user/store_password for the store login).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store user (etcd auth).
    #[arg(long, env = "CAIRN_STORE_USER")]
    pub user: Option<String>,
    /// Password of `--user`.
    #[arg(long, env = "CAIRN_STORE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// CA (PEM) of the store's certificates, for `https://` endpoints.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for stores started with `--client-cert-auth`.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// The YAML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub cairn_prefix: Option<String>,
    pub listen: Option<SocketAddr>,
    pub listen_tls: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub id: Option<String>,
    pub drain: Option<f64>,
    pub store_user: Option<String>,
    pub store_password: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// APISIX's `data_encryption`: the keyring secret plugin fields were
    /// encrypted with. Absent: APISIX's default keyring.
    pub data_encryption: Option<cairn_apisix::DataEncryptionConfig>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cairn_prefix: String,
    pub listen: SocketAddr,
    pub listen_tls: SocketAddr,
    pub metrics: SocketAddr,
    pub id: String,
    pub drain: Duration,
    pub store_credentials: Option<cairn_client::Credentials>,
    pub store_tls: Option<cairn_client::TlsOptions>,
    pub keyring: cairn_apisix::Keyring,
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().expect("built-in address")
}

impl Settings {
    pub fn resolve(args: &GatewayArgs) -> Result<Settings> {
        let file: FileConfig = match &args.config {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                serde_yaml_ng::from_str(&text).with_context(|| format!("config {}", p.display()))?
            }
        };
        let endpoints = if !args.endpoints.is_empty() {
            args.endpoints.clone()
        } else if !file.endpoints.is_empty() {
            file.endpoints
        } else {
            vec!["http://127.0.0.1:2379".to_string()]
        };
        let (prefix, cairn_prefix) = cairn_apisix::prefixes::resolve(
            args.prefix.clone().or(file.prefix),
            args.cairn_prefix.clone().or(file.cairn_prefix),
        )
        .map_err(anyhow::Error::msg)?;
        let (store_credentials, store_tls) = cairn_client::store_access(
            args.user.clone().or(file.store_user),
            args.password.clone().or(file.store_password),
            args.cacert.clone().or(file.cacert).as_deref(),
            args.cert.clone().or(file.cert).as_deref(),
            args.key.clone().or(file.key).as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let keyring = match &file.data_encryption {
            Some(d) => cairn_apisix::Keyring::from_config(d).context("data_encryption")?,
            None => cairn_apisix::Keyring::apisix_default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| default_addr("0.0.0.0:9080"));
        let id = match args.id.clone().or(file.id) {
            Some(id) => id,
            None => format!("{}-{}", hostname(), listen.port()),
        };
        if id.is_empty() || id.len() > 128 || id.contains('/') {
            bail!("--id {id:?}: 1-128 characters, no '/'");
        }
        let drain = args.drain.or(file.drain).unwrap_or(2.0);
        if !(0.0..=600.0).contains(&drain) {
            bail!("--drain {drain}: 0 to 600 seconds");
        }
        Ok(Settings {
            endpoints,
            prefix,
            cairn_prefix,
            listen,
            listen_tls: args
                .listen_tls
                .or(file.listen_tls)
                .unwrap_or_else(|| default_addr("0.0.0.0:9443")),
            metrics: args
                .metrics
                .or(file.metrics)
                .unwrap_or_else(|| default_addr("0.0.0.0:9091")),
            id,
            drain: Duration::from_secs_f64(drain),
            store_credentials,
            store_tls,
            keyring,
        })
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`; the static binary has no
/// libc resolver to ask).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let dir = std::env::temp_dir().join(format!("cairn-gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("gw.yaml");
        std::fs::write(
            &f,
            "prefix: /api7/c1/\nlisten: 127.0.0.1:1000\nmetrics: 127.0.0.1:1001\nid: g1\n",
        )
        .unwrap();
        let args = GatewayArgs {
            config: Some(f),
            listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.prefix, "/api7/c1");
        assert_eq!(s.listen.port(), 2000);
        assert_eq!(s.metrics.port(), 1001);
        assert_eq!(s.id, "g1");
        assert_eq!(s.cairn_prefix, "/cairn");
        let bad = GatewayArgs {
            prefix: Some("/a".into()),
            cairn_prefix: Some("/a/b".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&bad).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
