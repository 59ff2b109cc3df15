//! Decoded samples to room frames: downmix to mono, resample to the track's rate, apply volume
//! with clipping, and cut 10 ms frames of PCM16 little-endian.
//!
//! The output has exactly `round(input_frames * out_rate / in_rate)` samples: the resampler's
//! delay is skipped at the start and flushed at the end, and the last frame is padded with
//! silence to a whole 10 ms. So the length of what is played is the length of the audio, to the
//! sample, and the padding is never counted in it.
//!
//! Memory is bounded whatever rate a file declares. Rates outside [`MIN_RATE`]..=[`MAX_RATE`]
//! are refused. Within them, the FFT resampler is used only when the two rates share a large
//! common factor (every common rate does: 44.1 kHz to 16 kHz is 441:160); its buffers grow with
//! `rate / gcd`, so an odd rate (44 101 Hz, or 1 Hz, which would need hundreds of megabytes) goes
//! to a windowed-sinc resampler whose memory does not depend on the rates at all.

use super::PlaybackError;
use rubato::{
    FftFixedIn, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

/// Input frames handed to the resampler per call.
const RESAMPLE_CHUNK: usize = 1024;
/// The lowest source rate accepted, in Hz.
pub const MIN_RATE: u32 = 1_000;
/// The highest source rate accepted, in Hz.
pub const MAX_RATE: u32 = 384_000;
/// The largest FFT (input plus output points) the FFT resampler may use; beyond it the sinc
/// resampler is used. Common rates need at most about 2,200.
const MAX_FFT_POINTS: usize = 8_192;

/// Turns decoded audio into 10 ms PCM16 frames at one output rate.
pub struct FrameMaker {
    in_rate: u32,
    out_rate: u32,
    volume: f32,
    frame_samples: usize,
    resampler: Option<Resampled>,
    /// Output samples not yet cut into a frame.
    pending: Vec<f32>,
    /// One frame's bytes, reused.
    frame: Vec<u8>,
    input_frames: u64,
    emitted: u64,
}

/// The two resamplers (rubato's trait is not object safe).
enum Engine {
    Fft(FftFixedIn<f32>),
    Sinc(SincFixedIn<f32>),
}

impl Engine {
    fn output_delay(&self) -> usize {
        match self {
            Self::Fft(r) => r.output_delay(),
            Self::Sinc(r) => r.output_delay(),
        }
    }

    fn output_frames_max(&self) -> usize {
        match self {
            Self::Fft(r) => r.output_frames_max(),
            Self::Sinc(r) => r.output_frames_max(),
        }
    }

    /// Resamples one mono chunk into `output`; how many samples it produced.
    fn process(&mut self, input: &[f32], output: &mut [f32]) -> Option<usize> {
        let done = match self {
            Self::Fft(r) => r.process_into_buffer(&[input], &mut [output], None),
            Self::Sinc(r) => r.process_into_buffer(&[input], &mut [output], None),
        };
        done.ok().map(|(_, produced)| produced)
    }
}

struct Resampled {
    inner: Engine,
    input: Vec<f32>,
    output: Vec<f32>,
    /// Leading output samples that are the resampler's own delay.
    skip: usize,
}

impl FrameMaker {
    /// The source's rate, in Hz.
    pub fn input_rate(&self) -> u32 {
        self.in_rate
    }

    /// A frame maker from `in_rate` to `out_rate` (both in Hz) at `volume` (1.0 = unchanged).
    pub fn new(in_rate: u32, out_rate: u32, volume: f32) -> Result<Self, PlaybackError> {
        let unsupported = |why: String| Err(PlaybackError::Unsupported(why));
        if !(MIN_RATE..=MAX_RATE).contains(&in_rate) {
            return unsupported(format!(
                "the audio declares a sample rate of {in_rate} Hz; rates from {MIN_RATE} to \
                 {MAX_RATE} Hz are supported"
            ));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&out_rate) || !out_rate.is_multiple_of(100) {
            return unsupported(format!("cannot resample to {out_rate} Hz"));
        }
        let resampler = if in_rate == out_rate {
            None
        } else {
            let inner = resampler(in_rate, out_rate).map_err(|e| {
                PlaybackError::Unsupported(format!(
                    "cannot resample from {in_rate} Hz to {out_rate} Hz: {e}"
                ))
            })?;
            Some(Resampled {
                skip: inner.output_delay(),
                output: vec![0.0; inner.output_frames_max()],
                input: Vec::with_capacity(RESAMPLE_CHUNK),
                inner,
            })
        };
        let frame_samples = out_rate as usize / 100;
        Ok(Self {
            in_rate,
            out_rate,
            volume,
            frame_samples,
            resampler,
            pending: Vec::with_capacity(frame_samples * 8),
            frame: Vec::with_capacity(frame_samples * 2),
            input_frames: 0,
            emitted: 0,
        })
    }

    /// Whether this maker uses the FFT resampler (for tests and benchmarks).
    pub fn uses_fft(&self) -> bool {
        self.resampler.is_some() && fft_points(self.in_rate, self.out_rate) <= MAX_FFT_POINTS
    }

    /// Feeds interleaved samples with `channels` channels. `emit` gets every whole frame (10 ms
    /// of PCM16 LE bytes) and returns false to stop; then this returns false too.
    pub fn push_interleaved(
        &mut self,
        samples: &[f32],
        channels: usize,
        emit: &mut impl FnMut(&[u8]) -> bool,
    ) -> bool {
        let channels = channels.max(1);
        let scale = 1.0 / channels as f32;
        for frame in samples.chunks_exact(channels) {
            let mono = frame.iter().sum::<f32>() * scale;
            self.input_frames += 1;
            if !self.push_mono(mono, emit) {
                return false;
            }
        }
        true
    }

    fn push_mono(&mut self, sample: f32, emit: &mut impl FnMut(&[u8]) -> bool) -> bool {
        match &mut self.resampler {
            None => {
                self.pending.push(sample);
                self.cut_frames(emit)
            }
            Some(r) => {
                r.input.push(sample);
                if r.input.len() < RESAMPLE_CHUNK {
                    return true;
                }
                self.run_resampler() && self.cut_frames(emit)
            }
        }
    }

    /// Resamples the input chunk (zero-padded when flushing) into `pending`.
    fn run_resampler(&mut self) -> bool {
        let Some(r) = &mut self.resampler else {
            return true;
        };
        r.input.resize(RESAMPLE_CHUNK, 0.0);
        // The buffers are sized by the resampler itself, so this cannot fail; if it did, it
        // would end the audio rather than panic.
        let Some(produced) = r.inner.process(&r.input, &mut r.output) else {
            return false;
        };
        r.input.clear();
        let out = &r.output[..produced];
        let skipped = r.skip.min(out.len());
        r.skip -= skipped;
        self.pending.extend_from_slice(&out[skipped..]);
        true
    }

    fn cut_frames(&mut self, emit: &mut impl FnMut(&[u8]) -> bool) -> bool {
        let n = self.frame_samples;
        let mut start = 0;
        while self.pending.len() - start >= n {
            self.fill_frame(start, n);
            start += n;
            self.emitted += n as u64;
            if !emit(&self.frame) {
                self.pending.drain(..start);
                return false;
            }
        }
        self.pending.drain(..start);
        true
    }

    fn fill_frame(&mut self, start: usize, len: usize) {
        self.frame.clear();
        for &s in &self.pending[start..start + len] {
            let v = (s * self.volume).clamp(-1.0, 1.0);
            self.frame
                .extend_from_slice(&((v * 32767.0).round() as i16).to_le_bytes());
        }
        // Pad a short last frame with silence.
        self.frame.resize(self.frame_samples * 2, 0);
    }

    /// The output length the input so far stands for, in samples.
    pub fn expected_samples(&self) -> u64 {
        (self.input_frames * u64::from(self.out_rate) + u64::from(self.in_rate) / 2)
            / u64::from(self.in_rate)
    }

    /// Input frames (per channel) taken so far.
    pub fn input_frames(&self) -> u64 {
        self.input_frames
    }

    /// Flushes the resampler and emits the rest, the last frame padded with silence. Returns
    /// the number of real (unpadded) samples emitted in all, or `None` if `emit` stopped it.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8]) -> bool) -> Option<u64> {
        let expected = self.expected_samples();
        let mut flushes = 0;
        while self.resampler.is_some()
            && self.emitted + (self.pending.len() as u64) < expected
            && flushes < 64
        {
            if !self.run_resampler() {
                break;
            }
            flushes += 1;
        }
        let keep = expected.saturating_sub(self.emitted) as usize;
        self.pending.truncate(keep);
        if !self.cut_frames(emit) {
            return None;
        }
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.fill_frame(0, len);
            self.emitted += len as u64;
            self.pending.clear();
            if !emit(&self.frame) {
                return None;
            }
        }
        Some(self.emitted)
    }
}

/// Input plus output points of the FFT that `FftFixedIn` would plan for these rates with
/// [`RESAMPLE_CHUNK`] in two sub-chunks (its own sizing rule, computed without allocating).
fn fft_points(in_rate: u32, out_rate: u32) -> usize {
    let g = gcd(in_rate, out_rate) as usize;
    let (per_in, per_out) = (in_rate as usize / g, out_rate as usize / g);
    let chunks = (RESAMPLE_CHUNK / 2).div_ceil(per_in);
    chunks.saturating_mul(per_in + per_out)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The FFT resampler when the rates' FFT is small, else a windowed-sinc one (bounded memory:
/// `sinc_len * oversampling` coefficients and one chunk of buffers).
fn resampler(in_rate: u32, out_rate: u32) -> Result<Engine, rubato::ResamplerConstructionError> {
    if fft_points(in_rate, out_rate) <= MAX_FFT_POINTS {
        let fft =
            FftFixedIn::<f32>::new(in_rate as usize, out_rate as usize, RESAMPLE_CHUNK, 2, 1)?;
        return Ok(Engine::Fft(fft));
    }
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: 0.95,
        oversampling_factor: 128,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = f64::from(out_rate) / f64::from(in_rate);
    let sinc = SincFixedIn::<f32>::new(ratio, 1.0, params, RESAMPLE_CHUNK, 1)?;
    Ok(Engine::Sinc(sinc))
}

/// The peak-normalised frequency and RMS level of PCM16 LE audio, for tests and diagnostics:
/// frequency from zero crossings, level as RMS relative to full scale.
pub fn measure_tone(pcm: &[u8], rate: u32) -> (f64, f64) {
    let samples: Vec<f64> = pcm
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    if samples.len() < 2 {
        return (0.0, 0.0);
    }
    let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt();
    let mut crossings = Vec::new();
    for i in 1..samples.len() {
        let (a, b) = (samples[i - 1], samples[i]);
        if a < 0.0 && b >= 0.0 {
            // Interpolate where the rising edge crosses zero.
            crossings.push((i - 1) as f64 + (-a) / (b - a));
        }
    }
    let freq = match (crossings.first(), crossings.last()) {
        (Some(first), Some(last)) if crossings.len() > 1 => {
            (crossings.len() - 1) as f64 * f64::from(rate) / (last - first)
        }
        _ => 0.0,
    };
    (freq, rms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, seconds: f64, channels: usize, amp: f32) -> Vec<f32> {
        let n = (f64::from(rate) * seconds).round() as usize;
        let mut out = Vec::with_capacity(n * channels);
        for i in 0..n {
            let v = (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin() as f32;
            for _ in 0..channels {
                out.push(v * amp);
            }
        }
        out
    }

    fn run(maker: &mut FrameMaker, input: &[f32], channels: usize) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let mut emit = |f: &[u8]| {
            assert_eq!(f.len(), 320);
            out.extend_from_slice(f);
            true
        };
        // Feed in uneven pieces, as a decoder would.
        for piece in input.chunks(channels * 577) {
            assert!(maker.push_interleaved(piece, channels, &mut emit));
        }
        let n = maker.finish(&mut emit).expect("not stopped");
        (out, n)
    }

    #[test]
    fn every_rate_becomes_the_same_tone_of_the_right_length() {
        for rate in [8_000, 16_000, 22_050, 44_100, 48_000] {
            for channels in [1, 2] {
                let input = tone(rate, 1000.0, 1.3, channels, 0.5);
                let mut maker = FrameMaker::new(rate, 16_000, 1.0).expect("supported");
                let (out, samples) = run(&mut maker, &input, channels);
                assert_eq!(samples, 20_800, "{rate} Hz x{channels}");
                assert_eq!(out.len(), 20_800 * 2, "130 whole frames");
                // Skip the edges, where the resampler's filter rings.
                let (hz, rms) = measure_tone(&out[640..out.len() - 640], 16_000);
                assert!((hz - 1000.0).abs() < 5.0, "{rate} Hz x{channels}: {hz}");
                let want = 0.5 / 2f64.sqrt();
                assert!(
                    (rms - want).abs() < 0.01,
                    "{rate} Hz x{channels}: rms {rms}"
                );
            }
        }
    }

    #[test]
    fn volume_scales_and_clips() {
        let input = tone(16_000, 440.0, 0.5, 1, 0.5);
        let mut half = FrameMaker::new(16_000, 16_000, 0.5).expect("supported");
        let (out, _) = run(&mut half, &input, 1);
        let (_, rms) = measure_tone(&out, 16_000);
        assert!((rms - 0.25 / 2f64.sqrt()).abs() < 0.005, "{rms}");

        let mut loud = FrameMaker::new(16_000, 16_000, 8.0).expect("supported");
        let (out, _) = run(&mut loud, &input, 1);
        let peak = out
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .max()
            .unwrap_or(0);
        assert_eq!(peak, i16::MAX, "clipped, not wrapped");
    }

    #[test]
    fn a_short_tail_is_padded_but_not_counted() {
        let input = vec![0.25f32; 16_000 / 100 * 3 + 7];
        let mut maker = FrameMaker::new(16_000, 16_000, 1.0).expect("supported");
        let (out, samples) = run(&mut maker, &input, 1);
        assert_eq!(samples, 487);
        assert_eq!(out.len(), 4 * 320);
        assert!(out[487 * 2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn stopping_mid_way_is_reported() {
        let input = tone(44_100, 1000.0, 1.0, 2, 0.5);
        let mut maker = FrameMaker::new(44_100, 16_000, 1.0).expect("supported");
        let mut frames = 0;
        let mut emit = |_: &[u8]| {
            frames += 1;
            frames < 5
        };
        assert!(!maker.push_interleaved(&input, 2, &mut emit));
        assert_eq!(frames, 5);
    }

    #[test]
    fn impossible_rates_are_refused() {
        for rate in [0, 1, 999, 384_001, 1 << 31, u32::MAX] {
            let err = FrameMaker::new(rate, 16_000, 1.0).err();
            assert!(
                err.is_some_and(|e| e.to_string().contains("1000 to 384000 Hz")),
                "{rate}"
            );
        }
        assert!(FrameMaker::new(44_100, 0, 1.0).is_err());
    }

    #[test]
    fn common_rates_use_the_fft_and_odd_rates_a_bounded_sinc() {
        for rate in [
            8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
        ] {
            let maker = FrameMaker::new(rate, 16_000, 1.0).expect("supported");
            assert!(maker.uses_fft(), "{rate}");
        }
        // 1 Hz needed an 8-million-point FFT before; these are coprime with 16 kHz.
        for rate in [1_001, 44_101, 383_999] {
            assert!(fft_points(rate, 16_000) > MAX_FFT_POINTS, "{rate}");
            let maker = FrameMaker::new(rate, 16_000, 1.0).expect("supported");
            assert!(!maker.uses_fft(), "{rate}");
        }
    }

    #[test]
    fn odd_rates_still_give_the_tone_at_the_exact_length() {
        for rate in [1_001, 7_919, 44_101] {
            let input = tone(rate, 440.0, 1.0, 1, 0.5);
            let mut maker = FrameMaker::new(rate, 16_000, 1.0).expect("supported");
            let (out, samples) = run(&mut maker, &input, 1);
            let want = (u64::from(rate) * 16_000 + u64::from(rate) / 2) / u64::from(rate);
            assert_eq!(samples, want, "{rate} Hz");
            let (hz, rms) = measure_tone(&out[640..out.len() - 640], 16_000);
            assert!((hz - 440.0).abs() < 3.0, "{rate} Hz: {hz}");
            assert!(
                (rms - 0.5 / 2f64.sqrt()).abs() < 0.02,
                "{rate} Hz: rms {rms}"
            );
        }
    }
}
