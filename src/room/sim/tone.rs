//! The simulated room's tone: a sine at `hz` and `level`, one packet per `frame_ms` (a
//! sequence byte, then PCM16 LE), computed by recurrence so that a load test measures the
//! bridge rather than the simulator; and the pacer job that sends it in real time.

use std::time::{Duration, Instant};

use super::{Alive, Ctx, IDLE_POLL, pacer};
use crate::audio::format;

/// The tone's samples, one packet at a time: a sequence byte, then PCM16 LE.
pub(super) struct Tone {
    packet: Vec<u8>,
    phase: f64,
    step: f64,
    /// `2 cos(step)`, the recurrence's factor.
    k: f64,
    amplitude: f64,
}

impl Tone {
    pub(super) fn new(ctx: &Ctx) -> Self {
        Self::with(ctx.spec.hz, ctx.spec.level, ctx.frame_bytes())
    }

    fn with(hz: f64, level: f64, frame_bytes: usize) -> Self {
        let step = std::f64::consts::TAU * hz / f64::from(format::SAMPLE_RATE);
        Self {
            packet: vec![0u8; 1 + frame_bytes],
            phase: 0.0,
            step,
            k: 2.0 * step.cos(),
            amplitude: level * f64::from(i16::MAX),
        }
    }

    /// The next packet. Two sines per packet, then the recurrence
    /// `sin(x + h) = 2 cos(h) sin(x) - sin(x - h)` for its samples: a load test measures the
    /// bridge, not the simulator's sine (a `sin` per sample was a third of its CPU at 1,000
    /// rooms). Restarting from the tracked phase every packet keeps the error at rounding.
    pub(super) fn next(&mut self, seq: u64) -> &[u8] {
        self.packet[0] = seq as u8;
        let k = self.k;
        let (mut prev, mut cur) = ((self.phase - self.step).sin(), self.phase.sin());
        let mut n = 0usize;
        for s in self.packet[1..].chunks_exact_mut(2) {
            s.copy_from_slice(&((cur * self.amplitude) as i16).to_le_bytes());
            (prev, cur) = (cur, k * cur - prev);
            n += 1;
        }
        self.phase = (self.phase + self.step * n as f64) % std::f64::consts::TAU;
        &self.packet
    }
}

/// A real-time tone on a pacer: one packet every `frame_ms`, on schedule (a late pacer catches
/// up packet by packet, as a real room's jitter buffer would release them), until `frames` are
/// sent; then it idles until the room's lifetime is over.
pub(super) struct ToneJob {
    ctx: Ctx,
    tone: Tone,
    period: Duration,
    next: Option<Instant>,
    seq: u64,
    _alive: Alive,
}

impl ToneJob {
    pub(super) fn new(ctx: Ctx, alive: Alive) -> Self {
        Self {
            tone: Tone::new(&ctx),
            period: Duration::from_millis(ctx.spec.frame_ms.into()),
            ctx,
            next: None,
            seq: 0,
            _alive: alive,
        }
    }
}

impl pacer::Job for ToneJob {
    fn step(&mut self, now: Instant) -> Option<Instant> {
        if self.ctx.life.over() {
            return None;
        }
        if self.ctx.spec.frames.is_some_and(|n| self.seq >= n) {
            return Some(now + IDLE_POLL);
        }
        let packet = self.tone.next(self.seq);
        self.ctx.deliver(packet);
        self.seq += 1;
        let next = self.next.unwrap_or(now) + self.period;
        self.next = Some(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_matches_a_sine_per_sample_to_the_last_bit() {
        for hz in [440.0, 1000.0, 7999.5] {
            let mut tone = Tone::with(hz, 0.5, 320);
            let step = std::f64::consts::TAU * hz / f64::from(format::SAMPLE_RATE);
            let mut worst = 0i32;
            for seq in 0..6000u64 {
                let packet = tone.next(seq).to_vec();
                assert_eq!(packet[0], seq as u8);
                for (i, s) in packet[1..].chunks_exact(2).enumerate() {
                    let n = seq as f64 * 160.0 + i as f64;
                    let want = ((step * n).sin() * 0.5 * f64::from(i16::MAX)) as i32;
                    let got = i32::from(i16::from_le_bytes([s[0], s[1]]));
                    worst = worst.max((got - want).abs());
                }
            }
            assert!(worst <= 1, "{hz} Hz: {worst} LSB off after 60 s");
        }
    }
}
