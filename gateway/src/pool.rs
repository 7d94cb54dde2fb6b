//! Keep-alive HTTP/1.1 connections to an upstream's nodes, for one serving
//! thread: hyper's bare `client::conn::http1` senders kept in a list per
//! node, most recently used first out.
//!
//! Why not hyper-util's pooled client, which this replaced: it keys its pool
//! by scheme and authority (hashed per request), locks a pool shared by
//! every thread, and hands each connection to a task of its own to wait for
//! it to become idle again, about 8k instructions per request
//! (`bench/gateway-cost.sh`). Here a pool belongs to one upstream and one
//! serving thread (its lock is never contended), a node is an index, and a
//! connection goes back to the list when its response body ends.
//!
//! What the pooled client did and this keeps: a request that a reused
//! connection could not take (the upstream closed it while it was idle) is
//! never lost nor sent twice: hyper hands back a request it did not start
//! writing, and it goes on a fresh connection.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tower_service::Service;

use crate::connect::Connector;

/// Idle connections are closed after this (nginx's keepalive_timeout 60 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// APISIX's keepalive_pool.size default, per node here.
const MAX_IDLE: usize = 320;

type Sender = SendRequest<Full<Bytes>>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request never left.
    Connect(io::Error),
    /// The connection failed after the request was (or may have been) written.
    Http(hyper::Error),
}

impl SendError {
    /// Certain that the upstream did not see the request.
    pub fn never_sent(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    pub fn timed_out(&self) -> bool {
        matches!(self, SendError::Connect(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// One upstream's connections on one serving thread.
pub struct Pool {
    connector: Connector,
    /// Per node: idle senders, oldest first, the most recently returned last.
    idle: Mutex<Vec<VecDeque<Idle>>>,
}

impl Pool {
    pub fn new(nodes: usize, connect_timeout: Duration) -> Pool {
        Pool {
            connector: Connector::new(connect_timeout),
            idle: Mutex::new((0..nodes).map(|_| VecDeque::new()).collect()),
        }
    }

    /// Sends `req` (origin-form URI, Host set) to node `node`, reached at
    /// `addr` (scheme and authority), on an idle connection or a new one.
    pub async fn send(
        self: &Arc<Self>,
        node: usize,
        addr: &Uri,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Pooled>, SendError> {
        while let Some(mut tx) = self.take(node) {
            // Idle means its last response was read; `ready` fails at once
            // if the upstream closed the connection meanwhile.
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(node, tx, resp)),
                Err(mut e) => match e.take_message() {
                    // Not taken by that connection: try the next.
                    Some(back) => req = back,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut tx = self.connect(addr).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok(self.pooled(node, tx, resp)),
            Err(e) => Err(SendError::Http(e)),
        }
    }

    async fn connect(&self, addr: &Uri) -> Result<Sender, SendError> {
        let io = self
            .connector
            .clone()
            .call(addr.clone())
            .await
            .map_err(SendError::Connect)?;
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        // Driven by this thread's runtime, like the request that uses it.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// The most recently used idle sender of `node` that is still open and
    /// young enough; older ones found on the way are dropped (closing them).
    fn take(&self, node: usize) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(node)?;
        while let Some(i) = list.pop_back() {
            if !i.tx.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.tx);
            }
        }
        None
    }

    fn put_back(&self, node: usize, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = idle.get_mut(node) {
            // The oldest go when the list is full, and when they have been
            // idle too long: taking from the young end alone would keep
            // them open for as long as the load lasts.
            while list.len() >= MAX_IDLE
                || list
                    .front()
                    .is_some_and(|i| i.tx.is_closed() || i.since.elapsed() >= IDLE_TIMEOUT)
            {
                list.pop_front();
            }
            list.push_back(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    fn pooled(
        self: &Arc<Self>,
        node: usize,
        tx: Sender,
        resp: Response<Incoming>,
    ) -> Response<Pooled> {
        let pool = self.clone();
        resp.map(|body| {
            let mut p = Pooled {
                body,
                back: Some((pool, node, tx)),
            };
            p.return_if_done();
            p
        })
    }
}

/// A response body that gives its connection back to the pool once read to
/// the end. Dropped before that, the connection is dropped too: hyper
/// cannot reuse a connection with an unread response on it.
pub struct Pooled {
    body: Incoming,
    back: Option<(Arc<Pool>, usize, Sender)>,
}

impl Pooled {
    fn give_back(&mut self) {
        if let Some((pool, node, tx)) = self.back.take() {
            pool.put_back(node, tx);
        }
    }

    fn return_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) => this.return_if_done(),
            // A failed body leaves a connection nobody may reuse.
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 upstream on loopback answering "ok" to every request; with
    /// `close_after_one` it closes each connection after its first answer
    /// (as an upstream whose keep-alive timeout ran out does). Counts the
    /// connections it accepted.
    async fn upstream(close_after_one: bool) -> (Uri, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() || close_after_one {
                            return;
                        }
                    }
                });
            }
        });
        (uri, accepted)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/get")
            .header("host", "upstream")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn body(resp: Response<Pooled>) -> Bytes {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (uri, accepted) = upstream(false).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        for _ in 0..5 {
            let resp = pool.send(0, &uri, get()).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two at once: the second cannot share the busy one.
        let (a, b) = tokio::join!(pool.send(0, &uri, get()), pool.send(0, &uri, get()));
        assert_eq!(body(a.unwrap()).await, "ok");
        assert_eq!(body(b.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (uri, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        let resp = pool.send(0, &uri, get()).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        // Once the connection's task has seen the close, the idle sender
        // says so, and the next request goes on a new connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pool.idle.lock().unwrap()[0]
            .iter()
            .all(|i| i.tx.is_closed())
        {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::task::yield_now().await;
        }
        let resp = pool.send(0, &uri, get()).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_node_was_never_sent_to() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", l.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(l);
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        let Err(e) = pool.send(0, &uri, get()).await else {
            panic!("an answer from a closed port");
        };
        assert!(e.never_sent(), "{e}");
    }
}
