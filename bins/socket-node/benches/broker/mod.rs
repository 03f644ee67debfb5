//! The broker's own ceiling on this machine: a plain produce/fetch loop
//! with the relay's broker client (`rtc_kafka_wire::RecordClient`, one
//! connection for the producer and one for the consumer) on one topic of
//! one partition, the shape of one node
//! pair's delivery topic, with records of the relay's size and its batch
//! bounds, measured in the same run as the relay's cross-node figure.
//!
//! One producer task produces batches back to back, one produce in flight
//! at a time (as the relay's batcher does per topic), each batch as large
//! as `PRODUCE_BATCH_RECORDS` and `PRODUCE_BATCH_BYTES` allow; a consumer
//! task fetches from the start with the node's `FETCH_MAX_WAIT_MS` and
//! `FETCH_MAX_BYTES`. Throughput is the records fetched per second over the
//! window; latency of a record runs from just before the produce call of
//! its batch (the time is written into the record's value) to the return of
//! the fetch that read it, both on this process's monotonic clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rskafka::client::ClientBuilder;
use rtc_kafka_wire::{NewRecord, RecordClient};

/// What the loop is given.
#[derive(Debug, Clone)]
pub(crate) struct CeilingConfig {
    /// The broker.
    pub(crate) bootstrap: String,
    /// The topic, created for the run.
    pub(crate) topic: String,
    /// Bytes of a record's value (the relay's message frame).
    pub(crate) value_bytes: usize,
    /// Bytes of a record's key (the recipient's id).
    pub(crate) key_bytes: usize,
    /// PRODUCE_BATCH_RECORDS.
    pub(crate) max_records: usize,
    /// PRODUCE_BATCH_BYTES.
    pub(crate) max_bytes: usize,
    /// FETCH_MAX_WAIT_MS.
    pub(crate) fetch_wait_ms: i32,
    /// FETCH_MAX_BYTES.
    pub(crate) fetch_max_bytes: i32,
    /// How long the loop runs.
    pub(crate) length: Duration,
}

/// What the loop measured.
#[derive(Debug, Clone)]
pub(crate) struct Ceiling {
    /// Records per produce.
    pub(crate) batch_records: usize,
    /// Records fetched per second over the window.
    pub(crate) fetched_per_sec: f64,
    /// Records produced per second over the window.
    pub(crate) produced_per_sec: f64,
    /// Produce-to-fetch latency, ms.
    pub(crate) p50_ms: f64,
    /// Produce-to-fetch latency, ms.
    pub(crate) p99_ms: f64,
}

fn now_us(origin: tokio::time::Instant) -> u64 {
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Runs the loop. See the [module docs](self).
pub(crate) async fn ceiling(cfg: &CeilingConfig) -> anyhow::Result<Ceiling> {
    let client = ClientBuilder::new(vec![cfg.bootstrap.clone()])
        .client_id("rtc-bench-ceiling".to_owned())
        .build()
        .await
        .context("connecting to the broker")?;
    client
        .controller_client()?
        .create_topic(cfg.topic.as_str(), 1, 1, 5_000)
        .await
        .context("creating the ceiling topic")?;
    let records = |name: &str| {
        RecordClient::new(
            vec![cfg.bootstrap.clone()],
            name,
            cfg.topic.clone(),
            0,
            Duration::from_secs(5),
        )
    };
    let producer = records("rtc-bench-ceiling-producer");
    let consumer = records("rtc-bench-ceiling-consumer");
    let per_record = cfg.value_bytes + cfg.key_bytes;
    let batch_records = cfg
        .max_records
        .min(cfg.max_bytes / per_record.max(1))
        .max(1);
    let key = Bytes::from(vec![b'k'; cfg.key_bytes]);
    let origin = tokio::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));

    let producing = tokio::spawn({
        let stop = Arc::clone(&stop);
        let produced = Arc::clone(&produced);
        async move {
            while !stop.load(Ordering::Relaxed) {
                // The send time, padded to the relay's frame size.
                let t = now_us(origin).to_string();
                let mut value = t.into_bytes();
                value.push(b' ');
                value.resize(cfg_value_bytes(&value, per_record, key.len()), b'x');
                let value = Bytes::from(value);
                let records: Vec<NewRecord> = (0..batch_records)
                    .map(|_| NewRecord {
                        key: key.clone(),
                        value: value.clone(),
                        timestamp_ms: 0,
                    })
                    .collect();
                producer.produce(&records).await.context("producing")?;
                produced.fetch_add(batch_records as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut fetched: u64 = 0;
    let mut position = 0;
    let started = tokio::time::Instant::now();
    let produced_at_start = produced.load(Ordering::Relaxed);
    while started.elapsed() < cfg.length {
        let fetched_now = consumer
            .fetch(
                position,
                cfg.fetch_max_bytes,
                Duration::from_millis(u64::try_from(cfg.fetch_wait_ms).unwrap_or(0)),
            )
            .await
            .context("fetching")?;
        let now = now_us(origin);
        for r in &fetched_now.records {
            if r.offset < position {
                continue;
            }
            position = r.offset + 1;
            let sent = r
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v.split(|b| *b == b' ').next()?).ok())
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(now);
            let _ = histogram.record(now.saturating_sub(sent).max(1));
            fetched += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let produced_in_window = produced.load(Ordering::Relaxed) - produced_at_start;
    stop.store(true, Ordering::Relaxed);
    producing.await??;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Ceiling {
        batch_records,
        fetched_per_sec: fetched as f64 / secs,
        produced_per_sec: produced_in_window as f64 / secs,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
    })
}

/// The value's length that makes key and value `per_record` bytes, never
/// shorter than the send time it carries.
fn cfg_value_bytes(value: &[u8], per_record: usize, key: usize) -> usize {
    per_record.saturating_sub(key).max(value.len())
}
