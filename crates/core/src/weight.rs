//! Traffic weights in basis points, so that fractional percentages (0.5 %) are exact.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A canary's share of traffic in basis points: `0..=10_000`, where 10_000 is 100 %.
///
/// Integers, not floats: weights are compared, persisted and hashed against, and
/// `0.1 + 0.2 != 0.3` has no place in a routing decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Weight(u16);

impl Weight {
    /// No traffic.
    pub const ZERO: Weight = Weight(0);
    /// All traffic.
    pub const FULL: Weight = Weight(10_000);

    /// A weight from basis points, `None` above 10 000.
    pub const fn from_bp(bp: u16) -> Option<Weight> {
        if bp <= 10_000 {
            Some(Weight(bp))
        } else {
            None
        }
    }

    /// A weight from a percentage such as `2.0` or `0.5`; `None` when it is not a finite
    /// number in `0..=100` or has more precision than a basis point.
    pub fn from_percent(p: f64) -> Option<Weight> {
        if !p.is_finite() || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let bp = p * 100.0;
        let rounded = bp.round();
        if (bp - rounded).abs() > 1e-6 {
            return None;
        }
        Weight::from_bp(rounded as u16)
    }

    /// Basis points, `0..=10_000`.
    pub const fn bp(self) -> u16 {
        self.0
    }

    /// The weight as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// The rest of the traffic: what the stable version gets when this is the canary's.
    pub const fn complement(self) -> Weight {
        Weight(10_000 - self.0)
    }

    /// Twice this weight, capped at 100 %.
    pub fn doubled(self) -> Weight {
        Weight(self.0.saturating_mul(2).min(10_000))
    }

    pub const fn is_full(self) -> bool {
        self.0 == 10_000
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(100) {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{:.2}%", self.percent())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trips_basis_points() {
        assert_eq!(Weight::from_percent(2.0), Weight::from_bp(200));
        assert_eq!(Weight::from_percent(0.5), Weight::from_bp(50));
        assert_eq!(Weight::from_percent(0.01), Weight::from_bp(1));
        assert_eq!(Weight::from_percent(100.0), Some(Weight::FULL));
        assert_eq!(Weight::from_percent(0.001), None);
        assert_eq!(Weight::from_percent(101.0), None);
        assert_eq!(Weight::from_percent(-1.0), None);
        assert_eq!(Weight::from_percent(f64::NAN), None);
    }

    #[test]
    fn display_is_short_for_whole_percentages() {
        assert_eq!(Weight::from_bp(200).unwrap().to_string(), "2%");
        assert_eq!(Weight::from_bp(50).unwrap().to_string(), "0.50%");
    }

    #[test]
    fn doubling_caps_at_full() {
        assert_eq!(Weight::from_bp(6400).unwrap().doubled(), Weight::FULL);
        assert_eq!(Weight::from_bp(200).unwrap().doubled().bp(), 400);
    }
}
