//! The clock of one published track: the bridge paces its 10 ms frames into the library's
//! audio source itself, so that a track with nothing to say costs nothing.
//!
//! ## Why the bridge paces
//! The library's audio source has two modes. With a queue (`queue_size_ms > 0`) a thread of
//! its own (`AudioSourceCapture`, one per source) hands 10 ms to the encoder every 10 ms,
//! and 10 ms of silence when the queue is empty: a room that spoke once encodes Opus 100 times
//! a second for as long as it lives, and when the server ends the room that thread is never
//! released (LiveKit's rust-sdks #1443). In direct mode (`queue_size_ms = 0`, the one the
//! bridge uses) a captured frame goes straight to the encoder on the caller's thread, and
//! nothing runs between captures. So the timing is the bridge's: each track has a [`Feeder`]
//! task that captures one frame per 10 ms tick, from a short channel its publishers fill.
//!
//! ## What the listener hears
//! - **An utterance starts [`LEAD`] after its first frame reaches the clock**, the lead sent as
//!   silence: the frames that gather meanwhile absorb the jitter of a publisher that sends in
//!   real time, so a frame a few milliseconds late is not replaced by silence. Frames come out
//!   at the 10 ms pace; a tick that finds the channel empty inside an utterance sends silence,
//!   as the library's queue did, and the audio after it starts anew with its lead (the
//!   cushion is rebuilt). Each such resumption is an underrun, counted ([`underruns`]): the
//!   publisher fell behind real time by more than the lead, and the listener heard a gap.
//!   Nothing is dropped or reordered, and the packets to the listener never pause inside an
//!   utterance (its decoder would stretch what follows).
//! - **It ends with [`TAIL`] of silence**, enough for the Opus encoder's DTX to take over
//!   (it signals silence after 200 ms of it), so the listener's decoder hears the end of
//!   speech rather than losing packets mid-word and concealing them. Then the feeder sleeps
//!   on its channel: no timer, no encoding, no packets, until the next frame.
//! - **A new track is warmed** with silence until its sender sends (see `room.rs`: audio
//!   captured before the publisher's negotiation completes is never heard).
//!
//! Backpressure: the channel holds [`LEAD`] plus a few frames; a publisher that is ahead
//! waits in `send`, so a StreamAudio's chunks wait in HTTP/2 flow control and a playback's
//! frames in its decoder queue, as before. A capture that fails ends the feeder; the next
//! `send` returns the reason.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::client::{CALL_TIMEOUT, Client, library_error, unexpected};
use super::proto::ffi_event;
use crate::audio::format::{self, FRAME, FRAME_SAMPLES};
use crate::room::RoomError;

/// 10 ms of 16 kHz mono PCM16.
pub(super) type Frame = [i16; FRAME_SAMPLES];

/// How far behind its first frame an utterance starts: the jitter a real-time publisher may
/// have without a gap being heard.
pub(super) const LEAD: Duration = Duration::from_millis(20);
/// Silence sent after the last frame of an utterance before the track goes quiet.
pub(super) const TAIL: Duration = Duration::from_millis(400);
/// A feeder this far behind its clock (the machine was starved) starts a new one rather than
/// sending what it owes in a burst.
const BEHIND: Duration = Duration::from_millis(60);
/// Frames the channel holds besides the lead: a publisher's own scheduling jitter.
const SLACK_FRAMES: usize = 4;

/// Underruns of every published track in the process: see [`underruns`].
static UNDERRUNS: AtomicU64 = AtomicU64::new(0);

/// How many times, in all, a published track's audio resumed after its clock had found no
/// frame mid-utterance (within [`TAIL`] of the last audio): gaps the listener heard because
/// the publisher was late.
pub(super) fn underruns() -> u64 {
    // Relaxed: a statistic, read on its own.
    UNDERRUNS.load(Ordering::Relaxed)
}

/// A published track's clock and the channel its publishers fill.
pub(super) struct Feeder {
    frames: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// Silence is sent on every tick while set: the track is new and not sending yet.
    warming: AtomicBool,
    /// Why the feeder stopped, when a capture failed.
    failed: Mutex<Option<RoomError>>,
}

impl Feeder {
    /// Starts the clock of `source`, warming: silence every 10 ms until [`Self::warmed`].
    pub fn start(client: &'static Client, source: u64) -> Self {
        let lead = (LEAD.as_millis() / FRAME.as_millis()) as usize;
        let (frames, rx) = mpsc::channel(lead + SLACK_FRAMES);
        let shared = Arc::new(Shared {
            warming: AtomicBool::new(true),
            failed: Mutex::default(),
        });
        let task = tokio::spawn(run(client, source, rx, shared.clone()));
        Self {
            frames,
            shared,
            task,
        }
    }

    /// The track is sending: from now on silence is sent only in an utterance's tail.
    pub fn warmed(&self) {
        // Relaxed: a hint to the feeder's next tick; nothing else is published with it.
        self.shared.warming.store(false, Ordering::Relaxed);
    }

    /// Hands `frame` to the clock; waits while the channel is full.
    pub async fn send(&self, frame: Frame) -> Result<(), RoomError> {
        if self.frames.send(frame).await.is_ok() {
            return Ok(());
        }
        let failed = self
            .shared
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Err(failed.unwrap_or_else(|| RoomError::NotConnected("the track was closed".into())))
    }

    /// Stops the clock once it has sent what it holds (at most the channel's few frames); the
    /// source may be released after this returns.
    pub async fn stop(self) {
        drop(self.frames);
        let _ = self.task.await;
    }
}

/// The clock: see the module's notes.
async fn run(
    client: &'static Client,
    source: u64,
    mut rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    const SILENCE: Frame = [0; FRAME_SAMPLES];
    let lead_ticks = (LEAD.as_millis() / FRAME.as_millis()) as usize;
    // Relaxed: see `warmed`.
    let warming = || shared.warming.load(Ordering::Relaxed);
    // The next tick, and when the tail of the last utterance ends; `None` while quiet.
    let mut clock: Option<(Instant, Instant)> = Some((Instant::now(), Instant::now()));
    let mut warm = false;
    // The first frame of an utterance, held while its lead of silence goes out.
    let mut held: Option<Frame> = None;
    let mut lead_left = 0;
    // Whether the last frame sent was silence (or none): the next audio starts an utterance.
    let mut silent = true;
    // Whether audio was sent since the clock last started: silence then audio is an underrun.
    let mut spoke = false;
    loop {
        let Some((due, mut quiet_at)) = clock else {
            // Quiet: wait for the next utterance, with no timer.
            let Some(first) = rx.recv().await else {
                return;
            };
            (held, lead_left) = (Some(first), lead_ticks);
            spoke = false;
            let now = Instant::now();
            clock = Some((now, now));
            continue;
        };
        sleep_until(due).await;
        if !warm && !warming() {
            warm = true;
            quiet_at = due + TAIL;
        }
        let audio = if lead_left > 0 {
            lead_left -= 1;
            None
        } else if let Some(first) = held.take() {
            Some(first)
        } else {
            match rx.try_recv() {
                Ok(first) if silent => {
                    if spoke {
                        // Relaxed: see `underruns`.
                        UNDERRUNS.fetch_add(1, Ordering::Relaxed);
                    }
                    (held, lead_left) = (Some(first), lead_ticks - 1);
                    None
                }
                Ok(frame) => Some(frame),
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) if !warm || due < quiet_at => None,
                Err(TryRecvError::Empty) => {
                    clock = None;
                    continue;
                }
            }
        };
        silent = audio.is_none();
        if !silent {
            quiet_at = due + FRAME + TAIL;
            spoke = true;
        }
        if let Err(e) = capture(client, source, audio.as_ref().unwrap_or(&SILENCE)).await {
            return fail(&shared, e);
        }
        let now = Instant::now();
        let next = if now > due + BEHIND { now } else { due + FRAME };
        clock = Some((next, quiet_at));
    }
}

fn fail(shared: &Shared, e: RoomError) {
    *shared.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
}

/// Hands one 10 ms frame to the source (direct mode: straight to the encoder).
async fn capture(client: &'static Client, source: u64, frame: &Frame) -> Result<(), RoomError> {
    let send = |id| {
        client
            .lib
            .capture_frame(source, frame, format::SAMPLE_RATE, id)
            .map(drop)
            .map_err(library_error)
    };
    match client.call_with(send, CALL_TIMEOUT).await? {
        ffi_event::Message::CaptureAudioFrame(cb) => match cb.error {
            Some(e) if !e.is_empty() => Err(RoomError::NotConnected(format!("capture: {e}"))),
            _ => Ok(()),
        },
        other => Err(unexpected("CaptureAudioFrame", other)),
    }
}
