//! What every session of a bridge did, ended ones included: counters that never go backwards,
//! for the metrics. A session counts its end here when it closes (on whatever thread closes
//! it: a fixed array of atomics, no lock, no allocation) and hands its ring's final counters
//! over when it is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::EndCode;
use crate::audio::RingStats;

#[derive(Default)]
pub struct Totals {
    /// Sessions ended, by [`EndCode`]. Relaxed: statistics, read on their own.
    ended: [AtomicU64; EndCode::ALL.len()],
    /// The ring counters of sessions already dropped.
    retired: Mutex<RingStats>,
}

impl Totals {
    /// One more session ended with `code`.
    pub(super) fn count_end(&self, code: EndCode) {
        self.ended[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn retire(&self, stats: RingStats) {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&stats);
    }

    /// Sessions ended so far, by end reason code (every code, zeros included).
    pub fn ended(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        EndCode::ALL
            .iter()
            .zip(&self.ended)
            .map(|(code, n)| (code.as_str(), n.load(Ordering::Relaxed)))
    }

    /// The ring counters of every session already dropped. Add the live sessions' own for the
    /// bridge's totals (a session between leaving the registry and being dropped is in
    /// neither for that moment, so a reader that must never see a total go backwards keeps
    /// the highest it has seen).
    pub fn retired(&self) -> RingStats {
        *self.retired.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::EndReason;
    use std::time::Duration;

    #[test]
    fn every_reason_counts_under_its_own_code() {
        let totals = Totals::default();
        let reasons = [
            EndReason::Left(String::new()),
            EndReason::Replaced,
            EndReason::ReplacedElsewhere(String::new()),
            EndReason::Removed(String::new()),
            EndReason::RoomDeleted(String::new()),
            EndReason::Superseded,
            EndReason::RoomLost(String::new()),
            EndReason::ClientGone(String::new()),
            EndReason::Shutdown,
            EndReason::Idle(Duration::from_secs(300)),
        ];
        for (i, r) in reasons.iter().enumerate() {
            assert_eq!(EndCode::ALL[r.code() as usize], r.code());
            for _ in 0..=i {
                totals.count_end(r.code());
            }
        }
        let counted: Vec<_> = totals.ended().collect();
        assert_eq!(counted.len(), reasons.len());
        for (i, (code, n)) in counted.into_iter().enumerate() {
            assert_eq!((code, n), (reasons[i].code().as_str(), i as u64 + 1));
        }
    }
}
