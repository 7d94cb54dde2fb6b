//! The client's error type, and the classification of a failed call into
//! "server answered", "certainly not applied" and "outcome unknown".
//!
//! The classification is the heart of the failover rule: a read may go to the
//! next member after any transport failure, but a mutation may only do so when
//! it is certain the first member did not apply it.

use std::error::Error as StdError;

use tonic::{Code, Status};

/// Errors returned by [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a gRPC error. `message` is the server's exact
    /// string (etcd's, e.g. `etcdserver: mvcc: required revision has been compacted`),
    /// because etcd clients match on it.
    #[error("{message} (code: {code:?})")]
    Status { code: Code, message: String },
    /// A mutation was sent and then the call failed (timeout, connection reset,
    /// `etcdserver: request timed out`, `etcdserver: leader changed`, ...): it may
    /// or may not have been applied. It was not re-sent.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No member could serve the call and nothing was applied (for a mutation:
    /// every attempt failed to connect or was refused before processing).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Bad input given to the client itself (an endpoint URL it cannot parse,
    /// conflicting options); nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The gRPC code: the server's for [`Error::Status`]; `Unknown`, `Unavailable`
    /// and `InvalidArgument` for the other variants.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::OutcomeUnknown(_) => Code::Unknown,
            Error::Unavailable(_) => Code::Unavailable,
            Error::InvalidArgument(_) => Code::InvalidArgument,
        }
    }

    /// The message: the server's exact string for [`Error::Status`].
    pub fn message(&self) -> &str {
        match self {
            Error::Status { message, .. } => message,
            Error::OutcomeUnknown(m) | Error::Unavailable(m) | Error::InvalidArgument(m) => m,
        }
    }

    /// True for [`Error::OutcomeUnknown`]: the caller must find out (e.g. by
    /// reading) whether the mutation happened.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_))
    }
}

/// Result alias used throughout the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a failed attempt tells us about the request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server processed the request and refused it (bad argument,
    /// compacted, lease not found, ...): hand the error to the caller, no retry.
    Answer,
    /// Certainly not applied: the connection could not be made (the request never
    /// left), or etcd said so (`no leader`, `not capable`). Any call may go to
    /// the next member.
    NotApplied,
    /// The request may have reached the state machine. Reads may go to the next
    /// member; a mutation must surface [`Error::OutcomeUnknown`].
    Unknown,
}

/// etcd messages (all with code `Unavailable`) returned before the request is
/// proposed to Raft, so the request was certainly not applied.
/// `no leader`: etcd checks for a leader before proposing.
/// `not capable`: the cluster version check fails before proposing.
/// `rpc not supported for learner`: a learner refuses before doing anything.
const NOT_APPLIED_MESSAGES: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: not capable",
    "etcdserver: rpc not supported for learner",
];

/// Classifies a failed gRPC call. Pure apart from walking the error's source
/// chain, so it is unit-tested below with hand-built statuses.
pub(crate) fn classify(status: &Status) -> Verdict {
    // A connect failure, or a connection that closed before the request was
    // handed to it: never written to any socket.
    if is_connect_failure(status) {
        return Verdict::NotApplied;
    }
    // A status generated locally by tonic from a transport error keeps that
    // error as its source; one the server sent (grpc-status trailer) has none.
    let from_server = StdError::source(status).is_none();
    if !from_server {
        // Sent (or possibly sent), then the connection broke: unknown.
        return Verdict::Unknown;
    }
    match status.code() {
        Code::Unavailable if NOT_APPLIED_MESSAGES.contains(&status.message()) => {
            Verdict::NotApplied
        }
        // `request timed out`, `leader changed`, `server stopped`, `... possibly
        // due to connection lost`, a proxy's deadline...: all may have been applied.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Verdict::Unknown
        }
        _ => Verdict::Answer,
    }
}

/// Whether a failed call never left this process. tonic reports every
/// failure of the connector (connection refused, connect timeout, a name
/// that does not resolve) as a `ConnectError` in the status's source chain.
/// And hyper's HTTP/2 client reports "canceled" only for a request it never
/// handed to the connection: the connection was closed or not ready when the
/// call was made (a server finishing a graceful shutdown: its GOAWAY and this
/// call crossed). Streams that were sent fail with the connection's own
/// error instead. Last, a stream the server's GOAWAY refused (its ID is above
/// the GOAWAY's last-stream-id: RFC 9113 6.8 says the server did not and will
/// not process it) fails with h2's remote GOAWAY error; a stream the server
/// took and the connection then lost fails with a broken pipe, not this.
/// gRPC clients retry such calls on another connection (grpc-go's
/// transparent retry); so does this one. Cairn's members use it for their
/// calls to each other too.
pub fn is_connect_failure(status: &Status) -> bool {
    find_source::<tonic::ConnectError>(status).is_some()
        || find_source::<hyper::Error>(status).is_some_and(hyper::Error::is_canceled)
        || find_source::<h2::Error>(status).is_some_and(|e| e.is_go_away() && e.is_remote())
}

fn find_source<E: StdError + 'static>(status: &Status) -> Option<&E> {
    let mut cur: Option<&(dyn StdError + 'static)> = StdError::source(status);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn connect_error(kind: io::ErrorKind) -> Status {
        let io = io::Error::new(kind, "tcp connect error");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    #[test]
    fn connect_failures_are_not_applied() {
        let s = connect_error(io::ErrorKind::ConnectionRefused);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(classify(&s), Verdict::NotApplied);
        assert_eq!(
            classify(&connect_error(io::ErrorKind::TimedOut)),
            Verdict::NotApplied
        );
    }

    #[test]
    fn connect_error_nested_deeper_is_found() {
        // tower's buffer wraps the connector's error in its own error type.
        #[derive(Debug)]
        struct Wrapper(Box<dyn StdError + Send + Sync>);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "wrapped: {}", self.0)
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(self.0.as_ref())
            }
        }
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let inner = tonic::ConnectError(Box::new(io));
        let s = Status::from_error(Box::new(Wrapper(Box::new(inner))));
        assert_eq!(classify(&s), Verdict::NotApplied);
    }

    #[test]
    fn transport_failures_after_sending_are_unknown() {
        // e.g. hyper's "connection closed before message completed", reset by peer.
        let io = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        let s = Status::from_error(Box::new(io));
        assert_eq!(classify(&s), Verdict::Unknown);
        let s = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(s.code(), Code::Cancelled);
        assert_eq!(classify(&s), Verdict::Unknown);
    }

    /// A minimal HTTP/2 server on loopback: it answers the client's preface
    /// with its SETTINGS, reads frames until the first HEADERS (a request),
    /// then writes `after_request` and closes the connection.
    async fn h2_server(after_request: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            sock.read_exact(&mut preface).await.unwrap();
            sock.write_all(&frame(4, 0, 0, &[])).await.unwrap();
            loop {
                let mut head = [0u8; 9];
                sock.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut body = vec![0u8; len];
                sock.read_exact(&mut body).await.unwrap();
                if head[3] == 1 {
                    break;
                }
            }
            sock.write_all(&after_request).await.unwrap();
            // Then the connection ends (FIN); what the client still sends is
            // read so that no RST overtakes what was written.
            sock.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
        });
        format!("http://{addr}")
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    async fn call(url: String) -> Status {
        use cairn_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
        let ch = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let req = RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        KvClient::new(ch).range(req).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_stream_refused_by_goaway_was_not_processed() {
        // GOAWAY, last-stream-id 0, NO_ERROR: stream 1 was refused.
        let goaway = frame(7, 0, 0, &[0; 8]);
        let status = call(h2_server(goaway).await).await;
        assert_eq!(classify(&status), Verdict::NotApplied, "{status:?}");
    }

    #[tokio::test]
    async fn a_stream_lost_with_its_connection_may_have_been_processed() {
        let status = call(h2_server(Vec::new()).await).await;
        assert_eq!(classify(&status), Verdict::Unknown, "{status:?}");
        // Taken by the GOAWAY (last-stream-id 1), then the connection closed.
        let goaway = frame(7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
        let status = call(h2_server(goaway).await).await;
        assert_eq!(classify(&status), Verdict::Unknown, "{status:?}");
    }

    #[test]
    fn etcd_not_applied_messages() {
        for m in NOT_APPLIED_MESSAGES {
            assert_eq!(
                classify(&Status::unavailable(*m)),
                Verdict::NotApplied,
                "{m}"
            );
        }
    }

    #[test]
    fn etcd_maybe_applied_messages() {
        for m in [
            "etcdserver: request timed out",
            "etcdserver: request timed out, possibly due to previous leader failure",
            "etcdserver: request timed out, possibly due to connection lost",
            "etcdserver: leader changed",
            "etcdserver: server stopped",
            "etcdserver: no leader ", // not the exact string: be conservative
        ] {
            assert_eq!(classify(&Status::unavailable(m)), Verdict::Unknown, "{m}");
        }
        assert_eq!(
            classify(&Status::deadline_exceeded("context deadline exceeded")),
            Verdict::Unknown
        );
        assert_eq!(
            classify(&Status::cancelled("context canceled")),
            Verdict::Unknown
        );
        assert_eq!(classify(&Status::unknown("boom")), Verdict::Unknown);
    }

    #[test]
    fn server_answers_are_final() {
        for s in [
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::not_found("etcdserver: requested lease not found"),
            Status::failed_precondition("etcdserver: not leader"),
            Status::resource_exhausted("etcdserver: too many requests"),
            Status::permission_denied("etcdserver: permission denied"),
            Status::unauthenticated("etcdserver: invalid auth token"),
        ] {
            assert_eq!(classify(&s), Verdict::Answer, "{s:?}");
        }
    }

    #[test]
    fn accessors() {
        let e = Error::Status {
            code: Code::OutOfRange,
            message: "etcdserver: mvcc: required revision is a future revision".into(),
        };
        assert_eq!(e.code(), Code::OutOfRange);
        assert_eq!(
            e.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert!(Error::OutcomeUnknown("x".into()).is_outcome_unknown());
        assert_eq!(Error::Unavailable("x".into()).code(), Code::Unavailable);
    }
}
