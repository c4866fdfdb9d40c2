//! CPU time and memory of a process and its descendants, from `/proc`.
//!
//! CPU is `utime + stime` (plus `cutime + cstime`, which holds children that
//! already exited and were reaped) in clock ticks; memory is `VmRSS` and
//! `VmHWM` (peak resident set) from `/proc/PID/status`. The peak can be
//! reset between measurements by writing `5` to `/proc/PID/clear_refs`.

use std::collections::{BTreeMap, HashMap};
use std::fs;

use serde::Serialize;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TreeSample {
    /// CPU ticks of the root process alone (its own threads).
    pub root_ticks: u64,
    /// CPU ticks of the whole tree, reaped children included.
    pub tree_ticks: u64,
    pub root_rss_kib: u64,
    pub tree_rss_kib: u64,
    pub root_hwm_kib: u64,
    /// Sum of each process's peak: an upper bound of the tree's peak.
    pub tree_hwm_kib: u64,
    pub processes: usize,
}

struct Stat {
    ppid: u32,
    own: u64,
    children: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Stat { ppid: num(1) as u32, own: num(11) + num(12), children: num(13) + num(14) })
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `VmRSS` of one process, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Threads of one process (0 when it is gone).
pub fn threads(pid: u32) -> u64 {
    status_kib(pid, "Threads")
}

/// Open file descriptors of one process: the entries of `/proc/PID/fd`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A process's open descriptors by what they are: TCP sockets by the named
/// port at either end (for `(8080, "gateway")`: `tcp gateway listen`,
/// `tcp gateway in` for connections accepted on 8080, `tcp → gateway` for
/// connections to it), other sockets, pipes, `anon_inode` kinds
/// (`eventpoll`, `eventfd`…) and files by name.
pub fn fd_kinds(pid: u32, ports: &[(u16, &str)]) -> BTreeMap<String, usize> {
    let mut tcp = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some((inode, conn)) = parse_tcp_line(line) {
                tcp.insert(inode, conn);
            }
        }
    }
    let mut kinds = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return kinds };
    for entry in dir.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        let kind = if let Some(inode) = target.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            let name = |port: u16| ports.iter().find(|p| p.0 == port).map(|p| p.1);
            match inode.parse::<u64>().ok().and_then(|i| tcp.get(&i)) {
                Some(&(local, remote, listening)) => match (name(local), name(remote)) {
                    (Some(n), _) => format!("tcp {n} {}", if listening { "listen" } else { "in" }),
                    (None, Some(n)) => format!("tcp → {n}"),
                    (None, None) => "tcp other".into(),
                },
                None => "socket (not tcp)".into(),
            }
        } else if target.starts_with("pipe:") {
            "pipe".into()
        } else if let Some(k) = target.strip_prefix("anon_inode:") {
            k.trim_matches(['[', ']']).to_string()
        } else {
            // The name alone: where it lives is this machine's business.
            format!("file {}", target.rsplit('/').next().unwrap_or(""))
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// `(inode, (local port, remote port, listening))` of a `/proc/net/tcp` line.
fn parse_tcp_line(line: &str) -> Option<(u64, (u16, u16, bool))> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    let local = port(f.get(1)?)?;
    let remote = port(f.get(2)?)?;
    let listening = *f.get(3)? == "0A";
    Some((f.get(9)?.parse().ok()?, (local, remote, listening)))
}

/// `root` and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = read_stat(pid) {
                children.entry(st.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

pub fn sample(root: u32) -> TreeSample {
    let mut s = TreeSample::default();
    for pid in tree(root) {
        let Some(st) = read_stat(pid) else { continue };
        let rss = status_kib(pid, "VmRSS");
        let hwm = status_kib(pid, "VmHWM");
        if pid == root {
            s.root_ticks = st.own;
            s.root_rss_kib = rss;
            s.root_hwm_kib = hwm;
        }
        s.tree_ticks += st.own + st.children;
        s.tree_rss_kib += rss;
        s.tree_hwm_kib += hwm;
        s.processes += 1;
    }
    s
}

/// Resets the peak RSS of every process in the tree (best effort).
pub fn reset_peaks(root: u32) {
    for pid in tree(root) {
        let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Every state: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total_ticks: u64,
    /// Time the hypervisor ran something else while a virtual CPU wanted to run.
    pub steal_ticks: u64,
    /// Idle and waiting for I/O.
    pub idle_ticks: u64,
}

pub fn machine_cpu() -> MachineCpu {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_machine_cpu(&text)
}

fn parse_machine_cpu(stat: &str) -> MachineCpu {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return MachineCpu::default() };
    let f: Vec<u64> = line.split_ascii_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    MachineCpu {
        total_ticks: f.iter().sum(),
        steal_ticks: f.get(7).copied().unwrap_or(0),
        idle_ticks: f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0),
    }
}

/// Percentage of the machine's CPU time spent busy (neither idle nor
/// waiting for I/O) between two readings.
pub fn busy_percent(before: MachineCpu, after: MachineCpu) -> Option<f64> {
    let total = after.total_ticks.checked_sub(before.total_ticks).filter(|&t| t > 0)?;
    let idle = after.idle_ticks.saturating_sub(before.idle_ticks);
    Some(total.saturating_sub(idle) as f64 * 100.0 / total as f64)
}

/// The command name of a process (`/proc/PID/comm`).
pub fn comm(pid: u32) -> Option<String> {
    Some(fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string())
}

/// Percentage of the machine's CPU time stolen between two readings.
pub fn steal_percent(before: MachineCpu, after: MachineCpu) -> Option<f64> {
    let total = after.total_ticks.checked_sub(before.total_ticks).filter(|&t| t > 0)?;
    let steal = after.steal_ticks.saturating_sub(before.steal_ticks);
    Some(steal as f64 * 100.0 / total as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let s = sample(me);
        assert!(s.processes >= 1);
        assert!(s.root_rss_kib > 0);
        assert!(s.tree_hwm_kib >= s.root_hwm_kib);
        assert!(rss_kib(me) > 0);
        assert!(threads(me) >= 1);
        assert!(fd_count(me).is_some_and(|n| n >= 3));
    }

    #[test]
    fn tcp_lines_give_ports_and_inode() {
        let l = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1";
        assert_eq!(parse_tcp_line(l), Some((12345, (8080, 0, true))));
        let me = std::process::id();
        let kinds = fd_kinds(me, &[]);
        assert!(kinds.values().sum::<usize>() >= 3, "{kinds:?}");
    }

    #[test]
    fn steal_is_a_share_of_all_cpu_time() {
        let a = parse_machine_cpu("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n");
        assert_eq!((a.total_ticks, a.steal_ticks, a.idle_ticks), (1000, 35, 810));
        let b = MachineCpu { total_ticks: 1200, steal_ticks: 85, idle_ticks: 860 };
        assert_eq!(steal_percent(a, b), Some(25.0));
        assert_eq!(steal_percent(a, a), None);
        assert_eq!(busy_percent(a, b), Some(75.0));
    }
}
