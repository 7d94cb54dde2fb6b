//! etcd's v3 auth: users, roles, key-range permissions, tokens.
//!
//! - [`state`]: the auth records in the state-machine tree (users, roles, the
//!   enabled flag, the token secret), read through a view and changed by
//!   applying an [`AuthCmd`].
//! - [`perms`]: which permissions a request needs, and whether a user's roles
//!   cover them (etcd's interval rule; the `root` role covers everything).
//! - [`credentials`]: password hashing (argon2) and signed tokens.
//!
//! As in etcd, every auth change goes through Raft and permissions of writes
//! are checked when the entry is applied, with the user the entry carries, so
//! a permission revoked before a write commits stops that write. Reads are
//! checked against the member's applied state when they are served.
//!
//! Tokens are signed (HMAC-SHA256) with a secret chosen when auth is enabled
//! and replicated with the auth records, so every member accepts a token any
//! member issued, and tokens survive member restarts (etcd's "simple" tokens
//! do neither; its JWT tokens behave like these). A token names its user and
//! a stamp of the user's password hash: changing the password or deleting the
//! user invalidates it. Tokens expire after `--auth-token-ttl` seconds.

pub mod credentials;
pub mod perms;
pub mod state;

use serde::{Deserialize, Serialize};

use cairn_proto::authpb;

use crate::codec::Proto;

/// An auth change, as a Raft log entry. Append-only, like `Command`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AuthCmd {
    /// Turns auth on; `secret` signs tokens (kept if auth is already on).
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    /// `hash` is the argon2 hash of the password, `None` for a user created
    /// with `--no-password` (it cannot authenticate by password).
    UserAdd {
        name: String,
        hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Proto<authpb::Permission>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// The role that may do everything, as in etcd.
pub const ROOT: &str = "root";
