//! `cutover report` (docs/report.md), and the facts the runtime records for it: the commit a
//! deploy names, and each change of "the service has a ready instance".
//!
//! The figures are computed by `cutover_core::report`; this module only reads the store, turns
//! the CLI's times into milliseconds and prints.

use crate::commands::CommandError;
use crate::config;
use crate::render::rfc3339;
use cutover_admin::{ApiError, DeployRequest};
use cutover_core::report::{self, DeployFacts, Durations, Report, ServingFact};
use cutover_core::{Dur, Timestamp};
use cutover_store::Store;
use cutover_supervisor::{Fleet, InstanceState};
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// Whether any instance of any version is ready: the service can answer.
pub fn serving(fleet: &Fleet) -> bool {
    fleet
        .values()
        .any(|vf| vf.instances.iter().any(|i| i.state == InstanceState::Ready))
}

/// Records a change of "an instance is ready" for `service` in the store, if it is one: `last`
/// is what this cutover last recorded (`None` after a start: then the store's last record
/// counts, so after a crash of cutover the service counts as down from the first fleet report
/// without a ready instance). Not being ready before anything ever served is no downtime.
pub fn record_serving(
    store: &mut Store,
    service: &str,
    last: &mut Option<bool>,
    serving: bool,
    planned: bool,
    now_ms: u64,
) {
    let was = match *last {
        Some(s) => Some(s),
        None => store
            .last_serving(service)
            .ok()
            .flatten()
            .map(|r| r.serving),
    };
    if was == Some(serving) || (was.is_none() && !serving) {
        *last = was;
        return;
    }
    let record = cutover_store::ServingRecord {
        service: service.to_string(),
        at: now_ms as i64,
        serving,
        planned,
    };
    match store.record_serving(&record) {
        Ok(()) => *last = Some(serving),
        Err(e) => tracing::error!(error = %e, "could not record a serving change"),
    }
}

/// The deploy's `commit` and `committed_at` (milliseconds), checked before anything is applied.
pub fn commit_of(req: &DeployRequest) -> Result<Option<(String, i64)>, ApiError> {
    let (Some(commit), Some(at)) = (&req.commit, &req.committed_at) else {
        return Ok(None);
    };
    let t = humantime::parse_rfc3339_weak(at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "committed_at: {at:?} is not an RFC 3339 time (fix: write it like \
                 2026-12-04T10:00:00Z, e.g. from `git show -s --format=%cI {commit}`)"
            ))
        })?;
    Ok(Some((commit.clone(), t.as_millis() as i64)))
}

/// Reads the history of the store at `db` and computes the report of `[since, until)`.
pub fn compute(db: &Path, since: i64, until: i64) -> Result<Report, CommandError> {
    let other = |e: cutover_store::StoreError| CommandError::Other(e.into());
    let store = Store::open(db).map_err(other)?;
    let deploys: Vec<DeployFacts> = store
        .deploys(until)
        .map_err(other)?
        .into_iter()
        .map(|d| DeployFacts {
            id: d.id,
            service: d.service,
            started_at: d.started_at,
            ended_at: d.ended_at,
            outcome: d.outcome,
            committed_at: d.committed_at,
        })
        .collect();
    let facts: Vec<ServingFact> = store
        .serving_facts(until)
        .map_err(other)?
        .into_iter()
        .map(|f| ServingFact {
            service: f.service,
            at: f.at,
            serving: f.serving,
            planned: f.planned,
        })
        .collect();
    report::report(since, until, &deploys, &facts).map_err(|e| CommandError::Usage(e.to_string()))
}

/// `cutover report`: reads the state store of the config at `config_path` (no running cutover
/// needed) and prints the figures as a table, or as JSON.
pub fn run(
    config_path: &Path,
    since: Option<&str>,
    until: Option<&str>,
    json: bool,
    now_ms: i64,
) -> Result<String, CommandError> {
    let loaded = config::load(config_path)?;
    let db = loaded.state_dir().join(crate::secure::DB_FILE);
    if !db.exists() {
        return Err(CommandError::Usage(format!(
            "no state store at {}: has `cutover run -c {}` run yet?",
            db.display(),
            config_path.display()
        )));
    }
    let until = match until {
        Some(t) => crate::simulate::parse_time(t, now_ms)?,
        None => now_ms,
    };
    let since = match since {
        Some(t) => crate::simulate::parse_time(t, now_ms)?,
        None => until - 30 * 86_400_000,
    };
    let r = compute(&db, since, until)?;
    Ok(if json { to_json(&r) } else { table(&r) })
}

fn at(ms: i64) -> String {
    rfc3339(Timestamp(ms.max(0) as u64))
}

/// The report as JSON: the core's document with every instant as RFC 3339.
pub fn to_json(r: &Report) -> String {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["since"] = Value::String(at(r.since));
    v["until"] = Value::String(at(r.until));
    if let Some(services) = v["services"].as_array_mut() {
        for s in services {
            if let Some(periods) = s["downtime"].as_array_mut() {
                for p in periods {
                    for k in ["from", "to"] {
                        if let Some(ms) = p[k].as_i64() {
                            p[k] = Value::String(at(ms));
                        }
                    }
                }
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

fn dur(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |ms| {
        Dur(Duration::from_millis(ms.max(0) as u64)).to_string()
    })
}

fn durations(d: &Durations) -> String {
    if d.count == 0 {
        return "-".into();
    }
    format!(
        "median {}, mean {}, max {} (n={})",
        dur(d.median_ms),
        dur(d.mean_ms),
        dur(d.max_ms),
        d.count
    )
}

/// The report as a table, one block per service.
pub fn table(r: &Report) -> String {
    let mut o = format!("report from {} to {}\n", at(r.since), at(r.until));
    if r.services.is_empty() {
        o.push_str("no rollouts and no serving changes recorded in this state store\n");
    }
    for s in &r.services {
        let rate = s
            .change_failure_rate
            .map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
        let lead = if s.without_commit_time > 0 {
            format!(
                "{} ({} promoted without --committed-at)",
                durations(&s.lead_time),
                s.without_commit_time
            )
        } else {
            durations(&s.lead_time)
        };
        let _ = write!(
            o,
            "\nservice {}\n  {:<22}{} ({:.2}/day)\n  {:<22}{} ({} of {} finished)\n  {:<22}{}\n  {:<22}{}\n  {:<22}{} in {} period(s)\n",
            s.service,
            "deployments",
            s.deployments,
            s.deployments_per_day,
            "change failure rate",
            rate,
            s.failed,
            s.finished,
            "time to restore",
            durations(&s.time_to_restore),
            "lead time",
            lead,
            "unplanned downtime",
            dur(Some(s.unplanned_downtime_ms)),
            s.downtime.len(),
        );
        for p in &s.downtime {
            let _ = writeln!(
                o,
                "    {} → {}{}",
                at(p.from),
                at(p.to),
                if p.open { " (still down)" } else { "" }
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_changes_are_recorded_once_each_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let facts = |s: &Store| -> Vec<(i64, bool, bool)> {
            let all = s.serving_facts(i64::MAX).unwrap();
            all.iter().map(|f| (f.at, f.serving, f.planned)).collect()
        };
        let mut last = None;
        // Nothing served yet: not ready is no downtime.
        record_serving(&mut store, "api", &mut last, false, false, 1);
        record_serving(&mut store, "api", &mut last, true, false, 2);
        record_serving(&mut store, "api", &mut last, true, false, 3);
        assert_eq!(facts(&store), [(2, true, false)]);
        // cutover crashed while serving; the restarted one (last = None) sees no ready
        // instance: down from then on.
        let mut last = None;
        record_serving(&mut store, "api", &mut last, false, false, 10);
        record_serving(&mut store, "api", &mut last, true, false, 12);
        // A graceful shutdown is planned; the next start does not record it again.
        record_serving(&mut store, "api", &mut last, false, true, 20);
        let mut last = None;
        record_serving(&mut store, "api", &mut last, false, false, 30);
        assert_eq!(
            facts(&store),
            [
                (2, true, false),
                (10, false, false),
                (12, true, false),
                (20, false, true)
            ]
        );
    }
}
