//! Plain-text views for the CLI: pure functions of the status and history documents, so what
//! an operator reads is tested without a terminal.
//!
//! The rollout part of `cutover status` ([`stable_line`], [`held_line`], [`rollout_section`])
//! is also what `cutover k8s status` prints (`cutover_kube::cli`): one format for both
//! runtimes, with what differs (how a verb is typed, whether cutover measured a window of
//! its own) passed in.

use crate::status::StatusView;
use cutover_core::engine::{DecisionKind, Held, Phase, PhaseKind, Release, Rollout, StepHold};
use cutover_core::judge::{Outcome, Verdict};
use cutover_core::{Dur, Timestamp};
use serde_json::Value;
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

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

/// How an operator types a verb where the status comes from: `cutover resume` on one host,
/// `cutover k8s resume web` on Kubernetes.
pub type VerbHint<'a> = &'a dyn Fn(&str) -> String;

fn phase_line(r: &Rollout, now: Timestamp, verb: VerbHint<'_>) -> String {
    match &r.phase {
        Phase::Starting { .. } => format!(
            "starting {} (waiting for readiness, {} so far)",
            r.to.version,
            span(r.started, now)
        ),
        Phase::Progressing { .. } => {
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
            ..
        } => format!(
            "paused by the operator {} ago (resume with `{}`)",
            span(*since, now),
            verb("resume")
        ),
        Phase::Paused {
            manual: false,
            since,
            ..
        } => format!(
            "paused until promoted, {} ago (`{}` or `{}`)",
            span(*since, now),
            verb("resume"),
            verb("promote")
        ),
        Phase::Promoted { until } => format!(
            "promoted; previous release held for rollback for another {}",
            span(now, *until)
        ),
        Phase::HandingOff { token, since, .. } => format!(
            "handing the active role to {} with fencing token {token} ({} so far; new requests wait in the proxy)",
            r.to.version,
            span(*since, now)
        ),
        Phase::Done { .. } => "done".to_string(),
        Phase::Aborted {
            reason, automatic, ..
        } => format!(
            "ABORTED ({}): {reason}",
            if *automatic { "automatic" } else { "manual" }
        ),
        Phase::RolledBack { reason, .. } => format!("ROLLED BACK: {reason}"),
    }
}

/// The `cutover status` view.
pub fn status(s: &StatusView) -> String {
    let mut o = String::new();
    let now = s.now;
    let _ = writeln!(o, "service {}  (proxy {})", s.service, s.proxy);
    stable_line(
        &mut o,
        s.stable.as_ref(),
        "`cutover deploy <version>` makes the first release",
    );
    if let Some(e) = &s.persist_failure {
        let _ = writeln!(o, "STATE STORE FAILING  {e}");
    }
    if let Some(c) = &s.config {
        match c.file.as_str() {
            "same" => {}
            "differs" => {
                let _ = writeln!(
                    o,
                    "config  {} differs from the running config ({}): `cutover reload` applies it",
                    c.path,
                    c.detail.join(", ")
                );
            }
            other => {
                let _ = writeln!(
                    o,
                    "config  {} is {other}: {} (the running config is kept)",
                    c.path,
                    c.detail.join("; ")
                );
            }
        }
        if !c.pending.is_empty() {
            let _ = writeln!(
                o,
                "config  reloaded {} applies to the next rollout",
                c.pending.join(", ")
            );
        }
    }
    if let Some(f) = &s.fencing {
        let _ = writeln!(
            o,
            "role    {} holds the active role, fencing token {} (strategy handoff)",
            f.holder.label(),
            f.token
        );
    } else if s.strategy == cutover_core::spec::Strategy::Handoff {
        let _ = writeln!(
            o,
            "role    nobody holds the active role yet (strategy handoff)"
        );
    }
    held_line(&mut o, s.previous.as_ref(), now);
    if let Some(r) = &s.rollout {
        rollout_section(
            &mut o,
            r,
            &RolloutPart {
                now,
                eta: s.eta,
                window: Some(s.settings.window),
                interval: s.settings.interval,
                verb: &|v| format!("cutover {v}"),
            },
        );
    }
    if !s.instances.is_empty() {
        let _ = writeln!(o, "\ninstances");
        for i in &s.instances {
            let pid = i.pid.map_or("-".to_string(), |p| p.to_string());
            let _ = write!(
                o,
                "  {:<14} {:<10} {:<21} pid {:<8} in-flight {:<4} restarts {}",
                i.id, i.state, i.addr, pid, i.in_flight, i.restarts
            );
            if i.websockets > 0 {
                let _ = write!(o, "  websockets {}", i.websockets);
            }
            if i.adopted {
                let _ = write!(o, "  (re-adopted from the previous cutover)");
            }
            let _ = writeln!(o);
            if let Some(p) = &i.metrics_problem {
                let _ = writeln!(o, "    /metrics rejected (samples dropped): {p}");
            }
        }
    }
    let st = &s.settings;
    if let Some(h) = &st.handoff {
        let _ = writeln!(
            o,
            "\nhandoff: new requests held while the old holder's in-flight requests finish (at most {}), then POST {} on the new instance (at most {}); drain {} then grace {}",
            h.drain_timeout, h.path, h.timeout, st.drain_timeout, st.grace
        );
        return o;
    }
    let _ = writeln!(
        o,
        "\nevaluation every {} over {} (min {} samples); steps {}; max_hold {}; hold_previous {}; drain {} (WebSockets: quiet period {}, then 1012) then grace {}",
        st.interval, st.window, st.min_samples, st.step_interval, st.max_hold, st.hold_previous, st.drain_timeout, st.quiet_period, st.grace
    );
    if !st.traffic_need.is_empty() {
        let _ = writeln!(
            o,
            "low traffic: looks back up to {}; inconclusive longer than {} aborts; {}",
            st.max_lookback, st.max_inconclusive, st.traffic_need
        );
    }
    o
}

/// `stable  v1 (sha256:…)`, or how the first release is made.
pub fn stable_line(o: &mut String, stable: Option<&Release>, first_release: &str) {
    let _ = match stable {
        Some(st) => writeln!(o, "stable  {}", st.label()),
        None => writeln!(o, "stable  none yet: {first_release}"),
    };
}

/// `held    v1 (…) until 59m 58s from now (instant rollback)`, when a release is held.
pub fn held_line(o: &mut String, previous: Option<&Held>, now: Timestamp) {
    if let Some(p) = previous {
        let _ = writeln!(
            o,
            "held    {} until {} from now (instant rollback)",
            p.release.label(),
            span(now, p.until)
        );
    }
}

/// What [`rollout_section`] needs besides the rollout.
pub struct RolloutPart<'a> {
    pub now: Timestamp,
    /// When 100 % is reached if every gate passes.
    pub eta: Option<Timestamp>,
    /// The window cutover measured each version over (its proxy's requests, errors,
    /// latencies); `None` where it measures nothing itself (Kubernetes: PromQL rules only),
    /// and the table of those numbers is left out rather than printed as zeros.
    pub window: Option<Dur>,
    /// How often the abort rules are evaluated.
    pub interval: Dur,
    pub verb: VerbHint<'a>,
}

/// The rollout in progress, or the last one: its releases, phase, weight and plan, hold and
/// breaches, and the last evaluation's numbers and verdicts.
pub fn rollout_section(o: &mut String, r: &Rollout, part: &RolloutPart<'_>) {
    let now = part.now;
    let from = r
        .from
        .as_ref()
        .map_or("(none)".to_string(), |f| f.version.clone());
    let when = match r.ended() {
        Some(ended) => format!(
            "ended {} ago, after {}",
            span(ended, now),
            span(r.started, ended)
        ),
        None => format!("started {} ago", span(r.started, now)),
    };
    let _ = writeln!(o, "\nrollout {}: {from} → {}  ({when})", r.id, r.to.label());
    let _ = writeln!(o, "  {}", phase_line(r, now, part.verb));
    if r.phase.is_active() && r.phase.kind() != PhaseKind::Starting {
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
        if let Some(eta) = part.eta {
            let _ = writeln!(
                o,
                "  eta    100% in {} if every gate passes",
                span(now, eta)
            );
        }
    }
    // A hold or a breach only means something while the rollout runs (the phase has
    // none after): an aborted rollout's last breach is in its phase line and its history.
    if let Some(h) = r.hold() {
        let _ = writeln!(
            o,
            "  HOLD   {} (since {} ago)",
            h.reason,
            span(h.since, now)
        );
    }
    for (rule, since) in r.breaches() {
        let _ = writeln!(o, "  BREACH {rule} for {}", span(*since, now));
    }
    if let Some(e) = &r.last_evaluation {
        match part.window {
            Some(window) => window_table(o, r, e, window, now),
            None => {
                let _ = writeln!(o, "\n  rules evaluated {} ago", span(e.at, now));
            }
        }
        if !e.gates.is_empty() {
            let _ = writeln!(o, "  gates (last step boundary)");
            for v in &e.gates {
                let _ = writeln!(o, "    {}", verdict_line(v));
            }
        }
        let _ = writeln!(o, "  abort rules (every {})", part.interval);
        for v in &e.aborts {
            let _ = writeln!(o, "    {}", verdict_line(v));
        }
    }
}

/// Requests, rate, errors, p50 and p99 of each version over the window cutover measured.
fn window_table(
    o: &mut String,
    r: &Rollout,
    e: &cutover_core::engine::Evaluation,
    window: Dur,
    now: Timestamp,
) {
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}ms", v * 1e3));
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
    let secs = window.get().as_secs_f64();
    let rate = |n: u64| {
        if secs > 0.0 {
            format!("{:.1}/s", n as f64 / secs)
        } else {
            "-".to_string()
        }
    };
    // Rows name the versions: after a promotion "stable" is the new version, but this
    // window measured the old one as stable and the new one as canary.
    let label = |version: Option<&str>, track: &str| match version {
        Some(v) => format!("{v} ({track})"),
        None => track.to_string(),
    };
    let rows = [
        (
            label(r.from.as_ref().map(|f| f.version.as_str()), "stable"),
            &e.stable,
        ),
        (label(Some(r.to.version.as_str()), "canary"), &e.canary),
    ];
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(6);
    let _ = writeln!(
        o,
        "\n  window of {} measured {} ago",
        window,
        span(e.at, now)
    );
    let _ = writeln!(
        o,
        "    {:<width$} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "", "requests", "rate", "errors", "p50", "p99"
    );
    for (name, t) in rows {
        let _ = writeln!(
            o,
            "    {name:<width$} {:>9} {:>9} {:>8} {:>9} {:>9}",
            t.requests,
            rate(t.requests),
            pct(t.error_ratio),
            ms(t.p50_seconds),
            ms(t.p99_seconds)
        );
    }
}

/// `2026-12-04T12:00:01.250Z`: how the CLI prints an instant, in text and in JSON.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(t.millis())).to_string()
}

/// `12:00:01.250Z`: the time of day of [`rfc3339`], for spans within one rollout.
pub fn time_of_day(t: Timestamp) -> String {
    let full = rfc3339(t);
    full.split_once('T')
        .map_or(full.clone(), |(_, tod)| tod.to_string())
}

/// A time in a history document: an RFC 3339 string, or Unix milliseconds (as a cutover before
/// RFC 3339 history answered).
pub fn parse_time(v: &Value) -> Option<Timestamp> {
    match v {
        Value::Number(n) => n.as_u64().map(Timestamp),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| Timestamp(d.as_millis() as u64)),
        _ => None,
    }
}

/// Replaces the Unix-milliseconds fields `keys` of a JSON object by RFC 3339 strings.
pub fn rfc3339_fields(v: &mut Value, keys: &[&str]) {
    for k in keys {
        if let Some(ms) = v.get(*k).and_then(Value::as_i64) {
            v[*k] = Value::String(rfc3339(Timestamp(ms.max(0) as u64)));
        }
    }
}

/// One decision in a printed timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row<'a> {
    pub at: Timestamp,
    pub kind: &'a str,
    pub reason: &'a str,
}

/// A line of a printed timeline: one decision, or a run of consecutive holds with the same
/// cause (a canary short of samples for a minute is one line, not two hundred).
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    One(Row<'a>),
    Holds {
        count: usize,
        first: Timestamp,
        last: Timestamp,
        /// The last hold's reason: the freshest numbers.
        reason: &'a str,
    },
}

/// What makes two holds "the same": the weight and the cause, without the numbers —
/// `holding at 2%: inconclusive` of `holding at 2%: inconclusive: canary has 12 requests ...`,
/// `holding at 2%: gate p99-vs-stable failed` of `...: canary p99 1.2s > 13.7ms (stable 8.3ms)`.
pub fn hold_cause(reason: &str) -> &str {
    match reason.match_indices(": ").nth(1) {
        Some((i, _)) => &reason[..i],
        None => reason,
    }
}

/// Collapses consecutive `hold` rows with the same [`hold_cause`] into one [`Line::Holds`].
pub fn collapse<'a>(rows: &[Row<'a>]) -> Vec<Line<'a>> {
    let mut out: Vec<Line<'a>> = Vec::new();
    for r in rows {
        if r.kind == "hold" {
            let cause = hold_cause(r.reason);
            match out.last_mut() {
                Some(Line::Holds {
                    count,
                    last,
                    reason,
                    ..
                }) if hold_cause(reason) == cause => {
                    *count += 1;
                    *last = r.at;
                    *reason = r.reason;
                    continue;
                }
                Some(Line::One(prev))
                    if prev.kind == "hold" && hold_cause(prev.reason) == cause =>
                {
                    let first = prev.at;
                    *out.last_mut().unwrap_or_else(|| unreachable!()) = Line::Holds {
                        count: 2,
                        first,
                        last: r.at,
                        reason: r.reason,
                    };
                    continue;
                }
                _ => {}
            }
        }
        out.push(Line::One(*r));
    }
    out
}

/// The printed timeline of decisions: `<RFC 3339 time> +<since start> <kind> <reason>`, one
/// line per decision except runs of the same hold, which read
/// `hold ×37 over 18.2s (12:00:01.250Z–12:00:19.450Z): <last reason>`.
pub fn timeline(rows: &[Row<'_>], start: Timestamp) -> String {
    let mut o = String::new();
    for line in collapse(rows) {
        match line {
            Line::One(r) => {
                let _ = writeln!(
                    o,
                    "  {}  +{:<9} {:<17} {}",
                    rfc3339(r.at),
                    span(start, r.at),
                    r.kind,
                    r.reason
                );
            }
            Line::Holds {
                count,
                first,
                last,
                reason,
            } => {
                let _ = writeln!(
                    o,
                    "  {}  +{:<9} {:<17} over {} ({}–{}): {reason}",
                    rfc3339(first),
                    span(start, first),
                    format!("hold ×{count}"),
                    span(first, last),
                    time_of_day(first),
                    time_of_day(last)
                );
            }
        }
    }
    o
}

/// How a rollout of the history ended and when, or `None` while it runs. The recorded outcome
/// says how; a store written before outcomes were recorded at promotion has none for a
/// promoted rollout (or `done`, at the time the held release was let go), so its decisions say.
fn ended_how(
    outcome: Option<&str>,
    first_release: bool,
    ended_at: Option<Timestamp>,
    decisions: &[Row<'_>],
) -> Option<(&'static str, Option<Timestamp>)> {
    // The decisions that end a rollout, with the phase each ends it in.
    let last = |ends: &[(DecisionKind, PhaseKind)]| {
        decisions.iter().rev().find_map(|d| {
            ends.iter()
                .find(|(k, _)| k.as_str() == d.kind)
                .map(|&(_, phase)| (phase, d.at))
        })
    };
    // `None`: an outcome this build does not know (a newer store); it ended, somehow.
    let (phase, at) = match outcome.filter(|o| !o.is_empty()).map(PhaseKind::from_name) {
        Some(Some(PhaseKind::Done)) if !first_release => (
            Some(PhaseKind::Promoted),
            last(&[(DecisionKind::Promoted, PhaseKind::Promoted)])
                .map(|(_, at)| at)
                .or(ended_at),
        ),
        Some(phase) => (phase, ended_at),
        None => {
            let (phase, at) = last(&[
                (DecisionKind::Promoted, PhaseKind::Promoted),
                (DecisionKind::Aborted, PhaseKind::Aborted),
                (DecisionKind::RolledBack, PhaseKind::RolledBack),
            ])?;
            (Some(phase), Some(at))
        }
    };
    let how = match phase {
        Some(PhaseKind::Done | PhaseKind::Promoted) if first_release => "first release, live",
        Some(PhaseKind::Promoted | PhaseKind::Done) => "promoted",
        Some(PhaseKind::Aborted) => "aborted",
        Some(PhaseKind::RolledBack) => "rolled back",
        _ => "ended",
    };
    Some((how, at))
}

/// The `cutover history` view of the JSON the admin API returns.
pub fn history(doc: &Value) -> String {
    let mut o = String::new();
    if let Some(v) = doc.get("verify") {
        let ok = v.get("ok").and_then(|x| x.as_bool()).unwrap_or(false);
        let rows = v.get("rows").and_then(|x| x.as_u64()).unwrap_or(0);
        if ok {
            let _ = writeln!(o, "audit chain: OK ({rows} records, keyed chain intact)");
        } else {
            let bad = v
                .get("first_bad_seq")
                .map(|x| x.to_string())
                .unwrap_or_default();
            let what = v
                .pointer("/problems/0/what")
                .and_then(|x| x.as_str())
                .unwrap_or("");
            let _ = writeln!(
                o,
                "audit chain: TAMPERED (first bad record #{bad} of {rows}: {what})"
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
    for (i, r) in rollouts.iter().enumerate() {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let from = if s("from_version").is_empty() {
            "(none)".to_string()
        } else {
            s("from_version")
        };
        let time = |k: &str| r.get(k).and_then(parse_time);
        let started = time("started_at").unwrap_or(Timestamp(0));
        let decisions: Vec<Row<'_>> = r
            .get("decisions")
            .and_then(|d| d.as_array())
            .unwrap_or(&empty)
            .iter()
            .map(|d| Row {
                at: d.get("at").and_then(parse_time).unwrap_or(started),
                kind: d.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                reason: d.get("reason").and_then(|v| v.as_str()).unwrap_or(""),
            })
            .collect();
        let outcome = r.get("outcome").and_then(|v| v.as_str());
        let first_release = r.get("from_version").is_none_or(Value::is_null);
        let how = match ended_how(outcome, first_release, time("ended_at"), &decisions) {
            Some((how, Some(e))) => format!("{how} at {} after {}", rfc3339(e), span(started, e)),
            Some((how, None)) => how.to_string(),
            None => "in progress".to_string(),
        };
        if i > 0 {
            let _ = writeln!(o);
        }
        let _ = writeln!(
            o,
            "rollout {}: {from} → {}  started {}; {how}",
            r.get("id").cloned().unwrap_or_default(),
            s("to_version"),
            rfc3339(started)
        );
        o.push_str(&timeline(&decisions, started));
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

    /// 2026-11-24T12:00:00Z in Unix milliseconds.
    const NOON: u64 = 1_795_521_600_000;

    #[test]
    fn times_are_rfc3339_and_read_back_from_either_form() {
        assert_eq!(rfc3339(Timestamp(NOON + 1250)), "2026-11-24T12:00:01.250Z");
        assert_eq!(time_of_day(Timestamp(NOON + 1250)), "12:00:01.250Z");
        let t = Some(Timestamp(NOON + 1250));
        assert_eq!(parse_time(&Value::from("2026-11-24T12:00:01.250Z")), t);
        assert_eq!(parse_time(&Value::from(NOON + 1250)), t);
        assert_eq!(parse_time(&Value::from("yesterday")), None);
        let mut v = serde_json::json!({"at": NOON, "ended_at": null, "kind": "hold"});
        rfc3339_fields(&mut v, &["at", "ended_at"]);
        assert_eq!(
            v,
            serde_json::json!({"at": "2026-11-24T12:00:00.000Z", "ended_at": null, "kind": "hold"})
        );
    }

    fn row(at_ms: u64, kind: &'static str, reason: &'static str) -> Row<'static> {
        Row {
            at: Timestamp(NOON + at_ms),
            kind,
            reason,
        }
    }

    #[test]
    fn consecutive_holds_with_the_same_cause_collapse_into_one_line() {
        let short = |n: u64| -> &'static str {
            Box::leak(
                format!("holding at 2%: inconclusive: canary has {n} requests in the window")
                    .into_boxed_str(),
            )
        };
        let mut rows = vec![
            row(0, "deploy", "rollout 2: v1 → v2"),
            row(100, "ready", "ready"),
        ];
        for i in 0..37u64 {
            rows.push(row(1250 + i * 500, "hold", short(i)));
        }
        // Another cause, then the first one again: three runs, not one.
        rows.push(row(
            20_000,
            "hold",
            "holding at 2%: gate p99 failed: canary p99 1.2s > 13ms",
        ));
        rows.push(row(
            20_250,
            "hold",
            "holding at 2%: gate p99 failed: canary p99 1.3s > 14ms",
        ));
        rows.push(row(20_500, "hold", short(40)));
        rows.push(row(21_000, "advance", "gates passed: step 2 at 4%"));
        let lines = collapse(&rows);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(
            lines[2],
            Line::Holds {
                count: 37,
                first: Timestamp(NOON + 1250),
                last: Timestamp(NOON + 1250 + 36 * 500),
                reason: short(36),
            }
        );
        assert!(matches!(lines[3], Line::Holds { count: 2, .. }));
        assert_eq!(lines[4], Line::One(rows[41]));
        let text = timeline(&rows, Timestamp(NOON));
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(
            text.contains("2026-11-24T12:00:01.250Z  +1.2s      hold ×37          over 18.0s (12:00:01.250Z–12:00:19.250Z): holding at 2%: inconclusive: canary has 36 requests"),
            "{text}"
        );
        assert!(
            text.contains("  2026-11-24T12:00:00.000Z  +0ms       deploy "),
            "{text}"
        );
    }

    #[test]
    fn history_says_how_every_rollout_ended() {
        let doc = serde_json::json!({"rollouts": [
            // Running: no outcome, no terminal decision.
            {"id": 4, "from_version": "v2", "to_version": "v3", "started_at": "2026-11-24T12:10:00.000Z",
             "ended_at": null, "outcome": null, "decisions": [
                {"at": "2026-11-24T12:10:00.000Z", "kind": "deploy", "reason": "rollout 4"}]},
            // Promoted, recorded by a cutover that did not write the outcome until `done`.
            {"id": 3, "from_version": "v1", "to_version": "v2", "started_at": NOON,
             "ended_at": null, "outcome": null, "decisions": [
                {"at": NOON, "kind": "deploy", "reason": "rollout 3"},
                {"at": NOON + 38_000, "kind": "promoted", "reason": "v2 promoted"}]},
            // `done` by an older cutover: ended when the held v0 was let go, promoted before.
            {"id": 5, "from_version": "v0", "to_version": "v1", "started_at": "2026-11-24T09:00:00.000Z",
             "ended_at": "2026-11-24T10:00:10.000Z", "outcome": "done", "decisions": [
                {"at": "2026-11-24T09:00:10.000Z", "kind": "promoted", "reason": "v1 promoted"},
                {"at": "2026-11-24T10:00:10.000Z", "kind": "previous_released", "reason": "v0 let go"}]},
            {"id": 2, "from_version": "v1", "to_version": "bad", "started_at": "2026-11-24T11:00:00.000Z",
             "ended_at": "2026-11-24T11:00:34.700Z", "outcome": "aborted", "decisions": []},
            {"id": 1, "from_version": null, "to_version": "v1", "started_at": "2026-11-24T10:00:00.000Z",
             "ended_at": "2026-11-24T10:00:01.000Z", "outcome": "done", "decisions": []}
        ]});
        let text = history(&doc);
        let heads: Vec<&str> = text.lines().filter(|l| l.starts_with("rollout")).collect();
        assert_eq!(
            heads,
            [
                "rollout 4: v2 → v3  started 2026-11-24T12:10:00.000Z; in progress",
                "rollout 3: v1 → v2  started 2026-11-24T12:00:00.000Z; promoted at 2026-11-24T12:00:38.000Z after 38.0s",
                "rollout 5: v0 → v1  started 2026-11-24T09:00:00.000Z; promoted at 2026-11-24T09:00:10.000Z after 10.0s",
                "rollout 2: v1 → bad  started 2026-11-24T11:00:00.000Z; aborted at 2026-11-24T11:00:34.700Z after 34.7s",
                "rollout 1: (none) → v1  started 2026-11-24T10:00:00.000Z; first release, live at 2026-11-24T10:00:01.000Z after 1.0s",
            ],
            "{text}"
        );
    }

    /// After an abort the rollout's last breach is history, not a live alarm; the window's rows
    /// name the versions (after a promotion "stable" would be ambiguous) and give their rates.
    #[test]
    fn status_names_versions_gives_rates_and_drops_a_stale_breach() {
        use cutover_core::engine::{Engine, Event, Release, Verb};
        use cutover_core::stats::{TrackStats, WindowStats};
        use cutover_core::Dur;
        let spec = cutover_core::spec::RolloutSpec::default();
        let mut e = Engine::new("shop", spec.clone());
        let t = |s: u64| Timestamp(NOON + s * 1000);
        let deploy = |v: &str, d: &str| Event::Deploy {
            release: Release::new(v, d),
            force: false,
            start_timeout: None,
        };
        e.handle(t(0), deploy("v1", "a")).unwrap();
        e.handle(t(0), Event::Ready { digest: "a".into() }).unwrap();
        e.handle(t(1), deploy("v2", "b")).unwrap();
        e.handle(t(1), Event::Ready { digest: "b".into() }).unwrap();
        let tick = Event::Measured {
            stats: WindowStats {
                stable: TrackStats::uniform(1500, 0, 20),
                canary: TrackStats::uniform(60, 0, 900),
            },
            wider: Vec::new(),
            external: Default::default(),
        };
        e.handle(t(6), tick).unwrap();
        let view = |e: &Engine, now: Timestamp| StatusView {
            service: "shop".into(),
            now,
            proxy: "127.0.0.1:8080".into(),
            stable: e.state().stable.clone(),
            previous: e.state().previous.clone(),
            rollout: e.state().rollout.clone(),
            eta: None,
            instances: Vec::new(),
            failed: Default::default(),
            strategy: Default::default(),
            fencing: None,
            persist_failure: None,
            config: None,
            settings: crate::status::Settings {
                interval: spec.interval,
                window: spec.window,
                step_interval: spec.step_interval,
                min_samples: spec.min_samples,
                max_hold: spec.max_hold,
                hold_previous: spec.hold_previous,
                drain_timeout: Dur::from_secs(30),
                quiet_period: Dur::from_secs(5),
                grace: Dur::from_secs(10),
                readiness_thresholds: (1, 3),
                liveness_failure_threshold: 3,
                max_lookback: spec.max_lookback,
                max_inconclusive: spec.max_inconclusive,
                traffic_need: String::new(),
                handoff: None,
            },
        };
        let running = status(&view(&e, t(7)));
        assert!(
            running.contains("  BREACH p99-over-800ms for 1.0s"),
            "{running}"
        );
        assert!(
            running.contains("window of 30s measured 1.0s ago"),
            "{running}"
        );
        let rows: Vec<&str> = running
            .lines()
            .filter(|l| l.contains("(stable)") || l.contains("(canary)"))
            .collect();
        assert_eq!(rows.len(), 2, "{running}");
        assert!(
            rows[0].trim_start().starts_with("v1 (stable)") && rows[0].contains("50.0/s"),
            "{running}"
        );
        assert!(
            rows[1].trim_start().starts_with("v2 (canary)") && rows[1].contains("2.0/s"),
            "{running}"
        );

        e.handle(t(8), Event::Command(Verb::Abort)).unwrap();
        let aborted = status(&view(&e, t(9)));
        assert!(aborted.contains("ABORTED (manual)"), "{aborted}");
        assert!(
            aborted.contains("rollout 2: v1 → v2 (b)  (ended 1.0s ago, after 7.0s)"),
            "{aborted}"
        );
        assert!(
            running.contains("rollout 2: v1 → v2 (b)  (started 6.0s ago)"),
            "{running}"
        );
        assert!(
            !aborted.contains("BREACH") && !aborted.contains("HOLD "),
            "{aborted}"
        );
        assert!(!aborted.contains("config "), "{aborted}");

        // The config file against the running config: said only when it is not the same.
        let mut v = view(&e, t(9));
        v.config = Some(crate::reload::ConfigView {
            path: "/etc/cutover.toml".into(),
            file: "differs".into(),
            detail: vec!["rollout.aborts".into()],
            pending: vec!["rollout.gates".into()],
        });
        let differs = status(&v);
        assert!(
            differs.contains("config  /etc/cutover.toml differs from the running config (rollout.aborts): `cutover reload` applies it")
                && differs.contains("config  reloaded rollout.gates applies to the next rollout"),
            "{differs}"
        );
    }
}
