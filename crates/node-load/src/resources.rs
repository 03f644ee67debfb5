//! CPU and memory as fractions of the limits of the cgroup the process is
//! in, under cgroup v1 or v2, or of the host where there is no limit
//! (reported per resource as [`LimitSource::Host`]).
//!
//! # Where the files are
//!
//! As the kubelet and cAdvisor do, the process's own cgroups come from
//! `/proc/self/cgroup` and the mount points of their hierarchies from
//! `/proc/self/mountinfo` ([`locate`]). Each controller is looked for in a
//! v1 hierarchy first, then in the v2 one: on a host that mounts v1 the v2
//! mount (often `/sys/fs/cgroup/unified`) carries no controllers. The CPU
//! limit, the CPU counter and memory may sit in three different v1
//! hierarchies (`cpu`, `cpuacct`, `memory`) or share one.
//!
//! Inside a container with a cgroup namespace the path is `/` and the mount
//! is the container's own, so the files read are those directly under
//! `/sys/fs/cgroup`. When `/proc/self/cgroup` and `/proc/self/mountinfo`
//! do not place a controller, its files are read as v2 directly under the
//! cgroup root the [`Sampler`] was given (normally `/sys/fs/cgroup`).
//!
//! # What is read
//!
//! | | v1 | v2 |
//! |---|---|---|
//! | CPU limit (CPUs) | `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1: none) | `cpu.max` (`max`: none) |
//! | CPU used | `cpuacct.usage` (ns) | `usage_usec` of `cpu.stat` |
//! | memory limit | `memory.limit_in_bytes` and `hierarchical_memory_limit` of `memory.stat` (at least 2^62, or more than the host's `MemTotal`: none) | `memory.max` (`max`: none) |
//! | memory used | `memory.usage_in_bytes` − `total_inactive_file` of `memory.stat` | `memory.current` − `inactive_file` of `memory.stat` |
//!
//! A limit is the tightest of the process's cgroup and its parents up to
//! the mount point, because a limit set on an enclosing cgroup (a pod
//! around its containers) binds the process just as well. Memory used is
//! the working set, as the kubelet computes it: inactive file cache is the
//! first thing the kernel reclaims under the limit, so counting it would
//! report pressure that is not there.
//!
//! # Falling back
//!
//! Each resource falls back on its own: CPU is a fraction of the cgroup's
//! CPU limit when there is one, else of the host's CPUs; memory of the
//! cgroup's memory limit when there is one, else of the host's `MemTotal`.
//! [`Usage::cpu_of`] and [`Usage::mem_of`] say which ([`LimitSource::Host`]
//! for a fallback), so a container with a memory limit but none for CPU (a
//! common choice) still reports memory against its limit. A counter the
//! cgroup files do not give comes from `/proc/self/stat` (CPU) and `VmRSS`
//! of `/proc/self/status` (memory).
//!
//! Parsing is pure; [`Sampler`] reads the files under roots it is given, so
//! tests point it at a directory of their own.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use rtc_heartbeat::LimitSource;

/// `cpu.max` (v2): `max 100000` (no limit) or `<quota> <period>` in µs; the
/// limit in CPUs.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    let cpus = quota / period;
    (quota > 0.0 && period > 0.0 && cpus.is_finite()).then_some(cpus)
}

/// `memory.max` (v2): `max` (no limit) or bytes.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|v| *v > 0)
}

/// `usage_usec` from `cpu.stat` (v2).
pub fn parse_cpu_stat_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// `cpu.cfs_quota_us` and `cpu.cfs_period_us` (v1), both in µs; the limit
/// in CPUs. A quota of -1 is no limit.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// A file holding one count: `cpuacct.usage` (v1, ns), `memory.usage_in_bytes`
/// and `memory.limit_in_bytes` (v1), `memory.current` (v2).
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v1 writes "no limit" as a huge page-aligned number (2^63 − 4096 on
/// 64-bit kernels), never as a word.
pub const V1_NO_LIMIT_FROM: u64 = 1 << 62;

/// A v1 memory limit in bytes, or `None` when it is no limit: zero, at least
/// [`V1_NO_LIMIT_FROM`], or more than the host has (`host_total`), which
/// cannot bind either.
pub fn v1_memory_limit(bytes: u64, host_total: Option<u64>) -> Option<u64> {
    (bytes > 0 && bytes < V1_NO_LIMIT_FROM && host_total.is_none_or(|total| bytes <= total))
        .then_some(bytes)
}

/// The value of `key` in `memory.stat` (v1 and v2: `<key> <n>` lines).
pub fn parse_memory_stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        if parts.next()? != key {
            return None;
        }
        parts.next()?.parse().ok()
    })
}

/// Memory in use less the inactive file cache, as the kubelet computes the
/// working set; without a `memory.stat` figure, all of `usage`.
pub fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// utime + stime (fields 14 and 15, clock ticks) from `/proc/self/stat`.
pub fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3, so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    utime.checked_add(stime)
}

/// A `Key: <n> kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
pub fn parse_kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// Which cgroup interface a directory speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (or per set of co-mounted controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// One line of `/proc/self/cgroup`: `<hierarchy>:<controllers>:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    /// The hierarchy id; 0 is the v2 hierarchy.
    pub hierarchy: u32,
    /// The controllers of a v1 hierarchy (`cpu`, `cpuacct`, `name=systemd`);
    /// empty for v2.
    pub controllers: Vec<String>,
    /// The process's cgroup, from the root of the hierarchy as the
    /// process's cgroup namespace sees it.
    pub path: String,
}

/// The lines of `/proc/self/cgroup`; malformed lines are left out.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupEntry> {
    text.lines()
        .filter_map(|line| {
            // The path is last and may itself hold colons.
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.trim().parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?;
            path.starts_with('/').then(|| CgroupEntry {
                hierarchy,
                controllers,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// A cgroup filesystem mount, from one line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// `cgroup` (v1) or `cgroup2` (v2).
    pub version: CgroupVersion,
    /// The controllers a v1 mount lists in its super options; empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup the mount shows at its mount point: `/` for a whole
    /// hierarchy, a cgroup's path when a runtime bind-mounts only that.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The cgroup mounts in `/proc/self/mountinfo`; other mounts and malformed
/// lines are left out.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            // `id parent major:minor root mount-point options [optional...]
            // - fstype source super-options`; spaces inside paths are
            // escaped, so the separator is unambiguous.
            let (mount, fs) = line.split_once(" - ")?;
            let mut mount = mount.split_whitespace();
            let root = unescape_mountinfo(mount.nth(3)?);
            let mount_point = unescape_mountinfo(mount.next()?);
            let mut fs = fs.split_whitespace();
            let fstype = fs.next()?;
            let super_options = fs.nth(1).unwrap_or("");
            let (version, controllers) = match fstype {
                "cgroup2" => (CgroupVersion::V2, Vec::new()),
                "cgroup" => (
                    CgroupVersion::V1,
                    super_options
                        .split(',')
                        .filter(|o| !matches!(*o, "" | "rw" | "ro"))
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => return None,
            };
            (root.starts_with('/') && mount_point.starts_with('/')).then(|| CgroupMount {
                version,
                controllers,
                root: PathBuf::from(root),
                mount_point: PathBuf::from(mount_point),
            })
        })
        .collect()
}

/// Undoes the `\ooo` octal escapes mountinfo writes for space, tab, newline
/// and backslash.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = if bytes[i] == b'\\' {
            bytes.get(i + 1..i + 4).and_then(octal_byte)
        } else {
            None
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let value = digits.iter().try_fold(0u32, |acc, d| match d {
        b'0'..=b'7' => Some(acc * 8 + u32::from(d - b'0')),
        _ => None,
    })?;
    u8::try_from(value).ok()
}

/// A cgroup directory of the process and the mount it is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The interface of its files.
    pub version: CgroupVersion,
    /// The mount point of its hierarchy: parents above it cannot be seen.
    pub mount: PathBuf,
    /// The process's cgroup; `mount` or under it.
    pub dir: PathBuf,
}

impl CgroupDir {
    /// A v2 group at the root of its mount.
    pub fn v2_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            version: CgroupVersion::V2,
            mount: root.clone(),
            dir: root,
        }
    }

    /// `dir` and its parents up to the mount point, own first.
    fn up_to_mount(&self) -> impl Iterator<Item = &Path> {
        self.dir
            .ancestors()
            .take_while(|p| p.starts_with(&self.mount))
    }
}

impl fmt::Display for CgroupDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.version, self.dir.display())
    }
}

/// Where the process's cgroup files are, per kind of reading; `None` where
/// neither a v1 nor the v2 hierarchy places it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// The CPU limit: v1 `cpu`, or v2.
    pub cpu: Option<CgroupDir>,
    /// The CPU counter: v1 `cpuacct`, or v2.
    pub cpuacct: Option<CgroupDir>,
    /// Memory limit and use: v1 `memory`, or v2.
    pub memory: Option<CgroupDir>,
}

/// The process's cgroup directories, from the lines of `/proc/self/cgroup`
/// and the cgroup mounts of `/proc/self/mountinfo`.
///
/// A controller in a v1 hierarchy is found there; otherwise in v2. Among
/// several mounts of a hierarchy, the one whose root holds the process's
/// path most closely wins. When none holds it (a runtime that mounted the
/// container's own cgroup while `/proc/self/cgroup` shows the host's path),
/// the mount point itself is the process's cgroup.
pub fn locate(entries: &[CgroupEntry], mounts: &[CgroupMount]) -> CgroupPaths {
    let v2 = entries
        .iter()
        .find(|e| e.hierarchy == 0 && e.controllers.is_empty())
        .and_then(|e| {
            place(
                mounts.iter().filter(|m| m.version == CgroupVersion::V2),
                &e.path,
                CgroupVersion::V2,
            )
        });
    let v1 = |controller: &str| {
        let entry = entries
            .iter()
            .find(|e| e.hierarchy != 0 && e.controllers.iter().any(|c| c == controller))?;
        place(
            mounts.iter().filter(|m| {
                m.version == CgroupVersion::V1 && m.controllers.iter().any(|c| c == controller)
            }),
            &entry.path,
            CgroupVersion::V1,
        )
    };
    CgroupPaths {
        cpu: v1("cpu").or_else(|| v2.clone()),
        cpuacct: v1("cpuacct").or_else(|| v2.clone()),
        memory: v1("memory").or(v2),
    }
}

fn place<'a>(
    mounts: impl Iterator<Item = &'a CgroupMount>,
    path: &str,
    version: CgroupVersion,
) -> Option<CgroupDir> {
    let path = Path::new(path);
    let mut first = None;
    let mut best: Option<(&CgroupMount, &Path)> = None;
    for mount in mounts {
        first.get_or_insert(mount);
        let Ok(rel) = path.strip_prefix(&mount.root) else {
            continue;
        };
        // A path that climbs out of the mount (`/../..` when the process
        // sits outside its cgroup namespace) has no directory under it.
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let closer =
            best.is_none_or(|(b, _)| mount.root.components().count() > b.root.components().count());
        if plain && closer {
            best = Some((mount, rel));
        }
    }
    let (mount, rel) = best.or_else(|| first.map(|m| (m, Path::new(""))))?;
    let mut dir = mount.mount_point.clone();
    // Component by component: joining an empty `rel` would add a slash.
    for part in rel.components() {
        dir.push(part);
    }
    Some(CgroupDir {
        version,
        mount: mount.mount_point.clone(),
        dir,
    })
}

/// What the cgroup files say, before it is turned into fractions; `None`
/// where a file is missing, malformed or says "no limit".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupReading {
    /// The CPU limit in CPUs.
    pub cpu_limit: Option<f64>,
    /// The memory limit in bytes.
    pub mem_limit: Option<u64>,
    /// CPU time the cgroup has used, in seconds.
    pub cpu_seconds: Option<f64>,
    /// The cgroup's working set in bytes.
    pub mem_used: Option<u64>,
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU use over the last interval as a fraction of the limit named by
    /// `cpu_of` (0..1, may exceed 1 briefly when accounting lags).
    pub cpu: f64,
    /// Memory in use as a fraction of the limit named by `mem_of`.
    pub mem: f64,
    /// What `cpu` is a fraction of: the cgroup's CPU limit, or the host's
    /// CPUs when there is none.
    pub cpu_of: LimitSource,
    /// What `mem` is a fraction of: the cgroup's memory limit, or the
    /// host's `MemTotal` when there is none.
    pub mem_of: LimitSource,
}

/// Reads usage every time it is asked; remembers the last CPU counter to
/// turn it into a rate.
#[derive(Debug)]
pub struct Sampler {
    cgroup: PathBuf,
    proc: PathBuf,
    host_cpus: f64,
    /// `/proc/self/cgroup` as last read: the directories are located again
    /// only when it changes, that is when the process has been moved.
    membership: Option<String>,
    dirs: Dirs,
    last: Option<LastCpu>,
}

#[derive(Debug, Clone, PartialEq)]
struct Dirs {
    cpu: CgroupDir,
    cpuacct: CgroupDir,
    memory: CgroupDir,
}

#[derive(Debug, Clone, Copy)]
struct LastCpu {
    seconds: f64,
    at_ms: u64,
    /// Cgroup and `/proc` counters start from different zeros: a rate
    /// across the two would be noise.
    from_cgroup: bool,
}

/// Clock ticks per second of `/proc` CPU counters: 100 on every Linux the
/// node runs on (USER_HZ is fixed for user space).
const TICKS_PER_SECOND: f64 = 100.0;

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The tightest limit over `dir` and its parents up to the mount.
fn tightest<T: PartialOrd>(dir: &CgroupDir, limit: impl Fn(&Path) -> Option<T>) -> Option<T> {
    dir.up_to_mount()
        .filter_map(limit)
        .reduce(|a, b| if b < a { b } else { a })
}

impl Sampler {
    /// Reads the process files under `proc` (normally `/proc`) and the
    /// cgroup directories they name; a controller they do not place is read
    /// as v2 directly under `cgroup` (normally `/sys/fs/cgroup`).
    pub fn new(cgroup: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let cgroup = cgroup.into();
        let root = CgroupDir::v2_root(cgroup.clone());
        Self {
            cgroup,
            proc: proc.into(),
            host_cpus,
            membership: None,
            dirs: Dirs {
                cpu: root.clone(),
                cpuacct: root.clone(),
                memory: root,
            },
            last: None,
        }
    }

    /// The system's own paths.
    pub fn system() -> Self {
        Self::new("/sys/fs/cgroup", "/proc")
    }

    /// Finds the process's cgroup directories again if it has moved.
    fn relocate(&mut self) {
        let membership = read(&self.proc.join("self/cgroup"));
        if membership == self.membership {
            return;
        }
        let located = match &membership {
            Some(text) => {
                // Lossy: a mount point that is not UTF-8 must not hide the
                // cgroup mounts on the other lines.
                let mounts = std::fs::read(self.proc.join("self/mountinfo"))
                    .map(|bytes| parse_mountinfo(&String::from_utf8_lossy(&bytes)))
                    .unwrap_or_default();
                locate(&parse_proc_cgroup(text), &mounts)
            }
            None => CgroupPaths::default(),
        };
        let root = CgroupDir::v2_root(self.cgroup.clone());
        let dirs = Dirs {
            cpu: located.cpu.unwrap_or_else(|| root.clone()),
            cpuacct: located.cpuacct.unwrap_or_else(|| root.clone()),
            memory: located.memory.unwrap_or(root),
        };
        if dirs != self.dirs {
            tracing::info!(
                cpu = %dirs.cpu,
                cpuacct = %dirs.cpuacct,
                memory = %dirs.memory,
                "reading the cgroup files of the process"
            );
            // Another cgroup's counter: no rate across the move.
            self.last = None;
            self.dirs = dirs;
        }
        self.membership = membership;
    }

    fn host_memory(&self) -> Option<u64> {
        read(&self.proc.join("meminfo")).and_then(|t| parse_kb_field(&t, "MemTotal"))
    }

    /// What the process's cgroup files say now.
    pub fn read_cgroup(&mut self) -> CgroupReading {
        self.relocate();
        self.read_located(self.host_memory())
    }

    fn read_located(&self, host_memory: Option<u64>) -> CgroupReading {
        let cpu = &self.dirs.cpu;
        let cpu_limit = match cpu.version {
            CgroupVersion::V1 => tightest(cpu, |d| {
                parse_cfs_quota(
                    &read(&d.join("cpu.cfs_quota_us"))?,
                    &read(&d.join("cpu.cfs_period_us"))?,
                )
            }),
            CgroupVersion::V2 => tightest(cpu, |d| parse_cpu_max(&read(&d.join("cpu.max"))?)),
        };
        let acct = &self.dirs.cpuacct;
        let cpu_seconds = match acct.version {
            CgroupVersion::V1 => read(&acct.dir.join("cpuacct.usage"))
                .and_then(|t| parse_count(&t))
                .map(|ns| ns as f64 / 1e9),
            CgroupVersion::V2 => read(&acct.dir.join("cpu.stat"))
                .and_then(|t| parse_cpu_stat_usage_usec(&t))
                .map(|us| us as f64 / 1e6),
        };
        let mem = &self.dirs.memory;
        let stat = read(&mem.dir.join("memory.stat"));
        let (mem_limit, mem_used) = match mem.version {
            CgroupVersion::V1 => {
                let own = read(&mem.dir.join("memory.limit_in_bytes"))
                    .and_then(|t| parse_count(&t))
                    .and_then(|b| v1_memory_limit(b, host_memory));
                // The kernel's own minimum over every parent, including
                // those above the mount that a container cannot see; v1
                // has no such figure for the CPU quota.
                let hierarchical = stat
                    .as_deref()
                    .and_then(|s| parse_memory_stat(s, "hierarchical_memory_limit"))
                    .and_then(|b| v1_memory_limit(b, host_memory));
                let limit = match (own, hierarchical) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let inactive = stat
                    .as_deref()
                    .and_then(|s| parse_memory_stat(s, "total_inactive_file"));
                let used = read(&mem.dir.join("memory.usage_in_bytes"))
                    .and_then(|t| parse_count(&t))
                    .map(|usage| working_set(usage, inactive));
                (limit, used)
            }
            CgroupVersion::V2 => {
                let limit = tightest(mem, |d| parse_memory_max(&read(&d.join("memory.max"))?));
                let inactive = stat
                    .as_deref()
                    .and_then(|s| parse_memory_stat(s, "inactive_file"));
                let used = read(&mem.dir.join("memory.current"))
                    .and_then(|t| parse_count(&t))
                    .map(|usage| working_set(usage, inactive));
                (limit, used)
            }
        };
        CgroupReading {
            cpu_limit,
            mem_limit,
            cpu_seconds,
            mem_used,
        }
    }

    /// Usage at `now_ms` (monotonic). The first call reports CPU 0: a rate
    /// needs two readings. So does the first call after the process has
    /// moved to another cgroup.
    pub fn sample(&mut self, now_ms: u64) -> Usage {
        self.relocate();
        let host_memory = self.host_memory();
        let reading = self.read_located(host_memory);
        let (cpu_of, cpus) = match reading.cpu_limit {
            Some(cpus) => (LimitSource::Cgroup, cpus),
            None => (LimitSource::Host, self.host_cpus),
        };
        let (mem_of, mem_total) = match reading.mem_limit {
            Some(bytes) => (LimitSource::Cgroup, Some(bytes)),
            None => (LimitSource::Host, host_memory),
        };

        let cpu_seconds = reading.cpu_seconds.map(|s| (s, true)).or_else(|| {
            read(&self.proc.join("self/stat"))
                .and_then(|t| parse_proc_stat_ticks(&t))
                .map(|ticks| (ticks as f64 / TICKS_PER_SECOND, false))
        });
        let cpu = match (cpu_seconds, self.last) {
            (Some((used, from_cgroup)), Some(last))
                if last.from_cgroup == from_cgroup && now_ms > last.at_ms =>
            {
                let wall = (now_ms - last.at_ms) as f64 / 1000.0;
                ((used - last.seconds).max(0.0) / wall / cpus).max(0.0)
            }
            _ => 0.0,
        };
        if let Some((seconds, from_cgroup)) = cpu_seconds {
            self.last = Some(LastCpu {
                seconds,
                at_ms: now_ms,
                from_cgroup,
            });
        }

        let mem_used = reading.mem_used.or_else(|| {
            read(&self.proc.join("self/status")).and_then(|t| parse_kb_field(&t, "VmRSS"))
        });
        let mem = match (mem_used, mem_total) {
            (Some(used), Some(total)) if total > 0 => used as f64 / total as f64,
            _ => 0.0,
        };
        Usage {
            cpu: finite(cpu),
            mem: finite(mem),
            cpu_of,
            mem_of,
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
    fn malformed_v2_files_give_none() {
        for text in ["", "\n", "0 100000", "-5 100000", "100000 0", "100000 -1"] {
            assert_eq!(parse_cpu_max(text), None, "{text:?}");
        }
        for text in ["inf 100000", "NaN 100000", "100000 NaN", "1e400 1"] {
            assert_eq!(parse_cpu_max(text), None, "{text:?}");
        }
        for text in ["", "0", "-1", "lots", "1.5", "99999999999999999999999"] {
            assert_eq!(parse_memory_max(text), None, "{text:?}");
        }
        for text in ["", "usage_usec", "usage_usec x", "usage_usec -1"] {
            assert_eq!(parse_cpu_stat_usage_usec(text), None, "{text:?}");
        }
    }

    #[test]
    fn v1_cpu_files_parse() {
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs_quota("250000", "100000"), Some(2.5));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None);
        for (quota, period) in [("", "100000"), ("x", "100000"), ("0", "100000")] {
            assert_eq!(parse_cfs_quota(quota, period), None, "{quota:?}");
        }
        for period in ["", "0", "-100000", "1.5"] {
            assert_eq!(parse_cfs_quota("50000", period), None, "{period:?}");
        }
        assert_eq!(parse_count("654417620619\n"), Some(654_417_620_619));
        for text in ["", " \n", "-1", "12 34", "0x10"] {
            assert_eq!(parse_count(text), None, "{text:?}");
        }
    }

    #[test]
    fn v1_memory_limits_parse() {
        let gib = 1 << 30;
        assert_eq!(v1_memory_limit(gib, Some(16 * gib)), Some(gib));
        assert_eq!(v1_memory_limit(gib, None), Some(gib));
        // What an unlimited v1 group says on a 64-bit kernel.
        assert_eq!(v1_memory_limit(9_223_372_036_854_771_712, None), None);
        assert_eq!(v1_memory_limit(V1_NO_LIMIT_FROM, None), None);
        assert_eq!(
            v1_memory_limit(V1_NO_LIMIT_FROM - 1, None),
            Some(V1_NO_LIMIT_FROM - 1)
        );
        // More than the host has cannot bind.
        assert_eq!(v1_memory_limit(32 * gib, Some(16 * gib)), None);
        assert_eq!(v1_memory_limit(16 * gib, Some(16 * gib)), Some(16 * gib));
        assert_eq!(v1_memory_limit(0, None), None);
    }

    #[test]
    fn memory_stat_parses_for_both_versions() {
        let v1 = "cache 73728\nrss 1769472\ninactive_file 16384\n\
                  hierarchical_memory_limit 9223372036854771712\n\
                  total_cache 73728\ntotal_inactive_file 32768\n";
        assert_eq!(parse_memory_stat(v1, "inactive_file"), Some(16_384));
        assert_eq!(parse_memory_stat(v1, "total_inactive_file"), Some(32_768));
        assert_eq!(
            parse_memory_stat(v1, "hierarchical_memory_limit"),
            Some(9_223_372_036_854_771_712)
        );
        let v2 = "anon 1000\nfile 5000\nactive_file 3000\ninactive_file 2000\n";
        assert_eq!(parse_memory_stat(v2, "inactive_file"), Some(2_000));
        assert_eq!(parse_memory_stat(v2, "total_inactive_file"), None);
        // A key is a whole word, never a prefix.
        assert_eq!(
            parse_memory_stat("inactive_file_x 5\n", "inactive_file"),
            None
        );
        for text in ["", "inactive_file", "inactive_file x", "inactive_file -3"] {
            assert_eq!(parse_memory_stat(text, "inactive_file"), None, "{text:?}");
        }
    }

    #[test]
    fn the_working_set_leaves_out_inactive_file_cache() {
        assert_eq!(working_set(1000, Some(300)), 700);
        assert_eq!(working_set(1000, None), 1000);
        // Counters read at slightly different moments may cross.
        assert_eq!(working_set(300, Some(1000)), 0);
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

    #[test]
    fn malformed_proc_files_give_none() {
        for stat in ["", ")", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 a b"] {
            assert_eq!(parse_proc_stat_ticks(stat), None, "{stat:?}");
        }
        let huge = format!("1 (x) S 1 2 3 4 5 6 7 8 9 10 {} 1", u64::MAX);
        assert_eq!(parse_proc_stat_ticks(&huge), None);
        for text in [
            "MemTotal:",
            "MemTotal: x kB",
            "MemTotal 5 kB",
            "MemTotalX: 5 kB",
        ] {
            assert_eq!(parse_kb_field(text, "MemTotal"), None, "{text:?}");
        }
        let huge = format!("MemTotal: {} kB", u64::MAX);
        assert_eq!(parse_kb_field(&huge, "MemTotal"), None);
    }

    fn entry(hierarchy: u32, controllers: &[&str], path: &str) -> CgroupEntry {
        CgroupEntry {
            hierarchy,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            path: path.to_string(),
        }
    }

    #[test]
    fn proc_self_cgroup_parses_v1_v2_and_hybrid() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/0f88\n2:cpuacct:/\n\
                      1:cpu:/\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            vec![
                entry(9, &["name=systemd"], "/"),
                entry(4, &["memory"], "/process_api/0f88"),
                entry(2, &["cpuacct"], "/"),
                entry(1, &["cpu"], "/"),
                entry(0, &[], "/"),
            ]
        );
        assert_eq!(
            parse_proc_cgroup("3:cpu,cpuacct:/kubepods/pod1/abc\n"),
            vec![entry(3, &["cpu", "cpuacct"], "/kubepods/pod1/abc")]
        );
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/a:b.service\n"),
            vec![entry(0, &[], "/system.slice/a:b.service")]
        );
    }

    #[test]
    fn malformed_proc_self_cgroup_lines_are_left_out() {
        let text = "\nnonsense\n1:cpu\nx:cpu:/a\n-1:cpu:/a\n2:memory:relative\n\
                    3:memory:\n4:cpuacct:/kept\n";
        assert_eq!(
            parse_proc_cgroup(text),
            vec![entry(4, &["cpuacct"], "/kept")]
        );
        assert_eq!(parse_proc_cgroup(""), vec![]);
    }

    fn mount(version: CgroupVersion, controllers: &[&str], root: &str, at: &str) -> CgroupMount {
        CgroupMount {
            version,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            root: PathBuf::from(root),
            mount_point: PathBuf::from(at),
        }
    }

    /// This layout is what a host that mounts cgroup v1 shows.
    const V1_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,relatime shared:12 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_gives_the_cgroup_mounts() {
        use CgroupVersion::{V1, V2};
        assert_eq!(
            parse_mountinfo(V1_MOUNTINFO),
            vec![
                mount(V1, &["cpu"], "/", "/sys/fs/cgroup/cpu"),
                mount(V1, &["cpuacct"], "/", "/sys/fs/cgroup/cpuacct"),
                mount(V1, &["memory"], "/", "/sys/fs/cgroup/memory"),
                mount(V1, &["name=systemd"], "/", "/sys/fs/cgroup/systemd"),
                mount(V2, &[], "/", "/sys/fs/cgroup/unified"),
            ]
        );
        let v2 = "1043 1041 0:27 /../.. /sys/fs/cgroup ro,nosuid master:9 shared:3 - \
                  cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            parse_mountinfo(v2),
            vec![mount(V2, &[], "/../..", "/sys/fs/cgroup")]
        );
        let comounted = "25 24 0:22 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup \
                         ro,cpu,cpuacct\n";
        assert_eq!(
            parse_mountinfo(comounted),
            vec![mount(
                V1,
                &["cpu", "cpuacct"],
                "/docker/abc",
                "/sys/fs/cgroup/cpu,cpuacct"
            )]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let text = "40 31 0:37 /a\\040b /mnt/with\\040space\\134x - cgroup2 none rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![mount(CgroupVersion::V2, &[], "/a b", "/mnt/with space\\x")]
        );
        // Not an escape: kept as it is.
        assert_eq!(unescape_mountinfo("\\9x\\"), "\\9x\\");
        assert_eq!(unescape_mountinfo("\\777"), "\\777");
        assert_eq!(unescape_mountinfo("end\\04"), "end\\04");
    }

    #[test]
    fn malformed_mountinfo_lines_are_left_out() {
        let text = "\nnonsense\n1 2 3 - cgroup2\n1 2 0:1 / /x rw cgroup2 cgroup2 rw\n\
                    1 2 0:1 / /x rw -\n1 2 0:1 relative /x rw - cgroup2 c rw\n\
                    1 2 0:1 / /kept rw - cgroup2 c rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![mount(CgroupVersion::V2, &[], "/", "/kept")]
        );
    }

    fn dir(version: CgroupVersion, mount: &str, dir: &str) -> Option<CgroupDir> {
        Some(CgroupDir {
            version,
            mount: PathBuf::from(mount),
            dir: PathBuf::from(dir),
        })
    }

    #[test]
    fn locate_takes_v1_controllers_before_the_bare_v2_mount() {
        use CgroupVersion::V1;
        let entries = parse_proc_cgroup(
            "9:name=systemd:/pod/app\n4:memory:/pod/app\n2:cpuacct:/pod/app\n\
             1:cpu:/pod/app\n0::/pod/app\n",
        );
        let paths = locate(&entries, &parse_mountinfo(V1_MOUNTINFO));
        assert_eq!(
            paths,
            CgroupPaths {
                cpu: dir(V1, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu/pod/app"),
                cpuacct: dir(
                    V1,
                    "/sys/fs/cgroup/cpuacct",
                    "/sys/fs/cgroup/cpuacct/pod/app"
                ),
                memory: dir(V1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/pod/app"),
            }
        );
    }

    #[test]
    fn locate_finds_v2_at_the_process_path() {
        use CgroupVersion::V2;
        let mounts = vec![mount(V2, &[], "/", "/sys/fs/cgroup")];
        // A container with its own cgroup namespace: the mount is its own.
        let own = dir(V2, "/sys/fs/cgroup", "/sys/fs/cgroup");
        let paths = locate(&parse_proc_cgroup("0::/\n"), &mounts);
        assert_eq!(
            (paths.cpu, paths.cpuacct, paths.memory),
            (own.clone(), own.clone(), own)
        );
        // A nested cgroup.
        let nested = dir(V2, "/sys/fs/cgroup", "/sys/fs/cgroup/kubepods/pod1/app");
        let paths = locate(&parse_proc_cgroup("0::/kubepods/pod1/app\n"), &mounts);
        assert_eq!(paths.memory, nested);
    }

    #[test]
    fn locate_handles_mounts_of_part_of_a_hierarchy() {
        use CgroupVersion::{V1, V2};
        // A runtime without cgroup namespaces bind-mounts the container's
        // own group; /proc/self/cgroup shows the host's path to it.
        let mounts = vec![
            mount(
                V1,
                &["cpu", "cpuacct"],
                "/docker/abc",
                "/sys/fs/cgroup/cpu,cpuacct",
            ),
            mount(V1, &["memory"], "/docker/abc", "/sys/fs/cgroup/memory"),
        ];
        let entries = parse_proc_cgroup("5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc/x\n");
        let paths = locate(&entries, &mounts);
        assert_eq!(
            paths.cpu,
            dir(
                V1,
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpu,cpuacct/x"
            )
        );
        assert_eq!(paths.cpuacct, paths.cpu);
        assert_eq!(
            paths.memory,
            dir(V1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory")
        );

        // A path the mount does not hold (or one that climbs out of the
        // namespace) falls back to the mount point.
        let mounts = vec![mount(V2, &[], "/kubepods/pod1/app", "/sys/fs/cgroup")];
        for path in ["0::/elsewhere\n", "0::/../../x\n"] {
            let paths = locate(&parse_proc_cgroup(path), &mounts);
            assert_eq!(
                paths.memory,
                dir(V2, "/sys/fs/cgroup", "/sys/fs/cgroup"),
                "{path}"
            );
        }

        // Of two mounts of one hierarchy, the one closest to the path.
        let mounts = vec![
            mount(V2, &[], "/", "/host/cgroup"),
            mount(V2, &[], "/pod", "/sys/fs/cgroup"),
        ];
        let paths = locate(&parse_proc_cgroup("0::/pod/app\n"), &mounts);
        assert_eq!(
            paths.memory,
            dir(V2, "/sys/fs/cgroup", "/sys/fs/cgroup/app")
        );
    }

    #[test]
    fn locate_says_none_where_nothing_places_a_controller() {
        use CgroupVersion::{V1, V2};
        assert_eq!(locate(&[], &[]), CgroupPaths::default());
        // Listed but not mounted here, and no v2 line to fall back to.
        let entries = parse_proc_cgroup("4:memory:/a\n");
        assert_eq!(locate(&entries, &[]), CgroupPaths::default());
        // A v1 controller that is not mounted here falls back to v2.
        let entries = parse_proc_cgroup("4:memory:/a\n1:cpu:/a\n0::/a\n");
        let mounts = vec![
            mount(V1, &["cpu"], "/", "/cg/cpu"),
            mount(V2, &[], "/", "/cg/unified"),
        ];
        let paths = locate(&entries, &mounts);
        assert_eq!(paths.cpu, dir(V1, "/cg/cpu", "/cg/cpu/a"));
        assert_eq!(paths.cpuacct, dir(V2, "/cg/unified", "/cg/unified/a"));
        assert_eq!(paths.memory, dir(V2, "/cg/unified", "/cg/unified/a"));
    }

    /// Writes `text` to `dir/name`, making the directories on the way.
    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("test dir");
        }
        std::fs::write(path, text).expect("test file");
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
        use rtc_time::WallClock;
        rtc_time::SystemClock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn sources(usage: &Usage) -> (LimitSource, LimitSource) {
        (usage.cpu_of, usage.mem_of)
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
        assert_eq!(sources(&first), (LimitSource::Cgroup, LimitSource::Cgroup));
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
        assert_eq!(sources(&usage), (LimitSource::Host, LimitSource::Host));
        assert!((usage.mem - 0.25).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(cg);
    }

    /// A `/proc` and a cgroup tree laid out like a host that mounts v1 in
    /// separate hierarchies, the process in the nested group `/pod/app`.
    struct V1Host {
        root: PathBuf,
        proc: PathBuf,
        cg: PathBuf,
    }

    impl V1Host {
        fn new(name: &str) -> Self {
            let root = temp_dir(name);
            let proc = root.join("proc");
            let cg = root.join("sys/fs/cgroup");
            let at = cg.display();
            write(
                &proc,
                "self/cgroup",
                "9:name=systemd:/pod/app\n4:memory:/pod/app\n2:cpuacct:/pod/app\n\
                 1:cpu:/pod/app\n0::/pod/app\n",
            );
            write(
                &proc,
                "self/mountinfo",
                &format!(
                    "31 23 0:28 / {at} rw,relatime - tmpfs tmpfs rw,mode=755\n\
                     32 31 0:29 / {at}/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
                     33 31 0:30 / {at}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
                     35 31 0:32 / {at}/memory rw,relatime - cgroup cgroup rw,memory\n\
                     41 31 0:38 / {at}/unified rw,relatime - cgroup2 cgroup2 rw\n"
                ),
            );
            write(&proc, "meminfo", "MemTotal: 16384 kB\n");
            // What the code read before it knew v1: had it been read, the
            // numbers below would not come out.
            write(&cg, "cpu.max", "10000 100000\n");
            write(&cg, "memory.max", "1\n");
            write(&cg, "unified/pod/app/cpu.stat", "usage_usec 99000000\n");
            // The roots of the hierarchies: no limit, and other numbers.
            write(&cg, "cpu/cpu.cfs_quota_us", "-1\n");
            write(&cg, "cpu/cpu.cfs_period_us", "100000\n");
            write(&cg, "cpuacct/cpuacct.usage", "99000000000\n");
            write(&cg, "memory/memory.limit_in_bytes", "9223372036854771712\n");
            write(&cg, "memory/memory.usage_in_bytes", "9999999\n");
            Self { root, proc, cg }
        }

        fn sampler(&self) -> Sampler {
            Sampler::new(&self.cg, &self.proc)
        }
    }

    impl Drop for V1Host {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn v1_hierarchies_give_fractions_of_the_process_cgroup_limits() {
        let host = V1Host::new("v1");
        let cg = &host.cg;
        // The quota is on the enclosing group; the process's own has none.
        write(cg, "cpu/pod/cpu.cfs_quota_us", "150000\n");
        write(cg, "cpu/pod/cpu.cfs_period_us", "100000\n");
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "-1\n");
        write(cg, "cpu/pod/app/cpu.cfs_period_us", "100000\n");
        write(cg, "cpuacct/pod/app/cpuacct.usage", "1000000000\n");
        write(cg, "memory/pod/app/memory.limit_in_bytes", "1000000\n");
        write(cg, "memory/pod/app/memory.usage_in_bytes", "400000\n");
        write(
            cg,
            "memory/pod/app/memory.stat",
            "inactive_file 1\nhierarchical_memory_limit 9223372036854771712\n\
             total_inactive_file 150000\n",
        );
        let mut s = host.sampler();
        assert_eq!(
            s.read_cgroup(),
            CgroupReading {
                cpu_limit: Some(1.5),
                mem_limit: Some(1_000_000),
                cpu_seconds: Some(1.0),
                mem_used: Some(250_000),
            }
        );
        let first = s.sample(10_000);
        assert_eq!(sources(&first), (LimitSource::Cgroup, LimitSource::Cgroup));
        assert!(close(first.mem, 0.25), "{first:?}");
        // 0.75 CPU-seconds in one second on a 1.5-CPU limit: half.
        write(cg, "cpuacct/pod/app/cpuacct.usage", "1750000000\n");
        let second = s.sample(11_000);
        assert!(close(second.cpu, 0.5), "{second:?}");
    }

    #[test]
    fn a_v1_memory_limit_of_an_enclosing_cgroup_binds() {
        let host = V1Host::new("v1-hier");
        let cg = &host.cg;
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "50000\n");
        write(cg, "cpu/pod/app/cpu.cfs_period_us", "100000\n");
        write(
            cg,
            "memory/pod/app/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(cg, "memory/pod/app/memory.usage_in_bytes", "100000\n");
        write(
            cg,
            "memory/pod/app/memory.stat",
            "hierarchical_memory_limit 400000\n",
        );
        let mut s = host.sampler();
        let reading = s.read_cgroup();
        assert_eq!(reading.cpu_limit, Some(0.5));
        assert_eq!(reading.mem_limit, Some(400_000));
        // No inactive file figure: all of the usage counts.
        assert_eq!(reading.mem_used, Some(100_000));
        let usage = s.sample(0);
        assert_eq!(sources(&usage), (LimitSource::Cgroup, LimitSource::Cgroup));
        assert!(close(usage.mem, 0.25), "{usage:?}");
    }

    #[test]
    fn unlimited_v1_groups_fall_back_to_the_host_and_say_so() {
        let host = V1Host::new("v1-host");
        let cg = &host.cg;
        write(&host.proc, "meminfo", "MemTotal: 4 kB\n");
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "-1\n");
        write(cg, "cpu/pod/app/cpu.cfs_period_us", "100000\n");
        write(
            cg,
            "memory/pod/app/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(cg, "memory/pod/app/memory.usage_in_bytes", "3072\n");
        write(
            cg,
            "memory/pod/app/memory.stat",
            "total_inactive_file 1024\n",
        );
        let mut s = host.sampler();
        let usage = s.sample(0);
        assert_eq!(sources(&usage), (LimitSource::Host, LimitSource::Host));
        // The group's working set over the host's memory.
        assert!(close(usage.mem, 0.5), "{usage:?}");

        // A memory limit larger than the host is none; the CPU limit is
        // still the CPU's.
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "50000\n");
        write(cg, "memory/pod/app/memory.limit_in_bytes", "8192\n");
        let mut s = host.sampler();
        let reading = s.read_cgroup();
        assert_eq!((reading.cpu_limit, reading.mem_limit), (Some(0.5), None));
        assert_eq!(
            sources(&s.sample(0)),
            (LimitSource::Cgroup, LimitSource::Host)
        );
    }

    /// A `/proc` and a cgroup v2 tree with the process in `path`.
    fn v2_host(name: &str, path: &str) -> (PathBuf, PathBuf, PathBuf) {
        let root = temp_dir(name);
        let proc = root.join("proc");
        let cg = root.join("sys/fs/cgroup");
        write(&proc, "self/cgroup", &format!("0::{path}\n"));
        write(
            &proc,
            "self/mountinfo",
            &format!(
                "1043 1041 0:27 / {} rw,nosuid master:9 - cgroup2 cgroup2 \
                 rw,nsdelegate,memory_recursiveprot\n",
                cg.display()
            ),
        );
        write(&proc, "meminfo", "MemTotal: 16384 kB\n");
        (root, proc, cg)
    }

    #[test]
    fn v2_is_read_at_the_process_cgroup() {
        let (root, proc, cg) = v2_host("v2", "/pod/app");
        // The root group's own counters, which are not the process's.
        write(&cg, "memory.current", "9999999\n");
        write(&cg, "cpu.stat", "usage_usec 99000000\n");
        write(&cg, "pod/cpu.max", "200000 100000\n");
        write(&cg, "pod/memory.max", "2000000\n");
        write(&cg, "pod/app/cpu.max", "max 100000\n");
        write(&cg, "pod/app/memory.max", "1000000\n");
        write(&cg, "pod/app/memory.current", "300000\n");
        write(&cg, "pod/app/memory.stat", "anon 1\ninactive_file 50000\n");
        write(&cg, "pod/app/cpu.stat", "usage_usec 1000000\nuser_usec 1\n");
        let mut s = Sampler::new(&cg, &proc);
        assert_eq!(
            s.read_cgroup(),
            CgroupReading {
                cpu_limit: Some(2.0),
                mem_limit: Some(1_000_000),
                cpu_seconds: Some(1.0),
                mem_used: Some(250_000),
            }
        );
        let first = s.sample(0);
        assert_eq!(sources(&first), (LimitSource::Cgroup, LimitSource::Cgroup));
        assert!(close(first.mem, 0.25), "{first:?}");
        write(&cg, "pod/app/cpu.stat", "usage_usec 2000000\n");
        assert!(close(s.sample(1_000).cpu, 0.5));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_container_with_its_own_cgroup_namespace_reads_as_before() {
        let (root, proc, cg) = v2_host("v2-ns", "/");
        write(&cg, "cpu.max", "200000 100000\n");
        write(&cg, "memory.max", "1000000\n");
        write(&cg, "memory.current", "250000\n");
        write(&cg, "cpu.stat", "usage_usec 1000000\n");
        let mut located = Sampler::new(&cg, &proc);
        // Without /proc/self/cgroup: the files directly under the root.
        let mut direct = Sampler::new(&cg, root.join("nowhere"));
        for now in [0, 1_000] {
            write(
                &cg,
                "cpu.stat",
                &format!("usage_usec {}\n", 1_000_000 + now * 1000),
            );
            assert_eq!(located.sample(now), direct.sample(now));
        }
        let usage = located.sample(2_000);
        assert_eq!(sources(&usage), (LimitSource::Cgroup, LimitSource::Cgroup));
        assert!(close(usage.mem, 0.25) && close(usage.cpu, 0.0), "{usage:?}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_process_moved_to_another_cgroup_is_followed() {
        let (root, proc, cg) = v2_host("v2-move", "/a");
        for (group, cpus, usec) in [("a", "100000", 5_000_000), ("b", "50000", 1_000_000)] {
            write(
                &cg,
                &format!("{group}/cpu.max"),
                &format!("{cpus} 100000\n"),
            );
            write(&cg, &format!("{group}/memory.max"), "1000\n");
            write(&cg, &format!("{group}/memory.current"), "100\n");
            write(
                &cg,
                &format!("{group}/cpu.stat"),
                &format!("usage_usec {usec}\n"),
            );
        }
        let mut s = Sampler::new(&cg, &proc);
        let _ = s.sample(0);
        write(&proc, "self/cgroup", "0::/b\n");
        // b's counter is lower than a's: no rate from one to the other.
        let moved = s.sample(1_000);
        assert!(close(moved.cpu, 0.0), "{moved:?}");
        assert_eq!(s.read_cgroup().cpu_limit, Some(0.5));
        write(&cg, "b/cpu.stat", "usage_usec 1500000\n");
        assert!(close(s.sample(2_000).cpu, 1.0));
        let _ = std::fs::remove_dir_all(root);
    }

    /// CPU seconds that are `fraction` of the host's CPUs over one second.
    fn host_cpu_seconds(fraction: f64) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        fraction * cpus
    }

    #[test]
    fn v1_a_cpu_limit_without_a_memory_limit_falls_back_for_memory_only() {
        let host = V1Host::new("v1-cpu-only");
        let cg = &host.cg;
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "50000\n");
        write(cg, "cpu/pod/app/cpu.cfs_period_us", "100000\n");
        write(cg, "cpuacct/pod/app/cpuacct.usage", "1000000000\n");
        write(
            cg,
            "memory/pod/app/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        // 8 MiB of working set on a 16 MiB host.
        write(cg, "memory/pod/app/memory.usage_in_bytes", "8390656\n");
        write(
            cg,
            "memory/pod/app/memory.stat",
            "total_inactive_file 2048\n",
        );
        let mut s = host.sampler();
        let first = s.sample(0);
        assert_eq!(sources(&first), (LimitSource::Cgroup, LimitSource::Host));
        assert!(close(first.mem, 0.5), "{first:?}");
        // 0.25 CPU-seconds in one second on a 0.5-CPU limit: half, whatever
        // the host has.
        write(cg, "cpuacct/pod/app/cpuacct.usage", "1250000000\n");
        let second = s.sample(1_000);
        assert_eq!(sources(&second), (LimitSource::Cgroup, LimitSource::Host));
        assert!(close(second.cpu, 0.5), "{second:?}");
    }

    #[test]
    fn v1_a_memory_limit_without_a_cpu_limit_falls_back_for_cpu_only() {
        let host = V1Host::new("v1-mem-only");
        let cg = &host.cg;
        write(cg, "cpu/pod/app/cpu.cfs_quota_us", "-1\n");
        write(cg, "cpu/pod/app/cpu.cfs_period_us", "100000\n");
        write(cg, "cpuacct/pod/app/cpuacct.usage", "1000000000\n");
        write(cg, "memory/pod/app/memory.limit_in_bytes", "1000000\n");
        write(cg, "memory/pod/app/memory.usage_in_bytes", "400000\n");
        write(
            cg,
            "memory/pod/app/memory.stat",
            "total_inactive_file 150000\n",
        );
        let mut s = host.sampler();
        let first = s.sample(0);
        assert_eq!(sources(&first), (LimitSource::Host, LimitSource::Cgroup));
        // The working set over the limit, not over the host's 16 MiB.
        assert!(close(first.mem, 0.25), "{first:?}");
        let used = 1e9 + host_cpu_seconds(0.5) * 1e9;
        write(cg, "cpuacct/pod/app/cpuacct.usage", &format!("{used:.0}\n"));
        let second = s.sample(1_000);
        assert_eq!(sources(&second), (LimitSource::Host, LimitSource::Cgroup));
        assert!(close(second.cpu, 0.5), "{second:?}");
    }

    #[test]
    fn v2_a_cpu_limit_without_a_memory_limit_falls_back_for_memory_only() {
        let (root, proc, cg) = v2_host("v2-cpu-only", "/pod/app");
        write(&cg, "pod/app/cpu.max", "50000 100000\n");
        write(&cg, "pod/app/memory.max", "max\n");
        write(&cg, "pod/app/memory.current", "8390656\n");
        write(&cg, "pod/app/memory.stat", "inactive_file 2048\n");
        write(&cg, "pod/app/cpu.stat", "usage_usec 1000000\n");
        let mut s = Sampler::new(&cg, &proc);
        let first = s.sample(0);
        assert_eq!(sources(&first), (LimitSource::Cgroup, LimitSource::Host));
        assert!(close(first.mem, 0.5), "{first:?}");
        write(&cg, "pod/app/cpu.stat", "usage_usec 1250000\n");
        let second = s.sample(1_000);
        assert!(close(second.cpu, 0.5), "{second:?}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn v2_a_memory_limit_without_a_cpu_limit_falls_back_for_cpu_only() {
        let (root, proc, cg) = v2_host("v2-mem-only", "/pod/app");
        write(&cg, "pod/app/cpu.max", "max 100000\n");
        write(&cg, "pod/app/memory.max", "1000000\n");
        write(&cg, "pod/app/memory.current", "300000\n");
        write(&cg, "pod/app/memory.stat", "inactive_file 50000\n");
        write(&cg, "pod/app/cpu.stat", "usage_usec 1000000\n");
        let mut s = Sampler::new(&cg, &proc);
        let first = s.sample(0);
        assert_eq!(sources(&first), (LimitSource::Host, LimitSource::Cgroup));
        assert!(close(first.mem, 0.25), "{first:?}");
        let used = 1e6 + host_cpu_seconds(0.5) * 1e6;
        write(&cg, "pod/app/cpu.stat", &format!("usage_usec {used:.0}\n"));
        let second = s.sample(1_000);
        assert_eq!(sources(&second), (LimitSource::Host, LimitSource::Cgroup));
        assert!(close(second.cpu, 0.5), "{second:?}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn garbage_everywhere_gives_the_host_and_no_panic() {
        let host = V1Host::new("garbage");
        let junk = "\u{0}\u{1}\\\\:::-- - \n\n9999999999999999999999999 x";
        for name in [
            "self/cgroup",
            "self/mountinfo",
            "self/stat",
            "self/status",
            "meminfo",
        ] {
            write(&host.proc, name, junk);
        }
        for name in [
            "cpu.max",
            "memory.max",
            "memory.current",
            "cpu.stat",
            "memory.stat",
        ] {
            write(&host.cg, name, junk);
        }
        let mut s = host.sampler();
        for now in [0, 1_000] {
            let usage = s.sample(now);
            assert_eq!(sources(&usage), (LimitSource::Host, LimitSource::Host));
            assert_eq!((usage.cpu, usage.mem), (0.0, 0.0));
        }
    }

    #[test]
    fn the_real_system_gives_finite_fractions() {
        let mut s = Sampler::system();
        let _ = s.sample(0);
        let usage = s.sample(1_000);
        assert!(usage.cpu.is_finite() && usage.cpu >= 0.0);
        assert!(usage.mem.is_finite() && (0.0..=1.0).contains(&usage.mem));
    }

    /// Set for the copy of this test binary that runs inside a test cgroup.
    const CHILD_ENV: &str = "RTC_SOCKET_NODE_CGROUP_CHILD";
    const CHILD_TEST: &str = "resources::tests::report_from_inside_a_cgroup";
    const BALLAST: usize = 16 << 20;

    fn shown<T: fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "none".to_string(), |v| v.to_string())
    }

    /// Run by `a_process_in_a_real_v1_cgroup_reads_its_limits` inside the
    /// cgroups it made; on its own it does nothing.
    #[test]
    #[ignore = "run inside a test cgroup by a_process_in_a_real_v1_cgroup_reads_its_limits"]
    #[expect(
        clippy::disallowed_methods,
        reason = "a synchronous busy loop that burns real CPU time inside the cgroup; nothing async, no runtime"
    )]
    fn report_from_inside_a_cgroup() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let mut s = Sampler::system();
        let _ = s.sample(0);
        // Written, so resident and charged to this cgroup.
        let ballast = std::hint::black_box(vec![1u8; BALLAST]);
        let start = std::time::Instant::now();
        let mut spin = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let usage = s.sample(elapsed);
        let r = s.read_cgroup();
        println!(
            "cgroup-reading cpu_limit={} mem_limit={} cpu_seconds={} mem_used={} cpu={} \
             mem={} cpu_of={:?} mem_of={:?}",
            shown(r.cpu_limit),
            shown(r.mem_limit),
            shown(r.cpu_seconds),
            shown(r.mem_used),
            usage.cpu,
            usage.mem,
            usage.cpu_of,
            usage.mem_of,
        );
        drop(ballast);
    }

    /// The test cgroups, removed innermost first however the test ends.
    #[derive(Default)]
    struct TestCgroups(Vec<PathBuf>);

    impl Drop for TestCgroups {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                // A group can stay busy a moment after its last process
                // has been reaped.
                let mut tries = 0;
                while let Err(e) = std::fs::remove_dir(dir) {
                    tries += 1;
                    if tries == 50 {
                        eprintln!("could not remove test cgroup {}: {e}", dir.display());
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    }

    fn number<T: std::str::FromStr>(line: &str, key: &str) -> T {
        field(line, key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
    }

    #[test]
    fn a_process_in_a_real_v1_cgroup_reads_its_limits() {
        let own = locate(
            &parse_proc_cgroup(&read(Path::new("/proc/self/cgroup")).unwrap_or_default()),
            &parse_mountinfo(&read(Path::new("/proc/self/mountinfo")).unwrap_or_default()),
        );
        let (Some(cpu), Some(acct), Some(mem)) =
            (own.cpu.clone(), own.cpuacct.clone(), own.memory.clone())
        else {
            eprintln!("skipped: no cgroup for cpu, cpuacct and memory here: {own:?}");
            return;
        };
        if [&cpu, &acct, &mem]
            .iter()
            .any(|d| d.version != CgroupVersion::V1)
        {
            eprintln!("skipped: cpu, cpuacct and memory are not all on cgroup v1 here");
            return;
        }
        let name = format!(
            "rtc-socket-node-test-{}-{}",
            std::process::id(),
            rtc_nanos()
        );
        let mut bases = vec![cpu.dir.clone(), acct.dir.clone(), mem.dir.clone()];
        bases.dedup();
        // The limits sit on `outer`, the process in `outer/inner`: a nested
        // cgroup, as in a pod.
        let mut made = TestCgroups::default();
        let mut inners = Vec::new();
        for base in &bases {
            let outer = base.join(&name);
            let inner = outer.join("inner");
            for dir in [&outer, &inner] {
                if let Err(e) = std::fs::create_dir(dir) {
                    eprintln!("skipped: cannot create cgroup {}: {e}", dir.display());
                    return;
                }
                made.0.push(dir.clone());
            }
            inners.push(inner);
        }
        let set = |dir: &Path, file: &str, value: &str| {
            std::fs::write(dir.join(file), value)
                .unwrap_or_else(|e| panic!("writing {value} to {}/{file}: {e}", dir.display()));
        };
        let cpu_outer = cpu.dir.join(&name);
        set(&cpu_outer, "cpu.cfs_period_us", "100000");
        set(&cpu_outer, "cpu.cfs_quota_us", "50000");
        let mem_outer = mem.dir.join(&name);
        let limit: u64 = 128 << 20;
        set(
            &mem_outer,
            "memory.limit_in_bytes",
            &(2 * limit).to_string(),
        );
        set(
            &mem_outer.join("inner"),
            "memory.limit_in_bytes",
            &limit.to_string(),
        );

        // The shell joins every inner group, then becomes this test binary
        // running the child test, so the reading is done by the code under
        // test from inside.
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                r#"n=$1; shift
                while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n - 1)); done
                exec "$@""#,
            )
            .arg("sh")
            .arg(inners.len().to_string())
            .args(inners.iter().map(|d| d.join("cgroup.procs")))
            .arg(exe)
            .args(["--exact", CHILD_TEST, "--ignored", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("running the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
        let line = stdout
            .lines()
            // The harness may print the test's name on the same line.
            .find_map(|l| l.find("cgroup-reading ").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no reading from the child:\n{stdout}\n{stderr}"));

        assert_eq!(field(line, "cpu_of"), "Cgroup", "{line}");
        assert_eq!(field(line, "mem_of"), "Cgroup", "{line}");
        assert!(close(number(line, "cpu_limit"), 0.5), "{line}");
        assert_eq!(number::<u64>(line, "mem_limit"), limit, "{line}");
        let used: u64 = number(line, "mem_used");
        assert!((BALLAST as u64..=limit).contains(&used), "{line}");
        let mem: f64 = number(line, "mem");
        // The ballast alone is an eighth of the limit, and nothing of the
        // host's memory.
        assert!((0.1..=1.0).contains(&mem), "{line}");
        let cpu: f64 = number(line, "cpu");
        assert!(cpu.is_finite() && cpu > 0.0, "{line}");
        // The child's counter is its own group's, which never runs back.
        let seconds: f64 = number(line, "cpu_seconds");
        let acct_inner = acct.dir.join(&name).join("inner");
        let total = read(&acct_inner.join("cpuacct.usage"))
            .and_then(|t| parse_count(&t))
            .expect("the test group's cpuacct.usage") as f64
            / 1e9;
        assert!(
            seconds > 0.0 && seconds <= total,
            "{line}; group total {total}"
        );
    }
}
