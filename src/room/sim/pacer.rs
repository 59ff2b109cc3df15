//! The pacers: a small process-wide pool of OS threads that runs every simulated room's
//! clock-driven callbacks (the tone's packets, the reliable channel's chatter and events), the
//! way LiveKit's library calls back from a handful of its own threads however many rooms are
//! open. A room costs a few hundred bytes of state here instead of two threads and their
//! stacks, so a load test measures the bridge, not the simulation.
//!
//! Each pacer keeps its jobs in a timer heap and sleeps until the earliest is due (or a new job
//! arrives), then runs every job due within [`BATCH`]. A job's step runs on its pacer's thread, never on the caller's, and returns when it
//! wants to run next, or `None` when it is finished; a finished job is dropped on that thread.
//! A room's jobs go to different pacers ([`lane`]), so its lossy and reliable callbacks run at
//! the same time, as a real room's do.
//!
//! Locking: the inbox mutex is held only to hand a job over; the heap is the pacer's own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::{self, Thread};
use std::time::Instant;

/// Jobs due this soon run in the current wake rather than the pacer sleeping for them: one
/// wake per 10 ms frame per room would be 100,000 a second at 1,000 rooms, each a context
/// switch of the pacer and of whichever bridge thread it wakes. A packet leaves at most this
/// much early, well inside the jitter a real room's packets arrive with.
const BATCH: std::time::Duration = std::time::Duration::from_micros(500);

/// Work a pacer runs: called when due; returns when to run next, or `None` when finished.
pub trait Job: Send + 'static {
    fn step(&mut self, now: Instant) -> Option<Instant>;
}

/// How many pacer threads the process runs: enough for a room's two callback paths to run at
/// once, and no more than a few, as LiveKit's library.
fn pacer_count() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

struct Lane {
    inbox: Mutex<Vec<Box<dyn Job>>>,
    thread: Thread,
}

struct Pool {
    lanes: Vec<Lane>,
}

fn pool() -> Result<&'static Pool, String> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(start_pool)
        .as_ref()
        .map_err(std::clone::Clone::clone)
}

fn start_pool() -> Result<Pool, String> {
    let mut lanes = Vec::new();
    for i in 0..pacer_count() {
        let handle = thread::Builder::new()
            .name(format!("sim-pacer-{i}"))
            .spawn(move || run(i))
            .map_err(|e| format!("cannot start the simulated rooms' pacer thread: {e}"))?;
        lanes.push(Lane {
            inbox: Mutex::new(Vec::new()),
            thread: handle.thread().clone(),
        });
    }
    Ok(Pool { lanes })
}

/// The pacer for a room's `path`-th callback path (0, 1, ...): consecutive paths of one room
/// land on different pacers, and rooms spread over all of them.
pub fn lane(room: u64, path: usize) -> usize {
    (room as usize).wrapping_add(path)
}

/// Hands `job` to pacer `lane` (modulo their number); its first step runs at once.
pub fn schedule(lane: usize, job: Box<dyn Job>) -> Result<(), String> {
    let pool = pool()?;
    let lane = &pool.lanes[lane % pool.lanes.len()];
    lane.inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(job);
    lane.thread.unpark();
    Ok(())
}

/// A pacer's loop. Jobs live in `jobs` (a slot per job, reused), due times in `heap`.
fn run(index: usize) {
    // Blocks until the pool is built (this thread is started while it is being built).
    let Ok(pool) = pool() else {
        return; // another pacer could not start; connect reports it
    };
    let inbox = &pool.lanes[index].inbox;
    let mut jobs: Vec<Option<Box<dyn Job>>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut arrived: Vec<Box<dyn Job>> = Vec::new();
    loop {
        std::mem::swap(
            &mut arrived,
            &mut inbox.lock().unwrap_or_else(PoisonError::into_inner),
        );
        let now = Instant::now();
        for job in arrived.drain(..) {
            let slot = match free.pop() {
                Some(slot) => {
                    jobs[slot] = Some(job);
                    slot
                }
                None => {
                    jobs.push(Some(job));
                    jobs.len() - 1
                }
            };
            heap.push(Reverse((now, slot)));
        }
        while let Some(&Reverse((due, slot))) = heap.peek() {
            let now = Instant::now();
            if due > now + BATCH {
                break;
            }
            heap.pop();
            let next = jobs[slot].as_mut().and_then(|job| job.step(now));
            match next {
                Some(at) => heap.push(Reverse((at, slot))),
                None => {
                    jobs[slot] = None;
                    free.push(slot);
                }
            }
        }
        match heap.peek() {
            Some(&Reverse((due, _))) => {
                thread::park_timeout(due.saturating_duration_since(Instant::now()))
            }
            None => thread::park(),
        }
    }
}
