//! The Prometheus provider: rules and gates sent to a real Prometheus over its HTTP API.
//!
//! - [`PrometheusClient`]: `/api/v1/query` and `/api/v1/query_range` with a timeout per
//!   attempt, bounded retries with exponential backoff (connect errors, timeouts, 5xx) and
//!   errors that say what to fix ([`ProviderError`]). [`PrometheusClient::eval_rule`] gives the
//!   same verdicts as `cutover_promql::Query::eval_rule` on the embedded store.
//! - [`harness`]: runs Debian's `prometheus` on loopback for tests and benchmarks.
//!
//! This crate never decides anything about a rollout: it turns queries into values and
//! verdicts, and the core decides. It never retries a rejected query (retrying cannot fix it)
//! and never retries without bound (a rule without a verdict is the core's to handle).

#![forbid(unsafe_code)]

mod client;
mod error;
pub mod harness;
mod response;
mod rule;

pub use client::PrometheusClient;
pub use error::ProviderError;
