//! Playbacks of a session: which request plays on which track, interruption, StopAudio, and
//! the paced playout that turns decoded frames into a track's audio and events.
//!
//! Events, in order: STARTED when the first frame has been handed to the track (with the
//! source's codec, rate and channels and the start latency in its metadata); PROGRESS about
//! once a second of audio; then COMPLETED when the last frame has been handed over and its
//! time has passed, with `duration_ms` the length of the audio, or FAILED with what went
//! wrong and `position_ms` how far it got. The stream ends after the last event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use super::decode::{self, DecodeJob, DecodeThread, Decoded, SourceInfo};
use super::fetch::{self, Fetcher};
use super::worker;
use super::{Gauge, PlaybackError, PlaybackSettings, PlaybackStats};
use crate::proto::PlayAudioEvent;
use crate::proto::play_audio_event::EventType;
use crate::session::Session;

/// Playout frame length.
const FRAME: Duration = Duration::from_millis(10);
/// PROGRESS every this many frames.
const PROGRESS_EVERY: u64 = 100;
/// The longest a stop waits for a playback's workers to be gone.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// The longest the final event waits for room in a caller's queue that is not being read.
const FINAL_EVENT_WAIT: Duration = Duration::from_secs(1);

/// Why a playback was stopped before it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// StopAudio, with its reason.
    StopAudio(String),
    /// A newer PlayAudio on the same track (or with `stop_other`), by request id.
    Interrupted(String),
}

impl StopCause {
    fn describe(&self) -> String {
        match self {
            Self::StopAudio(r) if r.is_empty() => "stopped by StopAudio".into(),
            Self::StopAudio(r) => format!("stopped by StopAudio: {r}"),
            Self::Interrupted(id) => format!("interrupted by request {id:?}"),
        }
    }
}

/// Which playbacks a StopAudio means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopTarget {
    Request(String),
    Track(i32),
    All,
}

/// How one playback is told to stop, and how it says it is gone.
#[derive(Default)]
struct Control {
    cause: OnceLock<StopCause>,
    stop: CancellationToken,
    /// Cancelled when every worker of the playback has exited and its last event is queued.
    done: CancellationToken,
}

impl Control {
    fn stop(&self, cause: StopCause) {
        let _ = self.cause.set(cause);
        self.stop.cancel();
    }

    async fn gone(&self) {
        let _ = tokio::time::timeout(STOP_WAIT, self.done.cancelled()).await;
    }
}

struct Active {
    id: u64,
    track_id: i32,
    request_id: String,
    control: Arc<Control>,
}

/// A session's playbacks, at most one per track.
#[derive(Default)]
pub struct Playbacks {
    next_id: AtomicU64,
    active: Mutex<Vec<Active>>,
}

impl Playbacks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a playback on `track_id` and takes out the ones it interrupts: the one on its
    /// track, or with `stop_other` every one. They are told to stop; the caller waits for them.
    fn begin(
        &self,
        track_id: i32,
        request_id: &str,
        stop_other: bool,
    ) -> (u64, Arc<Control>, Vec<Arc<Control>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(Control::default());
        let mut active = self.lock();
        let mut interrupted = Vec::new();
        active.retain(|a| {
            if stop_other || a.track_id == track_id {
                a.control
                    .stop(StopCause::Interrupted(request_id.to_string()));
                interrupted.push(a.control.clone());
                false
            } else {
                true
            }
        });
        active.push(Active {
            id,
            track_id,
            request_id: request_id.to_string(),
            control: control.clone(),
        });
        (id, control, interrupted)
    }

    fn finish(&self, id: u64) {
        self.lock().retain(|a| a.id != id);
    }

    /// Stops the playbacks `target` names and waits until they are gone (download, decoder
    /// and playout all exited, FAILED event queued). Returns their request ids.
    pub async fn stop(&self, target: &StopTarget, cause: StopCause) -> Vec<String> {
        let stopped: Vec<(String, Arc<Control>)> = {
            let mut active = self.lock();
            let mut stopped = Vec::new();
            active.retain(|a| {
                let hit = match target {
                    StopTarget::Request(id) => a.request_id == *id,
                    StopTarget::Track(t) => a.track_id == *t,
                    StopTarget::All => true,
                };
                if hit {
                    a.control.stop(cause.clone());
                    stopped.push((a.request_id.clone(), a.control.clone()));
                }
                !hit
            });
            stopped
        };
        for (_, control) in &stopped {
            control.gone().await;
        }
        stopped.into_iter().map(|(id, _)| id).collect()
    }

    /// (track id, request id) of what is playing now.
    pub fn playing(&self) -> Vec<(i32, String)> {
        self.lock()
            .iter()
            .map(|a| (a.track_id, a.request_id.clone()))
            .collect()
    }
}

/// A checked PlayAudio request.
#[derive(Clone, Debug)]
pub struct PlayRequest {
    pub request_id: String,
    pub url: Url,
    /// Linear gain, already mapped from the contract's 0 ("unset") to 1.0.
    pub volume: f32,
    pub track_id: i32,
    pub track: String,
    pub stop_other: bool,
}

/// The process's playback machinery: one HTTP client and the worker counts.
pub struct Player {
    fetcher: Result<Fetcher, String>,
    settings: PlaybackSettings,
    stats: Arc<PlaybackStats>,
}

impl Player {
    pub fn new(settings: PlaybackSettings) -> Arc<Self> {
        Arc::new(Self {
            fetcher: Fetcher::new(settings.clone()),
            settings,
            stats: Arc::default(),
        })
    }

    /// Why playbacks cannot work in this process (the HTTP client could not be built from the
    /// settings), if so.
    pub fn unusable(&self) -> Option<&str> {
        self.fetcher.as_ref().err().map(String::as_str)
    }

    pub fn stats(&self) -> &Arc<PlaybackStats> {
        &self.stats
    }

    /// Starts playing `request` into `session`, sending events into `events`. Interrupted
    /// playbacks are waited for before the first frame, so two never interleave on a track.
    pub fn start(
        self: &Arc<Self>,
        session: Arc<Session>,
        request: PlayRequest,
        events: mpsc::Sender<PlayAudioEvent>,
    ) {
        let received = Instant::now();
        let (id, control, interrupted) =
            session
                .playbacks()
                .begin(request.track_id, &request.request_id, request.stop_other);
        let running = Gauge::new(&self.stats, |s| &s.playouts);
        tokio::spawn(self.clone().run(Run {
            session,
            request,
            id,
            control,
            interrupted,
            events,
            received,
            running,
        }));
    }

    async fn run(self: Arc<Self>, run: Run) {
        let Run {
            session,
            request,
            id,
            control,
            interrupted,
            events,
            received,
            running,
        } = run;
        for earlier in interrupted {
            earlier.gone().await;
        }
        let mut workers = Workers::default();
        let mut progress = Progress::default();
        let outcome = {
            let work = self.play(
                &session,
                &request,
                &events,
                &mut workers,
                &mut progress,
                received,
            );
            tokio::select! {
                r = work => r,
                () = control.stop.cancelled() => Err(PlaybackError::Stopped(
                    control.cause.get().map_or_else(|| "stopped".into(), StopCause::describe),
                )),
                () = session.closed() => Err(PlaybackError::Stopped(format!(
                    "the session closed ({})",
                    session.ended().map_or_else(|| "closed".into(), |(r, _)| r.describe())
                ))),
                () = events.closed() => Err(PlaybackError::Stopped(
                    "the PlayAudio caller went away".into(),
                )),
            }
        };
        workers.shutdown().await;
        session.playbacks().finish(id);

        let rate = u64::from(self.settings.sample_rate);
        let mut event = event(EventType::Completed, &request);
        match &outcome {
            Ok(samples) => {
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                event.duration_ms = ((samples * 1000 + rate / 2) / rate) as i64;
                event.position_ms = event.duration_ms;
                tracing::info!(request_id = %request.request_id, track = %request.track, duration_ms = event.duration_ms, "playback completed");
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                event.r#type = EventType::Failed as i32;
                event.error = e.to_string();
                event.position_ms = progress.position_ms();
                tracing::info!(request_id = %request.request_id, track = %request.track, error = %e, "playback failed");
            }
        }
        // The playout is over before its report goes out, so a caller that has the final
        // event sees no worker of this playback counted any more.
        drop(running);
        let _ = tokio::time::timeout(FINAL_EVENT_WAIT, events.send(event)).await;
        drop(events);
        control.done.cancel();
    }

    /// Fetches, decodes and plays out; returns the number of samples played.
    async fn play(
        self: &Arc<Self>,
        session: &Session,
        request: &PlayRequest,
        events: &mpsc::Sender<PlayAudioEvent>,
        workers: &mut Workers,
        progress: &mut Progress,
        received: Instant,
    ) -> Result<u64, PlaybackError> {
        let fetcher = self
            .fetcher
            .as_ref()
            .map_err(|e| PlaybackError::Fetch(e.clone()))?;
        let download = fetcher.open(&request.url).await?;
        let job_hints = (
            download.status,
            download.content_type.clone(),
            download.extension.clone(),
        );
        let (body_tx, body_rx) = fetch::body_channel();
        let player = self.clone();
        workers.fetch = Some(tokio::spawn(async move {
            if let Ok(fetcher) = &player.fetcher {
                fetcher.pump(download, body_tx, player.stats.clone()).await;
            }
        }));

        let lookahead = (self.settings.lookahead.as_millis() / FRAME.as_millis()).max(1) as usize;
        let (frames_tx, mut frames) = mpsc::channel(lookahead);
        let job = DecodeJob {
            status: job_hints.0,
            content_type: job_hints.1,
            extension: job_hints.2,
            volume: request.volume,
            out_rate: self.settings.sample_rate,
        };
        let decoder = match &self.settings.decoder_process {
            Some(process) => worker::spawn(process, body_rx, job, frames_tx, &self.stats),
            None => decode::spawn(body_rx, job, frames_tx, &self.stats),
        };
        workers.decode = Some(
            decoder.map_err(|e| PlaybackError::Fetch(format!("cannot start a decoder: {e}")))?,
        );

        let mut source: Option<SourceInfo> = None;
        let mut t0: Option<Instant> = None;
        let opened = Instant::now();
        let max_stall = self.settings.max_stall;
        loop {
            // The next frame is due now (before the first) or on the playout's schedule; a
            // download that leaves playout waiting past that by `max_stall` cannot keep up
            // (a body trickling a byte at a time never trips the read timeout).
            let due = t0.map_or(opened, |t0| t0 + FRAME * progress.frames as u32);
            let waited = tokio::time::timeout_at((due + max_stall).into(), frames.recv()).await;
            let Ok(item) = waited else {
                return Err(PlaybackError::Timeout(format!(
                    "the download from {} cannot keep up with playback: playout waited {:.1} s \
                     for audio (PLAYBACK_MAX_STALL_MS)",
                    fetch::host(&request.url),
                    due.elapsed().as_secs_f64()
                )));
            };
            let Some(item) = item else { break };
            match item {
                Decoded::Source(info) => source = Some(info),
                Decoded::Frame(pcm) => {
                    if let Some(t0) = t0 {
                        sleep_until((t0 + FRAME * progress.frames as u32).into()).await;
                    }
                    session
                        .room()
                        .publish(&request.track, &pcm)
                        .await
                        .map_err(|e| {
                            PlaybackError::Room(format!(
                                "the room would not take the audio on track {}: {e}",
                                request.track
                            ))
                        })?;
                    progress.frames += 1;
                    if t0.is_none() {
                        t0 = Some(Instant::now());
                        self.stats.started.fetch_add(1, Ordering::Relaxed);
                        let _ = events
                            .send(started(request, source.as_ref(), received.elapsed()))
                            .await;
                    } else if progress.frames % PROGRESS_EVERY == 0 {
                        let mut e = event(EventType::Progress, request);
                        e.position_ms = progress.position_ms();
                        // Progress is advisory: a caller that is not reading misses some.
                        let _ = events.try_send(e);
                    }
                }
                Decoded::End { samples } => {
                    let Some(t0) = t0.filter(|_| samples > 0) else {
                        return Err(PlaybackError::Unsupported(
                            "the audio decoded to no samples".into(),
                        ));
                    };
                    let rate = u64::from(self.settings.sample_rate);
                    let length = Duration::from_micros(samples * 1_000_000 / rate);
                    sleep_until((t0 + length).into()).await;
                    return Ok(samples);
                }
                Decoded::Failed(e) => return Err(e),
            }
        }
        Err(PlaybackError::Corrupt(
            "the decoder stopped without finishing".into(),
        ))
    }
}

struct Run {
    session: Arc<Session>,
    request: PlayRequest,
    id: u64,
    control: Arc<Control>,
    interrupted: Vec<Arc<Control>>,
    events: mpsc::Sender<PlayAudioEvent>,
    received: Instant,
    running: Gauge,
}

#[derive(Default)]
struct Progress {
    frames: u64,
}

impl Progress {
    fn position_ms(&self) -> i64 {
        (self.frames * FRAME.as_millis() as u64) as i64
    }
}

/// A playback's download task and decode thread, which must be gone before it reports.
#[derive(Default)]
struct Workers {
    fetch: Option<JoinHandle<()>>,
    decode: Option<DecodeThread>,
}

impl Workers {
    async fn shutdown(&mut self) {
        if let Some(decode) = &self.decode {
            decode.request_stop();
        }
        if let Some(fetch) = self.fetch.take() {
            fetch.abort();
            let _ = fetch.await;
        }
        if let Some(decode) = self.decode.take() {
            // The frame channel is already closed (the playout that read it has been dropped)
            // and so is the body channel, so the thread is at most one packet from noticing.
            let _ = decode.exited.await;
        }
    }
}

fn event(kind: EventType, request: &PlayRequest) -> PlayAudioEvent {
    PlayAudioEvent {
        r#type: kind as i32,
        request_id: request.request_id.clone(),
        metadata: HashMap::from([("track".to_string(), request.track.clone())]),
        ..Default::default()
    }
}

fn started(
    request: &PlayRequest,
    source: Option<&SourceInfo>,
    latency: Duration,
) -> PlayAudioEvent {
    let mut e = event(EventType::Started, request);
    e.metadata
        .insert("start_latency_ms".into(), latency.as_millis().to_string());
    if let Some(s) = source {
        e.metadata.insert("codec".into(), s.codec.clone());
        e.metadata
            .insert("source_sample_rate".into(), s.sample_rate.to_string());
        e.metadata
            .insert("source_channels".into(), s.channels.to_string());
    }
    e
}
