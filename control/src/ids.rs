//! Resource names, ids and their store keys: the lookups every layer above
//! shares (the Admin API's handlers, the audit log endpoint, the reference
//! index). Here, not in `admin`, so `audit` and `refs` need not import the
//! handlers that import them.

use axum::http::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::resources::{self, valid_id_segment, Resource};
use crate::state::AppState;
use crate::validate;

/// The resource named `name` in a path (`routes`, `ssls`, …), or 404.
pub fn resource(name: &str) -> ApiResult<&'static Resource> {
    resources::find(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown resource [{name}]")))
}

/// `<prefix>/<res>/<id>`: the store key of an item.
pub fn key_of(state: &AppState, res: &Resource, id: &str) -> String {
    format!("{}/{}/{}", state.settings.prefix, res.name, id)
}

/// Checks an id against the resource's rules: APISIX's 1–64 characters of
/// `[a-zA-Z0-9-_.]` per segment, as many segments as the resource's ids
/// have; secrets start with a known manager (`vault/1`), credentials are
/// `<username>/credentials/<id>`.
pub fn check_id(res: &Resource, id: &str) -> ApiResult<()> {
    let segs: Vec<&str> = id.split('/').collect();
    let shape_ok = segs.len() == res.id_segments
        && segs.iter().all(|s| valid_id_segment(s))
        && (res.id_segments != 3 || segs[1] == "credentials");
    if !shape_ok {
        let shape = match res.id_segments {
            2 => "<manager>/<id>, each ",
            3 => "<username>/credentials/<id>, each ",
            _ => "",
        };
        let field = if res.id_segments == 1 {
            res.id_field.unwrap_or("id")
        } else {
            "id"
        };
        return Err(ApiError::invalid(format!(
            "{} \"{field}\" [{id}]: use {shape}1-64 characters of a-z, A-Z, 0-9, -, _ and .",
            res.singular
        )));
    }
    if res.name == "secrets" && !validate::SECRET_MANAGERS.iter().any(|(m, _)| *m == segs[0]) {
        return Err(ApiError::invalid(format!(
            "unknown secret manager [{}] (one of vault, aws, gcp)",
            segs[0]
        )));
    }
    Ok(())
}

/// The id as the value holds it: a credential keeps its own id only.
pub fn value_id<'a>(res: &Resource, id: &'a str) -> &'a str {
    if res.id_segments == 3 {
        id.rsplit('/').next().unwrap_or(id)
    } else {
        id
    }
}

/// An id as a value names it: a string as is, a number as its digits.
pub fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::CREDENTIALS;

    #[test]
    fn id_rules() {
        let routes = resources::find("routes").unwrap();
        let secrets = resources::find("secrets").unwrap();
        assert!(check_id(routes, "r-1.a_b").is_ok());
        assert!(check_id(routes, &"x".repeat(65)).is_err());
        assert!(check_id(routes, "a/b").is_err());
        assert!(check_id(routes, "a?ttl=1").is_err());
        assert!(check_id(secrets, "vault/1").is_ok());
        assert!(check_id(secrets, "nope/1").is_err());
        assert!(check_id(secrets, "vault").is_err());
        assert!(check_id(&CREDENTIALS, "jack/credentials/c1").is_ok());
        assert!(check_id(&CREDENTIALS, "jack/other/c1").is_err());
        assert_eq!(value_id(&CREDENTIALS, "jack/credentials/c1"), "c1");
    }
}
