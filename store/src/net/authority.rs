//! Rewrites a scheme-prefixed HTTP/2 `:authority` before tonic sees it.
//!
//! `etcdctl` 3.4 dials `--endpoints=http://127.0.0.1:2379` as the gRPC target
//! `passthrough:///http://127.0.0.1:2379`, so grpc-go sends the pseudo-header
//! `:authority: http://127.0.0.1:2379`. etcd's grpc-go server ignores it, but
//! h2 (under hyper/tonic) rejects it as a malformed authority and resets the
//! stream with PROTOCOL_ERROR, which breaks `etcdctl endpoint status`,
//! `endpoint hashkv`, `defrag` and friends. h2 offers no hook to relax that
//! check, so [`AuthorityFix`] sits between the TCP socket and tonic and edits
//! the client's request headers on the wire:
//!
//! - A connection that does not open with the HTTP/2 client preface (HTTP/1.1,
//!   e.g. a JSON gateway sharing the port) is passed through untouched.
//! - Otherwise the first client header block (HEADERS + CONTINUATION frames)
//!   is HPACK-decoded. If its `:authority` is valid, it and everything after
//!   it pass through untouched: a gRPC client sends one authority (its dial
//!   target) on every request of a connection, so well-behaved clients pay
//!   nothing per request.
//! - If it is invalid, every header block of that connection is decoded with a
//!   decoder that follows the client's dynamic table, an invalid `:authority`
//!   such as `http://host:port/path` becomes `host:port`, and the block is
//!   re-encoded without the dynamic table (static-table indices and literals
//!   "without indexing" only), so h2's own decoder never depends on what the
//!   client put in its table. Re-encoding every block, not only the broken
//!   ones, keeps the decoder here in step with the client.
//! - All other frames, and the whole server-to-client direction, pass through
//!   byte for byte.
//!
//! Malformed input never panics: it is reported as an `io::Error`, which
//! closes the connection (h2 would have closed it too). Buffering is bounded
//! by [`MAX_BLOCK`] per header block; other frames are streamed.
//!
//! HPACK comes from `loona-hpack`: the maintained successor of the original
//! `hpack` crate (which has been unreleased since 2016), small (two
//! dependencies, both already in our tree), and it returns errors rather than
//! panicking on bad input (`httlib-hpack`, the other candidate, indexes past
//! the end of a truncated integer). It has no "never indexed" flag in its decoded
//! output; such fields are forwarded as "without indexing", which only matters
//! to intermediaries that re-forward them, and h2 here does not. Its cost:
//! about 1 µs per block of indexed fields (release build), but it rebuilds its
//! Huffman tables for every Huffman-coded literal, about 15 µs each; a gRPC
//! client in steady state sends 0-2 of those per request (e.g. a changing
//! `grpc-timeout`). A faster Huffman decoder is the lever if that ever shows.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The SETTINGS_MAX_FRAME_SIZE our server advertises (hyper's default; the
/// client-port servers do not change it): re-encoded blocks are split into
/// frames no larger than this.
const MAX_FRAME: usize = 16_384;

/// The SETTINGS_HEADER_TABLE_SIZE our server advertises (the HTTP/2 default,
/// which h2 keeps): a client may not grow its dynamic table past it.
const HEADER_TABLE_SIZE: usize = 4096;

/// Largest encoded header block (all its frames together) we buffer.
pub const MAX_BLOCK: usize = 1 << 20;

/// Largest decoded header list (RFC 7541 sizes: name + value + 32 each), so
/// a small block of indexed fields cannot expand into gigabytes.
const MAX_DECODED: usize = 1 << 20;

/// HPACK static table (RFC 7541 appendix A); index = position + 1.
static STATIC_TABLE: &[(&[u8], &[u8])] = &[
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A connection whose client-to-server HTTP/2 header blocks are rewritten as
/// described in the [module docs](self). Writes go straight to the inner
/// stream.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from `inner` and not yet processed.
    input: BytesMut,
    /// Processed bytes not yet handed to the reader.
    output: BytesMut,
    /// `inner` reported end of stream.
    eof: bool,
}

enum Mode {
    /// Still reading the first bytes: is this the HTTP/2 preface?
    Detect,
    /// Not HTTP/2 with prior knowledge: forward everything as is.
    Passthrough,
    /// HTTP/2: frame by frame.
    Http2(Box<Frames>),
    /// Bad input was seen; every later read fails.
    Failed,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Detect,
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves whatever `input` allows into `output`.
    fn process(&mut self) -> io::Result<()> {
        if let Mode::Detect = self.mode {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] || (self.eof && n < PREFACE.len()) {
                self.mode = Mode::Passthrough;
                let all = self.input.len();
                move_bytes(&mut self.input, &mut self.output, all);
                return Ok(());
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            move_bytes(&mut self.input, &mut self.output, n);
            self.mode = Mode::Http2(Box::default());
        }
        match &mut self.mode {
            Mode::Http2(frames) => {
                frames.process(&mut self.input, &mut self.output)?;
                if frames.clean {
                    // Nothing more to look at: reads go straight through.
                    self.mode = Mode::Passthrough;
                    let all = self.input.len();
                    move_bytes(&mut self.input, &mut self.output, all);
                }
                Ok(())
            }
            Mode::Passthrough => {
                let all = self.input.len();
                move_bytes(&mut self.input, &mut self.output, all);
                Ok(())
            }
            Mode::Detect | Mode::Failed => Ok(()),
        }
    }
}

/// Moves the first `n` bytes of `from` to the end of `to`, without copying
/// when `to` is empty.
fn move_bytes(from: &mut BytesMut, to: &mut BytesMut, n: usize) {
    if n == 0 {
        return;
    }
    if to.is_empty() {
        *to = from.split_to(n);
    } else {
        to.extend_from_slice(&from[..n]);
        from.advance(n);
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 authority fix: {}", msg.into()),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.mode {
                Mode::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Mode::Failed => return Poll::Ready(Err(bad("connection already failed"))),
                Mode::Detect | Mode::Http2(_) => {}
            }
            if this.eof || buf.remaining() == 0 {
                // A frame cut short by EOF is dropped: h2 could not use it either.
                return Poll::Ready(Ok(()));
            }
            // Read through the caller's buffer, then take the bytes back out of
            // it: they are only handed out once processed.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let got = &buf.filled()[before..];
            if got.is_empty() {
                this.eof = true;
            } else {
                this.input.extend_from_slice(got);
            }
            buf.set_filled(before);
            if let Err(e) = this.process() {
                this.mode = Mode::Failed;
                this.input = BytesMut::new();
                this.output = BytesMut::new();
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Frame-level state of an HTTP/2 connection (client to server).
struct Frames {
    /// The first header block was fine: the rest of the connection passes
    /// through as it is (the caller switches to `Mode::Passthrough`).
    clean: bool,
    /// Whether the first header block has been seen.
    first_seen: bool,
    /// Follows the client's HPACK dynamic table.
    decoder: Decoder<'static>,
    /// Payload bytes of the current pass-through frame still to forward.
    passing: usize,
    /// A header block whose END_HEADERS has not arrived yet.
    block: Option<Block>,
}

struct Block {
    stream_id: u32,
    /// Flags of the HEADERS frame that opened the block.
    flags: u8,
    fragment: Vec<u8>,
    /// The block's frames as received (kept for the first block only, which
    /// is forwarded as it came if nothing in it needs fixing).
    raw: Vec<u8>,
}

impl Default for Frames {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Frames {
            clean: false,
            first_seen: false,
            decoder,
            passing: 0,
            block: None,
        }
    }
}

impl Frames {
    fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<()> {
        loop {
            if self.clean {
                return Ok(());
            }
            if self.passing > 0 {
                let n = self.passing.min(input.len());
                if n == 0 {
                    return Ok(());
                }
                move_bytes(input, output, n);
                self.passing -= n;
                continue;
            }
            if input.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            let kind = input[3];
            let flags = input[4];
            let stream_id = u32::from_be_bytes([input[5], input[6], input[7], input[8]]);
            if self.block.is_some() && kind != TYPE_CONTINUATION {
                return Err(bad("header block interrupted by another frame"));
            }
            if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                move_bytes(input, output, FRAME_HEADER_LEN);
                self.passing = len;
                continue;
            }
            if len > MAX_BLOCK {
                return Err(bad(format!("header frame of {len} bytes")));
            }
            if input.len() < FRAME_HEADER_LEN + len {
                input.reserve(FRAME_HEADER_LEN + len - input.len());
                return Ok(());
            }
            let frame = input.split_to(FRAME_HEADER_LEN + len);
            self.header_frame(kind, flags, stream_id, &frame, output)?;
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        frame: &[u8],
        output: &mut BytesMut,
    ) -> io::Result<()> {
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == TYPE_HEADERS {
            let fragment = headers_fragment(flags, payload)?;
            self.block = Some(Block {
                stream_id,
                flags,
                fragment: fragment.to_vec(),
                raw: Vec::new(),
            });
        } else {
            let Some(block) = self.block.as_mut() else {
                return Err(bad("CONTINUATION without HEADERS"));
            };
            if block.stream_id != stream_id {
                return Err(bad("CONTINUATION on another stream"));
            }
            if block.fragment.len() + payload.len() > MAX_BLOCK {
                return Err(bad("header block too large"));
            }
            block.fragment.extend_from_slice(payload);
        }
        if !self.first_seen {
            if let Some(block) = self.block.as_mut() {
                block.raw.extend_from_slice(frame);
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block, output)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete header block and writes it out re-encoded.
    fn finish(&mut self, block: Block, output: &mut BytesMut) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| bad(format!("HPACK: {e}")))?;
        if size > MAX_DECODED {
            return Err(bad("decoded header list too large"));
        }
        if !std::mem::replace(&mut self.first_seen, true)
            && fields
                .iter()
                .all(|(n, v)| n.as_slice() != b":authority" || fix_authority(v).is_none())
        {
            self.clean = true;
            output.extend_from_slice(&block.raw);
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2 + 64);
        for (name, value) in &fields {
            let fixed = if name.as_slice() == b":authority" {
                fix_authority(value)
            } else {
                None
            };
            if let Some(fixed) = &fixed {
                tracing::debug!(
                    "rewrote :authority {:?} to {:?}",
                    String::from_utf8_lossy(value),
                    String::from_utf8_lossy(fixed)
                );
            }
            encode_field(name, fixed.as_deref().unwrap_or(value), &mut encoded);
        }
        write_block(output, block.stream_id, block.flags, &encoded);
        Ok(())
    }
}

/// The header block fragment of a HEADERS frame payload, without padding and
/// priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = *payload
            .first()
            .ok_or_else(|| bad("PADDED HEADERS without pad length"))? as usize;
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if start + pad > payload.len() {
        return Err(bad("HEADERS padding exceeds the frame"));
    }
    Ok(&payload[start..payload.len() - pad])
}

/// `host:port` for an `:authority` that h2 would reject but that is a URL
/// (`http://host:port/...`); `None` if it is fine as is or cannot be saved.
fn fix_authority(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let rest = strip_prefix_ignore_case(value, b"http://")
        .or_else(|| strip_prefix_ignore_case(value, b"https://"))?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    http::uri::Authority::try_from(host).ok()?;
    Some(host.to_vec())
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Encodes one field without touching the dynamic table: a static-table
/// index if the whole field is there, else a literal "without indexing"
/// (with a static name index when the name is there).
fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut name_index = None;
    for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
        if n == name {
            if v == value {
                put_integer(i + 1, 7, 0x80, out);
                return;
            }
            name_index.get_or_insert(i + 1);
        }
    }
    match name_index {
        Some(index) => put_integer(index, 4, 0x00, out),
        None => {
            out.push(0x00);
            put_string(name, out);
        }
    }
    put_string(value, out);
}

fn put_string(s: &[u8], out: &mut Vec<u8>) {
    put_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

fn put_integer(value: usize, prefix: u8, leading: u8, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = encode_integer_into(value, prefix, leading, out);
}

/// Writes `block` as one HEADERS frame, plus CONTINUATION frames if it does
/// not fit in [`MAX_FRAME`]. The HEADERS frame keeps the original flags
/// (END_STREAM among them) except PADDED and PRIORITY, whose fields are gone.
fn write_block(out: &mut BytesMut, stream_id: u32, flags: u8, block: &[u8]) {
    let frames = block.len().div_ceil(MAX_FRAME).max(1);
    out.reserve(block.len() + frames * FRAME_HEADER_LEN);
    for i in 0..frames {
        let chunk = &block[i * MAX_FRAME..((i + 1) * MAX_FRAME).min(block.len())];
        let (kind, mut f) = if i == 0 {
            (
                TYPE_HEADERS,
                flags & !(FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS),
            )
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if i + 1 == frames {
            f |= FLAG_END_HEADERS;
        }
        out.put_uint(chunk.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(f);
        out.put_u32(stream_id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests;
