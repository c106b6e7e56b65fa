//! Gates and abort rules evaluated on one window: `judge(rule, stats) -> Verdict`.
//!
//! A verdict carries the numbers behind it (observed value, threshold, sample counts) because
//! every decision cutover records must say why, in figures. Too few samples is its own outcome,
//! [`Outcome::Inconclusive`]: the engine holds on it and never advances or aborts on noise.

use crate::mannwhitney;
use crate::spec::{AbortSpec, GateSpec};
use crate::stats::WindowStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one rule concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A gate passed, or an abort rule is not breached.
    Pass,
    /// A gate failed, or an abort rule is breached.
    Fail,
    /// Not enough traffic in the window to say.
    Inconclusive,
}

/// The unit of a verdict's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Seconds,
    Ratio,
    /// A query's value, unit unknown.
    Value,
}

/// One rule's verdict on one window, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: String,
    pub outcome: Outcome,
    /// The canary's value, when it had samples.
    pub observed: Option<f64>,
    /// The limit it was held to (already combining relative and absolute limits).
    pub threshold: Option<f64>,
    /// Stable's value, for rules relative to stable.
    pub baseline: Option<f64>,
    pub unit: Unit,
    pub canary_samples: u64,
    pub stable_samples: u64,
    /// One line a human reads in `status` and `history`.
    pub detail: String,
    /// For a statistical test: its p-value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The look-back the numbers cover when it is longer than `rollout.window` (too few
    /// samples in the window; see `lookback`). Absent: the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::time::Dur>,
}

/// The result of a rule the shell evaluates (a PromQL query, embedded or on Prometheus), in
/// Prometheus alert terms. The engine only ever sees this value, never a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum External {
    /// The rule would fire: a gate fails, an abort rule is breached.
    Fired { value: Option<f64>, detail: String },
    /// The rule would not fire.
    Clear { value: Option<f64>, detail: String },
    /// Nothing to judge: no series, or the provider could not answer. Inconclusive.
    NoData { detail: String },
}

/// The verdict of an externally evaluated rule; a rule with no result is inconclusive.
pub fn judge_external(rule: &str, result: Option<&External>, stats: &WindowStats) -> Verdict {
    let (outcome, observed, detail) = match result {
        Some(External::Fired { value, detail }) => (Outcome::Fail, *value, detail.clone()),
        Some(External::Clear { value, detail }) => (Outcome::Pass, *value, detail.clone()),
        Some(External::NoData { detail }) => (Outcome::Inconclusive, None, detail.clone()),
        None => (
            Outcome::Inconclusive,
            None,
            "not evaluated in this interval".to_string(),
        ),
    };
    Verdict {
        rule: rule.to_string(),
        outcome,
        observed,
        threshold: None,
        baseline: None,
        unit: Unit::Value,
        canary_samples: stats.canary.requests,
        stable_samples: stats.stable.requests,
        detail,
        p_value: None,
        window: None,
    }
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Seconds if v < 1.0 => format!("{:.1}ms", v * 1e3),
        Unit::Seconds => format!("{v:.3}s"),
        Unit::Ratio => format!("{:.3}%", v * 100.0),
        Unit::Value => format!("{v}"),
    }
}

fn inconclusive(
    rule: &str,
    unit: Unit,
    stats: &WindowStats,
    min_samples: u64,
    needs_stable: bool,
) -> Option<Verdict> {
    let c = stats.canary.requests;
    let s = stats.stable.requests;
    let detail = if c < min_samples {
        format!("canary has {c} requests in the window, fewer than min_samples {min_samples}")
    } else if needs_stable && s < min_samples {
        format!("stable has {s} requests in the window, fewer than min_samples {min_samples}")
    } else {
        return None;
    };
    Some(Verdict {
        rule: rule.to_string(),
        outcome: Outcome::Inconclusive,
        observed: None,
        threshold: None,
        baseline: None,
        unit,
        canary_samples: c,
        stable_samples: s,
        detail,
        p_value: None,
        window: None,
    })
}

fn verdict(
    rule: &str,
    unit: Unit,
    stats: &WindowStats,
    observed: f64,
    threshold: f64,
    baseline: Option<f64>,
    what: &str,
) -> Verdict {
    let outcome = if observed <= threshold {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let cmp = if outcome == Outcome::Pass { "<=" } else { ">" };
    let base = baseline
        .map(|b| format!(" (stable {})", fmt_value(b, unit)))
        .unwrap_or_default();
    Verdict {
        rule: rule.to_string(),
        outcome,
        observed: Some(observed),
        threshold: Some(threshold),
        baseline,
        unit,
        canary_samples: stats.canary.requests,
        stable_samples: stats.stable.requests,
        detail: format!(
            "canary {what} {} {cmp} {}{base}",
            fmt_value(observed, unit),
            fmt_value(threshold, unit)
        ),
        p_value: None,
        window: None,
    }
}

fn quantile_name(q: f64) -> String {
    let p = q * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("p{}", p.round())
    } else {
        format!("p{}", format!("{p}").replace('.', ""))
    }
}

/// Judges an advance gate: `Pass` lets the rollout advance at a step boundary.
pub fn judge_gate(
    gate: &GateSpec,
    stats: &WindowStats,
    min_samples: u64,
    external: &BTreeMap<String, External>,
) -> Verdict {
    match gate {
        GateSpec::Promql { name, .. } => judge_external(name, external.get(name), stats),
        GateSpec::MannWhitney {
            name,
            confidence,
            tolerance_percent,
            direction,
        } => {
            if let Some(v) = inconclusive(name, Unit::Seconds, stats, min_samples, true) {
                return v;
            }
            let tolerance = tolerance_percent / 100.0;
            let Some(m) = mannwhitney::test(
                &stats.canary.latency,
                &stats.stable.latency,
                *direction,
                tolerance,
            ) else {
                return judge_external(name, None, stats);
            };
            let fail = mannwhitney::significant(&m, *direction, *confidence);
            let dir = match direction {
                mannwhitney::Direction::Increase => "slower than",
                mannwhitney::Direction::Decrease => "faster than",
                mannwhitney::Direction::Either => "different from",
            };
            let detail = format!(
                "canary latency {} stable beyond {tolerance_percent}% (Mann-Whitney U, p = {:.4}, {} at {:.0}% confidence; n = {}/{})",
                dir,
                m.p_value,
                if fail { "significant" } else { "not significant" },
                confidence * 100.0,
                m.canary_n,
                m.stable_n
            );
            let detail = if fail {
                detail
            } else {
                format!("no evidence: {detail}")
            };
            Verdict {
                rule: name.clone(),
                outcome: if fail { Outcome::Fail } else { Outcome::Pass },
                observed: stats.canary.latency_quantile_secs(0.5),
                threshold: None,
                baseline: stats.stable.latency_quantile_secs(0.5),
                unit: Unit::Seconds,
                canary_samples: stats.canary.requests,
                stable_samples: stats.stable.requests,
                detail,
                p_value: Some(m.p_value),
                window: None,
            }
        }
        GateSpec::Latency {
            name,
            quantile,
            max_increase_percent,
            slack,
            max,
        } => {
            let unit = Unit::Seconds;
            if let Some(v) = inconclusive(
                name,
                unit,
                stats,
                min_samples,
                max_increase_percent.is_some(),
            ) {
                return v;
            }
            let canary = stats.canary.latency_quantile_secs(*quantile).unwrap_or(0.0);
            let stable = stats.stable.latency_quantile_secs(*quantile);
            let mut threshold = f64::INFINITY;
            if let (Some(p), Some(s)) = (max_increase_percent, stable) {
                threshold = threshold.min(s * (1.0 + p / 100.0) + slack.get().as_secs_f64());
            }
            if let Some(m) = max {
                threshold = threshold.min(m.get().as_secs_f64());
            }
            let baseline = if max_increase_percent.is_some() {
                stable
            } else {
                None
            };
            verdict(
                name,
                unit,
                stats,
                canary,
                threshold,
                baseline,
                &quantile_name(*quantile),
            )
        }
        GateSpec::ErrorRatio {
            name,
            max,
            max_increase,
        } => {
            let unit = Unit::Ratio;
            if let Some(v) = inconclusive(name, unit, stats, min_samples, max_increase.is_some()) {
                return v;
            }
            let canary = stats.canary.error_ratio().unwrap_or(0.0);
            let stable = stats.stable.error_ratio();
            let mut threshold = f64::INFINITY;
            if let (Some(inc), Some(s)) = (max_increase, stable) {
                threshold = threshold.min(s + inc);
            }
            if let Some(m) = max {
                threshold = threshold.min(*m);
            }
            let baseline = if max_increase.is_some() { stable } else { None };
            verdict(
                name,
                unit,
                stats,
                canary,
                threshold,
                baseline,
                "error ratio",
            )
        }
    }
}

/// Judges an abort rule: `Fail` means breached (the engine aborts once it has been breached
/// continuously for the rule's `for`).
pub fn judge_abort(
    rule: &AbortSpec,
    stats: &WindowStats,
    min_samples: u64,
    external: &BTreeMap<String, External>,
) -> Verdict {
    match rule {
        AbortSpec::Promql { name, .. } => judge_external(name, external.get(name), stats),
        AbortSpec::Latency {
            name,
            quantile,
            above,
            ..
        } => {
            let unit = Unit::Seconds;
            if let Some(v) = inconclusive(name, unit, stats, min_samples, false) {
                return v;
            }
            let canary = stats.canary.latency_quantile_secs(*quantile).unwrap_or(0.0);
            verdict(
                name,
                unit,
                stats,
                canary,
                above.get().as_secs_f64(),
                None,
                &quantile_name(*quantile),
            )
        }
        AbortSpec::ErrorRatio { name, above, .. } => {
            let unit = Unit::Ratio;
            if let Some(v) = inconclusive(name, unit, stats, min_samples, false) {
                return v;
            }
            let canary = stats.canary.error_ratio().unwrap_or(0.0);
            verdict(name, unit, stats, canary, *above, None, "error ratio")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::TrackStats;
    use crate::time::Dur;

    fn track(n: u64, errors: u64, latency_ms: u64) -> TrackStats {
        TrackStats::uniform(n, errors, latency_ms)
    }

    fn p99_gate() -> GateSpec {
        GateSpec::defaults().remove(0)
    }

    #[test]
    fn latency_gate_passes_within_five_percent_plus_slack() {
        let stats = WindowStats {
            stable: track(100, 0, 100),
            canary: track(100, 0, 105),
        };
        let v = judge_gate(&p99_gate(), &stats, 50, &BTreeMap::new());
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.detail);
        let t = v.threshold.unwrap();
        assert!((t - (0.1 * 1.05 + 0.001)).abs() < 0.003, "{t}");
    }

    #[test]
    fn latency_gate_fails_beyond_threshold_and_says_why() {
        let stats = WindowStats {
            stable: track(100, 0, 100),
            canary: track(100, 0, 130),
        };
        let v = judge_gate(&p99_gate(), &stats, 50, &BTreeMap::new());
        assert_eq!(v.outcome, Outcome::Fail);
        assert!(v.detail.starts_with("canary p99 13"), "{}", v.detail);
        assert!(v.detail.contains("(stable 10"), "{}", v.detail);
    }

    #[test]
    fn too_few_samples_is_inconclusive_for_canary_and_for_stable_when_relative() {
        let few_canary = WindowStats {
            stable: track(100, 0, 1),
            canary: track(10, 0, 900),
        };
        assert_eq!(
            judge_gate(&p99_gate(), &few_canary, 50, &BTreeMap::new()).outcome,
            Outcome::Inconclusive
        );
        let few_stable = WindowStats {
            stable: track(10, 0, 1),
            canary: track(100, 0, 1),
        };
        assert_eq!(
            judge_gate(&p99_gate(), &few_stable, 50, &BTreeMap::new()).outcome,
            Outcome::Inconclusive
        );
        // An absolute rule does not need stable's samples.
        let abs = &AbortSpec::defaults()[0];
        assert_eq!(
            judge_abort(abs, &few_stable, 50, &BTreeMap::new()).outcome,
            Outcome::Pass
        );
        let abort = judge_abort(abs, &few_canary, 50, &BTreeMap::new());
        assert_eq!(abort.outcome, Outcome::Inconclusive, "never abort on noise");
    }

    #[test]
    fn error_gate_absolute_and_relative() {
        let g = GateSpec::ErrorRatio {
            name: "e".into(),
            max: Some(0.01),
            max_increase: Some(0.001),
        };
        let ok = WindowStats {
            stable: track(1000, 1, 1),
            canary: track(1000, 2, 1),
        };
        assert_eq!(
            judge_gate(&g, &ok, 50, &BTreeMap::new()).outcome,
            Outcome::Pass
        );
        let worse = WindowStats {
            stable: track(1000, 1, 1),
            canary: track(1000, 3, 1),
        };
        assert_eq!(
            judge_gate(&g, &worse, 50, &BTreeMap::new()).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn abort_rules_breach_above_threshold() {
        let rules = AbortSpec::defaults();
        let slow = WindowStats {
            stable: track(100, 0, 1),
            canary: track(100, 0, 900),
        };
        assert_eq!(
            judge_abort(&rules[0], &slow, 50, &BTreeMap::new()).outcome,
            Outcome::Fail
        );
        let erroring = WindowStats {
            stable: track(100, 0, 1),
            canary: track(100, 5, 1),
        };
        assert_eq!(
            judge_abort(&rules[1], &erroring, 50, &BTreeMap::new()).outcome,
            Outcome::Fail
        );
        assert_eq!(
            judge_abort(&rules[0], &erroring, 50, &BTreeMap::new()).outcome,
            Outcome::Pass
        );
        let custom = AbortSpec::Latency {
            name: "p50".into(),
            quantile: 0.5,
            above: Dur::from_millis(10),
            for_: Dur::default(),
        };
        assert_eq!(
            judge_abort(&custom, &slow, 50, &BTreeMap::new()).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn quantile_names() {
        assert_eq!(quantile_name(0.99), "p99");
        assert_eq!(quantile_name(0.5), "p50");
        assert_eq!(quantile_name(0.999), "p999");
    }
}
