//! Which delivery topics of other nodes this node forwards, and when a gone
//! node leaves the registry. Pure; see the forwarder in [`crate::forward`].

use std::time::Duration;

/// Whether `node` (registered, with `live` telling whether its heartbeat
/// entry exists) is a candidate for forwarding by `this_node`.
pub fn gone(node: &str, this_node: &str, live: bool) -> bool {
    node != this_node && !live
}

/// Whether a node first found gone at `since_ms`, whose topic has been read
/// to the end, leaves the registry at `now_ms` (wall clock, ms): only after
/// `retire_after`, longer than a presence lives, so no presence can still
/// send messages to its topic.
pub fn retire_due(since_ms: u64, now_ms: u64, retire_after: Duration) -> bool {
    u128::from(now_ms.saturating_sub(since_ms)) >= retire_after.as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_silent_nodes_are_forwarded() {
        assert!(gone("a", "b", false));
        assert!(!gone("a", "b", true));
        assert!(!gone("b", "b", false));
    }

    #[test]
    fn retiring_waits_for_the_full_time() {
        let after = Duration::from_secs(10);
        assert!(!retire_due(1_000, 10_999, after));
        assert!(retire_due(1_000, 11_000, after));
        // A clock that went back is not "gone for long".
        assert!(!retire_due(5_000, 1_000, after));
    }
}
