//! Authenticating with [`crate::Credentials`] and keeping the token fresh.

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::AuthenticateRequest;
use tonic::metadata::MetadataValue;

use crate::call::Kind;
use crate::{Client, Code, Error, Result};

/// Whether a member refused the token (expired, or the user changed): the
/// request was rejected before anything happened, so it can be re-sent.
pub(crate) fn token_refused(e: &Error) -> bool {
    matches!(e, Error::Status { code: Code::Unauthenticated, message }
        if message == "etcdserver: invalid auth token")
}

impl Client {
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
