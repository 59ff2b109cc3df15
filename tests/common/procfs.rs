//! What /proc says of a process: resident memory, CPU time and threads.

/// The name and CPU seconds (user + system) in a `stat` file's text: "pid (name) state ...",
/// where the name may hold spaces and parentheses; utime and stime are the 12th and 13th
/// fields after it, in ticks.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((name, (ticks(11)? + ticks(12)?) / 100.0))
}

/// Resident memory (KiB) and CPU seconds (user + system) of `pid` ("self" for this process).
pub fn usage(pid: &str) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    (rss, parse_stat(&stat).map_or(0.0, |(_, cpu)| cpu))
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
            let (name, cpu) = parse_stat(&stat)?;
            Some((tid, name, cpu))
        })
        .collect()
}
