//! Auth records in the state-machine tree: reading them through a [`View`]
//! and applying [`AuthCmd`]s through a [`Writer`].

use cairn_proto::authpb::{self, Permission, Role, User};
use prost::Message;

use super::{AuthCmd, ROOT};
use crate::error::EtcdError;
use crate::mvcc::apply::Writer;
use crate::mvcc::keys::{self, ROLE, USER};
use crate::mvcc::view::{scan, storage_err, View};

const ENABLED: &str = "auth_enabled";
const SECRET: &str = "auth_secret";

/// Whether auth is on.
pub fn enabled(v: &View) -> Result<bool, EtcdError> {
    Ok(v.get_raw(&keys::meta_key(ENABLED))?.as_deref() == Some(&[1][..]))
}

/// The token-signing secret (set when auth was first enabled).
pub fn secret(v: &View) -> Result<Option<Vec<u8>>, EtcdError> {
    v.get_raw(&keys::meta_key(SECRET))
}

fn get<M: Message + Default>(v: &View, kind: u8, name: &str) -> Result<Option<M>, EtcdError> {
    v.get_raw(&keys::auth_key(kind, name))?
        .map(|b| M::decode(b.as_slice()).map_err(storage_err))
        .transpose()
}

pub fn user(v: &View, name: &str) -> Result<Option<User>, EtcdError> {
    get(v, USER, name)
}

pub fn role(v: &View, name: &str) -> Result<Option<Role>, EtcdError> {
    get(v, ROLE, name)
}

/// Names of every user (`USER`) or role (`ROLE`), sorted.
pub fn names(v: &View, kind: u8) -> Result<Vec<String>, EtcdError> {
    use std::ops::Bound;
    scan(
        v.tree,
        v.overlay,
        Bound::Included(vec![kind]),
        Bound::Excluded(vec![kind + 1]),
    )
    .map(|r| r.map(|(k, _)| String::from_utf8_lossy(&k[1..]).into_owned()))
    .collect()
}

pub fn has_root_role(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT)
}

/// etcd's `IsAdminPermitted`: anyone while auth is off, else a user holding
/// the root role.
pub fn check_admin(v: &View, user: Option<&str>) -> Result<(), EtcdError> {
    if !enabled(v)? {
        return Ok(());
    }
    let name = user.ok_or(EtcdError::UserEmpty)?;
    let u = self::user(v, name)?.ok_or(EtcdError::UserNotFound)?;
    if has_root_role(&u) {
        Ok(())
    } else {
        Err(EtcdError::PermissionDenied)
    }
}

fn put<M: Message>(w: &mut Writer, kind: u8, name: &str, m: &M) {
    w.put_raw(keys::auth_key(kind, name), Some(m.encode_to_vec()));
}

fn must_user(w: &Writer, name: &str) -> Result<User, EtcdError> {
    user(&w.view(), name)?.ok_or(EtcdError::UserNotFound)
}

fn must_role(w: &Writer, name: &str) -> Result<Role, EtcdError> {
    role(&w.view(), name)?.ok_or(EtcdError::RoleNotFound)
}

/// Applies an auth change made by `by` (the entry's user). Nothing is written
/// unless the whole change is valid.
pub fn apply(w: &mut Writer, by: Option<&str>, cmd: &AuthCmd) -> Result<(), EtcdError> {
    if !matches!(cmd, AuthCmd::Enable { .. }) {
        check_admin(&w.view(), by)?;
    }
    let on = enabled(&w.view())?;
    match cmd {
        AuthCmd::Enable { secret } => {
            if on {
                return Ok(());
            }
            let root = user(&w.view(), ROOT)?.ok_or(EtcdError::RootUserNotExist)?;
            if !has_root_role(&root) {
                return Err(EtcdError::RootRoleNotExist);
            }
            w.put_meta(SECRET, secret.clone());
            w.put_meta(ENABLED, vec![1]);
        }
        AuthCmd::Disable => w.put_meta(ENABLED, vec![0]),
        AuthCmd::UserAdd { name, hash } => {
            if name.is_empty() {
                return Err(EtcdError::UserEmpty);
            }
            if user(&w.view(), name)?.is_some() {
                return Err(EtcdError::UserAlreadyExist);
            }
            let u = User {
                name: name.clone().into_bytes(),
                password: hash.clone().unwrap_or_default().into_bytes(),
                roles: Vec::new(),
                options: Some(authpb::UserAddOptions {
                    no_password: hash.is_none(),
                }),
            };
            put(w, USER, name, &u);
        }
        AuthCmd::UserDelete { name } => {
            if on && name == ROOT {
                return Err(EtcdError::InvalidAuthMgmt);
            }
            must_user(w, name)?;
            w.put_raw(keys::auth_key(USER, name), None);
        }
        AuthCmd::UserChangePassword { name, hash } => {
            let mut u = must_user(w, name)?;
            u.password = hash.clone().into_bytes();
            u.options.get_or_insert_with(Default::default).no_password = false;
            put(w, USER, name, &u);
        }
        AuthCmd::UserGrantRole {
            user: name,
            role: r,
        } => {
            let mut u = must_user(w, name)?;
            if r != ROOT {
                must_role(w, r)?;
            }
            if let Err(at) = u.roles.binary_search(r) {
                u.roles.insert(at, r.clone());
                put(w, USER, name, &u);
            }
        }
        AuthCmd::UserRevokeRole {
            user: name,
            role: r,
        } => {
            if on && name == ROOT && r == ROOT {
                return Err(EtcdError::InvalidAuthMgmt);
            }
            let mut u = must_user(w, name)?;
            let at = u.roles.iter().position(|x| x == r);
            u.roles.remove(at.ok_or(EtcdError::RoleNotGranted)?);
            put(w, USER, name, &u);
        }
        AuthCmd::RoleAdd { name } => {
            if name.is_empty() {
                return Err(EtcdError::RoleEmpty);
            }
            if role(&w.view(), name)?.is_some() {
                return Err(EtcdError::RoleAlreadyExist);
            }
            let r = Role {
                name: name.clone().into_bytes(),
                key_permission: Vec::new(),
            };
            put(w, ROLE, name, &r);
        }
        AuthCmd::RoleDelete { name } => {
            if on && name == ROOT {
                return Err(EtcdError::InvalidAuthMgmt);
            }
            must_role(w, name)?;
            w.put_raw(keys::auth_key(ROLE, name), None);
            // etcd also takes the role away from every user holding it.
            for uname in names(&w.view(), USER)? {
                let mut u = must_user(w, &uname)?;
                if let Some(at) = u.roles.iter().position(|x| x == name) {
                    u.roles.remove(at);
                    put(w, USER, &uname, &u);
                }
            }
        }
        AuthCmd::RoleGrantPermission { role: name, perm } => {
            let mut r = must_role(w, name)?;
            let p: &Permission = &perm.0;
            // One permission per exact range, kept sorted, as etcd: granting
            // the same range again replaces its type.
            let pos = r
                .key_permission
                .binary_search_by(|x| (&x.key, &x.range_end).cmp(&(&p.key, &p.range_end)));
            match pos {
                Ok(i) => r.key_permission[i].perm_type = p.perm_type,
                Err(i) => r.key_permission.insert(i, p.clone()),
            }
            put(w, ROLE, name, &r);
        }
        AuthCmd::RoleRevokePermission {
            role: name,
            key,
            range_end,
        } => {
            let mut r = must_role(w, name)?;
            let at = r
                .key_permission
                .iter()
                .position(|x| &x.key == key && &x.range_end == range_end);
            r.key_permission
                .remove(at.ok_or(EtcdError::PermissionNotGranted)?);
            put(w, ROLE, name, &r);
        }
    }
    Ok(())
}
