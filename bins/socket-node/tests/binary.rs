//! The `socket-node` binary as a process: bad settings stop it at start,
//! SIGTERM drains it, a second SIGTERM forces it out.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, Cluster, Result, Seen, http};
use tokio::time::Instant;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Proc {
    child: Child,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cluster: &Cluster, node: &str, extra: &[(&str, &str)]) -> Result<Proc> {
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut command = Command::new(env!("CARGO_BIN_EXE_socket-node"));
    command
        .env_clear()
        .env("POD_NAME", node)
        .env("PUBLIC_ADDR", public.to_string())
        .env("ADMIN_ADDR", admin.to_string())
        .env("REDIS_URL", &cluster.endpoints.redis_url)
        .env("KAFKA_BOOTSTRAP", &cluster.endpoints.kafka_bootstrap)
        .env("RELAY_PREFIX", &cluster.relay_prefix)
        .env("HEARTBEAT_PREFIX", &cluster.heartbeat_prefix)
        .env("DELIVERY_TOPIC_PREFIX", &cluster.topic_prefix)
        .env("HEARTBEAT_INTERVAL", "200ms")
        .env("STALE_AFTER_MS", "2000")
        .env("DRAIN_TIMEOUT", "5s")
        .env("DRAIN_ENDPOINT_DELAY_MS", "200")
        .env("DRAIN_HANDOFF_GRACE_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in extra {
        command.env(key, value);
    }
    Ok(Proc {
        child: command.spawn()?,
        public,
        admin,
    })
}

async fn wait_ready(p: &Proc) -> Result {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok((200, _)) = http(p.admin, "GET", "/readyz").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the node did not become ready".into())
}

fn sigterm(p: &Proc) -> Result {
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()?;
    if !status.success() {
        return Err("kill failed".into());
    }
    Ok(())
}

async fn exit_code(p: &mut Proc, within: Duration) -> Result<Option<i32>> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = p.child.try_wait()? {
            return Ok(status.code());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the process did not exit".into())
}

#[test]
fn bad_settings_stop_the_binary_with_a_message_naming_the_key() -> Result {
    let output = Command::new(env!("CARGO_BIN_EXE_socket-node"))
        .env_clear()
        .env("POD_NAME", "n")
        .env("DRAIN_TIMEOUT", "300")
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DRAIN_TIMEOUT") && stderr.contains("\"300\""),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() -> Result {
    let cluster = Cluster::new();
    let mut p = spawn(&cluster, "proc-a", &[])?;
    wait_ready(&p).await?;
    let mut client = Client::connect(p.public, "term-client").await?;
    let (_, metrics) = http(p.admin, "GET", "/metrics").await?;
    assert!(
        metrics.contains("node_id=\"proc-a\""),
        "metrics carry the node label: {metrics}"
    );
    sigterm(&p)?;
    let mut saw_reconnect = false;
    let close = loop {
        match client.next().await? {
            Seen::Json(v) if v["type"] == "reconnect" => saw_reconnect = true,
            Seen::Json(_) => {}
            Seen::Closed(c) => break c.map(|(code, _)| code),
        }
    };
    assert!(saw_reconnect);
    assert_eq!(close, Some(1012));
    assert_eq!(exit_code(&mut p, Duration::from_secs(15)).await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_forces_exit() -> Result {
    let cluster = Cluster::new();
    // A long endpoint delay keeps the drain busy.
    let mut p = spawn(
        &cluster,
        "proc-b",
        &[
            ("DRAIN_ENDPOINT_DELAY_MS", "4000"),
            ("DRAIN_TIMEOUT", "30s"),
        ],
    )?;
    wait_ready(&p).await?;
    let _client = Client::connect(p.public, "stays").await?;
    sigterm(&p)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http(p.admin, "GET", "/readyz").await?.0, 503);
    assert_eq!(http(p.admin, "GET", "/healthz").await?.0, 200);
    sigterm(&p)?;
    assert_eq!(exit_code(&mut p, Duration::from_secs(3)).await?, Some(1));
    Ok(())
}
