//! Facts about this machine and this process, read from `/proc` (Linux only; elsewhere
//! the readers return `None` and the bench still runs, just with fewer notes).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(field: &str) -> Option<u64> {
    status_field_kib("/proc/self/status", field)
}

/// A `kB` field of `/proc/PID/status` of another process, in KiB.
pub fn pid_status_kib(pid: u32, field: &str) -> Option<u64> {
    status_field_kib(&format!("/proc/{pid}/status"), field)
}

fn status_field_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Logical CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `(busy, total)` jiffies summed over all CPUs; idle and iowait count as not busy.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// CPU jiffies (user + system) of every process, by pid, with its command name.
fn process_jiffies() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields after comm start at `state` (field 3); utime and stime are fields 14, 15.
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        let j = u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        out.insert(pid, (comm, j));
    }
    out
}

/// How busy the machine was during a short window in which the bench itself was idle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quietness {
    /// CPU cores' worth of work done by other processes (0 = idle, `cpus()` = saturated).
    pub busy_cores: f64,
    pub loadavg_1m: f64,
    /// Processes that used at least 5% of a core in the window: `name (pct%)`.
    pub busy_processes: Vec<String>,
}

/// Samples CPU use over `window` (the caller must not be computing meanwhile).
pub fn sample_quietness(window: Duration) -> Quietness {
    let p0 = process_jiffies();
    let c0 = cpu_jiffies();
    std::thread::sleep(window);
    let c1 = cpu_jiffies();
    let p1 = process_jiffies();
    let busy_cores = match (c0, c1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            (b1 - b0) as f64 / (t1 - t0) as f64 * cpus() as f64
        }
        _ => 0.0,
    };
    // Jiffies are USER_HZ (100 on Linux) per second.
    let secs = window.as_secs_f64().max(1e-3);
    let mut busy: Vec<(String, f64)> = p1
        .iter()
        .filter_map(|(pid, (name, j1))| {
            let j0 = p0.get(pid).map_or(0, |(_, j)| *j);
            let pct = (j1.saturating_sub(j0)) as f64 / 100.0 / secs * 100.0;
            (pct >= 5.0).then(|| (name.clone(), pct))
        })
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    Quietness {
        busy_cores,
        loadavg_1m: loadavg().map_or(f64::NAN, |l| l[0]),
        busy_processes: busy
            .into_iter()
            .take(4)
            .map(|(n, p)| format!("{n} ({p:.0}%)"))
            .collect(),
    }
}

/// Waits until other processes use at most `max_busy_cores` (checked over 2 s windows),
/// giving up after `max_wait`. Returns the last sample and how long it waited.
pub fn wait_for_quiet(max_busy_cores: f64, max_wait: Duration) -> (Quietness, Duration) {
    let start = std::time::Instant::now();
    let mut announced = false;
    loop {
        let q = sample_quietness(Duration::from_secs(2));
        if q.busy_cores <= max_busy_cores || start.elapsed() >= max_wait {
            return (q, start.elapsed());
        }
        if !announced {
            eprintln!(
                "  machine busy ({:.2} cores: {}); waiting up to {} s for it to calm down",
                q.busy_cores,
                q.busy_processes.join(", "),
                max_wait.as_secs()
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// CPU time of this process and of its reaped children, in jiffies
/// (`utime + stime + cutime + cstime` of `/proc/self/stat`).
fn self_and_children_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let close = stat.rfind(')')?;
    let f: Vec<u64> = stat[close + 1..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|s| s.parse().ok())
        .collect();
    (f.len() == 4).then(|| f.iter().sum())
}

/// Measures how much CPU *other* processes used while a child of ours ran: the machine's
/// busy time minus this process's and its reaped children's. Start it right before
/// spawning, finish it right after reaping the child.
pub struct RunWindow {
    start: Option<((u64, u64), u64)>,
}

impl RunWindow {
    pub fn start() -> Self {
        Self {
            start: cpu_jiffies().zip(self_and_children_jiffies()),
        }
    }

    /// Cores' worth of work done by other processes during the window.
    pub fn others_busy_cores(&self) -> Option<f64> {
        let ((b0, t0), s0) = self.start?;
        let ((b1, t1), s1) = cpu_jiffies().zip(self_and_children_jiffies())?;
        if t1 <= t0 {
            return None;
        }
        let others = (b1 - b0).saturating_sub(s1 - s0);
        Some(others as f64 / (t1 - t0) as f64 * cpus() as f64)
    }
}

/// What the results page says about the machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineFacts {
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub cpu_flags: String,
    pub rustc: String,
}

pub fn machine_facts() -> MachineFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let mut simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| {
            matches!(*f, "avx" | "avx2" | "fma" | "f16c")
                || f.starts_with("avx512")
                || f.starts_with("amx")
        })
        .collect();
    simd.sort_unstable();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    MachineFacts {
        cpu_model: field("model name"),
        logical_cpus: cpus(),
        mem_total_gib: mem_kib / (1024.0 * 1024.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu_flags: simd.join(" "),
        rustc: Command::new("rustc")
            .arg("-V")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
    }
}

/// The workspace's commit and which top-level directories have uncommitted changes, read
/// without taking git's locks (`GIT_OPTIONAL_LOCKS=0`, so nothing in `.git` is written).
pub fn tree_state(workspace: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty: std::collections::BTreeSet<String> = git(&["status", "--porcelain"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.get(3..))
        .map(|p| {
            p.trim_matches('"')
                .split('/')
                .next()
                .unwrap_or(p)
                .to_string()
        })
        .collect();
    if dirty.is_empty() {
        format!("commit {}", head.trim())
    } else {
        format!(
            "commit {} with uncommitted changes in {}",
            head.trim(),
            dirty.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_status() {
        if cfg!(target_os = "linux") {
            assert!(status_kib("VmRSS").unwrap() > 0);
        }
    }

    #[test]
    fn utc_now_is_well_formed() {
        let s = utc_now();
        assert_eq!(s.len(), "2026-11-01 12:00 UTC".len(), "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
