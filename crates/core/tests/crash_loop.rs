//! A crash loop is one decision however often the shell reports it, until it ends.

use cutover_core::engine::{DecisionKind, Engine, Event, Release};
use cutover_core::spec::RolloutSpec;
use cutover_core::Timestamp;

fn crash(digest: &str) -> Event {
    Event::CrashLoop {
        digest: digest.into(),
        detail: "instance v1-0 restarted 5 times within 1m".into(),
        facts: Vec::new(),
    }
}

fn kinds(e: &mut Engine, t: u64, ev: Event) -> Vec<DecisionKind> {
    let out = e.handle(Timestamp::from_millis(t), ev).unwrap();
    out.decisions.iter().map(|d| d.kind).collect()
}

fn stable_v1() -> Engine {
    let mut e = Engine::new("shop", RolloutSpec::default());
    let deploy = Event::Deploy {
        release: Release::new("v1", "a"),
        force: false,
        start_timeout: None,
    };
    e.handle(Timestamp::from_millis(1000), deploy).unwrap();
    e.handle(
        Timestamp::from_millis(1000),
        Event::Ready { digest: "a".into() },
    )
    .unwrap();
    e
}

#[test]
fn a_stable_crash_loop_is_decided_once_until_it_ends() {
    let mut e = stable_v1();
    assert_eq!(
        kinds(&mut e, 2000, crash("a")),
        vec![DecisionKind::CrashLoop]
    );
    assert!(e.crash_looping("a"));
    for t in [3000, 4000] {
        assert_eq!(
            kinds(&mut e, t, crash("a")),
            vec![],
            "reported again at {t}"
        );
    }
    let ended = Event::CrashLoopEnded { digest: "a".into() };
    assert_eq!(kinds(&mut e, 5000, ended), vec![]);
    assert!(!e.crash_looping("a"));
    assert_eq!(
        kinds(&mut e, 6000, crash("a")),
        vec![DecisionKind::CrashLoop]
    );
}

#[test]
fn a_crash_looping_canary_is_aborted_once() {
    let mut e = stable_v1();
    let deploy = Event::Deploy {
        release: Release::new("v2", "b"),
        force: false,
        start_timeout: None,
    };
    e.handle(Timestamp::from_millis(2000), deploy).unwrap();
    e.handle(
        Timestamp::from_millis(2000),
        Event::Ready { digest: "b".into() },
    )
    .unwrap();
    assert_eq!(kinds(&mut e, 3000, crash("b")), vec![DecisionKind::Aborted]);
    assert_eq!(kinds(&mut e, 4000, crash("b")), vec![]);
    // Persisted with the state, so a replay (and a restarted cutover) dedups the same way.
    let json = serde_json::to_value(e.state()).unwrap();
    assert_eq!(json["crash_looping"], serde_json::json!(["b"]));
}
