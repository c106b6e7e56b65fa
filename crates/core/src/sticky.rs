//! Sticky assignment of clients to the canary (DESIGN.md invariant 2: sticky monotonicity).
//!
//! A client key `k` hashes to a position `u(k)` in `[0, 10 000)` basis points and goes to the
//! canary iff `u(k) < w`. Because the rule is a threshold on a fixed position, raising `w` can
//! only move clients stable → canary; a client never flips back during a healthy rollout.
//! The salt is per rollout so that the same unlucky 2 % of clients are not the first canaries
//! of every release; within one rollout it never changes.

use crate::weight::Weight;

/// The client's position in `[0, 10_000)` for a rollout salted with `salt`.
pub fn position(salt: u64, key: &[u8]) -> u16 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, salt);
    // Multiply-shift maps the hash uniformly onto [0, 10 000) without modulo bias.
    ((u128::from(h) * 10_000) >> 64) as u16
}

/// Whether the client with `key` is routed to the canary at `weight`.
pub fn is_canary(salt: u64, key: &[u8], weight: Weight) -> bool {
    position(salt, key) < weight.bp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Invariant 2: as the weight grows, no key ever moves canary → stable.
        #[test]
        fn monotone_as_weight_grows(
            salt in any::<u64>(),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 1..64),
            mut weights in proptest::collection::vec(0u16..=10_000, 1..12),
        ) {
            weights.sort_unstable();
            for key in &keys {
                let mut was_canary = false;
                for &bp in &weights {
                    let now = is_canary(salt, key, Weight::from_bp(bp).unwrap());
                    prop_assert!(!was_canary || now, "key {:?} flipped back at {} bp", key, bp);
                    was_canary = now;
                }
            }
        }

        #[test]
        fn zero_is_nobody_and_full_is_everybody(salt in any::<u64>(), key in proptest::collection::vec(any::<u8>(), 0..32)) {
            prop_assert!(!is_canary(salt, &key, Weight::ZERO));
            prop_assert!(is_canary(salt, &key, Weight::FULL));
        }
    }

    #[test]
    fn share_tracks_weight() {
        let n = 100_000u32;
        let canary = (0..n)
            .filter(|i| {
                is_canary(
                    7,
                    format!("client-{i}").as_bytes(),
                    Weight::from_bp(200).unwrap(),
                )
            })
            .count() as f64;
        let share = canary / f64::from(n);
        assert!((share - 0.02).abs() < 0.003, "share {share}");
    }
}
