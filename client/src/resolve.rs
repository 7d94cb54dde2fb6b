//! Host name resolution for every channel Cairn opens (client members and
//! store peers), in pure Rust.
//!
//! Why not the system resolver: the release binary is linked statically
//! against glibc and shipped in a `scratch` image (DESIGN.md, "The static
//! binary and its image"). A static glibc cannot load its NSS modules, so
//! `getaddrinfo("store1")` cannot be trusted to find a compose service name.
//! hickory-resolver reads `/etc/hosts` and `/etc/resolv.conf` itself (Docker
//! bind-mounts both into every container; its embedded DNS server at
//! 127.0.0.11 answers service names), so the same code path works in the
//! image, on a host, and with the five-host layout's DNS or `--add-host`.
//!
//! Names are resolved again on every connection attempt, without a cache: a
//! restarted container may come back with a new address, and tonic reconnects
//! through [`connector`], so the next attempt finds the new one. (Docker's DNS
//! answers with a TTL of 600 s, which a caching resolver would honour.)
//!
//! IP literals never reach the resolver (hyper-util connects to them
//! directly); `localhost` resolves to loopback without a query (RFC 6761).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::TokioResolver;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;

/// Per-query timeout and attempts of one lookup. The channel's connect
/// timeout bounds the whole connection attempt anyway; these only keep one
/// lost UDP packet from using all of it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Opens a TCP connection to `host:port`, trying the addresses [`lookup`]
/// finds in its order until one answers.
pub async fn connect(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for ip in lookup(host).await? {
        match tokio::net::TcpStream::connect((ip, port)).await {
            Ok(s) => {
                crate::tcp::tune(&s);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Resolves `host` (a name or an IP literal, IPv6 with or without brackets)
/// to its addresses, IPv4 first.
pub async fn lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    // A fresh resolver per lookup: it rereads /etc/hosts and /etc/resolv.conf
    // (cheap next to a TCP connect, and connects are rare) and can hold no
    // stale answer.
    let resolver = match TokioResolver::builder_tokio() {
        Ok(mut b) => {
            let o: &mut ResolverOpts = b.options_mut();
            o.cache_size = 0;
            o.positive_max_ttl = Some(Duration::ZERO);
            o.negative_max_ttl = Some(Duration::ZERO);
            o.timeout = QUERY_TIMEOUT;
            o.attempts = QUERY_ATTEMPTS;
            b.build()
        }
        Err(conf_err) => {
            // No readable /etc/resolv.conf (not the case in a container:
            // Docker always provides one). The system resolver is then the
            // only one that can know better; a dynamically linked build has
            // working NSS.
            return tokio::net::lookup_host((bare, 0))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot resolve {bare}: {e} (and /etc/resolv.conf: {conf_err})"),
                    )
                });
        }
    };
    match resolver.lookup_ip(bare).await {
        Ok(found) => {
            let ips: Vec<IpAddr> = found.iter().collect();
            if ips.is_empty() {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve {bare}: no addresses"),
                ))
            } else {
                Ok(ips)
            }
        }
        Err(e) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot resolve {bare}: {e}"),
        )),
    }
}

/// hyper-util resolver service over [`lookup`] (port 0: the connector fills
/// in the URL's port).
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolver;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = lookup(&host).await?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// The TCP connector for `tonic::transport::Endpoint::connect_with_connector_lazy`:
/// tonic still applies the endpoint's connect timeout (to resolution and
/// connect together) and, when configured, its TLS. Each connection gets
/// [`crate::tcp::tune`].
pub fn connector() -> Connector {
    let mut http = HttpConnector::new_with_resolver(Resolver);
    // tonic's TLS layer wraps this connector for https:// URLs; the plain
    // TCP part must accept them.
    http.enforce_http(false);
    Connector(http)
}

/// hyper-util's connector with [`crate::tcp::tune`] applied to what it connects.
#[derive(Clone, Debug)]
pub struct Connector(HttpConnector<Resolver>);

type Connected = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = Connected;
    type Error =
        <HttpConnector<Resolver> as tower_service::Service<tonic::codegen::http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Connected, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            crate::tcp::tune(io.inner());
            Ok(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_are_not_looked_up() {
        assert_eq!(
            lookup("10.1.2.3").await.unwrap(),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup("[::1]").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn localhost_is_loopback() {
        let ips = lookup("localhost").await.unwrap();
        assert!(!ips.is_empty());
        assert!(ips.iter().all(IpAddr::is_loopback), "{ips:?}");
    }

    #[tokio::test]
    async fn unknown_name_fails_with_the_name() {
        // `.invalid` never resolves (RFC 6761); the error names the host.
        let err = lookup("no-such-member.invalid").await.unwrap_err();
        assert!(err.to_string().contains("no-such-member.invalid"), "{err}");
    }

    /// A tonic channel through the connector reaches a server by name.
    #[tokio::test]
    async fn channel_connects_by_name() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut svc = connector();
        let uri: tonic::codegen::http::Uri = format!("http://localhost:{port}").parse().unwrap();
        let (conn, accepted) = tokio::join!(
            tower_service::Service::call(&mut svc, uri),
            listener.accept()
        );
        let conn = conn.expect("connect by name");
        let (mut server_side, _) = accepted.unwrap();
        drop(conn);
        // The connection was real: the server sees it close.
        let mut buf = [0u8; 1];
        assert_eq!(server_side.read(&mut buf).await.unwrap(), 0);
    }
}
