//! The Centrifugo peer of the relay bench: Centrifugo v6, built from the Go
//! module proxy once into a cache directory, run as two nodes that share
//! the stack's Redis as their engine (broker and presence) under a key
//! prefix unique to the run, in insecure client mode (no token) with
//! application-level pings off, as the socket node has none either.
//!
//! It is driven by the same pacing and histogram code as the socket node
//! and the `ws` peer, through Centrifugo's own JSON protocol over WebSocket
//! (`/connection/websocket`): `{"id":1,"connect":{}}`, then each recipient
//! `{"id":2,"subscribe":{"channel":"<its own>"}}`; a sender publishes
//! `{"id":N,"publish":{"channel":"<the recipient's>","data":{"s","t"}}}` and
//! the recipient reads `{"push":{"channel":..,"pub":{"data":{"s","t"}}}}`.
//! The server may put several replies or pushes in one frame, one per line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{
    Cluster, Idle, Result, Shared, Sink, Step, Target, Ws, field, free_port, http, lock, now_us,
    rss_kib, sender, source,
};

/// The Go module and its pinned version (the latest v6 on the module proxy
/// when this was written: `go list -m -versions github.com/centrifugal/centrifugo/v6`).
pub(super) const MODULE: &str = "github.com/centrifugal/centrifugo/v6";
/// See [`MODULE`].
pub(super) const VERSION: &str = "v6.9.1";

/// Where builds are cached: `$RTC_BENCH_CACHE`, else `~/.cache/rtc-bench`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RTC_BENCH_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/rtc-bench")
}

/// The Centrifugo binary, built on first use with `go install` from the
/// module proxy (only) into the cache; later runs reuse it.
pub(super) fn binary() -> Result<PathBuf> {
    let dir = cache_dir().join(format!("centrifugo-{VERSION}"));
    let bin = dir.join("centrifugo");
    if bin.is_file() {
        return Ok(bin);
    }
    let log = cache_dir().join("build-centrifugo.log");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "building Centrifugo {VERSION} once (go install {MODULE}@{VERSION} into {}; several minutes; log {})",
        dir.display(),
        log.display()
    );
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = Command::new("go")
        .args([
            "install",
            "-trimpath",
            "-ldflags=-s -w",
            &format!("{MODULE}@{VERSION}"),
        ])
        .env("GOBIN", &dir)
        .env("GOMODCACHE", cache_dir().join("go/mod"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "https://proxy.golang.org")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .stdout(Stdio::null())
        .stderr(out)
        .status()
        .context("running go (a Go 1.26 toolchain is needed to build Centrifugo)")?;
    if !status.success() || !bin.is_file() {
        bail!(
            "go install {MODULE}@{VERSION} failed ({status}); see {}",
            log.display()
        );
    }
    Ok(bin)
}

/// What `centrifugo version` prints, on one line.
pub(super) fn version(bin: &std::path::Path) -> String {
    Command::new(bin)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Starts Centrifugo nodes of one run: same Redis, same key prefix.
pub(super) struct Centrifugo {
    bin: PathBuf,
    redis: String,
    prefix: String,
}

impl Centrifugo {
    /// Nodes on the cluster's Redis, under `<run prefix>:cf`.
    pub(super) fn new(cluster: &Cluster, bin: PathBuf) -> Self {
        Self {
            bin,
            redis: cluster.redis_url.clone(),
            prefix: format!("{}:cf", cluster.prefix),
        }
    }

    /// One node, ready (its `/health` answers 200).
    pub(super) async fn node(&self, name: &str) -> Result<Target> {
        let port = free_port()?;
        let config = serde_json::json!({
            "http_server": { "address": "127.0.0.1", "port": port },
            "log": { "level": "error" },
            "node": { "name": name },
            "engine": {
                "type": "redis",
                "redis": { "address": [self.redis], "prefix": self.prefix },
            },
            "client": {
                "insecure": true,
                "ping_interval": "-1s",
                "pong_timeout": "-2s",
            },
            "http_api": { "disabled": true },
            "health": { "enabled": true },
        });
        let file = std::env::temp_dir().join(format!("{}-{name}.json", self.prefix));
        std::fs::write(&file, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&file)
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let public = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut target = Target {
            name: name.to_owned(),
            child,
            public,
            admin: None,
        };
        let started = Instant::now();
        let ready = loop {
            if let Ok((200, _)) = http(public, "GET", "/health", Duration::from_secs(2)).await {
                break true;
            }
            if started.elapsed() > Duration::from_secs(20)
                || target.child.try_wait().ok().flatten().is_some()
            {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = std::fs::remove_file(&file);
        if !ready {
            bail!("Centrifugo node {name} did not become healthy on {public}");
        }
        Ok(target)
    }
}

/// The reply to command `id` in a frame of newline-separated messages.
fn reply(text: &str, id: u64) -> Option<&str> {
    let head = format!("{{\"id\":{id},");
    text.lines().find(|l| l.starts_with(&head))
}

async fn expect_reply(ws: &mut Ws, id: u64, kind: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, ws.next())
            .await
            .with_context(|| format!("no {kind} reply within 10 s"))?;
        match next {
            Some(Ok(Message::Text(t))) => {
                if let Some(line) = reply(&t, id) {
                    if line.contains("\"error\"") {
                        bail!("{kind} refused: {line}");
                    }
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed before the {kind} reply: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("before the {kind} reply: {e}"),
            None => bail!("ended before the {kind} reply"),
        }
    }
}

/// Connects from `src`, sends `connect`, and subscribes to `channel` when
/// given; returns once the server has answered each.
async fn connect(
    addr: std::net::SocketAddr,
    src: std::net::Ipv4Addr,
    channel: Option<&str>,
) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((src, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/connection/websocket"),
        stream,
        Some(config),
    )
    .await?;
    ws.send(Message::text(r#"{"id":1,"connect":{}}"#)).await?;
    expect_reply(&mut ws, 1, "connect").await?;
    if let Some(channel) = channel {
        ws.send(Message::text(format!(
            r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#
        )))
        .await?;
        expect_reply(&mut ws, 2, "subscribe").await?;
    }
    Ok(ws)
}

/// Opens `n` connections, each subscribed to a channel of its own,
/// `concurrency` at a time, each retried twice.
async fn open_many(
    addr: std::net::SocketAddr,
    n: usize,
    tag: &str,
    sources: usize,
    concurrency: usize,
) -> (Vec<Ws>, usize, Duration) {
    let started = Instant::now();
    let results: Vec<Option<Ws>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let channel = format!("{tag}-{i}");
            async move {
                for attempt in 0..3 {
                    match connect(addr, source(i, sources), Some(&channel)).await {
                        Ok(ws) => return Some(ws),
                        Err(e) if attempt == 2 => {
                            eprintln!("  connection {channel} failed: {e:#}");
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                None
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_none()).count();
    (
        results.into_iter().flatten().collect(),
        failed,
        started.elapsed(),
    )
}

/// The idle step against one Centrifugo node, measured as for the others:
/// VmRSS growth over `n` connections (each connected and subscribed to its
/// own channel, then silent), read 3 s after the last one.
pub(super) async fn idle(target: &Target, n: usize, sources: usize) -> Idle {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(target.pid());
    let (conns, failed, took) = open_many(target.public, n, "idle", sources, 256).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(target.pid());
    let result = Idle {
        target: target.name.clone(),
        open: conns.len(),
        failed,
        connect_secs: took.as_secs_f64(),
        rss_before_kib: before,
        rss_after_kib: after,
    };
    eprintln!(
        "  {}: {} open ({} failed) in {:.1} s; RSS {} -> {} KiB: {:.2} KiB per connection",
        result.target,
        result.open,
        failed,
        result.connect_secs,
        before,
        after,
        result.per_conn_kib()
    );
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    result
}

/// Reads a recipient's pushes; each publication in the current step is
/// one delivery, timed from its `t`.
async fn recipient(mut stream: SplitStream<Ws>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await else {
            continue;
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let now = now_us();
                for line in t.lines() {
                    if !line.contains("\"pub\"") {
                        continue;
                    }
                    let (Some(step), Some(sent)) = (field(line, "\"s\":"), field(line, "\"t\":"))
                    else {
                        continue;
                    };
                    if step == shared.step.load(Ordering::Relaxed) {
                        let _ = lock(&shared.histogram).record(now.saturating_sub(sent).max(1));
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Reads a sender's publish replies: an `error` one counts as an error.
async fn reply_reader(mut stream: SplitStream<Ws>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await else {
            continue;
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                for line in t.lines() {
                    if line.contains("\"error\"") {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    } else if line.starts_with("{\"id\":") {
                        shared.acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The publish frames of one sender in one step; command ids stay unique
/// on the connection across steps.
fn publish_frame(channel: String, step: u64) -> impl FnMut() -> String + Send {
    let mut id = step * 100_000_000 + 10;
    move || {
        id += 1;
        format!(
            "{{\"id\":{id},\"publish\":{{\"channel\":\"{channel}\",\"data\":{{\"s\":{step},\"t\":{}}}}}}}",
            now_us()
        )
    }
}

/// Pairs of Centrifugo clients driven step by step, as the relay's pairs
/// are: each recipient subscribed to a channel of its own, its sender
/// publishing into it.
pub(super) struct Load {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    sinks: Vec<(Sink, String)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    step: u64,
    send_to: std::net::SocketAddr,
    receive_from: std::net::SocketAddr,
    pairs: usize,
    sources: usize,
    tag: String,
    generation: u64,
}

impl Load {
    /// `pairs` senders on `send_to`, their recipients on `receive_from`.
    pub(super) async fn connect(
        send_to: std::net::SocketAddr,
        receive_from: std::net::SocketAddr,
        pairs: usize,
        sources: usize,
        tag: &str,
    ) -> Result<Self> {
        #[expect(
            clippy::disallowed_types,
            reason = "makes the histogram lock, taken only in sync code"
        )]
        let shared = Arc::new(Shared {
            step: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            late: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            histogram: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut sinks = Vec::new();
        for i in 0..pairs {
            let channel = format!("{tag}-r{i}");
            let ws = connect(receive_from, source(i, sources), Some(&channel)).await?;
            let (_sink, stream) = ws.split();
            tasks.push(tokio::spawn(recipient(
                stream,
                Arc::clone(&shared),
                Arc::clone(&stop),
            )));
            let ws = connect(send_to, source(i + 1, sources), None).await?;
            let (sink, stream) = ws.split();
            tasks.push(tokio::spawn(reply_reader(
                stream,
                Arc::clone(&shared),
                Arc::clone(&stop),
            )));
            sinks.push((sink, channel));
        }
        // Subscriptions settle in Redis on both nodes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Self {
            shared,
            stop,
            sinks,
            tasks,
            step: 0,
            send_to,
            receive_from,
            pairs,
            sources,
            tag: tag.to_owned(),
            generation: 0,
        })
    }

    async fn renew(&mut self) -> Result {
        self.generation += 1;
        let tag = format!("{}g{}", self.tag, self.generation);
        let mut fresh = Self::connect(
            self.send_to,
            self.receive_from,
            self.pairs,
            self.sources,
            &tag,
        )
        .await?;
        std::mem::swap(&mut self.shared, &mut fresh.shared);
        std::mem::swap(&mut self.stop, &mut fresh.stop);
        std::mem::swap(&mut self.sinks, &mut fresh.sinks);
        std::mem::swap(&mut self.tasks, &mut fresh.tasks);
        fresh.close().await;
        Ok(())
    }

    /// One step at `rate` msgs/s for `length`, then up to 3 s for the
    /// stragglers; as the relay's `Load::step`.
    pub(super) async fn step(&mut self, rate: u64, length: Duration) -> Result<Step> {
        if self.shared.closed.load(Ordering::Relaxed) > 0 {
            eprintln!("  (clients were closed in the last step: connecting a fresh set)");
            self.renew().await?;
        }
        self.step += 1;
        let step = self.step;
        lock(&self.shared.histogram).reset();
        self.shared.delivered.store(0, Ordering::Relaxed);
        self.shared.errors.store(0, Ordering::Relaxed);
        self.shared.step.store(step, Ordering::Relaxed);
        let per_sender = rate as f64 / self.sinks.len() as f64;
        let mut handles = Vec::new();
        for (sink, channel) in self.sinks.drain(..) {
            handles.push(tokio::spawn(async move {
                let frames = publish_frame(channel.clone(), step);
                let (sink, sent) = sender(sink, frames, per_sender, length).await;
                (sink, channel, sent)
            }));
        }
        let mut sent = 0;
        for h in handles {
            let (sink, channel, n) = h.await?;
            sent += n;
            self.sinks.push((sink, channel));
        }
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(3)
            && self.shared.delivered.load(Ordering::Relaxed) < sent
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let histogram = lock(&self.shared.histogram).clone();
        let ms = |us: u64| us as f64 / 1000.0;
        let result = Step {
            offered: rate,
            sent,
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            secs: length.as_secs_f64(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            closed: self.shared.closed.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            cpu_ms: 0.0,
        };
        self.shared.step.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(result)
    }

    /// Closes every client.
    pub(super) async fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (sink, _) in &mut self.sinks {
            let _ = sink.close().await;
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}
