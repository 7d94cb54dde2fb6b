//! Prometheus metrics on the client port's `/metrics`, under etcd's metric
//! names, so existing etcd dashboards and alerts work unchanged.
//!
//! One store runs per process, so the registry is process-wide: the fsync
//! thread, the state machine and the peer network record into it without
//! being handed a reference. Gauges that mirror Raft's state are read when
//! Prometheus scrapes.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub db_total_size: IntGauge,
    pub keys_total: IntGauge,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub peer_rtt: HistogramVec,
    pub grpc_handled: IntCounterVec,
    pub request_bytes_in_flight: IntGauge,
    pub requests_waiting_for_room: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    // etcd's buckets for disk latencies: 1 ms doubling up to ~8 s.
    let opts = HistogramOpts::new(name, help)
        .buckets(exponential_buckets(0.001, 2.0, 14).expect("buckets"));
    let h = Histogram::with_opts(opts).expect("metric");
    r.register(Box::new(h.clone())).expect("register");
    h
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let peer_rtt = HistogramVec::new(
        HistogramOpts::new(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
        )
        .buckets(exponential_buckets(0.0001, 2.0, 16).expect("buckets")),
        &["To"],
    )
    .expect("metric");
    r.register(Box::new(peer_rtt.clone())).expect("register");
    let grpc_handled = IntCounterVec::new(
        Opts::new(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        ),
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    )
    .expect("metric");
    r.register(Box::new(grpc_handled.clone()))
        .expect("register");
    Metrics {
        has_leader: gauge(
            &r,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
        ),
        is_leader: gauge(
            &r,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        ),
        leader_changes: counter(
            &r,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
        ),
        proposals_committed: gauge(
            &r,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
        ),
        proposals_applied: gauge(
            &r,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
        ),
        proposals_pending: gauge(
            &r,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
        ),
        proposals_failed: counter(
            &r,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
        ),
        db_total_size: gauge(
            &r,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
        ),
        keys_total: gauge(
            &r,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
        ),
        wal_fsync: histogram(
            &r,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        ),
        backend_commit: histogram(
            &r,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        ),
        peer_rtt,
        grpc_handled,
        request_bytes_in_flight: gauge(
            &r,
            "cairn_request_bytes_in_flight",
            "Bytes of client requests reserved from --max-request-bytes-in-flight.",
        ),
        requests_waiting_for_room: gauge(
            &r,
            "cairn_requests_waiting_for_room",
            "Client requests waiting, unread, for room under --max-request-bytes-in-flight.",
        ),
        registry: r,
    }
});

/// What `/metrics` mirrors from Raft and the store at the moment of a scrape.
pub struct Snapshot {
    pub has_leader: bool,
    pub is_leader: bool,
    pub applied: u64,
    pub db_size: u64,
    pub keys: u64,
}

/// Refreshes the gauges from `s`, then renders every metric.
pub fn render(s: Snapshot) -> String {
    let m = &*METRICS;
    m.has_leader.set(s.has_leader as i64);
    m.is_leader.set(s.is_leader as i64);
    // openraft 0.9 does not publish the commit index; applied <= committed,
    // and they differ only by entries in flight.
    m.proposals_committed.set(s.applied as i64);
    m.proposals_applied.set(s.applied as i64);
    m.db_total_size.set(s.db_size as i64);
    m.keys_total.set(s.keys as i64);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Which kind of RPC a gRPC method is, for `grpc_type`.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

/// Middleware: counts every gRPC call by its final `grpc-status`.
pub async fn count_grpc(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let is_grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let resp = next.run(req).await;
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return resp;
    };
    if !is_grpc {
        return resp;
    }
    let labels = [
        grpc_type(method).to_string(),
        service.to_string(),
        method.to_string(),
    ];
    // Trailers-only responses (errors) carry the status in the headers.
    if let Some(code) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        count(&labels, code);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(StatusCounter {
            inner: body,
            labels: Some(labels),
        }),
    )
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        _ => "Unknown",
    }
}

fn count(labels: &[String; 3], code: &str) {
    METRICS
        .grpc_handled
        .with_label_values(&[
            labels[0].as_str(),
            labels[1].as_str(),
            labels[2].as_str(),
            code_name(code),
        ])
        .inc();
}

/// Passes a response body through and counts the call when its trailers
/// (with `grpc-status`) go by.
struct StatusCounter {
    inner: Body,
    labels: Option<[String; 3]>,
}

impl http_body::Body for StatusCounter {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame
                .trailers_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
            {
                if let Some(labels) = self.labels.take() {
                    count(&labels, code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
