//! A clean stop: on SIGTERM (what `docker stop` and systemd send) or Ctrl-C,
//! the gateway first says it is not ready (`/readyz` answers 503) while it
//! keeps serving, for `--drain` seconds, so a load balancer health-checking
//! it takes it out before it goes; HTTP/1 answers meanwhile carry
//! `Connection: close`, so clients holding a keep-alive connection open a
//! new one, through the load balancer, to another gateway. When the period
//! is over every client connection is shut down gracefully (HTTP/2: a
//! GOAWAY, then the streams in flight finish; HTTP/1: the request in flight
//! finishes), and the gateway exits once they have, or after one more
//! drain period at most.
//!
//! Without a handler the gateway ignored SIGTERM when it ran as PID 1 in a
//! container (the kernel drops signals a PID 1 has no handler for), so
//! `docker stop` waited its whole timeout and then killed it with requests
//! in flight.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{header, HeaderValue, Response, Version};

use crate::shared::Shared;

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn signalled() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Not ready from now on; returns once `period` has passed.
pub async fn drain(shared: &Shared, period: Duration) {
    shared.start_draining();
    tracing::info!(
        seconds = period.as_secs_f64(),
        "stopping: /readyz says not ready, serving on until the drain period ends"
    );
    tokio::time::sleep(period).await;
    shared.closing.flip();
    let open = &shared.metrics.connections_active;
    let deadline = tokio::time::Instant::now() + period;
    tracing::info!(
        connections = open.load(Ordering::Relaxed),
        "drain period over: closing connections once their requests are answered"
    );
    while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(still_open = open.load(Ordering::Relaxed), "exiting");
}

/// While draining, an HTTP/1 answer closes its connection (HTTP/2 has no
/// such header; its clients get a GOAWAY when the drain period ends).
pub fn close_if_draining<B>(shared: &Shared, version: Version, r: &mut Response<B>) {
    if shared.draining() && version <= Version::HTTP_11 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
