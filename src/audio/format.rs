//! The bridge's one audio format: 16 kHz, mono, PCM16 little-endian, in 10 ms frames.
//!
//! The phone sends it in data packets, StreamAudio carries it both ways, and published tracks
//! take it; PlayAudio converts whatever it fetches to it.

use std::time::Duration;

/// Samples per second.
pub const SAMPLE_RATE: u32 = 16_000;
/// Channels: mono.
pub const CHANNELS: u32 = 1;
/// Bytes per sample: PCM16.
pub const BYTES_PER_SAMPLE: usize = 2;
/// The length of one frame.
pub const FRAME: Duration = Duration::from_millis(10);
/// Samples in one 10 ms frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 100) as usize;
/// Bytes in one 10 ms frame.
pub const FRAME_BYTES: usize = FRAME_SAMPLES * BYTES_PER_SAMPLE;

/// Samples in `ms` milliseconds.
pub const fn samples_in_ms(ms: usize) -> usize {
    ms * SAMPLE_RATE as usize / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_ten_ms_of_16_khz_mono_pcm16() {
        assert_eq!(FRAME_SAMPLES, 160);
        assert_eq!(FRAME_BYTES, 320);
        assert_eq!(samples_in_ms(FRAME.as_millis() as usize), FRAME_SAMPLES);
    }
}
