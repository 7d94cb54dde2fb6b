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
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use tokio::io::AsyncReadExt;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream_id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn encode(enc: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
        enc.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// Literal with incremental indexing, name = static index 1 (`:authority`).
    fn indexed_authority(value: &str) -> Vec<u8> {
        let mut b = vec![0x41, value.len() as u8];
        b.extend_from_slice(value.as_bytes());
        b
    }

    /// Yields one chunk per read (the rest of it on the next read when the
    /// caller's buffer is smaller), returning Pending before each chunk.
    struct Chunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        pending: bool,
    }

    impl Chunks {
        fn new(chunks: Vec<Vec<u8>>) -> Self {
            Chunks {
                chunks: chunks.into(),
                pending: false,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.pending {
                self.pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = false;
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn run(chunks: Vec<Vec<u8>>, read_size: usize) -> io::Result<Vec<u8>> {
        let mut fix = AuthorityFix::new(Chunks::new(chunks));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = fix.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    async fn run_whole(input: &[u8]) -> io::Result<Vec<u8>> {
        run(vec![input.to_vec()], 64 * 1024).await
    }

    enum Item {
        /// A non-header frame, byte for byte.
        Raw(Vec<u8>),
        /// A header block: stream, HEADERS flags, decoded fields, frame count.
        Block(u32, u8, Fields, usize),
    }

    /// Splits server-bound output into frames, decoding every header block
    /// with a *fresh* decoder: proof that it does not use the dynamic table.
    fn parse(mut data: &[u8]) -> Vec<Item> {
        assert!(data.starts_with(PREFACE));
        data = &data[PREFACE.len()..];
        let mut items = Vec::new();
        let mut open: Option<(u32, u8, Vec<u8>, usize)> = None;
        while !data.is_empty() {
            let len = u32::from_be_bytes([0, data[0], data[1], data[2]]) as usize;
            let (kind, flags) = (data[3], data[4]);
            let sid = u32::from_be_bytes([data[5], data[6], data[7], data[8]]);
            let (whole, rest) = data.split_at(FRAME_HEADER_LEN + len);
            data = rest;
            let payload = &whole[FRAME_HEADER_LEN..];
            match kind {
                TYPE_HEADERS => {
                    assert!(open.is_none());
                    assert!(len <= MAX_FRAME);
                    assert_eq!(flags & (FLAG_PADDED | FLAG_PRIORITY), 0);
                    open = Some((sid, flags, payload.to_vec(), 1));
                }
                TYPE_CONTINUATION => {
                    let o = open.as_mut().expect("CONTINUATION after HEADERS");
                    assert!(len <= MAX_FRAME);
                    assert_eq!(o.0, sid);
                    o.2.extend_from_slice(payload);
                    o.3 += 1;
                }
                _ => {
                    assert!(open.is_none());
                    items.push(Item::Raw(whole.to_vec()));
                }
            }
            if matches!(kind, TYPE_HEADERS | TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
                let (sid, flags, block, n) = open.take().unwrap();
                let decoded = Decoder::new().decode(&block).expect("output block decodes");
                items.push(Item::Block(sid, flags & !FLAG_END_HEADERS, decoded, n));
            }
        }
        assert!(open.is_none());
        items
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])
    }

    /// A client conversation plus what the server must see for it.
    fn conversation() -> (Vec<u8>, Vec<Item>) {
        let mut enc = Encoder::new();
        let req = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ];
        // Block 1 puts `:authority: http://x:1` into the dynamic table...
        let mut block1 = encode(&mut enc, &req);
        block1.extend_from_slice(&indexed_authority("http://x:1"));
        // ...block 2 refers to it by index (62: the newest entry).
        let mut block2 = vec![0x80 | 62];
        block2.extend_from_slice(&encode(
            &mut Encoder::new(),
            &[(":method", "POST"), (":path", "/p"), ("te", "trailers")],
        ));
        let data = frame(0x0, 0x1, 1, b"\0\0\0\0\x05hello");

        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block1));
        input.extend(&data);
        // Block 2: PADDED + PRIORITY HEADERS with END_STREAM, then two
        // CONTINUATIONs.
        let (a, rest) = block2.split_at(2);
        let (b, c) = rest.split_at(3);
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 1, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | 0x1,
            3,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 3, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, c));
        // RFC 7541 C.4.1 and C.4.2: Huffman strings, a valid authority
        // (`www.example.com`, indexed) that must stay as it is.
        let c41 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let c42 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | 0x1, 5, &c41));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | 0x1, 7, &c42));
        let ping = frame(0x6, 0, 0, b"12345678");
        input.extend(&ping);

        let mut want1 = fields(&req);
        want1.push((b":authority".to_vec(), b"x:1".to_vec()));
        let want2 = fields(&[
            (":authority", "x:1"),
            (":method", "POST"),
            (":path", "/p"),
            ("te", "trailers"),
        ]);
        let get = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let mut want41 = fields(&get);
        want41.push((b":authority".to_vec(), b"www.example.com".to_vec()));
        let mut want42 = want41.clone();
        want42.push((b"cache-control".to_vec(), b"no-cache".to_vec()));
        let expected = vec![
            Item::Raw(settings()),
            Item::Block(1, 0, want1, 1),
            Item::Raw(data),
            Item::Block(3, 0x1, want2, 1),
            Item::Block(5, 0x1, want41, 1),
            Item::Block(7, 0x1, want42, 1),
            Item::Raw(ping),
        ];
        (input, expected)
    }

    fn check(out: &[u8], expected: &[Item]) {
        let got = parse(out);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            match (g, e) {
                (Item::Raw(g), Item::Raw(e)) => assert_eq!(g, e),
                (Item::Block(gs, gf, gh, gn), Item::Block(es, ef, eh, en)) => {
                    assert_eq!((gs, gf, gn), (es, ef, en));
                    assert_eq!(gh, eh);
                }
                _ => panic!("frame kinds differ"),
            }
        }
    }

    #[tokio::test]
    async fn rewrites_authority_in_every_block() {
        let (input, expected) = conversation();
        let out = run_whole(&input).await.unwrap();
        check(&out, &expected);
    }

    #[tokio::test]
    async fn partial_reads_at_every_boundary() {
        let (input, expected) = conversation();
        let whole = run_whole(&input).await.unwrap();
        check(&whole, &expected);
        for i in 1..input.len() {
            let chunks = vec![input[..i].to_vec(), input[i..].to_vec()];
            assert_eq!(run(chunks, 64 * 1024).await.unwrap(), whole, "split at {i}");
        }
        let bytes = input.iter().map(|&b| vec![b]).collect();
        assert_eq!(run(bytes, 64 * 1024).await.unwrap(), whole);
        // A reader whose buffer is smaller than the frames.
        assert_eq!(run(vec![input.clone()], 7).await.unwrap(), whole);
        assert_eq!(run(vec![input], 1).await.unwrap(), whole);
    }

    #[tokio::test]
    async fn large_frames_stream_and_large_blocks_split() {
        let big = "v".repeat(40_000);
        let block = encode(
            &mut Encoder::new(),
            &[(":authority", "https://h:2/x"), ("x-big", &big)],
        );
        let data = frame(0x0, 0, 1, &vec![7u8; 100_000]);
        let mut input = PREFACE.to_vec();
        input.extend(&data);
        // One 40 KiB HEADERS frame (a client may send that after raising
        // the frame size; it is the re-encoding that must respect ours).
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | 0x1, 1, &block));
        let expected = vec![
            Item::Raw(data),
            Item::Block(1, 0x1, fields(&[(":authority", "h:2"), ("x-big", &big)]), 3),
        ];
        check(&run_whole(&input).await.unwrap(), &expected);
        let chunks = input.chunks(1000).map(<[u8]>::to_vec).collect();
        check(&run(chunks, 4096).await.unwrap(), &expected);
    }

    #[tokio::test]
    async fn a_valid_first_authority_makes_the_connection_pass_through() {
        // RFC 7541 C.4.1 (authority `www.example.com`), then blocks that are
        // no longer looked at: h2 judges them, not this layer.
        let c41 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(TYPE_HEADERS, 0x1, 1, &c41[..5]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &c41[5..]));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &indexed_authority("http://x:1"),
        ));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            5,
            &[0xff, 0xff, 0xff],
        ));
        input.extend(frame(0x0, 0, 5, b"data"));
        assert_eq!(run_whole(&input).await.unwrap(), input);
        let bytes = input.iter().map(|&b| vec![b]).collect();
        assert_eq!(run(bytes, 5).await.unwrap(), input);
    }

    #[tokio::test]
    async fn non_http2_passes_through() {
        for input in [
            &b"GET /v3/kv/range HTTP/1.1\r\nHost: http://x:1\r\n\r\n{}"[..],
            &b"PRI * HTTP/1.1\r\n\r\n"[..],
            &b"PR"[..],
            &b""[..],
        ] {
            assert_eq!(run_whole(input).await.unwrap(), input);
            for i in 1..input.len() {
                let chunks = vec![input[..i].to_vec(), input[i..].to_vec()];
                assert_eq!(run(chunks, 3).await.unwrap(), input);
            }
        }
    }

    #[tokio::test]
    async fn dynamic_table_size_updates_are_honoured() {
        let mut input = PREFACE.to_vec();
        let mut b1 = vec![0x82, 0x86, 0x84];
        b1.extend(indexed_authority("http://x:1"));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        // Shrink the table to 0 (evicting the entry), back to 4096, then
        // refer to index 62, which no longer exists.
        let b2 = [0x20, 0x3f, 0xe1, 0x1f, 0x82, 0xbe];
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        assert!(run_whole(&input).await.is_err());
        // Without the size updates, index 62 still resolves.
        let mut ok = PREFACE.to_vec();
        ok.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        ok.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2[4..]));
        let items = parse(&run_whole(&ok).await.unwrap());
        let Item::Block(3, 0, f, 1) = &items[1] else {
            panic!("second block missing")
        };
        assert_eq!(f, &fields(&[(":method", "GET"), (":authority", "x:1")]));
        // Growing past the advertised SETTINGS_HEADER_TABLE_SIZE is an error.
        let mut too_big = PREFACE.to_vec();
        too_big.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x3f, 0xe2, 0x1f, 0x82],
        ));
        assert!(run_whole(&too_big).await.is_err());
    }

    #[tokio::test]
    async fn malformed_input_is_an_error() {
        let h = |flags, sid, p: &[u8]| frame(TYPE_HEADERS, flags, sid, p);
        let cases: Vec<Vec<u8>> = vec![
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            [h(0, 1, &[0x82]), frame(0x0, 0, 1, b"x")].concat(),
            [
                h(0, 1, &[0x82]),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x82]),
            ]
            .concat(),
            h(FLAG_PADDED | FLAG_END_HEADERS, 1, &[5, 0x82]),
            h(FLAG_PADDED | FLAG_END_HEADERS, 1, &[]),
            h(FLAG_PRIORITY | FLAG_END_HEADERS, 1, &[0, 0, 0]),
            h(FLAG_END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            h(FLAG_END_HEADERS, 1, &[0x00, 0x85, 0xff]),
            frame(TYPE_HEADERS, 0, 1, &vec![0; MAX_BLOCK + 1]),
        ];
        for case in cases {
            let mut input = PREFACE.to_vec();
            input.extend(case);
            let mut fix = AuthorityFix::new(Chunks::new(vec![input]));
            let mut out = Vec::new();
            assert!(fix.read_to_end(&mut out).await.is_err());
            assert!(fix.read(&mut [0u8; 16]).await.is_err(), "stays failed");
        }
    }

    #[tokio::test]
    async fn random_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut input = PREFACE.to_vec();
            for _ in 0..(next() % 4) {
                let len = (next() % 40) as usize;
                let kind = [TYPE_HEADERS, TYPE_CONTINUATION, 0, 4][(next() % 4) as usize];
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let mut f = frame(kind, next() as u8, (next() % 3) as u32, &payload);
                if next() % 8 == 0 {
                    f.truncate((next() as usize) % f.len());
                }
                input.extend(f);
            }
            let _ = run(vec![input], 16).await;
        }
    }

    #[test]
    fn fix_authority_cases() {
        let fix = |v: &str| fix_authority(v.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(
            fix("http://127.0.0.1:17379").as_deref(),
            Some("127.0.0.1:17379")
        );
        assert_eq!(fix("HTTPS://h:1/p?q#f").as_deref(), Some("h:1"));
        assert_eq!(fix("http://[::1]:2379").as_deref(), Some("[::1]:2379"));
        assert_eq!(fix("127.0.0.1:2379"), None);
        assert_eq!(fix("localhost"), None);
        assert_eq!(fix("unix:///tmp/sock"), None);
        assert_eq!(fix("http://"), None);
        assert_eq!(fix("http://a b:1"), None);
    }
}
