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
