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
    let store = Store::open(&db).map_err(|e| CommandError::Other(e.into()))?;
    let id = match rollout {
        Some(id) => id,
        None => store
            .rollouts(1)
            .map_err(|e| CommandError::Other(e.into()))?
            .first()
            .map(|r| r.id)
            .ok_or_else(|| CommandError::Usage("there are no rollouts to export yet".into()))?,
    };
    let events = store
        .events(id)
        .map_err(|e| CommandError::Other(e.into()))?;
    let Some(first) = events.first() else {
        return Err(CommandError::Usage(format!(
            "rollout {id} has no recorded events (it is not in this store, or predates recording)"
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
            numbers: d.numbers,
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
    let json = serde_json::to_string_pretty(&rec).map_err(|e| CommandError::Other(e.into()))?;
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
        None => println!("{json}"),
    }
    Ok(())
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
    if rec.format != simulate::FORMAT {
        return Err(CommandError::Usage(format!(
            "{} has format {:?}; this cutover reads {:?}",
            file.display(),
            rec.format,
            simulate::FORMAT
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

/// The printed timeline: the simulated decisions, then how they compare with the live ones.
pub fn timeline(rec: &Recording, replay: &simulate::Replay, config_path: &Path) -> String {
    let mut o = String::new();
    let start = rec.events.first().map_or(Timestamp(0), |e| e.at);
    let end = rec.events.last().map_or(start, |e| e.at);
    let _ = writeln!(
        o,
        "simulating rollout {} of {} ({} events over {}) with the policy in {}\n",
        rec.rollout,
        rec.service,
        rec.events.len(),
        render::span(start, end),
        config_path.display()
    );
    for d in &replay.decisions {
        let _ = writeln!(
            o,
            "  +{:<9} {:<17} {}",
            render::span(start, d.at),
            d.kind.as_str(),
            d.reason
        );
    }
    for (at, why) in &replay.refused {
        let _ = writeln!(
            o,
            "  +{:<9} {:<17} {}",
            render::span(start, *at),
            "(refused)",
            why
        );
    }
    let show = |d: Option<&Decision>| {
        d.map_or(
            "still in progress when the recording ends".to_string(),
            |d| format!("{} at +{}", d.kind.as_str(), render::span(start, d.at)),
        )
    };
    let live = outcome(&rec.decisions);
    let sim = outcome(&replay.decisions);
    if rec.decisions.is_empty() {
        let _ = writeln!(
            o,
            "\nsimulated: {} (phase {})",
            show(sim),
            replay.final_phase
        );
        let _ = writeln!(o, "replayed from Prometheus: no live decisions to compare");
        return o;
    }
    let _ = writeln!(o, "\nlive:      {}", show(live));
    let _ = writeln!(o, "simulated: {} (phase {})", show(sim), replay.final_phase);
    let same = replay.decisions.len() == rec.decisions.len()
        && replay
            .decisions
            .iter()
            .zip(&rec.decisions)
            .all(|(a, b)| a.kind == b.kind && a.at == b.at && b.reason.starts_with(&a.reason));
    let _ = writeln!(
        o,
        "{}",
        if same {
            "the simulated decisions are the live ones"
        } else {
            "the simulated decisions differ from the live ones"
        }
    );
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
/// evaluated on Prometheus. Latency is as precise as the exposed buckets (a quantile is
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
    let vars = crate::rules::vars(&service, &canary, Some(&stable));
    let rules = crate::rules::rules(c);
    let step = c.rollout.interval.get().as_millis().max(1) as i64;
    let mut t = src.from_ms + step;
    while t <= src.to_ms {
        let track = |version: &str| {
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
            stable: track(&src.stable).await?,
            canary: track(&src.canary).await?,
        };
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
            event: Event::Tick { stats, external },
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
