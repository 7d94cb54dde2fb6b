//! One budget for the bytes of client requests in flight on the client port
//! (`--max-request-bytes-in-flight`), so the member's memory stays bounded
//! however many requests arrive at once, over however many connections.
//!
//! Each request is bounded on its own (`--max-request-bytes`), but HTTP/2
//! lets a connection carry 200 streams at once and nothing bounds the
//! connections: a client opening streams with large messages, or most of a
//! message and then silence, would have the member buffer, decode and hold
//! every one of them. So a large request reserves its size from one shared
//! budget before the bulk of its bytes is read:
//! - a gRPC message of [`METERED_FROM`] or more reserves the length its
//!   5-byte prefix declares. A unary request keeps it until its answer is
//!   ready (the decoded request lives as long as its handler); a stream
//!   (Watch, LeaseKeepAlive) until the message is read whole;
//! - any other body (the JSON gateway) reserves its `Content-Length` if that
//!   is [`METERED_FROM`] or more, or, without one, the gateway's body limit
//!   (except a watch or keep-alive stream, whose messages are each bounded
//!   by that limit), and keeps it until its answer is ready and the body is
//!   done with.
//!
//! A request that does not fit waits, first come first served, and its body
//! is not read meanwhile, so HTTP/2's and TCP's flow control hold its sender
//! back. Once it holds room it has [`BODY_DEADLINE`] to send the rest, so a
//! client that sends most of a body and stops holds room for that long, not
//! for ever. Smaller requests take no room (a connection carries at most
//! one HTTP/1 request, or 200 HTTP/2 streams, of them at a time), and a
//! request over its limit takes none either: it is refused without being
//! kept (tonic reads the length first; the gateway drains it at the refusal
//! pace). So what a member holds is the budget plus, per connection, a
//! flow-control window (hyper's 1 MiB) and its small requests. etcd has no
//! such bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests smaller than this take no room.
pub const METERED_FROM: u64 = 64 << 10;

/// How long a request holding room may take to send the rest of its body
/// (or of its message): 1.5 MiB in 10 s is 150 KiB/s.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The shared budget.
pub struct Budget {
    sem: Arc<Semaphore>,
    /// Its size: no request reserves more.
    bytes: u32,
    /// The largest gRPC message tonic decodes: larger ones are refused from
    /// their prefix and take no room.
    grpc_max: u64,
    /// The gateway's body limit: what a body without a length reserves;
    /// a longer declared length is refused unkept and takes no room.
    json_max: u64,
}

impl Budget {
    pub fn new(bytes: usize, grpc_max: usize, json_max: usize) -> Arc<Budget> {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Arc::new(Budget {
            sem: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
            grpc_max: grpc_max as u64,
            json_max: json_max as u64,
        })
    }

    /// Room for a message or body of `bytes`, if it needs any.
    fn reserve(&self, bytes: u64, max: u64) -> Option<Reserving> {
        if !(METERED_FROM..=max).contains(&bytes) {
            return None;
        }
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.bytes);
        if let Ok(p) = self.sem.clone().try_acquire_many_owned(n) {
            return Some(Reserving::Done(Reservation::new(p)));
        }
        let sem = self.sem.clone();
        let waiting = Waiting::new();
        Some(Reserving::Waiting(Box::pin(async move {
            let _waiting = waiting;
            sem.acquire_many_owned(n).await.ok().map(Reservation::new)
        })))
    }
}

/// A future that resolves to the reservation (`None` only if the budget
/// were closed, which it never is).
type Acquire = Pin<Box<dyn Future<Output = Option<Reservation>> + Send + Sync>>;

enum Reserving {
    Done(Reservation),
    Waiting(Acquire),
}

/// Reserved bytes, counted in `cairn_request_bytes_in_flight` while held.
struct Reservation(OwnedSemaphorePermit);

impl Reservation {
    fn new(p: OwnedSemaphorePermit) -> Reservation {
        crate::metrics::METRICS
            .request_bytes_in_flight
            .add(p.num_permits() as i64);
        Reservation(p)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let m = &crate::metrics::METRICS.request_bytes_in_flight;
        m.sub(self.0.num_permits() as i64);
    }
}

/// A request waiting for room, counted in `cairn_requests_waiting_for_room`.
struct Waiting;

impl Waiting {
    fn new() -> Waiting {
        crate::metrics::METRICS.requests_waiting_for_room.inc();
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        crate::metrics::METRICS.requests_waiting_for_room.dec();
    }
}

/// The reservation of one request, shared by its body and by [`admit`]
/// until its answer: released when both are done with it.
type Slot = Arc<Mutex<Option<Reservation>>>;

/// The gRPC methods whose requests are streams of messages.
const STREAMS: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

/// Middleware: meters the request's body against `budget`.
pub async fn admit(budget: Arc<Budget>, req: Request, next: Next) -> Response {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (pending, prefix) = if grpc {
        let stream = STREAMS.contains(&req.uri().path());
        (None, Some(Prefix::new(stream)))
    } else {
        let path = req.uri().path();
        let stream = path.ends_with("/watch") || path.ends_with("/lease/keepalive");
        let reserving = match http_body::Body::size_hint(req.body()).exact() {
            Some(declared) => budget.reserve(declared, budget.json_max),
            // A stream of JSON messages may last for ever: each message is
            // bounded by the body limit on its own (`json_frames`).
            None if stream => None,
            None => budget.reserve(budget.json_max, budget.json_max),
        };
        (reserving, None)
    };
    if pending.is_none() && prefix.is_none() {
        return next.run(req).await;
    }
    let slot = Slot::default();
    let (parts, body) = req.into_parts();
    let metered = Metered {
        inner: body,
        budget,
        slot: slot.clone(),
        pending,
        deadline: None,
        prefix,
    };
    let resp = next
        .run(Request::from_parts(parts, Body::new(metered)))
        .await;
    drop(slot);
    resp
}

/// A request body read only once its reservation is held.
struct Metered {
    inner: Body,
    budget: Arc<Budget>,
    slot: Slot,
    /// The reservation to hold before the next frame is read.
    pending: Option<Reserving>,
    /// While a reservation waits for the rest of its bytes: until when.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// gRPC bodies: where the walk over message prefixes is.
    prefix: Option<Prefix>,
}

impl Metered {
    /// Holds `r` as the request's reservation (a gRPC stream's earlier
    /// messages are read and decoded by now, so it replaces theirs) and
    /// starts the clock on the bytes it waits for.
    fn hold(&mut self, r: Reservation) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.deadline = Some(Box::pin(tokio::time::sleep(BODY_DEADLINE)));
    }

    /// After a frame: a stream's message read whole gives its room back,
    /// and no reservation waits for bytes any more.
    fn frame_read(&mut self, data: &[u8]) {
        let Some(p) = self.prefix.as_mut() else {
            return;
        };
        let started = p.feed(data);
        let (between, stream) = (p.between_messages(), p.stream);
        match started.and_then(|len| self.budget.reserve(len, self.budget.grpc_max)) {
            Some(r) => self.pending = Some(r),
            None if between => {
                self.deadline = None;
                if stream {
                    self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
            }
            None => {}
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.pending.take() {
            None => {}
            Some(Reserving::Done(r)) => self.hold(r),
            Some(Reserving::Waiting(mut fut)) => match fut.as_mut().poll(cx) {
                Poll::Pending => {
                    self.pending = Some(Reserving::Waiting(fut));
                    return Poll::Pending;
                }
                Poll::Ready(Some(r)) => self.hold(r),
                // The semaphore is never closed; read on unmetered.
                Poll::Ready(None) => {}
            },
        }
        // Checked on every poll, so a body trickling in a byte at a time
        // meets the deadline as surely as one that stopped.
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.deadline = None;
                self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Poll::Ready(Some(Err(axum::Error::new(format!(
                    "request body not received within {} s",
                    BODY_DEADLINE.as_secs()
                )))));
            }
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.frame_read(data);
                }
            }
            _ => self.deadline = None,
        }
        if self.inner.is_end_stream() {
            self.deadline = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The walk over a gRPC body's messages: each is a 5-byte prefix
/// (compression flag, big-endian length) and that many bytes.
#[derive(Debug, Default)]
struct Prefix {
    got: [u8; 5],
    n: usize,
    /// Bytes of the current message still to come.
    left: u64,
    /// A stream: each message's reservation ends once it is read whole
    /// (a unary request keeps its one until the answer).
    stream: bool,
}

impl Prefix {
    fn new(stream: bool) -> Prefix {
        Prefix {
            stream,
            ..Prefix::default()
        }
    }

    /// No message is partly read.
    fn between_messages(&self) -> bool {
        self.left == 0 && self.n == 0
    }

    /// Walks `data`; the declared length of the last message that started in
    /// it and is not complete at its end, if any.
    fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        let mut started = None;
        while !data.is_empty() {
            if self.left > 0 {
                let step = self.left.min(data.len() as u64);
                self.left -= step;
                data = &data[step as usize..];
                if self.left == 0 {
                    started = None;
                }
                continue;
            }
            self.got[self.n] = data[0];
            self.n += 1;
            data = &data[1..];
            if self.n == 5 {
                self.n = 0;
                let [_, a, b, c, d] = self.got;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                started = (self.left > 0).then_some(self.left);
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.resize(5 + len, 7);
        m
    }

    #[test]
    fn the_prefix_walk_finds_each_message_that_is_still_arriving() {
        let msg = grpc_message(100);
        // Whole in one piece: nothing left to reserve for.
        assert_eq!(Prefix::default().feed(&msg), None);
        // In pieces of every size: the length once, when the prefix completes.
        for cut in 1..msg.len() {
            let mut p = Prefix::default();
            let first = p.feed(&msg[..cut]);
            let second = p.feed(&msg[cut..]);
            if cut >= 5 {
                assert_eq!((first, second), (Some(100), None), "cut {cut}");
            } else {
                assert_eq!((first, second), (None, None), "cut {cut}");
            }
        }
        // A stream: the last message that is incomplete at the piece's end.
        let mut stream = grpc_message(3);
        stream.extend(grpc_message(50));
        let mut p = Prefix::default();
        assert_eq!(p.feed(&stream[..20]), Some(50));
        assert_eq!(p.feed(&stream[20..]), None);
        let mut p = Prefix::default();
        assert_eq!(p.feed(&stream[..8]), None);
    }

    #[tokio::test]
    async fn a_request_waits_for_room_and_gives_it_back_when_done() {
        const K: u64 = METERED_FROM;
        let budget = Budget::new(10 * K as usize, 10 << 20, 20 << 20);
        let room = || budget.sem.available_permits() as u64;
        // Small requests, and those over their limit, take no room.
        assert!(budget.reserve(K - 1, 10 << 20).is_none());
        assert!(budget.reserve((10 << 20) + 1, 10 << 20).is_none());
        let Some(Reserving::Done(first)) = budget.reserve(6 * K, 10 << 20) else {
            panic!("room was free");
        };
        assert_eq!(room(), 4 * K);
        let Some(Reserving::Waiting(mut second)) = budget.reserve(6 * K, 10 << 20) else {
            panic!("no room for 6 more");
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        drop(first);
        let Poll::Ready(Some(p)) = second.as_mut().poll(&mut cx) else {
            panic!("room was given back");
        };
        assert_eq!(room(), 4 * K);
        drop(p);
        assert_eq!(room(), 10 * K);
        // A request larger than the whole budget reserves all of it, and
        // does not wait for ever.
        assert!(matches!(
            budget.reserve(20 * K, 10 << 20),
            Some(Reserving::Done(_))
        ));
        assert_eq!(room(), 10 * K);
    }
}
