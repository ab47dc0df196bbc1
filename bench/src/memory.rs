//! A server's memory as Linux reports it in `/proc`: resident set (`VmRSS`)
//! and proportional set (`Pss`, which splits shared pages among the processes
//! that map them, so that nginx's workers sharing memory are not counted twice).

use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

/// Memory of one process or a group of them, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Memory {
    /// Resident set: `VmRSS` (summed over the group's processes).
    pub rss_kib: u64,
    /// Proportional set: `Pss` (summed over the group's processes).
    pub pss_kib: u64,
}

/// The memory of process `pid`.
pub fn of_process(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = kib_field(&status, "VmRSS:").unwrap_or(0);
    let pss_kib = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|rollup| kib_field(&rollup, "Pss:"))
        .unwrap_or(rss_kib);
    Ok(Memory { rss_kib, pss_kib })
}

/// The memory of nginx's workers (the children of master process `master`):
/// their `VmRSS` added up, and the `Pss` of the master and its workers added up.
pub fn of_nginx(master: u32) -> io::Result<Memory> {
    let workers = children_of(master)?;
    let mut total = Memory {
        rss_kib: 0,
        pss_kib: of_process(master)?.pss_kib,
    };
    for worker in workers {
        if let Ok(memory) = of_process(worker) {
            total.rss_kib += memory.rss_kib;
            total.pss_kib += memory.pss_kib;
        }
    }
    Ok(total)
}

/// The ids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> io::Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parent_of_stat(&stat) == Some(parent) {
            children.push(pid);
        }
    }
    children.sort_unstable();
    Ok(children)
}

/// The parent pid in a `/proc/PID/stat` line: the second field after the
/// command name, which is in parentheses and may itself hold spaces.
fn parent_of_stat(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The number of a `Name:   1234 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes per item of the growth from `before` to `after` over `items`.
pub fn per_item_bytes(before_kib: u64, after_kib: u64, items: usize) -> f64 {
    if items == 0 {
        return 0.0;
    }
    (after_kib as f64 - before_kib as f64) * 1024.0 / items as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let memory = of_process(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0);
        assert!(memory.pss_kib > 0);
    }

    #[test]
    fn parses_stat_with_odd_names() {
        assert_eq!(parent_of_stat("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(
            kib_field("VmPeak: 1 kB\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048)
        );
    }
}
