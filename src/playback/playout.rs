//! One playback from request to final event: fetch, decode and the paced playout into the
//! output's track.
//!
//! Events, in order: [`PlayEvent::Started`] when the first frame has been handed to the track;
//! [`PlayEvent::Progress`] about once a second of audio; then [`PlayEvent::Completed`] when the
//! last frame has been handed over and its time has passed, or [`PlayEvent::Failed`] with what
//! went wrong and how far it got. The event channel closes after the last event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Url;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::decode::{self, DecodeJob, DecodeThread, Decoded, SourceInfo};
use super::fetch::{self, ClientError, Fetcher};
use super::playbacks::Begun;
use super::{Gauge, Output, PlayEvent, PlaybackError, PlaybackSettings, PlaybackStats, worker};
use crate::audio::format::FRAME;

/// PROGRESS every this many frames.
const PROGRESS_EVERY: u64 = 100;
/// The longest the final event waits for room in a caller's queue that is not being read.
const FINAL_EVENT_WAIT: Duration = Duration::from_secs(1);

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
    fetcher: Arc<Fetcher>,
    settings: PlaybackSettings,
    stats: Arc<PlaybackStats>,
}

impl Player {
    /// The player, or why its HTTP client cannot be built from `settings` (`PLAYBACK_CA_FILE`).
    pub fn new(settings: PlaybackSettings) -> Result<Arc<Self>, ClientError> {
        Ok(Arc::new(Self {
            fetcher: Arc::new(Fetcher::new(settings.clone())?),
            settings,
            stats: Arc::default(),
        }))
    }

    pub fn stats(&self) -> &Arc<PlaybackStats> {
        &self.stats
    }

    /// Starts playing `request` into `output`, sending events into `events`. Interrupted
    /// playbacks are waited for before the first frame, so two never interleave on a track.
    pub fn start(
        self: &Arc<Self>,
        output: Arc<dyn Output>,
        request: PlayRequest,
        events: mpsc::Sender<PlayEvent>,
    ) {
        let received = Instant::now();
        let begun =
            output
                .playbacks()
                .begin(request.track_id, &request.request_id, request.stop_other);
        let running = Gauge::new(&self.stats, |s| &s.playouts);
        let run = self
            .clone()
            .run(output, request, begun, events, received, running);
        tokio::spawn(run);
    }

    /// The playback, to its final event; `running` counts it until its report is due.
    async fn run(
        self: Arc<Self>,
        output: Arc<dyn Output>,
        request: PlayRequest,
        begun: Begun,
        events: mpsc::Sender<PlayEvent>,
        received: Instant,
        running: Gauge,
    ) {
        let Begun {
            id,
            control,
            interrupted,
        } = begun;
        for earlier in interrupted {
            earlier.gone().await;
        }
        let mut playout = Playout {
            player: &self,
            output: output.as_ref(),
            request: &request,
            events: &events,
            workers: Workers::default(),
            frames: 0,
        };
        let outcome = tokio::select! {
            r = playout.play(received) => r,
            why = control.stopped() => Err(PlaybackError::Stopped(why)),
            why = output.closed() => Err(PlaybackError::Stopped(format!("the session closed ({why})"))),
            () = events.closed() => Err(PlaybackError::Stopped(
                "the PlayAudio caller went away".into(),
            )),
        };
        playout.workers.shutdown().await;
        let position = playout.position();
        output.playbacks().finish(id);
        let last = self.report(&request, outcome, position);
        // The playout is over before its report goes out, so a caller that has the final
        // event sees no worker of this playback counted any more.
        drop(running);
        let _ = tokio::time::timeout(FINAL_EVENT_WAIT, events.send(last)).await;
        drop(events);
        control.done();
    }

    /// Counts and logs the outcome; the final event.
    fn report(
        &self,
        request: &PlayRequest,
        outcome: Result<u64, PlaybackError>,
        position: Duration,
    ) -> PlayEvent {
        match outcome {
            Ok(samples) => {
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                let rate = u64::from(self.settings.sample_rate);
                let duration = Duration::from_millis((samples * 1000 + rate / 2) / rate);
                tracing::info!(request_id = %request.request_id, track = %request.track, duration_ms = duration.as_millis(), "playback completed");
                PlayEvent::Completed { duration }
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.failed_by[error.kind() as usize].fetch_add(1, Ordering::Relaxed);
                tracing::info!(request_id = %request.request_id, track = %request.track, %error, "playback failed");
                PlayEvent::Failed { error, position }
            }
        }
    }
}

/// One playback's workers and how far it got.
struct Playout<'a> {
    player: &'a Player,
    output: &'a dyn Output,
    request: &'a PlayRequest,
    events: &'a mpsc::Sender<PlayEvent>,
    workers: Workers,
    /// Frames handed to the track.
    frames: u64,
}

impl Playout<'_> {
    fn position(&self) -> Duration {
        FRAME * self.frames as u32
    }

    /// Fetches, decodes and plays out; returns the number of samples played.
    async fn play(&mut self, received: Instant) -> Result<u64, PlaybackError> {
        let mut frames = self.start_workers().await?;
        let mut source: Option<SourceInfo> = None;
        let mut t0: Option<Instant> = None;
        let opened = Instant::now();
        let max_stall = self.player.settings.max_stall;
        loop {
            // The next frame is due now (before the first) or on the playout's schedule; a
            // download that leaves playout waiting past that by `max_stall` cannot keep up
            // (a body trickling a byte at a time never trips the read timeout).
            let due = t0.map_or(opened, |t0| t0 + self.position());
            let waited = tokio::time::timeout_at((due + max_stall).into(), frames.recv()).await;
            let Ok(item) = waited else {
                return Err(PlaybackError::Timeout(format!(
                    "the download from {} cannot keep up with playback: playout waited {:.1} s \
                     for audio (PLAYBACK_MAX_STALL_MS)",
                    fetch::host(&self.request.url),
                    due.elapsed().as_secs_f64()
                )));
            };
            let Some(item) = item else { break };
            match item {
                Decoded::Source(info) => source = Some(info),
                Decoded::Frame(pcm) => {
                    if let Some(t0) = t0 {
                        sleep_until((t0 + self.position()).into()).await;
                    }
                    self.hand_over(&pcm).await?;
                    if t0.is_none() {
                        t0 = Some(Instant::now());
                        self.player.stats.started.fetch_add(1, Ordering::Relaxed);
                        let started = PlayEvent::Started {
                            latency: received.elapsed(),
                            source: source.take(),
                        };
                        let _ = self.events.send(started).await;
                    } else if self.frames.is_multiple_of(PROGRESS_EVERY) {
                        let progress = PlayEvent::Progress {
                            position: self.position(),
                        };
                        // Progress is advisory: a caller that is not reading misses some.
                        let _ = self.events.try_send(progress);
                    }
                }
                Decoded::End { samples } => {
                    let Some(t0) = t0.filter(|_| samples > 0) else {
                        return Err(PlaybackError::Unsupported(
                            "the audio decoded to no samples".into(),
                        ));
                    };
                    let rate = u64::from(self.player.settings.sample_rate);
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

    /// Opens the download and starts the fetch task and the decoder; the decoded frames.
    async fn start_workers(&mut self) -> Result<mpsc::Receiver<Decoded>, PlaybackError> {
        let player = self.player;
        let download = player.fetcher.open(&self.request.url).await?;
        let job = DecodeJob {
            status: download.status,
            content_type: download.content_type.clone(),
            extension: download.extension.clone(),
            volume: self.request.volume,
            out_rate: player.settings.sample_rate,
        };
        let (body_tx, body_rx) = fetch::body_channel();
        let (fetcher, stats) = (player.fetcher.clone(), player.stats.clone());
        self.workers.fetch = Some(tokio::spawn(async move {
            fetcher.pump(download, body_tx, stats).await;
        }));
        let lookahead = (player.settings.lookahead.as_millis() / FRAME.as_millis()).max(1);
        let (frames_tx, frames) = mpsc::channel(lookahead as usize);
        let decoder = match &player.settings.decoder_process {
            Some(process) => worker::spawn(process, body_rx, job, frames_tx, &player.stats),
            None => decode::spawn(body_rx, job, frames_tx, &player.stats),
        };
        self.workers.decode = Some(
            decoder.map_err(|e| PlaybackError::Fetch(format!("cannot start a decoder: {e}")))?,
        );
        Ok(frames)
    }

    async fn hand_over(&mut self, pcm: &[u8]) -> Result<(), PlaybackError> {
        let track = &self.request.track;
        self.output.publish(track, pcm).await.map_err(|e| {
            PlaybackError::Room(format!(
                "the room would not take the audio on track {track}: {e}"
            ))
        })?;
        self.frames += 1;
        Ok(())
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
