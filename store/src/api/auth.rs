//! etcd's Auth service, and who is calling: every other service asks
//! [`caller`] for the user behind a request's token.
//!
//! Changes go through Raft as `Command::Auth` and are checked when applied
//! (only a root-role user may make them once auth is on). Passwords are hashed
//! here, before proposing, so they never reach the log. Reads of users and
//! roles wait on the read-index barrier, as etcd serves them through Raft.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::etcdserverpb::auth_server::Auth;
use cairn_proto::etcdserverpb::*;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::{credentials, state, AuthCmd};
use crate::command::{ApplyResult, Command, Proto};
use crate::error::EtcdError;
use crate::mvcc::keys::{ROLE, USER};
use crate::mvcc::view::View;
use crate::node::Node;

pub struct AuthService {
    pub node: Arc<Node>,
    /// `--auth-token-ttl`: how long an issued token stays valid.
    pub token_ttl: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The user a request acts as: `None` while auth is off or when no token was
/// sent (permission checks then answer etcd's "user name is empty"), an error
/// for a token that is forged, expired, or whose user or password changed.
pub fn caller(node: &Node, md: &MetadataMap) -> Result<Option<String>, EtcdError> {
    let token = md.get("token").map(|t| t.to_str());
    node.mvcc.read(|v| {
        if !state::enabled(v)? {
            return Ok(None);
        }
        let Some(token) = token else {
            return Ok(None);
        };
        let token = token.map_err(|_| EtcdError::InvalidAuthToken)?;
        let secret = state::secret(v)?.ok_or(EtcdError::InvalidAuthToken)?;
        let claims =
            credentials::verify(&secret, token, unix_now()).ok_or(EtcdError::InvalidAuthToken)?;
        let user = state::user(v, &claims.user)?.ok_or(EtcdError::InvalidAuthToken)?;
        if !claims.matches(&user.password) {
            return Err(EtcdError::InvalidAuthToken);
        }
        Ok(Some(claims.user))
    })
}

/// For member changes and maintenance that etcd reserves to the root role.
pub fn require_admin(node: &Node, md: &MetadataMap) -> Result<(), Status> {
    let user = caller(node, md)?;
    node.mvcc
        .read(|v| state::check_admin(v, user.as_deref()))
        .map_err(Status::from)
}

/// Hashes off the async runtime: argon2 takes tens of milliseconds.
async fn hash(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        let mut h = Some(ResponseHeader {
            revision: self.node.mvcc.revision(),
            ..Default::default()
        });
        self.node.fill_header(&mut h);
        h
    }

    /// Proposes an auth change as the caller; answers the response header.
    async fn change(
        &self,
        md: &MetadataMap,
        cmd: AuthCmd,
    ) -> Result<Option<ResponseHeader>, Status> {
        let user = caller(&self.node, md)?;
        match self.node.propose(user, Command::Auth(cmd)).await? {
            ApplyResult::Error(e) => Err(e.into()),
            _ => Ok(self.header()),
        }
    }

    /// Reads auth records after the barrier, as the caller, if `who` may.
    async fn read<T>(
        &self,
        md: &MetadataMap,
        who: Readers<'_>,
        f: impl FnOnce(&View<'_>) -> Result<T, EtcdError>,
    ) -> Result<T, Status> {
        let user = caller(&self.node, md)?;
        self.node.read_barrier().await?;
        let res = self.node.mvcc.read(|v| {
            match state::check_admin(v, user.as_deref()) {
                Err(EtcdError::PermissionDenied) if who.include(v, user.as_deref())? => {}
                other => other?,
            }
            f(v)
        });
        Ok(res?)
    }
}

/// Who besides root-role users may read an auth record (etcd's exceptions).
enum Readers<'a> {
    AdminsOnly,
    /// The user named.
    User(&'a str),
    /// Users holding the role named.
    RoleHolders(&'a str),
}

impl Readers<'_> {
    fn include(&self, v: &View<'_>, caller: Option<&str>) -> Result<bool, EtcdError> {
        let Some(caller) = caller else {
            return Ok(false);
        };
        Ok(match self {
            Readers::AdminsOnly => false,
            Readers::User(name) => *name == caller,
            Readers::RoleHolders(role) => {
                state::user(v, caller)?.is_some_and(|u| u.roles.iter().any(|r| r == role))
            }
        })
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let cmd = AuthCmd::Enable {
            secret: credentials::new_secret(),
        };
        let header = self.change(req.metadata(), cmd).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(req.metadata(), AuthCmd::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        // The latest password, wherever it was changed.
        self.node.read_barrier().await?;
        let (secret, stored) = self.node.mvcc.read(|v| {
            if !state::enabled(v)? {
                return Err(EtcdError::AuthNotEnabled);
            }
            let user = state::user(v, &r.name)?.ok_or(EtcdError::AuthFailed)?;
            if user.options.is_some_and(|o| o.no_password) {
                return Err(EtcdError::AuthFailed);
            }
            let secret = state::secret(v)?.ok_or(EtcdError::AuthFailed)?;
            Ok((secret, user.password))
        })?;
        let (password, hash) = (r.password, stored.clone());
        let ok =
            tokio::task::spawn_blocking(move || credentials::verify_password(&password, &hash))
                .await
                .unwrap_or(false);
        if !ok {
            return Err(EtcdError::AuthFailed.into());
        }
        let expiry = unix_now() + self.token_ttl.as_secs().max(1);
        let token = credentials::issue(&secret, &r.name, &stored, expiry);
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (md, r) = (req.metadata().clone(), req.into_inner());
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hash = match no_password {
            true => None,
            false => Some(hash(r.password).await?),
        };
        let header = self
            .change(&md, AuthCmd::UserAdd { name: r.name, hash })
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = &req.get_ref().name;
        let roles = self
            .read(req.metadata(), Readers::User(name), |v| {
                Ok(state::user(v, name)?.ok_or(EtcdError::UserNotFound)?.roles)
            })
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self
            .read(req.metadata(), Readers::AdminsOnly, |v| {
                state::names(v, USER)
            })
            .await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self
            .change(req.metadata(), AuthCmd::UserDelete { name })
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (md, r) = (req.metadata().clone(), req.into_inner());
        let hash = hash(r.password).await?;
        let cmd = AuthCmd::UserChangePassword { name: r.name, hash };
        let header = self.change(&md, cmd).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCmd::UserGrantRole {
            user: r.user,
            role: r.role,
        };
        let header = self.change(req.metadata(), cmd).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCmd::UserRevokeRole {
            user: r.name,
            role: r.role,
        };
        let header = self.change(req.metadata(), cmd).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self
            .change(req.metadata(), AuthCmd::RoleAdd { name })
            .await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = &req.get_ref().role;
        let perm = self
            .read(req.metadata(), Readers::RoleHolders(role), |v| {
                Ok(state::role(v, role)?
                    .ok_or(EtcdError::RoleNotFound)?
                    .key_permission)
            })
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self
            .read(req.metadata(), Readers::AdminsOnly, |v| {
                state::names(v, ROLE)
            })
            .await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let name = req.get_ref().role.clone();
        let header = self
            .change(req.metadata(), AuthCmd::RoleDelete { name })
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref().clone();
        // etcd does not check for a missing permission either: the role's
        // existence is checked first, and an absent one reads as the default.
        let perm = r.perm.unwrap_or_default();
        let cmd = AuthCmd::RoleGrantPermission {
            role: r.name,
            perm: Proto(perm),
        };
        let header = self.change(req.metadata(), cmd).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCmd::RoleRevokePermission {
            role: r.role,
            key: r.key,
            range_end: r.range_end,
        };
        let header = self.change(req.metadata(), cmd).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
