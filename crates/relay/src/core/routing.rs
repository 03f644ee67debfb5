//! Where one message frame goes: the recipient's connection on this node,
//! the delivery topic of the node its presence names, or its offline
//! buffer.
//!
//! [`Routing`] is a state machine: it says the next [`Step`], the caller
//! does it (offers the frame to a local queue, asks the presence store,
//! publishes) and answers with an [`Event`]. No I/O, no clock: the waits
//! between retries are returned as durations for the caller to sleep.
//!
//! The rules, by [`Origin`]:
//!
//! | origin | no local connection | presence naming | store fails |
//! |---|---|---|---|
//! | [`Origin::Client`] | the store | its node | the sender gets an error |
//! | [`Origin::Topic`] | counted as handed off, the store | its node | retried, never skipped |
//! | [`Origin::Forward`] | the store | its node, unless it is the dead node: buffered | retried, never skipped |
//! | [`Origin::HandOff`] | counted as handed off, the store | its node | the frame is lost (and counted) |
//!
//! Every origin offers the frame to the recipient's connection on this node
//! first: for a hand-off that is a newer connection of the same client (a
//! reconnect to this node), never the one that closed, which has left the
//! table by then. A full local queue means a reader too slow to keep up,
//! whatever the origin: it is kicked, so it reconnects and takes its
//! buffer, and the frame goes through the store.
//!
//! A frame whose node's topic cannot be published to is buffered; the
//! store's lookup is atomic with buffering, so a frame either finds the
//! recipient's presence or lands in its buffer. A frame that ends buffered
//! while its recipient has a connection here (the presence names this node)
//! is for the caller to hand to that connection; see `Relay`.

use std::time::Duration;

use rtc_time::Backoff;

use super::protocol::Status;

/// First wait after a store failure, for origins that retry.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(2);
/// The waits between retries: [`FIRST_RETRY`], doubling, at most
/// [`MAX_RETRY`].
pub const RETRY: Backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);

/// Where a frame comes from; it decides the rules the frame is routed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Sent by a client connected here.
    Client,
    /// Read from this node's delivery topic.
    Topic,
    /// Read from the delivery topic of `dead`, a node that is gone.
    Forward {
        /// The node that is gone: a presence naming it counts as none.
        dead: String,
    },
    /// Queued for a connection that closed before it was written.
    HandOff,
}

/// What offering the frame to the recipient's local connection gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the connection.
    Accepted,
    /// The connection's queue is full.
    Full,
    /// The recipient has no open connection here.
    Absent,
}

/// What the presence store answered for a recipient: its node, or the
/// frame was buffered, in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The recipient is connected to this other node.
    Node(String),
    /// Nobody else serves the recipient: the frame was buffered.
    Buffered,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Offer the frame to the recipient's local connection; answer
    /// [`Event::Offered`].
    Offer,
    /// Close the recipient's local connection as too slow; answer
    /// [`Event::Kicked`].
    KickSlow,
    /// Count the frame as handed on from this node; answer
    /// [`Event::Counted`].
    CountHandOff,
    /// Ask the presence store for the recipient's node, buffering the frame
    /// when there is none; answer [`Event::Looked`] or
    /// [`Event::StoreFailed`].
    Lookup,
    /// Publish the frame to this node's delivery topic; answer
    /// [`Event::Published`] or [`Event::PublishFailed`].
    Publish(String),
    /// Buffer the frame whatever the recipient's presence says; answer
    /// [`Event::Buffered`] or [`Event::StoreFailed`].
    Buffer,
    /// The store failed: wait this long, then answer [`Event::Waited`].
    Wait(Duration),
    /// Finished: the ack status.
    Done(Status),
    /// The store failed and this origin does not retry.
    Failed,
}

/// The caller's answer to a [`Step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer to [`Step::Offer`].
    Offered(Offer),
    /// The answer to [`Step::KickSlow`].
    Kicked,
    /// The answer to [`Step::CountHandOff`].
    Counted,
    /// The answer to [`Step::Lookup`].
    Looked(Lookup),
    /// [`Step::Publish`] succeeded.
    Published,
    /// [`Step::Publish`] failed.
    PublishFailed,
    /// [`Step::Buffer`] succeeded.
    Buffered,
    /// [`Step::Lookup`] or [`Step::Buffer`] failed.
    StoreFailed,
    /// The answer to [`Step::Wait`].
    Waited,
}

/// The routing of one frame. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    origin: Origin,
    /// Store failures so far, for the next wait of [`RETRY`].
    failures: u32,
    step: Step,
}

impl Routing {
    /// Starts routing a frame from `origin`; [`Routing::step`] is the first
    /// thing to do.
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            failures: 0,
            step: Step::Offer,
        }
    }

    /// Where the frame comes from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The step to do now.
    pub fn step(&self) -> &Step {
        &self.step
    }

    /// Whether routing has finished ([`Step::Done`] or [`Step::Failed`]).
    pub fn is_finished(&self) -> bool {
        matches!(self.step, Step::Done(_) | Step::Failed)
    }

    /// Takes the answer to the current step and returns the next one. An
    /// event that does not answer the current step is ignored: the same
    /// step is returned again.
    pub fn on(&mut self, event: Event) -> &Step {
        if let Some(next) = self.next(event) {
            self.step = next;
        }
        &self.step
    }

    fn next(&mut self, event: Event) -> Option<Step> {
        let next = match (&self.step, event) {
            (Step::Offer, Event::Offered(Offer::Accepted)) => Step::Done(Status::Delivered),
            (Step::Offer, Event::Offered(Offer::Full)) => Step::KickSlow,
            (Step::Offer, Event::Offered(_)) => match self.origin {
                Origin::Topic | Origin::HandOff => Step::CountHandOff,
                Origin::Client | Origin::Forward { .. } => Step::Lookup,
            },
            (Step::KickSlow, Event::Kicked) | (Step::CountHandOff, Event::Counted) => Step::Lookup,
            (Step::Lookup, Event::Looked(Lookup::Buffered)) | (Step::Buffer, Event::Buffered) => {
                Step::Done(Status::Buffered)
            }
            (Step::Lookup, Event::Looked(Lookup::Node(node))) => match &self.origin {
                Origin::Forward { dead } if *dead == node => Step::Buffer,
                _ => Step::Publish(node),
            },
            (Step::Publish(_), Event::Published) => Step::Done(Status::Relayed),
            (Step::Publish(_), Event::PublishFailed) => Step::Buffer,
            (Step::Lookup | Step::Buffer, Event::StoreFailed) => self.after_store_failure(),
            (Step::Wait(_), Event::Waited) => Step::Lookup,
            _ => return None,
        };
        Some(next)
    }

    fn after_store_failure(&mut self) -> Step {
        match self.origin {
            // A record of a delivery topic is never skipped: the position
            // must not pass a message that is neither delivered nor stored.
            Origin::Topic | Origin::Forward { .. } => {
                self.failures = self.failures.saturating_add(1);
                Step::Wait(RETRY.delay(self.failures))
            }
            Origin::Client | Origin::HandOff => Step::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(origin: Origin, answers: &[Event]) -> (Vec<Step>, Routing) {
        let mut r = Routing::new(origin);
        let mut steps = vec![r.step().clone()];
        for a in answers {
            steps.push(r.on(a.clone()).clone());
        }
        (steps, r)
    }

    #[test]
    fn a_local_recipient_gets_the_frame_directly() {
        let (steps, r) = run(Origin::Client, &[Event::Offered(Offer::Accepted)]);
        assert_eq!(steps, [Step::Offer, Step::Done(Status::Delivered)]);
        assert!(r.is_finished());
    }

    #[test]
    fn a_slow_reader_is_kicked_and_the_frame_goes_through_the_store() {
        let (steps, _) = run(
            Origin::Client,
            &[
                Event::Offered(Offer::Full),
                Event::Kicked,
                Event::Looked(Lookup::Node("b".into())),
                Event::Published,
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Offer,
                Step::KickSlow,
                Step::Lookup,
                Step::Publish("b".into()),
                Step::Done(Status::Relayed)
            ]
        );
    }

    #[test]
    fn an_unreachable_topic_means_the_buffer() {
        let (steps, _) = run(
            Origin::Client,
            &[
                Event::Offered(Offer::Absent),
                Event::Looked(Lookup::Node("b".into())),
                Event::PublishFailed,
                Event::Buffered,
            ],
        );
        assert_eq!(steps.last(), Some(&Step::Done(Status::Buffered)));
        assert!(steps.contains(&Step::Buffer));
    }

    #[test]
    fn a_client_frame_fails_when_the_store_does() {
        let (steps, r) = run(
            Origin::Client,
            &[Event::Offered(Offer::Absent), Event::StoreFailed],
        );
        assert_eq!(steps.last(), Some(&Step::Failed));
        assert!(r.is_finished());
    }

    #[test]
    fn topic_records_are_retried_with_a_growing_wait() {
        let mut answers = vec![Event::Offered(Offer::Absent), Event::Counted];
        for _ in 0..7 {
            answers.extend([Event::StoreFailed, Event::Waited]);
        }
        answers.push(Event::Looked(Lookup::Buffered));
        let (steps, _) = run(Origin::Topic, &answers);
        let waits: Vec<u64> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Wait(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                _ => None,
            })
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(steps.last(), Some(&Step::Done(Status::Buffered)));
    }

    #[test]
    fn a_forwarded_frame_never_goes_back_to_the_dead_node() {
        let dead = Origin::Forward { dead: "a".into() };
        let (steps, _) = run(
            dead,
            &[
                Event::Offered(Offer::Full),
                Event::Kicked,
                Event::Looked(Lookup::Node("a".into())),
                Event::Buffered,
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Offer,
                Step::KickSlow,
                Step::Lookup,
                Step::Buffer,
                Step::Done(Status::Buffered)
            ]
        );
    }

    #[test]
    fn a_topic_record_for_a_slow_reader_kicks_it_and_is_not_counted_as_a_hand_off() {
        let (steps, _) = run(
            Origin::Topic,
            &[
                Event::Offered(Offer::Full),
                Event::Kicked,
                Event::Looked(Lookup::Buffered),
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Offer,
                Step::KickSlow,
                Step::Lookup,
                Step::Done(Status::Buffered)
            ]
        );
    }

    #[test]
    fn a_hand_off_goes_to_a_newer_connection_here_first() {
        let (steps, _) = run(Origin::HandOff, &[Event::Offered(Offer::Accepted)]);
        assert_eq!(steps, [Step::Offer, Step::Done(Status::Delivered)]);
        let (steps, _) = run(
            Origin::HandOff,
            &[
                Event::Offered(Offer::Absent),
                Event::Counted,
                Event::Looked(Lookup::Buffered),
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Offer,
                Step::CountHandOff,
                Step::Lookup,
                Step::Done(Status::Buffered)
            ]
        );
    }

    #[test]
    fn answers_to_another_step_are_ignored() {
        let (steps, _) = run(Origin::Client, &[Event::Published, Event::Waited]);
        assert_eq!(steps, [Step::Offer, Step::Offer, Step::Offer]);
    }

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![
            Just(Origin::Client),
            Just(Origin::Topic),
            Just(Origin::HandOff),
            "[ab]".prop_map(|dead| Origin::Forward { dead }),
        ]
    }

    /// A caller that answers every step truthfully, picking outcomes from
    /// `choices`; store failures stop after `failures` of them.
    fn answer(step: &Step, choice: u8, failures: &mut u32) -> Event {
        let mut fail = || {
            if *failures > 0 && choice.is_multiple_of(2) {
                *failures -= 1;
                true
            } else {
                false
            }
        };
        match step {
            Step::Offer => Event::Offered(match choice % 3 {
                0 => Offer::Accepted,
                1 => Offer::Full,
                _ => Offer::Absent,
            }),
            Step::KickSlow => Event::Kicked,
            Step::CountHandOff => Event::Counted,
            Step::Lookup if fail() => Event::StoreFailed,
            Step::Lookup => Event::Looked(match choice % 3 {
                0 => Lookup::Buffered,
                1 => Lookup::Node("a".into()),
                _ => Lookup::Node("b".into()),
            }),
            Step::Publish(_) if choice.is_multiple_of(5) => Event::PublishFailed,
            Step::Publish(_) => Event::Published,
            Step::Buffer if fail() => Event::StoreFailed,
            Step::Buffer => Event::Buffered,
            Step::Wait(_) => Event::Waited,
            Step::Done(_) | Step::Failed => Event::Waited,
        }
    }

    proptest! {
        #[test]
        fn every_frame_ends_delivered_relayed_buffered_or_reported(
            origin in origin(),
            choices in proptest::collection::vec(any::<u8>(), 64),
            failures in 0u32..6,
        ) {
            let mut left = failures;
            let mut r = Routing::new(origin.clone());
            let mut history = vec![r.step().clone()];
            let mut last_wait = Duration::ZERO;
            let mut counted = 0;
            for choice in &choices {
                if r.is_finished() {
                    break;
                }
                let step = r.step().clone();
                let event = answer(&step, *choice, &mut left);
                match (&step, &event) {
                    (Step::Wait(d), _) => {
                        prop_assert!(*d >= FIRST_RETRY && *d <= MAX_RETRY);
                        prop_assert!(*d >= last_wait);
                        last_wait = *d;
                    }
                    (Step::CountHandOff, _) => counted += 1,
                    _ => {}
                }
                let next = r.on(event.clone()).clone();
                match &next {
                    Step::Done(Status::Delivered) => {
                        prop_assert_eq!(&event, &Event::Offered(Offer::Accepted));
                    }
                    Step::Done(Status::Relayed) => prop_assert_eq!(&event, &Event::Published),
                    Step::Done(Status::Buffered) => prop_assert!(
                        event == Event::Buffered || event == Event::Looked(Lookup::Buffered)
                    ),
                    Step::Publish(node) => {
                        if let Origin::Forward { dead } = &origin {
                            prop_assert_ne!(node, dead);
                        }
                    }
                    Step::KickSlow => {
                        prop_assert_eq!(&event, &Event::Offered(Offer::Full));
                    }
                    Step::Offer => prop_assert!(false, "offered twice: {history:?}"),
                    Step::Failed => {
                        let reports = matches!(origin, Origin::Client | Origin::HandOff);
                        prop_assert!(reports);
                    }
                    Step::Wait(_) => {
                        let retries = matches!(origin, Origin::Topic | Origin::Forward { .. });
                        prop_assert!(retries);
                    }
                    _ => {}
                }
                history.push(next);
            }
            // A route takes at most six steps; a store failure costs at most
            // four more (wait, look up, publish, buffer).
            let kicked = history.contains(&Step::KickSlow);
            prop_assert!(r.is_finished(), "{history:?}");
            prop_assert!(history.len() <= 6 + 4 * failures as usize, "{history:?}");
            prop_assert!(counted <= 1);
            prop_assert_eq!(counted == 1, match origin {
                Origin::HandOff | Origin::Topic => {
                    !kicked && !history.contains(&Step::Done(Status::Delivered))
                }
                _ => false,
            });
        }
    }
}
