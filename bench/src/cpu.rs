//! CPU time as Linux accounts it in `/proc/PID/stat`: user time (the
//! process's own code) and system time (the kernel's work on its behalf:
//! for a server pushing to streams over loopback, mostly its sends, which
//! run the reader's receive side too), summed over a group of processes.
//!
//! `/proc` counts in clock ticks of `USER_HZ`, 100 a second on x86 and ARM
//! Linux: a push costing a few hundred milliseconds reads to within 5 %.

use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

/// Milliseconds per `/proc` clock tick (`USER_HZ` = 100).
const MS_PER_TICK: u64 = 10;

/// CPU time of a process or a group of them, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuTime {
    /// In the processes' own code (`utime`).
    pub user_ms: u64,
    /// In the kernel, on their behalf (`stime`).
    pub system_ms: u64,
}

impl CpuTime {
    /// Both together.
    pub fn total_ms(self) -> u64 {
        self.user_ms + self.system_ms
    }

    /// What was spent from `earlier` until `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user_ms: self.user_ms.saturating_sub(earlier.user_ms),
            system_ms: self.system_ms.saturating_sub(earlier.system_ms),
        }
    }
}

/// The CPU time of process `pid` so far, all its threads included.
pub fn of_process(pid: u32) -> io::Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))
}

/// The CPU time of every process of `pids` so far, added up; one that is gone
/// counts nothing.
pub fn of_processes(pids: &[u32]) -> CpuTime {
    pids.iter()
        .filter_map(|&pid| of_process(pid).ok())
        .fold(CpuTime::default(), |sum, one| CpuTime {
            user_ms: sum.user_ms + one.user_ms,
            system_ms: sum.system_ms + one.system_ms,
        })
}

/// `utime` and `stime` of a `/proc/PID/stat` line: the 12th and 13th fields
/// after the command name, which is in parentheses and may hold spaces.
fn parse_stat(stat: &str) -> Option<CpuTime> {
    let mut after_name = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let user_ticks: u64 = after_name.next()?.parse().ok()?;
    let system_ticks: u64 = after_name.next()?.parse().ok()?;
    Some(CpuTime {
        user_ms: user_ticks * MS_PER_TICK,
        system_ms: system_ticks * MS_PER_TICK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_an_odd_name() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 31 7 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(stat),
            Some(CpuTime {
                user_ms: 310,
                system_ms: 70
            })
        );
    }

    #[test]
    fn this_process_has_spent_some_and_a_gone_one_none() {
        // Spin until the tick counts it.
        let start = of_process(std::process::id()).unwrap();
        while of_process(std::process::id()).unwrap().total_ms() == start.total_ms() {
            std::hint::spin_loop();
        }
        assert_eq!(of_processes(&[u32::MAX]), CpuTime::default());
    }
}
