//! The admin listener's `/metrics`: per-version request totals and the rollout's state in the
//! Prometheus text format.

use crate::router::Intent;
use cutover_core::engine::Engine;
use cutover_telemetry::Recorder;
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition.
pub fn render(engine: &Engine, recorder: &Recorder, intent: Option<&Intent>) -> String {
    let service = escape(&engine.state().service);
    let mut o = String::new();
    let track_of = |v: &str| match intent {
        Some(i) if i.canary.as_ref().is_some_and(|c| c.version == v) => "canary",
        Some(i) if i.stable.version == v => "stable",
        _ => "none",
    };
    let _ = writeln!(
        o,
        "# HELP cutover_requests_total Requests through the proxy by version and status code."
    );
    let _ = writeln!(o, "# TYPE cutover_requests_total counter");
    for v in recorder.versions() {
        let t = recorder.track(&v).totals();
        for (code, n) in &t.by_code {
            let _ = writeln!(o, "cutover_requests_total{{service=\"{service}\",version=\"{}\",track=\"{}\",code=\"{code}\"}} {n}", escape(&v), track_of(&v));
        }
    }
    let _ = writeln!(
        o,
        "# HELP cutover_canary_weight_ratio The canary's share of traffic."
    );
    let _ = writeln!(o, "# TYPE cutover_canary_weight_ratio gauge");
    let w = engine.active().map_or(0.0, |r| r.weight.percent() / 100.0);
    let _ = writeln!(
        o,
        "cutover_canary_weight_ratio{{service=\"{service}\"}} {w}"
    );
    let _ = writeln!(
        o,
        "# HELP cutover_rollout_phase The current rollout's phase (1 for the active one)."
    );
    let _ = writeln!(o, "# TYPE cutover_rollout_phase gauge");
    if let Some(r) = &engine.state().rollout {
        let _ = writeln!(
            o,
            "cutover_rollout_phase{{service=\"{service}\",rollout=\"{}\",phase=\"{}\"}} 1",
            r.id,
            r.phase.name()
        );
        let _ = writeln!(o, "# HELP cutover_rollout_step The current step (0-based).");
        let _ = writeln!(o, "# TYPE cutover_rollout_step gauge");
        let _ = writeln!(
            o,
            "cutover_rollout_step{{service=\"{service}\",rollout=\"{}\"}} {}",
            r.id, r.step
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
