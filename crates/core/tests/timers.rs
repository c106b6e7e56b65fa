//! The engine owns its time: a rollout driven by `poll_timeout` and `Event::Timeout` alone,
//! with one measurement as evidence, and no timer that fires without moving on.

use cutover_core::engine::{
    DecisionKind, Engine, Event, InstanceFacts, Outcome, Phase, PhaseKind, Release,
};
use cutover_core::simulate::{replay, Recorded, Recording};
use cutover_core::spec::RolloutSpec;
use cutover_core::{Dur, Timestamp, TrackStats, WindowStats};

const T0: Timestamp = Timestamp::from_millis(1_000_000);

fn stats(canary_n: u64, canary_errors: u64, canary_ms: u64) -> WindowStats {
    WindowStats {
        stable: TrackStats::uniform(1000, 0, 20),
        canary: TrackStats::uniform(canary_n, canary_errors, canary_ms),
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        step_interval: Dur::from_secs(90),
        interval: Dur::from_secs(5),
        hold_previous: Dur::from_secs(600),
        ..RolloutSpec::default()
    }
}

/// v1 stable, v2 deployed and ready at `T0`, and measured once at `T0` with `measured`.
fn canary(measured: WindowStats) -> (Engine, Vec<Outcome>) {
    let mut e = Engine::new("shop", spec());
    let mut log = Vec::new();
    for (v, d) in [("v1", "sha-v1"), ("v2", "sha-v2")] {
        let deploy = Event::Deploy {
            release: Release::new(v, d),
            force: false,
            start_timeout: None,
        };
        log.push(e.handle(T0, deploy).unwrap());
        log.push(e.handle(T0, Event::Ready { digest: d.into() }).unwrap());
    }
    let m = Event::Measured {
        stats: measured,
        wider: Vec::new(),
        external: Default::default(),
    };
    log.push(e.handle(T0, m).unwrap());
    (e, log)
}

/// Wakes the engine at each instant it asks for, `limit` times at most; every wake-up must
/// move its next instant past the one it handled (a shell sleeping on it never spins).
fn run_timers(e: &mut Engine, limit: usize) -> Vec<(Timestamp, Outcome)> {
    let mut woken = Vec::new();
    while let Some(t) = e.poll_timeout() {
        assert!(woken.len() < limit, "more than {limit} timeouts");
        let out = e.handle(t, Event::Timeout { facts: Vec::new() }).unwrap();
        if let Some(next) = e.poll_timeout() {
            assert!(
                next > t,
                "timeout at {t:?} asks to be woken again at {next:?}"
            );
        }
        woken.push((t, out));
    }
    woken
}

fn phase(e: &Engine) -> Phase {
    e.state().rollout.as_ref().unwrap().phase.clone()
}

#[test]
fn a_healthy_rollout_advances_and_releases_the_previous_at_the_polled_instants() {
    let (mut e, _) = canary(stats(200, 0, 20));
    assert_eq!(e.poll_timeout(), Some(T0.plus(Dur::from_secs(90).get())));
    let woken = run_timers(&mut e, 20);
    let step = Dur::from_secs(90).get();
    // 2 → 4 → 8 → 16 → 32 → 64 % are five advances; the sixth step end promotes; then the
    // previous release's hold ends.
    let mut expected = Vec::new();
    for i in 1..=6u32 {
        let kind = if i < 6 {
            DecisionKind::Advance
        } else {
            DecisionKind::Promoted
        };
        expected.push((T0.plus(step * i), vec![kind]));
    }
    let promoted = T0.plus(step * 6);
    expected.push((
        promoted.plus(Dur::from_secs(600).get()),
        vec![DecisionKind::PreviousReleased],
    ));
    let got: Vec<(Timestamp, Vec<DecisionKind>)> = woken
        .iter()
        .map(|(t, o)| (*t, o.decisions.iter().map(|d| d.kind).collect()))
        .collect();
    assert_eq!(got, expected);
    for (t, o) in &woken {
        assert!(o.decisions.iter().all(|d| d.at == *t));
    }
    assert_eq!(phase(&e).kind(), PhaseKind::Done);
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn a_breach_aborts_exactly_when_its_for_runs_out() {
    let (mut e, log) = canary(stats(200, 0, 900));
    assert!(log
        .iter()
        .flat_map(|o| &o.decisions)
        .any(|d| d.kind == DecisionKind::BreachStarted));
    // The default latency rule: p99 > 800 ms for 45 s.
    let end = T0.plus(Dur::from_secs(45).get());
    assert_eq!(e.poll_timeout(), Some(end));
    let early = e
        .handle(
            Timestamp::from_millis(end.millis() - 1),
            Event::Timeout { facts: Vec::new() },
        )
        .unwrap();
    assert_eq!(
        early,
        Outcome::default(),
        "nothing is due a millisecond early"
    );
    let out = e.handle(end, Event::Timeout { facts: Vec::new() }).unwrap();
    assert_eq!(
        out.decisions.iter().map(|d| d.kind).collect::<Vec<_>>(),
        vec![DecisionKind::Aborted]
    );
    assert!(out.decisions[0].reason.contains("for 45s"), "{out:?}");
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn every_kind_of_evidence_ends_the_rollout_by_timeouts_alone() {
    // healthy, slow, erroring, a bit slower (gate fails → max_hold), too quiet (max_inconclusive)
    for (what, s, end) in [
        ("healthy", stats(200, 0, 20), "promoted"),
        ("slow", stats(200, 0, 900), "aborted"),
        ("erroring", stats(200, 10, 20), "aborted"),
        ("a bit slower", stats(200, 0, 40), "aborted"),
        ("quiet", stats(3, 0, 20), "aborted"),
    ] {
        let (mut e, _) = canary(s);
        run_timers(&mut e, 50);
        let p = phase(&e);
        assert!(
            p.name() == end || (end == "promoted" && p.kind() == PhaseKind::Done),
            "{what}: {p:?}"
        );
    }
}

#[test]
fn timers_wait_for_the_first_measurement_of_the_rollout() {
    let mut e = Engine::new("shop", spec());
    for (v, d) in [("v1", "sha-v1"), ("v2", "sha-v2")] {
        let deploy = Event::Deploy {
            release: Release::new(v, d),
            force: false,
            start_timeout: None,
        };
        e.handle(T0, deploy).unwrap();
        e.handle(T0, Event::Ready { digest: d.into() }).unwrap();
    }
    assert_eq!(e.poll_timeout(), None, "nothing to judge a step on yet");
    let late = T0.plus(Dur::from_secs(300).get());
    assert_eq!(
        e.handle(late, Event::Timeout { facts: Vec::new() })
            .unwrap(),
        Outcome::default()
    );
    assert!(matches!(phase(&e), Phase::Progressing { .. }));
}

/// Exports written before `Measured` had its name recorded it as `tick`; they still read.
#[test]
fn an_old_export_with_tick_events_still_reads() {
    let old = r#"{"at":1005000,"event":{"event":"tick","stats":{"stable":{"requests":2,"errors":0,"latency":{"runs":[10,2],"sum_micros":40000}},"canary":{"requests":0,"errors":0,"latency":{"runs":[],"sum_micros":0}}},"external":{}}}"#;
    let r: Recorded = serde_json::from_str(old).expect("an old tick event reads");
    assert!(matches!(r.event, Event::Measured { .. }), "{:?}", r.event);
    let back = serde_json::to_value(&r.event).unwrap();
    assert_eq!(back["event"], "measured");
}

/// A whole recording whose evaluations are `tick` events replays to the live decisions.
#[test]
fn an_old_recording_replays_to_the_same_decisions() {
    let mut live = Engine::new("shop", spec());
    let v1 = Event::Deploy {
        release: Release::new("v1", "sha-v1"),
        force: false,
        start_timeout: None,
    };
    live.handle(T0, v1).unwrap();
    live.handle(
        T0,
        Event::Ready {
            digest: "sha-v1".into(),
        },
    )
    .unwrap();
    let initial_state = live.state().clone();
    let mut events = vec![
        Recorded {
            at: T0,
            event: Event::Deploy {
                release: Release::new("v2", "sha-v2"),
                force: false,
                start_timeout: None,
            },
        },
        Recorded {
            at: T0,
            event: Event::Ready {
                digest: "sha-v2".into(),
            },
        },
    ];
    for i in 1..=20 {
        events.push(Recorded {
            at: T0.plus(Dur::from_secs(5 * i).get()),
            event: Event::Measured {
                stats: stats(200, 0, if i > 10 { 900 } else { 20 }),
                wider: Vec::new(),
                external: Default::default(),
            },
        });
    }
    let mut decisions = Vec::new();
    for r in &events {
        decisions.extend(live.handle(r.at, r.event.clone()).unwrap().decisions);
    }
    let rec = Recording {
        format: cutover_core::simulate::FORMAT.into(),
        service: "shop".into(),
        rollout: 2,
        initial_state,
        events,
        decisions,
    };
    let json = serde_json::to_string(&rec).unwrap();
    assert_eq!(json.matches(r#""event":"measured""#).count(), 20);
    let old = json.replace(r#""event":"measured""#, r#""event":"tick""#);
    let read: Recording = serde_json::from_str(&old).expect("an old recording reads");
    assert_eq!(read, rec);
    let replayed = replay(&read, &spec());
    assert_eq!(replayed.decisions, rec.decisions);
    assert_eq!(replayed.final_phase, "aborted");
}

/// v1 stable; v2 deployed at `T0` with a 20 s start timeout, not ready yet.
fn starting() -> Engine {
    let mut e = Engine::new("shop", spec());
    let v1 = Event::Deploy {
        release: Release::new("v1", "sha-v1"),
        force: false,
        start_timeout: Some(Dur::from_secs(20)),
    };
    e.handle(T0, v1).unwrap();
    e.handle(
        T0,
        Event::Ready {
            digest: "sha-v1".into(),
        },
    )
    .unwrap();
    let v2 = Event::Deploy {
        release: Release::new("v2", "sha-v2"),
        force: false,
        start_timeout: Some(Dur::from_secs(20)),
    };
    e.handle(T0, v2).unwrap();
    e
}

#[test]
fn a_canary_not_ready_within_start_timeout_is_aborted_with_the_facts() {
    let mut e = starting();
    let deadline = T0.plus(Dur::from_secs(20).get());
    assert_eq!(e.poll_timeout(), Some(deadline));
    let facts = vec![InstanceFacts {
        instance: "v2-0".into(),
        last_probe: Some("GET /ready → 503".into()),
        log: Some("/state/logs/v2-0.log".into()),
        ..InstanceFacts::default()
    }];
    let early = Timestamp::from_millis(deadline.millis() - 1);
    let out = e
        .handle(
            early,
            Event::Timeout {
                facts: facts.clone(),
            },
        )
        .unwrap();
    assert_eq!(
        out,
        Outcome::default(),
        "nothing is due a millisecond early"
    );
    let out = e.handle(deadline, Event::Timeout { facts }).unwrap();
    assert_eq!(out.decisions.len(), 1, "{out:?}");
    let d = &out.decisions[0];
    assert_eq!(d.kind, DecisionKind::Aborted);
    assert!(
        d.reason.starts_with(
            "v2 (sha-v2) aborted automatically: canary v2 could not start: not ready within app.start_timeout (20s); v2-0: last readiness probe GET /ready → 503; log: /state/logs/v2-0.log"
        ),
        "{}",
        d.reason
    );
    assert_eq!(d.numbers["facts"][0]["instance"], "v2-0");
    assert!(e.state().failed.contains_key("sha-v2"));
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn a_ready_canary_has_no_start_deadline() {
    let mut e = starting();
    e.handle(
        T0,
        Event::Ready {
            digest: "sha-v2".into(),
        },
    )
    .unwrap();
    assert_eq!(
        e.poll_timeout(),
        None,
        "no measurement yet, no start deadline"
    );
    let late = T0.plus(Dur::from_secs(60).get());
    let out = e
        .handle(late, Event::Timeout { facts: Vec::new() })
        .unwrap();
    assert_eq!(out, Outcome::default());
    assert_eq!(phase(&e).kind(), PhaseKind::Progressing);
}

#[test]
fn a_restarted_cutover_gives_a_starting_canary_the_whole_start_timeout_again() {
    let e = starting();
    let mut e = Engine::restore(e.spec().clone(), e.state().clone());
    let restarted = T0.plus(Dur::from_secs(15).get());
    e.handle(
        restarted,
        Event::Recover {
            alive: vec![],
            dead: vec![],
        },
    )
    .unwrap();
    assert_eq!(
        e.poll_timeout(),
        Some(restarted.plus(Dur::from_secs(20).get()))
    );
}
