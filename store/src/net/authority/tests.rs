//! [`super::AuthorityFix`] on byte streams: what etcdctl's grpc-go sends,
//! split at every point, and what must pass through untouched.
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
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
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
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
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
