//! TLS to clients: server certificates from the `ssls` resources, chosen by
//! SNI (exact names first, then wildcards `*.example.com`, longest first),
//! swapped in whenever `ssls` change. A handshake without SNI, or with one
//! no certificate covers, fails (APISIX does the same).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::state::Config;

#[derive(Default)]
struct SniMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `.example.com`.
    wild: Vec<(String, Arc<CertifiedKey>)>,
}

#[derive(Default)]
pub struct SniResolver {
    map: RwLock<Arc<SniMap>>,
    /// `Config::ssl_version` the map was built from (+1; 0 = never).
    built: AtomicU64,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

/// A certificate chain and its key from PEM.
pub fn certified_key(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert: {e}"))?;
    if certs.is_empty() {
        return Err("cert: no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

impl SniResolver {
    /// Rebuilds the map if `cfg`'s ssls changed since the last build.
    pub fn update(&self, cfg: &Config) {
        if self.built.load(Ordering::Acquire) == cfg.ssl_version + 1 {
            return;
        }
        let mut m = SniMap::default();
        for (id, ssl) in &cfg.ssls {
            if ssl.status == 0 || ssl.kind.as_deref() == Some("client") {
                continue;
            }
            let (Some(cert), Some(key)) = (&ssl.cert, &ssl.key) else {
                continue;
            };
            let ck = match certified_key(cert, key) {
                Ok(ck) => ck,
                Err(e) => {
                    tracing::error!(ssl = %id, error = %e, "ssl object unusable");
                    continue;
                }
            };
            for sni in ssl.snis() {
                let sni = sni.to_ascii_lowercase();
                match sni.strip_prefix('*') {
                    Some(suffix) => m.wild.push((suffix.to_string(), ck.clone())),
                    None => {
                        m.exact.insert(sni, ck.clone());
                    }
                }
            }
        }
        m.wild.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
        self.built.store(cfg.ssl_version + 1, Ordering::Release);
    }

    fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
        let sni = sni.to_ascii_lowercase();
        if let Some(k) = m.exact.get(&sni) {
            return Some(k.clone());
        }
        m.wild
            .iter()
            .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
            .map(|(_, k)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name()?)
    }
}

/// The acceptor for `--listen-tls` (h2 and http/1.1 by ALPN).
pub fn acceptor(resolver: Arc<SniResolver>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
