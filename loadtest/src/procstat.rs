//! CPU time, resident memory, threads and open descriptors of a process, from `/proc/PID/stat`,
//! `/proc/PID/status` and `/proc/PID/fd`.

use std::time::Duration;

use anyhow::Context as _;

/// Kernel clock ticks per second in `/proc/PID/stat` (`USER_HZ`): 100 on every Linux
/// architecture the kernel exports to user space (`sysconf(_SC_CLK_TCK)`, fixed by the ABI).
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system CPU time so far (all threads, 10 ms resolution).
    pub cpu: Duration,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/{pid}` (`"self"` for this process).
pub fn sample(pid: &str) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let cpu = parse_stat_cpu(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_bytes =
        parse_status_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(ProcSample { cpu, rss_bytes })
}

/// What a process holds besides memory: the soak's leak signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handles {
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
    /// Threads (`Threads:` of `/proc/PID/status`).
    pub threads: u64,
}

/// Reads the descriptors and threads of `/proc/{pid}`.
pub fn handles(pid: &str) -> anyhow::Result<Handles> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let threads = status_field(&status, "Threads:")
        .with_context(|| format!("no Threads in /proc/{pid}/status"))?;
    Ok(Handles { fds, threads })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces, so fields are counted after the last `)`.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" come field 3 (state) … ; utime is field 14 → index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// `VmRSS` of `/proc/PID/status`, bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    Some(status_field(status, "VmRSS:")? * 1024)
}

/// The first number after `name` (e.g. `VmRSS:`) in `/proc/PID/status`.
fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (call bridge) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_cpu(line), Some(Duration::from_millis(3250)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn rss_in_bytes() {
        let s = "Name:\tx\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(parse_status_rss(s), Some(2 * 1024 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample("self").unwrap();
        assert!(s.rss_bytes > 0);
        // (Other tests open and close files meanwhile: only lower bounds hold.)
        let _f = std::fs::File::open("/proc/self/status").unwrap();
        let h = handles("self").unwrap();
        assert!(h.threads >= 1 && h.fds >= 4, "{h:?}: stdio and the file");
    }

    #[test]
    fn threads_from_status() {
        let s = "Name:\tx\nThreads:\t7\nVmRSS:\t 1 kB\n";
        assert_eq!(status_field(s, "Threads:"), Some(7));
        assert_eq!(status_field("Name: x\n", "Threads:"), None);
    }
}
