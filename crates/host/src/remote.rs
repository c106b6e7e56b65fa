//! Rules with `provider = "prometheus"`: evaluated by a task of their own against the
//! `[prometheus]` server, so that a slow or unreachable Prometheus (timeouts × retries) never
//! delays the driver, an operator's verb or an abort. The driver reads the latest results; one
//! older than three intervals counts as no data (inconclusive), as does an unreachable server.

use crate::rules::{self, Rule};
use cutover_core::judge::External;
use cutover_core::spec::{PrometheusSpec, Provider};
use cutover_prometheus::PrometheusClient;
use cutover_promql::Query;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What to evaluate: the rules and the current rollout's variables (`None`: nothing to do).
pub type Work = Option<(Vec<Rule>, BTreeMap<String, String>)>;

/// The latest result of each rule, with the time it was evaluated for.
pub type Results = Arc<Mutex<BTreeMap<String, (i64, External)>>>;

fn now_ms() -> i64 {
    cutover_clock::unix_millis() as i64
}

/// Runs until `work` is dropped.
pub async fn run(
    spec: PrometheusSpec,
    interval: Duration,
    mut work: watch::Receiver<Work>,
    results: Results,
) {
    let client = match PrometheusClient::new(&spec.url, spec.timeout.get(), spec.retries) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "prometheus provider disabled");
            return;
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = work.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        let Some((rules, vars)) = work.borrow().clone() else {
            continue;
        };
        let at = now_ms();
        for r in rules.iter().filter(|r| r.provider == Provider::Prometheus) {
            let result = match cutover_promql::expand(&r.template, &vars)
                .map_err(|e| e.to_string())
                .and_then(|t| Query::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(q) => {
                    let res = client.eval_rule(&q, at).await.map_err(|e| e.to_string());
                    rules::external(q.text(), res)
                }
                Err(e) => External::NoData { detail: e },
            };
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.name.clone(), (at, result));
        }
    }
}

/// The results to hand to the engine at `now_ms`: stale ones become no data.
pub fn fresh(results: &Results, now_ms: i64, interval: Duration) -> BTreeMap<String, External> {
    let max_age = (interval.as_millis() as i64 * 3).max(1000);
    results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, (at, ext))| {
            let ext = if now_ms - at > max_age {
                External::NoData {
                    detail: format!("the last Prometheus result is {} ms old", now_ms - at),
                }
            } else {
                ext.clone()
            };
            (name.clone(), ext)
        })
        .collect()
}
