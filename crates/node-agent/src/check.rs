//! Carrying out a probe or hook [`Action`]: an HTTP/1.1 GET over a plain TCP
//! connection (only the status line is read; 200 to 399 succeeds, as in the
//! kubelet), a TCP connect, a command, or a pause.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::probe::Action;

/// The user agent the kubelet sends with probes.
const USER_AGENT: &str = "kube-probe/1.37";

/// Where a command action runs: the container's environment, working
/// directory and cgroups.
#[derive(Debug, Clone, Copy)]
pub struct ExecContext<'a> {
    /// The container's environment.
    pub env: &'a [(String, String)],
    /// The working directory.
    pub cwd: &'a Path,
    /// The `cgroup.procs` files to join.
    pub cgroup_procs: &'a [std::path::PathBuf],
}

/// Runs `action` within `timeout`; `Err` says why it failed.
pub async fn run(action: &Action, timeout: Duration, exec: ExecContext<'_>) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_unbounded(action, exec)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn run_unbounded(action: &Action, exec: ExecContext<'_>) -> Result<(), String> {
    match action {
        Action::HttpGet {
            host,
            port,
            path,
            https,
            headers,
        } => {
            if *https {
                return Err("HTTPS probes are not supported by this node agent".to_owned());
            }
            let status = http_get(host, *port, path, headers).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP GET {path} answered with status {status}"))
            }
        }
        Action::TcpSocket { host, port } => TcpStream::connect((host.as_str(), *port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}")),
        Action::Exec { command } => run_command(command, exec).await,
        Action::Sleep(duration) => {
            tokio::time::sleep(*duration).await;
            Ok(())
        }
        Action::Unsupported(why) => Err((*why).to_owned()),
    }
}

/// Sends `GET path` to `host:port` and returns the response's status code.
///
/// # Errors
///
/// A message when the connection fails or the answer has no status line.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {host_header}\r\n"));
    }
    if !has("user-agent") {
        request.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request to {host}:{port}: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading the answer of {host}:{port}: {e}"))?;
    status_code(&line).ok_or_else(|| {
        format!(
            "{host}:{port} answered without an HTTP status line: {:?}",
            line.trim_end()
        )
    })
}

/// The status code of an HTTP/1.x status line.
pub fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

async fn run_command(command: &[String], exec: ExecContext<'_>) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("exec has an empty command".to_owned());
    };
    let mut argv: Vec<&str> = Vec::new();
    if !exec.cgroup_procs.is_empty() {
        argv.extend(["/bin/sh", "-c", crate::process::JOIN_SCRIPT, "sh"]);
        argv.extend(exec.cgroup_procs.iter().filter_map(|p| p.to_str()));
        argv.push("--");
    }
    argv.push(program);
    argv.extend(args.iter().map(String::as_str));
    let (first, rest) = argv
        .split_first()
        .ok_or_else(|| "exec has an empty command".to_owned())?;
    let status = tokio::process::Command::new(first)
        .args(rest)
        .env_clear()
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(exec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("command {program} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn no_exec() -> ExecContext<'static> {
        ExecContext {
            env: &[],
            cwd: Path::new("/"),
            cgroup_procs: &[],
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 404 File not found\r\n"), Some(404));
        assert_eq!(status_code("HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code("HTTP/1.1 2000 x"), None);
        assert_eq!(status_code(""), None);
    }

    /// A one-shot server on loopback that answers with `status_line` and
    /// hands back the request it got.
    async fn serve_once(status_line: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0_u8; 4096];
            let n = socket.read(&mut request).await.expect("read");
            socket
                .write_all(status_line.as_bytes())
                .await
                .expect("write");
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (port, task)
    }

    fn get(port: u16, path: &str) -> Action {
        Action::HttpGet {
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            https: false,
            headers: vec![("X-Probe".into(), "yes".into())],
        }
    }

    #[tokio::test]
    async fn http_2xx_and_3xx_succeed_and_the_request_is_well_formed() {
        let (port, server) = serve_once("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").await;
        assert_eq!(
            run(&get(port, "/ready?x=1"), Duration::from_secs(5), no_exec()).await,
            Ok(())
        );
        let request = server.await.expect("request");
        assert!(
            request.starts_with("GET /ready?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("User-Agent: kube-probe/1.37\r\n"),
            "{request}"
        );
        assert!(request.contains("X-Probe: yes\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_4xx_fails_with_the_status() {
        let (port, _server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = run(&get(port, "/"), Duration::from_secs(5), no_exec())
            .await
            .expect_err("503");
        assert_eq!(err, "HTTP GET / answered with status 503");
    }

    #[tokio::test]
    async fn refused_connections_fail_http_and_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        assert!(
            run(&get(port, "/"), Duration::from_secs(5), no_exec())
                .await
                .is_err()
        );
        let tcp = Action::TcpSocket {
            host: "127.0.0.1".into(),
            port,
        };
        assert!(run(&tcp, Duration::from_secs(5), no_exec()).await.is_err());
    }

    #[tokio::test]
    async fn tcp_succeeds_when_the_port_is_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tcp = Action::TcpSocket {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(run(&tcp, Duration::from_secs(5), no_exec()).await, Ok(()));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let err = run(&get(port, "/"), Duration::from_millis(200), no_exec())
            .await
            .expect_err("timeout");
        assert!(err.starts_with("timed out"), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn commands_succeed_on_exit_zero_with_the_given_environment() {
        let env = [("WANT".to_owned(), "yes".to_owned())];
        let ctx = ExecContext {
            env: &env,
            cwd: Path::new("/"),
            cgroup_procs: &[],
        };
        let ok = Action::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), "test \"$WANT\" = yes".into()],
        };
        assert_eq!(run(&ok, Duration::from_secs(5), ctx).await, Ok(()));
        let fail = Action::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
        };
        assert!(run(&fail, Duration::from_secs(5), ctx).await.is_err());
        let empty = Action::Exec { command: vec![] };
        assert!(run(&empty, Duration::from_secs(5), ctx).await.is_err());
    }

    #[tokio::test]
    async fn unsupported_actions_and_https_fail_with_a_reason() {
        let err = run(
            &Action::Unsupported("no grpc"),
            Duration::from_secs(1),
            no_exec(),
        )
        .await;
        assert_eq!(err, Err("no grpc".to_owned()));
        let https = Action::HttpGet {
            host: "127.0.0.1".into(),
            port: 1,
            path: "/".into(),
            https: true,
            headers: vec![],
        };
        assert!(
            run(&https, Duration::from_secs(1), no_exec())
                .await
                .is_err()
        );
    }
}
