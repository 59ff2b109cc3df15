//! The backends of this process, chosen by a room URL's scheme.

use std::sync::Arc;

use super::worker::{WorkerBackend, WorkerCounts, WorkerSettings};
use super::{RoomBackend, RoomError, TrackStats, sim};

/// Where `sim://` rooms run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimRooms {
    /// In this process.
    #[default]
    Front,
    /// In the room workers, as real rooms are: the workers' isolation, their costs and their
    /// faults, without a LiveKit server. Rooms in different workers share no simulated server.
    Workers,
}

/// The backends of this process, chosen by URL scheme.
pub struct Backends {
    /// The simulated rooms (`sim://`) of this process; tests read its state.
    pub sim: Arc<sim::SimBackend>,
    sim_rooms: SimRooms,
    /// Real rooms, in room worker processes.
    workers: Arc<WorkerBackend>,
}

impl Backends {
    /// The backends, with real rooms in workers run as `workers` says, and `sim://` rooms
    /// where `sim_rooms` says.
    pub fn new(workers: WorkerSettings, sim_rooms: SimRooms) -> Self {
        Self {
            sim: Arc::new(sim::SimBackend::default()),
            sim_rooms,
            workers: WorkerBackend::new(workers),
        }
    }

    /// The room workers' starts, exits and sessions (the metrics).
    pub fn worker_counts(&self) -> WorkerCounts {
        self.workers.counts()
    }

    /// The backend for `url`, or why there is none.
    pub fn for_url(&self, url: &str) -> Result<Arc<dyn RoomBackend>, RoomError> {
        match super::scheme(url).as_deref() {
            Some("sim") if self.sim_rooms == SimRooms::Front => Ok(self.sim.clone()),
            Some("sim" | "ws" | "wss") => Ok(self.workers.clone()),
            _ => Err(RoomError::InvalidUrl(format!(
                "{url:?} must start with ws://, wss:// or sim://"
            ))),
        }
    }

    fn all(&self) -> [&dyn RoomBackend; 2] {
        [self.sim.as_ref(), self.workers.as_ref()]
    }

    /// Whether every kind of room can be joined now; the first reason one cannot.
    pub fn ready(&self) -> Result<(), String> {
        self.all().iter().try_for_each(|b| b.ready())
    }

    /// Track frames of every backend, summed.
    pub fn track_stats(&self) -> TrackStats {
        self.all()
            .iter()
            .map(|b| b.track_stats())
            .fold(TrackStats::default(), |a, b| TrackStats {
                routed: a.routed + b.routed,
                unrouted: a.unrouted + b.unrouted,
                streams: a.streams + b.streams,
                published_underruns: a.published_underruns + b.published_underruns,
            })
    }
}

impl Default for Backends {
    fn default() -> Self {
        Self::new(WorkerSettings::default(), SimRooms::Front)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_backends() {
        let b = Backends::default();
        assert!(b.for_url("sim://tone").is_ok());
        assert!(b.for_url("SIM://tone").is_ok());
        assert!(b.for_url("wss://x").is_ok());
        assert!(b.for_url("ws://x").is_ok());
        assert!(matches!(
            b.for_url("http://x"),
            Err(RoomError::InvalidUrl(_))
        ));
        assert!(matches!(b.for_url(""), Err(RoomError::InvalidUrl(_))));
        let is_sim = |b: &Backends, url: &str| {
            let chosen = b.for_url(url).expect("a backend");
            std::ptr::addr_eq(Arc::as_ptr(&chosen), Arc::as_ptr(&b.sim))
        };
        assert!(is_sim(&b, "sim://tone"));
        assert!(!is_sim(&b, "wss://x"));
        let in_workers = Backends::new(WorkerSettings::default(), SimRooms::Workers);
        assert!(!is_sim(&in_workers, "sim://tone"));
    }

    #[test]
    fn a_missing_livekit_library_is_not_ready_and_says_where() {
        let b = Backends::new(
            WorkerSettings {
                library: "/nonexistent/liblivekit_ffi.so".into(),
                ..WorkerSettings::default()
            },
            SimRooms::Front,
        );
        let why = b.ready().expect_err("not ready");
        assert!(why.contains("/nonexistent/liblivekit_ffi.so"), "{why}");
        assert_eq!(b.track_stats(), TrackStats::default());
    }
}
