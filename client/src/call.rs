//! The one place a request meets the network: endpoint choice, per-attempt
//! timeout, failover and the "never silently re-send a mutation" rule.
//!
//! Endpoint choice is sticky with failover (like etcd's clientv3 pinned
//! endpoint): every call starts on the member that last answered, and moves to
//! the next one only when an attempt fails in a retryable way. Sticky beats
//! round-robin here because Cairn/etcd forward writes and linearizable reads to
//! the leader anyway, so spreading buys little, while one pinned member keeps
//! one warm HTTP/2 connection and makes serializable reads after writes through
//! the same client far less surprising.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::error::{classify, Verdict};
use crate::{Client, Error, Result};

/// Whether a call may be re-sent after an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Changes nothing (range, status, member list, read-only txn).
    Read,
    /// Changes state (put, delete, txn with writes, compact, lease grant, ...).
    Mutation,
}

impl Client {
    /// Builds a request carrying the auth token, if any.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let token = self.inner.token.read().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = token.as_ref() {
            req.metadata_mut().insert("token", token.clone());
        }
        req
    }

    /// Moves the pin off member `idx` (if it is still pinned), so the next call
    /// starts elsewhere: used by streams that broke on that member.
    pub(crate) fn unpin(&self, idx: usize) {
        let n = self.inner.members.len();
        let _ = self.inner.pinned.compare_exchange(
            idx,
            (idx + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// URL of member `idx`.
    pub(crate) fn member_url(&self, idx: usize) -> &str {
        &self.inner.members[idx].url
    }

    /// Runs `f` against members until one answers, following the module's
    /// rules, with whatever token is set (`crate::auth` adds logging in).
    pub(crate) async fn call_unauthenticated<T, F, Fut>(
        &self,
        kind: Kind,
        mut f: F,
    ) -> Result<(T, usize)>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let members = &self.inner.members;
        let n = members.len();
        let opts = &self.inner.opts;
        let start = Instant::now();
        let first = self.inner.pinned.load(Ordering::Relaxed) % n;
        let mut idx = first;
        let mut backoff = Duration::from_millis(25);
        let mut attempts = 0usize;
        loop {
            let member = &members[idx];
            let last;
            let verdict =
                match tokio::time::timeout(opts.request_timeout, f(member.channel.clone())).await {
                    Ok(Ok(resp)) => {
                        self.inner.pinned.store(idx, Ordering::Relaxed);
                        return Ok((resp.into_inner(), idx));
                    }
                    Ok(Err(status)) => {
                        let verdict = classify(&status);
                        if verdict == Verdict::Answer {
                            return Err(Error::Status {
                                code: status.code(),
                                message: status.message().to_string(),
                            });
                        }
                        last = format!("{}: {:?}: {}", member.url, status.code(), status.message());
                        verdict
                    }
                    Err(_elapsed) => {
                        last = format!(
                            "{}: no answer within {:?}",
                            member.url, opts.request_timeout
                        );
                        Verdict::Unknown
                    }
                };
            if verdict == Verdict::Unknown && kind == Kind::Mutation {
                return Err(Error::OutcomeUnknown(last));
            }
            // Move the pin on so concurrent and later calls skip this member too.
            let next = (idx + 1) % n;
            let _ =
                self.inner
                    .pinned
                    .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed);
            idx = next;
            attempts += 1;
            let elapsed = start.elapsed();
            if elapsed >= opts.retry_budget {
                return Err(Error::Unavailable(format!(
                    "no member served the request ({attempts} attempts); last: {last}"
                )));
            }
            if idx == first {
                // A full round failed (all down, or an election in progress).
                tokio::time::sleep(backoff.min(opts.retry_budget - elapsed)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}
