//! Reading JSON request bodies of the HTTP gateway within the request limit.
//!
//! - [`read_body`]: a unary call's body, refused as soon as it passes the
//!   limit (axum's `DefaultBodyLimit` would answer a plain-text 413; etcd's
//!   gateway answers its JSON error with gRPC's `ResourceExhausted`).
//! - [`Framer`]: the messages of a client stream (`/v3/watch`,
//!   `/v3/lease/keepalive`), which arrive one after another in one body. It
//!   finds where each top-level object ends by scanning every byte once
//!   (strings, escapes and nesting depth carried across chunks), so a
//!   message delivered a few bytes at a time costs O(its size), not a
//!   re-parse per chunk; and a message still open past the limit is refused
//!   before more of it is buffered.

use super::refusal_pace::{pace, PACED_FROM};
use axum::body::{Body, Bytes};
use futures::StreamExt;
use tonic::Status;

/// etcd's words (grpc-go's) for a message over the receive limit.
pub fn too_large(seen: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({seen} vs. {limit})"
    ))
}

/// How much of an oversize body is still read (and dropped) before the
/// answer: a server that answers and closes with unread input makes the
/// kernel reset the connection, and the client may lose the answer.
const DRAIN_BYTES: usize = 64 << 20;

/// A request body as it arrived, its chunks not yet joined: joining a large
/// one (a copy into fresh pages) is left to whoever parses it.
pub struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The body in one buffer; one that came in one chunk is not copied.
    pub fn join(mut self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts.pop().unwrap_or_default();
        }
        let mut buf = Vec::with_capacity(self.len);
        for p in &self.parts {
            buf.extend_from_slice(p);
        }
        Bytes::from(buf)
    }
}

impl From<Bytes> for Chunks {
    fn from(b: Bytes) -> Chunks {
        Chunks {
            len: b.len(),
            parts: vec![b],
        }
    }
}

/// The whole body of a unary call, at most `limit` bytes. `declared` is its
/// `Content-Length`, if it came with one: a body declared over the limit is
/// refused without keeping any of it. What is drained of an oversize body
/// is paced (see [`super::refusal_pace`]).
///
/// `refuse` sees each piece as it arrives and may refuse the request from
/// what it saw so far (a txn's operation count): the pieces are dropped and
/// the rest is read at the refusal pace before the answer, so a client
/// refused early is held back as one refused late would be. A body that
/// then passes the limit gets the size error instead, which is what etcd
/// answers for it.
pub async fn read_body(
    body: Body,
    declared: Option<usize>,
    limit: usize,
    mut refuse: impl FnMut(&[u8]) -> Option<Status>,
) -> Result<Chunks, Status> {
    let mut chunks = body.into_data_stream();
    let mut parts = Vec::new();
    let mut seen = 0;
    let mut refused: Option<Status> = None;
    let mut paced = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| Status::invalid_argument(e.to_string()))?;
        seen += chunk.len();
        if seen > limit || declared.is_some_and(|d| d > limit) {
            drop(parts);
            pace(chunk.len()).await;
            while seen < limit + DRAIN_BYTES {
                match chunks.next().await {
                    Some(Ok(more)) => {
                        seen += more.len();
                        pace(more.len()).await;
                    }
                    _ => break,
                }
            }
            return Err(too_large(seen, limit));
        }
        if refused.is_none() {
            refused = refuse(&chunk);
            if refused.is_none() {
                parts.push(chunk);
                continue;
            }
            parts = Vec::new();
        }
        if seen >= PACED_FROM {
            pace(seen - paced).await;
            paced = seen;
        }
    }
    match refused {
        Some(status) => Err(status),
        None => Ok(Chunks { parts, len: seen }),
    }
}

/// Splits a byte stream into top-level JSON objects.
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Where the object being scanned starts, once its `{` was seen.
    start: Option<usize>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl Framer {
    pub fn new(limit: usize) -> Self {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete object (its bytes), `Ok(None)` if more input is
    /// needed, or an error for input that is not a sequence of objects or an
    /// object over the limit.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, Status> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            if self.start.is_none() {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.start = Some(i);
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(Status::invalid_argument(format!(
                            "invalid character '{}' looking for beginning of value",
                            b.escape_ascii()
                        )))
                    }
                }
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let msg = self.buf[start..=i].to_vec();
                        self.buf.drain(..=i);
                        self.scanned = 0;
                        return Ok(Some(msg));
                    }
                }
                _ => {}
            }
        }
        match self.start {
            // Only whitespace so far: nothing worth keeping.
            None => {
                self.buf.clear();
                self.scanned = 0;
            }
            Some(start) if self.buf.len() - start > self.limit => {
                return Err(too_large(self.buf.len() - start, self.limit));
            }
            Some(_) => {}
        }
        Ok(None)
    }

    /// Whether input ended in the middle of an object.
    pub fn is_partial(&self) -> bool {
        self.start.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = f.next_message().unwrap() {
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[test]
    fn objects_split_anywhere_are_found_whole() {
        let input = br#" {"a":"}{\"x","b":[{"c":1}]}
{"d":{}}  {"e":"\\"}"#;
        // Every split point, one byte at a time too.
        for step in 1..input.len() {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            for chunk in input.chunks(step) {
                f.push(chunk);
                got.extend(all(&mut f));
            }
            assert_eq!(
                got,
                vec![
                    r#"{"a":"}{\"x","b":[{"c":1}]}"#,
                    r#"{"d":{}}"#,
                    r#"{"e":"\\"}"#
                ],
                "step {step}"
            );
            assert!(!f.is_partial());
        }
    }

    #[test]
    fn an_open_object_past_the_limit_is_refused() {
        let mut f = Framer::new(16);
        f.push(br#"{"k":"0123456789"#);
        assert!(f.next_message().unwrap().is_none());
        assert!(f.is_partial());
        f.push(b"0123456789");
        let e = f.next_message().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e
            .message()
            .starts_with("grpc: received message larger than max"));
    }

    #[test]
    fn what_is_not_an_object_is_refused() {
        let mut f = Framer::new(16);
        f.push(b"  [1]");
        assert_eq!(
            f.next_message().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    /// Damaged streams in random chunks: messages come out whole and within
    /// the limit, or an error ends the stream; never a panic, never more
    /// than the limit buffered for an open message.
    #[test]
    fn any_input_in_any_chunks() {
        let valid =
            br#"{"create_request":{"key":"YQ==","range_end":"Yg=="}} {"progress_request":{}}
{"cancel_request":{"watch_id":"3"}}"#;
        let mut g = crate::testing::Rng::new(9);
        for input in crate::testing::mutations(valid, 20_000, 17) {
            let mut f = Framer::new(64);
            let mut rest = &input[..];
            'feed: while !rest.is_empty() {
                let n = (g.below(9) as usize + 1).min(rest.len());
                f.push(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match f.next_message() {
                        Ok(Some(m)) => assert!(m.len() <= 64 + n, "{m:?}"),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                assert!(f.buf.len() <= 64 + 9, "buffered past the limit");
            }
        }
    }

    #[test]
    fn whitespace_between_messages_is_not_kept() {
        let mut f = Framer::new(8);
        for _ in 0..100 {
            f.push(b"          \n");
            assert!(f.next_message().unwrap().is_none());
        }
        f.push(b"{}");
        assert_eq!(all(&mut f), vec!["{}"]);
    }
}
