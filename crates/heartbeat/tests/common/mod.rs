//! Shared set-up for the tests against the local stack's Redis.

#![allow(dead_code, unreachable_pub, reason = "each test binary uses a part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a fixture that cannot be built should fail the test that uses it, at once"
)]

use std::time::Duration;

use rtc_heartbeat::{
    DecodeLimits, HeartbeatStore, Ingestor, IngestorConfig, KeyLayout, PublisherConfig,
    RedisOptions, RedisStore, SystemClock, connect,
};
use rtc_testkit::{Endpoints, TestRedis};

/// Heartbeat interval in tests.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// STALE_AFTER in tests.
pub const STALE_AFTER: Duration = Duration::from_millis(600);

/// A test's own prefix on the stack's Redis, and a reconnecting store under it.
pub struct Setup {
    pub redis: TestRedis,
    pub store: RedisStore,
}

pub async fn setup() -> Setup {
    let redis = rtc_testkit::redis().await.expect("the stack's redis");
    let store = store_for(&redis);
    // The client connects in the background; wait for it so timings in the
    // test do not include the first connection.
    store.node_ids().await.expect("the store's client connects");
    Setup { redis, store }
}

/// A store under `redis`'s prefix with its own client, one that reconnects
/// (the test kit's client does not) and gives up on a command quickly.
pub fn store_for(redis: &TestRedis) -> RedisStore {
    let options = RedisOptions {
        command_timeout: Duration::from_millis(500),
        max_reconnect_delay: Duration::from_millis(200),
        ..RedisOptions::new(Endpoints::from_env().redis_url)
    };
    let client = connect(&options).expect("a valid url");
    RedisStore::new(client, KeyLayout::new(redis.prefix()))
}

pub fn publisher_config(node: &str) -> PublisherConfig {
    PublisherConfig {
        interval: INTERVAL,
        stale_after: STALE_AFTER,
        history_len: 20,
        ..PublisherConfig::new(node, "boot-1")
    }
}

pub fn ingestor_config() -> IngestorConfig {
    IngestorConfig {
        poll_interval: Duration::from_millis(50),
        stale_after: STALE_AFTER,
        prune_after: Duration::from_secs(60),
        history_len: 10,
        limits: DecodeLimits::default(),
        ..IngestorConfig::default()
    }
}

pub fn ingestor(store: &RedisStore) -> Ingestor<RedisStore, SystemClock> {
    Ingestor::new(store.clone(), SystemClock, ingestor_config()).expect("valid config")
}

/// Polls `check` every 20 ms until it holds or `within` has passed.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
