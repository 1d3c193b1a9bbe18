//! CPU time of a process from `/proc/PID/stat`, for the benchmarks that measure processes
//! they start.

use std::time::Duration;

/// Linux reports process CPU time in USER_HZ ticks, which is 100 on every architecture.
pub const TICKS_PER_SECOND: u64 = 100;

/// What one `/proc/PID/stat` line says about a process's CPU use.
#[derive(Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name, without its parentheses.
    pub comm: String,
    pub ppid: u32,
    /// User plus system time, in ticks.
    pub ticks: u64,
    /// User plus system time of the children it has reaped (waited for), in ticks.
    pub reaped_children_ticks: u64,
}

impl ProcStat {
    /// `pid`'s line, or `None` once the process is gone.
    pub fn read(pid: u32) -> Option<ProcStat> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// `pid (comm) state ppid …`: comm may hold spaces and parentheses, so the line is split
    /// at the last `)`. After it, fields 4 and 14–17 of proc(5) (ppid; utime, stime, cutime,
    /// cstime) are at indices 1 and 11–14.
    pub fn parse(stat: &str) -> Option<ProcStat> {
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
        Some(ProcStat {
            comm: stat[open + 1..close].to_owned(),
            ppid: u32::try_from(number(1)?).ok()?,
            ticks: number(11)? + number(12)?,
            reaped_children_ticks: number(13)? + number(14)?,
        })
    }

    /// [`Self::ticks`] as time.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_millis(self.ticks * 1000 / TICKS_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::ProcStat;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (tokio (runtime) 1) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 30 7 5 20 0 3 0 1000 0 0";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                comm: "tokio (runtime) 1".into(),
                ppid: 17,
                ticks: 280,
                reaped_children_ticks: 12,
            })
        );
        assert_eq!(ProcStat::parse("4242 (cut short) S 17"), None);
    }
}
