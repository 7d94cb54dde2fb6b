//! The two key prefixes a deployment uses: APISIX's resources (`--prefix`,
//! default `/apisix`; the HA guide uses `/api7/<cluster_id>`) and Cairn's
//! own keys (`--cairn-prefix`, default `/cairn`: admin key hash, sessions,
//! audit, gateway registrations). The control plane and the gateways must
//! agree on both, so both resolve them here.

/// `(prefix, cairn_prefix)` from the given values or the defaults: each
/// made `/`-led with no trailing `/`, neither empty, and Cairn's outside the
/// resources' (data planes watch that whole prefix).
pub fn resolve(
    prefix: Option<String>,
    cairn_prefix: Option<String>,
) -> Result<(String, String), String> {
    let prefix = normalize(prefix, "/apisix")?;
    let cairn_prefix = normalize(cairn_prefix, "/cairn")?;
    if cairn_prefix.starts_with(&format!("{prefix}/")) || cairn_prefix == prefix {
        return Err(format!(
            "--cairn-prefix {cairn_prefix} must lie outside --prefix {prefix}: data planes watch that prefix"
        ));
    }
    Ok((prefix, cairn_prefix))
}

fn normalize(p: Option<String>, default: &str) -> Result<String, String> {
    let p = p.unwrap_or_else(|| default.to_string());
    let p = format!("/{}", p.trim_matches('/'));
    if p == "/" {
        return Err("a key prefix may not be empty".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_normal_forms_and_overlap() {
        let d = resolve(None, None).unwrap();
        assert_eq!(d, ("/apisix".to_string(), "/cairn".to_string()));
        let g = resolve(Some("api7/c1/".into()), Some("/cairn/".into())).unwrap();
        assert_eq!(g.0, "/api7/c1");
        assert!(resolve(Some("/".into()), None).is_err());
        assert!(resolve(Some("/a".into()), Some("/a/c".into())).is_err());
        assert!(resolve(Some("/a".into()), Some("/a".into())).is_err());
        assert!(resolve(Some("/a".into()), Some("/ab".into())).is_ok());
    }
}
