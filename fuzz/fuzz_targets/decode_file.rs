//! The whole decode path (sniff, probe, header checks, decode, resample, 10 ms frames) on
//! audio files whose header fields are chosen by the fuzzer: WAV built field by field, and real
//! MP3, FLAC and Ogg Vorbis files (made by sox and lame, `fuzz/seeds/`) with bytes of their
//! stream headers replaced (the Ogg page's CRC recomputed, so the change is not just dropped).
//! `fuzz/run` gives it libFuzzer's `-malloc_limit_mb` and `-rss_limit_mb`: any allocation sized
//! from a lying header is a finding.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livekit_bridge::playback::decode::{DecodeJob, Decoded, decode_contained};

/// Frames decoded before the target stops (5 s of audio): enough to pass every header.
const MAX_FRAMES: u32 = 500;

#[derive(Arbitrary, Debug)]
enum Input {
    Wav(Wav),
    /// The MP3's first 512 bytes: its Xing/LAME frame and the first frames' headers.
    Mp3(Vec<(u16, u8)>),
    /// FLAC's STREAMINFO block: block sizes, frame sizes, rate, channels, bits, total samples.
    Flac(Vec<(u16, u8)>),
    /// The Vorbis identification header in the first Ogg page: channels, rate, bitrates,
    /// block sizes.
    Ogg(Vec<(u16, u8)>),
}

/// A WAV file's fmt and data chunk fields, every one as the file would declare it.
#[derive(Arbitrary, Debug)]
struct Wav {
    format: u16,
    channels: u16,
    rate: u32,
    byte_rate: u32,
    block_align: u16,
    bits: u16,
    data_len: u32,
    data: Vec<u8>,
}

fn wav(f: &Wav) -> Vec<u8> {
    let mut w = Vec::with_capacity(44 + f.data.len());
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + f.data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&f.format.to_le_bytes());
    w.extend_from_slice(&f.channels.to_le_bytes());
    w.extend_from_slice(&f.rate.to_le_bytes());
    w.extend_from_slice(&f.byte_rate.to_le_bytes());
    w.extend_from_slice(&f.block_align.to_le_bytes());
    w.extend_from_slice(&f.bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&f.data_len.to_le_bytes());
    w.extend_from_slice(&f.data);
    w
}

/// `seed` with `patches` applied inside `region` (offsets wrap into it).
fn patched(seed: &[u8], region: std::ops::Range<usize>, patches: &[(u16, u8)]) -> Vec<u8> {
    let mut file = seed.to_vec();
    for &(at, value) in patches.iter().take(16) {
        let at = region.start + usize::from(at) % region.len();
        file[at] = value;
    }
    file
}

/// Ogg's page checksum: CRC-32, polynomial 0x04c11db7, not reflected, initial value 0.
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in page {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn file(input: Input) -> (Vec<u8>, &'static str) {
    match input {
        Input::Wav(f) => (wav(&f), "wav"),
        Input::Mp3(p) => (
            patched(include_bytes!("../seeds/tone.mp3"), 0..512, &p),
            "mp3",
        ),
        Input::Flac(p) => (
            patched(include_bytes!("../seeds/tone.flac"), 8..42, &p),
            "flac",
        ),
        Input::Ogg(p) => {
            // The first page: 27-byte header, one lacing value, the 30-byte identification
            // packet; its CRC is bytes 22..26, computed with those bytes zero.
            let mut ogg = patched(include_bytes!("../seeds/tone.ogg"), 35..58, &p);
            ogg[22..26].fill(0);
            let crc = ogg_crc(&ogg[..58]);
            ogg[22..26].copy_from_slice(&crc.to_le_bytes());
            (ogg, "ogg")
        }
    }
}

fuzz_target!(|input: Input| {
    // The bridge contains panics inside the decoders (`decode_contained`), as this target
    // does; libFuzzer's hook would abort first, so it is replaced once by a silent one. A
    // panic in the bridge's own code is still a finding: the frame assertion below aborts.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let (bytes, extension) = file(input);
    let job = DecodeJob {
        status: 200,
        content_type: None,
        extension: Some(extension.into()),
        volume: 1.0,
        out_rate: 16_000,
    };
    let failure = OnceLock::new();
    let mut frames = 0u32;
    let mut bad_frame = None;
    let _ = decode_contained(Cursor::new(bytes), &failure, &job, &mut |d| {
        if let Decoded::Frame(pcm) = &d {
            if pcm.len() != 320 {
                bad_frame = Some(pcm.len());
            }
            frames += 1;
        }
        frames < MAX_FRAMES
    });
    if let Some(len) = bad_frame {
        eprintln!("a frame of {len} bytes, not 10 ms of 16 kHz mono PCM16");
        std::process::abort();
    }
});
