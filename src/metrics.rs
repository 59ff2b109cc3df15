//! The bridge's Prometheus metrics, prefixed `livekit_bridge_`, in the text exposition format
//! (the `prometheus` crate's encoder and its process collector).
//!
//! Two kinds:
//! - **events** counted where they happen: JoinRoom outcomes and latency, client chunks
//!   published, the delay from a frame's arrival to its hand-off to gRPC;
//! - **state** read at scrape time from what the bridge keeps anyway: sessions by state, open
//!   streams, capacity, playbacks by outcome, sessions ended by reason ([`Totals`]), and the
//!   frames every ring
//!   received, delivered and dropped (live sessions' rings plus the retired totals of
//!   ended ones). A scrape-time counter only ever moves up: it is advanced to the new total,
//!   never set below what it showed (a session being torn down is briefly in neither sum).
//!
//! Nothing here is on the ring's push path. No label carries a user id: label values are
//! fixed sets (results, reasons, states), so cardinality is bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::audio::RingStats;
use crate::playback::{FailureKind, PlaybackStats};
use crate::room::TrackStats;
use crate::room::worker::WorkerCounts;
use crate::session::{Session, Totals};

const NAMESPACE: &str = "livekit_bridge";

/// What a scrape reads from the bridge.
pub struct Snapshot<'a> {
    pub sessions: &'a [std::sync::Arc<Session>],
    pub totals: &'a Totals,
    pub open_streams: i64,
    /// Sessions that may still join; None: no limit.
    pub capacity_left: Option<usize>,
    pub cpu_used: Option<f64>,
    pub playback: &'a PlaybackStats,
    /// Frames of target audio tracks, and the track streams open now.
    pub track_frames: TrackStats,
    /// The room workers' starts, exits, sessions and resources.
    pub workers: &'a WorkerCounts,
}

/// How a JoinRoom ended, as the `result` label of `joins_total` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinResult {
    Ok,
    ConnectFailed,
    Timeout,
    Superseded,
    RefusedCapacity,
    RefusedCpu,
    ShuttingDown,
    Invalid,
}

impl JoinResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ConnectFailed => "connect_failed",
            Self::Timeout => "timeout",
            Self::Superseded => "superseded",
            Self::RefusedCapacity => "refused_capacity",
            Self::RefusedCpu => "refused_cpu",
            Self::ShuttingDown => "shutting_down",
            Self::Invalid => "invalid",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    joins: IntCounterVec,
    join_seconds: Histogram,
    chunks_published: IntCounter,
    playbacks: IntCounterVec,
    playback_failures: IntCounterVec,
    bytes_fetched: IntCounter,
    decode_cpu: prometheus::Counter,
    delivery_delay: Histogram,
    sessions: IntGaugeVec,
    open_streams: IntGauge,
    capacity_left: IntGauge,
    cpu_used: prometheus::Gauge,
    playbacks_playing: IntGauge,
    ended: IntCounterVec,
    frames: IntCounterVec,
    track_frames: IntCounterVec,
    track_streams: IntGauge,
    published_underruns: IntCounter,
    workers_running: IntGauge,
    worker_starts: IntCounter,
    worker_exits: IntCounterVec,
    worker_sessions: IntGaugeVec,
    workers_retiring: IntGauge,
    workers_cpu: prometheus::Counter,
    workers_memory: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            joins: IntCounterVec::new(
                opts("joins_total", "JoinRoom requests by result."),
                &["result"],
            )?,
            join_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "join_seconds",
                    "Time from JoinRoom to a connected room, for joins that succeeded.",
                )
                .namespace(NAMESPACE)
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            )?,
            chunks_published: IntCounter::with_opts(opts(
                "client_chunks_published_total",
                "Client audio chunks from StreamAudio published into rooms.",
            ))?,
            playbacks: IntCounterVec::new(
                opts(
                    "playbacks_total",
                    "PlayAudio playbacks by outcome: started, completed, failed.",
                ),
                &["outcome"],
            )?,
            playback_failures: IntCounterVec::new(
                opts(
                    "playback_failures_total",
                    "Failed playbacks by kind of failure (http_status, fetch, timeout, \
                     too_large, unsupported, corrupt, room, stopped).",
                ),
                &["kind"],
            )?,
            bytes_fetched: IntCounter::with_opts(opts(
                "playback_fetched_bytes_total",
                "Audio file bytes PlayAudio downloaded.",
            ))?,
            decode_cpu: prometheus::Counter::with_opts(opts(
                "decode_cpu_seconds_total",
                "CPU time of PlayAudio's decoder processes that have exited (the kernel's \
                 account of this process's reaped children, less its room workers').",
            ))?,
            delivery_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "frame_delivery_delay_seconds",
                    "Delay from a frame's arrival from the room to its hand-off to the gRPC \
                     stream (millisecond resolution).",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            sessions: IntGaugeVec::new(
                opts(
                    "sessions",
                    "Sessions by state: connected, reconnecting, ended (kept for GetStatus).",
                ),
                &["state"],
            )?,
            open_streams: IntGauge::with_opts(opts("open_streams", "StreamAudio calls open."))?,
            capacity_left: IntGauge::with_opts(opts(
                "capacity_sessions_left",
                "Sessions that may still join before BRIDGE_MAX_SESSIONS (-1: no limit).",
            ))?,
            cpu_used: prometheus::Gauge::with_opts(opts(
                "machine_cpu_used_ratio",
                "The machine's busy share of all its cores over the last seconds, as \
                 admission control measures it.",
            ))?,
            playbacks_playing: IntGauge::with_opts(opts(
                "playbacks_playing",
                "PlayAudio playbacks playing now.",
            ))?,
            ended: IntCounterVec::new(
                opts("sessions_ended_total", "Sessions ended, by end reason."),
                &["reason"],
            )?,
            frames: IntCounterVec::new(
                opts(
                    "frames_total",
                    "Room audio frames by what became of them: received, delivered to a \
                     stream, skipped (lost by the sender), dropped (full, closed, contended).",
                ),
                &["outcome"],
            )?,
            track_frames: IntCounterVec::new(
                opts(
                    "track_frames_total",
                    "10 ms frames of the targets' audio tracks from LiveKit's library: routed \
                     to a session (then counted in frames_total), or unrouted (the stream was \
                     closed, or the frame was not 16 kHz mono).",
                ),
                &["outcome"],
            )?,
            track_streams: IntGauge::with_opts(opts(
                "track_streams",
                "Targets' audio tracks subscribed to and streaming now.",
            ))?,
            published_underruns: IntCounter::with_opts(opts(
                "published_underruns_total",
                "Gaps in the bridge's published tracks: audio resumed after the track's 10 ms \
                 clock had found no frame mid-utterance, because the publisher (StreamAudio \
                 or a playback) fell behind real time by more than 20 ms.",
            ))?,
            workers_running: IntGauge::with_opts(opts(
                "room_workers",
                "Room worker processes running now (each with its own LiveKit library).",
            ))?,
            worker_starts: IntCounter::with_opts(opts(
                "room_worker_starts_total",
                "Room worker processes started, replacements included.",
            ))?,
            worker_exits: IntCounterVec::new(
                opts(
                    "room_worker_exits_total",
                    "Room worker processes that ended, by how: the signal that killed it \
                     (SIGSEGV, SIGABRT, SIGKILL, ...), exit, unresponsive (silent for 5 s) or \
                     protocol (it sent what does not decode), each ending its sessions as \
                     room_lost; or retired (let go with no session left).",
                ),
                &["kind"],
            )?,
            worker_sessions: IntGaugeVec::new(
                opts(
                    "room_worker_sessions",
                    "Sessions on each room worker, by its position in the pool (0 to \
                     BRIDGE_ROOM_WORKERS - 1; a replacement takes its predecessor's), and on \
                     the workers being retired (worker=\"retiring\").",
                ),
                &["worker"],
            )?,
            workers_retiring: IntGauge::with_opts(opts(
                "room_workers_retiring",
                "Room workers being retired because LiveKit's library stranded a WebRTC \
                 runtime in them: they take no new session and exit after their last.",
            ))?,
            workers_cpu: prometheus::Counter::with_opts(opts(
                "room_workers_cpu_seconds_total",
                "CPU time of every room worker process, exited ones included (live ones read \
                 from /proc at each scrape). The process_* metrics are the front's own.",
            ))?,
            workers_memory: IntGauge::with_opts(opts(
                "room_workers_resident_memory_bytes",
                "Resident memory of the room workers running now, summed.",
            ))?,
            registry,
        };
        m.registry.register(Box::new(m.joins.clone()))?;
        m.registry.register(Box::new(m.join_seconds.clone()))?;
        m.registry.register(Box::new(m.chunks_published.clone()))?;
        m.registry.register(Box::new(m.playbacks.clone()))?;
        m.registry.register(Box::new(m.playback_failures.clone()))?;
        m.registry.register(Box::new(m.bytes_fetched.clone()))?;
        m.registry.register(Box::new(m.decode_cpu.clone()))?;
        m.registry.register(Box::new(m.delivery_delay.clone()))?;
        m.registry.register(Box::new(m.sessions.clone()))?;
        m.registry.register(Box::new(m.open_streams.clone()))?;
        m.registry.register(Box::new(m.capacity_left.clone()))?;
        m.registry.register(Box::new(m.cpu_used.clone()))?;
        m.registry.register(Box::new(m.playbacks_playing.clone()))?;
        m.registry.register(Box::new(m.ended.clone()))?;
        m.registry.register(Box::new(m.frames.clone()))?;
        m.registry.register(Box::new(m.track_frames.clone()))?;
        m.registry.register(Box::new(m.track_streams.clone()))?;
        m.registry
            .register(Box::new(m.published_underruns.clone()))?;
        m.registry.register(Box::new(m.workers_running.clone()))?;
        m.registry.register(Box::new(m.worker_starts.clone()))?;
        m.registry.register(Box::new(m.worker_exits.clone()))?;
        m.registry.register(Box::new(m.worker_sessions.clone()))?;
        m.registry.register(Box::new(m.workers_retiring.clone()))?;
        m.registry.register(Box::new(m.workers_cpu.clone()))?;
        m.registry.register(Box::new(m.workers_memory.clone()))?;
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// One JoinRoom's result and, when it succeeded, how long it took.
    pub fn join(&self, result: JoinResult, took: Option<std::time::Duration>) {
        self.joins.with_label_values(&[result.as_str()]).inc();
        if let Some(took) = took {
            self.join_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn chunk_published(&self) {
        self.chunks_published.inc();
    }

    /// A frame that arrived `delay_ms` before it was handed to a stream.
    pub fn delivered(&self, delay_ms: i64) {
        self.delivery_delay.observe(delay_ms.max(0) as f64 / 1000.0);
    }

    /// The exposition: state read from `s`, then every metric.
    pub fn render(&self, s: &Snapshot<'_>) -> String {
        let (mut connected, mut reconnecting, mut ended) = (0, 0, 0);
        let mut rings = s.totals.retired();
        for session in s.sessions {
            match (session.ended(), session.is_reconnecting()) {
                (Some(_), _) => ended += 1,
                (None, true) => reconnecting += 1,
                (None, false) => connected += 1,
            }
            rings.add(&session.ring_stats());
        }
        for (state, n) in [
            ("connected", connected),
            ("reconnecting", reconnecting),
            ("ended", ended),
        ] {
            self.sessions.with_label_values(&[state]).set(n);
        }
        self.open_streams.set(s.open_streams);
        self.capacity_left
            .set(s.capacity_left.map_or(-1, |n| n as i64));
        self.cpu_used.set(s.cpu_used.unwrap_or(0.0));
        self.playbacks_playing.set(s.playback.playing() as i64);
        let p = s.playback;
        for (outcome, n) in [
            ("started", &p.started),
            ("completed", &p.completed),
            ("failed", &p.failed),
        ] {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            advance(&self.playbacks.with_label_values(&[outcome]), n);
        }
        for (kind, n) in FailureKind::ALL.iter().zip(&p.failed_by) {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            advance(
                &self.playback_failures.with_label_values(&[kind.as_str()]),
                n,
            );
        }
        advance(
            &self.bytes_fetched,
            p.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed),
        );
        // Reaped room workers are the front's children too; their share is theirs.
        if let Some(seconds) = children_cpu_seconds().map(|c| c - s.workers.exited_cpu_seconds) {
            let shown = self.decode_cpu.get();
            if seconds > shown {
                self.decode_cpu.inc_by(seconds - shown);
            }
        }
        for (reason, n) in s.totals.ended() {
            advance(&self.ended.with_label_values(&[reason]), n);
        }
        let RingStats {
            received,
            skipped,
            delivered,
            dropped_full,
            dropped_closed,
            dropped_contended,
        } = rings;
        for (outcome, n) in [
            ("received", received),
            ("delivered", delivered),
            ("skipped", skipped),
            ("dropped_full", dropped_full),
            ("dropped_closed", dropped_closed),
            ("dropped_contended", dropped_contended),
        ] {
            advance(&self.frames.with_label_values(&[outcome]), n);
        }
        let t = s.track_frames;
        advance(&self.track_frames.with_label_values(&["routed"]), t.routed);
        advance(
            &self.track_frames.with_label_values(&["unrouted"]),
            t.unrouted,
        );
        self.track_streams.set(t.streams as i64);
        advance(&self.published_underruns, t.published_underruns);
        let w = s.workers;
        self.workers_running.set(w.running as i64);
        advance(&self.worker_starts, w.starts);
        for (kind, n) in &w.exits {
            advance(&self.worker_exits.with_label_values(&[kind]), *n);
        }
        for (position, n) in w.sessions.iter().enumerate() {
            self.worker_sessions
                .with_label_values(&[&position.to_string()])
                .set(*n as i64);
        }
        self.worker_sessions
            .with_label_values(&["retiring"])
            .set(w.draining_sessions as i64);
        self.workers_retiring.set(w.draining as i64);
        let shown = self.workers_cpu.get();
        if w.cpu_seconds > shown {
            self.workers_cpu.inc_by(w.cpu_seconds - shown);
        }
        self.workers_memory.set(w.resident_bytes as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// CPU seconds (user and system) of this process's children that have been waited for:
/// `cutime` and `cstime` of `/proc/self/stat`, in USER_HZ (100 per second on Linux).
fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may contain spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((ticks(16)? + ticks(17)?) as f64 / 100.0)
}

/// Moves a counter up to `total`; never down.
fn advance(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_the_prefix_and_no_user_label() {
        let m = Metrics::new().expect("metrics");
        m.join(JoinResult::Ok, Some(std::time::Duration::from_millis(300)));
        m.join(JoinResult::RefusedCapacity, None);
        m.chunk_published();
        m.delivered(3);
        let totals = Totals::default();
        let text = m.render(&Snapshot {
            sessions: &[],
            totals: &totals,
            open_streams: 2,
            capacity_left: Some(7),
            cpu_used: Some(0.25),
            playback: &PlaybackStats::default(),
            track_frames: TrackStats {
                routed: 500,
                unrouted: 3,
                streams: 1,
                published_underruns: 2,
            },
            workers: &WorkerCounts {
                starts: 3,
                exits: [("SIGSEGV", 1)].into_iter().collect(),
                sessions: vec![4, 5],
                draining: 1,
                draining_sessions: 6,
                running: 3,
                cpu_seconds: 1.5,
                exited_cpu_seconds: 0.5,
                resident_bytes: 1 << 20,
            },
        });
        for line in [
            "livekit_bridge_room_workers 3",
            "livekit_bridge_room_workers_retiring 1",
            "livekit_bridge_room_worker_sessions{worker=\"retiring\"} 6",
            "livekit_bridge_room_worker_starts_total 3",
            "livekit_bridge_room_worker_exits_total{kind=\"SIGSEGV\"} 1",
            "livekit_bridge_room_worker_sessions{worker=\"1\"} 5",
            "livekit_bridge_room_workers_cpu_seconds_total 1.5",
            "livekit_bridge_room_workers_resident_memory_bytes 1048576",
            "livekit_bridge_track_frames_total{outcome=\"routed\"} 500",
            "livekit_bridge_track_frames_total{outcome=\"unrouted\"} 3",
            "livekit_bridge_track_streams 1",
            "livekit_bridge_published_underruns_total 2",
            "livekit_bridge_joins_total{result=\"ok\"} 1",
            "livekit_bridge_joins_total{result=\"refused_capacity\"} 1",
            "livekit_bridge_join_seconds_count 1",
            "livekit_bridge_client_chunks_published_total 1",
            "livekit_bridge_playbacks_total{outcome=\"failed\"} 0",
            "livekit_bridge_playback_failures_total{kind=\"fetch\"} 0",
            "livekit_bridge_playback_fetched_bytes_total 0",
            "livekit_bridge_decode_cpu_seconds_total",
            "livekit_bridge_frame_delivery_delay_seconds_count 1",
            "livekit_bridge_open_streams 2",
            "livekit_bridge_capacity_sessions_left 7",
            "livekit_bridge_machine_cpu_used_ratio 0.25",
            "livekit_bridge_sessions_ended_total{reason=\"idle\"} 0",
            "livekit_bridge_frames_total{outcome=\"received\"} 0",
            "livekit_bridge_sessions{state=\"connected\"} 0",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("user_id"), "no user label");
    }

    #[test]
    fn scrape_time_counters_never_go_down() {
        let c = IntCounter::new("c", "c").expect("counter");
        advance(&c, 10);
        advance(&c, 7);
        assert_eq!(c.get(), 10);
        advance(&c, 12);
        assert_eq!(c.get(), 12);
    }
}
