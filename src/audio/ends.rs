//! The consumer's ends of a session's ring, whichever kind it is: in this process
//! ([`audio_ring`](super::audio_ring)) or in memory shared with a room worker
//! ([`mapped`](super::mapped)). The gRPC writer and the session see only these.

use std::task::{Context, Poll};

use super::mapped::{MappedCloser, MappedConsumer};
use super::ring::{FrameConsumer, Pop, RingCloser, RingStats};

/// A session ring's consumer.
#[derive(Debug)]
pub enum Consumer {
    Local(FrameConsumer),
    Mapped(MappedConsumer),
}

impl Consumer {
    /// Pops at most one frame, appending its PCM to `out`. Never blocks.
    pub fn try_pop(&mut self, out: &mut Vec<u8>) -> Pop {
        match self {
            Self::Local(c) => c.try_pop(out),
            Self::Mapped(c) => c.try_pop(out),
        }
    }

    /// A frame's arrival time, `Pending` with the task's waker registered, or `None` once closed.
    pub fn poll_pop(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Option<i64>> {
        match self {
            Self::Local(c) => c.poll_pop(cx, out),
            Self::Mapped(c) => c.poll_pop(cx, out),
        }
    }

    /// Waits for the next frame; `None` once the ring is closed.
    pub fn pop<'a>(&'a mut self, out: &'a mut Vec<u8>) -> impl Future<Output = Option<i64>> + 'a {
        std::future::poll_fn(move |cx| self.poll_pop(cx, out))
    }
}

/// Closes a session's ring and reads its counters.
#[derive(Clone, Debug)]
pub enum Closer {
    Local(RingCloser),
    Mapped(MappedCloser),
}

impl Closer {
    /// Closes the ring without waiting; true for the call that closed it.
    pub fn close(&self) -> bool {
        match self {
            Self::Local(c) => c.close(),
            Self::Mapped(c) => c.close(),
        }
    }

    pub fn stats(&self) -> RingStats {
        match self {
            Self::Local(c) => c.stats(),
            Self::Mapped(c) => c.stats(),
        }
    }

    /// When (unix ms) the last frame reached the ring; 0 if none has, or the ring does not say
    /// (an in-process ring's arrivals are stamped by its session).
    pub fn last_arrival_ms(&self) -> i64 {
        match self {
            Self::Local(_) => 0,
            Self::Mapped(c) => c.last_arrival_ms(),
        }
    }
}
