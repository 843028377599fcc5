//! What the bench reads about the server from outside: `/proc/<pid>` (RSS, CPU time, of a
//! process or of a process tree), the gateway's `/metrics`, and the kernel's TCP counters.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// Clock ticks per second (`utime`/`stime` unit).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (ppid, utime + stime in seconds) from a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(u32, f64)> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] = state (field 3); ppid = field 4; utime = 14; stime = 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((ppid, (utime + stime) / ticks_per_second()))
}

/// (user, system) CPU seconds from a `/proc/<pid>/stat` line.
pub fn parse_stat_split(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / ticks_per_second(), stime / ticks_per_second()))
}

/// (user, system) CPU seconds used so far by `pid`: on loopback, system time includes the
/// kernel's receive path for the client's sockets, run in the sender's system call.
pub fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_split(&stat)
}

/// CPU seconds (user + system) used so far by `pid`, all threads.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, cpu)| cpu)
}

/// CPU seconds used so far by `pid` and its live descendants (PostgreSQL's backends).
/// Backends that exited meanwhile are not counted: use for long-lived backends only.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let mut procs: Vec<(u32, u32, f64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((ppid, cpu)) = parse_stat(&stat) {
                procs.push((pid, ppid, cpu));
            }
        }
    }
    let mut total = 0.0;
    let mut found = false;
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, cpu) in &procs {
            if pid == p {
                total += cpu;
                found = true;
            }
            if ppid == p {
                frontier.push(pid);
            }
        }
    }
    found.then_some(total)
}

/// CPU seconds the whole machine spent busy so far (all CPUs: everything but idle and
/// iowait), from the first line of `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat_busy(stat.lines().next()?)
}

pub fn parse_proc_stat_busy(cpu_line: &str) -> Option<f64> {
    let ticks: Vec<f64> = cpu_line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) / ticks_per_second())
}

/// `TcpExt: ListenOverflows` and `ListenDrops` (SYNs dropped because an accept queue was
/// full), machine-wide.
pub fn listen_overflows() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse_netstat(&text)
}

pub fn parse_netstat(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let map: HashMap<&str, u64> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        return Some((*map.get("ListenOverflows")?, *map.get("ListenDrops")?));
    }
    None
}

/// The gateway's `/metrics`, as `name{labels}` → value (plain HTTP/1.0 GET, no client crate).
pub fn scrape(addr: &str) -> Option<HashMap<String, f64>> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let (_, body) = body.split_once("\r\n\r\n")?;
    Some(parse_metrics(body))
}

pub fn parse_metrics(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every sample whose name (before labels) is `name`.
pub fn metric(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_strange_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        let (ppid, cpu) = parse_stat(stat).unwrap();
        assert_eq!(ppid, 1);
        assert!((cpu - 300.0 / ticks_per_second()).abs() < 1e-9);
        let (user, system) = parse_stat_split(stat).unwrap();
        assert!((user - 250.0 / ticks_per_second()).abs() < 1e-9);
        assert!((system - 50.0 / ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn machine_busy_time() {
        let busy = parse_proc_stat_busy("cpu  100 5 50 1000 20 1 2 3 0 0").unwrap();
        assert!((busy - 161.0 / ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn rss_and_netstat() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_netstat(netstat), Some((7, 9)));
    }

    #[test]
    fn metrics_with_and_without_labels() {
        let m = parse_metrics(
            "# HELP x\ncable_auth_queries_total 12\ncable_commands_total{command=\"subscribe\",result=\"confirmed\"} 5\ncable_commands_total{command=\"subscribe\",result=\"rejected\"} 2\ncable_commands_totalx 100\n",
        );
        assert_eq!(metric(&m, "cable_auth_queries_total"), 12.0);
        assert_eq!(metric(&m, "cable_commands_total"), 7.0);
    }
}
