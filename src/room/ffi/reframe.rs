//! Client audio comes in chunks of any length; the library's audio source takes 10 ms frames.
//! [`Reframer`] cuts one into the other, carrying a partial frame (and an odd byte) to the next
//! chunk, so that no sample is lost or moved at a chunk boundary.

use crate::audio::format::FRAME_SAMPLES;

/// One track's frame being filled.
pub(super) struct Reframer {
    frame: [i16; FRAME_SAMPLES],
    filled: usize,
    /// The low byte of a sample whose high byte is in the next chunk.
    odd: Option<u8>,
}

impl Default for Reframer {
    fn default() -> Self {
        Self {
            frame: [0; FRAME_SAMPLES],
            filled: 0,
            odd: None,
        }
    }
}

impl Reframer {
    /// Takes PCM16 LE bytes from the front of `pcm` until the frame is full or `pcm` is used
    /// up; returns how many it took.
    pub fn fill(&mut self, pcm: &[u8]) -> usize {
        let mut took = 0;
        if let Some(lo) = self.odd {
            let (Some(&hi), false) = (pcm.first(), self.is_full()) else {
                return 0;
            };
            self.odd = None;
            self.push(i16::from_le_bytes([lo, hi]));
            took = 1;
        }
        let room = FRAME_SAMPLES - self.filled;
        for pair in pcm[took..].chunks_exact(2).take(room) {
            self.push(i16::from_le_bytes([pair[0], pair[1]]));
            took += 2;
        }
        if !self.is_full() && pcm.len() - took == 1 {
            self.odd = Some(pcm[took]);
            took += 1;
        }
        took
    }

    fn push(&mut self, sample: i16) {
        self.frame[self.filled] = sample;
        self.filled += 1;
    }

    fn is_full(&self) -> bool {
        self.filled == FRAME_SAMPLES
    }

    /// The full frame, if it is.
    pub fn full(&self) -> Option<&[i16; FRAME_SAMPLES]> {
        self.is_full().then_some(&self.frame)
    }

    /// Starts the next frame.
    pub fn clear(&mut self) {
        self.filled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames out of `chunks` fed one after another.
    fn reframe(chunks: &[&[u8]]) -> Vec<Vec<i16>> {
        let mut r = Reframer::default();
        let mut frames = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            loop {
                let took = r.fill(rest);
                rest = &rest[took..];
                if let Some(frame) = r.full() {
                    frames.push(frame.to_vec());
                    r.clear();
                } else if rest.is_empty() {
                    break;
                }
            }
        }
        frames
    }

    #[test]
    fn any_split_gives_the_same_frames_as_the_whole() {
        let bytes: Vec<u8> = (0..FRAME_SAMPLES * 2 * 5 + 3)
            .map(|i| (i * 7) as u8)
            .collect();
        let whole = reframe(&[&bytes]);
        assert_eq!(whole.len(), 5);
        for (i, frame) in whole.iter().enumerate() {
            let start = i * FRAME_SAMPLES * 2;
            let want: Vec<i16> = bytes[start..start + FRAME_SAMPLES * 2]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(*frame, want);
        }
        for cut in [1, 2, 3, 77, 319, 320, 321, 641] {
            let chunks: Vec<&[u8]> = bytes.chunks(cut).collect();
            assert_eq!(reframe(&chunks), whole, "chunks of {cut} bytes");
        }
    }
}
