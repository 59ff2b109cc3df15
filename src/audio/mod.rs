//! The lock-free audio core: the payload rule, the per-session ring and its close protocol, and
//! the same ring in memory two processes share (`mapped`), and the ring that carries a published
//! track's audio the other way (`track_ring`).
//! Nothing here knows of tokio, gRPC or LiveKit; `loom-tests/` model-checks it.

mod ends;
pub mod format;
pub mod mapped;
pub mod payload;
pub mod ring;
mod storage;
pub mod track_ring;
mod waker;
mod weaken;

pub use ends::{Closer, Consumer};
pub use payload::sample_aligned;
pub use ring::{
    FrameConsumer, FrameProducer, Overflow, Pop, PushOutcome, RingCloser, RingConfig, RingStats,
    audio_ring,
};
pub use waker::WakeCounter;
