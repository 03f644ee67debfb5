//! Per-pod cgroups, in cgroup v1 or v2, whichever this machine mounts
//! writable; or none, with one warning, when neither is usable.
//!
//! Layout, under each hierarchy's mount point (v1: the `cpu`, `cpuacct` and
//! `memory` hierarchies; v2: the one unified tree):
//!
//! ```text
//! <cgroup-parent>/<node-name>/pod<uid>/             the pod's summed limits
//! <cgroup-parent>/<node-name>/pod<uid>/<container>/ the container's limits
//! ```
//!
//! A process joins its container's cgroups before it runs the program: the
//! agent starts `/bin/sh`, which writes its own pid into each `cgroup.procs`
//! and then `exec`s the program (see [`crate::process`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::limits::Limits;

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A directory could not be made.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The system's answer.
        source: io::Error,
    },
    /// A control file could not be written.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The system's answer.
        source: io::Error,
    },
}

impl CgroupError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Write { .. } => "write",
        }
    }
}

/// One mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `cgroup`, `cgroup2`, `tmpfs`, ...
    pub fs_type: String,
    /// Super-block options: for cgroup v1, the controllers.
    pub super_options: Vec<String>,
}

/// The mounts listed in the text of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fs_type = after.next()?;
            let _source = after.next()?;
            let super_options = after.next().unwrap_or("");
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v1 hierarchies the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchies {
    /// Mount point of the `cpu` controller.
    pub cpu: PathBuf,
    /// Mount point of the `cpuacct` controller (may equal `cpu`).
    pub cpuacct: PathBuf,
    /// Mount point of the `memory` controller.
    pub memory: PathBuf,
}

impl V1Hierarchies {
    /// Each distinct mount point once, in the order cpu, cpuacct, memory.
    pub fn distinct(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for path in [&self.cpu, &self.cpuacct, &self.memory] {
            if !out.contains(&path.as_path()) {
                out.push(path);
            }
        }
        out
    }
}

/// The v1 hierarchies among `mounts`, when cpu, cpuacct and memory all are.
pub fn v1_hierarchies(mounts: &[Mount]) -> Option<V1Hierarchies> {
    let find = |controller: &str| {
        mounts
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))
            .map(|m| m.mount_point.clone())
    };
    Some(V1Hierarchies {
        cpu: find("cpu")?,
        cpuacct: find("cpuacct")?,
        memory: find("memory")?,
    })
}

/// The cgroup v2 mount points among `mounts`.
pub fn v2_roots(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point.clone())
        .collect()
}

/// Whether the text of a v2 `cgroup.controllers` lists cpu and memory.
pub fn has_cpu_and_memory(controllers: &str) -> bool {
    let list: Vec<&str> = controllers.split_whitespace().collect();
    list.contains(&"cpu") && list.contains(&"memory")
}

/// Which cgroups the agent manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// cgroup v1 hierarchies.
    V1(V1Hierarchies),
    /// A cgroup v2 tree at this mount point.
    V2(PathBuf),
    /// No usable cgroups: processes run without limits.
    Disabled,
}

/// The agent's cgroups: the mode and the node's directory inside each
/// hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mode: Mode,
    /// `<cgroup-parent>/<node-name>`, relative to each mount point.
    base: PathBuf,
}

impl Cgroups {
    /// Chooses v2 when a v2 tree with cpu and memory is mounted and
    /// writable, else v1 when its cpu, cpuacct and memory hierarchies are,
    /// else none (logging one warning), and creates the node's directories.
    pub async fn detect(parent: &str, node_name: &str) -> Self {
        let base = Path::new(parent).join(node_name);
        let mountinfo = tokio::fs::read_to_string("/proc/self/mountinfo")
            .await
            .unwrap_or_default();
        let mounts = parse_mountinfo(&mountinfo);
        let mut reasons = Vec::new();
        for root in v2_roots(&mounts) {
            let controllers = tokio::fs::read_to_string(root.join("cgroup.controllers"))
                .await
                .unwrap_or_default();
            if !has_cpu_and_memory(&controllers) {
                reasons.push(format!(
                    "{} (v2) has no cpu and memory controllers",
                    root.display()
                ));
                continue;
            }
            let cgroups = Self {
                mode: Mode::V2(root.clone()),
                base: base.clone(),
            };
            match cgroups.prepare().await {
                Ok(()) => return cgroups,
                Err(e) => reasons.push(e.to_string()),
            }
        }
        match v1_hierarchies(&mounts) {
            Some(v1) => {
                let cgroups = Self {
                    mode: Mode::V1(v1),
                    base: base.clone(),
                };
                match cgroups.prepare().await {
                    Ok(()) => return cgroups,
                    Err(e) => reasons.push(e.to_string()),
                }
            }
            None => reasons
                .push("no cgroup v1 cpu, cpuacct and memory hierarchies are mounted".to_owned()),
        }
        tracing::warn!(
            reasons = %reasons.join("; "),
            "no usable cgroups: pods run without cpu and memory limits"
        );
        Self {
            mode: Mode::Disabled,
            base,
        }
    }

    /// Cgroups turned off.
    pub fn disabled() -> Self {
        Self {
            mode: Mode::Disabled,
            base: PathBuf::new(),
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// `v1`, `v2` or `none`, for logs.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::V1(_) => "v1",
            Mode::V2(_) => "v2",
            Mode::Disabled => "none",
        }
    }

    /// Where the node's figures are read: its directory, which holds every
    /// pod of the node.
    pub fn node_usage_dirs(&self) -> UsageDirs {
        UsageDirs::of(&self.mode, &self.base)
    }

    /// The node's directory in each hierarchy.
    fn node_dirs(&self) -> Vec<PathBuf> {
        match &self.mode {
            Mode::V1(v1) => v1
                .distinct()
                .into_iter()
                .map(|m| m.join(&self.base))
                .collect(),
            Mode::V2(root) => vec![root.join(&self.base)],
            Mode::Disabled => Vec::new(),
        }
    }

    /// Creates the node's directories (and, in v2, delegates cpu and memory
    /// down to them).
    async fn prepare(&self) -> Result<(), CgroupError> {
        match &self.mode {
            Mode::V1(v1) => {
                for mount in v1.distinct() {
                    let mut dir = mount.to_owned();
                    for part in self.base.components() {
                        dir.push(part);
                        create_dir(&dir).await?;
                    }
                }
            }
            Mode::V2(root) => {
                enable_controllers(root).await?;
                let mut dir = root.clone();
                for part in self.base.components() {
                    dir.push(part);
                    create_dir(&dir).await?;
                    enable_controllers(&dir).await?;
                }
            }
            Mode::Disabled => {}
        }
        Ok(())
    }

    /// Kills whatever an earlier run of the agent left in this node's pod
    /// cgroups, and removes them.
    pub async fn remove_leftovers(&self) {
        for node_dir in self.node_dirs() {
            let Ok(mut entries) = tokio::fs::read_dir(&node_dir).await else {
                continue;
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("pod") && entry.path().is_dir() {
                    tracing::info!(cgroup = %entry.path().display(), "removing a pod cgroup left by an earlier run");
                    remove_tree(&entry.path()).await;
                }
            }
        }
    }

    /// Removes the node's directories, when empty (on shutdown).
    pub async fn remove_node_dirs(&self) {
        for dir in self.node_dirs() {
            let _ = tokio::fs::remove_dir(&dir).await;
        }
    }

    /// Creates a pod's cgroups with `pod` limits and one child per container
    /// with its own.
    ///
    /// # Errors
    ///
    /// [`CgroupError`] when a directory cannot be made or a value written.
    pub async fn create_pod(
        &self,
        uid: &str,
        pod: &Limits,
        containers: &[(String, Limits)],
    ) -> Result<PodCgroup, CgroupError> {
        let pod_dirs: Vec<PathBuf> = self
            .node_dirs()
            .into_iter()
            .map(|d| d.join(format!("pod{uid}")))
            .collect();
        let cgroup = PodCgroup {
            mode: self.mode.clone(),
            pod_dirs,
            usage: UsageDirs::of(&self.mode, &self.base.join(format!("pod{uid}"))),
        };
        match &self.mode {
            Mode::Disabled => {}
            Mode::V1(v1) => {
                for (dir, hierarchy) in cgroup.pod_dirs.iter().zip(v1.distinct()) {
                    create_dir(dir).await?;
                    write_v1(dir, hierarchy, v1, pod).await?;
                    for (name, limits) in containers {
                        let child = dir.join(name);
                        create_dir(&child).await?;
                        write_v1(&child, hierarchy, v1, limits).await?;
                    }
                }
            }
            Mode::V2(_) => {
                for dir in &cgroup.pod_dirs {
                    create_dir(dir).await?;
                    write_all(dir, &pod.v2_files()).await?;
                    enable_controllers(dir).await?;
                    for (name, limits) in containers {
                        let child = dir.join(name);
                        create_dir(&child).await?;
                        write_all(&child, &limits.v2_files()).await?;
                    }
                }
            }
        }
        Ok(cgroup)
    }
}

/// Where a cgroup's CPU and memory figures are read ([`crate::usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageDirs {
    /// No cgroup: the figures come from the process tree.
    None,
    /// cgroup v1: the directory in the cpuacct and in the memory hierarchy.
    V1 {
        /// In the `cpuacct` hierarchy (`cpuacct.usage`).
        cpuacct: PathBuf,
        /// In the `memory` hierarchy (`memory.usage_in_bytes`, `memory.stat`).
        memory: PathBuf,
    },
    /// cgroup v2: the directory (`cpu.stat`, `memory.current`, `memory.stat`).
    V2(PathBuf),
}

impl UsageDirs {
    /// `rel` (relative to each mount point) in the hierarchies of `mode`.
    fn of(mode: &Mode, rel: &Path) -> Self {
        match mode {
            Mode::Disabled => Self::None,
            Mode::V1(v1) => Self::V1 {
                cpuacct: v1.cpuacct.join(rel),
                memory: v1.memory.join(rel),
            },
            Mode::V2(root) => Self::V2(root.join(rel)),
        }
    }

    /// The same place one level down (`child` of each directory).
    fn join(&self, child: &str) -> Self {
        match self {
            Self::None => Self::None,
            Self::V1 { cpuacct, memory } => Self::V1 {
                cpuacct: cpuacct.join(child),
                memory: memory.join(child),
            },
            Self::V2(dir) => Self::V2(dir.join(child)),
        }
    }
}

/// A pod's cgroups.
#[derive(Debug, Clone)]
pub struct PodCgroup {
    mode: Mode,
    pod_dirs: Vec<PathBuf>,
    usage: UsageDirs,
}

impl PodCgroup {
    /// A pod without cgroups.
    pub fn none() -> Self {
        Self {
            mode: Mode::Disabled,
            pod_dirs: Vec::new(),
            usage: UsageDirs::None,
        }
    }

    /// Where the whole pod's figures are read.
    pub fn usage_dirs(&self) -> UsageDirs {
        self.usage.clone()
    }

    /// Where `container`'s figures are read.
    pub fn container_usage_dirs(&self, container: &str) -> UsageDirs {
        self.usage.join(container)
    }

    /// The `cgroup.procs` files a process of `container` joins.
    pub fn procs_files(&self, container: &str) -> Vec<PathBuf> {
        match self.mode {
            Mode::Disabled => Vec::new(),
            Mode::V1(_) | Mode::V2(_) => self
                .pod_dirs
                .iter()
                .map(|d| d.join(container).join("cgroup.procs"))
                .collect(),
        }
    }

    /// Kills every process left in the pod's cgroups and removes them.
    pub async fn remove(&self) {
        for dir in &self.pod_dirs {
            remove_tree(dir).await;
        }
    }
}

async fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match tokio::fs::create_dir(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

async fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tokio::fs::write(path, value)
        .await
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

async fn write_all(dir: &Path, files: &[(&'static str, String)]) -> Result<(), CgroupError> {
    for (file, value) in files {
        write(&dir.join(file), value).await?;
    }
    Ok(())
}

/// Writes the v1 files that belong to `hierarchy` (which may carry several
/// controllers when they are mounted together).
async fn write_v1(
    dir: &Path,
    hierarchy: &Path,
    v1: &V1Hierarchies,
    limits: &Limits,
) -> Result<(), CgroupError> {
    if hierarchy == v1.cpu {
        write_all(dir, &limits.v1_cpu_files()).await?;
    }
    if hierarchy == v1.memory {
        write_all(dir, &limits.v1_memory_files()).await?;
    }
    Ok(())
}

async fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = tokio::fs::read_to_string(&file).await.unwrap_or_default();
    if has_cpu_and_memory(&current) {
        return Ok(());
    }
    write(&file, "+cpu +memory").await
}

/// Kills the processes in `dir` and its children, then removes them,
/// deepest first.
async fn remove_tree(dir: &Path) {
    let mut dirs = vec![dir.to_owned()];
    let mut i = 0;
    while let Some(current) = dirs.get(i).cloned() {
        if let Ok(mut entries) = tokio::fs::read_dir(&current).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        i += 1;
    }
    for current in dirs.iter().rev() {
        for attempt in 0..50 {
            let procs = tokio::fs::read_to_string(current.join("cgroup.procs"))
                .await
                .unwrap_or_default();
            let pids: Vec<&str> = procs.split_whitespace().collect();
            if pids.is_empty() {
                break;
            }
            if attempt == 0 {
                tracing::info!(cgroup = %current.display(), pids = %pids.join(" "), "killing processes left in a pod cgroup");
            }
            let _ = tokio::process::Command::new("/bin/kill")
                .arg("-KILL")
                .arg("--")
                .args(&pids)
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = tokio::fs::remove_dir(current).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %current.display(), error = %e, "could not remove a pod cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
24 30 0:22 / /sys fs rw,nosuid - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
30 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_MOUNTINFO: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const COMBINED_MOUNTINFO: &str = "\
26 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpu,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:8 - cgroup cgroup rw,memory
";

    #[test]
    fn separate_v1_hierarchies_are_found() {
        let mounts = parse_mountinfo(V1_MOUNTINFO);
        let v1 = v1_hierarchies(&mounts).expect("v1");
        assert_eq!(v1.cpu, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(v1.cpuacct, Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(v1.memory, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(v1.distinct().len(), 3);
        assert_eq!(v2_roots(&mounts), [PathBuf::from("/sys/fs/cgroup/unified")]);
    }

    #[test]
    fn combined_cpu_and_cpuacct_is_joined_once() {
        let v1 = v1_hierarchies(&parse_mountinfo(COMBINED_MOUNTINFO)).expect("v1");
        assert_eq!(v1.cpu, v1.cpuacct);
        assert_eq!(
            v1.distinct(),
            [
                Path::new("/sys/fs/cgroup/cpu,cpuacct"),
                Path::new("/sys/fs/cgroup/memory")
            ]
        );
    }

    #[test]
    fn a_pure_v2_system_has_no_v1() {
        let mounts = parse_mountinfo(V2_MOUNTINFO);
        assert_eq!(v1_hierarchies(&mounts), None);
        assert_eq!(v2_roots(&mounts), [PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn v2_needs_cpu_and_memory_controllers() {
        assert!(has_cpu_and_memory(
            "cpuset cpu io memory hugetlb pids rdma misc\n"
        ));
        assert!(!has_cpu_and_memory(""));
        assert!(!has_cpu_and_memory("cpuset io pids"));
        assert!(!has_cpu_and_memory("cpuset memory"));
    }

    #[test]
    fn escaped_mount_points_and_junk_lines() {
        let mounts =
            parse_mountinfo("1 2 0:1 / /mnt/a\\040b rw - cgroup2 none rw\nnot a mountinfo line\n");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/a b"));
    }

    /// A v1 layout on a plain directory: the files the agent writes show up
    /// as regular files, so the layout and values can be read back.
    #[tokio::test]
    async fn v1_pod_cgroups_get_summed_pod_values_and_per_container_values() {
        let root =
            std::env::temp_dir().join(format!("rtc-node-agent-cgroup-{}", std::process::id()));
        let v1 = V1Hierarchies {
            cpu: root.join("cpu"),
            cpuacct: root.join("cpuacct"),
            memory: root.join("memory"),
        };
        for dir in v1.distinct() {
            std::fs::create_dir_all(dir).expect("hierarchy");
        }
        let cgroups = Cgroups {
            mode: Mode::V1(v1),
            base: PathBuf::from("rtc-node-agent/n1"),
        };
        cgroups.prepare().await.expect("prepare");
        let web = Limits {
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(250),
            memory_limit_bytes: Some(256 << 20),
        };
        let pod = Limits {
            cpu_limit_millis: Some(700),
            cpu_request_millis: Some(450),
            memory_limit_bytes: Some(384 << 20),
        };
        let created = cgroups
            .create_pod("u1", &pod, &[("web".to_owned(), web)])
            .await
            .expect("create");
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        assert_eq!(
            read("cpu/rtc-node-agent/n1/podu1/cpu.cfs_quota_us"),
            "70000"
        );
        assert_eq!(
            read("cpu/rtc-node-agent/n1/podu1/web/cpu.cfs_quota_us"),
            "50000"
        );
        assert_eq!(
            read("cpu/rtc-node-agent/n1/podu1/web/cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(read("cpu/rtc-node-agent/n1/podu1/web/cpu.shares"), "256");
        assert_eq!(
            read("memory/rtc-node-agent/n1/podu1/memory.limit_in_bytes"),
            "402653184"
        );
        assert_eq!(
            read("memory/rtc-node-agent/n1/podu1/web/memory.limit_in_bytes"),
            "268435456"
        );
        assert!(root.join("cpuacct/rtc-node-agent/n1/podu1/web").is_dir());
        assert!(
            !root
                .join("cpuacct/rtc-node-agent/n1/podu1/web/cpu.shares")
                .exists(),
            "cpu files only in the cpu hierarchy"
        );
        assert_eq!(created.procs_files("web").len(), 3);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn v2_delegates_cpu_and_memory_down_to_each_container() {
        let root =
            std::env::temp_dir().join(format!("rtc-node-agent-cgroup2-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("root");
        let cgroups = Cgroups {
            mode: Mode::V2(root.clone()),
            base: PathBuf::from("rtc-node-agent/n1"),
        };
        cgroups.prepare().await.expect("prepare");
        let web = Limits {
            cpu_limit_millis: Some(1000),
            cpu_request_millis: None,
            memory_limit_bytes: None,
        };
        let created = cgroups
            .create_pod("u1", &web, &[("web".to_owned(), web)])
            .await
            .expect("create");
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        for dir in [
            "",
            "rtc-node-agent/",
            "rtc-node-agent/n1/",
            "rtc-node-agent/n1/podu1/",
        ] {
            assert_eq!(
                read(&format!("{dir}cgroup.subtree_control")),
                "+cpu +memory",
                "{dir}"
            );
        }
        assert_eq!(read("rtc-node-agent/n1/podu1/web/cpu.max"), "100000 100000");
        assert_eq!(read("rtc-node-agent/n1/podu1/web/memory.max"), "max");
        assert_eq!(read("rtc-node-agent/n1/podu1/web/cpu.weight"), "1");
        assert_eq!(
            created.procs_files("web"),
            [root.join("rtc-node-agent/n1/podu1/web/cgroup.procs")]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn pod_procs_files_are_per_container_in_each_hierarchy() {
        let v1 = v1_hierarchies(&parse_mountinfo(V1_MOUNTINFO)).expect("v1");
        let cgroup = PodCgroup {
            pod_dirs: v1
                .distinct()
                .iter()
                .map(|m| m.join("rtc-node-agent/n1/podu1"))
                .collect(),
            usage: UsageDirs::of(&Mode::V1(v1.clone()), Path::new("rtc-node-agent/n1/podu1")),
            mode: Mode::V1(v1),
        };
        assert_eq!(
            cgroup.procs_files("web"),
            [
                PathBuf::from("/sys/fs/cgroup/cpu/rtc-node-agent/n1/podu1/web/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/cpuacct/rtc-node-agent/n1/podu1/web/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/memory/rtc-node-agent/n1/podu1/web/cgroup.procs"),
            ]
        );
        assert!(PodCgroup::none().procs_files("web").is_empty());
        assert_eq!(
            cgroup.container_usage_dirs("web"),
            UsageDirs::V1 {
                cpuacct: PathBuf::from("/sys/fs/cgroup/cpuacct/rtc-node-agent/n1/podu1/web"),
                memory: PathBuf::from("/sys/fs/cgroup/memory/rtc-node-agent/n1/podu1/web"),
            }
        );
        assert_eq!(
            PodCgroup::none().container_usage_dirs("web"),
            UsageDirs::None
        );
    }
}
