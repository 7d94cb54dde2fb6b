//! Consumer lookup for the auth plugins: (plugin, credential) → the consumer
//! and the consumer-side plugin instance (which holds the secret to check).
//! Credentials come from a consumer's own plugins or from its
//! `consumers/<name>/credentials/<id>` entries (APISIX 3.7+).

use std::collections::HashMap;
use std::sync::Arc;

use super::PluginSet;

/// A consumer as the auth plugins find it: its name, its own plugins (run
/// after the route's once it is identified) and its consumer group. It lives
/// here, not in `crate::state` which builds it, so that plugins never import
/// the state that imports them.
pub struct ConsumerRt {
    pub username: String,
    pub plugins: PluginSet,
    pub group_id: Option<String>,
}

/// A consumer-side credential.
#[derive(Clone)]
pub struct Credential {
    /// What requests present to be found (a key, a user name).
    pub lookup: String,
    pub secret: Secret,
}

/// What is checked once the consumer is found.
#[derive(Clone)]
pub enum Secret {
    /// key-auth: presenting the key is enough.
    None,
    /// basic-auth.
    Password(String),
    /// jwt-auth.
    Jwt(Arc<super::jwt::JwtKey>),
}

#[derive(Clone, Default)]
pub struct Index {
    /// plugin → credential → (consumer, credential): nested so a lookup
    /// borrows the request's strings instead of building a key.
    by_cred: HashMap<Arc<str>, HashMap<String, (String, Credential)>>,
    /// Owner (a consumer name or a credential id) → what it put in `by_cred`.
    owned: HashMap<String, Vec<(Arc<str>, String)>>,
}

impl Index {
    fn set(&mut self, owner: &str, username: &str, set: &PluginSet) {
        self.remove_owner(owner);
        let mut mine = Vec::new();
        for (name, p) in set.list.iter() {
            if let Some(cred) = p.credential() {
                let k = (name.clone(), cred.lookup.clone());
                self.by_cred
                    .entry(k.0.clone())
                    .or_default()
                    .insert(k.1.clone(), (username.to_string(), cred));
                mine.push(k);
            }
        }
        self.owned.insert(owner.to_string(), mine);
    }

    fn remove_owner(&mut self, owner: &str) {
        for (plugin, cred) in self.owned.remove(owner).unwrap_or_default() {
            if let Some(m) = self.by_cred.get_mut(&plugin) {
                m.remove(&cred);
                if m.is_empty() {
                    self.by_cred.remove(&plugin);
                }
            }
        }
    }

    pub fn set_consumer(&mut self, c: &ConsumerRt) {
        self.set(&c.username, &c.username, &c.plugins);
    }

    pub fn remove_consumer(&mut self, username: &str) {
        self.remove_owner(username);
    }

    pub fn set_credential(&mut self, cred_id: &str, username: &str, set: &PluginSet) {
        self.set(cred_id, username, set);
    }

    pub fn remove_credential(&mut self, cred_id: &str) {
        self.remove_owner(cred_id);
    }

    /// The consumer holding `cred` for `plugin`, and the credential.
    pub fn find(&self, plugin: &str, cred: &str) -> Option<&(String, Credential)> {
        self.by_cred.get(plugin)?.get(cred)
    }
}
