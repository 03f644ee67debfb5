//! A node from validated [`Settings`]: connect, bind both ports, start every
//! task; drain it; stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use rtc_drain::{Drain, DrainWait, FinishReport};
use rtc_heartbeat::{
    KeyLayout, Load, PublisherConfig, PublisherHandle, RedisOptions, RedisStore as HeartbeatStore,
    SystemClock, publisher,
};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use rtc_node_load::{LoadError, Meter, Sampler};
use rtc_relay::{Bus, BusError, KafkaBus, RedisStore, Relay, forward};

use crate::NodeRelay;
use crate::admin::{self, Admin};
use crate::config::Settings;
use crate::ws::{self, Public};

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Redis's URL is not one fred accepts.
    #[error("bad setting REDIS_URL: value {url:?}: {error}")]
    RedisUrl {
        /// The URL.
        url: String,
        /// Why.
        error: rtc_heartbeat::StoreError,
    },
    /// The broker cannot be reached.
    #[error("KAFKA_BOOTSTRAP {bootstrap:?}: the broker cannot be reached")]
    Broker {
        /// The bootstrap servers, comma-separated.
        bootstrap: String,
        /// Why.
        source: BusError,
    },
    /// This node's delivery topic could not be created or opened.
    #[error("creating this node's delivery topic")]
    Topic {
        /// Why.
        source: BusError,
    },
    /// The load windows are not allowed.
    #[error("bad setting METRICS_WINDOW_SECS")]
    Window {
        /// Why.
        source: LoadError,
    },
    /// The heartbeat publisher refused its settings.
    #[error("bad heartbeat setting: {error}")]
    Heartbeat {
        /// Why.
        error: rtc_heartbeat::ConfigError,
    },
    /// A port cannot be bound.
    #[error("bad setting {key}: cannot listen on {addr}")]
    Bind {
        /// PUBLIC_ADDR or ADMIN_ADDR.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::RedisUrl { .. } => "redis_url",
            Self::Broker { .. } => "broker",
            Self::Topic { .. } => "topic",
            Self::Window { .. } => "window",
            Self::Heartbeat { .. } => "heartbeat",
            Self::Bind { .. } => "bind",
        }
    }
}

async fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let bind_err = |source| StartError::Bind { key, addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

/// The parts of a running node the admin port and signals act on.
#[derive(Debug)]
pub struct NodeCore {
    relay: Arc<NodeRelay>,
    drain: Drain,
    load: watch::Sender<Load>,
    publisher: Mutex<Option<PublisherHandle<HeartbeatStore>>>,
    consumer_stop: watch::Sender<bool>,
    consumer: Mutex<Option<JoinHandle<bool>>>,
    handoff_grace: Duration,
}

impl NodeCore {
    /// The drain.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The relay.
    pub fn relay(&self) -> &Arc<NodeRelay> {
        &self.relay
    }

    /// Starts the drain, or joins the one under way.
    pub fn drain_now(self: &Arc<Self>) -> DrainWait {
        let core = Arc::clone(self);
        let wait = self.drain.start(async move { core.finish().await });
        // Published at once by the heartbeat publisher, not at its next tick.
        self.load.send_modify(|l| l.draining = true);
        wait
    }

    /// Runs once the node is empty: hand on what is left in the delivery
    /// topic, commit the position, deregister.
    async fn finish(&self) -> FinishReport {
        let mut report = FinishReport::default();
        tokio::time::sleep(self.handoff_grace).await;
        let _ = self.consumer_stop.send(true);
        if let Some(task) = self.consumer.lock().await.take() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(committed)) => report.committed = committed,
                Ok(Err(e)) => report.errors.push(format!("consumer task: {e}")),
                Err(_) => report
                    .errors
                    .push("consumer did not catch up within 30s".to_owned()),
            }
        }
        report.handed_off = self.relay.handed_off();
        if let Some(p) = self.publisher.lock().await.take() {
            match p.deregister().await {
                Ok(()) => report.deregistered = true,
                Err(e) => report.errors.push(format!("deregister: {e}")),
            }
        }
        report
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    core: Arc<NodeCore>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// The bound WebSocket address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The core (drain, relay).
    pub fn core(&self) -> &Arc<NodeCore> {
        &self.core
    }

    /// Stops serving. Without a drain first, the heartbeat entry expires
    /// after STALE_AFTER and open sockets are dropped with the runtime.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.core.consumer_stop.send(true);
        if let Some(p) = self.core.publisher.lock().await.take() {
            p.stop().await;
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Connects, creates the delivery topic, binds both ports and starts every
/// task. Call on a multi-threaded tokio runtime.
///
/// # Errors
///
/// [`StartError`] when Redis's URL is bad, the broker cannot be reached or
/// a port cannot be bound; the message names the setting.
pub async fn start(
    settings: Settings,
    prometheus: Option<PrometheusHandle>,
) -> Result<Node, StartError> {
    let redis = rtc_heartbeat::connect(&RedisOptions::new(settings.redis_url.clone())).map_err(
        |error| StartError::RedisUrl {
            url: settings.redis_url.clone(),
            error: error.into(),
        },
    )?;
    let heartbeat_keys = KeyLayout::new(settings.heartbeat_prefix.clone());
    let store = RedisStore::new(
        redis.clone(),
        settings.relay_prefix.clone(),
        settings.node_id.clone(),
        settings.presence_ttl,
        settings.buffer,
        heartbeat_keys.clone(),
    );
    let bus = KafkaBus::connect(
        settings.kafka_bootstrap.clone(),
        settings.topic_prefix.clone(),
        &settings.node_id,
        Duration::from_secs(10),
        settings.offset_timeout,
    )
    .await
    .map_err(|source| StartError::Broker {
        bootstrap: settings.kafka_bootstrap.join(","),
        source,
    })?
    .with_batching(settings.batch)
    .with_fetch_max_bytes(settings.fetch_max_bytes);
    let topic = bus
        .own_topic(&settings.node_id)
        .await
        .map_err(|source| StartError::Topic { source })?;
    let meter = Meter::new(settings.window_secs).map_err(|source| StartError::Window { source })?;
    let relay = Arc::new(
        Relay::new(
            settings.node_id.clone(),
            settings.boot_id.clone(),
            store,
            bus,
            settings.send_queue,
            meter,
        )
        .with_fetch_wait(settings.fetch_wait)
        .with_route_cache(settings.route_cache),
    );

    let (consumer_stop, consumer_stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(Arc::clone(&relay).consume(
        topic,
        settings.offset_commit_interval,
        consumer_stop_rx,
    ));

    let (load, load_rx) = watch::channel(Load::IDLE);
    let mut heartbeat = PublisherConfig::new(settings.node_id.clone(), settings.boot_id.clone());
    heartbeat.interval = settings.heartbeat_interval;
    heartbeat.stale_after = settings.stale_after;
    heartbeat.per_resource_limits = settings.heartbeat_limit_per_resource;
    let publisher = publisher::spawn(
        heartbeat,
        HeartbeatStore::new(redis, heartbeat_keys),
        SystemClock,
        load_rx,
    )
    .map_err(|error| StartError::Heartbeat { error })?;

    let drain = Drain::new(settings.drain);
    let core = Arc::new(NodeCore {
        relay: Arc::clone(&relay),
        drain: drain.clone(),
        load,
        publisher: Mutex::new(Some(publisher)),
        consumer_stop,
        consumer: Mutex::new(Some(consumer)),
        handoff_grace: settings.handoff_grace,
    });

    let (public, public_addr) = bind("PUBLIC_ADDR", settings.public_addr).await?;
    let (admin, admin_addr) = bind("ADMIN_ADDR", settings.admin_addr).await?;

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let public_router = ws::router(Public {
        relay: Arc::clone(&relay),
        drain: drain.clone(),
        limits: settings.limits,
    });
    let public_task = tokio::spawn({
        let shutdown = stopped(stop_rx.clone());
        async move {
            if let Err(e) = axum::serve(public, public_router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "public port failed");
            }
        }
    });
    let admin_router = admin::router(Admin {
        drain: drain.clone(),
        start_drain: {
            let core = Arc::clone(&core);
            Arc::new(move || core.drain_now())
        },
        prometheus,
        admin_token: settings.admin_token.as_deref().map(Arc::from),
    });
    let admin_task = tokio::spawn({
        let shutdown = stopped(stop_rx.clone());
        async move {
            if let Err(e) = axum::serve(admin, admin_router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "admin port failed");
            }
        }
    });
    let forwarder_task = tokio::spawn(forward::run(
        Arc::clone(&relay),
        settings.forward,
        stop_rx.clone(),
    ));
    let sampler_task = tokio::spawn(sample(Arc::clone(&core), stop_rx));
    tracing::info!(node = %settings.node_id, %public_addr, %admin_addr, "socket node started");
    Ok(Node {
        core,
        public_addr,
        admin_addr,
        stop,
        tasks: vec![public_task, admin_task, sampler_task, forwarder_task],
    })
}

/// Measures the node once a second into the heartbeat's load and the gauges.
async fn sample(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let mut sampler = Sampler::system();
    let origin = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let usage = sampler.sample(now);
        let measured = core.relay.measured();
        let conn = u64::try_from(core.drain.active()).unwrap_or(u64::MAX);
        let draining = core.drain.is_draining();
        core.load
            .send_replace(rtc_node_load::load(usage, measured, conn, draining));
        metrics::gauge!("rtc_socket_cpu_ratio").set(usage.cpu);
        metrics::gauge!("rtc_socket_memory_ratio").set(usage.mem);
        metrics::gauge!("rtc_socket_connections").set(conn as f64);
        metrics::gauge!("rtc_socket_messages_per_second").set(measured.mps);
        metrics::gauge!("rtc_socket_delivery_p95_seconds").set(measured.p95_ms / 1000.0);
        metrics::gauge!("rtc_socket_kafka_lag_records").set(measured.lag_records as f64);
        metrics::gauge!("rtc_socket_kafka_lag_seconds").set(measured.lag_ms / 1000.0);
        metrics::gauge!("rtc_socket_draining").set(if draining { 1.0 } else { 0.0 });
    }
}
