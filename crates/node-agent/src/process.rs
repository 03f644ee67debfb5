//! Container processes: started in their cgroups, watched until they exit,
//! and signalled only while they have not been reaped (so a signal never
//! reaches a reused pid).
//!
//! A process joins its cgroups before the program runs, without code in
//! the child between fork and exec: the agent starts
//!
//! ```text
//! /bin/sh -c 'for f; do ... echo $$ > "$f"; ... done; exec "$@"' sh PROCS... -- PROGRAM ARGS...
//! ```
//!
//! and the shell writes its own pid into each `cgroup.procs`, then becomes
//! the program. A shell that cannot join exits with status 125 and says why
//! in the container's log. Each process leads its own process group, so a
//! signal to the agent's terminal does not reach it, and a kill reaches its
//! children too.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::sync::mpsc;

/// The script that joins the cgroups named before `--` and runs the rest.
pub(crate) const JOIN_SCRIPT: &str = r#"for f; do [ "$f" = -- ] && break; echo $$ > "$f" || { echo "rtc-node-agent: cannot join cgroup $f" >&2; exit 125; }; shift; done; shift; exec "$@""#;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program (from the image map).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Where its standard output and error go (appended).
    pub log: PathBuf,
    /// The `cgroup.procs` files to join first; none runs it directly.
    pub cgroup_procs: Vec<PathBuf>,
}

impl Launch {
    /// The program and arguments actually executed, with the cgroup join.
    pub fn argv(&self) -> Vec<String> {
        let program = self.program.to_string_lossy().into_owned();
        if self.cgroup_procs.is_empty() {
            return std::iter::once(program)
                .chain(self.args.iter().cloned())
                .collect();
        }
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            JOIN_SCRIPT.to_owned(),
            "sh".to_owned(),
        ];
        argv.extend(
            self.cgroup_procs
                .iter()
                .map(|p| p.to_string_lossy().into_owned()),
        );
        argv.push("--".to_owned());
        argv.push(program);
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status, or 128 + the signal, as container runtimes report it.
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl Exit {
    fn from_status(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self { code, signal: None },
            (None, Some(signal)) => Self {
                code: 128 + signal,
                signal: Some(signal),
            },
            (None, None) => Self {
                code: -1,
                signal: None,
            },
        }
    }
}

/// A signal to a running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM to the process, to stop gracefully.
    Term,
    /// SIGKILL to the process and its process group.
    Kill,
}

/// A started process. Dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    control: mpsc::UnboundedSender<Signal>,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`, unless the process has already exited.
    pub fn signal(&self, signal: Signal) {
        let _ = self.control.send(signal);
    }
}

/// Starts `launch` and calls `on_exit` once it has exited and been reaped.
///
/// # Errors
///
/// The system's error when the log cannot be opened or the process cannot
/// be started.
pub fn spawn(launch: &Launch, on_exit: impl FnOnce(Exit) + Send + 'static) -> io::Result<Process> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let argv = launch.argv();
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty command line"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the process exited before its pid was read"))?;
    let (control, mut signals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut killed = false;
        let exit = loop {
            tokio::select! {
                status = child.wait() => {
                    break match status {
                        Ok(status) => Exit::from_status(status),
                        Err(_) => Exit { code: -1, signal: None },
                    };
                }
                signal = signals.recv(), if !killed => match signal {
                    Some(Signal::Term) => send_signal("-TERM", &pid.to_string()).await,
                    Some(Signal::Kill) | None => {
                        // The group first, while the leader still holds it.
                        send_signal("-KILL", &format!("-{pid}")).await;
                        let _ = child.start_kill();
                        killed = true;
                    }
                },
            }
        };
        on_exit(exit);
    });
    Ok(Process { pid, control })
}

async fn send_signal(signal: &str, target: &str) {
    let result = tokio::process::Command::new("/bin/kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        tracing::warn!(signal, target, error = %e, "could not run /bin/kill");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn without_cgroups_the_program_runs_directly() {
        let launch = Launch {
            program: PathBuf::from("/usr/bin/python3"),
            args: vec!["-m".into(), "http.server".into()],
            env: vec![],
            cwd: PathBuf::from("/"),
            log: PathBuf::from("/dev/null"),
            cgroup_procs: vec![],
        };
        assert_eq!(launch.argv(), ["/usr/bin/python3", "-m", "http.server"]);
    }

    #[test]
    fn with_cgroups_a_shell_joins_them_first() {
        let launch = Launch {
            program: PathBuf::from("/bin/prog"),
            args: vec!["a".into()],
            env: vec![],
            cwd: PathBuf::from("/"),
            log: PathBuf::from("/dev/null"),
            cgroup_procs: vec![
                PathBuf::from("/cg/cpu/procs"),
                PathBuf::from("/cg/mem/procs"),
            ],
        };
        let argv = launch.argv();
        assert_eq!(argv[0], "/bin/sh");
        assert_eq!(
            &argv[3..],
            [
                "sh",
                "/cg/cpu/procs",
                "/cg/mem/procs",
                "--",
                "/bin/prog",
                "a"
            ]
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rtc-node-agent-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_join_script_writes_its_pid_then_runs_the_program_with_its_arguments() {
        let dir = temp_dir("join");
        let procs = [dir.join("a.procs"), dir.join("b.procs")];
        let launch = Launch {
            program: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".into(),
                "echo \"$$ $0 $1 $X\" > out".into(),
                "zero".into(),
                "one two".into(),
            ],
            env: vec![("X".into(), "x".into())],
            cwd: dir.clone(),
            log: dir.join("log"),
            cgroup_procs: procs.to_vec(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let process = spawn(&launch, move |exit| {
            let _ = tx.send((7_u8, exit));
        })
        .expect("spawn");
        let (tag, exit) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("exit in time")
            .expect("exit");
        assert_eq!(
            (tag, exit),
            (
                7,
                Exit {
                    code: 0,
                    signal: None
                }
            )
        );
        let pid = process.pid().to_string();
        for file in &procs {
            assert_eq!(std::fs::read_to_string(file).expect("procs").trim(), pid);
        }
        let out = std::fs::read_to_string(dir.join("out")).expect("out");
        assert_eq!(out.trim(), format!("{pid} zero one two x"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_process_that_cannot_join_fails_with_125_and_says_why() {
        let dir = temp_dir("nojoin");
        let launch = Launch {
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: vec![],
            cwd: dir.clone(),
            log: dir.join("log"),
            cgroup_procs: vec![dir.join("missing/cgroup.procs")],
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _process = spawn(&launch, move |exit| {
            let _ = tx.send(((), exit));
        })
        .expect("spawn");
        let ((), exit) = rx.recv().await.expect("exit");
        assert_eq!(exit.code, 125);
        let log = std::fs::read_to_string(dir.join("log")).expect("log");
        assert!(log.contains("cannot join cgroup"), "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn term_and_kill_end_a_process_with_128_plus_the_signal() {
        let dir = temp_dir("signals");
        let launch = Launch {
            program: PathBuf::from("/bin/sleep"),
            args: vec!["30".into()],
            env: vec![],
            cwd: dir.clone(),
            log: dir.join("log"),
            cgroup_procs: vec![],
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let term_tx = tx.clone();
        let process = spawn(&launch, move |exit| {
            let _ = term_tx.send(("term", exit));
        })
        .expect("spawn");
        process.signal(Signal::Term);
        let (_, exit) = rx.recv().await.expect("exit");
        assert_eq!(
            exit,
            Exit {
                code: 143,
                signal: Some(15)
            }
        );

        let process = spawn(&launch, move |exit| {
            let _ = tx.send(("kill", exit));
        })
        .expect("spawn");
        process.signal(Signal::Kill);
        let (tag, exit) = rx.recv().await.expect("exit");
        assert_eq!(
            (tag, exit),
            (
                "kill",
                Exit {
                    code: 137,
                    signal: Some(9)
                }
            )
        );
        process.signal(Signal::Term); // after exit: ignored, no panic
        let _ = std::fs::remove_dir_all(&dir);
    }
}
