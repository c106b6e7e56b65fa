//! `cutover export` and `cutover simulate`: a rollout's recording out of the state store, and a
//! replay of it through the engine with the policy of a config — to tune gates and abort rules
//! on real measurements before trusting them.

use crate::commands::CommandError;
use crate::config;
use crate::render;
use cutover_core::engine::{Decision, Event, State};
use cutover_core::simulate::{self, Recorded, Recording};
use cutover_core::Timestamp;
use cutover_store::Store;
use std::fmt::Write;
use std::path::Path;

/// Reads a rollout's recording from the state store of the config at `config_path`.
pub fn recording(config_path: &Path, rollout: Option<i64>) -> Result<Recording, CommandError> {
    let loaded = config::load(config_path)?;
    let db = loaded.state_dir().join("cutover.db");
    if !db.exists() {
        return Err(CommandError::Usage(format!(
            "no state store at {}: has `cutover run -c {}` run yet?",
            db.display(),
            config_path.display()
        )));
    }
    let store = Store::open_read_only(&db).map_err(|e| CommandError::Other(e.into()))?;
    recording_from_store(&store, rollout)
}

/// A rollout's recording (the last one's without `rollout`) out of an open state store: what
/// `cutover export` writes and the dashboard's replay charts.
pub fn recording_from_store(
    store: &Store,
    rollout: Option<i64>,
) -> Result<Recording, CommandError> {
    let id = match rollout {
        Some(id) => {
            store
                .rollout(id)
                .map_err(|e| CommandError::Other(e.into()))?
                .ok_or_else(|| {
                    CommandError::NotFound(format!("no rollout {id}; `cutover history` lists them"))
                })?
                .id
        }
        None => store
            .rollouts(1)
            .map_err(|e| CommandError::Other(e.into()))?
            .first()
            .map(|r| r.id)
            .ok_or_else(|| CommandError::NotFound("there are no rollouts to export yet".into()))?,
    };
    let events = store
        .events(id)
        .map_err(|e| CommandError::Other(e.into()))?;
    let Some(first) = events.first() else {
        return Err(CommandError::NotFound(format!(
            "rollout {id} has no recorded events (it ran before this state store recorded \
             them), so there is nothing to export"
        )));
    };
    let initial_state: State = first
        .state_before
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| CommandError::Other(anyhow::anyhow!("bad recorded state: {e}")))?
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "rollout {id}'s recording does not start with its deploy"
            ))
        })?;
    let mut recorded = Vec::with_capacity(events.len());
    for e in events {
        let event: Event = serde_json::from_value(e.event)
            .map_err(|err| CommandError::Other(anyhow::anyhow!("bad recorded event: {err}")))?;
        recorded.push(Recorded {
            at: Timestamp(e.at.max(0) as u64),
            event,
        });
    }
    // The live decisions are in the recording to be compared with a replay's, which looks at
    // their time, kind and reason; their numbers (a window summary each, the bulk of a long
    // rollout's export) stay in `cutover history --json`.
    let mut decisions = Vec::new();
    for d in store
        .decisions(Some(id), 100_000)
        .map_err(|e| CommandError::Other(e.into()))?
    {
        let kind =
            serde_json::from_value(serde_json::Value::String(d.kind.clone())).map_err(|e| {
                CommandError::Other(anyhow::anyhow!("bad decision kind {}: {e}", d.kind))
            })?;
        decisions.push(Decision {
            at: Timestamp(d.at.max(0) as u64),
            rollout: d.rollout_id.map(|r| r as u64),
            kind,
            reason: d.reason,
            numbers: serde_json::Value::Null,
        });
    }
    Ok(Recording {
        format: simulate::FORMAT.into(),
        service: initial_state.service.clone(),
        rollout: id as u64,
        initial_state,
        events: recorded,
        decisions,
    })
}

/// `cutover export`: writes the recording as JSON to `out` (or stdout).
pub fn export(
    config_path: &Path,
    rollout: Option<i64>,
    out: Option<&Path>,
) -> Result<(), CommandError> {
    let rec = recording(config_path, rollout)?;
    let json = to_json(&rec).map_err(|e| CommandError::Other(e.into()))?;
    match out {
        Some(p) => {
            std::fs::write(p, json)
                .map_err(|e| CommandError::Usage(format!("cannot write {}: {e}", p.display())))?;
            eprintln!(
                "rollout {} ({} events, {} decisions) written to {}",
                rec.rollout,
                rec.events.len(),
                rec.decisions.len(),
                p.display()
            );
        }
        None => crate::commands::emit(&json)?,
    }
    Ok(())
}

/// A recording as `cutover export` writes it: compact JSON, one event or decision per line, so
/// a long rollout stays small (pretty-printing put each histogram bucket on lines of its own)
/// and a diff of two exports or a `grep` still reads line by line.
pub fn to_json(rec: &Recording) -> serde_json::Result<String> {
    use serde_json::to_string;
    fn list<T: serde::Serialize>(o: &mut String, items: &[T]) -> serde_json::Result<()> {
        o.push('[');
        for (i, item) in items.iter().enumerate() {
            o.push_str(if i == 0 { "\n" } else { ",\n" });
            o.push_str(&to_string(item)?);
        }
        o.push_str("\n]");
        Ok(())
    }
    let mut o = format!(
        "{{\"format\":{},\"service\":{},\"rollout\":{},\n\"initial_state\":{},\n\"events\":",
        to_string(&rec.format)?,
        to_string(&rec.service)?,
        rec.rollout,
        to_string(&rec.initial_state)?
    );
    list(&mut o, &rec.events)?;
    o.push_str(",\n\"decisions\":");
    list(&mut o, &rec.decisions)?;
    o.push_str("}\n");
    Ok(o)
}

/// `cutover simulate`: replays a recording with the config's policy and prints the timeline.
pub fn simulate(config_path: &Path, file: &Path) -> Result<String, CommandError> {
    let loaded = config::load(config_path)?;
    let text = std::fs::read_to_string(file).map_err(|e| {
        CommandError::Usage(format!("cannot read recording {}: {e}", file.display()))
    })?;
    let rec: Recording = serde_json::from_str(&text).map_err(|e| {
        CommandError::Usage(format!(
            "{} is not a cutover recording ({e}); make one with `cutover export`",
            file.display()
        ))
    })?;
    if !simulate::READS.contains(&rec.format.as_str()) {
        return Err(CommandError::Usage(format!(
            "{} has format {:?}; this cutover reads {}",
            file.display(),
            rec.format,
            simulate::READS.join(", ")
        )));
    }
    Ok(timeline(
        &rec,
        &simulate::replay(&rec, &loaded.config.rollout),
        config_path,
    ))
}

fn outcome(decisions: &[Decision]) -> Option<&Decision> {
    use cutover_core::engine::DecisionKind::*;
    decisions
        .iter()
        .find(|d| matches!(d.kind, Promoted | Aborted | RolledBack))
}

/// Whether a simulated decision is the live one: same time, same kind, and the same reason
/// (the live one may carry the operator's `--reason` after it).
fn same_decision(simulated: &Decision, live: &Decision) -> bool {
    simulated.kind == live.kind
        && simulated.at == live.at
        && live.reason.starts_with(&simulated.reason)
}

/// How the simulated decisions compare with the live ones *inside the recording* (a live
/// decision after its last event, such as the previous release let go an hour after the
/// promotion, had no measurements to be replayed on).
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison<'a> {
    /// No live decisions to compare with (a replay from Prometheus).
    NoLive,
    Same {
        compared: usize,
        after_the_recording: usize,
    },
    /// The first decision that differs, by position; `None` on the side that has no decision
    /// there.
    Differ {
        index: usize,
        live: Option<&'a Decision>,
        simulated: Option<&'a Decision>,
        after_the_recording: usize,
    },
}

/// Compares `replay`'s decisions with the live decisions of `rec` that fall inside it.
pub fn compare<'a>(rec: &'a Recording, replay: &'a simulate::Replay) -> Comparison<'a> {
    if rec.decisions.is_empty() {
        return Comparison::NoLive;
    }
    let start = rec.events.first().map_or(Timestamp(0), |e| e.at);
    let end = rec.events.last().map_or(start, |e| e.at);
    let live: Vec<&Decision> = rec
        .decisions
        .iter()
        .filter(|d| d.at >= start && d.at <= end)
        .collect();
    let after_the_recording = rec.decisions.len() - live.len();
    // The export holds the recorded rollout's decisions; a replayed deploy also lets go of
    // the release the previous rollout held, a decision of that rollout.
    let simulated: Vec<&Decision> = replay
        .decisions
        .iter()
        .filter(|d| d.rollout.is_none_or(|r| r == rec.rollout))
        .collect();
    let n = live.len().max(simulated.len());
    match (0..n).find(|&i| match (simulated.get(i), live.get(i)) {
        (Some(s), Some(l)) => !same_decision(s, l),
        _ => true,
    }) {
        None => Comparison::Same {
            compared: live.len(),
            after_the_recording,
        },
        Some(index) => Comparison::Differ {
            index,
            live: live.get(index).copied(),
            simulated: simulated.get(index).copied(),
            after_the_recording,
        },
    }
}

/// The printed timeline: the simulated decisions, then how they compare with the live ones.
pub fn timeline(rec: &Recording, replay: &simulate::Replay, config_path: &Path) -> String {
    let mut o = String::new();
    let start = rec.events.first().map_or(Timestamp(0), |e| e.at);
    let end = rec.events.last().map_or(start, |e| e.at);
    let _ = writeln!(
        o,
        "simulating rollout {} of {} ({} events over {}, {} to {}) with the policy in {}\n",
        rec.rollout,
        rec.service,
        rec.events.len(),
        render::span(start, end),
        render::rfc3339(start),
        render::rfc3339(end),
        config_path.display()
    );
    let mut rows: Vec<render::Row<'_>> = replay
        .decisions
        .iter()
        .map(|d| render::Row {
            at: d.at,
            kind: d.kind.as_str(),
            reason: &d.reason,
        })
        .chain(replay.refused.iter().map(|(at, why)| render::Row {
            at: *at,
            kind: "(refused)",
            reason: why,
        }))
        .collect();
    rows.sort_by_key(|r| r.at);
    o.push_str(&render::timeline(&rows, start));
    let show = |d: Option<&Decision>| {
        d.map_or(
            "still in progress when the recording ends".to_string(),
            |d| format!("{} at +{}", d.kind.as_str(), render::span(start, d.at)),
        )
    };
    let sim = outcome(&replay.decisions);
    let line = |d: Option<&Decision>| {
        d.map_or("(no decision)".to_string(), |d| {
            format!(
                "{} +{} {} {}",
                render::rfc3339(d.at),
                render::span(start, d.at),
                d.kind.as_str(),
                d.reason
            )
        })
    };
    let not_compared = |n: usize| match n {
        0 => String::new(),
        1 => "; 1 live decision after the recording's end is not compared".to_string(),
        n => format!("; {n} live decisions after the recording's end are not compared"),
    };
    match compare(rec, replay) {
        Comparison::NoLive => {
            let _ = writeln!(
                o,
                "\nsimulated: {} (phase {})",
                show(sim),
                replay.final_phase
            );
            let _ = writeln!(o, "replayed from Prometheus: no live decisions to compare");
        }
        Comparison::Same {
            compared,
            after_the_recording,
        } => {
            let _ = writeln!(o, "\nlive:      {}", show(outcome(&rec.decisions)));
            let _ = writeln!(o, "simulated: {} (phase {})", show(sim), replay.final_phase);
            let _ = writeln!(
                o,
                "same decisions: the simulated decisions are the live ones ({compared} compared{})",
                not_compared(after_the_recording)
            );
        }
        Comparison::Differ {
            index,
            live,
            simulated,
            after_the_recording,
        } => {
            let _ = writeln!(o, "\nlive:      {}", show(outcome(&rec.decisions)));
            let _ = writeln!(o, "simulated: {} (phase {})", show(sim), replay.final_phase);
            let _ = writeln!(
                o,
                "the simulated decisions differ from the live ones, first at decision {}{}:",
                index + 1,
                not_compared(after_the_recording)
            );
            let _ = writeln!(o, "  live:      {}", line(live));
            let _ = writeln!(o, "  simulated: {}", line(simulated));
        }
    }
    o
}

/// Where the measurements of a Prometheus replay come from.
#[derive(Debug, Clone)]
pub struct FromPrometheus {
    pub url: String,
    pub stable: String,
    pub canary: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Parses `--from`/`--to`: Unix seconds, RFC 3339, or a duration ago (`15m` = 15 minutes ago).
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, CommandError> {
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1000.0) as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64));
    }
    if let Ok(d) = cutover_core::time::parse_duration(s.trim_start_matches('-')) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    Err(CommandError::Usage(format!("{s:?} is not a time (fix: Unix seconds, RFC 3339 like 2026-11-24T12:00:00Z, or a duration ago like 15m or 1h30m: {})", cutover_core::time::DURATION_GRAMMAR)))
}

/// Builds a recording from a Prometheus that scraped cutover: the canary's rollout is taken to
/// start at `from`; every `rollout.interval` the window statistics of both versions come from
/// `http_request_duration_seconds_bucket` and `http_requests_total`, and the PromQL rules are
/// evaluated on Prometheus; when a window holds fewer than `min_samples`, the look-backs of
/// `rollout.max_lookback` are queried as the live driver measures them (gates' look-backs
/// end on the ladder's rungs rather than exactly at their step's start). Latency is as precise as the exposed buckets (a quantile is
/// reported at its bucket's upper bound), so a replay from Prometheus approximates the live
/// decisions where one from an export reproduces them.
pub async fn from_prometheus(
    config_path: &Path,
    src: &FromPrometheus,
) -> Result<Recording, CommandError> {
    use cutover_core::engine::{Engine, Release};
    use cutover_core::stats::WindowStats;
    let loaded = config::load(config_path)?;
    let c = &loaded.config;
    if src.to_ms <= src.from_ms {
        return Err(CommandError::Usage("--to must be after --from".into()));
    }
    let client =
        cutover_prometheus::PrometheusClient::new(&src.url, std::time::Duration::from_secs(10), 2)
            .map_err(|e| CommandError::Usage(e.to_string()))?;
    let service = c.service.name.clone();
    let (stable, canary) = (
        Release::new(&src.stable, "prometheus"),
        Release::new(&src.canary, "prometheus-canary"),
    );
    // The state before the canary's deploy: the stable release serving alone.
    let mut engine = Engine::new(&service, c.rollout.clone());
    let t0 = Timestamp(src.from_ms.max(1) as u64);
    engine
        .handle(
            t0,
            Event::Deploy {
                release: stable.clone(),
                force: false,
                start_timeout: None,
            },
        )
        .map_err(|e| CommandError::Other(e.into()))?;
    engine
        .handle(
            t0,
            Event::Ready {
                digest: stable.digest.clone(),
            },
        )
        .map_err(|e| CommandError::Other(e.into()))?;
    let initial_state = engine.state().clone();
    let mut events = vec![
        Recorded {
            at: t0,
            event: Event::Deploy {
                release: canary.clone(),
                force: true,
                start_timeout: None,
            },
        },
        Recorded {
            at: t0,
            event: Event::Ready {
                digest: canary.digest.clone(),
            },
        },
    ];
    let window = c.rollout.window.get().as_millis();
    let min_samples = c.rollout.min_samples;
    let vars = crate::rules::vars(&service, &canary, Some(&stable));
    let rules = crate::rules::rules(c);
    let step = c.rollout.interval.get().as_millis().max(1) as i64;
    let mut t = src.from_ms + step;
    while t <= src.to_ms {
        let track = |version: &str, window: u128| {
            let client = client.clone();
            let service = service.clone();
            let version = version.to_string();
            async move {
                let sel = format!("service=\"{service}\",version=\"{version}\"");
                let buckets = client
                    .query(&format!("sum by (le) (increase(http_request_duration_seconds_bucket{{{sel}}}[{window}ms]))"), t)
                    .await
                    .map_err(|e| CommandError::Other(e.into()))?;
                let errors = client
                    .query(
                        &format!(
                            "sum(increase(http_requests_total{{{sel},code=~\"5..\"}}[{window}ms]))"
                        ),
                        t,
                    )
                    .await
                    .map_err(|e| CommandError::Other(e.into()))?;
                Ok::<_, CommandError>(to_track(&buckets, &errors))
            }
        };
        let stats = WindowStats {
            stable: track(&src.stable, window).await?,
            canary: track(&src.canary, window).await?,
        };
        // The look-backs the live driver would measure (the canary took traffic at `from`),
        // shortest first until one holds enough of both versions.
        let enough = |s: &WindowStats| cutover_core::lookback::enough(s, min_samples);
        let mut wider = Vec::new();
        let since = std::time::Duration::from_millis((t - src.from_ms).max(0) as u64);
        if !enough(&stats) {
            for d in cutover_core::lookback::ladder(c.rollout.window, c.rollout.max_lookback, since)
            {
                let ms = d.get().as_millis();
                let s = WindowStats {
                    stable: track(&src.stable, ms).await?,
                    canary: track(&src.canary, ms).await?,
                };
                let done = enough(&s);
                wider.push(cutover_core::lookback::Wider {
                    window: d,
                    stats: s,
                });
                if done {
                    break;
                }
            }
        }
        let mut external = std::collections::BTreeMap::new();
        for r in &rules {
            let ext = match cutover_promql::expand(&r.template, &vars)
                .map_err(|e| e.to_string())
                .and_then(|q| cutover_promql::Query::parse(&q).map_err(|e| e.to_string()))
            {
                Ok(q) => crate::rules::external(
                    q.text(),
                    client.eval_rule(&q, t).await.map_err(|e| e.to_string()),
                ),
                Err(e) => cutover_core::judge::External::NoData { detail: e },
            };
            external.insert(r.name.clone(), ext);
        }
        events.push(Recorded {
            at: Timestamp(t as u64),
            event: Event::Measured {
                stats,
                wider,
                external,
            },
        });
        t += step;
    }
    Ok(Recording {
        format: simulate::FORMAT.into(),
        service,
        rollout: engine.state().last_rollout_id + 1,
        initial_state,
        events,
        decisions: Vec::new(),
    })
}

/// One version's window from Prometheus answers: cumulative `le` buckets become histogram
/// counts at each bucket's upper bound; the `+Inf` bucket is the request count.
fn to_track(
    buckets: &cutover_promql::Value,
    errors: &cutover_promql::Value,
) -> cutover_core::TrackStats {
    use cutover_promql::Value;
    let mut bounds: Vec<(f64, f64)> = match buckets {
        Value::Vector(v) => v
            .iter()
            .filter_map(|s| {
                s.labels
                    .get("le")
                    .and_then(|le| le.parse::<f64>().ok())
                    .map(|le| (le, s.value))
            })
            .collect(),
        _ => Vec::new(),
    };
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut t = cutover_core::TrackStats::default();
    let mut below = 0.0;
    for (le, cumulative) in bounds {
        let n = (cumulative - below).max(0.0).round() as u64;
        below = below.max(cumulative);
        // The +Inf bucket's requests are recorded just past the largest finite bound.
        let micros = if le.is_finite() {
            (le * 1e6) as u64
        } else {
            20_000_000
        };
        if n > 0 {
            t.latency.record_n(micros, n);
        }
    }
    t.requests = below.round() as u64;
    t.errors = match errors {
        Value::Vector(v) => v.first().map_or(0, |s| s.value.max(0.0).round() as u64),
        Value::Scalar(x) => x.max(0.0).round() as u64,
        _ => 0,
    };
    t
}

/// `cutover simulate --prometheus ...`.
pub async fn simulate_prometheus(
    config_path: &Path,
    src: &FromPrometheus,
) -> Result<String, CommandError> {
    let loaded = config::load(config_path)?;
    let rec = from_prometheus(config_path, src).await?;
    Ok(timeline(
        &rec,
        &simulate::replay(&rec, &loaded.config.rollout),
        config_path,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::engine::{Engine, Release};
    use cutover_core::spec::RolloutSpec;
    use cutover_core::stats::{TrackStats, WindowStats};

    /// A live rollout of v2 (canary latency `canary_ms`) recorded as `cutover export` would,
    /// plus the decision that lets v1 go long after the recording ends.
    fn live(canary_ms: u64) -> (Recording, RolloutSpec) {
        let spec = RolloutSpec {
            step_interval: cutover_core::Dur::from_secs(10),
            ..RolloutSpec::default()
        };
        let mut e = Engine::new("shop", spec.clone());
        let t0 = Timestamp(1_795_521_600_000);
        let first = |digest: &str| Event::Deploy {
            release: Release::new("v1", digest),
            force: false,
            start_timeout: None,
        };
        e.handle(t0, first("a")).unwrap();
        e.handle(t0, Event::Ready { digest: "a".into() }).unwrap();
        let initial_state = e.state().clone();
        let mut events = vec![
            Recorded {
                at: t0,
                event: Event::Deploy {
                    release: Release::new("v2", "b"),
                    force: false,
                    start_timeout: None,
                },
            },
            Recorded {
                at: t0,
                event: Event::Ready { digest: "b".into() },
            },
        ];
        for i in 1..=30 {
            events.push(Recorded {
                at: t0.plus(std::time::Duration::from_secs(5 * i)),
                event: Event::Measured {
                    stats: WindowStats {
                        stable: TrackStats::uniform(500, 0, 20),
                        canary: TrackStats::uniform(100, 0, canary_ms),
                    },
                    wider: Vec::new(),
                    external: Default::default(),
                },
            });
        }
        let mut decisions = Vec::new();
        let mut recorded = Vec::new();
        for r in events {
            if e.state()
                .rollout
                .as_ref()
                .is_some_and(|r| r.id == 2 && !r.phase.is_active())
            {
                break;
            }
            decisions.extend(e.handle(r.at, r.event.clone()).unwrap().decisions);
            recorded.push(r);
        }
        let end = recorded.last().unwrap().at;
        decisions.push(Decision {
            at: end.plus(std::time::Duration::from_secs(3600)),
            rollout: Some(2),
            kind: cutover_core::engine::DecisionKind::PreviousReleased,
            reason: "hold_previous expired".into(),
            numbers: serde_json::Value::Null,
        });
        let rec = Recording {
            format: simulate::FORMAT.into(),
            service: "shop".into(),
            rollout: 2,
            initial_state,
            events: recorded,
            decisions,
        };
        (rec, spec)
    }

    #[test]
    fn the_same_policy_gives_the_same_decisions_inside_the_recording() {
        let (rec, spec) = live(20);
        let replay = simulate::replay(&rec, &spec);
        let n = rec.decisions.len() - 1;
        assert_eq!(
            compare(&rec, &replay),
            Comparison::Same {
                compared: n,
                after_the_recording: 1
            }
        );
        let text = timeline(&rec, &replay, Path::new("cutover.toml"));
        assert!(
            text.contains(&format!("same decisions: the simulated decisions are the live ones ({n} compared; 1 live decision after the recording's end is not compared)")),
            "{text}"
        );
    }

    #[test]
    fn another_policy_shows_the_first_divergence_with_both_sides() {
        let (rec, spec) = live(900);
        let mut lenient = spec.clone();
        lenient.aborts.clear();
        lenient.gates.clear();
        let replay = simulate::replay(&rec, &lenient);
        let Comparison::Differ {
            index,
            live,
            simulated,
            ..
        } = compare(&rec, &replay)
        else {
            panic!("the lenient policy should decide otherwise");
        };
        // deploy and ready are the same; the first evaluation differs.
        assert_eq!(index, 2);
        let (live, simulated) = (live.unwrap(), simulated.unwrap());
        assert_ne!(live.kind, simulated.kind);
        let text = timeline(&rec, &replay, Path::new("cutover.toml"));
        assert!(
            text.contains("differ from the live ones, first at decision 3")
                && text.contains(&format!("  live:      {}", render::rfc3339(live.at)))
                && text.contains(&live.reason)
                && text.contains(&simulated.reason),
            "{text}"
        );
    }

    #[test]
    fn an_export_is_compact_and_reads_back_whole() {
        let (rec, _) = live(900);
        let json = to_json(&rec).unwrap();
        assert_eq!(serde_json::from_str::<Recording>(&json).unwrap(), rec);
        // One event or decision per line, nothing pretty-printed inside them.
        assert_eq!(
            json.lines().count(),
            6 + rec.events.len() + rec.decisions.len(),
            "{json}"
        );
        let pretty = serde_json::to_string_pretty(&rec).unwrap();
        assert!(
            json.len() * 2 < pretty.len(),
            "{} vs {}",
            json.len(),
            pretty.len()
        );
    }
}
