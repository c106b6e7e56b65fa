//! PromQL for rollout rules, without a Prometheus server.
//!
//! Users paste Prometheus alerting expressions such as
//! `histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[30s])) > 0.800`
//! into cutover. This crate makes them mean exactly what they mean in Prometheus, whether the
//! samples come from a real Prometheus (through another crate) or from cutover scraping targets
//! itself into a [`MemStore`]:
//!
//! - [`MemStore`]: an in-memory series store with bounded retention, fed by
//!   [`MemStore::append`] or [`MemStore::append_exposition`] (the text format 0.0.4).
//! - [`parse_exposition`]: the text-format parser on its own.
//! - [`expand`]: `{{name}}` substitution so rules can be templated per rollout.
//! - [`Query`]: a parsed query, checked at parse time against the supported subset, evaluated
//!   at an instant ([`Query::eval`]) or with alert-rule semantics ([`Query::eval_rule`]).
//!
//! **This crate never does IO**: no sockets, files, clocks or async runtime. Time is always an
//! argument (`t_ms`, `at_ms`, milliseconds since the epoch), so a rollout can be replayed in a
//! unit test and `cutover simulate` gets the same answers as a live run.
//!
//! # Semantics followed
//!
//! The evaluator follows the Prometheus 3.x engine (the current behaviour of
//! `promql/engine.go` and `promql/functions.go`) for float samples, or — with
//! [`Compat::V2`] in [`EvalOptions`] — Prometheus 2.x where the two differ (both at the edges
//! of the data; `crates/prometheus/tests` and the e2e tests compare with Debian's 2.42):
//!
//! - instant selectors see the newest sample in `(t - lookback_delta, t]` (2.x: `[t - δ, t]`);
//! - range selectors `[d]` see the samples in `(t - d, t]` (2.x: `[t - d, t]`);
//! - `rate`/`increase`/`delta` use Prometheus's `extrapolatedRate` (counter resets, extrapolation
//!   towards the window edges up to 1.1× the average sample interval, else by half an interval,
//!   and the counter zero-point limit);
//! - regex matchers are fully anchored and `.` matches a newline (Prometheus 3.0 behaviour);
//! - summation uses Kahan-Neumaier compensation as Prometheus 3 does.
//!
//! # Supported subset
//!
//! - selectors: instant and range, matchers `=`, `!=`, `=~`, `!~`; no `offset`, no `@`, no
//!   subqueries;
//! - functions: `rate`, `irate`, `increase`, `delta`, `idelta`, `avg_over_time`,
//!   `min_over_time`, `max_over_time`, `sum_over_time`, `count_over_time`, `last_over_time`,
//!   `quantile_over_time`, `stddev_over_time`, `stdvar_over_time`, `histogram_quantile`
//!   (classic `le` buckets), `abs`, `clamp_min`, `clamp_max`, `scalar`, `vector`, `time`;
//! - aggregations: `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`,
//!   `quantile`, `topk`, `bottomk`, with `by`/`without`;
//! - binary operators: `+ - * / % ^`, comparisons with and without `bool`, `and`/`or`/`unless`,
//!   `on`/`ignoring`, `group_left`/`group_right`; number literals, parentheses, unary minus.
//!
//! Anything else is rejected by [`Query::parse`] with [`PromqlError::Unsupported`] naming it,
//! so a rule never silently means something different from what the user pasted.
//!
//! Native histograms, staleness markers and `honor_timestamps` are not modelled: a
//! [`MemStore`] holds float samples only, and a series that disappears simply ages out of the
//! lookback window.
#![forbid(unsafe_code)]

mod error;
mod eval;
mod exposition;
mod functions;
mod query;
mod store;
mod template;

#[cfg(test)]
mod tests;

pub use error::PromqlError;
pub use exposition::parse_exposition;
pub use query::{Compat, EvalOptions, Query, RuleResult, Sample, Value};
pub use store::MemStore;
pub use template::expand;

/// A series' label set, including the metric name under `__name__`.
///
/// A `BTreeMap` so that label sets order and compare deterministically, which keeps query
/// results and exports stable across runs.
pub type Labels = std::collections::BTreeMap<String, String>;

/// One series and its samples, `(timestamp in ms, value)`, oldest first.
///
/// Used to persist a [`MemStore`] (export/import) and as the element of a range-vector
/// [`Value::Matrix`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeriesDump {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// The label holding the metric name.
pub(crate) const METRIC_NAME: &str = "__name__";
