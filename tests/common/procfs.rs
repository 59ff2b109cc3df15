//! What /proc says of a process: resident memory, CPU time and threads.
#![allow(dead_code)] // shared by tests and benches; not every user needs every function

/// Resident memory (KiB) and CPU seconds (user + system) of `pid` ("self" for this process).
pub fn usage(pid: &str) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name: state is field 0; utime and stime are fields 11 and 12, in ticks.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (rss, (ticks(11) + ticks(12)) / 100.0)
}

/// Threads of `pid`.
pub fn threads(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Each thread of `pid`: its id, its name (`comm`) and its CPU seconds (user + system).
pub fn thread_cpu(pid: &str) -> Vec<(String, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // "tid (name) state ...": the name may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            Some((tid, name, (ticks(11)? + ticks(12)?) / 100.0))
        })
        .collect()
}
