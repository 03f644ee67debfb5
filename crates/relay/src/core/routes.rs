//! What the sending node remembers of where its recipients are: the node
//! the presence store last named for each recipient, for a short while.
//!
//! A message for a client on another node costs a lookup in the store
//! (one script in Redis) before its produce. A sender usually writes to the
//! same recipients again and again, and a recipient's node changes only
//! when it reconnects, so [`RouteCache`] keeps each answer for `ttl` and a
//! message within that time goes straight to the node's topic.
//!
//! A stale entry costs a hop, never a message: the node it names finds the
//! recipient absent, and hands the record on through the store like any
//! record that arrived just after its recipient moved. Two bounds keep that
//! true:
//!
//! - an entry names a node whose presence the store held at most `ttl`
//!   ago, and a node's topic is read (by the node, or by a forwarder once
//!   it is gone) until FORWARD_RETIRE_AFTER after its presences lapse; so
//!   `ttl` must be shorter than FORWARD_RETIRE_AFTER minus PRESENCE_TTL
//!   (the socket node's settings check it);
//! - at most `max_entries` recipients are remembered; a full cache first
//!   drops what has expired, and when nothing has, starts over empty.
//!
//! No clock here: times are ms on the caller's monotonic clock.

use std::collections::HashMap;
use std::sync::Arc;

/// The default lifetime of an entry.
pub const DEFAULT_TTL_MS: u64 = 1_000;
/// The default bound on remembered recipients.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Clone)]
struct Entry {
    node: Arc<str>,
    expires_ms: u64,
}

/// Recipients' nodes as the store last named them. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct RouteCache {
    ttl_ms: u64,
    max_entries: usize,
    entries: HashMap<Box<str>, Entry>,
    /// The node names entries share (a fleet has few nodes).
    nodes: Vec<Arc<str>>,
}

/// Node names kept for sharing; more start the list over.
const MAX_NODES: usize = 64;

impl RouteCache {
    /// A cache keeping each answer `ttl_ms`, for at most `max_entries`
    /// recipients. A `ttl_ms` or `max_entries` of 0 switches it off: every
    /// message asks the store.
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        Self {
            ttl_ms,
            max_entries,
            entries: HashMap::new(),
            nodes: Vec::new(),
        }
    }

    /// Whether the cache remembers anything at all.
    pub fn is_enabled(&self) -> bool {
        self.ttl_ms > 0 && self.max_entries > 0
    }

    /// The node last named for `client`, if that was less than the ttl
    /// before `now_ms`.
    pub fn get(&self, now_ms: u64, client: &str) -> Option<Arc<str>> {
        self.entries
            .get(client)
            .filter(|e| now_ms < e.expires_ms)
            .map(|e| Arc::clone(&e.node))
    }

    /// Remembers that the store named `node` for `client` at `now_ms`.
    pub fn put(&mut self, now_ms: u64, client: &str, node: &str) {
        if !self.is_enabled() {
            return;
        }
        if !self.entries.contains_key(client) && self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| now_ms < e.expires_ms);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        let node = self.shared(node);
        self.entries.insert(
            client.into(),
            Entry {
                node,
                expires_ms: now_ms.saturating_add(self.ttl_ms),
            },
        );
    }

    /// Forgets `client`: it connected here, or its node could not be
    /// reached, or the store no longer names a node for it.
    pub fn forget(&mut self, client: &str) {
        self.entries.remove(client);
    }

    /// Recipients remembered now, expired or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One allocation per node name, not per recipient.
    fn shared(&mut self, node: &str) -> Arc<str> {
        if let Some(known) = self.nodes.iter().find(|n| ***n == *node) {
            return Arc::clone(known);
        }
        if self.nodes.len() >= MAX_NODES {
            self.nodes.clear();
        }
        let name: Arc<str> = Arc::from(node);
        self.nodes.push(Arc::clone(&name));
        name
    }
}

impl Default for RouteCache {
    fn default() -> Self {
        Self::new(DEFAULT_TTL_MS, DEFAULT_MAX_ENTRIES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_answer_is_kept_for_its_ttl_and_not_a_moment_longer() {
        let mut c = RouteCache::new(1_000, 10);
        c.put(5_000, "alice", "node-b");
        assert_eq!(c.get(5_000, "alice").as_deref(), Some("node-b"));
        assert_eq!(c.get(5_999, "alice").as_deref(), Some("node-b"));
        assert_eq!(c.get(6_000, "alice"), None);
        assert_eq!(c.get(5_500, "bob"), None);
    }

    #[test]
    fn a_new_answer_replaces_the_old_one_and_restarts_its_ttl() {
        let mut c = RouteCache::new(1_000, 10);
        c.put(0, "alice", "node-b");
        c.put(900, "alice", "node-c");
        assert_eq!(c.get(1_500, "alice").as_deref(), Some("node-c"));
    }

    #[test]
    fn a_forgotten_recipient_asks_the_store_again() {
        let mut c = RouteCache::new(1_000, 10);
        c.put(0, "alice", "node-b");
        c.forget("alice");
        assert_eq!(c.get(1, "alice"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn switched_off_it_remembers_nothing() {
        for mut c in [RouteCache::new(0, 10), RouteCache::new(1_000, 0)] {
            assert!(!c.is_enabled());
            c.put(0, "alice", "node-b");
            assert_eq!(c.get(0, "alice"), None);
            assert!(c.is_empty());
        }
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let mut c = RouteCache::new(100, 2);
        c.put(0, "old", "node-b");
        c.put(150, "fresh", "node-b");
        c.put(160, "new", "node-c");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(160, "fresh").as_deref(), Some("node-b"));
        assert_eq!(c.get(160, "new").as_deref(), Some("node-c"));
    }

    #[test]
    fn a_full_cache_of_live_entries_starts_over() {
        let mut c = RouteCache::new(1_000, 2);
        c.put(0, "a", "node-b");
        c.put(0, "b", "node-b");
        c.put(1, "c", "node-c");
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1, "c").as_deref(), Some("node-c"));
        // Refreshing a remembered recipient never evicts.
        c.put(2, "d", "node-c");
        c.put(3, "d", "node-d");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn recipients_on_one_node_share_its_name() {
        let mut c = RouteCache::new(1_000, 10);
        c.put(0, "a", "node-b");
        c.put(0, "b", "node-b");
        let (a, b) = (c.get(0, "a"), c.get(0, "b"));
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Forget(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0u8..4).prop_map(|(c, n)| Op::Put(c, n)),
            (0u8..12).prop_map(Op::Forget),
            (0u16..400).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Against a model that keeps every answer: the cache never names a
        /// node the store did not name last for that recipient, never one
        /// older than the ttl, and never holds more than its bound.
        #[test]
        fn never_stale_past_its_ttl_never_over_its_bound(
            ops in proptest::collection::vec(op(), 1..200),
            ttl in 1u64..500,
            max in 1usize..8,
        ) {
            let mut c = RouteCache::new(ttl, max);
            let mut last: HashMap<String, (String, u64)> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Put(client, node) => {
                        let (client, node) = (format!("c{client}"), format!("n{node}"));
                        c.put(now, &client, &node);
                        last.insert(client, (node, now));
                    }
                    Op::Forget(client) => {
                        let client = format!("c{client}");
                        c.forget(&client);
                        last.remove(&client);
                    }
                    Op::Tick(ms) => now += u64::from(ms),
                }
                prop_assert!(c.len() <= max);
                for client in (0..12).map(|i| format!("c{i}")) {
                    if let Some(node) = c.get(now, &client) {
                        let (named, at) = last.get(&client).expect("cached without an answer");
                        prop_assert_eq!(&*node, named.as_str());
                        prop_assert!(now < at + ttl);
                    }
                }
            }
        }
    }
}
