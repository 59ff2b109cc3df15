//! `Registry`: user id to session, by generation.
//!
//! Every JoinRoom draws a generation from one counter before it connects, and installs its
//! session afterwards only if no later JoinRoom or LeaveRoom for the user has happened in the
//! meantime; the session it displaces is handed back to be closed. Removal is by session, never
//! by user id alone, so a stale stream, LeaveRoom race or cleanup cannot remove a successor.
//! The map's mutex is held only for map operations, never across an await or a room call.
//!
//! Joins for one user connect one at a time, in turn ([`JoinTicket::turn`]), and a join whose
//! turn comes after a newer one began gives up without connecting. LiveKit lets one participant
//! per identity stay (a newer one kicks the older), so connects must happen in the order the
//! registry ranks them: the one it installs is then the one LiveKit keeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Session;

#[derive(Default)]
struct Slot {
    /// JoinRooms with a generation at or below this lost to a later LeaveRoom.
    floor: u64,
    /// JoinRooms for this user still connecting.
    pending: u32,
    /// Held by the JoinRoom of this user that is connecting.
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the newest JoinRoom in flight loses to a newer one, a LeaveRoom or the
    /// drain: it stops connecting (or waiting to) at once.
    voided: CancellationToken,
    session: Option<Arc<Session>>,
}

impl Slot {
    fn is_vacant(&self) -> bool {
        self.pending == 0 && self.session.is_none()
    }
}

/// How many sessions a registry holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Users with a registered session.
    pub registered: usize,
    /// Of those, the ones whose room is connected.
    pub connected: usize,
}

#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
    generations: AtomicU64,
    /// Set by `drain`: no JoinRoom may start afterwards. Read and written only under the
    /// slots' lock (Relaxed: the lock orders it), so a join either starts before the drain,
    /// which then voids it, or is refused.
    drained: AtomicBool,
}

/// The registry has been drained (the bridge is shutting down); no JoinRoom may start.
#[derive(Debug, PartialEq, Eq)]
pub struct Drained;

/// A later JoinRoom or a LeaveRoom for the same user came first; this join's room must close.
#[derive(Debug, PartialEq, Eq)]
pub struct Superseded;

/// A JoinRoom in progress. Dropping it unfinished (the join failed) forgets it.
pub struct JoinTicket {
    registry: Arc<Registry>,
    user_id: String,
    generation: u64,
    voided: CancellationToken,
    done: bool,
}

impl JoinTicket {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Resolves when this join can no longer win (a newer JoinRoom, a LeaveRoom, the drain):
    /// whatever it is waiting for can be dropped.
    pub fn voided(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.voided.cancelled()
    }

    /// Waits for this join's turn to connect: earlier joins of the user have connected (or
    /// failed). Superseded if a newer join or a LeaveRoom came meanwhile; it should then not
    /// connect at all. Hold the turn until the session is installed.
    pub async fn turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, Superseded> {
        let connecting = {
            let slots = self.registry.lock();
            slots.get(&self.user_id).map(|s| s.connecting.clone())
        };
        let turn = connecting.ok_or(Superseded)?.lock_owned().await;
        if self.voided.is_cancelled() {
            return Err(Superseded);
        }
        Ok(turn)
    }

    /// Installs `session` unless superseded. Returns the session it replaced, which the caller
    /// closes.
    pub fn install(mut self, session: Arc<Session>) -> Result<Option<Arc<Session>>, Superseded> {
        self.done = true;
        let mut slots = self.registry.lock();
        let slot = slots.entry(self.user_id.clone()).or_default();
        slot.pending -= 1;
        let newer = slot
            .session
            .as_ref()
            .is_some_and(|s| s.generation() > self.generation);
        if self.generation <= slot.floor || newer {
            if slot.is_vacant() {
                slots.remove(&self.user_id);
            }
            return Err(Superseded);
        }
        Ok(slot.session.replace(session))
    }
}

impl Drop for JoinTicket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut slots = self.registry.lock();
        if let Some(slot) = slots.get_mut(&self.user_id) {
            slot.pending -= 1;
            // The join failed: a kick of the current session is no longer ours.
            if let (0, Some(current)) = (slot.pending, &slot.session) {
                current.expect_replacement_no_more();
            }
            if slot.is_vacant() {
                slots.remove(&self.user_id);
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_generation(&self) -> u64 {
        // Relaxed: always drawn under the slots' lock, which orders it with the slots.
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Starts a JoinRoom for `user_id`, drawing its generation, unless the registry has been
    /// drained.
    pub fn begin_join(self: &Arc<Self>, user_id: &str) -> Result<JoinTicket, Drained> {
        let mut slots = self.lock();
        if self.drained.load(Ordering::Relaxed) {
            return Err(Drained);
        }
        let generation = self.next_generation();
        let slot = slots.entry(user_id.to_string()).or_default();
        slot.pending += 1;
        let voided = CancellationToken::new();
        std::mem::replace(&mut slot.voided, voided.clone()).cancel();
        if let Some(current) = &slot.session {
            current.expect_replacement();
        }
        Ok(JoinTicket {
            registry: self.clone(),
            user_id: user_id.to_string(),
            generation,
            voided,
            done: false,
        })
    }

    /// LeaveRoom: takes the user's session out, and voids JoinRooms still connecting.
    pub fn leave(&self, user_id: &str) -> Option<Arc<Session>> {
        let mut slots = self.lock();
        let floor = self.next_generation();
        let slot = slots.get_mut(user_id)?;
        slot.floor = floor;
        slot.voided.cancel();
        let session = slot.session.take();
        if slot.is_vacant() {
            slots.remove(user_id);
        }
        session
    }

    /// Removes `session` if it is still the one registered for its user.
    pub fn remove(&self, session: &Session) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(session.user_id()) else {
            return false;
        };
        if slot
            .session
            .as_ref()
            .is_none_or(|s| s.generation() != session.generation())
        {
            return false;
        }
        slot.session = None;
        if slot.is_vacant() {
            slots.remove(session.user_id());
        }
        true
    }

    pub fn get(&self, user_id: &str) -> Option<Arc<Session>> {
        self.lock().get(user_id)?.session.clone()
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock()
            .values()
            .filter_map(|s| s.session.clone())
            .collect()
    }

    /// Takes every session out, voids every JoinRoom in flight and refuses later ones
    /// (shutdown).
    pub fn drain(&self) -> Vec<Arc<Session>> {
        let mut slots = self.lock();
        self.drained.store(true, Ordering::Relaxed);
        let floor = self.next_generation();
        let sessions = slots.values_mut().filter_map(|s| {
            s.floor = floor;
            s.voided.cancel();
            s.session.take()
        });
        let sessions: Vec<_> = sessions.collect();
        slots.retain(|_, s| !s.is_vacant());
        sessions
    }

    /// Forgets sessions that ended (their room was lost) more than `keep` ago. Until then
    /// GetStatus reports why they ended.
    pub fn sweep(&self, keep: Duration) -> usize {
        let mut slots = self.lock();
        let mut removed = 0;
        for slot in slots.values_mut() {
            if slot.session.as_ref().and_then(|s| s.ended_for()) > Some(keep) {
                slot.session = None;
                removed += 1;
            }
        }
        slots.retain(|_, s| !s.is_vacant());
        removed
    }

    /// Users with a registered session, and those of them whose room is connected.
    pub fn counts(&self) -> SessionCounts {
        let slots = self.lock();
        let sessions = slots.values().filter_map(|s| s.session.as_ref());
        sessions.fold(SessionCounts::default(), |c, s| SessionCounts {
            registered: c.registered + 1,
            connected: c.connected + usize::from(s.is_connected()),
        })
    }

    /// Users with an entry (a session or a join in flight); for leak checks.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::RingConfig;
    use crate::room::ConnectRequest;
    use crate::room::sim::SimBackend;
    use crate::session::EndReason;

    async fn session(user: &str, generation: u64) -> Arc<Session> {
        let request = ConnectRequest {
            user_id: user.into(),
            url: "sim://silent".into(),
            token: String::new(),
            room_name: user.into(),
            target_identity: user.into(),
            timeout: Duration::from_secs(5),
            audio_source: crate::room::AudioSource::Both,
            ring: None,
        };
        let backend = SimBackend::default();
        let totals = Arc::default();
        Session::connect(
            user,
            generation,
            &backend,
            request,
            RingConfig::default(),
            totals,
        )
        .await
        .expect("a simulated room connects")
    }

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    #[tokio::test]
    async fn the_latest_join_wins_whichever_connects_first() {
        let r = registry();
        let first = r.begin_join("u").expect("open");
        let second = r.begin_join("u").expect("open");
        assert!(second.generation() > first.generation());
        let (g1, g2) = (first.generation(), second.generation());
        let newer = session("u", g2).await;
        assert!(second.install(newer).expect("installs").is_none());
        let older = session("u", g1).await;
        assert_eq!(first.install(older.clone()).err(), Some(Superseded));
        older.close(EndReason::Superseded).await;
        assert_eq!(r.get("u").map(|s| s.generation()), Some(g2));

        let third = r.begin_join("u").expect("open");
        let g3 = third.generation();
        let replaced = third.install(session("u", g3).await).expect("installs");
        assert_eq!(replaced.map(|s| s.generation()), Some(g2));
        assert_eq!(
            r.counts(),
            SessionCounts {
                registered: 1,
                connected: 1
            }
        );
    }

    #[tokio::test]
    async fn removal_is_by_session_never_by_user() {
        let r = registry();
        let t1 = r.begin_join("u").expect("open");
        let s1 = session("u", t1.generation()).await;
        assert!(t1.install(s1.clone()).expect("installs").is_none());
        let t2 = r.begin_join("u").expect("open");
        let s2 = session("u", t2.generation()).await;
        assert!(t2.install(s2.clone()).expect("installs").is_some());
        assert!(
            !r.remove(&s1),
            "a replaced session cannot remove its successor"
        );
        assert_eq!(r.get("u").map(|s| s.generation()), Some(s2.generation()));
        assert!(r.remove(&s2));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn leave_voids_joins_in_flight_and_failed_joins_are_forgotten() {
        let r = registry();
        let in_flight = r.begin_join("u").expect("open");
        assert!(r.leave("u").is_none(), "nothing installed yet");
        let late = session("u", in_flight.generation()).await;
        assert_eq!(in_flight.install(late).err(), Some(Superseded));
        assert!(r.is_empty());

        let failed = r.begin_join("v").expect("open");
        assert_eq!(r.len(), 1);
        drop(failed);
        assert!(r.is_empty(), "a join that failed leaves nothing behind");
    }

    #[tokio::test]
    async fn a_drained_registry_refuses_new_joins_and_voids_those_in_flight() {
        let r = registry();
        let t = r.begin_join("u").expect("open");
        let installed = session("u", t.generation()).await;
        assert!(t.install(installed).expect("installs").is_none());
        let in_flight = r.begin_join("v").expect("open");
        let drained = r.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(r.begin_join("w").err(), Some(Drained));
        let late = session("v", in_flight.generation()).await;
        assert_eq!(in_flight.install(late).err(), Some(Superseded));
        assert!(r.is_empty());
    }
}
