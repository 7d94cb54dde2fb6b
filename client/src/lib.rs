//! `cairn-client`: Cairn's own etcd v3 client, on the tonic stubs of `cairn-proto`.
//!
//! - [`Client`] (this file): connect to a list of members; cheap to clone.
//! - `endpoints`: endpoint URL parsing, one lazily connected channel per member.
//! - [`resolve`]: pure-Rust name resolution and the TCP connector of every
//!   channel (also the store's peer channels), re-resolving on each reconnect.
//! - [`tcp`]: the socket settings every Cairn connection gets on either end
//!   (no Nagle; no BBR on loopback, where it stalls bursts ~40 ms).
//! - `call`: endpoint choice (sticky with failover), per-attempt timeout, and the
//!   rule that a mutation is never re-sent once it may have been applied.
//! - [`error`]: [`Error`], and the classification of a failed attempt
//!   (server answer / certainly not applied / outcome unknown).
//! - [`options`]: [`ClientOptions`], [`PutOptions`], [`GetOptions`], [`DeleteOptions`].
//! - `kv`: put / get / range / delete / txn / compact, and [`prefix_end`].
//! - [`txn`]: builders for compares and ops.
//! - `cluster`: status (one member), member list, lease grant/revoke.
//! - `lease`: lease keep-alive (a [`LeaseKeepAlive`] stream handle, or once),
//!   time-to-live, list; retried on other members (renewing is idempotent).
//! - `auth`: authenticating with [`Credentials`] and refreshing the token.
//! - [`watch`]: [`Watcher`] (one Watch stream on one member: create, cancel,
//!   progress; a broken stream is an error) and [`ResumingWatcher`] (reopens
//!   the watch elsewhere from the revision after the last one delivered).
//!
//! Responses are the raw protobuf types of [`cairn_proto::etcdserverpb`] (header
//! included), so callers see exactly what the server said.

mod auth;
mod call;
mod cluster;
mod endpoints;
pub mod error;
mod kv;
mod lease;
pub mod options;
pub mod resolve;
pub mod tcp;
pub mod txn;
pub mod watch;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
pub use cairn_proto::{etcdserverpb as pb, mvccpb};
pub use error::{Error, Result};
pub use kv::prefix_end;
pub use lease::LeaseKeepAlive;
pub use options::{
    store_access, ClientOptions, Credentials, DeleteOptions, GetOptions, KeyRange, PutOptions,
    TlsOptions,
};
pub use tonic::Code;
pub use watch::{ResumingWatcher, WatchOptions, Watcher};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// An etcd v3 client over several members. Clones share channels and state.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<endpoints::Member>,
    opts: ClientOptions,
    /// Index of the member calls start on (see `call`).
    pinned: AtomicUsize,
    /// The token sent with every call; refreshed from `opts.credentials`.
    token: std::sync::RwLock<Option<AsciiMetadataValue>>,
}

impl Client {
    /// Creates a client over `endpoints` (`http://host:port` or `host:port`).
    /// Nothing is dialed here: each member's channel connects on first use, so
    /// this succeeds while members are down. Fails only on bad arguments.
    pub async fn connect(endpoints: Vec<String>, opts: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let token = match &opts.token {
            None => None,
            Some(t) => Some(
                MetadataValue::try_from(t.as_str())
                    .map_err(|e| Error::InvalidArgument(format!("auth token: {e}")))?,
            ),
        };
        let mut members: Vec<endpoints::Member> = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            let url = endpoints::normalize(e, opts.tls.is_some())?;
            if members.iter().all(|m| m.url != url) {
                members.push(endpoints::member(url, &opts)?);
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                members,
                opts,
                pinned: AtomicUsize::new(0),
                token: std::sync::RwLock::new(token),
            }),
        })
    }

    /// The members' normalized URLs (`http://host:port`), in the given order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.url.clone()).collect()
    }
}
