//! Letting every stock gRPC client in over the Unix socket: a client-to-server HTTP/2 filter
//! that replaces an `:authority` the HTTP/2 layer would refuse with `localhost`.
//!
//! Python `grpcio` (1.57 and later), grpc-java, grpc-swift and grpcurl send the socket path
//! (`/run/bridge.sock`) as `:authority` when they dial `unix:...`. That is not a valid URI
//! authority, and h2, under tonic, answers every such request with
//! `RST_STREAM(PROTOCOL_ERROR)` (the client sees INTERNAL) and has no option to accept it.
//! The authority means nothing on a Unix socket, so [`AuthorityFix`] rewrites it before h2
//! reads it: the client is unchanged and h2 is unchanged.
//!
//! ## How
//! The filter sits on the read side of the connection only (what h2 writes is untouched) and
//! understands just enough HTTP/2 (RFC 9113) to find header blocks:
//! - the 24-byte client preface and every frame other than HEADERS and CONTINUATION pass
//!   through verbatim, without being buffered whole;
//! - a header block (a HEADERS frame and its CONTINUATION frames) is collected, decoded with
//!   the client's HPACK context, `:authority` replaced when [`http::uri::Authority`] rejects
//!   it, and re-encoded with this filter's own HPACK context, which is the one h2's decoder
//!   mirrors from then on. Every block is re-encoded, not only the rewritten ones, so the two
//!   dynamic tables on either side of the filter never disagree. Padding is dropped; END_STREAM
//!   and the priority fields are kept; the re-encoded block is cut into frames of at most
//!   16,384 bytes, the size every HTTP/2 peer accepts.
//! - Anything the filter cannot make sense of (a block that is not valid HPACK, a CONTINUATION
//!   that does not follow its HEADERS, a block over [`MAX_BLOCK`] or decoding to more than
//!   [`MAX_DECODED`]) is handed to h2 exactly as
//!   received, and the rest of the connection with it: h2 then ends the connection with the
//!   error HTTP/2 prescribes, as it would without the filter.
//!
//! The client's HPACK table may be at most 4,096 bytes, h2's default, which tonic keeps. The
//! cost is one HPACK decode and encode per request's headers (a few microseconds); audio
//! travels in DATA frames, which are only copied.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What replaces an `:authority` h2 would reject.
pub const REPLACEMENT: &[u8] = b"localhost";
/// The largest header block (compressed, all frames) the filter re-encodes. gRPC requests
/// carry a few hundred bytes of headers.
pub const MAX_BLOCK: usize = 256 * 1024;
/// The largest decoded header list the filter rebuilds; h2 applies its own limit to a larger
/// one, handed to it as received.
pub const MAX_DECODED: usize = 1024 * 1024;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// h2's HPACK table size (SETTINGS_HEADER_TABLE_SIZE, not changed by tonic), which bounds the
/// client's.
const TABLE_SIZE: usize = 4096;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A header block being collected: its HEADERS frame's stream, flags and priority fields, the
/// block fragments so far, and the frames as received (handed on as they are if the block
/// cannot be rewritten).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
    raw: BytesMut,
}

/// A connection whose client-to-server header blocks carry only authorities h2 accepts.
pub struct AuthorityFix<IO> {
    io: IO,
    /// Bytes read from the client and not yet handed to h2.
    input: BytesMut,
    /// Re-encoded frames (or raw frames given up on) waiting for h2.
    output: BytesMut,
    /// How many of the next bytes of `input` pass through as they are.
    verbatim: usize,
    block: Option<Block>,
    /// The filter gave up: everything else passes through.
    given_up: bool,
    eof: bool,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            io,
            input: BytesMut::with_capacity(MAX_FRAME),
            output: BytesMut::new(),
            verbatim: PREFACE_LEN,
            block: None,
            given_up: false,
            eof: false,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }

    /// Parses what `input` holds as far as it can. Returns false when it needs more bytes.
    fn step(&mut self) -> bool {
        if self.verbatim > 0 {
            return false;
        }
        if self.given_up {
            self.verbatim = usize::MAX;
            return true;
        }
        if self.input.len() < FRAME_HEADER_LEN {
            return false;
        }
        let h = &self.input[..FRAME_HEADER_LEN];
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let flags = h[4];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let collecting = self.block.as_ref().map(|b| b.stream);
        let in_block = match (kind, collecting) {
            (HEADERS, None) => true,
            (CONTINUATION, Some(s)) if s == stream => true,
            (_, None) => false,
            // Anything else between a HEADERS frame and its last CONTINUATION is a protocol
            // error for h2 to report.
            (_, Some(_)) => return self.give_up(),
        };
        if !in_block {
            self.verbatim = FRAME_HEADER_LEN + len;
            return true;
        }
        let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
        if collected + FRAME_HEADER_LEN + len > MAX_BLOCK {
            return self.give_up();
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            self.input
                .reserve(FRAME_HEADER_LEN + len - self.input.len());
            return false;
        }
        let frame = self.input.split_to(FRAME_HEADER_LEN + len);
        let payload = &frame[FRAME_HEADER_LEN..];
        let block = match self.block.as_mut() {
            Some(block) => {
                block.fragments.extend_from_slice(payload);
                block
            }
            None => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    self.block = Some(Block::raw(frame));
                    return self.give_up();
                };
                self.block.insert(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragments: fragment.to_vec(),
                    raw: BytesMut::new(),
                })
            }
        };
        block.raw.extend_from_slice(&frame);
        if flags & END_HEADERS != 0 {
            self.finish_block();
        }
        true
    }

    /// Re-encodes the collected block into `output`, or gives up on it.
    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        // Decoded fields are counted as RFC 7541 sizes them; past MAX_DECODED (an HPACK bomb:
        // small references to large table entries) nothing more is copied.
        let mut headers = Vec::new();
        let mut size = 0;
        let decoded = self
            .decoder
            .decode_with_cb(&block.fragments, |name, value| {
                size += name.len() + value.len() + 32;
                if size <= MAX_DECODED {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            });
        if let Err(e) = decoded {
            tracing::debug!(error = ?e, "a client's header block is not valid HPACK; passing it to h2 as it is");
        }
        if decoded.is_err() || size > MAX_DECODED {
            self.block = Some(block);
            self.give_up();
            return;
        }
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "replacing a client's :authority that is not a URI authority (a Unix socket path)"
                );
                *value = REPLACEMENT.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(&mut self.output, &block, &encoded);
    }

    /// Hands on whatever was collected as received, then everything after it. Returns true
    /// (progress was made).
    fn give_up(&mut self) -> bool {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.given_up = true;
        self.verbatim = usize::MAX;
        true
    }
}

impl Block {
    fn raw(frame: BytesMut) -> Self {
        Self {
            stream: 0,
            end_stream: false,
            priority: None,
            fragments: Vec::new(),
            raw: frame,
        }
    }
}

/// A HEADERS frame's priority fields and block fragment, or None if its padding does not fit.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&p, r) = rest.split_first()?;
        pad = usize::from(p);
        rest = r;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, r) = rest.split_first_chunk::<5>()?;
        priority = Some(*p);
        rest = r;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// Writes `encoded` as one HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(out: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let priority_len = block.priority.map_or(0, |_| 5);
    let first = encoded.len().min(MAX_FRAME - priority_len);
    let (head, mut rest) = encoded.split_at(first);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(out, priority_len + head.len(), HEADERS, flags, block.stream);
    if let Some(p) = block.priority {
        out.put_slice(&p);
    }
    out.put_slice(head);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.put_slice(chunk);
        rest = after;
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_FRAME, so it fits the 24-bit length field.
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.verbatim > 0 && !this.input.is_empty() {
                let n = this.verbatim.min(this.input.len()).min(buf.remaining());
                buf.put_slice(&this.input[..n]);
                this.input.advance(n);
                if this.verbatim != usize::MAX {
                    this.verbatim -= n;
                }
                return Poll::Ready(Ok(()));
            }
            if this.step() {
                continue;
            }
            if this.eof {
                // A truncated frame: h2 gets what there was, then the end.
                this.give_up();
                if this.input.is_empty() && this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.input.capacity() - this.input.len() < 4096 {
                this.input.reserve(MAX_FRAME);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.input) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    type Frame = (u8, u8, u32, Vec<u8>);

    fn request(authority: &[u8]) -> Headers {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/mentra.livekit.bridge.LiveKitBridge/HealthCheck".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"te".to_vec(), b"trailers".to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (
                b"grpc-accept-encoding".to_vec(),
                b"identity,deflate,gzip".to_vec(),
            ),
        ]
    }

    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut b = BytesMut::new();
        frame_header(&mut b, payload.len(), kind, flags, stream);
        out.extend_from_slice(&b);
        out.extend_from_slice(payload);
    }

    /// Splits a byte stream into (kind, flags, stream, payload) frames after the preface.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut rest = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    /// What h2 would see: the filtered bytes, read in reads of `chunk` bytes from a client
    /// that writes in pieces of `write_chunk` bytes.
    async fn filtered(input: Vec<u8>, write_chunk: usize, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(write_chunk) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        out
    }

    /// Decodes the header blocks in `frames` with one HPACK context, as h2 does.
    fn decoded_blocks(frames: &[Frame]) -> Vec<(u32, Headers)> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut current: Option<(u32, Vec<u8>)> = None;
        for (kind, flags, stream, payload) in frames {
            match *kind {
                HEADERS => {
                    let (_, fragment) = headers_payload(*flags, payload).unwrap();
                    current = Some((*stream, fragment.to_vec()));
                }
                CONTINUATION => current.as_mut().unwrap().1.extend_from_slice(payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                let (stream, block) = current.take().unwrap();
                blocks.push((stream, decoder.decode(&block).unwrap()));
            }
        }
        blocks
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        frame(&mut input, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]); // SETTINGS
        // Stream 1: padded, with priority, split into HEADERS + 2 CONTINUATIONs.
        let req = request(b"/run/bridge.sock");
        let block = client.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(7);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        frame(&mut input, HEADERS, PADDED | PRIORITY, 1, &payload);
        frame(&mut input, CONTINUATION, 0, 1, b);
        frame(&mut input, CONTINUATION, END_HEADERS, 1, c);
        let data = vec![7u8; 40_000];
        frame(&mut input, 0x0, 0, 1, &data[..MAX_FRAME]);
        // Stream 3 reuses the client's dynamic table; its authority is valid and stays.
        let req3 = request(b"localhost:50051");
        let block3 = client.encode(req3.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 3, &block3);
        // Stream 5 repeats stream 1's request, now all indexed in the client's table.
        let block5 = client.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        frame(&mut input, HEADERS, END_HEADERS, 5, &block5);
        frame(&mut input, 0x0, 0x1, 1, &data[MAX_FRAME..2 * MAX_FRAME]);

        for (write_chunk, read_chunk) in [(1, 1), (7, 3), (100_000, 16_384), (1000, 9)] {
            let out = filtered(input.clone(), write_chunk, read_chunk).await;
            let frames = frames(&out);
            let kinds: Vec<_> = frames.iter().map(|f| (f.0, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (4, 0),
                    (HEADERS, 1),
                    (0, 1),
                    (HEADERS, 3),
                    (HEADERS, 5),
                    (0, 1)
                ]
            );
            assert_eq!(frames[0].3, [0, 3, 0, 0, 0, 100]);
            assert_eq!(
                frames[1].1,
                PRIORITY | END_HEADERS,
                "padding dropped, priority kept"
            );
            assert_eq!(&frames[1].3[..5], &[0, 0, 0, 0, 15]);
            assert_eq!(frames[3].1, END_HEADERS | END_STREAM);
            assert_eq!(frames[2].3, &data[..MAX_FRAME]);
            assert_eq!(frames[5].3, &data[MAX_FRAME..2 * MAX_FRAME]);
            let blocks = decoded_blocks(&frames);
            assert_eq!(blocks[0], (1, request(REPLACEMENT)));
            assert_eq!(blocks[1], (3, req3.clone()));
            assert_eq!(blocks[2], (5, request(REPLACEMENT)));
        }
    }

    #[tokio::test]
    async fn a_large_block_is_cut_into_frames_h2_accepts() {
        let mut client = loona_hpack::Encoder::new();
        let mut req = request(b"/run/bridge.sock");
        req.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = client.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut input = PREFACE.to_vec();
        let mut pieces = block.chunks(MAX_FRAME).peekable();
        let first = pieces.next().unwrap();
        let flags = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        frame(&mut input, HEADERS, flags, 1, first);
        while let Some(p) = pieces.next() {
            let flags = if pieces.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            frame(&mut input, CONTINUATION, flags, 1, p);
        }
        let frames = frames(&filtered(input, 4096, 4096).await);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(
            decoded_blocks(&frames),
            [(
                1,
                request(REPLACEMENT)
                    .into_iter()
                    .chain([(b"x-big".to_vec(), vec![b'a'; 40_000])])
                    .collect()
            )]
        );
    }

    #[tokio::test]
    async fn what_cannot_be_parsed_reaches_h2_as_it_was_sent() {
        // Not HPACK (an index past both tables), then a frame interleaved in a block, then a
        // truncated frame: each reaches h2 byte for byte, and so does everything after it.
        let mut bad_hpack = PREFACE.to_vec();
        frame(&mut bad_hpack, HEADERS, END_HEADERS, 1, &[0xff, 0x7f]);
        frame(&mut bad_hpack, 0x0, 0, 1, b"after");
        let mut interleaved = PREFACE.to_vec();
        frame(&mut interleaved, HEADERS, 0, 1, &[0x82]);
        frame(&mut interleaved, 0x0, 0, 1, b"data");
        frame(&mut interleaved, CONTINUATION, END_HEADERS, 1, &[0x86]);
        let mut truncated = PREFACE.to_vec();
        frame(&mut truncated, HEADERS, END_HEADERS, 1, &[0x82, 0x86, 0x84]);
        truncated.truncate(truncated.len() - 1);
        let mut bad_padding = PREFACE.to_vec();
        frame(
            &mut bad_padding,
            HEADERS,
            END_HEADERS | PADDED,
            1,
            &[9, 0x82],
        );
        for input in [bad_hpack, interleaved, truncated, bad_padding] {
            assert_eq!(filtered(input.clone(), 5, 3).await, input);
        }
    }
}
