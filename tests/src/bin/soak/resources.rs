//! What a process holds, from `/proc`: resident memory and open file descriptors.

/// One look at one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holding {
    /// `VmRSS` of `/proc/PID/status`, KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
}

impl Holding {
    /// `None` once the process is gone.
    pub fn of(pid: u32) -> Option<Holding> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = rss_kib(&status)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Holding { rss_kib, fds })
    }
}

/// `VmRSS:    12345 kB` → 12345.
fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_status_file() {
        let status = "Name:\tenvoy\nVmPeak:\t  99 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(rss_kib(status), Some(40960));
        assert_eq!(rss_kib("Name:\tzombie\n"), None);
    }

    #[test]
    fn this_process_holds_memory_and_descriptors() {
        let holding = Holding::of(std::process::id()).expect("this process");
        assert!(holding.rss_kib > 0 && holding.fds >= 3, "{holding:?}");
    }
}
