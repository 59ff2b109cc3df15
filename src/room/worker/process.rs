//! The operating system's side of a room worker: starting the process with its four
//! descriptors, and the doorbells' kicks (an `eventfd` each).
//!
//! A worker is this binary run as `livekit-bridge room-worker ...` with, as its descriptors
//! [`CONTROL_FD`], [`MEMORY_FD`], [`KICK_FD`] and [`TRACK_KICK_FD`]: its end of the control
//! socket, the ring memory, the front's doorbell's eventfd (the worker kicks it) and its own
//! (the front kicks it when a track ring has PCM). Nothing else is inherited (every descriptor of the front is
//! close-on-exec). The worker dies with its control socket: when the front goes, so do its
//! workers, and a worker also asks the kernel to kill it if the thread that started it ends
//! (`PR_SET_PDEATHSIG`).

// Unsafe code here: the child's descriptor set-up between fork and exec, and the raw
// descriptor calls of the eventfd and of adopting the inherited descriptors.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::audio::mapped::{Bell, Doorbell};

pub const CONTROL_FD: RawFd = 3;
pub const MEMORY_FD: RawFd = 4;
pub const KICK_FD: RawFd = 5;
pub const TRACK_KICK_FD: RawFd = 6;

/// A new eventfd, non-blocking, close-on-exec.
pub fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: valid flags; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds one to an eventfd's counter: wakes whoever polls it. One syscall; never blocks (the
/// descriptor is non-blocking, and the counter cannot fill before the reader has read it).
pub fn kick(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a valid descriptor.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// A bell to the other process: marks the bit in that process's doorbell and, for the first
/// mark since it last looked, kicks its eventfd. The worker's producers ring the front with
/// one, the front's track writers the worker.
pub struct KickBell {
    pub doorbell: Doorbell,
    pub kick: OwnedFd,
}

impl Bell for KickBell {
    fn ring(&self, bit: u32) {
        if self.doorbell.mark(bit) {
            kick(&self.kick);
        }
    }
}

/// Reads and resets an eventfd's counter; false when there was nothing to read.
pub fn drain(fd: &OwnedFd) -> std::io::Result<bool> {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer from a valid descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n == 8)
}

/// `fd` registered with the runtime's reactor, to wait for it in a task.
pub fn watch(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open and refers to the same file for as long as it is owned, and
    // the `AsyncFd` owns it until it deregisters; its `as_raw_fd` is always that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Blocks until `fd` is readable; false if `timeout` passed first. Interrupted waits resume.
pub fn wait_readable(fd: &OwnedFd, timeout: std::time::Duration) -> std::io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Starts `exe room-worker args...` with `control`, `memory`, `kick` and `track_kick` as its
/// descriptors 3 to 6.
pub fn spawn(
    exe: &Path,
    args: &[String],
    control: &OwnedFd,
    memory: &OwnedFd,
    kick: &OwnedFd,
    track_kick: &OwnedFd,
) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(exe);
    // LiveKit's library logs to stderr by itself when its records are not captured
    // (`BRIDGE_LIVEKIT_LOGS=off`), filtered by its process's `RUST_LOG`, which the worker
    // would inherit from the front: off, it writes nothing (a record can carry an access
    // token, which only the bridge's own logging redacts).
    command.args(args).env("RUST_LOG", "off").kill_on_drop(true);
    let fds = [
        control.as_raw_fd(),
        memory.as_raw_fd(),
        kick.as_raw_fd(),
        track_kick.as_raw_fd(),
    ];
    // SAFETY: the closure runs in the child between fork and exec, so it may only make
    // async-signal-safe calls: fcntl, dup2 and prctl are, it allocates nothing and touches
    // only the four descriptor numbers copied into it. Each descriptor is first moved above
    // the targets, so placing one cannot close another still to be placed; dup2 clears
    // close-on-exec on the copy.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; 4];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (h, target) in high
                .into_iter()
                .zip([CONTROL_FD, MEMORY_FD, KICK_FD, TRACK_KICK_FD])
            {
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Gives SIGSEGV and SIGBUS their default action back. Rust's runtime handles them to name a
/// thread whose stack overflowed and otherwise hands a fault back to the instruction that
/// made it; a fault that did not come from an instruction (a signal another process sent) it
/// swallows. In a worker every such signal must end the process at once, so the front sees a
/// worker killed by it, whatever raised it; a stack overflow ends it the same way, unnamed.
pub fn default_fault_signals() {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: SIG_DFL is a valid disposition for these signals; called once at the
        // worker's start, before any thread of its own or of LiveKit's library exists.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// The worker's four descriptors, adopted once at its start.
pub struct Inherited {
    pub control: OwnedFd,
    pub memory: OwnedFd,
    pub kick: OwnedFd,
    pub track_kick: OwnedFd,
}

impl Inherited {
    /// Takes descriptors 3 to 6, checking that each is open.
    pub fn take() -> std::io::Result<Self> {
        let adopt = |fd: RawFd| {
            // SAFETY: F_GETFD only asks whether the descriptor is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(std::io::Error::other(format!(
                    "descriptor {fd} is not open: a room worker is started by the bridge, not by hand"
                )));
            }
            // SAFETY: the front placed this descriptor here for this process, which takes it
            // once, at start, before anything else could open that number.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: marks the adopted descriptor close-on-exec, so no child inherits it.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            Ok(fd)
        };
        Ok(Self {
            control: adopt(CONTROL_FD)?,
            memory: adopt(MEMORY_FD)?,
            kick: adopt(KICK_FD)?,
            track_kick: adopt(TRACK_KICK_FD)?,
        })
    }
}

/// The fields of `/proc/<pid>/stat` from field 3 (the state) on: the command before it, in
/// parentheses, may contain spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A process's CPU seconds (user + system) and state letter, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(f64, char)> {
    let fields = stat_fields(pid)?;
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    let state = fields.first()?.chars().next()?;
    // USER_HZ is 100 on every Linux the bridge runs on.
    Some(((ticks(14)? + ticks(15)?) as f64 / 100.0, state))
}

/// How a process whose main thread has begun to exit is ending: its main thread's exit code
/// (`/proc/<pid>/stat` field 52, in `waitpid`'s form), which the kernel sets before it releases
/// that thread's robust futexes. `None` once the process is reaped.
pub fn exit_status(pid: u32) -> Option<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let code = stat_fields(pid)?.get(52 - 3)?.parse::<i32>().ok()?;
    Some(std::process::ExitStatus::from_raw(code))
}

/// A live worker's CPU seconds and resident bytes.
pub fn usage(pid: u32) -> Option<(f64, u64)> {
    let (cpu, _) = stat(pid)?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, pages * 4096))
}

/// The names of a live process's threads (`/proc/<pid>/task/*/comm`, at most 15 bytes each);
/// empty when it is gone.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

/// An ending worker's final CPU seconds, read while it is a zombie, before it is reaped (once
/// reaped, the kernel adds it to the front's children's time, which the metrics tell apart);
/// `None` if it is not a zombie `within` that time.
pub async fn final_cpu(pid: u32, within: std::time::Duration) -> Option<f64> {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(5);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match stat(pid) {
            Some((cpu, 'Z')) => return Some(cpu),
            Some(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(EVERY).await,
            _ => return None,
        }
    }
}
