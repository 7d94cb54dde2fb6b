//! `GET /apisix/admin/<res>` (and a consumer's credentials): APISIX's list
//! envelope, paging (`page`, `page_size`; in the store when nothing needs
//! filtering) and filters (`name`, `uri`, `label`).

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::request::{Ctx, Q};
use super::stored::{envelope, Stored};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::secrets;

/// A list: every item of `res` (for credentials, of consumer `owner`).
pub async fn list(ctx: &Ctx<'_>, res: &Resource, owner: &str) -> ApiResult<Response> {
    let state = ctx.state;
    let credentials = res.id_segments == 3;
    let dir = if credentials {
        format!(
            "{}/{}/{owner}/credentials/",
            state.settings.prefix, res.name
        )
    } else {
        format!("{}/{}/", state.settings.prefix, res.name)
    };
    let q = ctx.query;
    let paging = page_of(q)?;
    let filtered = ["name", "uri", "label"]
        .iter()
        .any(|f| q.get(*f).is_some_and(|v| !v.is_empty()));
    // Paged in the store when nothing needs filtering and every key under
    // the directory is an item (consumers' directories hold credentials too).
    let (kvs, store_total) = match paging {
        Some((p, s)) if !filtered && res.name != "consumers" => {
            let (kvs, total) = state.store.page_by_creation(&dir, (p - 1) * s, s).await?;
            (kvs, Some(total))
        }
        _ => (state.store.list(&dir).await?, None),
    };
    let mut items: Vec<(String, Stored)> = kvs
        .into_iter()
        .filter_map(|kv| {
            let rel = String::from_utf8_lossy(&kv.key[dir.len()..]).into_owned();
            // APISIX's CLI puts `<prefix>/<res>/` = init_dir: not a resource;
            // a consumer's credentials lie below it: not consumers.
            let want = if res.id_segments == 3 {
                1
            } else {
                res.id_segments
            };
            if rel.is_empty() || rel.split('/').count() != want {
                return None;
            }
            let id = if credentials {
                format!("{owner}/credentials/{rel}")
            } else {
                rel
            };
            let value = secrets::decode(state, res, &id, &kv.value);
            value.is_object().then_some((id, Stored { kv, value }))
        })
        .collect();
    items.retain(|(_, s)| matches_filters(&s.value, q));
    items.sort_by_key(|(_, s)| s.kv.create_revision);
    let (total, page) = match (store_total, paging) {
        (Some(total), _) => (total, items),
        (None, Some((p, s))) => (
            items.len(),
            items.into_iter().skip((p - 1) * s).take(s).collect(),
        ),
        (None, None) => (items.len(), items),
    };
    let list = page
        .iter()
        .map(|(id, s)| envelope(state, res, id, s))
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(json!({ "total": total, "list": list })).into_response())
}

/// `page` and `page_size`, when both are given (APISIX pages only then):
/// a page below 1 is the first, as in APISIX; sizes 10 to 500.
fn page_of(q: &Q) -> ApiResult<Option<(usize, usize)>> {
    let (Some(p), Some(s)) = (q.get("page"), q.get("page_size")) else {
        return Ok(None);
    };
    let p = p
        .parse::<i64>()
        .map(|p| p.max(1) as usize)
        .map_err(|_| ApiError::bad_request("page must be an integer"))?;
    let s: usize = s
        .parse()
        .ok()
        .filter(|s| (10..=500).contains(s))
        .ok_or_else(|| ApiError::bad_request("page_size must be an integer between 10 and 500"))?;
    Ok(Some((p, s)))
}

/// APISIX's list filters: `name` (substring), `uri` (substring of `uri` or
/// any of `uris`), `label` (`k` or `k:v`, several comma-separated, all must hold).
fn matches_filters(v: &Value, q: &Q) -> bool {
    if let Some(n) = q.get("name").filter(|n| !n.is_empty()) {
        if !v
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(n.as_str()))
        {
            return false;
        }
    }
    if let Some(u) = q.get("uri").filter(|u| !u.is_empty()) {
        let one = v
            .get("uri")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(u.as_str()));
        let many = v.get("uris").and_then(Value::as_array).is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|s| s.contains(u.as_str()))
        });
        if !one && !many {
            return false;
        }
    }
    if let Some(l) = q.get("label").filter(|l| !l.is_empty()) {
        let labels = v.get("labels").and_then(Value::as_object);
        for want in l.split(',') {
            let (k, val) = match want.split_once(':') {
                Some((k, val)) => (k, Some(val)),
                None => (want, None),
            };
            let have = labels.and_then(|m| m.get(k)).and_then(Value::as_str);
            let ok = match (have, val) {
                (Some(h), Some(v)) => h == v,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters() {
        let v = json!({"name": "hello-route", "uris": ["/a", "/bc"], "labels": {"env": "prod"}});
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Q>()
        };
        assert!(matches_filters(
            &v,
            &q(&[("name", "hello"), ("uri", "/b"), ("label", "env:prod")])
        ));
        assert!(!matches_filters(&v, &q(&[("label", "env:dev")])));
        assert!(!matches_filters(&v, &q(&[("name", "x")])));
    }
}
