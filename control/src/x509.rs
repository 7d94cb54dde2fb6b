//! The few facts of a PEM certificate and private key the SSL checks need:
//! a certificate's validity period and public key, and whether a private key
//! (PKCS#8, PKCS#1 RSA or SEC1 EC) belongs to it. A small DER reader over
//! the fields used, not a general X.509 parser; keys are parsed by `ring`.

use base64::Engine;
use ring::signature::{self, KeyPair};

/// What the checks read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The subjectPublicKey bits (no unused-bits byte).
    pub public_key: Vec<u8>,
}

/// The DER bytes of the first PEM block labelled `label` (any label with
/// `None`), and the label found.
fn pem_block(pem: &str, label: Option<&str>) -> Result<(String, Vec<u8>), String> {
    let mut lines = pem.lines().map(str::trim);
    let begin = lines
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
        })
        .ok_or("no PEM block")?
        .to_string();
    if label.is_some_and(|want| want != begin) {
        return Err(format!(
            "expected a PEM {}, found {begin}",
            label.unwrap_or("")
        ));
    }
    let body: String = lines
        .take_while(|l| !l.starts_with("-----END "))
        .filter(|l| !l.contains(':'))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("bad base64 in PEM: {e}"))?;
    Ok((begin, der))
}

/// One DER element: (tag, contents, rest).
fn tlv(b: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "truncated DER".to_string();
    let (&tag, b) = b.split_first().ok_or_else(bad)?;
    let (&first, mut b) = b.split_first().ok_or_else(bad)?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return Err(bad());
        }
        let len = b[..n].iter().fold(0usize, |a, x| (a << 8) | *x as usize);
        b = &b[n..];
        len
    };
    if b.len() < len {
        return Err(bad());
    }
    Ok((tag, &b[..len], &b[len..]))
}

fn expect(b: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (t, c, rest) = tlv(b)?;
    if t != tag {
        return Err(format!("unexpected DER tag {t:#x}, wanted {tag:#x}"));
    }
    Ok((c, rest))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, c: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(c).map_err(|_| "bad time")?;
    // Digits only: the slicing below must never land inside a multi-byte char.
    if !s.is_ascii() {
        return Err("bad time".into());
    }
    let s = s.strip_suffix('Z').ok_or("time not in UTC")?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().map_err(|_| "bad time")?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().map_err(|_| "bad time")?, &s[4..]),
        _ => return Err("bad time".into()),
    };
    let n = |i: usize| -> Result<i64, String> {
        rest[i..i + 2]
            .parse::<i64>()
            .map_err(|_| "bad time".to_string())
    };
    let days = days_from_civil(year, n(0)?, n(2)?);
    Ok(days * 86400 + n(4)? * 3600 + n(6)? * 60 + n(8)?)
}

/// Parses a PEM certificate.
pub fn parse_cert(pem: &str) -> Result<Cert, String> {
    let (_, der) = pem_block(pem, Some("CERTIFICATE"))?;
    let (cert, _) = expect(&der, 0x30)?;
    let (tbs, _) = expect(cert, 0x30)?;
    let mut rest = tbs;
    // [0] version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (_, rest) = expect(rest, 0x02)?; // serial
    let (_, rest) = expect(rest, 0x30)?; // signature algorithm
    let (_, rest) = expect(rest, 0x30)?; // issuer
    let (validity, rest) = expect(rest, 0x30)?;
    let (_, rest) = expect(rest, 0x30)?; // subject
    let (spki, _) = expect(rest, 0x30)?;
    let (t1, c1, v) = tlv(validity)?;
    let (t2, c2, _) = tlv(v)?;
    let (_, spki) = expect(spki, 0x30)?; // algorithm
    let (bits, _) = expect(spki, 0x03)?;
    Ok(Cert {
        not_before: time(t1, c1)?,
        not_after: time(t2, c2)?,
        public_key: bits.get(1..).unwrap_or_default().to_vec(),
    })
}

/// The public key of a PEM private key, as a certificate carries it.
pub fn public_key_of(pem: &str) -> Result<Vec<u8>, String> {
    let (label, der) = pem_block(pem, None)?;
    match label.as_str() {
        "PRIVATE KEY" => {
            let rng = ring::rand::SystemRandom::new();
            for alg in [
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            ] {
                if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(alg, &der, &rng) {
                    return Ok(k.public_key().as_ref().to_vec());
                }
            }
            if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            signature::RsaKeyPair::from_pkcs8(&der)
                .map(|k| k.public_key().as_ref().to_vec())
                .map_err(|e| format!("unsupported or invalid PKCS#8 key: {e}"))
        }
        "RSA PRIVATE KEY" => signature::RsaKeyPair::from_der(&der)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| format!("invalid RSA key: {e}")),
        "EC PRIVATE KEY" => {
            // SEC1: SEQUENCE { version, privateKey, [0] params, [1] publicKey }.
            let (seq, _) = expect(&der, 0x30)?;
            let (_, mut rest) = expect(seq, 0x02)?;
            rest = expect(rest, 0x04)?.1;
            while !rest.is_empty() {
                let (tag, c, r) = tlv(rest)?;
                if tag == 0xa1 {
                    let (bits, _) = expect(c, 0x03)?;
                    return Ok(bits.get(1..).unwrap_or_default().to_vec());
                }
                rest = r;
            }
            Err("the EC key carries no public key".into())
        }
        other => Err(format!("not a private key: PEM {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate or key damaged any way (bytes flipped, cut, lengths
    /// changed) inside a well-formed PEM: parsed or refused, never a panic.
    #[test]
    fn damaged_pem_is_refused_not_a_panic() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
        };
        let cert = a.cert.der().to_vec();
        let key = a.key_pair.serialize_der();
        let mut x: u32 = 1;
        for case in 0..20_000u32 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let (label, src) = if case % 2 == 0 {
                ("CERTIFICATE", &cert)
            } else {
                ("PRIVATE KEY", &key)
            };
            let mut der = src.clone();
            let at = (x >> 8) as usize % der.len();
            match case % 4 {
                0 | 1 => der[at] ^= (x >> 24) as u8 | 1,
                2 => der.truncate(at),
                _ => der[at] = [0x00, 0x7f, 0x80, 0x84, 0xff][(x >> 24) as usize % 5],
            }
            let text = pem(label, &der);
            let _ = parse_cert(&text);
            let _ = public_key_of(&text);
        }
    }

    #[test]
    fn cert_facts_and_key_match() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let c = parse_cert(&a.cert.pem()).unwrap();
        // rcgen's defaults: 1975-01-01 (UTCTime) to 4096-01-01 (GeneralizedTime).
        assert_eq!((c.not_before, c.not_after), (157_766_400, 67_090_118_400));
        assert_eq!(
            public_key_of(&a.key_pair.serialize_pem()).unwrap(),
            c.public_key
        );
        assert_ne!(
            public_key_of(&b.key_pair.serialize_pem()).unwrap(),
            c.public_key
        );
        assert!(
            parse_cert("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err()
        );
        assert!(parse_cert("nonsense").is_err());
        assert!(
            public_key_of("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err()
        );
    }

    #[test]
    fn times() {
        assert_eq!(time(0x17, b"700101000000Z").unwrap(), 0);
        assert_eq!(time(0x18, b"20300101000000Z").unwrap(), 1_893_456_000);
        assert_eq!(time(0x17, b"491231235959Z").unwrap(), 2_524_607_999);
        // Twelve bytes, but not twelve digits: an error, never a panic.
        // (Twelve bytes before the Z; the first slice would split the é.)
        assert!(time(0x17, "7é010100000Z".as_bytes()).is_err());
        assert!(time(0x18, "200é010100000Z".as_bytes()).is_err());
    }
}
