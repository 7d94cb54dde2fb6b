//! Bounds Cairn keeps that etcd 3.4 does not have, tested through real
//! clients (raw HTTP/1.1 as APISIX sends it, and gRPC): the bytes of requests
//! in flight, all connections together (`--max-request-bytes-in-flight`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cairn_client::PutOptions;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, Cluster, ClusterOptions, Impl, SLOW};

const BUDGET: usize = 4 << 20;
const DECLARED: usize = 3_000_000;
const SENT: usize = 2_900_000;
const HOGS: usize = 24;
/// Within the gRPC limit (2 MiB); two of them fit the budget.
const GRPC_DECLARED: usize = 2_000_000;
const GRPC_SENT: usize = 1_900_000;

/// A gauge from the member's `/metrics`.
async fn gauge(base: &str, name: &str) -> i64 {
    let (_, body) = common::http(base, "GET", "/metrics", &[], None).await;
    let text = body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A JSON put that declares `DECLARED` bytes, sends `SENT` of them and
/// waits for an answer; what it got, if anything.
async fn hog(addr: String) -> String {
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n{{\"key\":\"aG9n\",\"value\":\""
    );
    let mut body = head.into_bytes();
    body.resize(body.len() + SENT, b'A');
    if s.write_all(&body).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A gRPC Put on an HTTP/2 connection of its own that declares a message of
/// `GRPC_DECLARED` bytes and sends `GRPC_SENT` of them; the tasks waiting
/// for its answer and driving the connection (abort both to close it).
///
/// One stream per connection: the streams of one connection share its
/// flow-control window, which a waiting stream's unread bytes fill, so
/// whether a later stream's first bytes arrive at all depends on the order
/// the client sends in.
async fn grpc_hog(addr: &str) -> Vec<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    use hyper::body::{Bytes, Frame};
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let mut tasks = Vec::new();
    {
        let mut msg = vec![0u8];
        msg.extend_from_slice(&(GRPC_DECLARED as u32).to_be_bytes());
        msg.resize(5 + GRPC_SENT, 0);
        let first: Result<Frame<Bytes>, std::convert::Infallible> =
            Ok(Frame::data(Bytes::from(msg)));
        let body = http_body_util::StreamBody::new(
            futures::stream::iter([first]).chain(futures::stream::pending()),
        );
        let req = hyper::Request::post(format!("http://{addr}/etcdserverpb.KV/Put"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let _ = send.send_request(req).await;
        }));
    }
    tasks.push(tokio::spawn(async move {
        let _ = conn.await;
    }));
    tasks
}

/// Clients that send most of a large body and stop hold at most the budget:
/// the rest wait unread (the member's memory does not grow with them), small
/// requests pass meanwhile, a held body that does not arrive within the
/// deadline is answered with an error, and the room comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_flight_are_bounded_all_connections_together() {
    let opts = ClusterOptions {
        env: vec![(
            "CAIRN_MAX_REQUEST_BYTES_IN_FLIGHT".into(),
            BUDGET.to_string(),
        )],
        ..Default::default()
    };
    let cl = Cluster::start_with(Impl::Cairn, 1, opts).await;
    let base = cl.nodes[0].client_url.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let pid = cl.nodes[0].pid().unwrap();
    let c = cl.client().await;
    c.put("warm", "x", PutOptions::default()).await.unwrap();
    let before = rss_kib(pid);

    let hogs: Vec<_> = (0..HOGS).map(|_| tokio::spawn(hog(addr.clone()))).collect();
    // One holds room for its declared length; the others wait, unread.
    common::wait_until(SLOW, "all but one hog waiting", || async {
        gauge(&base, "cairn_requests_waiting_for_room").await == HOGS as i64 - 1
    })
    .await;
    assert_eq!(
        gauge(&base, "cairn_request_bytes_in_flight").await,
        DECLARED as i64
    );
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown_mib} MiB beside {HOGS} hogs");
    // Unbounded, the member would hold every hog's 2.9 MB: ~70 MB.
    assert!(
        grown_mib < 32,
        "RSS grew by {grown_mib} MiB beside the hogs"
    );

    // Small requests take no room and pass, over JSON and gRPC.
    let (status, _) = common::http(
        &base,
        "POST",
        "/v3/kv/put",
        &[],
        Some(&json!({"key": B64.encode("small"), "value": B64.encode("1")})),
    )
    .await;
    assert_eq!(status, 200);
    c.put("small", "2", PutOptions::default()).await.unwrap();

    // The hog holding room runs out of time and is answered; the next one
    // takes its room.
    common::wait_until(SLOW, "a hog answered", || {
        let any = hogs.iter().any(|h| h.is_finished());
        async move { any }
    })
    .await;
    let mut finished = Vec::new();
    let mut waiting = Vec::new();
    for h in hogs {
        if h.is_finished() {
            finished.push(h.await.unwrap());
        } else {
            waiting.push(h);
        }
    }
    assert!(
        finished
            .iter()
            .all(|a| a.starts_with("HTTP/1.1 400") && a.contains("not received within")),
        "{finished:?}"
    );
    // The hogs give up: every byte of room comes back.
    for h in &waiting {
        h.abort();
    }
    common::wait_until(SLOW, "room given back", || async {
        gauge(&base, "cairn_requests_waiting_for_room").await == 0
            && gauge(&base, "cairn_request_bytes_in_flight").await == 0
    })
    .await;

    // The same over gRPC: a message reserves what its prefix declares.
    let mut streams = Vec::new();
    for _ in 0..12 {
        streams.extend(grpc_hog(&addr).await);
    }
    common::wait_until(SLOW, "all but two gRPC hogs waiting", || async {
        gauge(&base, "cairn_requests_waiting_for_room").await == 10
    })
    .await;
    assert_eq!(
        gauge(&base, "cairn_request_bytes_in_flight").await,
        2 * GRPC_DECLARED as i64
    );
    c.put("small", "3", PutOptions::default()).await.unwrap();
    for t in &streams {
        t.abort();
    }
    common::wait_until(SLOW, "room given back by the streams", || async {
        gauge(&base, "cairn_requests_waiting_for_room").await == 0
            && gauge(&base, "cairn_request_bytes_in_flight").await == 0
    })
    .await;

    // A JSON watch opened with a large body gives its room back once the
    // body is read (the watch service lets go of it), while the watch it
    // opened goes on.
    let key = B64.encode("w".repeat(96 << 10));
    let body = json!({"create_request": {"key": key}}).to_string();
    let mut w = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"created\":true") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(SLOW, w.read(&mut buf))
            .await
            .expect("watch answer")
            .unwrap();
        assert!(n > 0, "watch closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(gauge(&base, "cairn_request_bytes_in_flight").await, 0);
    drop(w);

    // Large requests within the limit pass again, over JSON and gRPC.
    let big = "v".repeat(1 << 20);
    let (status, body) = common::http(
        &base,
        "POST",
        "/v3/kv/put",
        &[],
        Some(&json!({"key": B64.encode("big"), "value": B64.encode(&big)})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    c.put("big", big.as_str(), PutOptions::default())
        .await
        .unwrap();
}
