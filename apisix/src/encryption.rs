//! APISIX's `data_encryption`: secret fields are stored as
//! `base64(AES-CBC(value))` with a keyring of 16-byte (AES-128) or 32-byte
//! (AES-256) keys, each key also serving as its own IV (its first 16 bytes),
//! PKCS#7 padding. This is what `apisix/core/data_encryption.lua` does through
//! lua-resty-string's `resty.aes` (OpenSSL EVP), so the same keyring gives the
//! same bytes: a gateway (APISIX or `cairn gateway`) reads what Cairn wrote and
//! Cairn reads what APISIX's Admin API wrote.
//!
//! - Encryption uses the first key; decryption tries every key in order, so a
//!   rotation is: put the new key first, keep the old ones after it until every
//!   value has been written again (see the README).
//! - A value that does not decrypt with any key is, as in APISIX, taken to be
//!   stored in clear text: [`Keyring::decrypt_field`] reports it and the caller
//!   keeps the value as it is.
//! - With an empty keyring (`keyring: []` is refused by APISIX's CLI, but
//!   `enable_encrypt_fields: false` turns plugin fields off) values pass through.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// APISIX's default keyring (`apisix/cli/config.lua`): what an APISIX with an
/// untouched `config.yaml` uses. It is public, so it hides values from a
/// casual look at the store, nothing more: configure your own.
pub const APISIX_DEFAULT_KEYRING: [&str; 2] = ["qeddd145sfvddff3", "edd1c9f0985e76a2"];

/// The `data_encryption` section, as in APISIX's `config.yaml`
/// (`apisix.data_encryption`): `keyring` is one key or a list of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataEncryptionConfig {
    /// Whether plugin `encrypt_fields` are encrypted (default true, as APISIX).
    /// SSL keys and `upstream.tls.client_key` are encrypted whenever there is
    /// a keyring, as in APISIX.
    pub enable_encrypt_fields: Option<bool>,
    /// The keys, newest first. Absent: APISIX's default keyring.
    pub keyring: Option<KeyringSpec>,
}

/// `keyring: "k"` or `keyring: ["k1", "k2"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyringSpec {
    One(String),
    Many(Vec<String>),
}

/// Why a keyring cannot be built (APISIX's CLI refuses the same at start).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("data_encryption keyring entry {index}: expected a 16 byte (AES-128) or 32 byte (AES-256) key, got {len} bytes")]
    BadLength { index: usize, len: usize },
    #[error("data_encryption keyring is empty: give at least one key, or set enable_encrypt_fields: false")]
    Empty,
}

/// Why a stored value was not decrypted.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum DecryptError {
    #[error("base64 decode failed")]
    Base64,
    #[error("decrypt failed")]
    NoKey,
}

#[derive(Clone)]
enum Key {
    Aes128([u8; 16]),
    Aes256([u8; 32]),
}

impl Key {
    fn parse(index: usize, k: &[u8]) -> Result<Key, KeyringError> {
        match k.len() {
            16 => Ok(Key::Aes128(k.try_into().unwrap_or([0; 16]))),
            32 => Ok(Key::Aes256(k.try_into().unwrap_or([0; 32]))),
            len => Err(KeyringError::BadLength { index, len }),
        }
    }

    /// The IV: the key's first 16 bytes (resty.aes copies the `iv` option,
    /// which APISIX sets to the key, and the cipher reads one block of it).
    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self {
            Key::Aes128(k) => iv.copy_from_slice(k),
            Key::Aes256(k) => iv.copy_from_slice(&k[..16]),
        }
        iv
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let iv = self.iv();
        match self {
            Key::Aes128(k) => cbc::Encryptor::<aes::Aes128>::new(k.into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plain),
            Key::Aes256(k) => cbc::Encryptor::<aes::Aes256>::new(k.into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plain),
        }
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let iv = self.iv();
        match self {
            Key::Aes128(k) => cbc::Decryptor::<aes::Aes128>::new(k.into(), &iv.into())
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .ok(),
            Key::Aes256(k) => cbc::Decryptor::<aes::Aes256>::new(k.into(), &iv.into())
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .ok(),
        }
    }
}

/// The keys, first one encrypts, all decrypt; and whether plugin fields are
/// encrypted at all.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
    plugin_fields: bool,
}

impl std::fmt::Debug for Keyring {
    // Never print the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .field("plugin_fields", &self.plugin_fields)
            .finish()
    }
}

/// ngx.decode_base64 takes the standard alphabet with or without padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl Keyring {
    /// A keyring of these keys (newest first), plugin fields on.
    pub fn new<K: AsRef<[u8]>>(keys: &[K]) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Key::parse(i, k.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring {
            keys,
            plugin_fields: true,
        })
    }

    /// What APISIX uses with an untouched `config.yaml`.
    pub fn apisix_default() -> Keyring {
        Keyring::new(&APISIX_DEFAULT_KEYRING).unwrap_or_else(|_| Keyring::disabled())
    }

    /// No keys: every value is stored and read as it is.
    pub fn disabled() -> Keyring {
        Keyring {
            keys: Vec::new(),
            plugin_fields: false,
        }
    }

    /// From the `data_encryption` section; an absent keyring is APISIX's default.
    pub fn from_config(cfg: &DataEncryptionConfig) -> Result<Keyring, KeyringError> {
        let mut k = match &cfg.keyring {
            None => Keyring::apisix_default(),
            Some(KeyringSpec::One(k)) => Keyring::new(&[k])?,
            Some(KeyringSpec::Many(ks)) => Keyring::new(ks)?,
        };
        k.plugin_fields = cfg.enable_encrypt_fields.unwrap_or(true);
        Ok(k)
    }

    /// Whether values are encrypted at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether plugin `encrypt_fields` are encrypted (SSL keys are whenever
    /// the keyring has a key).
    pub fn plugin_fields(&self) -> bool {
        self.plugin_fields && !self.keys.is_empty()
    }

    /// `base64(AES-CBC(first key, value))`; the value itself without a key.
    pub fn encrypt_field(&self, plain: &str) -> String {
        match self.keys.first() {
            Some(k) => STANDARD.encode(k.encrypt(plain.as_bytes())),
            None => plain.to_string(),
        }
    }

    /// The clear text of a stored value, trying every key in order; the value
    /// itself without a key. A result that is not UTF-8 counts as a failure
    /// (a wrong key that happens to leave valid padding gives noise).
    pub fn decrypt_field(&self, stored: &str) -> Result<String, DecryptError> {
        if self.keys.is_empty() {
            return Ok(stored.to_string());
        }
        let bytes = LENIENT
            .decode(stored.trim_end())
            .map_err(|_| DecryptError::Base64)?;
        if bytes.is_empty() || bytes.len() % 16 != 0 {
            return Err(DecryptError::NoKey);
        }
        self.keys
            .iter()
            .filter_map(|k| k.decrypt(&bytes))
            .find_map(|p| String::from_utf8(p).ok())
            .ok_or(DecryptError::NoKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ciphertexts APISIX's own test suite expects (`t/node/data_encrypt*.t`,
    /// `t/admin/consumers.t`, `t/admin/routes4.t`): same bytes both ways.
    #[test]
    fn same_bytes_as_apisix() {
        let k = Keyring::new(&["edd1c9f0985e76a2"]).unwrap();
        for (plain, stored) in [
            ("bar", "77+NmbYqNfN+oLm0aX5akg=="),
            ("abc123", "7ipXoKyiZZUAgf3WWNPI5A=="),
            ("auth-two", "vU/ZHVJw7b0XscDJ1Fhtig=="),
            ("userkey", "mt39FazQccyMqt4ctoRV7w=="),
        ] {
            assert_eq!(k.encrypt_field(plain), stored, "{plain}");
            assert_eq!(k.decrypt_field(stored).unwrap(), plain);
        }
        // APISIX's default keyring encrypts with its first key.
        let d = Keyring::from_config(&DataEncryptionConfig::default()).unwrap();
        assert_eq!(d.encrypt_field("auth-one"), "4y+JvURBE6ZwRbbgaryrhg==");
        assert!(d.plugin_fields());
    }

    #[test]
    fn rotation_reads_old_values_and_writes_with_the_new_key() {
        let old = Keyring::new(&["edd1c9f0985e76a2"]).unwrap();
        let stored = old.encrypt_field("s3cret");
        let rotated =
            Keyring::new(&["0123456789abcdef0123456789abcdef", "edd1c9f0985e76a2"]).unwrap();
        assert_eq!(rotated.decrypt_field(&stored).unwrap(), "s3cret");
        let fresh = rotated.encrypt_field("s3cret");
        assert_ne!(fresh, stored);
        assert_eq!(rotated.decrypt_field(&fresh).unwrap(), "s3cret");
        assert_eq!(old.decrypt_field(&fresh), Err(DecryptError::NoKey));
    }

    #[test]
    fn config_shapes_and_refusals() {
        let one: DataEncryptionConfig =
            serde_json::from_str(r#"{"keyring": "edd1c9f0985e76a2"}"#).unwrap();
        assert!(Keyring::from_config(&one).is_ok());
        let bad: DataEncryptionConfig =
            serde_json::from_str(r#"{"keyring": ["edd1c9f0985e76a2", "short"]}"#).unwrap();
        assert_eq!(
            Keyring::from_config(&bad).unwrap_err(),
            KeyringError::BadLength { index: 1, len: 5 }
        );
        let empty: DataEncryptionConfig = serde_json::from_str(r#"{"keyring": []}"#).unwrap();
        assert_eq!(
            Keyring::from_config(&empty).unwrap_err(),
            KeyringError::Empty
        );
        let off: DataEncryptionConfig =
            serde_json::from_str(r#"{"enable_encrypt_fields": false}"#).unwrap();
        assert!(!Keyring::from_config(&off).unwrap().plugin_fields());
        assert!(format!("{:?}", Keyring::apisix_default()).contains("keys: 2"));
    }

    #[test]
    fn clear_text_is_reported_not_mangled() {
        let k = Keyring::apisix_default();
        assert_eq!(k.decrypt_field("not base64!"), Err(DecryptError::Base64));
        assert_eq!(k.decrypt_field("YWJj"), Err(DecryptError::NoKey));
        assert_eq!(Keyring::disabled().decrypt_field("plain").unwrap(), "plain");
        assert_eq!(Keyring::disabled().encrypt_field("plain"), "plain");
    }
}
