//! Who sends each message to whom: senders take turns over the active
//! clients, recipients are drawn from the same clients (another one when
//! there are two or more), so every message's arrival can be checked. The
//! random source is seeded by the caller, so a run's traffic is repeatable.

/// SplitMix64: small, fast and well mixed; enough to spread recipients.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // u64 -> usize: the modulus is below n, itself a usize.
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Chooses senders and recipients.
#[derive(Debug, Clone)]
pub struct Traffic {
    rng: SplitMix64,
    turn: usize,
}

impl Traffic {
    /// Traffic drawn with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            turn: 0,
        }
    }

    /// The next `(sender, recipient)` among `active` client indices; `None`
    /// when there are none. A lone client sends to itself.
    pub fn next_pair(&mut self, active: &[u32]) -> Option<(u32, u32)> {
        let n = active.len();
        if n == 0 {
            return None;
        }
        let s = self.turn % n;
        self.turn = self.turn.wrapping_add(1);
        let r = if n == 1 {
            s
        } else {
            // Any other client, uniformly.
            (s + 1 + self.rng.below(n - 1)) % n
        };
        Some((active[s], active[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn senders_take_turns() {
        let mut t = Traffic::new(1);
        let senders: Vec<u32> = (0..6)
            .filter_map(|_| t.next_pair(&[4, 5, 6]))
            .map(|p| p.0)
            .collect();
        assert_eq!(senders, [4, 5, 6, 4, 5, 6]);
        assert_eq!(t.next_pair(&[]), None);
        assert_eq!(t.next_pair(&[9]), Some((9, 9)));
    }

    proptest! {
        #[test]
        fn pairs_are_active_and_distinct(
            active in prop::collection::btree_set(any::<u32>(), 2..20),
            seed in any::<u64>(),
            draws in 1usize..200,
        ) {
            let active: Vec<u32> = active.into_iter().collect();
            let mut t = Traffic::new(seed);
            for _ in 0..draws {
                let (s, r) = t.next_pair(&active).expect("clients");
                prop_assert!(active.contains(&s) && active.contains(&r));
                prop_assert_ne!(s, r);
            }
        }
    }
}
