//! HTTP/1.1 to upstream nodes, as bytes: the request head written straight
//! from the headers the proxy chose, the response head parsed with
//! `httparse` (its hop-by-hop headers read for the framing and dropped),
//! and the response body's framing (RFC 9112 §6.3), chunked decoding
//! included. No I/O here: `pool` reads and writes, in the
//! request's own task.
//!
//! Why not hyper's client connection, which this replaced: it runs each
//! connection as a task of its own, so every request crossed to that task
//! and back through channels, and its head was first copied into a
//! `HeaderMap` of its own; that was a third of the gateway's instructions
//! per request (`bench/gateway-cost.sh`).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// A response head larger than this is refused (nginx: "upstream sent too
/// big header"); trailers of a chunked body are bounded by it too.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines in a response head, at most (hyper's default).
const MAX_HEADERS: usize = 100;
/// A chunk-size line, extensions included, at most.
const MAX_CHUNK_LINE: usize = 4096;

/// A response that breaks HTTP/1.1 (or that the gateway does not proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadResponse {}

/// A request head being written into a buffer: the request line, header
/// lines, then the end. The caller vouches that names are tokens and that
/// values hold no CR or LF (as `http`'s types guarantee).
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> HeadWriter<'a> {
    /// Clears `out` and writes the request line.
    pub fn new(out: &'a mut Vec<u8>, method: &Method, target: &str) -> HeadWriter<'a> {
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { out }
    }

    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.header_with(name, |out| out.extend_from_slice(value));
    }

    /// A header whose value `value` writes (no copy through a string).
    pub fn header_with(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        value(self.out);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Ends the head, with `Content-Length` first when given.
    pub fn finish(mut self, content_length: Option<usize>) {
        if let Some(n) = content_length {
            self.header_with(b"content-length", |out| write_u64(out, n as u64));
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

/// `n` in decimal.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A request nginx may send again after a failure once it was sent (all
/// but POST, LOCK and PATCH: `proxy_next_upstream`'s rule).
pub fn idempotent(m: &Method) -> bool {
    !matches!(m.as_str(), "POST" | "PATCH" | "LOCK")
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub reusable: bool,
}

/// Parses the response head at the front of `buf` and takes it off;
/// `Ok(None)` while the head is incomplete. Interim 1xx responses are taken
/// off and skipped; 101 (a protocol switch) is refused, as upgrades are not
/// proxied.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, BadResponse> {
    loop {
        let Some(head) = parse_one(buf, method)? else {
            return Ok(None);
        };
        match head.status.as_u16() {
            101 => return Err(BadResponse("upstream switched protocols")),
            100..=199 => continue,
            _ => return Ok(Some(head)),
        }
    }
}

/// Headers of one hop (RFC 9110 §7.6.1), not passed on.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `name` (lowercase) is a hop-by-hop header.
pub fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

fn parse_one(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, BadResponse> {
    // Where each header passed on sits in the head, so its value can be a
    // slice of one frozen buffer instead of a copy; what the hop-by-hop
    // ones say is read on the way.
    let mut spans: Vec<(u32, u32, u32, u32)> = Vec::new();
    let mut hop = Hop::default();
    let (len, code, minor) = {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        match status {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
                let base = buf.as_ptr() as usize;
                spans.reserve_exact(resp.headers.len());
                for h in resp.headers.iter() {
                    if hop.read(h)? {
                        continue;
                    }
                    // Below MAX_HEAD: offsets fit.
                    let n = (h.name.as_ptr() as usize - base) as u32;
                    let v = (h.value.as_ptr() as usize - base) as u32;
                    spans.push((n, h.name.len() as u32, v, h.value.len() as u32));
                }
                (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
            }
            Ok(httparse::Status::Complete(_)) => {
                return Err(BadResponse("upstream sent too big header"))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(BadResponse("upstream sent too big header"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(BadResponse("upstream sent too many headers"))
            }
            Err(_) => return Err(BadResponse("upstream sent an invalid response head")),
        }
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| BadResponse("upstream sent an invalid status"))?;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut length = None;
    for (n, nl, v, vl) in spans {
        let (n, v) = (n as usize, v as usize);
        let name = HeaderName::from_bytes(&head[n..n + nl as usize])
            .map_err(|_| BadResponse("upstream sent an invalid header name"))?;
        // Names the Connection header lists are of this hop too.
        if hop.listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl as usize))
            .map_err(|_| BadResponse("upstream sent an invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            length = content_length(&value, length)?;
        }
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; then
    // Transfer-Encoding (chunked last, else until close); then
    // Content-Length; else until close.
    let code = status.as_u16();
    let framing = if method == Method::HEAD || code < 200 || code == 204 || code == 304 {
        Framing::Empty
    } else if hop.transfer_encoding {
        if hop.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    let both = hop.transfer_encoding && length.is_some();
    let reusable =
        version == Version::HTTP_11 && !hop.close && !both && framing != Framing::UntilClose;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        reusable,
    }))
}

/// What a response's hop-by-hop headers say.
#[derive(Default)]
struct Hop {
    transfer_encoding: bool,
    /// The last transfer coding is chunked.
    chunked_last: bool,
    close: bool,
    /// Other names `Connection` lists (lowercase); mostly none.
    listed: Vec<String>,
}

impl Hop {
    /// Reads `h` if it is a hop-by-hop header; says whether it was.
    fn read(&mut self, h: &httparse::Header<'_>) -> Result<bool, BadResponse> {
        let Some(which) = HOP_BY_HOP
            .iter()
            .position(|n| n.eq_ignore_ascii_case(h.name))
        else {
            return Ok(false);
        };
        let value = std::str::from_utf8(h.value)
            .map_err(|_| BadResponse("upstream sent an invalid header value"))?;
        match HOP_BY_HOP[which] {
            "transfer-encoding" => {
                self.transfer_encoding = true;
                let last = value.rsplit(',').next().unwrap_or("").trim();
                self.chunked_last = last.eq_ignore_ascii_case("chunked");
            }
            "connection" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.eq_ignore_ascii_case("close") {
                        self.close = true;
                    } else if !t.eq_ignore_ascii_case("keep-alive") {
                        self.listed.push(t.to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Every Content-Length value (and every item of a list) must be the same
/// number.
fn content_length(v: &HeaderValue, seen: Option<u64>) -> Result<Option<u64>, BadResponse> {
    let bad = BadResponse("upstream sent an invalid content-length");
    let s = v.to_str().map_err(|_| bad.clone())?;
    let mut length = seen;
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let n: u64 = part.parse().map_err(|_| bad.clone())?;
        if length.is_some_and(|l| l != n) {
            return Err(BadResponse("upstream sent conflicting content-lengths"));
        }
        length = Some(n);
    }
    Ok(length)
}

/// What a body decoder made of the bytes it has.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Needs more bytes.
    More,
    /// The body ended; bytes after it are not its.
    Done,
}

/// A response body being read off a connection.
#[derive(Debug)]
pub enum BodyReader {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl BodyReader {
    pub fn new(f: Framing) -> BodyReader {
        match f {
            Framing::Empty => BodyReader::Length(0),
            Framing::Length(n) => BodyReader::Length(n),
            Framing::Chunked => BodyReader::Chunked(Chunked::default()),
            Framing::UntilClose => BodyReader::UntilClose,
        }
    }

    /// The next piece of the body from `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BadResponse> {
        match self {
            BodyReader::Length(0) => Ok(Step::Done),
            BodyReader::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            BodyReader::Chunked(c) => c.step(buf),
            BodyReader::UntilClose if buf.is_empty() => Ok(Step::More),
            BodyReader::UntilClose => Ok(Step::Data(buf.split().freeze())),
        }
    }

    /// The connection closed: the end of an until-close body, else an error.
    pub fn at_eof(&self) -> Result<(), BadResponse> {
        match self {
            BodyReader::UntilClose | BodyReader::Length(0) => Ok(()),
            _ => Err(BadResponse(
                "upstream closed the connection before the body ended",
            )),
        }
    }

    /// Bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyReader::Length(n) => Some(*n),
            _ => None,
        }
    }
}

/// The chunked transfer coding's decoder; trailers are read and dropped
/// (nginx does not pass them on either).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    left: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailer,
    Done,
}

impl Chunked {
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BadResponse> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    if size == 0 {
                        self.state = ChunkState::Trailer;
                    } else {
                        self.left = size;
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = self.left.min(buf.len() as u64) as usize;
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BadResponse("upstream sent a chunk without its CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let room = MAX_HEAD.saturating_sub(self.trailer_bytes);
                    let Some(end) = find_crlf(buf, room)? else {
                        return Ok(Step::More);
                    };
                    buf.advance(end + 2);
                    self.trailer_bytes += end + 2;
                    if end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Step::Done),
            }
        }
    }
}

/// Where the first CRLF in `buf` starts; an error when no line ends within
/// `max` bytes, or a bare LF comes first.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, BadResponse> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(BadResponse("upstream sent a bare LF in a chunked body")),
        Some(i) if window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(BadResponse("upstream sent a bare LF in a chunked body")),
        None if buf.len() > max + 1 => Err(BadResponse("upstream sent too long a chunk line")),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, BadResponse> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .position(|&b| b == b';')
        .map_or(rest, |i| &rest[..i])
        .iter()
        .all(|&b| b == b' ' || b == b'\t');
    if digits == 0 || digits > 16 || !rest_ok {
        return Err(BadResponse("upstream sent an invalid chunk size"));
    }
    let s = std::str::from_utf8(&line[..digits]).unwrap_or("");
    u64::from_str_radix(s, 16).map_err(|_| BadResponse("upstream sent an invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<ResponseHead>, BadResponse> {
        parse_response(&mut BytesMut::from(raw), &method)
    }

    /// Decodes a whole body fed in pieces of `step` bytes.
    fn decode(framing: Framing, wire: &[u8], piece: usize) -> Result<Vec<u8>, BadResponse> {
        let mut r = BodyReader::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match r.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::Done => return Ok(out),
                Step::More if fed < wire.len() => {
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Step::More => {
                    r.at_eof()?;
                    return Ok(out);
                }
            }
        }
    }

    #[test]
    fn writes_the_head_it_is_given() {
        let mut out = Vec::new();
        let mut w = HeadWriter::new(&mut out, &Method::POST, "/p?q=1");
        w.header(b"host", b"up:8080");
        w.header(b"x-a", b"1");
        w.header_with(b"x-a", |o| write_u64(o, 2));
        w.finish(Some(1234));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: up:8080\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 1234\r\n\r\n"
        );
    }

    #[test]
    fn idempotent_methods_as_nginx() {
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
        assert!(idempotent(&Method::PUT));
        assert!(idempotent(&Method::GET));
    }

    #[test]
    fn heads_and_their_framing() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Y: a b\r\n\r\nabc",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.reusable);
        assert_eq!(h.headers["x-y"], "a b");
        // Hop-by-hop headers, and those Connection names, stay behind.
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nX-End-To-End: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end-to-end"]);
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        let cases = [
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                Method::HEAD,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Method::GET,
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\ncontent-length: 4\r\n\r\n",
                Method::GET,
                Framing::Length(4),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
                Method::GET,
                Framing::Chunked,
                false,
            ),
        ];
        for (raw, m, framing, reusable) in cases {
            let h = head(raw, m).unwrap().unwrap();
            assert_eq!((h.framing, h.reusable), (framing, reusable), "{raw}");
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\nrest",
        );
        let h = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(&buf[..], b"rest");
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        for cut in 0..raw.len() {
            let mut part = BytesMut::from(&raw[..cut]);
            assert!(
                parse_response(&mut part, &Method::GET).unwrap().is_none(),
                "{cut}"
            );
            assert_eq!(part.len(), cut, "a partial head is left in place");
        }
    }

    #[test]
    fn bad_heads_are_refused() {
        let bad = [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n".to_string(),
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n".into(),
            "HTTP/1.1 20 OK\r\n\r\n".into(),
            "SMTP ready\r\n\r\n".into(),
            format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-a: 1\r\n".repeat(101)),
            format!("HTTP/1.1 200 OK\r\nx-a: {}", "a".repeat(MAX_HEAD + 1)),
        ];
        for raw in bad {
            assert!(
                head(&raw, Method::GET).is_err(),
                "{}",
                &raw[..raw.len().min(80)]
            );
        }
    }

    #[test]
    fn bodies_in_any_pieces() {
        let chunked = b"3;ext=1\r\nabc\r\n10 \r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(
                decode(Framing::Chunked, chunked, piece).unwrap(),
                b"abc0123456789abcdef"
            );
            assert_eq!(
                decode(Framing::Length(5), b"hello!!", piece).unwrap(),
                b"hello"
            );
            assert_eq!(
                decode(Framing::UntilClose, b"all of it", piece).unwrap(),
                b"all of it"
            );
            assert_eq!(decode(Framing::Empty, b"", piece).unwrap(), b"");
        }
        // The bytes after a chunked body stay in the buffer.
        let mut r = BodyReader::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(
            r.step(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"a"))
        );
        assert_eq!(r.step(&mut buf).unwrap(), Step::Done);
        assert_eq!(&buf[..], b"NEXT");
    }

    /// Feeds `wire` in pieces of `piece` bytes as a response to `method`:
    /// head, then body to its end. Whatever the bytes, an answer or an
    /// error, never a panic, and never more held than was fed.
    fn feed(wire: &[u8], piece: usize, method: &Method) -> Result<(), BadResponse> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut more = |buf: &mut BytesMut| {
            let end = (fed + piece).min(wire.len());
            buf.extend_from_slice(&wire[fed..end]);
            let got = end > fed;
            fed = end;
            got
        };
        let head = loop {
            if let Some(h) = parse_response(&mut buf, method)? {
                break h;
            }
            if !more(&mut buf) {
                return Err(BadResponse("cut short"));
            }
        };
        let mut r = BodyReader::new(head.framing);
        let mut total = 0;
        loop {
            assert!(buf.len() <= wire.len());
            match r.step(&mut buf)? {
                Step::Data(d) => total += d.len(),
                Step::Done => break,
                Step::More if more(&mut buf) => {}
                Step::More => return r.at_eof(),
            }
        }
        assert!(total <= wire.len());
        Ok(())
    }

    #[test]
    fn any_corruption_is_an_answer_or_an_error_never_a_panic() {
        let valid: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x\r\n\r\n4;a=b\r\nwiki\r\n5\r\npedia\r\n0\r\nt: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nuntil close",
        ];
        let mut cases = 0;
        for v in valid {
            for piece in [1, 3, 1000] {
                assert_eq!(feed(v, piece, &Method::GET), Ok(()));
            }
            for i in 0..v.len() {
                let mut variants: Vec<Vec<u8>> =
                    [b'\r', b'\n', b':', b' ', b'0', b'f', b';', 0, 0xff]
                        .iter()
                        .map(|&b| {
                            let mut w = v.to_vec();
                            w[i] = b;
                            w
                        })
                        .collect();
                let mut cut = v.to_vec();
                cut.remove(i);
                variants.push(cut);
                let mut dup = v.to_vec();
                dup.extend_from_slice(&v[i..]);
                variants.push(dup);
                for w in &variants {
                    for piece in [1, 7, 1000] {
                        let _ = feed(w, piece, &Method::GET);
                        let _ = feed(w, piece, &Method::HEAD);
                        cases += 2;
                    }
                }
            }
        }
        assert!(cases > 10_000, "{cases}");
    }

    #[test]
    fn bad_bodies_are_refused() {
        let bad: [&[u8]; 7] = [
            b"x\r\n",
            b"\r\n",
            b"3\r\nabcX\r\n",
            b"3\nabc\r\n",
            b"11111111111111111\r\n",
            b"3 x\r\nabc\r\n",
            b"0\r\nx: 1\n\r\n",
        ];
        for wire in bad {
            assert!(
                decode(Framing::Chunked, wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode(Framing::Chunked, &long, 100).is_err());
        let trailers = format!("0\r\n{}", "x-t: 1\r\n".repeat(MAX_HEAD / 8 + 1));
        assert!(decode(Framing::Chunked, trailers.as_bytes(), 512).is_err());
        // Cut short.
        assert!(decode(Framing::Length(5), b"abc", 1).is_err());
        assert!(decode(Framing::Chunked, b"5\r\nabc", 1).is_err());
    }
}
