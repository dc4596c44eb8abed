//! Readings from /proc: a process's CPU time and resident memory, the machine's CPU
//! use, the ephemeral port range.

use std::io;

/// CPU time and resident set size of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of every thread, in seconds.
    pub cpu_s: f64,
    /// VmRSS in bytes.
    pub rss: u64,
}

/// Clock ticks per second for /proc/PID/stat (CLK_TCK; 100 on practically every Linux).
pub fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// Reads /proc/PID/stat and /proc/PID/status.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let cpu_s = (tick(11) + tick(12)) as f64 / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    Ok(ProcSample { cpu_s, rss })
}

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxCpu {
    busy: u64,
    total: u64,
}

impl BoxCpu {
    /// Reads /proc/stat now (zeros if unreadable).
    pub fn now() -> BoxCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let values: Vec<u64> =
            text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: u64 = values.iter().take(8).sum();
        // idle + iowait
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        BoxCpu { busy: total.saturating_sub(idle), total }
    }

    /// CPU seconds (all cores together) spent busy between `self` and `later`.
    pub fn busy_s_until(&self, later: &BoxCpu) -> f64 {
        later.busy.saturating_sub(self.busy) as f64 / clock_ticks()
    }

    /// Percentage of all cores' time spent busy between `self` and `later`.
    pub fn busy_pct_until(&self, later: &BoxCpu) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 { 0.0 } else { 100.0 * later.busy.saturating_sub(self.busy) as f64 / total as f64 }
    }
}

/// How many ephemeral ports one source address has towards one destination
/// (net.ipv4.ip_local_port_range).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
            Some(it.next()?..=it.next()?)
        })
        .map_or(28_232, |r| r.end() - r.start() + 1)
}

/// Model name and core count from /proc/cpuinfo, e.g. "AMD EPYC 7B13 (2 cores)".
pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = text
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({cores} cores)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss > 0);
        assert!(me.cpu_s >= 0.0);
        assert!(ephemeral_ports() > 1000);
        let a = BoxCpu::now();
        let b = BoxCpu::now();
        assert!((0.0..=100.0).contains(&a.busy_pct_until(&b)));
    }
}
