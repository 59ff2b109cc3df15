//! What /proc says of a process: resident memory, CPU time and threads. For a bridge, its
//! room workers (its children running `room-worker`, where LiveKit's library is) count with it.

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

/// `pid` and its room workers.
fn tree(pid: &str) -> Vec<String> {
    let mut all = vec![pid.to_string()];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let child = entry.file_name().to_string_lossy().into_owned();
        if !child.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let argv = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let worker = argv.split(|b| *b == 0).nth(1) == Some(b"room-worker".as_slice());
        if worker && ppid.as_deref() == Some(pid) {
            all.push(child);
        }
    }
    all
}

/// The room workers of `pid` ("self" for this process), by pid.
pub fn room_workers(pid: &str) -> Vec<u32> {
    let pid = match pid {
        "self" => std::process::id().to_string(),
        p => p.to_string(),
    };
    tree(&pid)
        .iter()
        .skip(1)
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Resident memory (KiB) and CPU seconds (user + system) of `pid` ("self" for this process)
/// and its room workers.
pub fn usage(pid: &str) -> (u64, f64) {
    tree(pid).iter().fold((0, 0.0), |(rss, cpu), p| {
        let (r, c) = usage_of(p);
        (rss + r, cpu + c)
    })
}

fn usage_of(pid: &str) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    (rss, parse_stat(&stat).map_or(0.0, |(_, cpu)| cpu))
}

/// Threads of `pid` and its room workers.
pub fn threads(pid: &str) -> usize {
    tree(pid)
        .iter()
        .map(|p| std::fs::read_dir(format!("/proc/{p}/task")).map_or(0, |d| d.count()))
        .sum()
}

/// Each thread of `pid` and its room workers: its id, its name (`comm`) and its CPU seconds
/// (user + system).
pub fn thread_cpu(pid: &str) -> Vec<(String, String, f64)> {
    tree(pid).iter().flat_map(|p| threads_of(p)).collect()
}

fn threads_of(pid: &str) -> Vec<(String, String, f64)> {
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
