//! `RecordClient` against the stack's broker, read back and written by
//! rskafka as an independent client of the same protocol.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::Compression;
use rskafka::record::Record;
use rtc_kafka_wire::{NewRecord, RecordClient, ResponseError, WireError};
use rtc_testkit::{Endpoints, TestKafka};

const TIMEOUT: Duration = Duration::from_secs(5);

fn record(key: &str, value: &str, timestamp_ms: i64) -> NewRecord {
    NewRecord {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        timestamp_ms,
    }
}

fn client_for(kafka: &TestKafka) -> RecordClient {
    RecordClient::new(
        vec![Endpoints::from_env().kafka_bootstrap],
        "rtc-kafka-wire-test",
        kafka.topic(),
        0,
        TIMEOUT,
    )
}

type Seen = Vec<(i64, Vec<u8>, Vec<u8>, i64)>;

#[tokio::test]
async fn produced_batches_read_back_in_order_by_both_clients()
-> Result<(), Box<dyn std::error::Error>> {
    let kafka = TestKafka::connect(&Endpoints::from_env(), 1).await?;
    let client = client_for(&kafka);
    let batches = [
        vec![record("a", "1", 1_000), record("b", "2", 1_001)],
        vec![record("c", "3", 1_002)],
        vec![
            record("d", "4", 1_003),
            record("e", "", 1_004),
            record("f", "6", 1_005),
        ],
    ];
    let mut bases = Vec::new();
    for batch in &batches {
        bases.push(client.produce(batch).await?);
    }
    assert_eq!(bases, vec![Some(0), Some(2), Some(3)], "base offsets");
    let want: Seen = batches
        .iter()
        .flatten()
        .zip(0i64..)
        .map(|(r, o)| (o, r.key.to_vec(), r.value.to_vec(), r.timestamp_ms))
        .collect();

    let fetched = client.fetch(0, 1 << 20, Duration::from_millis(100)).await?;
    assert_eq!(fetched.high_watermark, 6);
    let got: Seen = fetched
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.key.as_deref().unwrap_or_default().to_vec(),
                r.value.as_deref().unwrap_or_default().to_vec(),
                r.timestamp_ms,
            )
        })
        .collect();
    assert_eq!(got, want, "read back by RecordClient");

    let partition = kafka.partition_client(0).await?;
    let (records, high_watermark) = partition.fetch_records(0, 1..1 << 20, 100).await?;
    assert_eq!(high_watermark, 6);
    let got: Seen = records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.record.key.clone().unwrap_or_default(),
                r.record.value.clone().unwrap_or_default(),
                r.record.timestamp.timestamp_millis(),
            )
        })
        .collect();
    assert_eq!(got, want, "read back by rskafka");

    // From the middle of a batch: the whole batch comes, from its start.
    let fetched = client.fetch(4, 1 << 20, Duration::from_millis(100)).await?;
    let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    kafka.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn records_written_by_rskafka_are_read() -> Result<(), Box<dyn std::error::Error>> {
    let kafka = TestKafka::connect(&Endpoints::from_env(), 1).await?;
    let partition = kafka.partition_client(0).await?;
    let records: Vec<Record> = (0..5)
        .map(|i| Record {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("v{i}").into_bytes()),
            headers: BTreeMap::new(),
            timestamp: Utc
                .timestamp_millis_opt(2_000 + i)
                .single()
                .unwrap_or_default(),
        })
        .collect();
    partition
        .produce(records, Compression::NoCompression)
        .await?;
    let fetched = client_for(&kafka)
        .fetch(0, 1 << 20, Duration::from_millis(100))
        .await?;
    let got: Vec<(i64, String, i64)> = fetched
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                r.timestamp_ms,
            )
        })
        .collect();
    let want: Vec<(i64, String, i64)> = (0..5).map(|i| (i, format!("v{i}"), 2_000 + i)).collect();
    assert_eq!(got, want);
    kafka.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_small_byte_bound_still_returns_a_whole_first_batch()
-> Result<(), Box<dyn std::error::Error>> {
    let kafka = TestKafka::connect(&Endpoints::from_env(), 1).await?;
    let client = client_for(&kafka);
    let big = "x".repeat(4_000);
    client
        .produce(&[record("a", &big, 1), record("b", &big, 2)])
        .await?;
    client.produce(&[record("c", &big, 3)]).await?;
    let fetched = client.fetch(0, 100, Duration::from_millis(100)).await?;
    let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
    assert!(
        offsets.starts_with(&[0, 1]),
        "the first batch comes whole: {offsets:?}"
    );
    assert!(
        fetched
            .records
            .iter()
            .all(|r| r.value.as_deref() == Some(big.as_bytes()))
    );
    kafka.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn an_empty_topic_waits_and_returns_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let kafka = TestKafka::connect(&Endpoints::from_env(), 1).await?;
    let fetched = client_for(&kafka)
        .fetch(0, 1 << 20, Duration::from_millis(50))
        .await?;
    assert!(fetched.records.is_empty());
    assert_eq!(fetched.high_watermark, 0);
    kafka.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_topic_is_a_refusal_naming_it_and_a_position_past_the_end_reads_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let kafka = TestKafka::connect(&Endpoints::from_env(), 1).await?;
    let client = client_for(&kafka);
    client.produce(&[record("a", "1", 1)]).await?;
    // Kafka refuses a position past the end with OffsetOutOfRange; the
    // stack's broker (tansu 0.6.0) answers it with no records.
    match client.fetch(50, 1 << 20, Duration::from_millis(10)).await {
        Ok(fetched) => assert!(fetched.records.is_empty(), "{fetched:?}"),
        Err(err) => assert!(
            matches!(
                &err,
                WireError::Broker {
                    api: "Fetch",
                    error: ResponseError::OffsetOutOfRange,
                    ..
                }
            ),
            "{err:?}"
        ),
    }
    // The client carries on after a refusal.
    assert_eq!(client.produce(&[record("b", "2", 2)]).await?, Some(1));

    let missing = RecordClient::new(
        vec![Endpoints::from_env().kafka_bootstrap],
        "rtc-kafka-wire-test",
        format!("{}-never-created", kafka.topic()),
        0,
        TIMEOUT,
    );
    let err = missing.produce(&[record("a", "1", 1)]).await.err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        text.contains("-never-created/0"),
        "the error names the partition: {text}"
    );
    assert!(
        matches!(
            &err,
            Some(
                WireError::Broker {
                    api: "Metadata",
                    ..
                } | WireError::Missing { .. }
            )
        ),
        "{err:?}"
    );
    kafka.cleanup().await?;
    Ok(())
}
