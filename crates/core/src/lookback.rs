//! Low traffic: how far back an evaluation may look, and how much traffic a spec needs.
//!
//! DESIGN.md invariant 11: only evidence changes a verdict. A rule with fewer than
//! `min_samples` requests in its `window` is inconclusive; rather than guess, the engine judges
//! it again on a longer look-back — `window`, 2 × `window`, 4 × `window` … up to
//! `max_lookback` — and takes the first that holds enough requests. The look-back never
//! reaches before the evidence it is allowed to use: abort rules look back at most to when the
//! canary first took traffic in this rollout (every request since then is the canary's, at
//! whatever weight it had), gates at most to the start of the current step (the weight they
//! decide to raise is judged on traffic at that weight). Nothing here does IO: the shell asks
//! [`ladder`] which windows to measure and hands the numbers back in the `Measured` event, so a
//! recorded rollout replays exactly.

use crate::spec::RolloutSpec;
use crate::stats::WindowStats;
use crate::time::Dur;
use crate::weight::Weight;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One widened window's numbers, as measured by the shell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wider {
    /// How far back this window reaches.
    pub window: Dur,
    pub stats: WindowStats,
}

/// Whether `stats` holds `min_samples` of both versions: every built-in rule can be judged on
/// it, so the shell measures no longer look-back than the first that does.
pub fn enough(stats: &WindowStats, min_samples: u64) -> bool {
    stats.canary.requests >= min_samples && stats.stable.requests >= min_samples
}

/// The windows longer than `window` worth measuring when `available` of evidence exists:
/// `window` doubled until the cap, then the cap itself, where the cap is the smaller of
/// `max_lookback` and `available`. Ascending; empty when the cap is not beyond `window`.
pub fn ladder(window: Dur, max_lookback: Dur, available: Duration) -> Vec<Dur> {
    let cap = max_lookback.get().min(available);
    let mut out = Vec::new();
    let base = window.get();
    if base.is_zero() || cap <= base {
        return out;
    }
    let mut w = base.saturating_mul(2);
    while w < cap {
        out.push(Dur(w));
        w = w.saturating_mul(2);
    }
    out.push(Dur(cap));
    out
}

/// The traffic a spec needs to reach a verdict at the canary's first weight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrafficNeed {
    /// The canary's first weight, in percent.
    pub weight_percent: f64,
    pub min_samples: u64,
    pub window: Dur,
    /// Total requests per second (both versions) that give the canary `min_samples` within
    /// one `window`: every evaluation is then conclusive on its own.
    pub per_window: f64,
    /// How far back a verdict can look before the rollout is aborted as inconclusive:
    /// the smaller of `max_lookback` and `max_inconclusive`.
    pub reach: Dur,
    /// Total requests per second below which the canary never has `min_samples` within
    /// `reach`: such a rollout can only end aborted by `max_inconclusive`.
    pub at_all: f64,
}

impl TrafficNeed {
    /// `needs ≥ 83.4 req/s at 2 % to decide on one 30s window, ≥ 8.4 req/s with the look-back
    /// (5m); below that it is aborted after max_inconclusive`.
    pub fn sentence(&self) -> String {
        format!(
            "needs ≥ {} req/s at {} % to decide on one {} window (min_samples {}), ≥ {} req/s with the look-back ({}); below that the rollout is aborted after max_inconclusive",
            fmt_rate(self.per_window),
            fmt_percent(self.weight_percent),
            self.window,
            self.min_samples,
            fmt_rate(self.at_all),
            self.reach,
        )
    }
}

/// Rounded *up* to one decimal: a need must not be understated.
fn fmt_rate(r: f64) -> String {
    let up = (r * 10.0).ceil() / 10.0;
    if up.fract() == 0.0 {
        format!("{up:.0}")
    } else {
        format!("{up:.1}")
    }
}

fn fmt_percent(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The traffic `spec` needs at its first canary weight (see [`TrafficNeed`]). Pure: the same
/// numbers for `validate`, `status` and the docs. The canary gets `weight` of the total, so
/// it collects `min_samples` in `t` seconds at a total rate of `min_samples / (t × weight)`;
/// stable (the larger share) is never the constraint.
pub fn traffic_need(spec: &RolloutSpec) -> TrafficNeed {
    traffic_need_at(spec, spec.initial())
}

/// [`traffic_need`] at the canary weight `weight` (what `status` shows for a running rollout).
pub fn traffic_need_at(spec: &RolloutSpec, weight: Weight) -> TrafficNeed {
    let weight_percent = weight.percent();
    let share = (weight_percent / 100.0).max(1e-9);
    let min = spec.min_samples as f64;
    let reach = spec
        .max_lookback
        .min(spec.max_inconclusive)
        .max(spec.window);
    let rate = |d: Dur| min / (d.get().as_secs_f64().max(1e-9) * share);
    TrafficNeed {
        weight_percent,
        min_samples: spec.min_samples,
        window: spec.window,
        per_window: rate(spec.window),
        reach,
        at_all: rate(reach),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Dur {
        Dur::from_secs(n)
    }

    #[test]
    fn ladder_doubles_up_to_the_smaller_of_bound_and_evidence() {
        let l = ladder(s(30), s(300), Duration::from_secs(1000));
        assert_eq!(l, vec![s(60), s(120), s(240), s(300)]);
        let l = ladder(s(30), s(300), Duration::from_secs(100));
        assert_eq!(l, vec![s(60), s(100)]);
        assert!(ladder(s(30), s(300), Duration::from_secs(30)).is_empty());
        assert!(ladder(s(30), s(30), Duration::from_secs(1000)).is_empty());
        assert_eq!(
            ladder(s(30), s(120), Duration::from_secs(1000)),
            vec![s(60), s(120)]
        );
    }

    #[test]
    fn defaults_need_the_issue_figures() {
        let n = traffic_need(&RolloutSpec::default());
        // 50 samples at 2 % in 30 s: 83.3 req/s; in 5 min: 8.3 req/s.
        assert!((n.per_window - 83.333).abs() < 0.01, "{n:?}");
        assert!((n.at_all - 8.333).abs() < 0.01, "{n:?}");
        assert_eq!(
            n.sentence(),
            "needs ≥ 83.4 req/s at 2 % to decide on one 30s window (min_samples 50), ≥ 8.4 req/s with the look-back (5m); below that the rollout is aborted after max_inconclusive"
        );
    }

    #[test]
    fn reach_is_bounded_by_max_inconclusive_too() {
        let spec = RolloutSpec {
            initial_weight: 0.5,
            max_inconclusive: s(60),
            ..RolloutSpec::default()
        };
        let n = traffic_need(&spec);
        assert_eq!(n.reach, s(60));
        assert!((n.at_all - 50.0 / (60.0 * 0.005)).abs() < 1e-6);
        assert!(n.sentence().contains("at 0.5 %"), "{}", n.sentence());
    }
}
