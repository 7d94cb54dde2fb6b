//! Options for the client and for the typed KV calls.

use std::time::Duration;

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};

/// How the client talks to the cluster.
///
/// Defaults: `connect_timeout` 1 s (loopback/LAN members answer a TCP connect in
/// well under that; a dead host should not stall a call for long before failing
/// over), `request_timeout` 5 s (etcd's own proposal timeout is ~5 s with default
/// election settings, so a longer wait rarely helps), `retry_budget` 5 s (enough
/// to ride through a leader election while members say `etcdserver: no leader`),
/// `max_decoding_message_size` 64 MiB (etcd's request limit is 1.5 MiB, but a
/// range response is unbounded in etcd; 64 MiB covers realistic prefixes).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect timeout per endpoint. A connect that fails within it is a
    /// safe failover for any call (the request never left).
    pub connect_timeout: Duration,
    /// Deadline of one attempt on one endpoint, connecting included. Keep it
    /// above `connect_timeout`: a timeout is an unknown outcome for a mutation.
    pub request_timeout: Duration,
    /// How long a call keeps moving through members (with a short backoff after
    /// each full round) while failures are retryable.
    pub retry_budget: Duration,
    /// Largest response accepted.
    pub max_decoding_message_size: usize,
    /// Auth token sent as the `token` metadata header (etcd's header name) when set.
    pub token: Option<String>,
    /// User and password: the client authenticates before its first call and
    /// again whenever a member answers "invalid auth token" (tokens expire),
    /// as etcd's clientv3 does. Takes precedence over `token`.
    pub credentials: Option<Credentials>,
    /// TLS for `https://` endpoints (etcdctl's `--cacert`, `--cert`, `--key`).
    pub tls: Option<TlsOptions>,
}

/// PEM contents for TLS: the CA that signed the members' certificates, and
/// optionally this client's certificate and key (for `--client-cert-auth`).
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

impl TlsOptions {
    /// Reads the PEM files etcdctl's `--cacert`, `--cert` and `--key` name.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> std::io::Result<TlsOptions> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(TlsOptions {
            ca_pem: read(ca)?,
            cert_pem: cert.map(read).transpose()?,
            key_pem: key.map(read).transpose()?,
        })
    }

    pub(crate) fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let (Some(cert), Some(key)) = (&self.cert_pem, &self.key_pem) {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsOptions")
            .field("client_cert", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A store user and password (etcd's `--user name:password`).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(5),
            max_decoding_message_size: 64 * 1024 * 1024,
            token: None,
            credentials: None,
            tls: None,
        }
    }
}

/// Options of [`crate::Client::put`]; fields map 1:1 to etcd's `PutRequest`.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// Which keys a get or delete covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyRange {
    /// Just the key (empty `range_end`).
    #[default]
    Key,
    /// Every key starting with the key (`range_end` = [`crate::prefix_end`]).
    Prefix,
    /// Every key >= the key (`range_end` = `"\0"`).
    FromKey,
    /// Keys in `[key, range_end)` (an explicit etcd `range_end`).
    RangeEnd(Vec<u8>),
}

impl KeyRange {
    pub(crate) fn range_end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            KeyRange::Key => Vec::new(),
            KeyRange::Prefix => crate::prefix_end(key),
            KeyRange::FromKey => vec![0],
            KeyRange::RangeEnd(end) => end.clone(),
        }
    }
}

/// Options of [`crate::Client::get`]; fields map to etcd's `RangeRequest`.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub range: KeyRange,
    pub limit: i64,
    /// Read at this revision (0 = latest).
    pub revision: i64,
    /// Serve from the contacted member's local state (no leader round trip).
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Sort order and target; `None` = etcd's default (ascending by key).
    pub sort: Option<(SortOrder, SortTarget)>,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// The key-range constructors shared by options that select a range.
macro_rules! range_constructors {
    ($options:ident) => {
        impl $options {
            /// Every key with the given key as prefix.
            pub fn prefix() -> Self {
                Self {
                    range: KeyRange::Prefix,
                    ..Default::default()
                }
            }

            /// Every key >= the given key.
            pub fn from_key() -> Self {
                Self {
                    range: KeyRange::FromKey,
                    ..Default::default()
                }
            }

            /// Keys in `[key, range_end)`.
            pub fn range_end(end: impl Into<Vec<u8>>) -> Self {
                Self {
                    range: KeyRange::RangeEnd(end.into()),
                    ..Default::default()
                }
            }
        }
    };
}

range_constructors!(GetOptions);

/// Options of [`crate::Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub range: KeyRange,
    pub prev_kv: bool,
}

range_constructors!(DeleteOptions);

/// How a program reaches the store from its flags or config file, with the
/// rules `cairn control` and `cairn gateway` share: `--user` and
/// `--password` go together; `--cert`/`--key` need `--cacert`.
pub fn store_access(
    user: Option<String>,
    password: Option<String>,
    cacert: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> std::result::Result<(Option<Credentials>, Option<TlsOptions>), String> {
    let credentials = match (user, password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        (None, None) => None,
        _ => return Err("--user and --password (store auth) go together".into()),
    };
    let tls = match cacert {
        Some(ca) => Some(
            TlsOptions::from_files(ca, cert, key).map_err(|e| format!("store TLS files: {e}"))?,
        ),
        None if cert.is_some() || key.is_some() => {
            return Err("--cert/--key need --cacert (the CA of the store's certificates)".into())
        }
        None => None,
    };
    Ok((credentials, tls))
}
