//! Smoke test against the stack's Kafka-protocol broker: records produced to
//! a fresh topic fetch back in order, with the high watermark after them.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::Compression;
use rskafka::record::Record;
use rtc_testkit::Error;

fn record(key: &str, value: &str) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: BTreeMap::from([("source".to_owned(), b"smoke".to_vec())]),
        timestamp: Utc
            .timestamp_millis_opt(1_700_000_000_000)
            .single()
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn produced_records_fetch_back_with_the_high_watermark() -> Result<(), Error> {
    let kafka = rtc_testkit::kafka().await?;
    let partition = kafka.partition_client(0).await?;
    let sent = vec![record("a", "one"), record("b", "two"), record("c", "three")];

    let offsets = partition
        .produce(sent.clone(), Compression::NoCompression)
        .await?;
    assert_eq!(offsets, vec![0, 1, 2]);

    // The high watermark comes from the Fetch response: this broker's
    // ListOffsets(Latest) is wrong after a multi-record batch.
    let mut fetched = Vec::new();
    let mut high_watermark = -1;
    for _ in 0..20 {
        let next = fetched.len() as i64;
        let (records, watermark) = partition.fetch_records(next, 1..1_000_000, 500).await?;
        fetched.extend(records);
        high_watermark = watermark;
        if fetched.len() >= sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(high_watermark, 3);
    let got: Vec<(i64, Record)> = fetched.into_iter().map(|r| (r.offset, r.record)).collect();
    let want: Vec<(i64, Record)> = (0..).zip(sent).collect();
    assert_eq!(got, want);

    kafka.cleanup().await
}
