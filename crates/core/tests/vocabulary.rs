//! The names shared by core, the host and the notifier are one vocabulary: each enum's
//! `as_str` is the name serde writes, so a label, a config value and a stored state agree.

use cutover_core::engine::{DecisionKind, Phase, PhaseKind};
use cutover_core::spec::NotifyKind;
use cutover_core::{Timestamp, Track};

fn every_phase() -> Vec<Phase> {
    let t = Timestamp::from_millis(1_000);
    vec![
        Phase::Starting,
        Phase::Progressing,
        Phase::Paused {
            manual: true,
            since: t,
        },
        Phase::Promoted { until: t },
        Phase::Done,
        Phase::Aborted {
            reason: "r".into(),
            automatic: false,
        },
        Phase::RolledBack { reason: "r".into() },
    ]
}

#[test]
fn a_phase_is_named_as_serde_tags_it() {
    let phases = every_phase();
    assert_eq!(phases.len(), PhaseKind::ALL.len());
    for (phase, kind) in phases.iter().zip(PhaseKind::ALL) {
        assert_eq!(phase.kind(), kind);
        assert_eq!(phase.name(), kind.as_str());
        let tag = serde_json::to_value(phase).unwrap()["phase"].clone();
        assert_eq!(tag, kind.as_str());
        assert_eq!(PhaseKind::from_name(kind.as_str()), Some(kind));
    }
    assert_eq!(PhaseKind::from_name("idle"), None);
}

#[test]
fn a_track_is_named_as_serde_writes_it() {
    for t in [Track::Stable, Track::Canary] {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
}

#[test]
fn every_notification_kind_comes_from_a_decision() {
    let decisions = [
        DecisionKind::Deploy,
        DecisionKind::Ready,
        DecisionKind::Advance,
        DecisionKind::Hold,
        DecisionKind::Paused,
        DecisionKind::Resumed,
        DecisionKind::Promoted,
        DecisionKind::Aborted,
        DecisionKind::RolledBack,
        DecisionKind::PreviousReleased,
        DecisionKind::BreachStarted,
        DecisionKind::BreachCleared,
        DecisionKind::CrashLoop,
        DecisionKind::Recovered,
        DecisionKind::Spilled,
    ];
    for kind in NotifyKind::ALL {
        assert!(
            decisions.iter().any(|d| d.notify_kind() == Some(kind)),
            "{kind} is configurable but no decision sends it"
        );
    }
    // Only the audit-log decisions send nothing.
    let silent: Vec<_> = decisions
        .iter()
        .filter(|d| d.notify_kind().is_none())
        .map(|d| d.as_str())
        .collect();
    assert_eq!(
        silent,
        ["breach_started", "breach_cleared", "recovered", "spilled"]
    );
}
