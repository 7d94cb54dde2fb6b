//! A test PKI made with rcgen: a CA and a certificate for 127.0.0.1 that
//! members present on both ports and clients present to them.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::TestTls;

/// A CA, and a certificate for 127.0.0.1 it signed (server and client use).
pub struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

pub fn pki(name: &str) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "member");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn write(dir: &Path, name: &str, p: &Pki) -> TestTls {
    let files = TestTls {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, &p.ca_pem).unwrap();
    std::fs::write(&files.cert, &p.cert_pem).unwrap();
    std::fs::write(&files.key, &p.key_pem).unwrap();
    files
}

/// A fresh PKI for a cluster, written into `dir`.
pub fn write_pki(dir: &Path) -> TestTls {
    write(dir, "member", &pki("cairn test"))
}
