//! The Unix socket's `:authority` filter against a model. Structured inputs are requests a
//! client encodes with its own HPACK context (authorities valid or not, extra headers, header
//! blocks split into CONTINUATION frames, padding, DATA frames between requests), delivered in
//! arbitrary read sizes: decoding what the filter hands on with one HPACK context must give
//! exactly the client's headers with each invalid authority replaced, and every other frame
//! byte for byte. Raw inputs are arbitrary bytes after the preface: the filter must not panic
//! (fuzz/run's memory limit catches a runaway).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livekit_bridge::authority::{AuthorityFix, REPLACEMENT};
use tokio::io::AsyncReadExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Arbitrary, Debug)]
struct Request {
    authority: Vec<u8>,
    extra: Vec<(Vec<u8>, Vec<u8>)>,
    /// Header block split points (bytes per frame; 0 means the rest).
    splits: Vec<u8>,
    pad: Option<u8>,
    end_stream: bool,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Requests {
        requests: Vec<Request>,
        reads: Vec<u16>,
    },
    Raw {
        bytes: Vec<u8>,
        reads: Vec<u16>,
    },
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn filtered(input: &[u8], reads: &[u16]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async {
        let mut fix = AuthorityFix::new(input);
        let mut out = Vec::new();
        let mut sizes = reads.iter().cycle();
        loop {
            let size = sizes
                .next()
                .map_or(4096, |s| usize::from(*s).clamp(1, 20_000));
            let mut buf = vec![0u8; size];
            let n = fix.read(&mut buf).await.expect("reading an in-memory input cannot fail");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
}

fn check_requests(requests: &[Request], reads: &[u16]) {
    let mut client = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut expected = Vec::new();
    let mut data_frames = Vec::new();
    for (i, r) in requests.iter().take(16).enumerate() {
        let stream = 2 * i as u32 + 1;
        let mut headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":path".to_vec(), b"/x".to_vec()),
            (b":authority".to_vec(), r.authority.clone()),
        ];
        headers.extend(r.extra.iter().take(8).cloned());
        let block = client.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        if block.len() > 100_000 {
            return;
        }
        let mut rest = block.as_slice();
        let mut splits = r.splits.iter();
        let mut first = true;
        while first || !rest.is_empty() {
            let take = match splits.next() {
                Some(&n) if n > 0 => usize::from(n).min(rest.len()),
                _ => rest.len().min(16_384),
            };
            let (chunk, after) = rest.split_at(take);
            let last = if after.is_empty() { 0x4 } else { 0 };
            if first {
                let mut payload = Vec::new();
                let mut flags = last | if r.end_stream { 0x1 } else { 0 };
                if let Some(pad) = r.pad {
                    flags |= 0x8;
                    payload.push(pad);
                }
                payload.extend_from_slice(chunk);
                payload.extend(std::iter::repeat_n(0, usize::from(r.pad.unwrap_or(0))));
                frame(&mut input, 0x1, flags, stream, &payload);
            } else {
                frame(&mut input, 0x9, last, stream, chunk);
            }
            first = false;
            rest = after;
        }
        let data = &r.data[..r.data.len().min(16_384)];
        frame(&mut input, 0x0, 0, stream, data);
        data_frames.push(data.to_vec());
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = REPLACEMENT.to_vec();
            }
        }
        expected.push(headers);
    }
    let out = filtered(&input, reads);
    assert_eq!(&out[..PREFACE.len()], PREFACE);
    let mut rest = &out[PREFACE.len()..];
    let mut decoder = loona_hpack::Decoder::new();
    let mut block = Vec::new();
    let (mut blocks, mut datas) = (Vec::new(), Vec::new());
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(len <= 16_384, "a frame larger than every peer accepts");
        let (kind, flags) = (rest[3], rest[4]);
        let payload = &rest[9..9 + len];
        match kind {
            0x1 => {
                assert_eq!(flags & 0x8, 0, "padding is dropped");
                block = payload.to_vec();
            }
            0x9 => block.extend_from_slice(payload),
            _ => datas.push(payload.to_vec()),
        }
        if matches!(kind, 0x1 | 0x9) && flags & 0x4 != 0 {
            blocks.push(decoder.decode(&block).expect("the filter's HPACK decodes"));
        }
        rest = &rest[9 + len..];
    }
    assert_eq!(blocks, expected);
    assert_eq!(datas, data_frames);
}

fuzz_target!(|input: Input| match input {
    Input::Requests { requests, reads } => check_requests(&requests, &reads),
    Input::Raw { bytes, reads } => {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&bytes);
        let out = filtered(&input, &reads);
        assert!(out.starts_with(PREFACE));
    }
});
