//! Authenticating with [`crate::Credentials`] and keeping the token fresh:
//! the layer every call goes through on top of `crate::call`'s failover.

use std::future::Future;

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::AuthenticateRequest;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::call::Kind;
use crate::{Client, Code, Error, Result};

/// Whether a member refused the token (expired, or the user changed): the
/// request was rejected before anything happened, so it can be re-sent.
pub(crate) fn token_refused(e: &Error) -> bool {
    matches!(e, Error::Status { code: Code::Unauthenticated, message }
        if message == "etcdserver: invalid auth token")
}

impl Client {
    /// Runs `f` against members until one answers (`crate::call`'s rules),
    /// logged in if the client has credentials.
    pub(crate) async fn call<T, F, Fut>(&self, kind: Kind, f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_indexed(kind, f).await.map(|(t, _)| t)
    }

    /// [`Client::call`], also returning the index of the member that answered
    /// (streams remember it, to fail over away from it later). With
    /// credentials, authenticates first if there is no token yet, and once
    /// more if the token was refused (nothing was applied then).
    pub(crate) async fn call_indexed<T, F, Fut>(&self, kind: Kind, mut f: F) -> Result<(T, usize)>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.inner.opts.credentials.is_none() {
            return self.call_unauthenticated(kind, f).await;
        }
        if !self.has_token() {
            self.authenticate().await?;
        }
        match self.call_unauthenticated(kind, &mut f).await {
            Err(e) if token_refused(&e) => {
                self.authenticate().await?;
                self.call_unauthenticated(kind, f).await
            }
            other => other,
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Authenticates with the configured credentials and keeps the token.
    /// Concurrent callers may each authenticate; the last token wins, and
    /// every one of them is valid.
    pub(crate) async fn authenticate(&self) -> Result<()> {
        let Some(c) = &self.inner.opts.credentials else {
            return Ok(());
        };
        let msg = AuthenticateRequest {
            name: c.user.clone(),
            password: c.password.clone(),
        };
        let resp = self
            .call_unauthenticated(Kind::Read, |ch| {
                let req = tonic::Request::new(msg.clone());
                let mut a = AuthClient::new(ch);
                async move { a.authenticate(req).await }
            })
            .await?
            .0;
        let token = MetadataValue::try_from(resp.token.as_str())
            .map_err(|e| Error::InvalidArgument(format!("auth token from server: {e}")))?;
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }
}
