//! Maintenance, Cluster and Lease calls.

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse,
};

use tonic::transport::Channel;

use crate::call::Kind;
use crate::endpoints::normalize;
use crate::error::classify;
use crate::{Client, Error, Result};

impl Client {
    /// Maintenance.Status of one specific member (one of [`Client::endpoints`],
    /// in either accepted spelling). No failover: the caller asked about this
    /// member. A member that cannot be reached gives [`Error::Unavailable`].
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        let req = self.request(StatusRequest {});
        self.on_member(endpoint, |mut c| async move { c.status(req).await })
            .await
    }

    /// Maintenance.HashKV of one specific member at `revision` (0 = its
    /// latest), as `etcdctl endpoint hashkv`. No failover, like [`Client::status`].
    pub async fn hash_kv(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse> {
        let req = self.request(HashKvRequest { revision });
        self.on_member(endpoint, |mut c| async move { c.hash_kv(req).await })
            .await
    }

    /// One Maintenance call on the member `endpoint` names, without failover.
    async fn on_member<T, F, Fut>(&self, endpoint: &str, f: F) -> Result<T>
    where
        F: FnOnce(MaintenanceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let url = normalize(endpoint, self.inner.opts.tls.is_some())?;
        let member = self
            .inner
            .members
            .iter()
            .find(|m| m.url == url)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{endpoint:?} is not an endpoint of this client"))
            })?;
        let c = MaintenanceClient::new(member.channel.clone())
            .max_decoding_message_size(self.inner.opts.max_decoding_message_size);
        match tokio::time::timeout(self.inner.opts.request_timeout, f(c)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => match classify(&status) {
                crate::error::Verdict::Answer => Err(Error::Status {
                    code: status.code(),
                    message: status.message().to_string(),
                }),
                _ => Err(Error::Unavailable(format!(
                    "{url}: {:?}: {}",
                    status.code(),
                    status.message()
                ))),
            },
            Err(_) => Err(Error::Unavailable(format!(
                "{url}: no answer within {:?}",
                self.inner.opts.request_timeout
            ))),
        }
    }

    /// Cluster.MemberList (from any member).
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.call(Kind::Read, |ch| {
            let req = self.request(MemberListRequest {});
            let mut c = ClusterClient::new(ch);
            async move { c.member_list(req).await }
        })
        .await
    }

    /// Lease.LeaseGrant (`id` 0 = let the server choose).
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        self.call(Kind::Mutation, |ch| {
            let req = self.request(LeaseGrantRequest { ttl, id });
            let mut c = LeaseClient::new(ch);
            async move { c.lease_grant(req).await }
        })
        .await
    }

    /// Lease.LeaseRevoke.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.call(Kind::Mutation, |ch| {
            let req = self.request(LeaseRevokeRequest { id });
            let mut c = LeaseClient::new(ch);
            async move { c.lease_revoke(req).await }
        })
        .await
    }
}
