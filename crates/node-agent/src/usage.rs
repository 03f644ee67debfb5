//! The real CPU and memory use of the node's pods, read for the
//! resource-metrics endpoint ([`crate::resource_metrics`]).
//!
//! Where the figures come from:
//! - **cgroup v1** (the `cpuacct` and `memory` hierarchies the agent puts
//!   each container in, [`crate::cgroup`]): CPU is `cpuacct.usage`
//!   (nanoseconds), the working set `memory.usage_in_bytes` less
//!   `total_inactive_file` of `memory.stat`, as cAdvisor, and so the
//!   kubelet, computes it;
//! - **cgroup v2**: CPU is `usage_usec` of `cpu.stat`, the working set
//!   `memory.current` less `inactive_file` of `memory.stat`;
//! - **no cgroups**: the container's process and all its descendants, from
//!   `/proc/<pid>/stat` (user and system time of each, and of the children
//!   each has reaped, in clock ticks of 1/100 s: `USER_HZ` is 100 in the
//!   Linux ABI of every architecture this runs on) and the proportional set
//!   size (`Pss`) of `/proc/<pid>/smaps_rollup` (`VmRSS` of
//!   `/proc/<pid>/status` where the kernel has no rollup), summed.
//!
//! A pod's figures are its pod cgroup's (every container in it), or the sum
//! of its containers' without cgroups. The node's are its own cgroup
//! (`<cgroup-parent>/<node-name>`: all its pods) plus the agent's own
//! process: every node agent of a stack shares one machine, so a Node's
//! usage is what runs on its behalf, not the whole machine's.
//!
//! The parsers are pure and tested on their own; [`collect`] does the reads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::RwLock;

use crate::cgroup::UsageDirs;
use crate::clock;
use crate::resource_metrics::{ContainerStats, PodStats, ResourceStats, Usage};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`).
const USER_HZ: u64 = 100;

/// A container process the endpoint reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// The container's name.
    pub name: String,
    /// The pid of its process (the program itself: the agent's shell
    /// `exec`s it).
    pub pid: u32,
    /// When it started, in milliseconds since the epoch.
    pub started_ms: i64,
    /// Where its figures are kept, when it has cgroups.
    pub dirs: UsageDirs,
}

/// A pod with at least one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod cgroup's figures, when it has cgroups.
    pub dirs: UsageDirs,
    /// Its running containers.
    pub containers: Vec<RunningContainer>,
}

/// What runs on this node, by pod UID: each pod worker keeps its own entry
/// up to date, the endpoint reads them all.
#[derive(Debug, Clone, Default)]
pub struct Running(Arc<RwLock<BTreeMap<String, RunningPod>>>);

impl Running {
    /// Records what pod `uid` runs now; a pod running nothing is dropped.
    pub async fn set(&self, uid: &str, pod: RunningPod) {
        let mut pods = self.0.write().await;
        if pod.containers.is_empty() {
            pods.remove(uid);
        } else if pods.get(uid) != Some(&pod) {
            pods.insert(uid.to_owned(), pod);
        }
    }

    /// Drops pod `uid`.
    pub async fn remove(&self, uid: &str) {
        self.0.write().await.remove(uid);
    }

    /// A copy of every entry.
    pub async fn snapshot(&self) -> Vec<RunningPod> {
        self.0.read().await.values().cloned().collect()
    }
}

/// Reads the figures of every running pod, of the node (`node_dirs`: the
/// node's cgroup) and of the agent itself.
pub async fn collect(running: &Running, node_dirs: &UsageDirs) -> ResourceStats {
    let pods = running.snapshot().await;
    let mut error = false;
    // Without cgroups every figure is a process tree's: list the processes once.
    let needs_tree = pods
        .iter()
        .flat_map(|p| &p.containers)
        .any(|c| c.dirs == UsageDirs::None);
    let tree = if needs_tree {
        ProcessTree::read().await
    } else {
        ProcessTree::default()
    };
    let mut out = Vec::with_capacity(pods.len());
    let mut pods_sum: Option<Usage> = None;
    for pod in pods {
        let mut containers = Vec::with_capacity(pod.containers.len());
        let mut sum: Option<Usage> = None;
        for c in &pod.containers {
            let usage = match &c.dirs {
                UsageDirs::None => tree.usage_of(c.pid).await,
                dirs => read_dirs(dirs).await,
            };
            if usage.is_none() && !process_exists(c.pid).await {
                // It exited after its worker last looked: no longer running.
                continue;
            }
            if usage.is_none() {
                error = true;
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), container = %c.name, "container usage could not be read");
            }
            sum = add(sum, usage);
            containers.push(ContainerStats {
                name: c.name.clone(),
                start_time_s: c.started_ms as f64 / 1000.0,
                usage,
            });
        }
        let usage = match &pod.dirs {
            UsageDirs::None => sum,
            dirs => read_dirs(dirs).await,
        };
        pods_sum = add(pods_sum, usage);
        out.push(PodStats {
            namespace: pod.namespace,
            name: pod.name,
            usage,
            containers,
        });
    }
    let pods_usage = match node_dirs {
        UsageDirs::None => pods_sum,
        dirs => read_dirs(dirs).await,
    };
    let agent = ProcessTree::usage_of_one(std::process::id()).await;
    let node = match (pods_usage, agent) {
        (Some(p), Some(a)) => add(Some(p), Some(a)),
        (None, Some(a)) if out.is_empty() => Some(a),
        _ => None,
    };
    if node.is_none() {
        error = true;
    }
    ResourceStats {
        node,
        pods: out,
        error,
    }
}

async fn process_exists(pid: u32) -> bool {
    tokio::fs::metadata(format!("/proc/{pid}")).await.is_ok()
}

fn add(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            cpu_ns: a.cpu_ns.saturating_add(b.cpu_ns),
            memory_working_set_bytes: a
                .memory_working_set_bytes
                .saturating_add(b.memory_working_set_bytes),
            at_ms: a.at_ms.max(b.at_ms),
        }),
        (one, None) | (None, one) => one,
    }
}

async fn read(path: &Path) -> Option<String> {
    tokio::fs::read_to_string(path).await.ok()
}

/// The usage kept in a cgroup's files.
async fn read_dirs(dirs: &UsageDirs) -> Option<Usage> {
    match dirs {
        UsageDirs::None => None,
        UsageDirs::V1 { cpuacct, memory } => {
            let cpu_ns = read(&cpuacct.join("cpuacct.usage"))
                .await?
                .trim()
                .parse()
                .ok()?;
            let used: u64 = read(&memory.join("memory.usage_in_bytes"))
                .await?
                .trim()
                .parse()
                .ok()?;
            let stat = read(&memory.join("memory.stat")).await?;
            let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
            Some(Usage {
                cpu_ns,
                memory_working_set_bytes: used.saturating_sub(inactive),
                at_ms: clock::unix_ms(),
            })
        }
        UsageDirs::V2(dir) => {
            let cpu_usec = stat_value(&read(&dir.join("cpu.stat")).await?, "usage_usec")?;
            let used: u64 = read(&dir.join("memory.current"))
                .await?
                .trim()
                .parse()
                .ok()?;
            let stat = read(&dir.join("memory.stat")).await?;
            let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
            Some(Usage {
                cpu_ns: cpu_usec.saturating_mul(1000),
                memory_working_set_bytes: used.saturating_sub(inactive),
                at_ms: clock::unix_ms(),
            })
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.stat`,
/// `cpu.stat`: one `key value` pair a line).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The parent's pid.
    pub ppid: u32,
    /// User, system, and reaped children's user and system time, in ticks.
    pub cpu_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest: " S ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime ..." (fields 3 onwards).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ppid = u32::try_from(field(4)?).ok()?;
    let cpu_ticks = field(14)?
        .saturating_add(field(15)?)
        .saturating_add(field(16)?)
        .saturating_add(field(17)?);
    Some(ProcStat { ppid, cpu_ticks })
}

/// The memory of a process in bytes: `Pss` of `smaps_rollup`, else `VmRSS`
/// of `status` (both in kB).
pub fn parse_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    })
}

/// Every process's parent, read once per scrape.
#[derive(Debug, Default)]
struct ProcessTree {
    children: HashMap<u32, Vec<u32>>,
}

impl ProcessTree {
    async fn read() -> Self {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        let Ok(mut entries) = tokio::fs::read_dir("/proc").await else {
            return Self::default();
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read(&entry.path().join("stat"))
                .await
                .as_deref()
                .and_then(parse_proc_stat)
            {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
        Self { children }
    }

    /// `pid` and its descendants.
    fn descendants(&self, pid: u32) -> Vec<u32> {
        let mut out = vec![pid];
        let mut i = 0;
        while let Some(&p) = out.get(i) {
            if let Some(kids) = self.children.get(&p) {
                out.extend(kids.iter().copied().filter(|k| *k != p));
            }
            i += 1;
            if out.len() > 100_000 {
                break;
            }
        }
        out
    }

    /// The summed usage of `pid` and its descendants; `None` when `pid`
    /// itself is gone.
    async fn usage_of(&self, pid: u32) -> Option<Usage> {
        let mut total = Self::usage_of_one(pid).await?;
        for p in self.descendants(pid).into_iter().skip(1) {
            if let Some(u) = Self::usage_of_one(p).await {
                total.cpu_ns = total.cpu_ns.saturating_add(u.cpu_ns);
                total.memory_working_set_bytes = total
                    .memory_working_set_bytes
                    .saturating_add(u.memory_working_set_bytes);
            }
        }
        Some(total)
    }

    /// One process's usage.
    async fn usage_of_one(pid: u32) -> Option<Usage> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = parse_proc_stat(&read(&dir.join("stat")).await?)?;
        let memory = match read(&dir.join("smaps_rollup")).await {
            Some(text) => parse_kb(&text, "Pss"),
            None => None,
        };
        let memory = match memory {
            Some(m) => m,
            None => parse_kb(&read(&dir.join("status")).await?, "VmRSS").unwrap_or(0),
        };
        Some(Usage {
            cpu_ns: stat.cpu_ticks.saturating_mul(1_000_000_000 / USER_HZ),
            memory_working_set_bytes: memory,
            at_ms: clock::unix_ms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 120 0 0 0 250 30 7 3 20 0 1 0 1234 5000000 300 18446744073709551615\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(ProcStat {
                ppid: 17,
                cpu_ticks: 250 + 30 + 7 + 3
            })
        );
        assert_eq!(parse_proc_stat("4242 (x) S"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn flat_keyed_files() {
        let v1 = "cache 4096\nrss 1048576\ninactive_file 10\ntotal_inactive_file 8192\n";
        assert_eq!(stat_value(v1, "total_inactive_file"), Some(8192));
        assert_eq!(stat_value(v1, "inactive_file"), Some(10));
        assert_eq!(stat_value(v1, "missing"), None);
        let v2 = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(stat_value(v2, "usage_usec"), Some(123_456));
    }

    #[test]
    fn kilobyte_fields() {
        let rollup = "55d0c0a3a000-7ffd0f3fe000 ---p 00000000 00:00 0 [rollup]\nRss:                3900 kB\nPss:                1234 kB\nPss_Anon:            800 kB\n";
        assert_eq!(parse_kb(rollup, "Pss"), Some(1234 * 1024));
        assert_eq!(parse_kb(rollup, "Rss"), Some(3900 * 1024));
        let status = "Name:\tsleep\nVmRSS:\t     572 kB\n";
        assert_eq!(parse_kb(status, "VmRSS"), Some(572 * 1024));
        assert_eq!(parse_kb(status, "VmSwap"), None);
    }

    #[test]
    fn a_process_tree_is_walked_from_its_root() {
        let mut tree = ProcessTree::default();
        tree.children.insert(1, vec![10, 20]);
        tree.children.insert(10, vec![11]);
        tree.children.insert(11, vec![12]);
        let mut under_10 = tree.descendants(10);
        under_10.sort_unstable();
        assert_eq!(under_10, [10, 11, 12]);
        assert_eq!(tree.descendants(20), [20]);
    }

    #[test]
    fn sums_keep_what_is_known() {
        let a = Usage {
            cpu_ns: 5,
            memory_working_set_bytes: 7,
            at_ms: 100,
        };
        let b = Usage {
            cpu_ns: 1,
            memory_working_set_bytes: 2,
            at_ms: 200,
        };
        assert_eq!(
            add(Some(a), Some(b)),
            Some(Usage {
                cpu_ns: 6,
                memory_working_set_bytes: 9,
                at_ms: 200
            })
        );
        assert_eq!(add(None, Some(b)), Some(b));
        assert_eq!(add(None, None), None);
    }

    /// This test's own process, read from /proc: the figures are real.
    #[tokio::test]
    async fn this_process_has_usage() {
        let usage = ProcessTree::usage_of_one(std::process::id())
            .await
            .expect("own usage");
        assert!(usage.memory_working_set_bytes > 0);
        assert!(usage.at_ms > 0);
    }

    #[tokio::test]
    async fn a_cgroup_v2_directory_is_read() {
        let dir = std::env::temp_dir().join(format!("rtc-usage-v2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), "10485760\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 4096\ninactive_file 1048576\n",
        )
        .unwrap();
        let usage = read_dirs(&UsageDirs::V2(dir.clone())).await.unwrap();
        assert_eq!(usage.cpu_ns, 2_500_000_000);
        assert_eq!(usage.memory_working_set_bytes, 10_485_760 - 1_048_576);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn write_v2(dir: &Path, usage_usec: u64, current: u64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usage_usec}\n")).unwrap();
        std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        std::fs::write(dir.join("memory.stat"), "inactive_file 0\n").unwrap();
    }

    /// The whole scrape over a v2 layout on plain files: the container's and
    /// the pod's own figures, the node's cgroup plus the agent, and a
    /// process-tree container whose process is gone left out without an
    /// error.
    #[tokio::test]
    async fn a_scrape_reads_each_container_its_pod_and_the_node() {
        let root = std::env::temp_dir().join(format!("rtc-usage-scrape-{}", std::process::id()));
        let node = root.join("node");
        let pod = node.join("podu1");
        write_v2(&node, 9_000_000, 900 << 20);
        write_v2(&pod, 3_000_000, 300 << 20);
        write_v2(&pod.join("web"), 2_000_000, 200 << 20);
        let running = Running::default();
        running
            .set(
                "u1",
                RunningPod {
                    namespace: "ns".to_owned(),
                    name: "p".to_owned(),
                    dirs: UsageDirs::V2(pod.clone()),
                    containers: vec![RunningContainer {
                        name: "web".to_owned(),
                        pid: std::process::id(),
                        started_ms: 1_700_000_000_500,
                        dirs: UsageDirs::V2(pod.join("web")),
                    }],
                },
            )
            .await;
        running
            .set(
                "u2",
                RunningPod {
                    namespace: "ns".to_owned(),
                    name: "gone".to_owned(),
                    dirs: UsageDirs::None,
                    containers: vec![RunningContainer {
                        name: "c".to_owned(),
                        // Above the kernel's pid_max: no such process.
                        pid: 4_194_305,
                        started_ms: 1_700_000_000_000,
                        dirs: UsageDirs::None,
                    }],
                },
            )
            .await;
        let stats = collect(&running, &UsageDirs::V2(node.clone())).await;
        assert!(!stats.error, "{stats:?}");
        let web = &stats.pods[0];
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("ns", "p"));
        let pod_usage = web.usage.expect("pod usage");
        assert_eq!(pod_usage.cpu_ns, 3_000_000_000);
        assert_eq!(pod_usage.memory_working_set_bytes, 300 << 20);
        let c = &web.containers[0];
        assert_eq!(c.start_time_s, 1_700_000_000.5);
        assert_eq!(c.usage.expect("container usage").cpu_ns, 2_000_000_000);
        assert!(stats.pods[1].containers.is_empty(), "{:?}", stats.pods[1]);
        let node_usage = stats.node.expect("node usage");
        assert!(node_usage.cpu_ns >= 9_000_000_000);
        assert!(
            node_usage.memory_working_set_bytes > 900 << 20,
            "the agent's own memory counts"
        );

        running.remove("u1").await;
        running
            .set(
                "u2",
                RunningPod {
                    namespace: "ns".to_owned(),
                    name: "gone".to_owned(),
                    dirs: UsageDirs::None,
                    containers: Vec::new(),
                },
            )
            .await;
        assert!(
            running.snapshot().await.is_empty(),
            "a pod running nothing is dropped"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_cgroup_v1_pair_is_read() {
        let root = std::env::temp_dir().join(format!("rtc-usage-v1-{}", std::process::id()));
        let (cpuacct, memory) = (root.join("cpuacct"), root.join("memory"));
        std::fs::create_dir_all(&cpuacct).unwrap();
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage"), "1500000000\n").unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(memory.join("memory.stat"), "total_inactive_file 8192\n").unwrap();
        let usage = read_dirs(&UsageDirs::V1 { cpuacct, memory }).await.unwrap();
        assert_eq!(usage.cpu_ns, 1_500_000_000);
        assert_eq!(usage.memory_working_set_bytes, 0, "floored at zero");
        let _ = std::fs::remove_dir_all(&root);
    }
}
