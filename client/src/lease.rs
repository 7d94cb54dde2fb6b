//! Lease keep-alive, time-to-live and listing (grant and revoke are in
//! `cluster`). Keep-alive and time-to-live change nothing but a deadline the
//! leader keeps, and renewing twice is harmless, so both are retried on other
//! members like reads.

use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::call::Kind;
use crate::error::{classify, Verdict};
use crate::{Client, Error, Result};

struct KeepAliveStream {
    member: usize,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    inbound: Streaming<LeaseKeepAliveResponse>,
}

/// A keep-alive stream for one lease. Each [`LeaseKeepAlive::keep_alive`]
/// sends one renewal and waits for its answer; the stream is opened on first
/// use and, when it breaks, reopened on another member.
pub struct LeaseKeepAlive {
    client: Client,
    id: i64,
    stream: Option<KeepAliveStream>,
}

impl std::fmt::Debug for LeaseKeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeepAlive")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl LeaseKeepAlive {
    /// The lease this handle renews.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// URL of the member the stream is on, if one is open.
    pub fn endpoint(&self) -> Option<&str> {
        self.stream
            .as_ref()
            .map(|s| self.client.member_url(s.member))
    }

    /// Renews the lease once. The answer's `ttl` is the renewed TTL in seconds,
    /// or 0 if the lease does not exist (expired or revoked), as etcd answers.
    pub async fn keep_alive(&mut self) -> Result<LeaseKeepAliveResponse> {
        if let Some(s) = &mut self.stream {
            let req = LeaseKeepAliveRequest { id: self.id };
            let attempt = async {
                s.tx.send(req)
                    .await
                    .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
                s.inbound
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("keep-alive stream ended"))
            };
            let timeout = self.client.inner.opts.request_timeout;
            let member = s.member;
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(status)) if classify(&status) == Verdict::Answer => {
                    self.stream = None;
                    return Err(Error::Status {
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
                // Broken, ended or silent: renew through another member.
                _ => {
                    self.stream = None;
                    self.client.unpin(member);
                }
            }
        }
        let id = self.id;
        let ((tx, inbound, first), member) = self
            .client
            .call_indexed(Kind::Read, |ch| self.client.open_keep_alive(ch, id))
            .await?;
        self.stream = Some(KeepAliveStream {
            member,
            tx,
            inbound,
        });
        Ok(first)
    }
}

type Opened = (
    mpsc::Sender<LeaseKeepAliveRequest>,
    Streaming<LeaseKeepAliveResponse>,
    LeaseKeepAliveResponse,
);

impl Client {
    fn lease(&self, ch: Channel) -> LeaseClient<Channel> {
        LeaseClient::new(ch).max_decoding_message_size(self.inner.opts.max_decoding_message_size)
    }

    /// Opens a keep-alive stream whose first request renews `id`, and waits
    /// for that first answer.
    fn open_keep_alive(
        &self,
        ch: Channel,
        id: i64,
    ) -> impl std::future::Future<Output = std::result::Result<tonic::Response<Opened>, Status>>
    {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(LeaseKeepAliveRequest { id })
            .expect("fresh channel has room");
        let req = self.request(ReceiverStream::new(rx));
        let mut c = self.lease(ch);
        async move {
            let mut inbound = c.lease_keep_alive(req).await?.into_inner();
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("keep-alive stream ended"))?;
            Ok(tonic::Response::new((tx, inbound, first)))
        }
    }

    /// A keep-alive handle for lease `id` (nothing is sent until its first
    /// [`LeaseKeepAlive::keep_alive`]).
    pub fn lease_keep_alive(&self, id: i64) -> LeaseKeepAlive {
        LeaseKeepAlive {
            client: self.clone(),
            id,
            stream: None,
        }
    }

    /// Renews lease `id` once (a short-lived keep-alive stream, like
    /// `etcdctl lease keep-alive --once`). TTL 0 = no such lease.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.call(Kind::Read, |ch| {
            let opened = self.open_keep_alive(ch, id);
            async move { opened.await.map(|r| tonic::Response::new(r.into_inner().2)) }
        })
        .await
    }

    /// Lease.LeaseTimeToLive; `keys` also lists the attached keys. TTL -1 = no
    /// such lease (etcd answers so without an error).
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.call(Kind::Read, |ch| {
            let req = self.request(LeaseTimeToLiveRequest { id, keys });
            let mut c = self.lease(ch);
            async move { c.lease_time_to_live(req).await }
        })
        .await
    }

    /// Lease.LeaseLeases: the IDs of all live leases.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.call(Kind::Read, |ch| {
            let req = self.request(LeaseLeasesRequest {});
            let mut c = self.lease(ch);
            async move { c.lease_leases(req).await }
        })
        .await
    }
}
