//! Flags of `cairn control`, the YAML config file, and the settings both
//! resolve to (a flag wins over the file, the file over the default).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `cairn control` flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ControlArgs {
    /// Address of the admin API and console [default: 0.0.0.0:9000].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store client URLs, comma-separated [default: http://127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Key prefix the data planes watch [default: /apisix].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Prefix of Cairn's own keys (admin key hash, session secret, audit log)
    /// [default: /cairn]. Keep it outside `--prefix`.
    #[arg(long)]
    pub cairn_prefix: Option<String>,
    /// Admin API key (role admin). Without one, the first instance generates
    /// a key, stores its hash in the store and prints it once.
    #[arg(long, env = "CAIRN_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// YAML file with the same settings plus console users and viewer keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store user (etcd auth); with `--password`, the control plane logs in
    /// and renews its token by itself.
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
    /// Read a password from stdin, print its argon2 hash (for `users` in the
    /// config file) and exit.
    #[arg(long)]
    pub hash_password: bool,
}

/// The YAML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub cairn_prefix: Option<String>,
    pub admin_key: Option<String>,
    /// Keys with role viewer (read-only).
    #[serde(default)]
    pub viewer_keys: Vec<String>,
    /// Secret that signs console sessions; every instance must share it.
    /// Without it, one is generated and kept in the store.
    pub session_secret: Option<String>,
    #[serde(default)]
    pub users: Vec<User>,
    /// Store user and password (etcd auth), as `--user` / `--password`.
    pub store_user: Option<String>,
    pub store_password: Option<String>,
    /// Store TLS files, as `--cacert` / `--cert` / `--key`.
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// APISIX's `data_encryption` (as in its `config.yaml`): the keyring that
    /// encrypts secret fields in the store. Absent: APISIX's default keyring.
    pub data_encryption: Option<cairn_apisix::DataEncryptionConfig>,
    /// Audit log retention.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Names of custom plugins the gateways run, accepted beside APISIX's.
    #[serde(default)]
    pub extra_plugins: Vec<String>,
}

/// `audit:` in the config file. The defaults keep the log far below the
/// store's quota (a record is a few hundred bytes plus the changed fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Records older than this are pruned [default: 30 days].
    pub max_age_secs: u64,
    /// At most this many records are kept, the oldest pruned first [default: 50000].
    pub max_records: u64,
    /// How often the pruning instance looks [default: 300 s].
    pub prune_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_age_secs: 30 * 24 * 3600,
            max_records: 50_000,
            prune_interval_secs: 300,
        }
    }
}

/// A console user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub username: String,
    /// An argon2 PHC string (`cairn control --hash-password`).
    pub password_hash: String,
    #[serde(default)]
    pub role: Role,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Admin,
    Viewer,
}

impl Role {
    /// As the config file, the session cookie and the answers spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cairn_prefix: String,
    pub admin_key: Option<String>,
    pub viewer_keys: Vec<String>,
    pub session_secret: Option<String>,
    pub users: Vec<User>,
    /// How the store is reached: auth credentials and TLS.
    pub store_credentials: Option<cairn_client::Credentials>,
    pub store_tls: Option<cairn_client::TlsOptions>,
    /// Encrypts and decrypts secret fields in the store (APISIX's `data_encryption`).
    pub keyring: cairn_apisix::Keyring,
    /// Whether the keyring is APISIX's public default (warned about at start).
    pub default_keyring: bool,
    pub audit: AuditConfig,
    pub extra_plugins: Vec<String>,
}

/// Shared secrets shorter than this are refused at start: they can be guessed.
pub const MIN_SECRET_LEN: usize = 16;

fn check_secret_len(what: &str, s: &str) -> Result<()> {
    if s.len() < MIN_SECRET_LEN {
        bail!("{what} is {} bytes; use at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom | base64`)", s.len());
    }
    Ok(())
}

impl Settings {
    pub fn resolve(args: &ControlArgs) -> Result<Settings> {
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
        for u in &file.users {
            if u.username.is_empty()
                || !u
                    .username
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                bail!("user name {:?}: use letters, digits and -_.@", u.username);
            }
            argon2::PasswordHash::new(&u.password_hash).map_err(|e| {
                anyhow::anyhow!(
                    "user {}: password_hash is not an argon2 PHC string: {e}",
                    u.username
                )
            })?;
        }
        let (store_credentials, store_tls) = cairn_client::store_access(
            args.user.clone().or(file.store_user),
            args.password.clone().or(file.store_password),
            args.cacert.clone().or(file.cacert).as_deref(),
            args.cert.clone().or(file.cert).as_deref(),
            args.key.clone().or(file.key).as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let admin_key = args
            .admin_key
            .clone()
            .or(file.admin_key)
            .filter(|k| !k.is_empty());
        if let Some(k) = &admin_key {
            check_secret_len("admin_key", k)?;
        }
        for k in &file.viewer_keys {
            check_secret_len("a viewer key", k)?;
        }
        if let Some(s) = &file.session_secret {
            check_secret_len("session_secret", s)?;
        }
        if file.audit.max_records == 0 || file.audit.prune_interval_secs == 0 {
            bail!("audit: max_records and prune_interval_secs must be at least 1");
        }
        let default_keyring = file
            .data_encryption
            .as_ref()
            .is_none_or(|d| d.keyring.is_none());
        let keyring =
            cairn_apisix::Keyring::from_config(&file.data_encryption.unwrap_or_default())?;
        for p in &file.extra_plugins {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                bail!("extra_plugins: {p:?} is not a plugin name (letters, digits, - and _)");
            }
        }
        Ok(Settings {
            keyring,
            default_keyring,
            audit: file.audit,
            extra_plugins: file.extra_plugins,
            admin_key,
            store_credentials,
            store_tls,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9000))),
            endpoints,
            prefix,
            cairn_prefix,
            viewer_keys: file.viewer_keys,
            session_secret: file.session_secret,
            users: file.users,
        })
    }
}
