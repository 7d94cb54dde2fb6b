//! Endpoint parsing and the per-endpoint lazily connected channels.

use tonic::transport::{Channel, Endpoint};

use crate::{ClientOptions, Error, Result};

/// One cluster member as the client sees it: its normalized URL and a channel
/// that connects on first use and reconnects after failures (tonic's lazy
/// channel), so a down member costs nothing until it is tried.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) url: String,
    pub(crate) channel: Channel,
}

/// Normalizes `http://host:port`, `https://host:port` or bare `host:port`
/// (https when the client has TLS settings, as etcdctl with `--cacert`).
pub(crate) fn normalize(endpoint: &str, tls: bool) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let url = if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else if e.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "endpoint {endpoint:?}: only http:// and https:// endpoints are supported"
        )));
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    };
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|err| Error::InvalidArgument(format!("endpoint {endpoint:?}: {err}")))?;
    let has_path = uri.path() != "/" && !uri.path().is_empty();
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() || has_path {
        return Err(Error::InvalidArgument(format!(
            "endpoint {endpoint:?}: expected http://host:port or host:port"
        )));
    }
    Ok(url)
}

pub(crate) fn member(url: String, opts: &ClientOptions) -> Result<Member> {
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|err| Error::InvalidArgument(format!("endpoint {url:?}: {err}")))?;
    if url.starts_with("https://") {
        let tls = opts.tls.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "endpoint {url:?} is https:// but no TLS settings (CA) were given"
            ))
        })?;
        ep = ep
            .tls_config(tls.tonic_config())
            .map_err(|err| Error::InvalidArgument(format!("TLS settings: {err}")))?;
    }
    let channel = ep
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .connect_with_connector_lazy(crate::resolve::connector());
    Ok(Member { url, channel })
}

#[cfg(test)]
mod tests {
    fn normalize(e: &str) -> crate::Result<String> {
        super::normalize(e, false)
    }

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize("http://127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize(" localhost:1/ ").unwrap(), "http://localhost:1");
    }

    #[test]
    fn rejects() {
        assert_eq!(super::normalize("a:1", true).unwrap(), "https://a:1");
        assert_eq!(normalize("https://a:1").unwrap(), "https://a:1");
        for bad in [
            "",
            "unix:///x",
            "127.0.0.1",
            "http://a:1/v3",
            "http://:1",
            "a b:1",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
