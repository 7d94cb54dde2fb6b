//! What members ask each other beyond openraft's own RPCs.
//!
//! - [`messages`]: the messages (forwarded writes, lease calls, membership
//!   changes) and their answers.
//! - [`calls`]: the client side, over [`crate::net::peers::PeerPool`].
//!
//! The server side is [`crate::api::peer`], which needs the running member.

pub mod calls;
pub mod messages;
