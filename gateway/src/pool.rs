//! Keep-alive HTTP/1.1 connections to an upstream's nodes, for one serving
//! thread, used by the task of the request itself: it writes the request
//! and reads the response off the connection (`h1` holds the wire format),
//! and the connection goes back to its node's list, most recently used
//! first out, once its response body has been read to the end.
//!
//! Why not hyper-util's pooled client, which this first replaced: it keys
//! its pool by scheme and authority (hashed per request), locks a pool
//! shared by every thread, and hands each connection to a task of its own
//! to wait for it to become idle again, about 8k instructions per request
//! (`bench/gateway-cost.sh`). Why not hyper's bare client connections, which
//! came next: each still ran as a task of its own, so a request crossed to
//! it and back through channels (see `h1`). Here a pool belongs to one
//! upstream and one serving thread (its lock is never contended), a node is
//! an index, and a connection is a socket and its read buffer.
//!
//! A request is never lost nor sent twice because a connection was reused:
//! an idle connection the upstream closed is seen before use (a read that
//! does not wait) and dropped, and a request that could not be written
//! whole never reached the upstream as a request, so it goes on the next
//! connection.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tower_service::Service;

use crate::connect::{Connector, Stream};
use crate::h1::{self, BodyReader, ResponseHead, Step};

/// Idle connections are closed after this (nginx's keepalive_timeout 60 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// APISIX's keepalive_pool.size default, per node here.
const MAX_IDLE: usize = 320;
/// Read sizes: a response head (and, mostly, its whole small body); a body.
const HEAD_READ: usize = 8 * 1024;
const BODY_READ: usize = 32 * 1024;
/// A request body up to this size is written in the same write as its head.
const JOINED_BODY: usize = 16 * 1024;

/// Why a response body ended early. A concrete type, not a boxed error:
/// the serving future's `Send` check does not see through a boxed one.
#[derive(Debug)]
pub enum BodyError {
    Io(io::Error),
    Bad(h1::BadResponse),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Io(e) => write!(f, "reading the upstream's body: {e}"),
            BodyError::Bad(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made, or the request could not be written
    /// whole: the upstream did not get it.
    NotSent(io::Error),
    /// The request was sent; no usable answer came.
    Failed(String),
    /// The request was sent and the connection ended before any byte of an
    /// answer: on a reused connection, mostly an upstream that closed it as
    /// the request went out (its keep-alive ran out).
    Dropped(String),
}

impl SendError {
    /// Certain that the upstream did not see the request.
    pub fn never_sent(&self) -> bool {
        matches!(self, SendError::NotSent(_))
    }

    pub fn timed_out(&self) -> bool {
        matches!(self, SendError::NotSent(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(e) => write!(f, "{e}"),
            SendError::Failed(e) | SendError::Dropped(e) => f.write_str(e),
        }
    }
}

/// One connection to a node: the socket and the bytes read but not used yet.
struct Conn {
    io: Stream,
    buf: BytesMut,
}

impl Conn {
    /// Still open with nothing to read: an upstream that closed an idle
    /// connection (or sent bytes nobody asked for) shows it here, without
    /// waiting.
    fn idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Writes the head and the body; `head` is given back as it was.
    async fn write(&mut self, head: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
        if body.len() <= JOINED_BODY {
            let len = head.len();
            head.extend_from_slice(body);
            let r = self.io.write_all(head).await;
            head.truncate(len);
            r?;
        } else {
            self.io.write_all(head).await?;
            self.io.write_all(body).await?;
        }
        self.io.flush().await
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One upstream's connections on one serving thread.
pub struct Pool {
    connector: Connector,
    /// Per node: idle connections, oldest first, the most recently returned last.
    idle: Mutex<Vec<VecDeque<Idle>>>,
}

impl Pool {
    pub fn new(nodes: usize, connect_timeout: Duration) -> Pool {
        Pool {
            connector: Connector::new(connect_timeout),
            idle: Mutex::new((0..nodes).map(|_| VecDeque::new()).collect()),
        }
    }

    /// Sends a request to node `node`, reached at `addr` (scheme and
    /// authority), on an idle connection or a new one: `head` is the
    /// encoded head (`h1::HeadWriter`), `method` says whether the
    /// response has a body.
    pub async fn send(
        self: &Arc<Self>,
        node: usize,
        addr: &Uri,
        method: &Method,
        head: &mut Vec<u8>,
        body: &Bytes,
    ) -> Result<Response<Pooled>, SendError> {
        while let Some(mut conn) = self.take(node) {
            // Not written whole: the upstream has no request from it.
            if conn.write(head, body).await.is_err() {
                continue;
            }
            match self.answer(node, conn, method).await {
                // The upstream closed the reused connection as the request
                // went out. nginx tries a request that may be repeated once
                // more in that case (a cached connection's failure is not
                // counted); so does this, on the next connection.
                Err(SendError::Dropped(_)) if h1::idempotent(method) => continue,
                other => return other,
            }
        }
        let mut conn = self.connect(addr).await?;
        conn.write(head, body)
            .await
            .map_err(|e| SendError::NotSent(io::Error::new(e.kind(), format!("write: {e}"))))?;
        self.answer(node, conn, method).await
    }

    async fn connect(&self, addr: &Uri) -> Result<Conn, SendError> {
        let io = self
            .connector
            .clone()
            .call(addr.clone())
            .await
            .map_err(|e| SendError::NotSent(io::Error::new(e.kind(), format!("connect: {e}"))))?;
        Ok(Conn {
            io: io.into_inner(),
            buf: BytesMut::new(),
        })
    }

    /// Reads the response head; the body follows as the response's.
    async fn answer(
        self: &Arc<Self>,
        node: usize,
        mut conn: Conn,
        method: &Method,
    ) -> Result<Response<Pooled>, SendError> {
        let mut received = false;
        loop {
            // Nothing read yet (the usual case, a fresh request): no parse.
            if !conn.buf.is_empty() {
                match h1::parse_response(&mut conn.buf, method) {
                    Ok(Some(head)) => return Ok(self.response(node, conn, head)),
                    Ok(None) => {}
                    Err(e) => return Err(SendError::Failed(e.to_string())),
                }
            }
            conn.buf.reserve(HEAD_READ);
            match conn.io.read_buf(&mut conn.buf).await {
                Ok(0) if !received => {
                    return Err(SendError::Dropped(
                        "upstream closed the connection before answering".into(),
                    ))
                }
                Ok(0) => {
                    return Err(SendError::Failed(
                        "upstream closed the connection in the middle of its answer".into(),
                    ))
                }
                Ok(_) => received = true,
                Err(e) if !received => return Err(SendError::Dropped(e.to_string())),
                Err(e) => return Err(SendError::Failed(e.to_string())),
            }
        }
    }

    fn response(self: &Arc<Self>, node: usize, conn: Conn, head: ResponseHead) -> Response<Pooled> {
        let mut body = Pooled {
            ready: VecDeque::new(),
            live: Some(Live {
                conn,
                reader: BodyReader::new(head.framing),
                back: head.reusable.then(|| (self.clone(), node)),
            }),
            error: None,
        };
        // A small body mostly came with its head: it is taken now, and the
        // connection is back in the pool before the response is sent on.
        body.pump();
        let mut r = Response::new(body);
        *r.status_mut() = head.status;
        *r.version_mut() = head.version;
        *r.headers_mut() = head.headers;
        r
    }

    /// The most recently used idle connection of `node` that is still open
    /// and young enough; older ones found on the way are dropped (closing them).
    fn take(&self, node: usize) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(node)?;
        while let Some(mut i) = list.pop_back() {
            if i.since.elapsed() < IDLE_TIMEOUT && i.conn.idle_and_open() {
                return Some(i.conn);
            }
        }
        None
    }

    fn put_back(&self, node: usize, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = idle.get_mut(node) {
            // The oldest go when the list is full, and when they have been
            // idle too long: taking from the young end alone would keep
            // them open for as long as the load lasts.
            while list.len() >= MAX_IDLE
                || list
                    .front()
                    .is_some_and(|i| i.since.elapsed() >= IDLE_TIMEOUT)
            {
                list.pop_front();
            }
            list.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// A response body read off its connection, which goes back to the pool
/// once the body has been read to its end (and nothing came after it).
/// Dropped before that, the connection is closed: its next bytes would be
/// the rest of this body.
pub struct Pooled {
    /// Pieces read and not yet handed on.
    ready: VecDeque<Bytes>,
    /// The connection, while the body is not all read.
    live: Option<Live>,
    /// Handed on after `ready`.
    error: Option<BodyError>,
}

struct Live {
    conn: Conn,
    reader: BodyReader,
    /// Where the connection goes at the end; `None` when it may not be reused.
    back: Option<(Arc<Pool>, usize)>,
}

impl Pooled {
    /// Takes every piece of the body already read; at its end, gives the
    /// connection back.
    fn pump(&mut self) {
        let Some(live) = &mut self.live else {
            return;
        };
        loop {
            match live.reader.step(&mut live.conn.buf) {
                Ok(Step::Data(b)) => self.ready.push_back(b),
                Ok(Step::More) => return,
                Ok(Step::Done) => {
                    if let Some(Live {
                        conn,
                        back: Some((pool, node)),
                        ..
                    }) = self.live.take()
                    {
                        // Bytes after the body: the connection is out of step.
                        if conn.buf.is_empty() {
                            pool.put_back(node, conn);
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.live = None;
                    self.error = Some(BodyError::Bad(e));
                    return;
                }
            }
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if let Some(e) = this.error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            let Some(live) = &mut this.live else {
                return Poll::Ready(None);
            };
            live.conn.buf.reserve(BODY_READ);
            match tokio_util::io::poll_read_buf(Pin::new(&mut live.conn.io), cx, &mut live.conn.buf)
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let end = live.reader.at_eof();
                    this.live = None;
                    if let Err(e) = end {
                        return Poll::Ready(Some(Err(BodyError::Bad(e))));
                    }
                }
                Poll::Ready(Ok(_)) => this.pump(),
                Poll::Ready(Err(e)) => {
                    this.live = None;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.live.is_none() && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let have: u64 = self.ready.iter().map(|b| b.len() as u64).sum();
        match &self.live {
            None => SizeHint::with_exact(have),
            Some(l) => match l.reader.remaining() {
                Some(n) => SizeHint::with_exact(have + n),
                None => {
                    let mut h = SizeHint::new();
                    h.set_lower(have);
                    h
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// How the test upstream treats a connection after its first answer.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Keeps answering.
        KeepAlive,
        /// Closes it (as an upstream whose keep-alive timeout ran out does).
        Close,
        /// Reads the next request, then closes it unanswered (the same
        /// timeout running out as the request arrives).
        DropNext,
    }

    /// An HTTP/1.1 upstream on loopback giving `answer` to requests, each
    /// connection treated `after` its first answer as said. Counts the
    /// connections it accepted.
    async fn upstream(answer: &'static [u8], after: After) -> (Uri, Arc<AtomicUsize>) {
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
                    let mut answered = false;
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        if answered && after == After::DropNext {
                            return;
                        }
                        if s.write_all(answer).await.is_err() || after == After::Close {
                            return;
                        }
                        answered = true;
                    }
                });
            }
        });
        (uri, accepted)
    }

    async fn get(pool: &Arc<Pool>, uri: &Uri) -> Result<Response<Pooled>, SendError> {
        let mut head = Vec::new();
        let mut w = h1::HeadWriter::new(&mut head, &Method::GET, "/get");
        w.header(b"host", b"upstream");
        w.finish(None);
        pool.send(0, uri, &Method::GET, &mut head, &Bytes::new())
            .await
    }

    fn idle(pool: &Pool) -> usize {
        pool.idle.lock().unwrap()[0].len()
    }

    async fn body(resp: Response<Pooled>) -> Bytes {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (uri, accepted) = upstream(OK, After::KeepAlive).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        for _ in 0..5 {
            let resp = get(&pool, &uri).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two at once: the second cannot share the busy one.
        let (a, b) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
        assert_eq!(body(a.unwrap()).await, "ok");
        assert_eq!(body(b.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (uri, accepted) = upstream(OK, After::Close).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        let resp = get(&pool, &uri).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        // Once the close has arrived, the idle connection shows it, and the
        // next request goes on a new connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle.lock().unwrap()[0]
            .iter_mut()
            .any(|i| i.conn.idle_and_open())
        {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let resp = get(&pool, &uri).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn chunked_and_empty_bodies_give_their_connection_back() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n"
                [..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let (uri, accepted) = upstream(answer, After::KeepAlive).await;
            let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
            for _ in 0..3 {
                let b = body(get(&pool, &uri).await.unwrap()).await;
                assert!(b == "ok" || b.is_empty(), "{b:?}");
                assert_eq!(idle(&pool), 1);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_connection_is_not_reused_when_it_may_not_be() {
        let answers: [&'static [u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            // More than the body: the connection is out of step.
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nok",
        ];
        for answer in answers {
            let (uri, _) = upstream(answer, After::KeepAlive).await;
            let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
            let b = body(get(&pool, &uri).await.unwrap()).await;
            assert!(b.starts_with(b"o"));
            assert_eq!(idle(&pool), 0, "{}", String::from_utf8_lossy(answer));
        }
        // A body dropped before its end takes its connection with it.
        let big: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n"[..],
                &vec![b'x'; 1_000_000],
            ]
            .concat()
            .into_boxed_slice(),
        );
        let (uri, _) = upstream(big, After::KeepAlive).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        drop(get(&pool, &uri).await.unwrap());
        assert_eq!(idle(&pool), 0);
        let b = body(get(&pool, &uri).await.unwrap()).await;
        assert_eq!(b.len(), 1_000_000);
        assert_eq!(idle(&pool), 1);
    }

    #[tokio::test]
    async fn a_bad_answer_is_an_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"garbage\r\n\r\n",
        ] {
            let (uri, _) = upstream(answer, After::KeepAlive).await;
            let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
            let Err(e) = get(&pool, &uri).await else {
                panic!("a bad head taken");
            };
            assert!(!e.never_sent(), "{e}");
        }
        // Cut short: the body's error, and no connection kept.
        let (uri, _) = upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok",
            After::Close,
        )
        .await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        let resp = get(&pool, &uri).await.unwrap();
        use http_body_util::BodyExt;
        assert!(resp.into_body().collect().await.is_err());
        assert_eq!(idle(&pool), 0);
    }

    /// The keep-alive race: the upstream closes a connection as the next
    /// request on it arrives.
    #[tokio::test]
    async fn a_reused_connection_closed_under_a_request_is_retried_only_if_it_may_be() {
        let (uri, accepted) = upstream(OK, After::DropNext).await;
        let pool = Arc::new(Pool::new(1, Duration::from_secs(1)));
        let send = |method: Method| {
            let (pool, uri) = (pool.clone(), uri.clone());
            async move {
                let mut head = Vec::new();
                let mut w = h1::HeadWriter::new(&mut head, &method, "/");
                w.header(b"host", b"upstream");
                w.finish(Some(0));
                pool.send(0, &uri, &method, &mut head, &Bytes::new()).await
            }
        };
        assert_eq!(body(send(Method::GET).await.unwrap()).await, "ok");
        // The GET goes on the idle connection, which dies under it: sent
        // again on a new one.
        assert_eq!(body(send(Method::GET).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST in the same spot may have been taken: an error, not re-sent.
        let Err(e) = send(Method::POST).await else {
            panic!("a POST sent twice");
        };
        assert!(!e.never_sent(), "{e}");
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
        let Err(e) = get(&pool, &uri).await else {
            panic!("an answer from a closed port");
        };
        assert!(e.never_sent(), "{e}");
    }
}
