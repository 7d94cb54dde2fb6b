//! Validation of a resource value before it is written: the resource's
//! field rules, its JSON Schema (following APISIX's `schema_def.lua`), the
//! plugin names and the configs of the common plugins.
//!
//! Messages follow APISIX (`property "uri" validation failed: …`) and always
//! name the field. Schemas compile once, on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::{Map, Value};

use crate::resources::{Resource, Rule, CREDENTIALS, RESOURCES};

/// Plugins APISIX (3.13 and later) ships, HTTP side. A name outside this set
/// (and outside `extra_plugins` in the config) is refused: APISIX would drop
/// the whole route at load time.
pub const KNOWN_PLUGINS: &[&str] = &[
    "acl",
    "ai",
    "ai-aliyun-content-moderation",
    "ai-aws-content-moderation",
    "ai-cache",
    "ai-lakera-guard",
    "ai-prompt-decorator",
    "ai-prompt-guard",
    "ai-prompt-template",
    "ai-proxy",
    "ai-proxy-multi",
    "ai-rag",
    "ai-rate-limiting",
    "ai-request-rewrite",
    "api-breaker",
    "attach-consumer-label",
    "authz-casbin",
    "authz-casdoor",
    "authz-keycloak",
    "aws-lambda",
    "azure-functions",
    "basic-auth",
    "batch-requests",
    "body-transformer",
    "brotli",
    "cas-auth",
    "chaitin-waf",
    "clickhouse-logger",
    "client-control",
    "consumer-restriction",
    "cors",
    "csrf",
    "data-mask",
    "datadog",
    "degraphql",
    "dingtalk-auth",
    "dubbo-proxy",
    "echo",
    "elasticsearch-logger",
    "error-log-logger",
    "error-page",
    "example-plugin",
    "exit-transformer",
    "ext-plugin-post-req",
    "ext-plugin-post-resp",
    "ext-plugin-pre-req",
    "fault-injection",
    "feishu-auth",
    "file-logger",
    "forward-auth",
    "gm",
    "google-cloud-logging",
    "graphql-limit-count",
    "graphql-proxy-cache",
    "grpc-transcode",
    "grpc-web",
    "gzip",
    "hmac-auth",
    "http-dubbo",
    "http-logger",
    "inspect",
    "ip-restriction",
    "jwe-decrypt",
    "jwt-auth",
    "kafka-logger",
    "kafka-proxy",
    "key-auth",
    "lago",
    "ldap-auth",
    "ldap-auth-advanced",
    "limit-conn",
    "limit-count",
    "limit-req",
    "log-rotate",
    "loggly",
    "loki-logger",
    "mcp-bridge",
    "mocking",
    "multi-auth",
    "node-status",
    "oas-validator",
    "ocsp-stapling",
    "opa",
    "openfunction",
    "openid-connect",
    "opentelemetry",
    "openwhisk",
    "prometheus",
    "proxy-buffering",
    "proxy-cache",
    "proxy-control",
    "proxy-mirror",
    "proxy-rewrite",
    "public-api",
    "real-ip",
    "redirect",
    "referer-restriction",
    "request-id",
    "request-validation",
    "response-rewrite",
    "rocketmq-logger",
    "saml-auth",
    "server-info",
    "serverless-post-function",
    "serverless-pre-function",
    "skywalking",
    "skywalking-logger",
    "sls-logger",
    "splunk-hec-logging",
    "syslog",
    "tcp-logger",
    "tencent-cloud-cls",
    "traffic-label",
    "traffic-split",
    "ua-restriction",
    "udp-logger",
    "uri-blocker",
    "wolf-rbac",
    "workflow",
    "zipkin",
];

/// Plugins of APISIX's stream subsystem: the only ones a stream route takes.
pub const STREAM_PLUGINS: &[&str] = &[
    "ip-restriction",
    "limit-conn",
    "mqtt-proxy",
    "syslog",
    "traffic-split",
];

/// Secret managers and the fields each requires (APISIX's `secret/*.lua`).
pub const SECRET_MANAGERS: &[(&str, &[&str])] = &[
    ("vault", &["uri", "prefix", "token"]),
    ("aws", &["access_key_id", "secret_access_key"]),
    ("gcp", &[]),
];

/// The JSON Schema of a plugin (the consumer-side one when asked and there
/// is one), with the shared `$defs`; `None` when only its name is checked.
pub fn plugin_schema(name: &str, consumer: bool) -> Option<Value> {
    let table: Map<String, Value> =
        serde_json::from_str(include_str!("schemas/plugins.json")).ok()?;
    let entry = table.get(name)?;
    let mut s = match (consumer, entry.get("consumer_schema")) {
        (true, Some(c)) => c.clone(),
        _ => entry.get("schema")?.clone(),
    };
    if let Value::Object(m) = &mut s {
        m.insert("$defs".into(), defs());
    }
    Some(s)
}

struct Compiled {
    /// By the resource's singular name (credentials share `consumers`).
    resources: HashMap<&'static str, Validator>,
    /// plugin name -> (route-level schema, consumer-level schema if any)
    plugins: HashMap<String, (Validator, Option<Validator>)>,
}

fn defs() -> Value {
    serde_json::from_str(include_str!("schemas/defs.json"))
        .expect("schemas/defs.json is valid JSON")
}

/// Adds the shared `$defs` to a schema and compiles it. The schemas are
/// compiled into the binary, so a failure here is a bug caught by the unit
/// test below, not bad input.
fn compile(mut schema: Value, defs: &Value) -> Validator {
    if let Value::Object(m) = &mut schema {
        m.insert("$defs".into(), defs.clone());
    }
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("built-in schema: {e}"))
}

fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let defs = defs();
        let resources = RESOURCES
            .iter()
            .chain([&CREDENTIALS])
            .map(|r| {
                let s: Value = serde_json::from_str(r.schema)
                    .unwrap_or_else(|e| panic!("schema of {}: {e}", r.singular));
                (r.singular, compile(s, &defs))
            })
            .collect();
        let table: Map<String, Value> = serde_json::from_str(include_str!("schemas/plugins.json"))
            .expect("schemas/plugins.json is valid JSON");
        let plugins = table
            .into_iter()
            .map(|(name, mut v)| {
                let route = compile(v["schema"].take(), &defs);
                let consumer = match v["consumer_schema"].take() {
                    Value::Null => None,
                    s => Some(compile(s, &defs)),
                };
                (name, (route, consumer))
            })
            .collect();
        Compiled { resources, plugins }
    })
}

/// Checks `value`, the full value about to be stored (id and timestamps
/// included), of resource `res` with id `id`. `Err` is the message after
/// `invalid configuration: `.
pub fn check(res: &Resource, id: &str, extra: &[String], value: &Value) -> Result<(), String> {
    let Value::Object(obj) = value else {
        return Err(format!("the {} must be a JSON object", res.singular));
    };
    for rule in res.rules {
        check_rule(rule, obj)?;
    }
    let c = compiled();
    if let Some(v) = c.resources.get(res.singular) {
        schema_errors(v, value)?;
    }
    if res.name == "secrets" {
        check_secret(id, obj)?;
    }
    if res.name == "ssls" {
        check_ssl(obj)?;
    }
    let known = |name: &str| {
        let builtin = if res.name == "stream_routes" {
            STREAM_PLUGINS
        } else {
            KNOWN_PLUGINS
        };
        builtin.contains(&name) || extra.iter().any(|e| e == name)
    };
    if res.name == "plugin_metadata" && !known(id) {
        return Err(format!("unknown plugin [{id}]"));
    }
    if let Some(plugins) = obj.get("plugins") {
        check_plugins(plugins, res.name == "consumers", &known)?;
    }
    // Upstreams embedded in routes, services and stream routes.
    if let Some(up) = obj.get("upstream") {
        if up.get("nodes").is_some() == up.get("service_name").is_some() {
            return Err(
                "property \"upstream\" validation failed: exactly one of \"nodes\" and \"service_name\" is required"
                    .into(),
            );
        }
    }
    Ok(())
}

fn check_rule(rule: &Rule, obj: &Map<String, Value>) -> Result<(), String> {
    let quoted = |fields: &[&str]| {
        fields
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match rule {
        Rule::ExactlyOne(fields) => {
            let n = fields.iter().filter(|f| obj.contains_key(**f)).count();
            if n != 1 {
                return Err(format!(
                    "exactly one of {} is required, {n} given",
                    quoted(fields)
                ));
            }
        }
        Rule::AtLeastOne(fields) => {
            if !fields.iter().any(|f| obj.contains_key(*f)) {
                return Err(format!("at least one of {} is required", quoted(fields)));
            }
        }
        Rule::AtMostOne(fields) => {
            if fields.iter().filter(|f| obj.contains_key(**f)).count() > 1 {
                return Err(format!("only one of {} may be given", quoted(fields)));
            }
        }
    }
    Ok(())
}

/// The first schema error, as APISIX words it: `property "a.b" validation
/// failed: …`; errors about the object itself (a missing required field, an
/// unexpected one) name the field in the message.
fn schema_errors(v: &Validator, value: &Value) -> Result<(), String> {
    let Some(e) = v.iter_errors(value).next() else {
        return Ok(());
    };
    let path = e
        .instance_path()
        .as_str()
        .trim_start_matches('/')
        .replace('/', ".");
    let detail = match e.kind() {
        // These kinds print the whole instance; APISIX's words are shorter.
        jsonschema::error::ValidationErrorKind::AnyOf { .. }
        | jsonschema::error::ValidationErrorKind::OneOfNotValid { .. } => {
            "value should match only one schema, but matches none".to_string()
        }
        jsonschema::error::ValidationErrorKind::OneOfMultipleValid { .. } => {
            "value should match only one schema, but matches both".to_string()
        }
        _ => e.to_string(),
    };
    if path.is_empty() {
        Err(detail)
    } else {
        Err(format!("property \"{path}\" validation failed: {detail}"))
    }
}

fn check_plugins(
    plugins: &Value,
    consumer: bool,
    known: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let Value::Object(map) = plugins else {
        return Err("property \"plugins\" validation failed: wrong type: expected object".into());
    };
    let c = compiled();
    for (name, conf) in map {
        if !known(name) {
            return Err(format!("unknown plugin [{name}]"));
        }
        let Value::Object(conf_map) = conf else {
            return Err(format!(
                "failed to check the configuration of plugin {name} err: wrong type: expected object"
            ));
        };
        // APISIX injects `_meta` and `disable` into every plugin schema.
        if conf_map.get("disable").is_some_and(|d| !d.is_boolean()) {
            return Err(format!(
                "failed to check the configuration of plugin {name} err: property \"disable\" validation failed: wrong type: expected boolean"
            ));
        }
        if conf_map.get("_meta").is_some_and(|m| !m.is_object()) {
            return Err(format!(
                "failed to check the configuration of plugin {name} err: property \"_meta\" validation failed: wrong type: expected object"
            ));
        }
        let Some((route_schema, consumer_schema)) = c.plugins.get(name) else {
            continue;
        };
        let schema = match (consumer, consumer_schema) {
            (true, Some(s)) => s,
            _ => route_schema,
        };
        let mut stripped = conf_map.clone();
        stripped.remove("_meta");
        stripped.remove("disable");
        schema_errors(schema, &Value::Object(stripped))
            .map_err(|e| format!("failed to check the configuration of plugin {name} err: {e}"))?;
    }
    Ok(())
}

/// APISIX's SSL rules: a server certificate names its SNIs (a client one,
/// for upstream mTLS, need not); certificates and keys parse and belong
/// together, pair by pair. Values taken from a secret manager (`$secret://`,
/// `$env://`) are checked by the gateway that resolves them.
fn check_ssl(obj: &Map<String, Value>) -> Result<(), String> {
    let server = obj.get("type").and_then(Value::as_str).unwrap_or("server") == "server";
    if server && !obj.contains_key("sni") && !obj.contains_key("snis") {
        return Err("a server certificate needs \"sni\" or \"snis\"".into());
    }
    let strs = |f: &str| -> Vec<&str> {
        match obj.get(f) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    };
    let (certs, keys) = (strs("certs"), strs("keys"));
    if certs.len() != keys.len() {
        return Err("mismatched number of certs and keys".into());
    }
    let pairs = strs("cert")
        .into_iter()
        .zip(strs("key"))
        .chain(certs.into_iter().zip(keys));
    for (cert, key) in pairs {
        let external = |s: &str| s.starts_with("$secret://") || s.starts_with("$env://");
        if external(cert) || external(key) {
            continue;
        }
        let c = crate::x509::parse_cert(cert).map_err(|e| format!("failed to parse cert: {e}"))?;
        let k = crate::x509::public_key_of(key).map_err(|e| format!("failed to parse key: {e}"))?;
        if k != c.public_key {
            return Err("the private key does not match the certificate".into());
        }
    }
    Ok(())
}

fn check_secret(id: &str, obj: &Map<String, Value>) -> Result<(), String> {
    let manager = id.split('/').next().unwrap_or_default();
    let Some((_, required)) = SECRET_MANAGERS.iter().find(|(m, _)| *m == manager) else {
        return Err(format!(
            "unknown secret manager [{manager}] (one of vault, aws, gcp)"
        ));
    };
    for f in *required {
        if !obj.contains_key(*f) {
            return Err(format!("\"{f}\" is a required property"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    /// Admin API bodies damaged any way (bytes flipped, cut, spliced): a JSON
    /// error or a validation message for every resource, never a panic.
    #[test]
    fn damaged_bodies_get_an_answer_not_a_panic() {
        let valid = json!({
            "uri": "/a", "uris": ["/b"], "hosts": ["*.x.test"], "methods": ["GET"],
            "priority": 1, "vars": [["arg_a", "==", "1"]], "status": 1,
            "plugins": {"key-auth": {}, "limit-count": {"count": 2, "time_window": 60}},
            "upstream": {"type": "chash", "hash_on": "header", "key": "h",
                "nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1}],
                "timeout": {"connect": 1, "send": 1, "read": 1}},
            "username": "u", "snis": ["a.test"], "cert": "x", "key": "y"
        })
        .to_string()
        .into_bytes();
        let mut x: u32 = 7;
        for case in 0..20_000u32 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut body = valid.clone();
            let at = (x >> 8) as usize % body.len();
            match case % 3 {
                0 => {
                    let bytes = b"{}[]\",:0-e\"x";
                    body[at] = bytes[(x >> 24) as usize % bytes.len()];
                }
                1 => body.truncate(at),
                _ => {
                    let tail = body[at..].to_vec();
                    body.splice(at..at, tail);
                }
            }
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            for r in RESOURCES {
                let _ = check(r, "1", &[], &v);
            }
        }
    }

    #[test]
    fn every_builtin_schema_compiles() {
        let c = compiled();
        assert_eq!(c.resources.len(), RESOURCES.len() + 1);
        assert_eq!(c.plugins.len(), 12);
        for name in c.plugins.keys() {
            assert!(KNOWN_PLUGINS.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn route_messages_name_the_field() {
        let r = find("routes").unwrap();
        let ok =
            json!({"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}}});
        check(r, "1", &[], &ok).unwrap();
        let e = check(r, "1", &[], &json!({"uri": 1, "upstream_id": "1"})).unwrap_err();
        assert!(e.starts_with("property \"uri\" validation failed"), "{e}");
        let e = check(r, "1", &[], &json!({"upstream_id": "1"})).unwrap_err();
        assert!(e.contains("\"uri\", \"uris\""), "{e}");
        let e = check(
            r,
            "1",
            &[],
            &json!({"uri": "/a", "upstream_id": "1", "bogus": 1}),
        )
        .unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = check(r, "1", &[], &json!({"uri": "/a", "plugins": {"nope": {}}})).unwrap_err();
        assert_eq!(e, "unknown plugin [nope]");
        let e = check(
            r,
            "1",
            &[],
            &json!({"uri": "/a", "plugins": {"limit-count": {"count": 1}}}),
        )
        .unwrap_err();
        assert!(
            e.contains("limit-count") && e.contains("time_window"),
            "{e}"
        );
        let e = check(
            r,
            "1",
            &[],
            &json!({"uri": "/a", "upstream": {"nodes": {"a:1": -1}}}),
        )
        .unwrap_err();
        assert!(e.contains("upstream.nodes"), "{e}");
    }

    #[test]
    fn consumer_plugins_use_consumer_schemas() {
        let c = find("consumers").unwrap();
        check(
            c,
            "jack",
            &[],
            &json!({"username": "jack", "plugins": {"key-auth": {"key": "k"}}}),
        )
        .unwrap();
        let e = check(
            c,
            "jack",
            &[],
            &json!({"username": "jack", "plugins": {"key-auth": {}}}),
        )
        .unwrap_err();
        assert!(e.contains("key"), "{e}");
    }
}
