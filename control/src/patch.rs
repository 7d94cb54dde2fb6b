//! JSON merge patches (RFC 7386): [`merge`] applies one (PATCH requests,
//! history reconstruction), [`diff`] computes the one between two values
//! (audit records keep the patch back to the old value, not both values).

use serde_json::{Map, Value};

/// Applies `patch` to `target`: `null` deletes a field, arrays are replaced.
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// The merge patch that turns `from` into `to`: `merge(from, diff(from, to))
/// == to`, except for `null` values inside `to`, which a merge patch cannot
/// express (APISIX values do not hold them).
pub fn diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut out = Map::new();
            for (k, tv) in t {
                match f.get(k) {
                    Some(fv) if fv == tv => {}
                    Some(fv) if fv.is_object() && tv.is_object() => {
                        out.insert(k.clone(), diff(fv, tv));
                    }
                    _ => {
                        out.insert(k.clone(), tv.clone());
                    }
                }
            }
            for k in f.keys() {
                if !t.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rules() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge(&mut v, json!({"a": null, "b": {"c": 5}, "e": [3]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [3]}));
    }

    #[test]
    fn diff_inverts_merge() {
        let old = json!({"uri": "/a", "plugins": {"p": {"x": 1, "y": 2}}, "gone": true, "n": [1]});
        let new = json!({"uri": "/b", "plugins": {"p": {"x": 1, "y": 3}, "q": {}}, "n": [1, 2]});
        let back = diff(&new, &old);
        assert_eq!(
            back,
            json!({"uri": "/a", "plugins": {"p": {"y": 2}, "q": null}, "gone": true, "n": [1]})
        );
        let mut v = new.clone();
        merge(&mut v, back);
        assert_eq!(v, old);
        assert_eq!(diff(&old, &old), json!({}));
    }
}
