//! Where new connections go. Targets are socket pods' addresses; only
//! loopback addresses are accepted (127.0.0.0/8 and ::1), since the
//! generator is a test tool for servers on this machine. New connections are
//! spread over the Ready targets the way a Service spreads them: round-robin,
//! or to the target with the fewest open connections. A target that leaves
//! the Ready set gets no new connections, and one that just refused or
//! drained a connection gets none while it cools down, unless every target
//! does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

/// The rule every target must meet, quoted in refusals.
pub const LOOPBACK_RULE: &str =
    "only loopback addresses (127.0.0.0/8 or ::1) may be targets of the load generator";

/// A target that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not of the form `ws://<ip>:<port>` (or `<ip>:<port>`).
    #[error("bad target {text:?}: expected ws://<ip>:<port>, e.g. ws://127.10.0.2:8000")]
    Malformed {
        /// The target as given.
        text: String,
    },
    /// An address off this machine.
    #[error("target {address} refused: {LOOPBACK_RULE}")]
    NotLoopback {
        /// The refused address.
        address: String,
    },
}

impl TargetError {
    /// A short, bounded label for metrics and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::NotLoopback { .. } => "not_loopback",
        }
    }
}

/// Refuses any address that is not loopback.
///
/// # Errors
///
/// [`TargetError::NotLoopback`] naming the address.
pub fn check_loopback(address: SocketAddr) -> Result<SocketAddr, TargetError> {
    if address.ip().is_loopback() {
        Ok(address)
    } else {
        Err(TargetError::NotLoopback {
            address: address.to_string(),
        })
    }
}

/// Reads a `--target`: `ws://<ip>:<port>`, optionally with a trailing `/` or
/// `/ws`, or a bare `<ip>:<port>`; the address must be loopback.
///
/// # Errors
///
/// [`TargetError::Malformed`] for anything else (host names included: give
/// an address), [`TargetError::NotLoopback`] for an address off this machine.
pub fn parse_target(text: &str) -> Result<SocketAddr, TargetError> {
    let malformed = || TargetError::Malformed {
        text: text.to_owned(),
    };
    let rest = text.strip_prefix("ws://").unwrap_or(text);
    let rest = rest
        .strip_suffix("/ws")
        .or_else(|| rest.strip_suffix('/'))
        .unwrap_or(rest);
    let address: SocketAddr = rest.parse().map_err(|_| {
        // A bare IP without a port still gets the loopback verdict first.
        match rest.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) if !ip.is_loopback() => TargetError::NotLoopback {
                address: ip.to_string(),
            },
            _ => malformed(),
        }
    })?;
    check_loopback(address)
}

/// How new connections are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each new connection to the next Ready target in turn.
    RoundRobin,
    /// Each new connection to the Ready target with the fewest open ones
    /// (ties in turn).
    #[default]
    LeastConnections,
}

/// The Ready targets and the connections open on each.
#[derive(Debug, Clone)]
pub struct Balancer {
    strategy: Strategy,
    ready: Vec<SocketAddr>,
    open: BTreeMap<SocketAddr, u64>,
    opened: BTreeMap<SocketAddr, u64>,
    /// Targets to avoid until the given elapsed time.
    cooling: BTreeMap<SocketAddr, Duration>,
    cursor: usize,
}

impl Balancer {
    /// A balancer with no Ready targets yet.
    #[must_use]
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            ready: Vec::new(),
            open: BTreeMap::new(),
            opened: BTreeMap::new(),
            cooling: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Replaces the Ready set (order does not matter; duplicates are
    /// dropped). Connections already open stay counted where they are.
    pub fn set_ready(&mut self, mut ready: Vec<SocketAddr>) {
        ready.sort_unstable();
        ready.dedup();
        self.ready = ready;
    }

    /// The Ready targets, sorted.
    #[must_use]
    pub fn ready(&self) -> &[SocketAddr] {
        &self.ready
    }

    /// Avoids `target` for new connections until `until` (elapsed time),
    /// e.g. after it answered 503 or drained.
    pub fn cool_down(&mut self, target: SocketAddr, until: Duration) {
        let entry = self.cooling.entry(target).or_default();
        *entry = (*entry).max(until);
    }

    fn cooling_at(&self, target: SocketAddr, now: Duration) -> bool {
        self.cooling.get(&target).is_some_and(|until| now < *until)
    }

    /// Chooses the target of a new connection at `now` and counts it open
    /// there; `None` when no target is Ready. Targets cooling down are
    /// passed over while another is Ready.
    pub fn pick(&mut self, now: Duration) -> Option<SocketAddr> {
        if self.ready.is_empty() {
            return None;
        }
        self.cooling.retain(|_, until| now < *until);
        let n = self.ready.len();
        let start = self.cursor % n;
        let all_cooling = self.ready.iter().all(|t| self.cooling_at(*t, now));
        let usable = |i: usize| all_cooling || !self.cooling_at(self.ready[i], now);
        let mut turn = (0..n).map(|k| (start + k) % n).filter(|&i| usable(i));
        let index = match self.strategy {
            Strategy::RoundRobin => turn.next().unwrap_or(start),
            Strategy::LeastConnections => turn
                .min_by_key(|&i| (self.open_on(self.ready[i]), (i + n - start) % n))
                .unwrap_or(start),
        };
        self.cursor = index + 1;
        let target = self.ready[index];
        *self.open.entry(target).or_default() += 1;
        *self.opened.entry(target).or_default() += 1;
        Some(target)
    }

    /// A connection to `target` closed (or never opened).
    pub fn release(&mut self, target: SocketAddr) {
        if let Some(open) = self.open.get_mut(&target) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.open.remove(&target);
            }
        }
    }

    /// Connections open (or being opened) on `target`.
    #[must_use]
    pub fn open_on(&self, target: SocketAddr) -> u64 {
        self.open.get(&target).copied().unwrap_or(0)
    }

    /// Open connections by target, Ready or not.
    #[must_use]
    pub fn open(&self) -> &BTreeMap<SocketAddr, u64> {
        &self.open
    }

    /// Connections ever handed to each target.
    #[must_use]
    pub fn opened(&self) -> &BTreeMap<SocketAddr, u64> {
        &self.opened
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy as Spread;
    use super::{Balancer, parse_target};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 10, 0, last], 8000))
    }

    #[test]
    fn loopback_targets_are_read_in_every_spelling() {
        for text in [
            "ws://127.10.0.2:8000",
            "ws://127.10.0.2:8000/",
            "ws://127.10.0.2:8000/ws",
            "127.10.0.2:8000",
        ] {
            assert_eq!(parse_target(text), Ok(addr(2)), "{text}");
        }
        assert!(parse_target("ws://[::1]:8000").is_ok());
    }

    #[test]
    fn anything_off_this_machine_is_refused_naming_address_and_rule() {
        for (text, ip) in [
            ("ws://10.0.0.5:8000", "10.0.0.5"),
            ("ws://192.168.1.1:8000", "192.168.1.1"),
            ("8.8.8.8:80", "8.8.8.8"),
            ("ws://[2001:db8::1]:8000", "2001:db8::1"),
            ("10.1.2.3", "10.1.2.3"),
        ] {
            let err = parse_target(text).expect_err(text);
            assert_eq!(err.label(), "not_loopback", "{text}");
            let message = err.to_string();
            assert!(message.contains(ip), "{message}");
            assert!(message.contains("127.0.0.0/8"), "{message}");
        }
        assert_eq!(
            parse_target("ws://localhost:8000").map_err(|e| e.label()),
            Err("malformed")
        );
        assert_eq!(
            parse_target("http://127.0.0.1:8000").map_err(|e| e.label()),
            Err("malformed")
        );
    }

    #[test]
    fn least_connections_fills_the_emptiest_and_a_draining_target_gets_none() {
        let mut b = Balancer::new(Spread::LeastConnections);
        assert_eq!(b.pick(Duration::ZERO), None);
        b.set_ready(vec![addr(1), addr(2)]);
        let picks: Vec<_> = (0..4).filter_map(|_| b.pick(Duration::ZERO)).collect();
        assert_eq!(picks, [addr(1), addr(2), addr(1), addr(2)]);
        b.set_ready(vec![addr(1), addr(2), addr(3)]);
        assert_eq!(b.pick(Duration::ZERO), Some(addr(3)));
        assert_eq!(b.pick(Duration::ZERO), Some(addr(3)));
        b.set_ready(vec![addr(1), addr(3)]);
        for _ in 0..3 {
            b.release(addr(2));
        }
        assert!(
            (0..10)
                .filter_map(|_| b.pick(Duration::ZERO))
                .all(|a| a != addr(2))
        );
        assert_eq!(b.open_on(addr(2)), 0);
    }

    #[test]
    fn a_target_cooling_down_is_passed_over_unless_all_are() {
        let s = Duration::from_secs;
        for strategy in [Spread::LeastConnections, Spread::RoundRobin] {
            let mut b = Balancer::new(strategy);
            b.set_ready(vec![addr(1), addr(2)]);
            b.cool_down(addr(1), s(5));
            assert!((0..4).all(|_| b.pick(s(1)) == Some(addr(2))));
            b.cool_down(addr(2), s(5));
            assert!(b.pick(s(1)).is_some());
            assert_eq!(
                b.pick(s(5)).map(|a| a == addr(1) || a == addr(2)),
                Some(true)
            );
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let mut b = Balancer::new(Spread::RoundRobin);
        b.set_ready(vec![addr(2), addr(1)]);
        let picks: Vec<_> = (0..3).filter_map(|_| b.pick(Duration::ZERO)).collect();
        assert_eq!(picks, [addr(1), addr(2), addr(1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ready(Vec<u8>),
        Pick,
        Release(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(0u8..6, 0..5).prop_map(Op::Ready),
            Just(Op::Pick),
            Just(Op::Pick),
            (0u8..6).prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn picks_are_always_ready_and_open_counts_balance(
            ops in prop::collection::vec(op(), 0..100),
            round_robin in any::<bool>(),
        ) {
            let strategy = if round_robin { Spread::RoundRobin } else { Spread::LeastConnections };
            let mut b = Balancer::new(strategy);
            let mut open: BTreeMap<SocketAddr, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Ready(set) => b.set_ready(set.into_iter().map(addr).collect()),
                    Op::Pick => match b.pick(Duration::ZERO) {
                        Some(a) => {
                            prop_assert!(b.ready().contains(&a));
                            *open.entry(a).or_default() += 1;
                        }
                        None => prop_assert!(b.ready().is_empty()),
                    },
                    Op::Release(i) => {
                        let a = addr(i);
                        b.release(a);
                        if let Some(n) = open.get_mut(&a) {
                            *n = n.saturating_sub(1);
                            if *n == 0 { open.remove(&a); }
                        }
                    }
                }
            }
            prop_assert_eq!(b.open(), &open);
        }

        #[test]
        fn least_connections_keeps_a_fixed_set_within_one(n in 1u8..6, picks in 0usize..60) {
            let mut b = Balancer::new(Spread::LeastConnections);
            b.set_ready((0..n).map(addr).collect());
            for _ in 0..picks { b.pick(Duration::ZERO); }
            let counts: Vec<u64> = (0..n).map(|i| b.open_on(addr(i))).collect();
            let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "{counts:?}");
        }

        #[test]
        fn any_text_is_a_loopback_address_or_refused(text in ".{0,40}") {
            if let Ok(a) = parse_target(&text) {
                prop_assert!(a.ip().is_loopback());
            }
        }
    }
}
