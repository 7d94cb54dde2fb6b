//! The Raft log entry format: what a committed entry asks the state machine to
//! do, and what applying it answered.
//!
//! [`Request`] is a versioned enum. Each version carries the requesting user,
//! because etcd checks permissions when an entry is applied (so a permission
//! revoked after proposal still applies). New commands are added as new
//! [`Command`] variants at the end; existing variants never change shape, so
//! logs and snapshots written by older binaries stay readable.
//!
//! etcd request and response messages travel as their protobuf encoding
//! ([`Proto`]), the one format etcd already defines for them. Variants are
//! only ever appended, here and in [`Response`] and `EtcdError`, because
//! members of different versions exchange them during a rolling upgrade.

use std::fmt;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use cairn_proto::etcdserverpb as pb;

use crate::error::EtcdError;

/// A protobuf message stored in a serde structure as its encoded bytes.
#[derive(Clone, PartialEq, Default)]
pub struct Proto<M>(pub M);

impl<M: Message> Serialize for Proto<M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, M: Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes_compat::ByteBuf = Deserialize::deserialize(d)?;
        M::decode(bytes.0.as_slice())
            .map(Proto)
            .map_err(serde::de::Error::custom)
    }
}

impl<M: fmt::Debug> fmt::Debug for Proto<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Minimal owned byte buffer that deserializes from serde bytes or a seq.
mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::new();
                    while let Some(b) = a.next_element()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// One log entry's payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Request {
    V1 {
        /// Authenticated user that made the request (`None` without auth).
        user: Option<String>,
        cmd: Command,
    },
}

impl Request {
    pub fn new(user: Option<String>, cmd: Command) -> Request {
        Request::V1 { user, cmd }
    }

    pub fn command(&self) -> &Command {
        match self {
            Request::V1 { cmd, .. } => cmd,
        }
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Request::V1 { user, .. } => user.as_deref(),
        }
    }
}

/// What an entry asks the state machine to do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    Put(Proto<pb::PutRequest>),
    DeleteRange(Proto<pb::DeleteRangeRequest>),
    Txn(Proto<pb::TxnRequest>),
    Compact(Proto<pb::CompactionRequest>),
    /// A member publishes its name and client URLs (etcd's `publish`), so
    /// every member can list them.
    MemberAttributes {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Creates a lease. The ID is chosen when the request is received (so
    /// every member applies the same one) and the TTL already raised to the
    /// minimum.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease (client request or expiry): its keys are deleted.
    LeaseRevoke {
        id: i64,
    },
    /// Raises or clears an alarm (etcd's AlarmType numbers).
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// Requests the leader batched into one entry (see `batcher`); each is
    /// applied in order as if it had an entry of its own.
    Batch(Vec<Request>),
    /// A change to users, roles, permissions or the auth switch.
    Auth(crate::auth::AuthCmd),
}

impl Command {
    /// Rough encoded size, to keep batches bounded without encoding twice.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Put(Proto(p)) => p.key.len() + p.value.len() + 32,
            Command::Txn(Proto(t)) => prost::Message::encoded_len(t),
            Command::Batch(reqs) => reqs.iter().map(|r| r.command().approx_size()).sum(),
            _ => 64,
        }
    }
}

/// What applying an entry answered. Response headers carry only the revision
/// here; each member fills in cluster_id, member_id and raft_term.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub enum Response {
    Put(Proto<pb::PutResponse>),
    DeleteRange(Proto<pb::DeleteRangeResponse>),
    Txn(Proto<pb::TxnResponse>),
    Compact(Proto<pb::CompactionResponse>),
    Error(EtcdError),
    /// Membership entries, blank entries and attribute updates.
    #[default]
    Done,
    LeaseGrant(Proto<pb::LeaseGrantResponse>),
    LeaseRevoke(Proto<pb::LeaseRevokeResponse>),
    /// Alarms raised after an `Alarm` command, as (member, type).
    Alarms(Vec<(u64, i32)>),
    /// One response per request of a `Command::Batch`, in order.
    Batch(Vec<Response>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrips_through_bincode() {
        let r = Request::new(
            Some("root".into()),
            Command::Put(Proto(pb::PutRequest {
                key: b"k".to_vec(),
                value: vec![0, 1, 2],
                ..Default::default()
            })),
        );
        let b = bincode::serialize(&r).unwrap();
        let back: Request = bincode::deserialize(&b).unwrap();
        assert_eq!(back, r);
    }
}
