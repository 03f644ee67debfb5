//! Pod addresses: one loopback address per pod, `PREFIX.2` to `PREFIX.254`.
//!
//! All of 127.0.0.0/8 is loopback on Linux, so every address in the range
//! works without any set-up. The lowest free address is handed out, so freed
//! addresses are reused.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Lowest and highest last octet handed out.
const FIRST: u8 = 2;
const LAST: u8 = 254;

/// A pod address prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix is not three dotted octets inside 127.0.0.0/8.
    #[error(
        "invalid pod IP prefix {prefix:?}: {reason}; expected three octets in 127.0.0.0/8 such as 127.10.0"
    )]
    Invalid {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Hands out and takes back pod addresses under one /24 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIps {
    prefix: [u8; 3],
    used: BTreeSet<u8>,
}

impl PodIps {
    /// An allocator for `prefix` (three octets, e.g. `127.10.0`).
    ///
    /// # Errors
    ///
    /// [`PrefixError::Invalid`] unless `prefix` is three octets starting
    /// with 127.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let invalid = |reason| PrefixError::Invalid {
            prefix: prefix.to_owned(),
            reason,
        };
        let mut octets = [0_u8; 3];
        let mut parts = prefix.split('.');
        for octet in &mut octets {
            let part = parts
                .next()
                .ok_or_else(|| invalid("it has fewer than three octets"))?;
            if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("an octet is not a number from 0 to 255"));
            }
            *octet = part
                .parse()
                .map_err(|_| invalid("an octet is not a number from 0 to 255"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("it has more than three octets"));
        }
        if octets[0] != 127 {
            return Err(invalid("it is not inside 127.0.0.0/8 (loopback)"));
        }
        Ok(Self {
            prefix: octets,
            used: BTreeSet::new(),
        })
    }

    /// Takes the lowest free address, or `None` when all 253 are in use.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let last = (FIRST..=LAST).find(|octet| !self.used.contains(octet))?;
        self.used.insert(last);
        Some(self.address(last))
    }

    /// Takes `wanted` if it is in this range and free (a pod that already
    /// has an address keeps it across agent restarts).
    pub fn claim(&mut self, wanted: Ipv4Addr) -> bool {
        let [a, b, c, last] = wanted.octets();
        if [a, b, c] != self.prefix || !(FIRST..=LAST).contains(&last) {
            return false;
        }
        self.used.insert(last)
    }

    /// Gives `ip` back; addresses outside the range are ignored.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let [a, b, c, last] = ip.octets();
        if [a, b, c] == self.prefix {
            self.used.remove(&last);
        }
    }

    /// How many addresses are handed out.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> PodIps {
        PodIps::new("127.10.0").expect("valid prefix")
    }

    #[test]
    fn addresses_start_at_two_and_freed_ones_are_reused() {
        let mut pool = ips();
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 10, 0, 2)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 10, 0, 3)));
        pool.release(Ipv4Addr::new(127, 10, 0, 2));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 10, 0, 2)));
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn the_pool_runs_out_after_253() {
        let mut pool = ips();
        for _ in 0..253 {
            assert!(pool.allocate().is_some());
        }
        assert_eq!(pool.allocate(), None);
        pool.release(Ipv4Addr::new(127, 10, 0, 254));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 10, 0, 254)));
    }

    #[test]
    fn claims_only_free_addresses_in_range() {
        let mut pool = ips();
        assert!(pool.claim(Ipv4Addr::new(127, 10, 0, 9)));
        assert!(!pool.claim(Ipv4Addr::new(127, 10, 0, 9)));
        assert!(!pool.claim(Ipv4Addr::new(127, 10, 1, 9)));
        assert!(!pool.claim(Ipv4Addr::new(127, 10, 0, 1)));
        assert!(!pool.claim(Ipv4Addr::new(127, 10, 0, 255)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 10, 0, 2)));
        pool.release(Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "",
            "127",
            "127.10",
            "127.10.0.1",
            "10.0.0",
            "127.256.0",
            "127.a.0",
            "127..0",
            "127.+1.0",
        ] {
            let err = PodIps::new(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
