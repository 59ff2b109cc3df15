//! A session's playbacks: at most one per track, which request plays where, and how each is
//! told to stop and says it is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The longest a stop waits for a playback's workers to be gone.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Why a playback was stopped before it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// StopAudio, with its reason.
    StopAudio(String),
    /// A newer PlayAudio on the same track (or with `stop_other`), by request id.
    Interrupted(String),
}

impl StopCause {
    pub(super) fn describe(&self) -> String {
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
pub(super) struct Control {
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

    /// Resolves when the playback is told to stop; what stopped it.
    pub(super) async fn stopped(&self) -> String {
        self.stop.cancelled().await;
        self.cause
            .get()
            .map_or_else(|| "stopped".into(), StopCause::describe)
    }

    /// The playback is gone: its workers exited and its last event is queued.
    pub(super) fn done(&self) {
        self.done.cancel();
    }

    /// Waits (at most [`STOP_WAIT`]) for the playback to be gone.
    pub(super) async fn gone(&self) {
        let _ = tokio::time::timeout(STOP_WAIT, self.done.cancelled()).await;
    }
}

struct Active {
    id: u64,
    track_id: i32,
    request_id: String,
    control: Arc<Control>,
}

/// A playback just registered in a [`Playbacks`] table.
pub(super) struct Begun {
    pub id: u64,
    pub control: Arc<Control>,
    /// The playbacks it interrupted, told to stop; it waits for them before its first frame.
    pub interrupted: Vec<Arc<Control>>,
}

/// A session's playbacks, at most one per track.
#[derive(Default)]
pub struct Playbacks {
    next_id: AtomicU64,
    active: Mutex<Vec<Active>>,
}

impl Playbacks {
    fn lock(&self) -> MutexGuard<'_, Vec<Active>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a playback on `track_id` and takes out the ones it interrupts: the one on its
    /// track, or with `stop_other` every one.
    pub(super) fn begin(&self, track_id: i32, request_id: &str, stop_other: bool) -> Begun {
        // Relaxed: the id only has to be unique; the table's mutex orders everything else.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(Control::default());
        let mut active = self.lock();
        let mut interrupted = Vec::new();
        active.retain(|a| {
            let hit = stop_other || a.track_id == track_id;
            if hit {
                a.control
                    .stop(StopCause::Interrupted(request_id.to_string()));
                interrupted.push(a.control.clone());
            }
            !hit
        });
        active.push(Active {
            id,
            track_id,
            request_id: request_id.to_string(),
            control: control.clone(),
        });
        Begun {
            id,
            control,
            interrupted,
        }
    }

    pub(super) fn finish(&self, id: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_track_holds_one_playback_and_stop_other_takes_all() {
        let table = Playbacks::default();
        let a = table.begin(0, "a", false);
        let b = table.begin(1, "b", false);
        assert!(a.interrupted.is_empty() && b.interrupted.is_empty());
        let c = table.begin(0, "c", false);
        assert_eq!(c.interrupted.len(), 1);
        assert_eq!(a.control.stopped().await, "interrupted by request \"c\"");
        let mut playing = table.playing();
        playing.sort();
        assert_eq!(playing, [(0, "c".to_string()), (1, "b".to_string())]);
        let d = table.begin(2, "d", true);
        assert_eq!(d.interrupted.len(), 2);
        assert_eq!(table.playing(), [(2, "d".to_string())]);
    }

    #[tokio::test]
    async fn stop_waits_for_the_playback_to_be_gone() {
        let table = Arc::new(Playbacks::default());
        let begun = table.begin(0, "r", false);
        let control = begun.control.clone();
        let player = tokio::spawn(async move {
            let why = control.stopped().await;
            control.done();
            why
        });
        let stopped = table
            .stop(&StopTarget::Track(0), StopCause::StopAudio("bye".into()))
            .await;
        assert_eq!(stopped, ["r"]);
        assert!(begun.control.done.is_cancelled());
        assert_eq!(player.await.expect("ran"), "stopped by StopAudio: bye");
        assert!(table.playing().is_empty());
    }
}
