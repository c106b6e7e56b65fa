//! Plain-text views for the CLI: pure functions of the status and history documents, so what
//! an operator reads is tested without a terminal.

use crate::status::StatusView;
use cutover_core::engine::{Phase, Rollout, StepHold};
use cutover_core::judge::{Outcome, Verdict};
use cutover_core::Timestamp;
use std::fmt::Write;

/// A `[#####.....]` bar for a weight in percent.
pub fn bar(percent: f64, width: usize) -> String {
    let filled = ((percent / 100.0) * width as f64)
        .round()
        .clamp(0.0, width as f64) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// `1m 30s`-style relative time between two timestamps.
pub fn span(from: Timestamp, to: Timestamp) -> String {
    let ms = to.millis().saturating_sub(from.millis());
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn verdict_line(v: &Verdict) -> String {
    let mark = match v.outcome {
        Outcome::Pass => "ok  ",
        Outcome::Fail => "FAIL",
        Outcome::Inconclusive => "??  ",
    };
    format!("{mark} {:<24} {}", v.rule, v.detail)
}

fn phase_line(r: &Rollout, now: Timestamp) -> String {
    match &r.phase {
        Phase::Starting => format!(
            "starting {} (waiting for readiness, {} so far)",
            r.to.version,
            span(r.started, now)
        ),
        Phase::Progressing => {
            let step_end = match r.plan.get(r.step).map(|s| s.hold) {
                Some(StepHold::For(d)) => {
                    let end = r.step_started.plus(d.get());
                    if end > now {
                        format!(", next check in {}", span(now, end))
                    } else {
                        ", checking gates".to_string()
                    }
                }
                _ => String::new(),
            };
            format!(
                "progressing: step {}/{}{step_end}",
                r.step + 1,
                r.plan.len()
            )
        }
        Phase::Paused {
            manual: true,
            since,
        } => format!(
            "paused by the operator {} ago (resume with `cutover resume`)",
            span(*since, now)
        ),
        Phase::Paused {
            manual: false,
            since,
        } => format!(
            "paused until promoted, {} ago (`cutover resume` or `cutover promote`)",
            span(*since, now)
        ),
        Phase::Promoted { until } => format!(
            "promoted; previous release held for rollback for another {}",
            span(now, *until)
        ),
        Phase::Done => "done".to_string(),
        Phase::Aborted { reason, automatic } => format!(
            "ABORTED ({}): {reason}",
            if *automatic { "automatic" } else { "manual" }
        ),
        Phase::RolledBack { reason } => format!("ROLLED BACK: {reason}"),
    }
}

/// The `cutover status` view.
pub fn status(s: &StatusView) -> String {
    let mut o = String::new();
    let now = s.now;
    let _ = writeln!(o, "service {}  (proxy {})", s.service, s.proxy);
    match &s.stable {
        Some(st) => {
            let _ = writeln!(o, "stable  {}", st.label());
        }
        None => {
            let _ = writeln!(
                o,
                "stable  none yet: `cutover deploy <version>` makes the first release"
            );
        }
    }
    if let Some(p) = &s.previous {
        let _ = writeln!(
            o,
            "held    {} until {} from now (instant rollback)",
            p.release.label(),
            span(now, p.until)
        );
    }
    if let Some(r) = &s.rollout {
        let from = r
            .from
            .as_ref()
            .map_or("(none)".to_string(), |f| f.version.clone());
        let _ = writeln!(
            o,
            "\nrollout {}: {from} → {}  ({} ago)",
            r.id,
            r.to.label(),
            span(r.started, r.ended.unwrap_or(now))
        );
        let _ = writeln!(o, "  {}", phase_line(r, now));
        if r.phase.is_active() && r.phase != Phase::Starting {
            let _ = writeln!(
                o,
                "  canary {} {:>6}",
                bar(r.weight.percent(), 40),
                r.weight.to_string()
            );
            let plan: Vec<String> = r
                .plan
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    if i == r.step {
                        format!("[{}]", st.weight)
                    } else {
                        st.weight.to_string()
                    }
                })
                .collect();
            let _ = writeln!(o, "  steps  {} → 100%", plan.join(" → "));
            if let Some(eta) = s.eta {
                let _ = writeln!(
                    o,
                    "  eta    100% in {} if every gate passes",
                    span(now, eta)
                );
            }
        }
        if let Some(h) = &r.hold {
            let _ = writeln!(
                o,
                "  HOLD   {} (since {} ago)",
                h.reason,
                span(h.since, now)
            );
        }
        for (rule, since) in &r.breaches {
            let _ = writeln!(o, "  BREACH {rule} for {}", span(*since, now));
        }
        if let Some(e) = &r.last_evaluation {
            let ms = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}ms", v * 1e3));
            let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
            let _ = writeln!(
                o,
                "\n  window ({} ago)      requests   errors      p50       p99",
                span(e.at, now)
            );
            let _ = writeln!(
                o,
                "    stable  {:>20} {:>8} {:>8} {:>9}",
                e.stable.requests,
                pct(e.stable.error_ratio),
                ms(e.stable.p50_seconds),
                ms(e.stable.p99_seconds)
            );
            let _ = writeln!(
                o,
                "    canary  {:>20} {:>8} {:>8} {:>9}",
                e.canary.requests,
                pct(e.canary.error_ratio),
                ms(e.canary.p50_seconds),
                ms(e.canary.p99_seconds)
            );
            if !e.gates.is_empty() {
                let _ = writeln!(o, "  gates (last step boundary)");
                for v in &e.gates {
                    let _ = writeln!(o, "    {}", verdict_line(v));
                }
            }
            let _ = writeln!(o, "  abort rules (every {})", s.settings.interval);
            for v in &e.aborts {
                let _ = writeln!(o, "    {}", verdict_line(v));
            }
        }
    }
    if !s.instances.is_empty() {
        let _ = writeln!(o, "\ninstances");
        for i in &s.instances {
            let pid = i.pid.map_or("-".to_string(), |p| p.to_string());
            let _ = writeln!(
                o,
                "  {:<14} {:<10} {:<21} pid {:<8} in-flight {:<4} restarts {}",
                i.id, i.state, i.addr, pid, i.in_flight, i.restarts
            );
            if let Some(p) = &i.metrics_problem {
                let _ = writeln!(o, "    /metrics rejected (samples dropped): {p}");
            }
        }
    }
    let st = &s.settings;
    let _ = writeln!(
        o,
        "\nevaluation every {} over {} (min {} samples); steps {}; max_hold {}; hold_previous {}; drain {} (WebSockets: quiet period {}, then 1012) then grace {}",
        st.interval, st.window, st.min_samples, st.step_interval, st.max_hold, st.hold_previous, st.drain_timeout, st.quiet_period, st.grace
    );
    o
}

/// The `cutover history` view of the JSON the admin API returns.
pub fn history(doc: &serde_json::Value) -> String {
    let mut o = String::new();
    if let Some(v) = doc.get("verify") {
        let ok = v.get("ok").and_then(|x| x.as_bool()).unwrap_or(false);
        let rows = v.get("rows").and_then(|x| x.as_u64()).unwrap_or(0);
        if ok {
            let _ = writeln!(o, "audit chain: OK ({rows} decisions, hash chain intact)");
        } else {
            let bad = v
                .get("first_bad_seq")
                .map(|x| x.to_string())
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "audit chain: TAMPERED (first bad decision #{bad} of {rows})"
            );
        }
    }
    let empty = Vec::new();
    let rollouts = doc
        .get("rollouts")
        .and_then(|r| r.as_array())
        .unwrap_or(&empty);
    if rollouts.is_empty() {
        let _ = writeln!(o, "no rollouts yet");
    }
    for r in rollouts {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let from = if s("from_version").is_empty() {
            "(none)".to_string()
        } else {
            s("from_version")
        };
        let outcome = if s("outcome").is_empty() {
            "in progress".to_string()
        } else {
            s("outcome")
        };
        let _ = writeln!(
            o,
            "rollout {}: {from} → {}  [{outcome}]",
            r.get("id").cloned().unwrap_or_default(),
            s("to_version")
        );
        let started = r.get("started_at").and_then(|v| v.as_i64()).unwrap_or(0);
        for d in r
            .get("decisions")
            .and_then(|d| d.as_array())
            .unwrap_or(&empty)
        {
            let at = d.get("at").and_then(|v| v.as_i64()).unwrap_or(0);
            let kind = d.get("kind").and_then(|v| v.as_str()).unwrap_or("");
            let reason = d.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            let _ = writeln!(
                o,
                "  +{:<9} {:<17} {reason}",
                span(
                    Timestamp(started.max(0) as u64),
                    Timestamp(at.max(0) as u64)
                ),
                kind
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_spans() {
        assert_eq!(bar(0.0, 10), "[..........]");
        assert_eq!(bar(50.0, 10), "[#####.....]");
        assert_eq!(bar(100.0, 4), "[####]");
        assert_eq!(span(Timestamp(0), Timestamp(450)), "450ms");
        assert_eq!(span(Timestamp(0), Timestamp(1500)), "1.5s");
        assert_eq!(span(Timestamp(0), Timestamp(90_000)), "1m 30s");
        assert_eq!(span(Timestamp(0), Timestamp(3_720_000)), "1h 02m");
        assert_eq!(span(Timestamp(10), Timestamp(0)), "0ms");
    }
}
