//! `cairn-apisix`: facts about APISIX that Cairn's control plane (which
//! writes the store) and its gateway (which reads it) must agree on byte for
//! byte, so they live in one place.
//!
//! - [`encryption`]: APISIX's `data_encryption` (AES-CBC with a keyring,
//!   base64), [`Keyring::from_config`], [`Keyring::encrypt_field`],
//!   [`Keyring::decrypt_field`].
//! - [`prefixes`]: the resources' key prefix and Cairn's own, as every
//!   program that reads or writes them normalises and checks them.
//! - [`secrets`]: which fields of which resource hold secrets (plugin
//!   `encrypt_fields`, private keys, secret managers' tokens), a walker over
//!   them, and [`encrypt_secrets`] / [`decrypt_secrets`] for a whole resource.
//!
//! A gateway reading `<prefix>/routes/1` does:
//!
//! ```
//! use cairn_apisix::{decrypt_secrets, DataEncryptionConfig, Keyring, Kind};
//! let keyring = Keyring::from_config(&DataEncryptionConfig::default()).unwrap();
//! let mut route: serde_json::Value = serde_json::from_str(
//!     r#"{"uri":"/","plugins":{"limit-count":{"count":1,"time_window":1,"redis_password":"4y+JvURBE6ZwRbbgaryrhg=="}}}"#,
//! ).unwrap();
//! let undecrypted = decrypt_secrets(&keyring, Kind::of_key("routes/1"), &mut route);
//! assert!(undecrypted.is_empty());
//! assert_eq!(route["plugins"]["limit-count"]["redis_password"], "auth-one");
//! ```

pub mod encryption;
pub mod prefixes;
pub mod secrets;

pub use encryption::{
    DataEncryptionConfig, DecryptError, Keyring, KeyringError, KeyringSpec, APISIX_DEFAULT_KEYRING,
};
pub use secrets::{
    decrypt_secrets, encrypt_secrets, for_each_secret, AtRest, Kind, Secret, Undecrypted,
};
