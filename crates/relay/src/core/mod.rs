//! The sans-I/O core of the relay: deterministic, no sockets, no clock (time
//! is passed in), nothing async.
//!
//! - [`protocol`]: the wire protocol (frames, close codes, ack statuses).
//! - [`routing`]: where a frame goes, as a state machine.
//! - [`presence`]: the presence and inbox rules.
//! - [`cursor`]: a delivery-topic reader's position and commits.
//! - [`limit`]: the per-connection flood guard.
//! - [`forwarding`]: which topics of gone nodes to forward, and when to
//!   retire them.
//! - [`routes`]: the recipients' nodes a sender remembers for a while.

pub mod cursor;
pub mod forwarding;
pub mod limit;
pub mod presence;
pub mod protocol;
pub mod routes;
pub mod routing;

/// A message id, unique across nodes and restarts: `<node>/<boot>/<seq>`.
pub fn message_id(node: &str, boot: &str, seq: u64) -> String {
    format!("{node}/{boot}/{seq}")
}

/// The consumer group whose committed offset holds `node`'s position in its
/// delivery topic.
pub fn group_of(node: &str) -> String {
    format!("rtc-node-{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_named_after_the_node() {
        assert_eq!(group_of("socket-3"), "rtc-node-socket-3");
    }

    #[test]
    fn ids_name_the_node_and_its_boot() {
        assert_eq!(message_id("n", "b", 7), "n/b/7");
    }
}
