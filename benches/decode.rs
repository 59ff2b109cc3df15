//! What PlayAudio costs per second of audio: decode plus downmix, resample to 16 kHz, volume
//! and 10 ms framing, from bytes in memory (no network), for the formats the backend sends.
//! Throughput is in seconds of audio per second, i.e. how many times faster than real time.
//!
//! - `decode_to_frames/*`: the whole decode path, as the decode thread runs it, on 10 s files
//!   made by sox and lame;
//! - `resample_44k1_mono_1s/*`: the resampling step alone against alternatives: the FFT
//!   resampler the bridge uses (through `FrameMaker`, so volume and framing are included),
//!   rubato's sinc resampler, and linear interpolation (cheap, and audibly aliased).
//!
//! Run: `cargo bench --bench decode`. Needs `sox` and `lame` (scripts/setup installs them).

use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use livekit_bridge::playback::FrameMaker;
use livekit_bridge::playback::decode::{DecodeJob, Decoded, decode};
use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

const SECONDS: f64 = 10.0;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("livekit-bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn run(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd} is needed (scripts/setup installs it): {e}"));
    assert!(ok.success(), "{cmd} {args:?} failed");
}

/// A 10 s sweep across the speech band, so MP3 has something to encode.
fn make(name: &str, rate: u32, channels: u32, mp3: bool) -> Vec<u8> {
    let d = dir();
    let wav = d.join(format!("{name}.wav"));
    let (r, c, s) = (rate.to_string(), channels.to_string(), SECONDS.to_string());
    let w = wav.to_str().expect("path");
    run(
        "sox",
        &[
            "-n", "-r", &r, "-c", &c, "-b", "16", w, "synth", &s, "sine", "100-3400", "vol", "0.3",
        ],
    );
    if !mp3 {
        return std::fs::read(&wav).expect("read");
    }
    let out = d.join(format!("{name}.mp3"));
    run(
        "lame",
        &["--quiet", "-V", "2", w, out.to_str().expect("path")],
    );
    std::fs::read(&out).expect("read")
}

fn decode_to_frames(c: &mut Criterion) {
    let files = [
        (
            "wav_16k_mono",
            make("wav16m", 16_000, 1, false),
            "audio/wav",
            "wav",
        ),
        (
            "wav_44k1_stereo",
            make("wav44s", 44_100, 2, false),
            "audio/wav",
            "wav",
        ),
        (
            "mp3_44k1_stereo",
            make("mp344s", 44_100, 2, true),
            "audio/mpeg",
            "mp3",
        ),
        (
            "mp3_22k05_mono",
            make("mp322m", 22_050, 1, true),
            "audio/mpeg",
            "mp3",
        ),
    ];
    let mut group = c.benchmark_group("decode_to_frames");
    group.throughput(Throughput::Elements(SECONDS as u64));
    group.sample_size(20);
    for (name, bytes, mime, ext) in files {
        let job = DecodeJob {
            status: 200,
            content_type: Some(mime.into()),
            extension: Some(ext.into()),
            volume: 0.8,
            out_rate: 16_000,
        };
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let failure = OnceLock::new();
                let mut frames = 0u64;
                let samples = decode(Cursor::new(bytes.clone()), &failure, &job, &mut |d| {
                    if let Decoded::Frame(f) = d {
                        frames += f.len() as u64;
                    }
                    true
                })
                .expect("decodes");
                assert!(samples >= 159_000, "{name}: {samples}");
                frames
            });
        });
    }
    group.finish();
}

fn tone_44k1(seconds: f64) -> Vec<f32> {
    let n = (44_100.0 * seconds) as usize;
    (0..n)
        .map(|i| (i as f32 * 1000.0 * std::f32::consts::TAU / 44_100.0).sin() * 0.5)
        .collect()
}

fn resample(c: &mut Criterion) {
    let input = tone_44k1(1.0);
    let mut group = c.benchmark_group("resample_44k1_mono_1s");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fft_framemaker", |b| {
        b.iter(|| {
            let mut maker = FrameMaker::new(44_100, 16_000, 0.8).expect("rates");
            let mut n = 0usize;
            let mut emit = |f: &[u8]| {
                n += f.len();
                true
            };
            maker.push_interleaved(&input, 1, &mut emit);
            maker.finish(&mut emit);
            n
        });
    });
    group.bench_function("rubato_sinc", |b| {
        let params = || SincInterpolationParameters {
            sinc_len: 128,
            f_cutoff: 0.95,
            interpolation: SincInterpolationType::Linear,
            oversampling_factor: 128,
            window: WindowFunction::BlackmanHarris2,
        };
        b.iter(|| {
            let mut r =
                SincFixedIn::<f32>::new(16_000.0 / 44_100.0, 1.0, params(), 1024, 1).expect("sinc");
            let mut n = 0usize;
            for chunk in input.chunks_exact(1024) {
                n += r.process(&[chunk], None).expect("process")[0].len();
            }
            n
        });
    });
    group.bench_function("linear_interpolation", |b| {
        b.iter(|| {
            let step = 44_100.0 / 16_000.0;
            let out_len = (input.len() as f64 / step) as usize;
            let mut out = Vec::with_capacity(out_len);
            for i in 0..out_len {
                let pos = i as f64 * step;
                let k = pos as usize;
                let frac = (pos - k as f64) as f32;
                let next = input.get(k + 1).copied().unwrap_or(0.0);
                out.push(input[k] * (1.0 - frac) + next * frac);
            }
            out.len()
        });
    });
    group.finish();
}

criterion_group!(benches, decode_to_frames, resample);
criterion_main!(benches);
