//! The presence and inbox rules, as a pure model with time passed in.
//!
//! A client's **presence** names the node serving it, for a TTL renewed by
//! that node; its **inbox** keeps frames for it while nobody serves it, at
//! most [`BufferLimits::max`] (the oldest are dropped), for
//! [`BufferLimits::ttl`] after the last write. The rules:
//!
//! - **connect** claims the client for a node and takes its inbox, in one
//!   step: a frame is either in the inbox taken, or finds the new presence.
//! - **route** returns the node serving the client when that is another
//!   node, and otherwise buffers the frame, in one step.
//! - **refresh** renews a node's claim unless another node has taken the
//!   client over; **leave** releases it only if it is still that node's.
//!
//! The Redis store runs these rules as scripts; the in-memory double runs
//! this model, so both answer alike.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::routing::Lookup;

/// Offline-buffer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Frames kept per client (the oldest are dropped).
    pub max: usize,
    /// How long a buffer outlives its last write.
    pub ttl: Duration,
}

/// A TTL in ms as Redis takes it: at least 1.
pub fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    node: String,
    expires_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Inbox {
    frames: VecDeque<String>,
    expires_ms: u64,
}

/// Presence claims and inboxes. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceBook {
    claims: BTreeMap<String, Claim>,
    inboxes: BTreeMap<String, Inbox>,
}

impl PresenceBook {
    /// The node holding `client` at `now_ms`.
    pub fn holder(&self, now_ms: u64, client: &str) -> Option<&str> {
        self.claims
            .get(client)
            .filter(|c| c.expires_ms > now_ms)
            .map(|c| c.node.as_str())
    }

    /// The frames kept for `client` at `now_ms`.
    pub fn inbox(&self, now_ms: u64, client: &str) -> Vec<&str> {
        self.inboxes
            .get(client)
            .filter(|i| i.expires_ms > now_ms)
            .map(|i| i.frames.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// `node` claims `client` for `ttl` and takes its inbox.
    pub fn connect(&mut self, now_ms: u64, client: &str, node: &str, ttl: Duration) -> Vec<String> {
        self.claim(now_ms, client, node, ttl);
        self.inboxes
            .remove(client)
            .filter(|i| i.expires_ms > now_ms)
            .map(|i| i.frames.into())
            .unwrap_or_default()
    }

    /// The node serving `client` when it is not `this_node`; else `frame`
    /// is buffered.
    pub fn route(
        &mut self,
        now_ms: u64,
        client: &str,
        this_node: &str,
        frame: &str,
        limits: BufferLimits,
    ) -> Lookup {
        match self.holder(now_ms, client) {
            Some(node) if node != this_node => Lookup::Node(node.to_owned()),
            _ => {
                self.buffer(now_ms, client, frame, limits);
                Lookup::Buffered
            }
        }
    }

    /// Buffers `frame` for `client` whatever its presence says.
    pub fn buffer(&mut self, now_ms: u64, client: &str, frame: &str, limits: BufferLimits) {
        let inbox = self.inboxes.entry(client.to_owned()).or_default();
        if inbox.expires_ms <= now_ms {
            inbox.frames.clear();
        }
        inbox.frames.push_back(frame.to_owned());
        while limits.max > 0 && inbox.frames.len() > limits.max {
            inbox.frames.pop_front();
        }
        inbox.expires_ms = now_ms.saturating_add(ttl_ms(limits.ttl));
    }

    /// Renews `node`'s claim on `client` and takes the frames buffered for
    /// it meanwhile; `None` when another node holds it.
    pub fn refresh(
        &mut self,
        now_ms: u64,
        client: &str,
        node: &str,
        ttl: Duration,
    ) -> Option<Vec<String>> {
        match self.holder(now_ms, client) {
            Some(holder) if holder != node => None,
            _ => Some(self.connect(now_ms, client, node, ttl)),
        }
    }

    /// Releases `node`'s claim on `client`, if it is still `node`'s.
    pub fn leave(&mut self, now_ms: u64, client: &str, node: &str) {
        if self.holder(now_ms, client) == Some(node) {
            self.claims.remove(client);
        }
    }

    fn claim(&mut self, now_ms: u64, client: &str, node: &str, ttl: Duration) {
        self.claims.insert(
            client.to_owned(),
            Claim {
                node: node.to_owned(),
                expires_ms: now_ms.saturating_add(ttl_ms(ttl)),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(3);
    const LIMITS: BufferLimits = BufferLimits {
        max: 3,
        ttl: Duration::from_secs(10),
    };

    #[test]
    fn frames_for_an_offline_client_wait_in_order_and_are_taken_on_connect() {
        let mut book = PresenceBook::default();
        for f in ["1", "2"] {
            assert_eq!(book.route(0, "bob", "a", f, LIMITS), Lookup::Buffered);
        }
        assert_eq!(book.connect(5, "bob", "b", TTL), ["1", "2"]);
        assert!(book.inbox(5, "bob").is_empty());
        assert_eq!(
            book.route(6, "bob", "a", "3", LIMITS),
            Lookup::Node("b".into())
        );
        // Its own node buffers: the sender found no connection here.
        assert_eq!(book.route(6, "bob", "b", "4", LIMITS), Lookup::Buffered);
    }

    #[test]
    fn inboxes_keep_the_newest_and_expire() {
        let mut book = PresenceBook::default();
        for f in ["1", "2", "3", "4"] {
            book.buffer(0, "c", f, LIMITS);
        }
        assert_eq!(book.inbox(0, "c"), ["2", "3", "4"]);
        assert!(book.inbox(10_000, "c").is_empty());
        book.buffer(10_000, "c", "5", LIMITS);
        assert_eq!(book.inbox(10_000, "c"), ["5"]);
    }

    #[test]
    fn a_refresh_takes_what_was_buffered_while_the_claim_looked_absent() {
        let mut book = PresenceBook::default();
        assert!(book.connect(0, "e", "a", TTL).is_empty());
        // The claim lapses (a slow refresh); a frame for e meanwhile finds
        // no holder and is buffered.
        assert_eq!(book.route(6_000, "e", "b", "m1", LIMITS), Lookup::Buffered);
        // a's next refresh claims e again and takes m1 for the connection.
        assert_eq!(
            book.refresh(6_100, "e", "a", TTL),
            Some(vec!["m1".to_owned()])
        );
        assert!(book.inbox(6_100, "e").is_empty());
        assert_eq!(book.refresh(6_200, "e", "a", TTL), Some(Vec::new()));
        // Another node's refresh takes nothing.
        book.buffer(6_300, "e", "m2", LIMITS);
        assert_eq!(book.refresh(6_300, "e", "b", TTL), None);
        assert_eq!(book.inbox(6_300, "e"), ["m2"]);
    }

    #[test]
    fn claims_are_renewed_only_by_their_holder_and_expire() {
        let mut book = PresenceBook::default();
        book.connect(0, "d", "a", TTL);
        assert!(book.refresh(1, "d", "b", TTL).is_none());
        book.leave(1, "d", "b");
        assert_eq!(book.holder(1, "d"), Some("a"));
        assert!(book.refresh(2_000, "d", "a", TTL).is_some());
        assert_eq!(book.holder(4_999, "d"), Some("a"));
        assert_eq!(book.holder(5_000, "d"), None);
        assert!(book.refresh(5_000, "d", "b", TTL).is_some());
        book.leave(5_001, "d", "b");
        assert_eq!(book.holder(5_001, "d"), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Connect(u8, u8),
        Route(u8, u8),
        Buffer(u8),
        Refresh(u8, u8),
        Leave(u8, u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..3).prop_map(|(c, n)| Op::Connect(c, n)),
            (0u8..3, 0u8..3).prop_map(|(c, n)| Op::Route(c, n)),
            (0u8..3).prop_map(Op::Buffer),
            (0u8..3, 0u8..3).prop_map(|(c, n)| Op::Refresh(c, n)),
            (0u8..3, 0u8..3).prop_map(|(c, n)| Op::Leave(c, n)),
            (0u16..5_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Every frame routed is, at any later point, exactly one of: in
        /// its recipient's inbox, taken by a connect or a refresh, dropped as the oldest
        /// of a full inbox or expired, or answered with another node.
        #[test]
        fn no_frame_is_lost_between_routing_and_connecting(ops in proptest::collection::vec(op(), 1..80)) {
            let mut book = PresenceBook::default();
            let mut now = 0u64;
            let limits = BufferLimits { max: 1_000, ttl: Duration::from_secs(60) };
            let mut taken: Vec<String> = Vec::new();
            let mut buffered: Vec<String> = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let frame = format!("f{i}");
                match *op {
                    Op::Connect(c, n) => {
                        taken.extend(book.connect(now, &format!("c{c}"), &format!("n{n}"), TTL));
                        let holder = book.holder(now, &format!("c{c}")).map(str::to_owned);
                        prop_assert_eq!(holder, Some(format!("n{n}")));
                        let empty = book.inbox(now, &format!("c{c}")).is_empty();
                        prop_assert!(empty);
                    }
                    Op::Route(c, n) => {
                        let client = format!("c{c}");
                        let node = format!("n{n}");
                        let holder = book.holder(now, &client).map(str::to_owned);
                        match book.route(now, &client, &node, &frame, limits) {
                            Lookup::Node(other) => {
                                prop_assert_ne!(&other, &node);
                                prop_assert_eq!(Some(other), holder);
                            }
                            Lookup::Buffered => {
                                prop_assert!(holder.is_none() || holder == Some(node));
                                prop_assert!(book.inbox(now, &client).contains(&frame.as_str()));
                                buffered.push(frame);
                            }
                        }
                    }
                    Op::Buffer(c) => {
                        book.buffer(now, &format!("c{c}"), &frame, limits);
                        buffered.push(frame);
                    }
                    Op::Refresh(c, n) => {
                        let holder = book.holder(now, &format!("c{c}")).map(str::to_owned);
                        let ok = book.refresh(now, &format!("c{c}"), &format!("n{n}"), TTL);
                        prop_assert_eq!(ok.is_some(), holder.is_none() || holder == Some(format!("n{n}")));
                        taken.extend(ok.unwrap_or_default());
                    }
                    Op::Leave(c, n) => {
                        let holder = book.holder(now, &format!("c{c}")).map(str::to_owned);
                        book.leave(now, &format!("c{c}"), &format!("n{n}"));
                        if holder != Some(format!("n{n}")) {
                            prop_assert_eq!(book.holder(now, &format!("c{c}")).map(str::to_owned), holder);
                        }
                    }
                    Op::Tick(ms) => now += u64::from(ms),
                }
            }
            // Every buffered frame was taken or is still in an inbox (the
            // TTL of the test outlives it, and no inbox fills).
            let kept: Vec<String> = (0..3)
                .flat_map(|c| book.inbox(now, &format!("c{c}")).into_iter().map(str::to_owned).collect::<Vec<_>>())
                .collect();
            for f in &buffered {
                let expired = now >= 60_000;
                prop_assert!(expired || taken.contains(f) || kept.contains(f), "{f} lost");
            }
        }

        #[test]
        fn an_inbox_never_holds_more_than_its_limit(max in 1usize..5, n in 0usize..20) {
            let mut book = PresenceBook::default();
            let limits = BufferLimits { max, ttl: Duration::from_secs(1) };
            for i in 0..n {
                book.buffer(0, "x", &i.to_string(), limits);
            }
            let kept = book.inbox(0, "x");
            prop_assert_eq!(kept.len(), n.min(max));
            let newest: Vec<String> = (n.saturating_sub(max)..n).map(|i| i.to_string()).collect();
            prop_assert_eq!(kept, newest.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
