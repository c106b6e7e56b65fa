//! `cutover report`: delivery figures over a period, computed from the recorded history
//! (docs/report.md). Pure: the shell reads the rollouts and the serving facts from the store and
//! hands them in with the period; nothing here reads a clock.
//!
//! The figures, per service:
//! - **deployments**: rollouts started in `[since, until)`, and that count per day;
//! - **change failure rate**: of those that ended before `until`, the share that ended
//!   `aborted` or `rolled_back`;
//! - **time to restore**: for each of those failures, from the rollout's start (the failed
//!   change first took traffic) to the moment the service was healthy again: the abort or
//!   rollback itself, or, if no instance was ready then, the end of that unplanned downtime;
//! - **lead time**: for each promoted rollout deployed with `--committed-at`, from the commit
//!   to the promotion (100 % on the new version);
//! - **unplanned downtime**: the periods with no ready instance that cutover did not cause on
//!   purpose (its own graceful shutdown is planned), clipped to the period.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One rollout as the store recorded it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployFacts {
    pub id: i64,
    pub service: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// The phase it ended in (`promoted`, `done`, `aborted`, `rolled_back`).
    pub outcome: Option<String>,
    /// When the deployed commit was made (`deploy --committed-at`).
    pub committed_at: Option<i64>,
}

/// A change of "does the service have a ready instance", as the host observed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingFact {
    pub service: String,
    pub at: i64,
    pub serving: bool,
    /// The loss of service was cutover's own doing (its graceful shutdown stops the instances),
    /// not a failure: it is not counted as unplanned downtime.
    pub planned: bool,
}

/// Count and summary of a list of durations (milliseconds). The median of an even count is the
/// mean of the two middle values, rounded down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    pub count: u64,
    pub median_ms: Option<i64>,
    pub mean_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

impl Durations {
    pub fn of(mut values: Vec<i64>) -> Durations {
        values.sort_unstable();
        let n = values.len();
        if n == 0 {
            return Durations::default();
        }
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]).div_euclid(2)
        };
        let sum: i128 = values.iter().map(|&v| v as i128).sum();
        Durations {
            count: n as u64,
            median_ms: Some(median),
            mean_ms: Some(sum.div_euclid(n as i128) as i64),
            max_ms: values.last().copied(),
        }
    }
}

/// A stretch of time with no ready instance, clipped to the report's period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownPeriod {
    pub from: i64,
    pub to: i64,
    /// Still down at the end of the recorded history (`to` is then the period's end).
    pub open: bool,
}

/// The figures of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub service: String,
    pub deployments: u64,
    pub deployments_per_day: f64,
    /// Deployments of the period that ended before its end (promoted, aborted, rolled back).
    pub finished: u64,
    /// Of those, aborted or rolled back.
    pub failed: u64,
    /// `failed / finished`; `None` when nothing finished.
    pub change_failure_rate: Option<f64>,
    pub time_to_restore: Durations,
    pub lead_time: Durations,
    /// Promoted deployments that had no commit time, so no lead time.
    pub without_commit_time: u64,
    pub unplanned_downtime_ms: i64,
    pub downtime: Vec<DownPeriod>,
}

/// The whole report: the period and one entry per service, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub since: i64,
    pub until: i64,
    pub services: Vec<ServiceReport>,
}

/// Why a report cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("--since ({since}) is not before --until ({until}): give a period that is not empty")]
    EmptyPeriod { since: i64, until: i64 },
}

const DAY_MS: f64 = 86_400_000.0;

fn is_failure(outcome: Option<&str>) -> bool {
    matches!(outcome, Some("aborted" | "rolled_back"))
}

fn is_promotion(outcome: Option<&str>) -> bool {
    matches!(outcome, Some("promoted" | "done"))
}

/// Computes the report of `[since, until)` over every service that has a rollout or a serving
/// fact. `facts` may come in any order; ties in time keep their given order.
pub fn report(
    since: i64,
    until: i64,
    deploys: &[DeployFacts],
    facts: &[ServingFact],
) -> Result<Report, ReportError> {
    if since >= until {
        return Err(ReportError::EmptyPeriod { since, until });
    }
    let mut services: BTreeMap<&str, (Vec<&DeployFacts>, Vec<&ServingFact>)> = BTreeMap::new();
    for d in deploys {
        services.entry(&d.service).or_default().0.push(d);
    }
    for f in facts {
        services.entry(&f.service).or_default().1.push(f);
    }
    let services = services
        .into_iter()
        .map(|(name, (deploys, mut facts))| {
            facts.sort_by_key(|f| f.at);
            service_report(name, since, until, &deploys, &facts)
        })
        .collect();
    Ok(Report {
        since,
        until,
        services,
    })
}

/// Unplanned down periods from sorted facts, unclipped; an open one ends at `None`.
fn down_periods(facts: &[&ServingFact]) -> Vec<(i64, Option<i64>)> {
    let mut out = Vec::new();
    let mut down_since: Option<i64> = None;
    for f in facts {
        match (down_since, f.serving, f.planned) {
            (None, false, false) => down_since = Some(f.at),
            // Serving again, or cutover's own shutdown takes over from here: the unplanned
            // stretch ends.
            (Some(from), true, _) | (Some(from), false, true) => {
                out.push((from, Some(f.at)));
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = down_since {
        out.push((from, None));
    }
    out
}

fn service_report(
    service: &str,
    since: i64,
    until: i64,
    deploys: &[&DeployFacts],
    facts: &[&ServingFact],
) -> ServiceReport {
    let periods = down_periods(facts);
    let in_period: Vec<&&DeployFacts> = deploys
        .iter()
        .filter(|d| d.started_at >= since && d.started_at < until)
        .collect();
    let finished: Vec<&&&DeployFacts> = in_period
        .iter()
        .filter(|d| d.ended_at.is_some_and(|e| e < until))
        .collect();
    let failures: Vec<&&&DeployFacts> = finished
        .iter()
        .copied()
        .filter(|d| is_failure(d.outcome.as_deref()))
        .collect();
    let restore = failures
        .iter()
        .map(|d| {
            let ended = d.ended_at.unwrap_or(d.started_at);
            // Healthy again at the switch, unless no instance was ready then.
            let healthy = periods
                .iter()
                .find(|(from, to)| *from <= ended && to.is_none_or(|t| ended < t))
                .map_or(ended, |(_, to)| to.unwrap_or(until).max(ended));
            healthy - d.started_at
        })
        .collect();
    let promoted: Vec<&&&DeployFacts> = finished
        .iter()
        .copied()
        .filter(|d| is_promotion(d.outcome.as_deref()))
        .collect();
    let lead = promoted
        .iter()
        .filter_map(|d| Some(d.ended_at? - d.committed_at?))
        .collect();
    let downtime: Vec<DownPeriod> = periods
        .iter()
        .filter_map(|&(from, to)| {
            let (a, b) = (from.max(since), to.unwrap_or(until).min(until));
            (a < b).then_some(DownPeriod {
                from: a,
                to: b,
                open: to.is_none(),
            })
        })
        .collect();
    let n = in_period.len() as u64;
    ServiceReport {
        service: service.to_string(),
        deployments: n,
        deployments_per_day: n as f64 / ((until - since) as f64 / DAY_MS),
        finished: finished.len() as u64,
        failed: failures.len() as u64,
        change_failure_rate: (!finished.is_empty())
            .then(|| failures.len() as f64 / finished.len() as f64),
        time_to_restore: Durations::of(restore),
        lead_time: Durations::of(lead),
        without_commit_time: promoted.iter().filter(|d| d.committed_at.is_none()).count() as u64,
        unplanned_downtime_ms: downtime.iter().map(|p| p.to - p.from).sum(),
        downtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        id: i64,
        started: i64,
        ended: Option<i64>,
        outcome: &str,
        committed: Option<i64>,
    ) -> DeployFacts {
        DeployFacts {
            id,
            service: "api".into(),
            started_at: started,
            ended_at: ended,
            outcome: (!outcome.is_empty()).then(|| outcome.to_string()),
            committed_at: committed,
        }
    }

    fn f(at: i64, serving: bool, planned: bool) -> ServingFact {
        ServingFact {
            service: "api".into(),
            at,
            serving,
            planned,
        }
    }

    #[test]
    fn durations_median_of_even_and_odd_counts() {
        assert_eq!(Durations::of(vec![]), Durations::default());
        let odd = Durations::of(vec![30, 10, 20]);
        assert_eq!(
            (odd.median_ms, odd.mean_ms, odd.max_ms, odd.count),
            (Some(20), Some(20), Some(30), 3)
        );
        let even = Durations::of(vec![10, 25, 1, 4]);
        assert_eq!((even.median_ms, even.mean_ms), (Some(7), Some(10)));
    }

    #[test]
    fn an_empty_period_is_refused() {
        assert_eq!(
            report(5, 5, &[], &[]),
            Err(ReportError::EmptyPeriod { since: 5, until: 5 })
        );
    }

    #[test]
    fn figures_of_a_small_history() {
        let day = 86_400_000;
        let deploys = [
            // Before the period: not counted.
            d(1, -10, Some(-5), "done", Some(-20)),
            d(2, 0, Some(100), "done", Some(-900)),
            // Aborted at 250; the stable was ready: restored at the switch.
            d(3, 200, Some(250), "aborted", None),
            // Rolled back at 900, while nothing was ready (down 850..1_000): restored at 1_000.
            d(4, 500, Some(900), "rolled_back", Some(400)),
            d(5, 1_500, Some(1_600), "promoted", None),
            // Still running at the end: neither finished nor failed.
            d(6, 2_000, None, "", Some(1_000)),
            // After the period.
            d(7, day, Some(day + 1), "done", None),
        ];
        let facts = [
            f(1, true, false),
            f(850, false, false),
            f(1_000, true, false),
            f(3_000, false, true), // cutover shut down: planned
            f(4_000, true, false),
            f(day - 100, false, false), // still down at the end
        ];
        let r = report(0, day, &deploys, &facts).unwrap();
        assert_eq!(r.services.len(), 1);
        let s = &r.services[0];
        assert_eq!(s.deployments, 5);
        assert!((s.deployments_per_day - 5.0).abs() < 1e-9);
        assert_eq!((s.finished, s.failed), (4, 2));
        assert_eq!(s.change_failure_rate, Some(0.5));
        // 3: 250 - 200 = 50; 4: 1_000 - 500 = 500.
        assert_eq!(s.time_to_restore, Durations::of(vec![50, 500]));
        assert_eq!(s.time_to_restore.median_ms, Some(275));
        // Only 2 was promoted with a commit time: 100 - (-900).
        assert_eq!(s.lead_time, Durations::of(vec![1_000]));
        assert_eq!(s.without_commit_time, 1);
        assert_eq!(
            s.downtime,
            vec![
                DownPeriod {
                    from: 850,
                    to: 1_000,
                    open: false
                },
                DownPeriod {
                    from: day - 100,
                    to: day,
                    open: true
                },
            ]
        );
        assert_eq!(s.unplanned_downtime_ms, 250);
        // A narrower period clips the downtime and drops what started outside it.
        let r = report(900, 2_000, &deploys, &facts).unwrap();
        let s = &r.services[0];
        assert_eq!(s.deployments, 1);
        assert_eq!(
            s.downtime,
            vec![DownPeriod {
                from: 900,
                to: 1_000,
                open: false
            }]
        );
        assert_eq!(s.change_failure_rate, Some(0.0));
    }
}
