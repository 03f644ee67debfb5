//! CPU and memory as fractions of the container's cgroup v2 limits, or of
//! the host when there is no limit (reported as [`LimitSource::Host`]).
//!
//! Parsing is pure; [`Sampler`] reads the files under roots it is given, so
//! tests point it at a directory of their own.

use std::path::PathBuf;

use rtc_heartbeat::LimitSource;

/// `cpu.max`: `max 100000` (no limit) or `<quota> <period>` in µs; the limit
/// in CPUs.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// `memory.max`: `max` (no limit) or bytes.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|v| *v > 0)
}

/// `usage_usec` from `cpu.stat`.
pub fn parse_cpu_stat_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// utime + stime (fields 14 and 15, clock ticks) from `/proc/self/stat`.
pub fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3, so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key: <n> kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
pub fn parse_kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU use over the last interval as a fraction of the limit (0..1,
    /// may exceed 1 briefly when accounting lags).
    pub cpu: f64,
    /// Memory in use as a fraction of the limit.
    pub mem: f64,
    /// What the fractions are of.
    pub source: LimitSource,
}

/// Reads usage every time it is asked; remembers the last CPU counter to
/// turn it into a rate.
#[derive(Debug)]
pub struct Sampler {
    cgroup: PathBuf,
    proc: PathBuf,
    host_cpus: f64,
    /// (cpu seconds used, at monotonic ms).
    last: Option<(f64, u64)>,
}

/// Clock ticks per second of `/proc` CPU counters: 100 on every Linux the
/// node runs on (USER_HZ is fixed for user space).
const TICKS_PER_SECOND: f64 = 100.0;

impl Sampler {
    /// Reads the cgroup files under `cgroup` (normally `/sys/fs/cgroup`) and
    /// the process files under `proc` (normally `/proc`).
    pub fn new(cgroup: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Self {
            cgroup: cgroup.into(),
            proc: proc.into(),
            host_cpus,
            last: None,
        }
    }

    /// The system's own paths.
    pub fn system() -> Self {
        Self::new("/sys/fs/cgroup", "/proc")
    }

    fn read(&self, path: PathBuf) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    /// Usage at `now_ms` (monotonic). The first call reports CPU 0: a rate
    /// needs two readings.
    pub fn sample(&mut self, now_ms: u64) -> Usage {
        let cpu_limit = self
            .read(self.cgroup.join("cpu.max"))
            .and_then(|t| parse_cpu_max(&t));
        let mem_limit = self
            .read(self.cgroup.join("memory.max"))
            .and_then(|t| parse_memory_max(&t));
        let cgroup_cpu = self
            .read(self.cgroup.join("cpu.stat"))
            .and_then(|t| parse_cpu_stat_usage_usec(&t))
            .map(|us| us as f64 / 1e6);
        let cgroup_mem = self
            .read(self.cgroup.join("memory.current"))
            .and_then(|t| t.trim().parse::<u64>().ok());
        let source = if cpu_limit.is_some() && mem_limit.is_some() {
            LimitSource::Cgroup
        } else {
            LimitSource::Host
        };

        let cpu_seconds = cgroup_cpu.or_else(|| {
            self.read(self.proc.join("self/stat"))
                .and_then(|t| parse_proc_stat_ticks(&t))
                .map(|ticks| ticks as f64 / TICKS_PER_SECOND)
        });
        let cpus = match source {
            LimitSource::Cgroup => cpu_limit.unwrap_or(self.host_cpus),
            LimitSource::Host => self.host_cpus,
        };
        let cpu = match (cpu_seconds, self.last) {
            (Some(used), Some((last_used, last_ms))) if now_ms > last_ms => {
                let wall = (now_ms - last_ms) as f64 / 1000.0;
                ((used - last_used).max(0.0) / wall / cpus).max(0.0)
            }
            _ => 0.0,
        };
        if let Some(used) = cpu_seconds {
            self.last = Some((used, now_ms));
        }

        let mem_used = cgroup_mem.or_else(|| {
            self.read(self.proc.join("self/status"))
                .and_then(|t| parse_kb_field(&t, "VmRSS"))
        });
        let mem_total = match source {
            LimitSource::Cgroup => mem_limit,
            LimitSource::Host => self
                .read(self.proc.join("meminfo"))
                .and_then(|t| parse_kb_field(&t, "MemTotal")),
        };
        let mem = match (mem_used, mem_total) {
            (Some(used), Some(total)) if total > 0 => used as f64 / total as f64,
            _ => 0.0,
        };
        Usage {
            cpu: finite(cpu),
            mem: finite(mem),
            source,
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
        assert_eq!(
            parse_cpu_stat_usage_usec("usage_usec 1234\nuser_usec 1000\n"),
            Some(1234)
        );
        assert_eq!(parse_cpu_stat_usage_usec("user_usec 1000\n"), None);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "42 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1";
        assert_eq!(parse_proc_stat_ticks(stat), Some(300));
        assert_eq!(parse_proc_stat_ticks("nonsense"), None);
        let meminfo = "MemTotal:       16384 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_kb_field(meminfo, "MemTotal"), Some(16_384 * 1024));
        assert_eq!(parse_kb_field(meminfo, "VmRSS"), None);
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("test file");
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rtc-socket-node-{name}-{}-{}",
            std::process::id(),
            rtc_nanos()
        ));
        std::fs::create_dir_all(dir.join("self")).expect("test dir");
        dir
    }

    fn rtc_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    #[test]
    fn a_limited_cgroup_gives_fractions_of_its_limits() {
        let cg = temp_dir("cg");
        write(&cg, "cpu.max", "200000 100000\n");
        write(&cg, "memory.max", "1000000\n");
        write(&cg, "memory.current", "250000\n");
        write(&cg, "cpu.stat", "usage_usec 1000000\n");
        let mut s = Sampler::new(&cg, &cg);
        let first = s.sample(10_000);
        assert_eq!(first.source, LimitSource::Cgroup);
        assert!(first.cpu.abs() < 1e-9);
        assert!((first.mem - 0.25).abs() < 1e-9);
        // One CPU-second over one wall second on a 2-CPU limit: half.
        write(&cg, "cpu.stat", "usage_usec 2000000\n");
        let second = s.sample(11_000);
        assert!((second.cpu - 0.5).abs() < 1e-9, "{second:?}");
        let _ = std::fs::remove_dir_all(cg);
    }

    #[test]
    fn no_limit_falls_back_to_the_host_and_says_so() {
        let cg = temp_dir("host");
        write(&cg, "cpu.max", "max 100000\n");
        write(&cg, "memory.max", "max\n");
        write(&cg, "memory.current", "1024\n");
        write(&cg, "meminfo", "MemTotal: 4 kB\n");
        let mut s = Sampler::new(&cg, &cg);
        let usage = s.sample(0);
        assert_eq!(usage.source, LimitSource::Host);
        assert!((usage.mem - 0.25).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(cg);
    }

    #[test]
    fn the_real_system_gives_finite_fractions() {
        let mut s = Sampler::system();
        let _ = s.sample(0);
        let usage = s.sample(1_000);
        assert!(usage.cpu.is_finite() && usage.cpu >= 0.0);
        assert!(usage.mem.is_finite() && (0.0..=1.0).contains(&usage.mem));
    }
}
