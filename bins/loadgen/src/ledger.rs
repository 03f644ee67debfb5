//! The accounting of one run: every message the generator sends, its ack and
//! its arrivals, so losses and duplicates are counted exactly and latency is
//! measured end to end. Pure: times are passed in as the elapsed time since
//! the run's start, read from one monotonic clock in one process, so the
//! sender's send time and the recipient's receive time are comparable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The generator's own id of a message: which of its clients sent it, and
/// that client's sequence number. Written `<run>-<sender>-<seq>` in bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    /// Index of the sending client.
    pub sender: u32,
    /// The sender's sequence number, from 0.
    pub seq: u64,
}

impl MsgId {
    /// The id as written in a message body for run `run`.
    #[must_use]
    pub fn render(&self, run: &str) -> String {
        format!("{run}-{}-{}", self.sender, self.seq)
    }

    /// Reads an id written by [`MsgId::render`] for the same `run`; `None`
    /// for another run's ids or anything else.
    #[must_use]
    pub fn parse(run: &str, text: &str) -> Option<Self> {
        let rest = text.strip_prefix(run)?.strip_prefix('-')?;
        let (sender, seq) = rest.split_once('-')?;
        Some(Self {
            sender: sender.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// How a socket node acknowledged a message (docs/socket-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Handed to the recipient's connection on the same node.
    Delivered,
    /// Published to the delivery topic of the recipient's node.
    Relayed,
    /// Kept in the recipient's offline buffer.
    Buffered,
}

impl AckStatus {
    /// Reads the `status` of an ack frame.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "delivered" => Some(Self::Delivered),
            "relayed" => Some(Self::Relayed),
            "buffered" => Some(Self::Buffered),
            _ => None,
        }
    }
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delivered => "delivered",
            Self::Relayed => "relayed",
            Self::Buffered => "buffered",
        })
    }
}

#[derive(Debug, Clone)]
struct Record {
    recipient: u32,
    /// When the schedule made it due: the driver's hand-out to its sender.
    due: Duration,
    first_sent: Duration,
    ack: Option<AckStatus>,
    arrivals: u32,
    /// The first arrival's latency, µs (0 until then).
    latency_us: u64,
}

/// Counts of messages, as in the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessageCounts {
    /// Distinct messages sent.
    pub sent: u64,
    /// Sends of a message again after a reconnect, not yet acked before.
    pub resent: u64,
    /// Distinct messages acked, by the status of their first ack.
    pub acked: BTreeMap<AckStatus, u64>,
    /// Acks beyond the first for a message (after a resend).
    pub extra_acks: u64,
    /// Sent but never acked.
    pub unacked: u64,
    /// Distinct messages that reached their recipient.
    pub received: u64,
    /// Arrivals of a message already received.
    pub duplicates: u64,
    /// Sent and acked, but never received by the recipient.
    pub lost: u64,
    /// Sent, never acked and never received.
    pub unacked_and_not_received: u64,
    /// Arrivals at a client that was not the recipient.
    pub misdelivered: u64,
    /// Arrivals of messages this run has no record of.
    pub unknown: u64,
}

/// A message that never reached its recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The generator's id (`<run>-<sender>-<seq>`).
    pub id: String,
    /// The recipient's client index.
    pub to: u32,
    /// The first ack's status, if any ack came.
    pub ack: Option<AckStatus>,
}

/// End-to-end latency, sender's send to recipient's first receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Messages measured (first arrivals).
    pub count: u64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, in milliseconds.
    pub p90_ms: f64,
    /// 95th percentile, in milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Highest, in milliseconds.
    pub max_ms: f64,
    /// How latency is measured.
    pub clock: &'static str,
}

/// The ledger of one run.
#[derive(Debug)]
pub struct Ledger {
    records: HashMap<MsgId, Record>,
    counts: MessageCounts,
    /// Sent, not yet received, by recipient.
    pending_by_recipient: HashMap<u32, u64>,
    /// Handed to a sender, not yet written, by recipient.
    in_hand_by_recipient: HashMap<u32, u64>,
    /// Handed to a sender, not yet written: when each fell due.
    due_in_hand: HashMap<MsgId, Duration>,
    /// Senders first welcomed on a target Ready at the run's start.
    first_cohort: HashSet<u32>,
    pending: u64,
    latency_us: Histogram<u64>,
    /// From the schedule's due time to the first arrival, every message.
    from_due_us: Histogram<u64>,
    /// The same, for messages whose sender is in the first cohort.
    from_due_first_us: Histogram<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

/// Highest latency the histogram keeps apart (an hour, in microseconds);
/// longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 3_600_000_000;

impl Ledger {
    /// An empty ledger.
    #[must_use]
    pub fn new() -> Self {
        Self {
            records: HashMap::new(),
            counts: MessageCounts::default(),
            pending_by_recipient: HashMap::new(),
            in_hand_by_recipient: HashMap::new(),
            due_in_hand: HashMap::new(),
            first_cohort: HashSet::new(),
            pending: 0,
            latency_us: latency_histogram(),
            from_due_us: latency_histogram(),
            from_due_first_us: latency_histogram(),
        }
    }

    /// Message `id` to `recipient`, due at `due` by the schedule, was
    /// handed to its sender, which writes it when its connection lets it:
    /// until then it is on its way to `recipient` without a record
    /// ([`Self::pending_to`] counts it).
    pub fn handed_out(&mut self, id: MsgId, recipient: u32, due: Duration) {
        if self.due_in_hand.insert(id, due).is_none() {
            *self.in_hand_by_recipient.entry(recipient).or_default() += 1;
        }
    }

    /// `sender` was first welcomed on a target that was Ready when the run
    /// started: its messages count in [`Self::latency_from_schedule_first`].
    pub fn joined_first_cohort(&mut self, sender: u32) {
        self.first_cohort.insert(sender);
    }

    /// `id` was written to `recipient` at `at` (a resend when it had been
    /// written before, on an earlier connection). A message never handed
    /// out through [`Self::handed_out`] is taken as due when written.
    pub fn record_sent(&mut self, id: MsgId, recipient: u32, at: Duration) {
        match self.records.get(&id) {
            Some(_) => self.counts.resent += 1,
            None => {
                let due = match self.due_in_hand.remove(&id) {
                    Some(due) => {
                        if let Some(n) = self.in_hand_by_recipient.get_mut(&recipient) {
                            *n = n.saturating_sub(1);
                        }
                        due.min(at)
                    }
                    None => at,
                };
                self.records.insert(
                    id,
                    Record {
                        recipient,
                        due,
                        first_sent: at,
                        ack: None,
                        arrivals: 0,
                        latency_us: 0,
                    },
                );
                self.counts.sent += 1;
                self.pending += 1;
                *self.pending_by_recipient.entry(recipient).or_default() += 1;
            }
        }
    }

    /// An ack for `id` came with `status`.
    pub fn acked(&mut self, id: MsgId, status: AckStatus) {
        let Some(record) = self.records.get_mut(&id) else {
            return;
        };
        if record.ack.is_some() {
            self.counts.extra_acks += 1;
        } else {
            record.ack = Some(status);
            *self.counts.acked.entry(status).or_default() += 1;
        }
    }

    /// Client `by` received `id` at `at`.
    pub fn received(&mut self, id: MsgId, by: u32, at: Duration) {
        let Some(record) = self.records.get_mut(&id) else {
            self.counts.unknown += 1;
            return;
        };
        if record.recipient != by {
            self.counts.misdelivered += 1;
            return;
        }
        record.arrivals += 1;
        if record.arrivals > 1 {
            self.counts.duplicates += 1;
            return;
        }
        self.counts.received += 1;
        self.pending -= 1;
        if let Some(p) = self.pending_by_recipient.get_mut(&by) {
            *p -= 1;
        }
        let us = micros_between(record.first_sent, at);
        record.latency_us = us;
        let from_due = micros_between(record.due, at);
        // In bounds by the clamp.
        let _ = self.latency_us.record(us);
        let _ = self.from_due_us.record(from_due);
        if self.first_cohort.contains(&id.sender) {
            let _ = self.from_due_first_us.record(from_due);
        }
    }

    /// Distinct messages sent.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// Messages handed to a sender and not yet written.
    #[must_use]
    pub fn in_hand(&self) -> u64 {
        self.due_in_hand.len() as u64
    }

    /// Messages sent and not yet received.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Messages on their way to `recipient`: handed to a sender or sent,
    /// and not yet received by it.
    #[must_use]
    pub fn pending_to(&self, recipient: u32) -> u64 {
        let count = |map: &HashMap<u32, u64>| map.get(&recipient).copied().unwrap_or(0);
        count(&self.pending_by_recipient) + count(&self.in_hand_by_recipient)
    }

    /// The counts so far; `lost` and `unacked` as if the run ended now.
    #[must_use]
    pub fn counts(&self) -> MessageCounts {
        let mut counts = self.counts.clone();
        for record in self.records.values() {
            match (record.ack, record.arrivals) {
                (None, 0) => {
                    counts.unacked += 1;
                    counts.unacked_and_not_received += 1;
                }
                (None, _) => counts.unacked += 1,
                (Some(_), 0) => counts.lost += 1,
                (Some(_), _) => {}
            }
        }
        counts
    }

    /// Messages never received, ordered by id, rendered for run `run`.
    #[must_use]
    pub fn missing(&self, run: &str) -> Vec<Missing> {
        let mut missing: Vec<_> = self
            .records
            .iter()
            .filter(|(_, r)| r.arrivals == 0)
            .map(|(id, r)| (*id, r.recipient, r.ack))
            .collect();
        missing.sort_unstable_by_key(|m| m.0);
        missing
            .into_iter()
            .map(|(id, to, ack)| Missing {
                id: id.render(run),
                to,
                ack,
            })
            .collect()
    }

    /// Latency percentiles of first arrivals.
    #[must_use]
    pub fn latency(&self) -> Latency {
        Latency::of(&self.latency_us, SENT_CLOCK)
    }

    /// Latency percentiles of first arrivals from the time the schedule
    /// made each message due, so the time a message waited in its sender
    /// (a node too slow to read its socket, a client between a move's close
    /// and its reconnect) counts as well: what a user who pressed send at
    /// that moment sees, free of coordinated omission.
    #[must_use]
    pub fn latency_from_schedule(&self) -> Latency {
        Latency::of(&self.from_due_us, DUE_CLOCK)
    }

    /// [`Self::latency_from_schedule`] of the messages whose sender is in the
    /// first cohort (first welcomed on a target Ready at the run's start).
    #[must_use]
    pub fn latency_from_schedule_first(&self) -> Latency {
        Latency::of(&self.from_due_first_us, DUE_CLOCK)
    }

    /// Latency percentiles of first arrivals by the status of the message's
    /// first ack: `delivered` went from node to client on one node,
    /// `relayed` through the broker to another node, `buffered` through an
    /// offline buffer. A message received but never acked is in none.
    #[must_use]
    pub fn latency_by_ack(&self) -> BTreeMap<AckStatus, Latency> {
        let mut by_ack: BTreeMap<AckStatus, Histogram<u64>> = BTreeMap::new();
        for record in self.records.values() {
            let Some(ack) = record.ack else { continue };
            if record.arrivals == 0 {
                continue;
            }
            // Recorded in bounds by `received`.
            let _ = by_ack
                .entry(ack)
                .or_insert_with(latency_histogram)
                .record(record.latency_us);
        }
        by_ack
            .iter()
            .map(|(ack, h)| (*ack, Latency::of(h, SENT_CLOCK)))
            .collect()
    }
}

/// Three significant digits over 1 µs to an hour: fixed bounds, so
/// construction cannot fail.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .unwrap_or_else(|_| unreachable!("valid fixed histogram bounds"))
}

/// Microseconds from `from` to `to`, at least 1 and at most the histogram's
/// bound.
fn micros_between(from: Duration, to: Duration) -> u64 {
    u64::try_from(to.saturating_sub(from).as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_MAX_US)
}

const SENT_CLOCK: &str = "monotonic clock of the generator's one process: sender's first write to recipient's first read";
const DUE_CLOCK: &str = "monotonic clock of the generator's one process: the schedule's due time (hand-out to the sender) to recipient's first read";

impl Latency {
    fn of(h: &Histogram<u64>, clock: &'static str) -> Self {
        let ms = |us: u64| {
            if h.is_empty() {
                0.0
            } else {
                us as f64 / 1000.0
            }
        };
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            clock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(sender: u32, seq: u64) -> MsgId {
        MsgId { sender, seq }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_message_handed_to_a_sender_is_pending_before_it_is_written() {
        let mut ledger = Ledger::new();
        ledger.handed_out(id(1, 0), 7, ms(0));
        ledger.handed_out(id(1, 1), 7, ms(0));
        assert_eq!(
            ledger.pending_to(7),
            2,
            "in a sender's queue, not yet written"
        );
        assert_eq!(ledger.pending(), 0, "nothing written yet");
        assert_eq!(ledger.in_hand(), 2);
        ledger.record_sent(id(1, 0), 7, ms(1));
        assert_eq!(ledger.pending_to(7), 2, "one written, one in hand");
        assert_eq!(ledger.in_hand(), 1);
        ledger.record_sent(id(1, 0), 7, ms(2));
        assert_eq!(ledger.pending_to(7), 2, "a resend is not a second message");
        assert_eq!(ledger.in_hand(), 1, "a resend was not in hand");
        ledger.record_sent(id(1, 1), 7, ms(3));
        assert_eq!(ledger.in_hand(), 0);
        ledger.received(id(1, 0), 7, ms(4));
        assert_eq!(ledger.pending_to(7), 1);
        ledger.received(id(1, 1), 7, ms(5));
        assert_eq!(ledger.pending_to(7), 0);
        assert_eq!(ledger.pending_to(8), 0);
    }

    #[test]
    fn ids_round_trip_and_other_runs_are_ignored() {
        let a = id(3, 17);
        assert_eq!(MsgId::parse("r1", &a.render("r1")), Some(a));
        assert_eq!(MsgId::parse("r2", &a.render("r1")), None);
        assert_eq!(MsgId::parse("r1", "r1-x-1"), None);
        assert_eq!(MsgId::parse("r1", "r1-1"), None);
    }

    #[test]
    fn losses_duplicates_and_latency_are_counted() {
        let mut ledger = Ledger::new();
        ledger.record_sent(id(0, 0), 1, ms(10));
        ledger.record_sent(id(0, 1), 1, ms(20));
        ledger.record_sent(id(1, 0), 0, ms(30));
        ledger.record_sent(id(1, 0), 0, ms(40));
        ledger.acked(id(0, 0), AckStatus::Delivered);
        ledger.acked(id(0, 1), AckStatus::Relayed);
        ledger.acked(id(1, 0), AckStatus::Buffered);
        ledger.acked(id(1, 0), AckStatus::Delivered);
        ledger.received(id(0, 0), 1, ms(15));
        ledger.received(id(0, 0), 1, ms(16));
        ledger.received(id(1, 0), 1, ms(50));
        ledger.received(id(1, 0), 0, ms(50));
        ledger.received(id(9, 9), 0, ms(50));
        let counts = ledger.counts();
        assert_eq!(counts.sent, 3);
        assert_eq!(counts.resent, 1);
        assert_eq!(counts.acked.get(&AckStatus::Buffered), Some(&1));
        assert_eq!(counts.extra_acks, 1);
        assert_eq!(counts.received, 2);
        assert_eq!(counts.duplicates, 1);
        assert_eq!(counts.misdelivered, 1);
        assert_eq!(counts.unknown, 1);
        assert_eq!(counts.lost, 1);
        assert_eq!(ledger.pending(), 1);
        assert_eq!(ledger.pending_to(1), 1);
        assert_eq!(ledger.pending_to(0), 0);
        let missing = ledger.missing("r");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].id, "r-0-1");
        let latency = ledger.latency();
        assert_eq!(latency.count, 2);
        assert!((latency.max_ms - 20.0).abs() < 0.1, "{latency:?}");
    }

    #[test]
    fn latency_is_split_by_the_first_ack_whenever_it_came() {
        let mut ledger = Ledger::new();
        // Local: received before its ack, as a recipient on the sender's
        // node can be.
        ledger.record_sent(id(0, 0), 1, ms(0));
        ledger.received(id(0, 0), 1, ms(4));
        ledger.acked(id(0, 0), AckStatus::Delivered);
        ledger.record_sent(id(0, 1), 1, ms(10));
        ledger.acked(id(0, 1), AckStatus::Delivered);
        ledger.received(id(0, 1), 1, ms(16));
        // Through the broker, a later ack of another status is ignored.
        ledger.record_sent(id(1, 0), 0, ms(20));
        ledger.acked(id(1, 0), AckStatus::Relayed);
        ledger.acked(id(1, 0), AckStatus::Buffered);
        ledger.received(id(1, 0), 0, ms(120));
        // Received but never acked, and acked but never received: in none.
        ledger.record_sent(id(1, 1), 0, ms(30));
        ledger.received(id(1, 1), 0, ms(35));
        ledger.record_sent(id(1, 2), 0, ms(40));
        ledger.acked(id(1, 2), AckStatus::Relayed);

        let by_ack = ledger.latency_by_ack();
        assert_eq!(by_ack.len(), 2, "{by_ack:?}");
        let local = &by_ack[&AckStatus::Delivered];
        assert_eq!(local.count, 2);
        assert!((local.max_ms - 6.0).abs() < 0.1, "{local:?}");
        assert!((local.p50_ms - 4.0).abs() < 0.1, "{local:?}");
        let relayed = &by_ack[&AckStatus::Relayed];
        assert_eq!(relayed.count, 1);
        assert!((relayed.p95_ms - 100.0).abs() < 0.1, "{relayed:?}");
        assert_eq!(ledger.latency().count, 4);
    }

    #[test]
    fn latency_from_the_schedule_counts_the_wait_in_the_sender() {
        let mut ledger = Ledger::new();
        ledger.joined_first_cohort(0);
        // Due at 0, written at 50 (the sender's connection pushed back or
        // it was reconnecting), received at 60.
        ledger.handed_out(id(0, 0), 1, ms(0));
        ledger.record_sent(id(0, 0), 1, ms(50));
        ledger.received(id(0, 0), 1, ms(60));
        // Another sender, not of the first cohort: due at 100, written at
        // once, received at 104.
        ledger.handed_out(id(1, 0), 0, ms(100));
        ledger.record_sent(id(1, 0), 0, ms(100));
        ledger.received(id(1, 0), 0, ms(104));
        // A resend keeps the first due time.
        ledger.handed_out(id(0, 1), 1, ms(200));
        ledger.record_sent(id(0, 1), 1, ms(210));
        ledger.record_sent(id(0, 1), 1, ms(400));
        ledger.received(id(0, 1), 1, ms(420));

        let from_write = ledger.latency();
        assert_eq!(from_write.count, 3);
        assert!((from_write.p50_ms - 10.0).abs() < 0.1, "{from_write:?}");
        assert!((from_write.max_ms - 210.0).abs() < 0.2, "{from_write:?}");
        let from_due = ledger.latency_from_schedule();
        assert_eq!(from_due.count, 3);
        assert!((from_due.p50_ms - 60.0).abs() < 0.1, "{from_due:?}");
        assert!((from_due.max_ms - 220.0).abs() < 0.2, "{from_due:?}");
        let first = ledger.latency_from_schedule_first();
        assert_eq!(first.count, 2, "sender 1 is not of the first cohort");
        assert!((first.p50_ms - 60.0).abs() < 0.1, "{first:?}");
        assert_eq!(ledger.in_hand(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u32, u64, u32),
        Ack(u32, u64, u8),
        Receive(u32, u64, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, 0u64..6, 0u32..4).prop_map(|(s, q, r)| Op::Send(s, q, r)),
            (0u32..4, 0u64..6, 0u8..3).prop_map(|(s, q, a)| Op::Ack(s, q, a)),
            (0u32..4, 0u64..6, 0u32..4).prop_map(|(s, q, r)| Op::Receive(s, q, r)),
        ]
    }

    proptest! {
        #[test]
        fn every_sent_message_is_received_lost_or_unacked_exactly_once(
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut ledger = Ledger::new();
            let mut t = 0;
            let mut arrivals = 0u64;
            for op in ops {
                t += 1;
                match op {
                    Op::Send(s, q, r) => ledger.record_sent(id(s, q), r, ms(t)),
                    Op::Ack(s, q, a) => ledger.acked(
                        id(s, q),
                        [AckStatus::Delivered, AckStatus::Relayed, AckStatus::Buffered][usize::from(a)],
                    ),
                    Op::Receive(s, q, r) => {
                        arrivals += 1;
                        ledger.received(id(s, q), r, ms(t));
                    }
                }
            }
            let c = ledger.counts();
            prop_assert_eq!(c.received + c.lost + c.unacked_and_not_received, c.sent);
            prop_assert_eq!(c.received + c.duplicates + c.misdelivered + c.unknown, arrivals);
            prop_assert_eq!(c.acked.values().sum::<u64>() + c.unacked, c.sent);
            prop_assert_eq!(ledger.pending(), c.sent - c.received);
            prop_assert_eq!(ledger.missing("r").len() as u64, c.sent - c.received);
            prop_assert_eq!(ledger.latency().count, c.received);
            prop_assert_eq!(ledger.latency_from_schedule().count, c.received);
        }
    }
}
