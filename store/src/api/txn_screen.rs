//! Refuses a txn with too many operations from its bytes, before it is
//! decoded: gRPC `Txn` messages as they arrive ([`screen`]), and the JSON
//! gateway's `/v3/kv/txn` bodies as they arrive ([`JsonOps`]).
//!
//! etcd's first check of a txn is its operation count (`checkTxnRequest`:
//! compares, success ops and failure ops each at most `--max-txn-ops`), and
//! it runs before auth. Decoding a 1.4 MB txn of 20,000 operations only to
//! refuse it cost a request worker milliseconds of allocation and freeing,
//! which a client without a token could repeat in a loop. The screen walks
//! the top-level fields of the message as the body streams in (tag, length,
//! skip; no allocation) and, once a count passes the limit, ends the body
//! with etcd's `too many operations in txn request`. Tonic answers with that
//! status and the rest of the upload is reset instead of read. (Unlike a
//! refused JSON body, the answer is not held back by the refusal pace:
//! while it waited, HTTP/2 would take in up to a window of the rest.)
//!
//! Only what is certain is screened: the top-level counts, which etcd checks
//! before anything else. A message that is compressed, larger than the
//! decoding limit, or not well-formed at the top level is passed through
//! untouched, so tonic gives the answer it always gave. Nested txns are
//! checked after decoding, by [`super::validate`], because etcd's order of
//! checks there depends on the ops before them. One difference is left: a
//! txn over the limit whose top level is well-formed but an op inside is
//! not gets `too many operations` here, where etcd, which decodes first,
//! answers with its decode error; both refuse it and change nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::Frame;

use crate::error::EtcdError;

/// The gRPC path the screen applies to.
pub const TXN_PATH: &str = "/etcdserverpb.KV/Txn";

/// Wraps the body of a gRPC `Txn` request in a [`Screen`]; other requests
/// pass unchanged.
pub fn screen(req: Request, max_ops: usize, max_message: usize) -> Request {
    if req.uri().path() != TXN_PATH {
        return req;
    }
    req.map(|body| {
        Body::new(Screen {
            inner: body,
            scan: Scan::new(max_ops, max_message),
        })
    })
}

/// A request body that feeds its bytes through a [`Scan`] on their way.
struct Screen {
    inner: Body,
    scan: Scan,
}

impl http_body::Body for Screen {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                if self.scan.feed(data) == Verdict::TooManyOps {
                    let status: tonic::Status = EtcdError::TooManyOps.into();
                    return Poll::Ready(Some(Err(axum::Error::new(status))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing decided yet, or the screen stepped aside.
    Pass,
    TooManyOps,
}

/// Where the scan is in the first gRPC message of the body.
#[derive(Debug)]
enum State {
    /// The 5-byte gRPC prefix: compression flag and big-endian length.
    Prefix { got: [u8; 5], n: usize },
    /// A field's tag (a varint).
    Tag(Varint),
    /// The length of a length-delimited field.
    Length(Varint),
    /// A scalar varint field's value.
    Value(Varint),
    /// `n` bytes of a field's payload to step over.
    Skip(u64),
    /// Decided, or stepped aside: the rest passes unread.
    Off,
}

/// The top-level field walk of one `TxnRequest`. Counts fields 1
/// (`compare`), 2 (`success`) and 3 (`failure`).
#[derive(Debug)]
struct Scan {
    state: State,
    /// Bytes of the message not yet walked.
    left: u64,
    counts: [usize; 3],
    max_ops: usize,
    max_message: usize,
}

impl Scan {
    fn new(max_ops: usize, max_message: usize) -> Scan {
        Scan {
            state: State::Prefix { got: [0; 5], n: 0 },
            left: 0,
            counts: [0; 3],
            max_ops,
            max_message,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Verdict {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return Verdict::Pass,
                State::Prefix { got, n } => {
                    got[*n] = data[0];
                    *n += 1;
                    data = &data[1..];
                    if *n == 5 {
                        let compressed = got[0] != 0;
                        let len = u32::from_be_bytes([got[1], got[2], got[3], got[4]]);
                        // A compressed message, or one tonic will refuse for
                        // its size, keeps tonic's own answer.
                        self.state = if compressed || len as usize > self.max_message {
                            State::Off
                        } else {
                            self.left = len as u64;
                            self.field_boundary()
                        };
                    }
                }
                State::Skip(n) => {
                    let step = (*n).min(data.len() as u64);
                    *n -= step;
                    data = &data[step as usize..];
                    if *n == 0 {
                        self.state = self.field_boundary();
                    }
                }
                State::Tag(v) | State::Value(v) | State::Length(v) => {
                    if self.left == 0 {
                        self.state = State::Off;
                        continue;
                    }
                    self.left -= 1;
                    let b = data[0];
                    data = &data[1..];
                    let Some(value) = v.push(b) else {
                        if v.overflowed() {
                            self.state = State::Off;
                        }
                        continue;
                    };
                    let verdict = self.varint_done(value);
                    if verdict != Verdict::Pass {
                        self.state = State::Off;
                        return verdict;
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// After a field (or the prefix): the next tag, or the end of the message.
    fn field_boundary(&self) -> State {
        if self.left == 0 {
            State::Off
        } else {
            State::Tag(Varint::default())
        }
    }

    /// A varint of the current state is complete: move on.
    fn varint_done(&mut self, value: u64) -> Verdict {
        self.state = match std::mem::replace(&mut self.state, State::Off) {
            State::Tag(_) => {
                let (field, wire) = (value >> 3, value & 7);
                match (field, wire) {
                    (0, _) => State::Off,
                    (1..=3, 2) => {
                        let c = &mut self.counts[field as usize - 1];
                        *c += 1;
                        if *c > self.max_ops {
                            return Verdict::TooManyOps;
                        }
                        State::Length(Varint::default())
                    }
                    // prost refuses these fields with any other wire type.
                    (1..=3, _) => State::Off,
                    (_, 0) => State::Value(Varint::default()),
                    (_, 1) => self.skip(8),
                    (_, 2) => State::Length(Varint::default()),
                    (_, 5) => self.skip(4),
                    // Groups (3, 4) and invalid wire types: tonic decides.
                    _ => State::Off,
                }
            }
            State::Length(_) => self.skip(value),
            State::Value(_) => self.field_boundary(),
            other => other,
        };
        Verdict::Pass
    }

    /// Steps over `n` payload bytes, if the message has them.
    fn skip(&mut self, n: u64) -> State {
        if n > self.left {
            return State::Off;
        }
        self.left -= n;
        if n == 0 {
            self.field_boundary()
        } else {
            State::Skip(n)
        }
    }
}

/// A protobuf varint read a byte at a time.
#[derive(Debug, Default)]
struct Varint {
    value: u64,
    shift: u32,
}

impl Varint {
    /// Adds a byte; the value once it is complete.
    fn push(&mut self, b: u8) -> Option<u64> {
        if self.shift >= 64 {
            return None;
        }
        self.value |= u64::from(b & 0x7f) << self.shift;
        self.shift += 7;
        if b & 0x80 == 0 {
            Some(self.value)
        } else {
            None
        }
    }

    /// More than ten bytes: not a varint prost would accept.
    fn overflowed(&self) -> bool {
        self.shift >= 64
    }
}

/// Whether a JSON txn body, fed in pieces as it arrives, has more than
/// `max_ops` elements in its top-level `compare`, `success` or `failure`
/// array, in one pass over the bytes; parsing the same 1 MB of 20,000 ops
/// into messages costs the member ~18 ms.
///
/// Undecided whenever the bytes do not settle it: a top level that is not
/// an object, a key with an escape in it, a counted key given twice (the
/// parser refuses duplicates). Like the gRPC screen it may refuse, for its
/// count, a body that is malformed after the 129th op, where parsing would
/// have reported the malformation.
pub struct JsonOps {
    scan: JsonScan,
    verdict: JsonVerdict,
}

impl JsonOps {
    pub fn new(max_ops: usize) -> JsonOps {
        JsonOps {
            scan: JsonScan::new(max_ops),
            verdict: JsonVerdict::Undecided,
        }
    }

    /// Walks the next piece of the body: true once a count is over the
    /// limit (and from then on).
    pub fn over(&mut self, part: &[u8]) -> bool {
        if self.verdict == JsonVerdict::Undecided {
            self.verdict = self.scan.feed(part);
        }
        self.verdict == JsonVerdict::Over
    }
}

#[derive(Debug, PartialEq, Eq)]
enum JsonVerdict {
    Undecided,
    Over,
    Off,
}

/// The keys whose arrays are counted, in the order of `JsonScan::counts`.
const COUNTED: [&[u8]; 3] = [b"compare", b"success", b"failure"];

/// Where the JSON walk is. Depth 1 is the top-level object, depth 2 the
/// values of its keys (a counted array's elements).
#[derive(Debug)]
struct JsonScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    want_key: bool,
    /// The key being read: its first 8 bytes and its length (no counted
    /// key is longer than 7).
    key: Option<([u8; 8], usize)>,
    /// The counted key whose value comes next.
    field: Option<usize>,
    /// Inside that key's array (depth 2), and whether an element may start.
    counting: Option<usize>,
    element_due: bool,
    seen: [bool; 3],
    counts: [usize; 3],
    max_ops: usize,
    started: bool,
}

impl JsonScan {
    fn new(max_ops: usize) -> JsonScan {
        JsonScan {
            depth: 0,
            in_string: false,
            escaped: false,
            want_key: false,
            key: None,
            field: None,
            counting: None,
            element_due: false,
            seen: [false; 3],
            counts: [0; 3],
            max_ops,
            started: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> JsonVerdict {
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    if self.key.is_some() {
                        return JsonVerdict::Off;
                    }
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if let Some((key, n)) = self.key.take() {
                        if let Err(v) = self.key_read(&key[..n.min(8)]) {
                            return v;
                        }
                    }
                } else if let Some((key, n)) = &mut self.key {
                    if let Some(slot) = key.get_mut(*n) {
                        *slot = b;
                    }
                    *n += 1;
                }
                continue;
            }
            if b.is_ascii_whitespace() {
                continue;
            }
            if !self.started {
                if b != b'{' {
                    return JsonVerdict::Off;
                }
                self.started = true;
            }
            if let Some(i) = self.counting {
                if self.depth == 2 && self.element_due && b != b']' {
                    self.element_due = false;
                    self.counts[i] += 1;
                    if self.counts[i] > self.max_ops {
                        return JsonVerdict::Over;
                    }
                }
                if self.depth == 2 && b == b',' {
                    self.element_due = true;
                }
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.want_key {
                        self.want_key = false;
                        self.key = Some(([0; 8], 0));
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 1 && b == b'[' {
                        self.counting = self.field.take();
                        self.element_due = true;
                    }
                    self.depth += 1;
                    if self.depth == 1 {
                        self.want_key = true;
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 {
                        self.counting = None;
                    }
                    if self.depth == 0 {
                        return JsonVerdict::Off;
                    }
                }
                b',' if self.depth == 1 => {
                    self.want_key = true;
                    self.field = None;
                }
                _ => {}
            }
        }
        JsonVerdict::Undecided
    }

    /// A top-level key ended: note whether its value is counted.
    fn key_read(&mut self, key: &[u8]) -> Result<(), JsonVerdict> {
        self.field = COUNTED.iter().position(|k| *k == key);
        if let Some(i) = self.field {
            if std::mem::replace(&mut self.seen[i], true) {
                return Err(JsonVerdict::Off);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::{
        request_op::Request as Op, Compare, PutRequest, RequestOp, TxnRequest,
    };
    use prost::Message;

    /// The body, in these pieces, is over the limit.
    fn json_over<'a>(parts: impl IntoIterator<Item = &'a [u8]>, max_ops: usize) -> bool {
        let mut ops = JsonOps::new(max_ops);
        parts.into_iter().any(|part| ops.over(part))
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn txn(compares: usize, success: usize, failure: usize) -> Vec<u8> {
        let t = TxnRequest {
            compare: (0..compares)
                .map(|i| Compare {
                    key: format!("c{i}").into(),
                    ..Default::default()
                })
                .collect(),
            success: (0..success).map(|i| put(&format!("s{i}"))).collect(),
            failure: (0..failure).map(|i| put(&format!("f{i}"))).collect(),
        };
        framed(&t.encode_to_vec())
    }

    /// Feeds the bytes in pieces of `chunk`, as the network might.
    fn verdict(bytes: &[u8], chunk: usize) -> Verdict {
        let mut s = Scan::new(128, 2 << 20);
        for piece in bytes.chunks(chunk) {
            if s.feed(piece) == Verdict::TooManyOps {
                return Verdict::TooManyOps;
            }
        }
        Verdict::Pass
    }

    #[test]
    fn counts_each_branch_against_the_limit_in_any_chunking() {
        for chunk in [1, 3, 7, 64, 1 << 20] {
            assert_eq!(verdict(&txn(128, 128, 128), chunk), Verdict::Pass);
            assert_eq!(verdict(&txn(129, 0, 0), chunk), Verdict::TooManyOps);
            assert_eq!(verdict(&txn(0, 129, 0), chunk), Verdict::TooManyOps);
            assert_eq!(verdict(&txn(1, 2, 129), chunk), Verdict::TooManyOps);
            assert_eq!(verdict(&txn(0, 20_000, 0), chunk), Verdict::TooManyOps);
        }
    }

    #[test]
    fn decides_before_the_rest_of_the_body_arrives() {
        let bytes = txn(0, 20_000, 0);
        let mut s = Scan::new(128, 2 << 20);
        assert_eq!(s.feed(&bytes[..bytes.len() / 10]), Verdict::TooManyOps);
    }

    #[test]
    fn steps_aside_where_tonic_decides() {
        let mut compressed = txn(0, 200, 0);
        compressed[0] = 1;
        assert_eq!(verdict(&compressed, 64), Verdict::Pass);
        // Larger than the decoding limit: tonic's ResourceExhausted.
        let mut s = Scan::new(128, 1024);
        assert_eq!(s.feed(&txn(0, 200, 0)), Verdict::Pass);
        // A field 2 that is not length-delimited: prost's decode error.
        let mut bad = framed(&[0x10, 0x01]);
        bad.extend(txn(0, 200, 0));
        assert_eq!(verdict(&bad, 64), Verdict::Pass);
        // A length past the end of the message.
        assert_eq!(verdict(&framed(&[0x12, 0x7f, 0]), 1), Verdict::Pass);
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_stepped_over() {
        let mut msg = vec![
            0x20, 0x96, 0x01, // field 4, varint 150
            0x29, 1, 2, 3, 4, 5, 6, 7, 8, // field 5, fixed64
            0x32, 2, b'h', b'i', // field 6, 2 bytes
            0x3d, 1, 2, 3, 4, // field 7, fixed32
        ];
        let t = TxnRequest {
            success: (0..129).map(|i| put(&format!("s{i}"))).collect(),
            ..Default::default()
        };
        msg.extend(t.encode_to_vec());
        assert_eq!(verdict(&framed(&msg), 1), Verdict::TooManyOps);
    }

    /// On mutations of valid txns: never a panic, and never a refusal of a
    /// message whose counts are within the limit.
    #[test]
    fn agrees_with_the_decoded_counts_on_mutated_input() {
        let max = 4;
        let valid = txn(3, 4, 5);
        for input in crate::testing::mutations(&valid, 20_000, 29) {
            let mut s = Scan::new(max, 1 << 20);
            let refused = input.chunks(5).any(|p| s.feed(p) == Verdict::TooManyOps);
            if input.len() < 5 || input[0] != 0 {
                continue;
            }
            let len = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
            let Some(message) = input.get(5..5 + len) else {
                continue;
            };
            // A refusal is always one etcd would give. (Where the top level
            // is valid but an op inside is not, etcd's decode error comes
            // first; the screen cannot know that, see the module's note.)
            if let (true, Ok(t)) = (refused, TxnRequest::decode(message)) {
                let over = t.compare.len().max(t.success.len()).max(t.failure.len()) > max;
                assert!(over, "refused {input:?}");
            }
        }
    }

    fn json_txn(compares: usize, success: usize, failure: usize) -> Vec<u8> {
        let op = |k: String| serde_json::json!({"request_put": {"key": k, "value": "dlx9In0="}});
        serde_json::to_vec(&serde_json::json!({
            "compare": (0..compares).map(|i| serde_json::json!({"key": format!("c{i}"), "target": "VERSION"})).collect::<Vec<_>>(),
            "success": (0..success).map(|i| op(format!("s{i}"))).collect::<Vec<_>>(),
            "failure": (0..failure).map(|i| op(format!("f{i}"))).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn json_verdict(bytes: &[u8], chunk: usize) -> bool {
        json_over(bytes.chunks(chunk), 128)
    }

    #[test]
    fn json_counts_each_branch_in_any_chunking() {
        for chunk in [1, 5, 64, 1 << 20] {
            assert!(!json_verdict(&json_txn(128, 128, 128), chunk));
            assert!(json_verdict(&json_txn(129, 0, 0), chunk));
            assert!(json_verdict(&json_txn(0, 129, 0), chunk));
            assert!(json_verdict(&json_txn(1, 2, 129), chunk));
            assert!(json_verdict(&json_txn(0, 20_000, 0), chunk));
        }
        // Brackets, commas and quotes inside strings, nested arrays inside
        // ops and unknown keys holding arrays count for nothing.
        let tricky = br#" { "other": [1,2,3,4], "success": [ {"request_put": {"key": "a,]\"[,", "x": [[1,2],[3]]}} , "b" ], "failure": [] } "#;
        // (`success` has two ops; `other` four, uncounted.)
        for chunk in [1, 3, 200] {
            assert!(!json_over(tricky.chunks(chunk), 2));
            assert!(json_over(tricky.chunks(chunk), 1));
        }
    }

    #[test]
    fn json_steps_aside_where_the_parser_decides() {
        // Not an object; a key given twice; a key with an escape.
        assert!(!json_verdict(b"[1,2,3]", 1));
        let twice = br#"{"success": [1], "success": [1,2,3]}"#;
        assert!(!json_over([&twice[..]], 2));
        let escaped = br#"{"succ\u0065ss": [1,2,3]}"#;
        assert!(!json_over([&escaped[..]], 2));
        // A long key that starts like a counted one is not counted.
        let long = br#"{"successor": [1,2,3]}"#;
        assert!(!json_over([&long[..]], 2));
        assert!(json_over([&br#"{"success": [1,2,3]}"#[..]], 2));
    }

    /// On mutations of valid JSON txns: never a panic, and never a refusal
    /// of a body the parser reads with every count within the limit.
    #[test]
    fn json_agrees_with_the_parser_on_mutated_input() {
        let max = 4;
        for input in crate::testing::mutations(&json_txn(3, 4, 2), 20_000, 31) {
            let refused = json_over(input.chunks(7), max);
            if let (true, Ok(t)) = (refused, serde_json::from_slice::<TxnRequest>(&input)) {
                let over = t.compare.len().max(t.success.len()).max(t.failure.len()) > max;
                assert!(over, "refused {}", String::from_utf8_lossy(&input));
            }
        }
    }
}
