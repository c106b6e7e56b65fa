//! DESIGN.md invariant 11 with a fake clock: only evidence changes a verdict. An inconclusive
//! evaluation neither starts nor clears a breach, and low traffic reaches a verdict by looking
//! further back (`max_lookback`), not by guessing.

use cutover_core::engine::{
    Decision, DecisionKind, Engine, Event, Outcome, Phase, PhaseKind, Release,
};
use cutover_core::lookback::Wider;
use cutover_core::spec::RolloutSpec;
use cutover_core::{Dur, Timestamp, TrackStats, WindowStats};
use proptest::prelude::*;

const SEC: u64 = 1000;

fn track(n: u64, errors: u64, latency_ms: u64) -> TrackStats {
    TrackStats::uniform(n, errors, latency_ms)
}

/// What a tick's window shows, in the vocabulary of the scenarios.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Window {
    Healthy,
    /// p99 900 ms: breaches `p99-over-800ms` and fails the latency gate.
    Slow,
    /// 5 % errors: breaches `error-budget-fast-burn`.
    Erroring,
    /// 40 ms against 20 ms: fails the latency gate only.
    ABitSlower,
    /// 3 canary requests at 900 ms: inconclusive for every rule.
    Quiet,
}

impl Window {
    fn stats(self) -> WindowStats {
        let stable = track(1000, 0, 20);
        let canary = match self {
            Window::Healthy => track(200, 0, 20),
            Window::Slow => track(200, 0, 900),
            Window::Erroring => track(200, 10, 20),
            Window::ABitSlower => track(200, 0, 40),
            Window::Quiet => track(3, 0, 900),
        };
        WindowStats { stable, canary }
    }
}

struct Sim {
    engine: Engine,
    now: Timestamp,
    decisions: Vec<Decision>,
    outcomes: Vec<(Timestamp, Outcome)>,
}

impl Sim {
    /// v1 is stable; v2 was deployed and is ready (takes its first weight) at `now`.
    fn rolling(spec: RolloutSpec) -> Sim {
        let mut s = Sim {
            engine: Engine::new("shop", spec),
            now: Timestamp::from_millis(1_000_000),
            decisions: Vec::new(),
            outcomes: Vec::new(),
        };
        for (release, digest) in [("v1", "sha-v1"), ("v2", "sha-v2")] {
            s.ok(Event::Deploy {
                release: Release::new(release, digest),
                force: false,
                start_timeout: None,
            });
            s.ok(Event::Ready {
                digest: digest.into(),
            });
        }
        s
    }
    fn ok(&mut self, e: Event) {
        let out = self.engine.handle(self.now, e).expect("event accepted");
        self.decisions.extend(out.decisions.iter().cloned());
        self.outcomes.push((self.now, out));
    }
    fn tick_at(&mut self, millis: u64, stats: WindowStats, wider: Vec<Wider>) {
        self.now = Timestamp::from_millis(millis);
        self.ok(Event::Measured {
            stats,
            wider,
            external: Default::default(),
        });
    }
    fn phase(&self) -> Phase {
        self.engine.state().rollout.as_ref().unwrap().phase.clone()
    }
    fn first(&self, kind: DecisionKind) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.kind == kind)
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        step_interval: Dur::from_secs(90),
        interval: Dur::from_secs(5),
        ..RolloutSpec::default()
    }
}

/// The scenario: a slow canary whose traffic comes and goes. Before, every thin
/// window cleared the breach and it was never aborted.
#[test]
fn thin_windows_neither_clear_nor_start_a_breach() {
    let mut s = Sim::rolling(spec());
    let t0 = s.now.millis();
    s.tick_at(t0 + 5 * SEC, Window::Slow.stats(), vec![]);
    assert_eq!(
        s.decisions.last().unwrap().kind,
        DecisionKind::BreachStarted
    );
    // Thin windows for 40 s: the breach stands, nothing aborts on them.
    for i in 2..=9 {
        s.tick_at(t0 + i * 5 * SEC, Window::Quiet.stats(), vec![]);
        assert_eq!(s.phase().kind(), PhaseKind::Progressing);
    }
    assert!(s.first(DecisionKind::BreachCleared).is_none());
    // The next conclusive window is still slow: 45 s after the breach started, it aborts.
    s.tick_at(t0 + 50 * SEC, Window::Slow.stats(), vec![]);
    let Phase::Aborted { reason, .. } = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert!(reason.contains("p99-over-800ms"), "{reason}");
    assert!(reason.contains("for 45s"), "{reason}");

    // Thin windows do not start a breach either: a quiet canary at 900 ms is noise.
    let mut s = Sim::rolling(spec());
    for i in 1..=20 {
        s.tick_at(t0 + i * 5 * SEC, Window::Quiet.stats(), vec![]);
    }
    assert!(s.first(DecisionKind::BreachStarted).is_none());
    // Only a conclusive clean window clears a breach.
    let mut s = Sim::rolling(spec());
    s.tick_at(t0 + 5 * SEC, Window::Slow.stats(), vec![]);
    s.tick_at(t0 + 10 * SEC, Window::Quiet.stats(), vec![]);
    s.tick_at(t0 + 15 * SEC, Window::Healthy.stats(), vec![]);
    let cleared = s.first(DecisionKind::BreachCleared).expect("cleared");
    assert_eq!(cleared.at.millis(), t0 + 15 * SEC);
}

/// The decisions that are evidence-driven, with their times: everything but `hold` (whose
/// reason names the inconclusive rule) and the evaluation bookkeeping.
fn verdicts(s: &Sim) -> Vec<(u64, DecisionKind)> {
    s.decisions
        .iter()
        .filter(|d| d.kind != DecisionKind::Hold)
        .map(|d| (d.at.millis(), d.kind))
        .collect()
}

fn actions(s: &Sim) -> Vec<(u64, String)> {
    s.outcomes
        .iter()
        .flat_map(|(t, o)| {
            o.actions
                .iter()
                .map(move |a| (t.millis(), format!("{a:?}")))
        })
        .collect()
}

fn conclusive() -> impl Strategy<Value = Window> {
    prop_oneof![
        3 => Just(Window::Healthy),
        2 => Just(Window::Slow),
        1 => Just(Window::Erroring),
        2 => Just(Window::ABitSlower),
    ]
}

proptest! {
    /// Inserting inconclusive evaluations anywhere into a sequence never changes when a
    /// breach starts or clears, when the rollout advances or aborts, nor what it routes.
    #[test]
    fn inconclusive_evaluations_change_no_verdict(
        seq in proptest::collection::vec((conclusive(), 0usize..3), 1..80)
    ) {
        let run = |insert: bool| {
            let mut s = Sim::rolling(spec());
            let t0 = s.now.millis();
            for (i, (w, extra)) in seq.iter().enumerate() {
                let t = t0 + (i as u64 + 1) * 5 * SEC;
                if insert {
                    // `extra` thin windows in the interval before this conclusive one.
                    for k in 0..*extra {
                        s.tick_at(t - 4 * SEC + k as u64 * SEC, Window::Quiet.stats(), vec![]);
                    }
                }
                s.tick_at(t, w.stats(), vec![]);
            }
            s
        };
        let plain = run(false);
        let thinned = run(true);
        prop_assert_eq!(verdicts(&plain), verdicts(&thinned));
        prop_assert_eq!(actions(&plain), actions(&thinned));
    }
}

/// Stats of `secs` seconds of traffic at these rates: what the proxy would measure over a
/// window of that length.
fn traffic(secs: f64, canary_rps: f64, stable_rps: f64, latency_ms: u64) -> WindowStats {
    WindowStats {
        stable: track((stable_rps * secs) as u64, 0, 20),
        canary: track((canary_rps * secs) as u64, 0, latency_ms),
    }
}

/// Runs a rollout at `total` req/s (split by the canary's weight) with the canary answering in
/// `latency_ms`, ticking every interval with the look-backs the engine asks for, until it ends
/// or `limit` seconds pass. Returns the simulation.
fn low_traffic(spec: RolloutSpec, total: f64, latency_ms: u64, limit: u64) -> Sim {
    let mut s = Sim::rolling(spec.clone());
    let t0 = s.now.millis();
    let interval = spec.interval.get().as_millis() as u64;
    let mut t = t0;
    // What the canary received since it first took traffic: its weight changes per step.
    let mut canary_history: Vec<(u64, f64)> = Vec::new(); // (at, canary rps) per interval
    while t < t0 + limit * SEC {
        let weight = s
            .engine
            .state()
            .rollout
            .as_ref()
            .map_or(0.0, |r| r.weight.percent() / 100.0);
        canary_history.push((t, total * weight));
        t += interval;
        s.now = Timestamp::from_millis(t);
        let measure = |secs: f64| {
            // Sum the canary's traffic over the last `secs`, interval by interval.
            let from = t.saturating_sub((secs * 1000.0) as u64);
            let canary: f64 = canary_history
                .iter()
                .filter(|(at, _)| *at >= from)
                .map(|(_, rps)| rps * interval as f64 / 1000.0)
                .sum();
            let mut w = traffic(secs, 0.0, total * (1.0 - weight), latency_ms);
            w.canary = track(canary.round() as u64, 0, latency_ms);
            w
        };
        let base = measure(spec.window.get().as_secs_f64());
        let wider = s
            .engine
            .lookback_windows(s.now)
            .into_iter()
            .map(|d| Wider {
                window: d,
                stats: measure(d.get().as_secs_f64()),
            })
            .collect();
        s.tick_at(t, base, wider);
        if !s.phase().is_active() {
            break;
        }
    }
    s
}

/// 20 req/s in total, 2 % to the canary (0.4 req/s): a window of 30 s holds 12 of its
/// requests, far below `min_samples` 50. Looking back reaches 50 after 125 s.
#[test]
fn a_slow_canary_at_low_traffic_is_aborted_by_looking_back() {
    let s = low_traffic(spec(), 20.0, 1200, 900);
    let started = s
        .first(DecisionKind::BreachStarted)
        .expect("breach started");
    // The first look-back with 50 canary requests: 125 s after the canary took traffic.
    let since = s.first(DecisionKind::Ready).unwrap().at;
    let after = started.at.since(since).as_secs();
    assert!((125..=130).contains(&after), "breach after {after}s");
    assert!(
        started.reason.contains("over the last"),
        "{}",
        started.reason
    );
    assert!(started.numbers["window"].is_string(), "{}", started.numbers);
    let aborted = s.first(DecisionKind::Aborted).expect("aborted");
    // Bound: min_samples / canary rate (125 s) + one interval + for (45 s).
    let took = aborted.at.since(since).as_secs();
    assert!(took <= 125 + 5 + 45, "aborted after {took}s");
    assert!(
        aborted.reason.contains("p99-over-800ms"),
        "{}",
        aborted.reason
    );
    assert!(s.first(DecisionKind::BreachCleared).is_none());
}

#[test]
fn a_healthy_canary_at_low_traffic_is_promoted_and_never_aborted() {
    let s = low_traffic(spec(), 20.0, 20, 3600);
    assert!(
        matches!(s.phase(), Phase::Promoted { .. }),
        "{:?}: {:#?}",
        s.phase(),
        s.decisions
    );
    assert!(s.first(DecisionKind::Aborted).is_none());
    assert!(s.first(DecisionKind::BreachStarted).is_none());
    // The first step could not be judged at its end (36 canary requests in 90 s) and held
    // until its own traffic sufficed: gates never use an earlier weight's traffic.
    let advance = s.first(DecisionKind::Advance).unwrap();
    let since = s.first(DecisionKind::Ready).unwrap().at;
    let after = advance.at.since(since).as_secs();
    assert!((125..=130).contains(&after), "advanced after {after}s");
}

/// Without enough traffic even over `max_lookback`, the rollout is not judged on a guess: it
/// holds, then `max_inconclusive` aborts it, recorded as such.
#[test]
fn too_little_traffic_even_looking_back_is_aborted_by_max_inconclusive() {
    let spec = RolloutSpec {
        max_lookback: Dur::from_secs(60),
        max_inconclusive: Dur::from_secs(120),
        ..spec()
    };
    let s = low_traffic(spec, 20.0, 1200, 900);
    assert!(s.first(DecisionKind::BreachStarted).is_none());
    let aborted = s.first(DecisionKind::Aborted).expect("aborted");
    assert!(
        aborted.reason.contains("max_inconclusive 2m"),
        "{}",
        aborted.reason
    );
    assert!(
        aborted.reason.contains("over the last 1m"),
        "{}",
        aborted.reason
    );
}
