//! The payload rule and the ring's framing against a plain model: a `VecDeque` of frames, a
//! byte budget, and the contract's trimming rule written out literally.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livekit_bridge::audio::ring::FRAME_HEADER;
use livekit_bridge::audio::{Overflow, Pop, PushOutcome, RingConfig, audio_ring};

#[derive(Arbitrary, Debug)]
enum Op {
    Push(Vec<u8>),
    Pop,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u16,
    drop_oldest: bool,
    ops: Vec<Op>,
}

/// The contract, literally: an odd-length payload loses its first byte, then its last byte if
/// still odd; an empty result is skipped.
fn contract_rule(payload: &[u8]) -> Option<Vec<u8>> {
    let mut pcm = payload.to_vec();
    if pcm.len() % 2 == 1 {
        pcm.remove(0);
        if pcm.len() % 2 == 1 {
            pcm.pop();
        }
    }
    (!pcm.is_empty()).then_some(pcm)
}

struct Model {
    frames: VecDeque<(i64, Vec<u8>)>,
    used: usize,
    capacity: usize,
    closed: bool,
    lagged: bool,
    drop_oldest: bool,
}

impl Model {
    fn push(&mut self, at: i64, payload: &[u8]) -> PushOutcome {
        let Some(pcm) = contract_rule(payload) else {
            return PushOutcome::Skipped;
        };
        if self.closed {
            return PushOutcome::Closed;
        }
        let size = FRAME_HEADER + pcm.len();
        if self.used + size > self.capacity {
            self.lagged |= self.drop_oldest;
            return PushOutcome::Full;
        }
        self.used += size;
        self.frames.push_back((at, pcm));
        PushOutcome::Queued
    }

    fn pop(&mut self) -> Option<Option<(i64, Vec<u8>)>> {
        if self.closed {
            self.frames.clear();
            self.used = 0;
            return None;
        }
        if std::mem::take(&mut self.lagged) {
            while self.used > self.capacity / 2 {
                let Some((_, f)) = self.frames.pop_front() else {
                    break;
                };
                self.used -= FRAME_HEADER + f.len();
            }
        }
        let frame = self.frames.pop_front();
        if let Some((_, f)) = &frame {
            self.used -= FRAME_HEADER + f.len();
        }
        Some(frame)
    }
}

fuzz_target!(|input: Input| {
    let capacity = usize::from(input.capacity).max(FRAME_HEADER + 2);
    let overflow = if input.drop_oldest {
        Overflow::DropOldest
    } else {
        Overflow::DropNewest
    };
    let (p, mut c, closer) = audio_ring(RingConfig {
        capacity_bytes: capacity,
        overflow,
    });
    let mut model = Model {
        frames: VecDeque::new(),
        used: 0,
        capacity,
        closed: false,
        lagged: false,
        drop_oldest: input.drop_oldest,
    };
    let mut out = Vec::new();
    for (i, op) in input.ops.iter().enumerate() {
        let at = i as i64;
        match op {
            Op::Push(payload) => assert_eq!(p.push(at, payload), model.push(at, payload)),
            Op::Pop => {
                out.clear();
                let got = c.try_pop(&mut out);
                match model.pop() {
                    None => assert_eq!(got, Pop::Closed),
                    Some(None) => assert_eq!(got, Pop::Empty),
                    Some(Some((ts, pcm))) => {
                        assert_eq!(got, Pop::Frame { arrived_ms: ts });
                        assert_eq!(out, pcm);
                    }
                }
            }
            Op::Close => {
                closer.close();
                model.closed = true;
            }
        }
        let s = p.stats();
        assert_eq!(s.queued() as usize, model.frames.len());
    }
});
