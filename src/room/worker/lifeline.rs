//! A worker's lifeline: how the front learns that a worker is dying as its main thread begins
//! to exit, before the kernel has torn down its memory and closed its descriptors.
//!
//! A dying process's descriptors (its end of the control socket among them) are closed only
//! once its last thread has exited, after its address space is torn down; SIGCHLD and a pidfd
//! come later still. On a busy machine that takes seconds: a killed worker's socket once
//! closed 1.9 s after the kill while the rest of the bridge ran without a stall. A thread's
//! exit, though, whatever ended it (SIGKILL too), begins with the kernel releasing the robust
//! futexes the thread holds: it marks each owner-dead and wakes a waiter.
//!
//! **Protocol.** The front initialises a robust, process-shared mutex at the start of the
//! region before it starts the worker ([`init`]). The worker's main thread locks it before its
//! `HelloAck` and never unlocks it ([`hold`]). Once the front has the `HelloAck`, a thread of
//! the front blocks locking it ([`watch`]); the lock returns `EOWNERDEAD` when the worker's main
//! thread exits. The kernel sets that thread's exit code (the process's wait status, the group's
//! for a fatal signal) just before it releases its robust futexes, and `/proc/<pid>/stat` shows
//! it until the process is reaped, so the front also knows how the worker is ending.
//!
//! When the front wakes, every thread of the worker has been told to exit (a fatal signal or
//! `exit_group` signals all of them before the first one exits): none starts another push. A
//! push already running on another core when the signal came can finish; the ring's abandon
//! allows for that (`crate::audio::mapped`, step 5).

// Unsafe code here: the pthread calls on the mutex in the shared memory.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};

use tokio::sync::oneshot;

use super::process;
use super::region::Region;

// glibc's values (pthread.h); the libc crate does not name them for glibc.
const PTHREAD_PROCESS_SHARED: libc::c_int = 1;
const PTHREAD_MUTEX_ROBUST: libc::c_int = 1;

fn check(what: &str, code: libc::c_int) -> std::io::Result<()> {
    match code {
        0 => Ok(()),
        e => Err(std::io::Error::other(format!(
            "the worker's lifeline: {what}: {}",
            std::io::Error::from_raw_os_error(e)
        ))),
    }
}

/// Makes the region's lifeline a robust, process-shared mutex (the front's side, before the
/// worker is started).
pub fn init(region: &Region) -> std::io::Result<()> {
    let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let attr = attr.as_mut_ptr();
    // SAFETY: `attr` points to writable storage for the attributes, initialised by the first
    // call before any other use and destroyed once, after the mutex is initialised; the
    // region's lifeline is inside its mapping, aligned and sized for a mutex (checked at
    // compile time in `region`), and no process uses it yet.
    unsafe {
        check("attributes", libc::pthread_mutexattr_init(attr))?;
        let made = check(
            "process-shared",
            libc::pthread_mutexattr_setpshared(attr, PTHREAD_PROCESS_SHARED),
        )
        .and_then(|()| {
            check(
                "robust",
                libc::pthread_mutexattr_setrobust(attr, PTHREAD_MUTEX_ROBUST),
            )
        })
        .and_then(|()| {
            check(
                "init",
                libc::pthread_mutex_init(region.lifeline().as_ptr(), attr),
            )
        });
        libc::pthread_mutexattr_destroy(attr);
        made
    }
}

/// The region whose lifeline this process holds, mapped until the process ends (the kernel
/// reads the mutex when the holder exits).
static HELD: OnceLock<Arc<Region>> = OnceLock::new();

/// Locks the lifeline for the rest of this process's life (the worker's side). Must be called
/// on the main thread, whose exit code `/proc/<pid>/stat` shows, and once.
pub fn hold(region: Arc<Region>) -> std::io::Result<()> {
    // SAFETY: plain system calls without arguments.
    if unsafe { libc::gettid() != libc::getpid() } {
        return Err(std::io::Error::other(
            "the worker's lifeline must be held by its main thread",
        ));
    }
    let region = HELD.get_or_init(|| region);
    // SAFETY: the front initialised the mutex before this process started; the region stays
    // mapped (in `HELD`) until the process ends.
    check("lock", unsafe {
        libc::pthread_mutex_lock(region.lifeline().as_ptr())
    })
}

/// Watches a worker's lifeline from a thread of the front (after the worker's `HelloAck`).
/// Resolves when the worker's main thread has begun to exit, with the process's wait status
/// if `/proc` still shows it; never (the sender dropped) if the lock did not end owner-dead.
pub fn watch(
    region: Arc<Region>,
    pid: u32,
) -> std::io::Result<oneshot::Receiver<Option<ExitStatus>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("worker-lifeline".into())
        .spawn(move || {
            let mutex = region.lifeline().as_ptr();
            // SAFETY: the mutex was initialised by `init`; `region` keeps it mapped for this
            // thread's life.
            let locked = unsafe { libc::pthread_mutex_lock(mutex) };
            if locked != libc::EOWNERDEAD {
                tracing::warn!(
                    pid,
                    code = locked,
                    "room worker's lifeline ended without its owner's death; its death shows \
                     when its control socket closes"
                );
                return;
            }
            let _ = tx.send(process::exit_status(pid));
            // Off this thread's robust list before the memory can go. SAFETY: this thread
            // holds the mutex, just made consistent.
            unsafe {
                libc::pthread_mutex_consistent(mutex);
                libc::pthread_mutex_unlock(mutex);
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::worker::region::Shape;
    use std::time::Duration;

    /// The watcher wakes when the holding thread ends (a thread's exit releases its robust
    /// futexes as a process's does); a mutex that is not robust would leave it blocked.
    #[test]
    fn the_watcher_wakes_when_the_holder_ends() {
        let shape = Shape {
            slots: 1,
            capacity: 64,
            tracks: 1,
        };
        let region = Arc::new(Region::create(shape).expect("a region"));
        init(&region).expect("a lifeline");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let region = region.clone();
            std::thread::spawn(move || {
                // SAFETY: initialised above; `region` keeps it mapped.
                let r = unsafe { libc::pthread_mutex_lock(region.lifeline().as_ptr()) };
                held_tx.send(r).expect("the test waits");
                let _ = end_rx.recv();
            })
        };
        assert_eq!(held_rx.recv().expect("held"), 0);
        let mut woke = watch(region, std::process::id()).expect("a watcher");
        std::thread::sleep(Duration::from_millis(50));
        assert!(woke.try_recv().is_err(), "the holder lives: no wake");
        drop(end_tx);
        holder.join().expect("the holder ends");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while woke.try_recv().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the holder's end did not wake the watcher"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
