//! CPU time of the processes a benchmark runs against, from `/proc`: which pid is which server
//! (the stack's pid files, the process listening on a port), and how much CPU each used between
//! two samples. Linux only, like the stack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The stack's servers whose pids `stack/keel-stack` records (`$KEEL_STACK_DIR/pids/<name>.pid`).
pub const STACK_SERVERS: [&str; 7] = [
    "kafka",
    "registry",
    "connect",
    "mariadb",
    "postgres",
    "cassandra",
    "prometheus",
];

/// Where the stack keeps its pid files: `$KEEL_STACK_DIR/pids`, else
/// `$XDG_STATE_HOME/keel/stack/pids`, else `~/.local/state/keel/stack/pids` (stack/lib.sh).
pub fn stack_pid_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_STACK_DIR") {
        return PathBuf::from(dir).join("pids");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    state.join("keel/stack/pids")
}

/// The recorded pid of each stack server that is alive.
pub fn stack_pids(dir: &Path) -> Vec<(String, u32)> {
    STACK_SERVERS
        .iter()
        .filter_map(|name| {
            let pid: u32 = std::fs::read_to_string(dir.join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Path::new(&format!("/proc/{pid}"))
                .exists()
                .then(|| ((*name).to_owned(), pid))
        })
        .collect()
}

/// The pid of the process listening on TCP `port` (IPv4 or IPv6), found through the socket's
/// inode in `/proc/net/tcp*` and the `/proc/<pid>/fd` links; `None` when nobody listens or the
/// process is not ours to inspect.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the inode.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime + cutime + cstime of one process, in ticks (the fields after the command name,
/// which may itself hold spaces and parentheses).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, so index 11.
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(field(11)? + field(12)? + field(13)? + field(14)?)
}

/// The direct and indirect children of `pid` that are alive (PostgreSQL's backends, say).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for c in parents.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(*c);
            stack.push(*c);
        }
    }
    out
}

/// CPU ticks of a process and its live descendants (children that ended are in its cutime and
/// cstime once reaped).
pub fn tree_ticks(pid: u32) -> Option<u64> {
    let own = process_ticks(pid)?;
    Some(
        own + descendants(pid)
            .into_iter()
            .filter_map(process_ticks)
            .sum::<u64>(),
    )
}

/// The whole machine's busy and total ticks from `/proc/stat` (all CPUs).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// One named process to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// CPU samples of the watched processes and the machine at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: std::time::Instant,
    ticks: Vec<Option<u64>>,
    machine: Option<(u64, u64)>,
}

/// What one process used between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system, its children included).
    pub cpu_seconds: f64,
    /// `cpu_seconds` over the wall time, in percent of one core (200 = two cores busy).
    pub percent_of_one_core: f64,
}

/// The machine over the same window.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub wall_seconds: f64,
    pub cores: usize,
    /// Busy share of all cores (100 = every core busy all the time).
    pub machine_busy_percent: Option<f64>,
    pub processes: Vec<CpuUse>,
}

/// Samples `watched` now.
pub fn sample(watched: &[Watched]) -> Sample {
    Sample {
        at: std::time::Instant::now(),
        ticks: watched.iter().map(|w| tree_ticks(w.pid)).collect(),
        machine: machine_ticks(),
    }
}

/// CPU used by each watched process between `from` and `to`, busiest first.
pub fn between(watched: &[Watched], from: &Sample, to: &Sample) -> CpuReport {
    let hz = clock_ticks();
    let wall = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
    let mut processes: Vec<CpuUse> = watched
        .iter()
        .zip(from.ticks.iter().zip(&to.ticks))
        .filter_map(|(w, (a, b))| {
            let secs = b.as_ref()?.saturating_sub(*a.as_ref()?) as f64 / hz;
            Some(CpuUse {
                name: w.name.clone(),
                pid: w.pid,
                cpu_seconds: secs,
                percent_of_one_core: 100.0 * secs / wall,
            })
        })
        .collect();
    processes.sort_by(|a, b| b.cpu_seconds.total_cmp(&a.cpu_seconds));
    let machine_busy_percent = match (from.machine, to.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some(100.0 * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    CpuReport {
        wall_seconds: wall,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        machine_busy_percent,
        processes,
    }
}

/// VmRSS and VmHWM of a process in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_is_found_by_its_listening_port() {
        let me = std::process::id();
        let watched = vec![Watched {
            name: "me".into(),
            pid: me,
        }];
        let before = sample(&watched);
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        let report = between(&watched, &before, &sample(&watched));
        assert_eq!(report.processes.len(), 1);
        assert!(report.processes[0].cpu_seconds > 0.0, "{report:?}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("an address").port();
        assert_eq!(pid_listening_on(port), Some(me));
        drop(listener);
        assert_eq!(pid_listening_on(port), None);
    }
}
