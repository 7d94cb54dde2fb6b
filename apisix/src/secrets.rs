//! Which fields of which resource hold secrets, and a walker over them.
//!
//! Three kinds of secret field ([`AtRest`]):
//! - plugin `encrypt_fields` (APISIX's plugin schemas: `schema` on routes,
//!   services, global rules, plugin configs and consumer groups;
//!   `consumer_schema`, falling back to `schema`, on consumers and their
//!   credentials; `metadata_schema` on plugin metadata): encrypted when the
//!   keyring has keys and `enable_encrypt_fields` is on;
//! - private keys (`ssls` `key`/`keys`, `upstream.tls.client_key`): encrypted
//!   whenever the keyring has keys, and only while in PEM form (`---…`), as
//!   APISIX's `aes_encrypt_pkey` / `aes_decrypt_pkey`;
//! - fields APISIX keeps in clear text but that are secrets all the same
//!   (secret managers' tokens, stream route plugin fields, jwt-auth's
//!   `private_key`): stored as given (a gateway reads them so), never shown.
//!
//! Paths follow APISIX's `process_encrypt_field`: dotted, an array met on
//! the way is walked element by element, and the leaf is a string, an array
//! of strings or a map of strings.

use serde_json::{Map, Value};

use crate::encryption::{DecryptError, Keyring};

/// How a secret field is kept in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AtRest {
    /// A plugin `encrypt_fields` entry.
    PluginField,
    /// A PEM private key: encrypted while it starts with `---`.
    PrivateKey,
    /// Stored as given; only hidden from readers.
    Clear,
}

/// A resource kind, as far as its secret fields go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// Routes, services, global rules, plugin configs, consumer groups:
    /// plugins by their route-level schema, an embedded upstream.
    Plugins,
    /// Consumers and their credentials: plugins by their consumer schema.
    ConsumerPlugins,
    Upstream,
    Ssl,
    /// Stream routes: an embedded upstream; stream plugin fields stay clear.
    StreamRoute,
    /// Plugin metadata of this plugin: the value is its metadata conf.
    PluginMetadata(&'a str),
    /// Secret managers (`secrets/vault/1`).
    Secret,
    /// Protos and anything unknown: no secrets.
    None,
}

impl<'a> Kind<'a> {
    /// The kind of `<prefix>/<resource>/<id>`; `id` may span segments
    /// (`consumers/jack/credentials/c1` is resource `consumers`, id
    /// `jack/credentials/c1`, a credential).
    pub fn of(resource: &str, id: &'a str) -> Kind<'a> {
        match resource {
            "routes" | "services" | "global_rules" | "plugin_configs" | "consumer_groups" => {
                Kind::Plugins
            }
            "consumers" => Kind::ConsumerPlugins,
            "upstreams" => Kind::Upstream,
            "ssls" => Kind::Ssl,
            "stream_routes" => Kind::StreamRoute,
            "plugin_metadata" => Kind::PluginMetadata(id),
            "secrets" => Kind::Secret,
            _ => Kind::None,
        }
    }

    /// The kind of a store key below the prefix, e.g. `routes/1`.
    pub fn of_key(rel: &'a str) -> Kind<'a> {
        match rel.split_once('/') {
            Some((res, id)) => Kind::of(res, id),
            None => Kind::None,
        }
    }
}

/// One plugin's secret fields: by its route-level schema, its consumer
/// schema (`None`: the plugin has none, consumers use the route-level one)
/// and its metadata schema.
pub struct PluginSecrets {
    pub name: &'static str,
    pub schema: &'static [&'static str],
    pub consumer_schema: Option<&'static [&'static str]>,
    pub metadata_schema: &'static [&'static str],
}

const fn p(
    name: &'static str,
    schema: &'static [&'static str],
    consumer_schema: Option<&'static [&'static str]>,
    metadata_schema: &'static [&'static str],
) -> PluginSecrets {
    PluginSecrets {
        name,
        schema,
        consumer_schema,
        metadata_schema,
    }
}

const REDIS: &[&str] = &["redis_password", "sentinel_password"];

/// APISIX's `encrypt_fields` (apache/apisix `apisix/plugins/*.lua`, 3.13+).
/// A plugin with a consumer schema but no secret in it is listed with
/// `Some(&[])`, so its route-level fields are not used on consumers.
pub static PLUGINS: &[PluginSecrets] = &[
    p(
        "ai-aliyun-content-moderation",
        &["access_key_secret"],
        None,
        &[],
    ),
    p(
        "ai-aws-content-moderation",
        &["comprehend.secret_access_key"],
        None,
        &[],
    ),
    p(
        "ai-cache",
        &[
            "redis_password",
            "semantic.embedding.openai.api_key",
            "semantic.embedding.azure_openai.api_key",
        ],
        None,
        &[],
    ),
    p("ai-lakera-guard", &["api_key"], None, &[]),
    p(
        "ai-proxy",
        &[
            "auth.header",
            "auth.query",
            "auth.gcp.service_account_json",
            "auth.aws.secret_access_key",
            "auth.aws.session_token",
        ],
        None,
        &[],
    ),
    p(
        "ai-proxy-multi",
        &[
            "instances.auth.header",
            "instances.auth.query",
            "instances.auth.gcp.service_account_json",
            "instances.auth.aws.secret_access_key",
            "instances.auth.aws.session_token",
            "semantic_opts.embeddings.auth.header",
            "semantic_opts.embeddings.auth.query",
        ],
        None,
        &[],
    ),
    p(
        "ai-rag",
        &[
            "embeddings_provider.azure_openai.api_key",
            "vector_search_provider.azure_ai_search.api_key",
        ],
        None,
        &[],
    ),
    p("ai-rate-limiting", REDIS, None, &[]),
    p("authz-casdoor", &["client_secret"], None, &[]),
    p("authz-keycloak", &["client_secret"], None, &[]),
    p(
        "aws-lambda",
        &[
            "authorization.apikey",
            "authorization.iam.accesskey",
            "authorization.iam.secretkey",
        ],
        None,
        &[],
    ),
    p(
        "azure-functions",
        &["authorization.apikey"],
        None,
        &["master_apikey"],
    ),
    p("basic-auth", &[], Some(&["password"]), &[]),
    p("cas-auth", &["cookie.secret"], None, &[]),
    p("clickhouse-logger", &["password"], None, &[]),
    p("csrf", &["key"], None, &[]),
    p(
        "dingtalk-auth",
        &["app_secret", "secret", "secret_fallbacks"],
        None,
        &[],
    ),
    p(
        "elasticsearch-logger",
        &["auth.password", "headers"],
        None,
        &[],
    ),
    p(
        "error-log-logger",
        &[],
        None,
        &["clickhouse.password", "kafka.brokers.sasl_config.password"],
    ),
    p(
        "feishu-auth",
        &["app_secret", "secret", "secret_fallbacks"],
        None,
        &[],
    ),
    p(
        "google-cloud-logging",
        &["auth_config.private_key"],
        None,
        &[],
    ),
    p(
        "graphql-limit-count",
        &[
            "redis_password",
            "sentinel_password",
            "introspection_headers",
        ],
        None,
        &[],
    ),
    p("hmac-auth", &[], Some(&["secret_key"]), &[]),
    p("http-logger", &["auth_header"], None, &[]),
    p("jwe-decrypt", &[], Some(&["key", "secret"]), &[]),
    p("jwt-auth", &[], Some(&["secret"]), &[]),
    p("kafka-logger", &["brokers.sasl_config.password"], None, &[]),
    p("kafka-proxy", &["sasl.password"], None, &[]),
    p("key-auth", &[], Some(&["key"]), &[]),
    p("lago", &["token"], None, &[]),
    p("ldap-auth-advanced", &["ldap_password"], Some(&[]), &[]),
    p("limit-conn", &["redis_password"], None, &[]),
    p("limit-count", REDIS, None, &[]),
    p("limit-req", &["redis_password"], None, &[]),
    p("loggly", &["customer_token"], None, &[]),
    p("loki-logger", &["headers"], None, &[]),
    p("openfunction", &["authorization.service_token"], None, &[]),
    p(
        "openid-connect",
        &[
            "client_secret",
            "client_rsa_private_key",
            "dpop.private_key",
            "session.secret",
            "session.redis.password",
        ],
        None,
        &[],
    ),
    p("openwhisk", &["service_token"], None, &[]),
    p("rocketmq-logger", &["secret_key"], None, &[]),
    p(
        "saml-auth",
        &["sp_private_key", "secret", "secret_fallbacks"],
        None,
        &[],
    ),
    p("sls-logger", &["access_key_secret"], None, &[]),
    p("splunk-hec-logging", &["endpoint.token"], None, &[]),
    p("tencent-cloud-cls", &["secret_key"], None, &[]),
];

/// Consumer-side fields APISIX does not encrypt but that are secrets: kept
/// as given, never shown.
const CLEAR_CONSUMER: &[(&str, &[&str])] = &[("jwt-auth", &["private_key"])];

/// Secret manager fields (APISIX keeps them in clear text).
const SECRET_MANAGER_FIELDS: &[&str] = &[
    "token",
    "secret_access_key",
    "session_token",
    "auth_config.private_key",
];

pub fn plugin(name: &str) -> Option<&'static PluginSecrets> {
    PLUGINS.iter().find(|p| p.name == name)
}

/// The `encrypt_fields` of plugin `name` where it is configured as `kind`.
fn plugin_fields(name: &str, kind: Kind<'_>) -> &'static [&'static str] {
    let Some(p) = plugin(name) else { return &[] };
    match kind {
        Kind::ConsumerPlugins => p.consumer_schema.unwrap_or(p.schema),
        Kind::PluginMetadata(_) => p.metadata_schema,
        _ => p.schema,
    }
}

/// One secret string in a resource.
pub struct Secret<'v> {
    /// Dotted path from the resource's root, with the index of an array
    /// element or the key of a map entry: `plugins.key-auth.key`, `keys.1`.
    pub path: String,
    pub at_rest: AtRest,
    pub value: &'v mut String,
}

/// Calls `f` on every secret string of `value`, a resource of `kind`.
pub fn for_each_secret(kind: Kind<'_>, value: &mut Value, f: &mut dyn FnMut(Secret<'_>)) {
    let Value::Object(root) = value else { return };
    match kind {
        Kind::Ssl => {
            walk(root, "", "key", AtRest::PrivateKey, f);
            walk(root, "", "keys", AtRest::PrivateKey, f);
        }
        Kind::Upstream => walk(root, "", "tls.client_key", AtRest::PrivateKey, f),
        Kind::Plugins | Kind::ConsumerPlugins | Kind::StreamRoute => {
            walk(root, "", "upstream.tls.client_key", AtRest::PrivateKey, f);
            let Some(Value::Object(plugins)) = root.get_mut("plugins") else {
                return;
            };
            for (name, conf) in plugins.iter_mut() {
                let Value::Object(conf) = conf else { continue };
                let base = format!("plugins.{name}.");
                let at_rest = if kind == Kind::StreamRoute {
                    AtRest::Clear
                } else {
                    AtRest::PluginField
                };
                for field in plugin_fields(name, kind) {
                    walk(conf, &base, field, at_rest, f);
                }
                if kind == Kind::ConsumerPlugins {
                    for (_, fields) in CLEAR_CONSUMER.iter().filter(|(p, _)| p == name) {
                        for field in *fields {
                            walk(conf, &base, field, AtRest::Clear, f);
                        }
                    }
                }
            }
        }
        Kind::PluginMetadata(name) => {
            for field in plugin_fields(name, kind) {
                walk(root, "", field, AtRest::PluginField, f);
            }
        }
        Kind::Secret => {
            for field in SECRET_MANAGER_FIELDS {
                walk(root, "", field, AtRest::Clear, f);
            }
        }
        Kind::None => {}
    }
}

/// APISIX's `process_encrypt_field` over `obj` for the dotted `path`.
fn walk(
    obj: &mut Map<String, Value>,
    base: &str,
    path: &str,
    at_rest: AtRest,
    f: &mut dyn FnMut(Secret<'_>),
) {
    let (seg, rest) = match path.split_once('.') {
        Some((seg, rest)) => (seg, Some(rest)),
        None => (path, None),
    };
    let Some(v) = obj.get_mut(seg) else { return };
    let here = format!("{base}{seg}");
    match (rest, v) {
        (None, Value::String(s)) => f(Secret {
            path: here,
            at_rest,
            value: s,
        }),
        (None, Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::String(s) = item {
                    f(Secret {
                        path: format!("{here}.{i}"),
                        at_rest,
                        value: s,
                    });
                }
            }
        }
        (None, Value::Object(m)) => {
            for (k, item) in m.iter_mut() {
                if let Value::String(s) = item {
                    f(Secret {
                        path: format!("{here}.{k}"),
                        at_rest,
                        value: s,
                    });
                }
            }
        }
        (Some(rest), Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::Object(m) = item {
                    walk(m, &format!("{here}.{i}."), rest, at_rest, f);
                }
            }
        }
        (Some(rest), Value::Object(m)) => walk(m, &format!("{here}."), rest, at_rest, f),
        _ => {}
    }
}

fn is_pem(s: &str) -> bool {
    s.starts_with("---")
}

/// Encrypts the secret fields of `value` for the store, as APISIX's Admin
/// API does: plugin fields when enabled, PEM private keys, nothing else.
pub fn encrypt_secrets(keyring: &Keyring, kind: Kind<'_>, value: &mut Value) {
    if keyring.is_empty() {
        return;
    }
    for_each_secret(kind, value, &mut |s| match s.at_rest {
        AtRest::PluginField if keyring.plugin_fields() => *s.value = keyring.encrypt_field(s.value),
        AtRest::PrivateKey if is_pem(s.value) => *s.value = keyring.encrypt_field(s.value),
        _ => {}
    });
}

/// A secret field that did not decrypt and was kept as stored (taken to be
/// clear text, as APISIX does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecrypted {
    pub path: String,
    pub error: DecryptError,
}

/// Decrypts the secret fields of a stored `value` in place; what does not
/// decrypt is left as it is and reported.
pub fn decrypt_secrets(keyring: &Keyring, kind: Kind<'_>, value: &mut Value) -> Vec<Undecrypted> {
    let mut failed = Vec::new();
    if keyring.is_empty() {
        return failed;
    }
    for_each_secret(kind, value, &mut |s| {
        let applies = match s.at_rest {
            AtRest::PluginField => keyring.plugin_fields(),
            AtRest::PrivateKey => !is_pem(s.value),
            AtRest::Clear => false,
        };
        if applies {
            match keyring.decrypt_field(s.value) {
                Ok(p) => *s.value = p,
                Err(error) => failed.push(Undecrypted {
                    path: s.path,
                    error,
                }),
            }
        }
    });
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(kind: Kind<'_>, mut v: Value) -> Vec<(String, AtRest)> {
        let mut out = Vec::new();
        for_each_secret(kind, &mut v, &mut |s| out.push((s.path, s.at_rest)));
        out
    }

    #[test]
    fn kinds_from_keys() {
        assert_eq!(Kind::of_key("routes/1"), Kind::Plugins);
        assert_eq!(
            Kind::of_key("consumers/jack/credentials/c1"),
            Kind::ConsumerPlugins
        );
        assert_eq!(
            Kind::of_key("plugin_metadata/error-log-logger"),
            Kind::PluginMetadata("error-log-logger")
        );
        assert_eq!(Kind::of_key("protos/1"), Kind::None);
        assert_eq!(Kind::of_key("gen_id"), Kind::None);
    }

    #[test]
    fn paths_follow_apisix_rules() {
        let route = json!({
            "uri": "/",
            "upstream": {"nodes": {"a:1": 1}, "tls": {"client_cert": "c", "client_key": "-----BEGIN k"}},
            "plugins": {
                "key-auth": {"header": "apikey"},
                "limit-count": {"count": 1, "redis_password": "r"},
                "loki-logger": {"headers": {"Authorization": "x", "n": 1}},
                "ai-proxy-multi": {"instances": [{"auth": {"header": {"k": "a"}}}, {"auth": {"query": {"q": "b"}}}]},
                "unknown": {"password": "p"}
            }
        });
        let mut got = paths(Kind::Plugins, route);
        got.sort();
        let want: Vec<(String, AtRest)> = [
            (
                "plugins.ai-proxy-multi.instances.0.auth.header.k",
                AtRest::PluginField,
            ),
            (
                "plugins.ai-proxy-multi.instances.1.auth.query.q",
                AtRest::PluginField,
            ),
            ("plugins.limit-count.redis_password", AtRest::PluginField),
            (
                "plugins.loki-logger.headers.Authorization",
                AtRest::PluginField,
            ),
            ("upstream.tls.client_key", AtRest::PrivateKey),
        ]
        .iter()
        .map(|(p, a)| (p.to_string(), *a))
        .collect();
        assert_eq!(got, want);
        // Consumers: key-auth's consumer schema; jwt-auth's private_key in clear.
        let consumer = json!({"username": "j", "plugins": {
            "key-auth": {"key": "k"}, "jwt-auth": {"key": "u", "secret": "s", "private_key": "p"},
            "ldap-auth-advanced": {"ldap_password": "not on consumers"}}});
        let mut got = paths(Kind::ConsumerPlugins, consumer);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("plugins.jwt-auth.private_key".into(), AtRest::Clear),
                ("plugins.jwt-auth.secret".into(), AtRest::PluginField),
                ("plugins.key-auth.key".into(), AtRest::PluginField),
            ]
        );
        let ssl = json!({"cert": "c", "key": "k", "keys": ["a", "b"]});
        assert_eq!(paths(Kind::Ssl, ssl).len(), 3);
        let vault = json!({"uri": "http://v", "prefix": "p", "token": "t"});
        assert_eq!(
            paths(Kind::Secret, vault),
            vec![("token".into(), AtRest::Clear)]
        );
        let meta = json!({"clickhouse": {"password": "x"}});
        assert_eq!(
            paths(Kind::PluginMetadata("error-log-logger"), meta),
            vec![("clickhouse.password".into(), AtRest::PluginField)]
        );
    }

    #[test]
    fn round_trip_and_apisix_bytes() {
        let k = Keyring::new(&["edd1c9f0985e76a2"]).unwrap();
        let plain = json!({"username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}});
        let mut v = plain.clone();
        encrypt_secrets(&k, Kind::ConsumerPlugins, &mut v);
        assert_eq!(
            v["plugins"]["basic-auth"]["password"],
            "77+NmbYqNfN+oLm0aX5akg=="
        );
        assert_eq!(v["plugins"]["basic-auth"]["username"], "foo");
        assert!(decrypt_secrets(&k, Kind::ConsumerPlugins, &mut v).is_empty());
        assert_eq!(v, plain);

        // PEM keys only while PEM; a value stored in clear is reported, kept.
        let mut ssl =
            json!({"cert": "c", "key": "-----BEGIN PRIVATE KEY-----\nx", "keys": ["not pem"]});
        encrypt_secrets(&k, Kind::Ssl, &mut ssl);
        assert!(!ssl["key"].as_str().unwrap().starts_with("---"));
        assert_eq!(ssl["keys"][0], "not pem");
        let failed = decrypt_secrets(&k, Kind::Ssl, &mut ssl);
        assert_eq!(ssl["key"], "-----BEGIN PRIVATE KEY-----\nx");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].path, "keys.0");

        // enable_encrypt_fields: false leaves plugin fields alone, not keys.
        let cfg = crate::DataEncryptionConfig {
            enable_encrypt_fields: Some(false),
            keyring: None,
        };
        let off = Keyring::from_config(&cfg).unwrap();
        let mut v = plain.clone();
        encrypt_secrets(&off, Kind::ConsumerPlugins, &mut v);
        assert_eq!(v, plain);
        let mut up = json!({"tls": {"client_key": "-----BEGIN"}});
        encrypt_secrets(&off, Kind::Upstream, &mut up);
        assert_ne!(up["tls"]["client_key"], "-----BEGIN");
    }
}
