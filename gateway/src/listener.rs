//! Accept loops: one task per connection, HTTP/1.1 and HTTP/2 (h2c by
//! preface, h2 by ALPN over TLS) through hyper-util's auto builder. At the
//! end of a drain every connection is shut down gracefully: HTTP/2 gets a
//! GOAWAY and its streams in flight finish; HTTP/1 finishes the request in
//! flight and closes (an idle one closes at once).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Every response body the gateway sends: a buffered one or an upstream's stream.
pub type Body = BoxBody<Bytes, crate::pool::BodyError>;

/// A buffered body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

/// Slow clients may not hold a connection open without sending headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Which address a request came in on, and whether over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// A one-way switch, and a wake-up for those waiting for it.
#[derive(Default)]
pub struct Switch {
    on: AtomicBool,
    flipped: Notify,
}

impl Switch {
    pub fn flip(&self) {
        self.on.store(true, Ordering::Release);
        self.flipped.notify_waiters();
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Resolves once the switch is on (at once if it is).
    pub async fn wait(&self) {
        // Registered before the check: a flip in between still wakes it.
        let flipped = self.flipped.notified();
        if self.is_on() {
            return;
        }
        flipped.await;
    }
}

/// Serves `listener` forever; `tls` terminates TLS first when given; `open`
/// counts the open connections; once `close` is on, each connection is shut
/// down gracefully.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    open: Option<Arc<AtomicI64>>,
    close: Option<Arc<Switch>>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        cairn_client::tcp::tune(&stream);
        let local = stream.local_addr().unwrap_or(remote);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let close = close.clone();
        let open = open.clone().map(OpenConn::new);
        tokio::spawn(async move {
            let _open = open;
            let peer = Peer {
                remote,
                local,
                tls: tls.is_some(),
            };
            let svc = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req, peer).await) }
            });
            let res = match tls {
                None => connection(&builder, stream, svc, close.as_deref()).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => connection(&builder, s, svc, close.as_deref()).await,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = res {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
        });
    }
}

/// Serves one connection to its end; once `close` is on, gracefully.
async fn connection<I, S>(
    builder: &Builder<TokioExecutor>,
    io: I,
    svc: S,
    close: Option<&Switch>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let Some(close) = close else {
        return conn.await;
    };
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => res,
        () = close.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Counts a connection while it is open.
struct OpenConn(Arc<AtomicI64>);

impl OpenConn {
    fn new(c: Arc<AtomicI64>) -> OpenConn {
        c.fetch_add(1, Ordering::Relaxed);
        OpenConn(c)
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds `addr` with a readable error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}
