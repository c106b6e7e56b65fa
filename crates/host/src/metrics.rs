//! The admin listener's `/metrics`, in the Prometheus text format: the proxy's per-version
//! request metrics under their conventional names (`http_request_duration_seconds`,
//! `http_requests_total`, labelled `service`, `version`, `track`), the rollout's state (canary
//! weight, phase, step), the decisions made since start, and the requests the proxy refused
//! for their host.

use crate::router::Intent;
use cutover_core::engine::Engine;
use cutover_core::engine::PhaseKind;
use cutover_core::Track;
use cutover_telemetry::{escape_label as escape, Recorder};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Which track a version is on in the current route table.
pub fn track_of(intent: Option<&Intent>, version: &str) -> Option<Track> {
    let i = intent?;
    if i.canary.as_ref().is_some_and(|c| c.version == version)
        && i.weight > cutover_core::Weight::ZERO
    {
        Some(Track::Canary)
    } else if i.stable.version == version {
        Some(Track::Stable)
    } else {
        None
    }
}

/// Renders the exposition.
pub fn render(
    engine: &Engine,
    recorder: &Recorder,
    intent: Option<&Intent>,
    decisions: &BTreeMap<&'static str, u64>,
    rejected: &BTreeMap<(String, String), u64>,
    refused: &[(&'static str, u64)],
) -> String {
    let raw_service = engine.state().service.clone();
    let service = escape(&raw_service);
    let mut o = String::new();
    recorder.render(&raw_service, &|v: &str| track_of(intent, v), &mut o);

    let _ = writeln!(
        o,
        "# HELP cutover_canary_weight_ratio The canary's share of traffic (0 to 1)."
    );
    let _ = writeln!(o, "# TYPE cutover_canary_weight_ratio gauge");
    let w = engine
        .active()
        .map_or(0.0, |r| f64::from(r.weight.bp()) / 10_000.0);
    let _ = writeln!(
        o,
        "cutover_canary_weight_ratio{{service=\"{service}\"}} {w}"
    );
    if let Some(r) = &engine.state().rollout {
        let _ = writeln!(
            o,
            "# HELP cutover_rollout_phase The current (or last) rollout's phase: 1 for its phase."
        );
        let _ = writeln!(o, "# TYPE cutover_rollout_phase gauge");
        for kind in PhaseKind::ALL {
            let v = u8::from(r.phase.kind() == kind);
            let phase = kind.as_str();
            let _ = writeln!(o, "cutover_rollout_phase{{service=\"{service}\",rollout=\"{}\",version=\"{}\",phase=\"{phase}\"}} {v}", r.id, escape(&r.to.version));
        }
        let _ = writeln!(
            o,
            "# HELP cutover_rollout_step The rollout's current step, from 1."
        );
        let _ = writeln!(o, "# TYPE cutover_rollout_step gauge");
        let _ = writeln!(
            o,
            "cutover_rollout_step{{service=\"{service}\",rollout=\"{}\"}} {}",
            r.id,
            r.step + 1
        );
        let _ = writeln!(
            o,
            "# HELP cutover_rollout_steps The rollout's number of steps before 100 %."
        );
        let _ = writeln!(o, "# TYPE cutover_rollout_steps gauge");
        let _ = writeln!(
            o,
            "cutover_rollout_steps{{service=\"{service}\",rollout=\"{}\"}} {}",
            r.id,
            r.plan.len()
        );
    }
    let _ = writeln!(
        o,
        "# HELP cutover_decisions_total Decisions made since this cutover started, by kind."
    );
    let _ = writeln!(o, "# TYPE cutover_decisions_total counter");
    for (kind, n) in decisions {
        let _ = writeln!(
            o,
            "cutover_decisions_total{{service=\"{service}\",kind=\"{kind}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP cutover_scrape_rejected_total Instance /metrics expositions that did not parse (their samples are dropped), by version and instance."
    );
    let _ = writeln!(o, "# TYPE cutover_scrape_rejected_total counter");
    for ((version, instance), n) in rejected {
        let _ = writeln!(
            o,
            "cutover_scrape_rejected_total{{service=\"{service}\",version=\"{}\",instance=\"{}\"}} {n}",
            escape(version),
            escape(instance)
        );
    }
    let _ = writeln!(
        o,
        "# HELP cutover_proxy_refused_requests_total Requests the proxy answered 400 itself for \
         their Host (missing, repeated, invalid, or contradicting :authority), by reason; they \
         count for no version."
    );
    let _ = writeln!(o, "# TYPE cutover_proxy_refused_requests_total counter");
    for (reason, n) in refused {
        let _ = writeln!(
            o,
            "cutover_proxy_refused_requests_total{{service=\"{service}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP cutover_failed_releases Releases refused without --force."
    );
    let _ = writeln!(o, "# TYPE cutover_failed_releases gauge");
    let _ = writeln!(
        o,
        "cutover_failed_releases{{service=\"{service}\"}} {}",
        engine.state().failed.len()
    );
    o
}
