//! Admission control: a JoinRoom that would take the bridge past its session limit, or that
//! arrives while the machine's CPU is past its limit, is refused at once, before any LiveKit
//! connection, with `success: false` and an error that says so, so the backend can use another
//! bridge. The CPU is measured the way LiveKit's egress measures it for
//! `max_cpu_utilization`: the whole machine's busy share of all its cores, from `/proc/stat`,
//! over the last few seconds.

use crate::metrics::JoinResult;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// How often the CPU sampler reads `/proc/stat`.
pub const CPU_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The window the CPU use is averaged over.
const CPU_WINDOW: Duration = Duration::from_secs(3);

/// The limits a JoinRoom is admitted within; `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub max_sessions: Option<usize>,
    /// A fraction of all the machine's cores (0.8: 80 % of them busy).
    pub max_cpu: Option<f64>,
}

/// Why a JoinRoom was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "bridge at capacity: {live} of {max} sessions (BRIDGE_MAX_SESSIONS); join on another bridge"
    )]
    Sessions { live: usize, max: usize },
    #[error(
        "bridge at capacity: CPU {used:.0}% of the machine, limit {limit:.0}% (BRIDGE_MAX_CPU); \
         join on another bridge"
    )]
    Cpu { used: f64, limit: f64 },
}

impl Refusal {
    /// The JoinRoom result this refusal is counted as.
    pub fn result(&self) -> JoinResult {
        match self {
            Self::Sessions { .. } => JoinResult::RefusedCapacity,
            Self::Cpu { .. } => JoinResult::RefusedCpu,
        }
    }
}

/// The admission limits and the CPU measured against them.
pub struct Admission {
    limits: Limits,
    /// (when, busy jiffies, total jiffies) samples within the window.
    samples: Mutex<Vec<(Instant, u64, u64)>>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            samples: Mutex::new(Vec::new()),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one CPU sample (the sampler task calls this every [`CPU_SAMPLE_EVERY`]).
    pub fn sample_cpu(&self) {
        let Some((busy, total)) = read_proc_stat() else {
            return;
        };
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push((now, busy, total));
        // Keep the newest sample at or before the window's start, and everything after it.
        let start = now.checked_sub(CPU_WINDOW).unwrap_or(now);
        let keep_from = samples
            .iter()
            .rposition(|(at, _, _)| *at <= start)
            .unwrap_or(0);
        samples.drain(..keep_from);
    }

    /// The machine's busy share of all its cores over the window (0.0 to 1.0), once two
    /// samples exist.
    pub fn cpu_used(&self) -> Option<f64> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, last) = (samples.first()?, samples.last()?);
        let total = last.2.checked_sub(first.2).filter(|t| *t > 0)?;
        let busy = last.1.saturating_sub(first.1);
        Some((busy as f64 / total as f64).clamp(0.0, 1.0))
    }

    /// Whether one more session may join, `live` being the sessions the bridge holds (or is
    /// connecting) now.
    pub fn admit(&self, live: usize) -> Result<(), Refusal> {
        if let Some(max) = self.limits.max_sessions
            && live >= max
        {
            return Err(Refusal::Sessions { live, max });
        }
        if let (Some(limit), Some(used)) = (self.limits.max_cpu, self.cpu_used())
            && used > limit
        {
            return Err(Refusal::Cpu {
                used: used * 100.0,
                limit: limit * 100.0,
            });
        }
        Ok(())
    }

    /// Sessions that may still join (None: no session limit).
    pub fn sessions_left(&self, live: usize) -> Option<usize> {
        self.limits.max_sessions.map(|max| max.saturating_sub(live))
    }
}

/// (busy, total) jiffies of all cores from `/proc/stat`'s first line; idle and iowait are the
/// idle part.
fn read_proc_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(text.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
    if values.len() < 5 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values[4];
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_parse_to_busy_and_total() {
        let line = "cpu  100 5 50 800 45 0 0 0 0 0";
        assert_eq!(parse_cpu_line(line), Some((155, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5"), None);
        assert_eq!(parse_cpu_line("cpu 1 2"), None);
    }

    #[test]
    fn sessions_past_the_limit_are_refused_saying_so() {
        let a = Admission::new(Limits {
            max_sessions: Some(2),
            max_cpu: None,
        });
        assert_eq!(a.admit(1), Ok(()));
        let refused = a.admit(2).unwrap_err();
        assert_eq!(refused, Refusal::Sessions { live: 2, max: 2 });
        assert!(refused.to_string().starts_with("bridge at capacity"));
        assert_eq!(a.sessions_left(1), Some(1));
        assert_eq!(Admission::new(Limits::default()).sessions_left(5), None);
    }

    #[test]
    fn cpu_is_measured_from_the_machine_and_refuses_past_the_limit() {
        let a = Admission::new(Limits {
            max_sessions: None,
            max_cpu: Some(0.0),
        });
        assert_eq!(a.cpu_used(), None);
        assert_eq!(a.admit(0), Ok(()), "no measurement yet: admitted");
        a.sample_cpu();
        // Burn some CPU so the next sample sees busy time.
        let until = Instant::now() + Duration::from_millis(50);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        a.sample_cpu();
        let used = a.cpu_used().expect("two samples");
        assert!(used > 0.0 && used <= 1.0, "{used}");
        assert!(matches!(a.admit(0), Err(Refusal::Cpu { .. })));
    }
}
