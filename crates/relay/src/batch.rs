//! Produce batching: the records for one delivery topic gathered into one
//! produce call.
//!
//! A [`Batcher`] owns one task per topic. A record submitted to it joins
//! the batch being gathered; the batch is produced when it holds
//! [`BatchBounds::max_records`] records, when the next record would take it
//! past [`BatchBounds::max_bytes`], or [`BatchBounds::linger`] after its
//! first record arrived, whichever comes first. One produce is in flight
//! per topic at a time, and records are produced in the order they were
//! submitted, so the order per sender and recipient is the topic's order.
//! Records submitted while a produce is in flight gather into the next
//! batch.
//!
//! Every record gets a [`Receipt`]: it resolves once its batch's produce
//! has succeeded, or failed. A failed produce fails every record of its
//! batch, none of them is reported as handed to the broker, and the
//! batcher's task ends, so that its owner builds a fresh producer
//! ([`Batcher::is_closed`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bus::BusError;

/// When a gathered batch is produced. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    /// How long a batch waits for more records after its first one
    /// (PRODUCE_LINGER_MS). Zero produces whatever is queued at once.
    pub linger: Duration,
    /// Records per batch at most (PRODUCE_BATCH_RECORDS), at least 1.
    pub max_records: usize,
    /// Bytes of record keys and values per batch at most
    /// (PRODUCE_BATCH_BYTES); a single larger record goes alone.
    pub max_bytes: usize,
}

impl BatchBounds {
    /// The defaults: 5 ms, 1 000 records, 1 MiB.
    pub const DEFAULT: Self = Self {
        linger: Duration::from_millis(5),
        max_records: 1_000,
        max_bytes: 1_048_576,
    };
    /// The largest PRODUCE_BATCH_RECORDS allowed.
    pub const MAX_RECORDS: usize = 100_000;
    /// The range of PRODUCE_BATCH_BYTES allowed: a batch must hold a frame
    /// of the largest MAX_FRAME_BYTES with its envelope, and stay below
    /// what a broker takes in one request by default.
    pub const BYTES: std::ops::RangeInclusive<usize> = 1_024..=64 * 1_048_576;
    /// The longest PRODUCE_LINGER_MS allowed.
    pub const MAX_LINGER: Duration = Duration::from_secs(1);
}

impl Default for BatchBounds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One record to produce to a delivery topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient: the record's key.
    pub to: Arc<str>,
    /// The message frame: the record's value.
    pub frame: Arc<str>,
    /// Its send time, ms since the Unix epoch: the record's timestamp.
    pub sent_ms: u64,
}

impl Outgoing {
    /// The bytes it adds to a batch: key and value.
    pub fn bytes(&self) -> usize {
        self.to.len() + self.frame.len()
    }
}

/// The producing end of a [`Batcher`]: one produce call per batch.
pub trait Produce: Send + Sync + 'static {
    /// Produces `records`, in order, in one request.
    fn produce(&self, records: Vec<Outgoing>) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Whether a record's batch was produced.
#[derive(Debug)]
pub struct Receipt(ReceiptState);

#[derive(Debug)]
enum ReceiptState {
    Ready(Result<(), BusError>),
    Waiting(oneshot::Receiver<Result<(), BusError>>),
}

impl Receipt {
    /// A receipt that is already settled.
    pub fn ready(result: Result<(), BusError>) -> Self {
        Self(ReceiptState::Ready(result))
    }

    /// Waits until the record's batch was produced: `Ok` only once the
    /// broker took it.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the produce of its batch failed or the batcher
    /// stopped before producing it.
    pub async fn wait(self) -> Result<(), BusError> {
        match self.0 {
            ReceiptState::Ready(result) => result,
            ReceiptState::Waiting(rx) => rx.await.unwrap_or_else(|_| {
                Err(BusError::Unavailable(
                    "the producer stopped before the record's batch was produced".to_owned(),
                ))
            }),
        }
    }
}

struct Queued {
    record: Outgoing,
    reply: oneshot::Sender<Result<(), BusError>>,
}

/// Gathers the records of one delivery topic into batches and produces
/// them through `P`. See the [module docs](self). Dropping it produces
/// what is queued, then ends its task.
#[derive(Debug)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the task that gathers and produces through `producer`. Call
    /// within a tokio runtime.
    pub fn spawn<P: Produce>(producer: P, bounds: BatchBounds) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(producer, sanitize(bounds), rx));
        Self { tx }
    }

    /// Queues `record` for the next batch, after every record submitted
    /// before it; never waits.
    pub fn submit(&self, record: Outgoing) -> Receipt {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Queued { record, reply }) {
            Ok(()) => Receipt(ReceiptState::Waiting(rx)),
            Err(_) => Receipt::ready(Err(BusError::Unavailable(
                "the topic's producer stopped after a failed produce".to_owned(),
            ))),
        }
    }

    /// Whether its task has ended (after a failed produce): records
    /// submitted now fail at once.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn sanitize(bounds: BatchBounds) -> BatchBounds {
    BatchBounds {
        linger: bounds.linger,
        max_records: bounds.max_records.max(1),
        max_bytes: bounds.max_bytes.max(1),
    }
}

async fn run<P: Produce>(
    producer: P,
    bounds: BatchBounds,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    // A record that did not fit the last batch starts the next one.
    let mut carry: Option<Queued> = None;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let deadline = Instant::now() + bounds.linger;
        let mut bytes = first.record.bytes();
        let mut batch = vec![first];
        while batch.len() < bounds.max_records {
            let next = match rx.try_recv() {
                Ok(q) => Some(q),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if bounds.linger.is_zero() {
                        None
                    } else {
                        tokio::select! {
                            q = rx.recv() => q,
                            () = tokio::time::sleep_until(deadline) => None,
                        }
                    }
                }
            };
            let Some(q) = next else { break };
            let size = q.record.bytes();
            if bytes + size > bounds.max_bytes {
                carry = Some(q);
                break;
            }
            bytes += size;
            batch.push(q);
        }
        let (records, replies): (Vec<Outgoing>, Vec<_>) =
            batch.into_iter().map(|q| (q.record, q.reply)).unzip();
        let count = records.len();
        metrics::histogram!("rtc_socket_produce_batch_records").record(count as f64);
        match producer.produce(records).await {
            Ok(()) => {
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, records = count, "producing a batch failed; every record of it is failed");
                metrics::counter!("rtc_socket_produce_failures_total").increment(1);
                for reply in replies {
                    let _ = reply.send(Err(BusError::Produce {
                        records: count,
                        message: message.clone(),
                    }));
                }
                // What was queued behind the failed batch fails too: its
                // producer is rebuilt by the owner, and the order per
                // sender and recipient never puts a later record before an
                // earlier one that failed.
                rx.close();
                let rest = carry
                    .take()
                    .into_iter()
                    .chain(std::iter::from_fn(|| rx.try_recv().ok()));
                for q in rest {
                    let _ = q.reply.send(Err(BusError::Produce {
                        records: count,
                        message: message.clone(),
                    }));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// When each produce call came, and the send times of its records.
    type Calls = Arc<tokio::sync::Mutex<Vec<(Duration, Vec<u64>)>>>;

    /// Records each produce call and when it happened; fails while `fail`
    /// is set; each produce takes `takes`.
    #[derive(Debug, Clone, Default)]
    struct Recorder {
        calls: Calls,
        fail: Arc<AtomicBool>,
        takes: Duration,
        origin: Option<Instant>,
    }

    impl Produce for Recorder {
        async fn produce(&self, records: Vec<Outgoing>) -> Result<(), BusError> {
            let at = self.origin.map_or(Duration::ZERO, |o| o.elapsed());
            self.calls
                .lock()
                .await
                .push((at, records.iter().map(|r| r.sent_ms).collect()));
            tokio::time::sleep(self.takes).await;
            if self.fail.load(Ordering::Relaxed) {
                Err(BusError::Unavailable("injected".to_owned()))
            } else {
                Ok(())
            }
        }
    }

    fn record(n: u64, bytes: usize) -> Outgoing {
        Outgoing {
            to: Arc::from("bob"),
            frame: Arc::from("x".repeat(bytes.saturating_sub(3))),
            sent_ms: n,
        }
    }

    fn bounds(linger_ms: u64, max_records: usize, max_bytes: usize) -> BatchBounds {
        BatchBounds {
            linger: Duration::from_millis(linger_ms),
            max_records,
            max_bytes,
        }
    }

    fn recorder(takes_ms: u64) -> Recorder {
        Recorder {
            takes: Duration::from_millis(takes_ms),
            origin: Some(Instant::now()),
            ..Recorder::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_record_waits_the_linger_then_goes() {
        let p = recorder(0);
        let b = Batcher::spawn(p.clone(), bounds(20, 100, 1 << 20));
        let receipt = b.submit(record(1, 10));
        tokio::time::sleep(Duration::from_millis(19)).await;
        assert!(
            p.calls.lock().await.is_empty(),
            "produced before the linger"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            *p.calls.lock().await,
            [(Duration::from_millis(20), vec![1])]
        );
        assert!(receipt.wait().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn records_within_the_linger_share_one_produce_in_order() {
        let p = recorder(0);
        let b = Batcher::spawn(p.clone(), bounds(20, 100, 1 << 20));
        let mut receipts = Vec::new();
        for n in 0..5 {
            receipts.push(b.submit(record(n, 10)));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        for r in receipts {
            assert!(r.wait().await.is_ok());
        }
        let calls = p.calls.lock().await.clone();
        assert_eq!(calls, [(Duration::from_millis(20), vec![0, 1, 2, 3, 4])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_without_the_linger() {
        let p = recorder(0);
        let b = Batcher::spawn(p.clone(), bounds(1_000, 3, 1 << 20));
        let receipts: Vec<_> = (0..7).map(|n| b.submit(record(n, 10))).collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let calls = p.calls.lock().await.clone();
        assert_eq!(
            calls,
            [
                (Duration::ZERO, vec![0, 1, 2]),
                (Duration::ZERO, vec![3, 4, 5])
            ],
            "two full batches at once; the seventh record lingers"
        );
        for r in receipts {
            assert!(r.wait().await.is_ok());
        }
        assert_eq!(
            p.calls.lock().await.last(),
            Some(&(Duration::from_millis(1_000), vec![6]))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_bound_starts_a_new_batch_and_a_large_record_goes_alone() {
        let p = recorder(0);
        let b = Batcher::spawn(p.clone(), bounds(10, 100, 100));
        let sizes = [40, 40, 40, 250, 10];
        let receipts: Vec<_> = sizes
            .iter()
            .zip(0..)
            .map(|(size, n)| b.submit(record(n, *size)))
            .collect();
        for r in receipts {
            assert!(r.wait().await.is_ok());
        }
        let batches: Vec<Vec<u64>> = p.calls.lock().await.iter().map(|c| c.1.clone()).collect();
        assert_eq!(batches, [vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_produce_at_a_time_and_what_arrives_meanwhile_is_the_next_batch() {
        let p = recorder(30);
        let b = Batcher::spawn(p.clone(), bounds(0, 100, 1 << 20));
        let first = b.submit(record(0, 10));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest: Vec<_> = (1..4).map(|n| b.submit(record(n, 10))).collect();
        assert!(first.wait().await.is_ok());
        for r in rest {
            assert!(r.wait().await.is_ok());
        }
        let calls = p.calls.lock().await.clone();
        assert_eq!(
            calls,
            [
                (Duration::ZERO, vec![0]),
                (Duration::from_millis(30), vec![1, 2, 3])
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_produce_fails_every_record_of_its_batch_and_acks_none() {
        let p = recorder(10);
        p.fail.store(true, Ordering::Relaxed);
        let b = Batcher::spawn(p.clone(), bounds(5, 100, 1 << 20));
        let batch: Vec<_> = (0..4).map(|n| b.submit(record(n, 10))).collect();
        // Queued behind the failing batch while its produce is in flight.
        tokio::time::sleep(Duration::from_millis(8)).await;
        let behind = b.submit(record(9, 10));
        let mut failed = 0;
        for r in batch {
            match r.wait().await {
                Err(BusError::Produce { records, .. }) => {
                    assert_eq!(records, 4);
                    failed += 1;
                }
                other => panic!("a record of the failed batch was {other:?}"),
            }
        }
        assert_eq!(failed, 4);
        assert!(
            behind.wait().await.is_err(),
            "a record queued behind a failed batch is not produced after it"
        );
        assert!(b.is_closed(), "the owner builds a new producer");
        assert!(b.submit(record(10, 10)).wait().await.is_err());
        assert_eq!(p.calls.lock().await.len(), 1, "nothing else was produced");
    }
}
