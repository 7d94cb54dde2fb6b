//! TLS on the client and peer ports (rustls), from etcd's flags.
//!
//! A port serves TLS when its URL is `https://`. `--cert-file`/`--key-file`
//! are what the member presents; with `--client-cert-auth` a client must
//! present a certificate signed by `--trusted-ca-file` or the handshake
//! fails. The peer flags (`--peer-*`) do the same for Raft traffic, and the
//! peer certificate is also what this member presents when it dials others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::StoreConfig;

/// The TLS files of one port.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_cert_auth: bool,
}

impl TlsFiles {
    pub fn client(cfg: &StoreConfig) -> TlsFiles {
        TlsFiles {
            cert: cfg.cert_file.clone(),
            key: cfg.key_file.clone(),
            ca: cfg.trusted_ca_file.clone(),
            client_cert_auth: cfg.client_cert_auth,
        }
    }

    pub fn peer(cfg: &StoreConfig) -> TlsFiles {
        TlsFiles {
            cert: cfg.peer_cert_file.clone(),
            key: cfg.peer_key_file.clone(),
            ca: cfg.peer_trusted_ca_file.clone(),
            client_cert_auth: cfg.peer_client_cert_auth,
        }
    }

    /// Certificate and key, required to serve `https://`.
    fn pair(&self, what: &str) -> Result<(&Path, &Path)> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok((c, k)),
            _ => bail!(
                "{what} URL is https:// but --{}cert-file and --{}key-file are not both set",
                prefix(what),
                prefix(what)
            ),
        }
    }
}

fn prefix(what: &str) -> &'static str {
    if what == "peer" {
        "peer-"
    } else {
        ""
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let all: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect();
    let all = all.with_context(|| format!("bad PEM certificate in {}", path.display()))?;
    if all.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(all)
}

/// The client port's rustls config: HTTP/2 (gRPC) and HTTP/1.1 (the JSON
/// gateway) by ALPN.
pub fn client_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let (cert, key) = files.pair("client")?;
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("bad PEM private key in {}", key.display()))?;
    let builder = ServerConfig::builder();
    let builder = if files.client_cert_auth {
        let ca = files
            .ca
            .as_ref()
            .context("--client-cert-auth needs --trusted-ca-file")?;
        let mut roots = RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).context("bad CA certificate")?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .context("client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The peer port's tonic TLS config.
pub fn peer_server_config(files: &TlsFiles) -> Result<ServerTlsConfig> {
    let (cert, key) = files.pair("peer")?;
    let mut c = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if files.client_cert_auth {
        let ca = files
            .ca
            .as_ref()
            .context("--peer-client-cert-auth needs --peer-trusted-ca-file")?;
        c = c.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(c)
}

/// How this member dials `https://` peers: it trusts `--peer-trusted-ca-file`
/// and presents its peer certificate (for `--peer-client-cert-auth`).
/// `None` when no peer CA is configured (then only `http://` peers work).
pub fn peer_client_config(files: &TlsFiles) -> Result<Option<ClientTlsConfig>> {
    let Some(ca) = &files.ca else {
        return Ok(None);
    };
    let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(c))
}
