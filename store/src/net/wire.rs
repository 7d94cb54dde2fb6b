//! The peer calls on the write and read paths as length-prefixed frames on
//! plain TCP, for `http://` peers, on the same port as the peer gRPC service:
//! openraft's three RPCs (append, vote, snapshot), and a follower's calls to
//! the leader (a forwarded write, a read index, a lease call).
//!
//! Why: every Raft round trip is on the write path (an append and its answer)
//! and on the linearizable read path (a heartbeat round), and most clients'
//! writes and reads arrive at a follower, which asks the leader. As tonic
//! unary calls each went through tower's buffer task, hyper's connection
//! tasks and a task per HTTP/2 stream on both sides: measured at 1 client,
//! the leader saw an append take ~0.2 ms longer than the follower spent on
//! it. Here the caller's task writes the request and reads the answer on a
//! connection of its own, and the server answers each connection in one
//! task, in order.
//!
//! Protocol: the client opens a connection with [`MAGIC`]; the server, which
//! tells it from HTTP/2's preface by peeking, answers [`ACCEPT`]. Then each
//! request is `u32 LE length | method byte | request`, and each answer
//! `u32 LE length | answer`: the same bytes the gRPC methods carry. One
//! request at a time per connection; idle connections are pooled per peer
//! URL. A peer that does not answer the greeting (an older member) is called
//! over gRPC from then on; `https://` peers always are (their TLS setup is
//! gRPC's). [`MAGIC_V1`] is what members that framed only openraft's RPCs
//! sent; they are still answered, and a member of this version is called
//! over gRPC by them (they do not know [`MAGIC`]).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// First bytes a client sends on a new connection.
pub const MAGIC: &[u8; 8] = b"CAIRNRF2";
/// The greeting of members whose frames carried openraft's RPCs only.
const MAGIC_V1: &[u8; 8] = b"CAIRNRF1";
/// The server's answer to [`MAGIC`].
const ACCEPT: &[u8; 8] = b"CAIRNOK1";
/// How long a new connection may take, greeting included.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Idle connections kept per peer (concurrent read-index rounds each use one).
const POOL_PER_PEER: usize = 8;
/// How long a peer that does not take frames is called over gRPC only.
const RETRY_FRAMES: Duration = Duration::from_secs(60);

/// The call a frame carries: openraft's RPCs (bincode), then a follower's
/// calls to the leader (`ReadIndex` as the gRPC method's protobuf, the
/// others bincode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    Append = 1,
    Vote = 2,
    Snapshot = 3,
    Forward = 4,
    ReadIndex = 5,
    Lease = 6,
}

impl Method {
    fn from_byte(b: u8) -> Option<Method> {
        match b {
            1 => Some(Method::Append),
            2 => Some(Method::Vote),
            3 => Some(Method::Snapshot),
            4 => Some(Method::Forward),
            5 => Some(Method::ReadIndex),
            6 => Some(Method::Lease),
            _ => None,
        }
    }
}

/// Why a call failed: `Unreachable` if the request certainly was not sent.
#[derive(Debug)]
pub enum CallError {
    Unreachable(io::Error),
    /// The peer does not speak this protocol: use gRPC.
    NotSupported,
    Failed(io::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "peer unreachable: {e}"),
            CallError::NotSupported => f.write_str("peer does not take frames"),
            CallError::Failed(e) => write!(f, "peer call failed: {e}"),
        }
    }
}

/// One framed call: what, its bytes, how long it may take, and whether it
/// may be sent twice (see [`WirePool::call`]).
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub method: Method,
    pub body: &'a [u8],
    pub timeout: Duration,
    pub repeatable: bool,
}

/// Idle connections per peer URL, and the peers known not to speak frames.
#[derive(Clone, Default)]
pub struct WirePool {
    idle: Arc<Mutex<HashMap<String, Vec<TcpStream>>>>,
    /// When each peer last turned the greeting down.
    grpc_only: Arc<Mutex<HashMap<String, std::time::Instant>>>,
}

impl WirePool {
    /// Whether calls to `url` go over frames (else over gRPC). A peer that
    /// turned the greeting down is asked again after [`RETRY_FRAMES`]: it may
    /// have been upgraded since.
    pub fn usable(&self, url: &str) -> bool {
        url.starts_with("http://")
            && self
                .grpc_only
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(url)
                .is_none_or(|t| t.elapsed() >= RETRY_FRAMES)
    }

    /// One request and its answer, within `timeout`.
    ///
    /// A `repeatable` call (openraft's RPCs: a follower answers a repeated
    /// append or vote the same; a read index; a lease renewal) on a pooled
    /// connection that fails, which a peer that restarted since may have
    /// closed, is retried once on a new connection. Any other (a forwarded
    /// write) is never sent twice: pooled connections the peer closed are
    /// seen (a read that does not wait) and dropped before one is used,
    /// `Unreachable` means it was certainly not sent, and once it is
    /// written any failure is `Failed`. Any failure leaves a connection in
    /// an unknown state: it is dropped.
    pub async fn call(&self, url: &str, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let Call {
            method,
            body,
            timeout,
            repeatable,
        } = call;
        let deadline = tokio::time::Instant::now() + timeout;
        let pooled = loop {
            match self.take_idle(url) {
                Some(c) if repeatable || open_and_idle(&c) => break Some(c),
                Some(_closed) => continue,
                None => break None,
            }
        };
        let reused = match pooled {
            Some(mut c) => {
                match tokio::time::timeout_at(deadline, exchange(&mut c, method, body)).await {
                    Ok(Ok(answer)) => Some((c, answer)),
                    Ok(Err(_stale)) if repeatable => None,
                    Ok(Err(e)) => return Err(CallError::Failed(e)),
                    Err(_) => return Err(timed_out()),
                }
            }
            None => None,
        };
        self.finish(url, reused, method, body, deadline).await
    }

    /// The answer a pooled connection gave, else the call on a new
    /// connection; the connection goes back to the pool.
    async fn finish(
        &self,
        url: &str,
        reused: Option<(TcpStream, Vec<u8>)>,
        method: Method,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, CallError> {
        let (conn, answer) = match reused {
            Some(done) => done,
            None => self.call_fresh(url, method, body, deadline).await?,
        };
        self.put_back(url, conn);
        Ok(answer)
    }

    fn take_idle(&self, url: &str) -> Option<TcpStream> {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(url)
            .and_then(|v| v.pop())
    }

    fn put_back(&self, url: &str, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(url.to_string()).or_default();
        if list.len() < POOL_PER_PEER {
            list.push(conn);
        }
    }

    /// A call on a new connection.
    async fn call_fresh(
        &self,
        url: &str,
        method: Method,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, Vec<u8>), CallError> {
        let connect_by = deadline.min(tokio::time::Instant::now() + CONNECT_TIMEOUT);
        let mut conn = match tokio::time::timeout_at(connect_by, self.connect(url)).await {
            Ok(res) => res?,
            Err(_) => {
                return Err(CallError::Unreachable(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {url} timed out"),
                )))
            }
        };
        let answer = tokio::time::timeout_at(deadline, exchange(&mut conn, method, body))
            .await
            .map_err(|_| timed_out())?
            .map_err(CallError::Failed)?;
        Ok((conn, answer))
    }

    async fn connect(&self, url: &str) -> Result<TcpStream, CallError> {
        let unreachable = |e: io::Error| CallError::Unreachable(e);
        let parsed = url::Url::parse(url)
            .map_err(|e| unreachable(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let (host, port) = match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(h), Some(p)) => (h.trim_matches(|c| c == '[' || c == ']').to_string(), p),
            _ => {
                return Err(unreachable(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("peer URL {url} has no host or port"),
                )))
            }
        };
        let mut conn = cairn_client::resolve::connect(&host, port)
            .await
            .map_err(unreachable)?;
        conn.write_all(MAGIC).await.map_err(unreachable)?;
        let mut reply = [0u8; 8];
        match conn.read_exact(&mut reply).await {
            Ok(_) if &reply == ACCEPT => Ok(conn),
            Err(e) => Err(unreachable(e)),
            // An older member's HTTP/2 server sends its SETTINGS frame.
            Ok(_) => {
                tracing::info!(peer = url, "peer does not take Raft frames; using gRPC");
                self.grpc_only
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(url.to_string(), std::time::Instant::now());
                Err(CallError::NotSupported)
            }
        }
    }
}

/// An idle connection still open with nothing to read: a peer that
/// restarted (or closed it) shows as an end of stream.
fn open_and_idle(c: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(c.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn timed_out() -> CallError {
    CallError::Failed(io::Error::new(
        io::ErrorKind::TimedOut,
        "peer call timed out",
    ))
}

async fn exchange(conn: &mut TcpStream, method: Method, body: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "peer message too large"))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.push(method as u8);
    frame.extend_from_slice(body);
    conn.write_all(&frame).await?;
    read_frame(conn).await
}

/// Reads one `u32 LE length | bytes` frame, refusing one over the peer limit.
async fn read_frame(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = conn.read_u32_le().await? as usize;
    if len > super::MAX_PEER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes is over the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Whether a new peer connection opens with [`MAGIC`]: waits for its first
/// bytes (an HTTP/2 client sends its preface at once).
pub async fn is_wire(conn: &TcpStream) -> bool {
    let mut head = [0u8; 8];
    let peeked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.peek(&mut head).await {
                Ok(n) if n >= head.len() => return true,
                // Fewer bytes so far: a prefix of MAGIC may still become it
                // (both greetings share all but their last byte).
                Ok(n) if n > 0 && head[..n] == MAGIC[..n] => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                _ => return false,
            }
        }
    })
    .await;
    matches!(peeked, Ok(true)) && (&head == MAGIC || &head == MAGIC_V1)
}

/// Answers one framed connection until it closes: `handle` turns a method
/// and its request bytes into the answer bytes.
pub async fn serve<F, Fut>(mut conn: TcpStream, handle: F)
where
    F: Fn(Method, bytes::Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
{
    let mut magic = [0u8; 8];
    if conn.read_exact(&mut magic).await.is_err() || conn.write_all(ACCEPT).await.is_err() {
        return;
    }
    loop {
        let frame = match read_frame(&mut conn).await {
            Ok(f) => bytes::Bytes::from(f),
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!("peer frame connection closed: {e}");
                }
                return;
            }
        };
        let Some(method) = frame.first().copied().and_then(Method::from_byte) else {
            tracing::warn!("peer frame with an unknown method; closing the connection");
            return;
        };
        let answer = match handle(method, frame.slice(1..)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("bad peer frame ({e}); closing the connection");
                return;
            }
        };
        let mut out = Vec::with_capacity(4 + answer.len());
        out.extend_from_slice(&(answer.len() as u32).to_le_bytes());
        out.extend_from_slice(&answer);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer port that answers frames by echoing `method byte | request`,
    /// and closes each connection after `per_conn` requests.
    async fn echo_server(per_conn: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                tokio::spawn(async move {
                    assert!(is_wire(&c).await);
                    let served = std::sync::atomic::AtomicUsize::new(0);
                    let fut = serve(c, |m, data| {
                        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            if n >= per_conn {
                                return Err("enough".to_string());
                            }
                            let mut out = vec![m as u8];
                            out.extend_from_slice(&data);
                            Ok(out)
                        }
                    });
                    fut.await;
                });
            }
        });
        url
    }

    const T: Duration = Duration::from_secs(5);

    fn call(method: Method, body: &[u8], repeatable: bool) -> Call<'_> {
        Call {
            method,
            body,
            timeout: T,
            repeatable,
        }
    }

    #[tokio::test]
    async fn calls_reuse_a_connection_and_survive_a_closed_one() {
        let url = echo_server(usize::MAX).await;
        let pool = WirePool::default();
        assert!(pool.usable(&url));
        let a = pool
            .call(&url, call(Method::Vote, b"hello", true))
            .await
            .unwrap();
        assert_eq!(a, b"\x02hello");
        let b = pool
            .call(&url, call(Method::Append, b"", true))
            .await
            .unwrap();
        assert_eq!(b, b"\x01");
        assert_eq!(pool.idle.lock().unwrap()[&url].len(), 1);

        // A server that closes after each answer: the pooled connection is
        // stale at the next call, which goes through on a new one.
        let url = echo_server(1).await;
        for i in 0..3u8 {
            let a = pool
                .call(&url, call(Method::Snapshot, &[i], true))
                .await
                .unwrap();
            assert_eq!(a, [3, i]);
        }
    }

    /// A peer that greets, takes one request per connection, echoes it back
    /// when `answer` (else says nothing) and closes the connection, as a
    /// peer that restarted did. Counts the requests it took.
    async fn one_request_per_connection(
        answer: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut magic = [0u8; 8];
                c.read_exact(&mut magic).await.unwrap();
                c.write_all(ACCEPT).await.unwrap();
                let Ok(req) = read_frame(&mut c).await else {
                    continue;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if answer {
                    let mut out = (req.len() as u32).to_le_bytes().to_vec();
                    out.extend_from_slice(&req);
                    c.write_all(&out).await.unwrap();
                }
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_call_that_must_not_be_repeated_is_not() {
        // The pooled connection the peer closed is seen closed before use,
        // and the call goes on a new one.
        let (url, _) = one_request_per_connection(true).await;
        let pool = WirePool::default();
        for (m, i) in [
            (Method::Forward, 1u8),
            (Method::ReadIndex, 2),
            (Method::Lease, 3),
        ] {
            let a = pool.call(&url, call(m, &[i], false)).await.unwrap();
            assert_eq!(a, [m as u8, i]);
            // Let the close arrive before the next call looks at the pool.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A peer that takes the request and closes without answering: the
        // outcome is unknown (Failed), never "not sent", and it is not retried.
        let (url, seen) = one_request_per_connection(false).await;
        let r = pool.call(&url, call(Method::Forward, b"w", false)).await;
        assert!(matches!(r, Err(CallError::Failed(_))), "{r:?}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nobody listening: certainly not sent.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let r = pool.call(&url, call(Method::Forward, b"w", false)).await;
        assert!(matches!(r, Err(CallError::Unreachable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn the_first_greeting_is_still_answered() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (c, _) = l.accept().await.unwrap();
            assert!(is_wire(&c).await);
            serve(c, |m, _| async move { Ok(vec![m as u8]) }).await;
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(MAGIC_V1).await.unwrap();
        let mut ok = [0u8; 8];
        c.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, ACCEPT);
        assert_eq!(exchange(&mut c, Method::Vote, b"").await.unwrap(), [2]);
    }

    #[tokio::test]
    async fn a_peer_without_frames_is_called_over_grpc() {
        // What an HTTP/2 server sends first: a SETTINGS frame.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let _ = c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let pool = WirePool::default();
        let r = pool.call(&url, call(Method::Append, b"x", true)).await;
        assert!(matches!(r, Err(CallError::NotSupported)), "{r:?}");
        assert!(!pool.usable(&url));
        assert!(!pool.usable("https://127.0.0.1:1"));
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_reported_as_such() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let r = WirePool::default()
            .call(&url, call(Method::Vote, b"", true))
            .await;
        assert!(matches!(r, Err(CallError::Unreachable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn grpc_and_oversized_frames_are_told_apart() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (c, _) = l.accept().await.unwrap();
            let grpc = !is_wire(&c).await;
            let (c2, _) = l.accept().await.unwrap();
            assert!(is_wire(&c2).await);
            serve(c2, |_, _| async { Ok(Vec::new()) }).await;
            drop(c);
            grpc
        });
        let mut h2 = TcpStream::connect(addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut wire = TcpStream::connect(addr).await.unwrap();
        wire.write_all(MAGIC).await.unwrap();
        let mut ok = [0u8; 8];
        wire.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, ACCEPT);
        // A frame over the limit: the server closes without reading it.
        let len = (crate::net::MAX_PEER_MESSAGE as u32) + 1;
        wire.write_all(&len.to_le_bytes()).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(wire.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(server.await.unwrap(), "the HTTP/2 preface went to gRPC");
    }
}
