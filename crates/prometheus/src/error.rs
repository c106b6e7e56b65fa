//! What can go wrong talking to Prometheus, phrased for the person who has to fix it.

use std::time::Duration;

/// An error from [`crate::PrometheusClient`].
///
/// The variants tell a caller what to do next: `Unreachable` and `Timeout` are about the
/// server (retried already, the rule has no verdict this round), `BadQuery` is about the rule's
/// text (retrying cannot help), `BadResponse` is about something between us and Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The configured base URL cannot be used.
    #[error("prometheus.url: {reason} (got {url:?}); expected e.g. \"http://127.0.0.1:9090\"")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No attempt got an answer (connection refused, reset, or a 5xx every time).
    #[error("Prometheus at {url} unreachable after {attempts} attempts: {last_error}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// How many attempts were made (1 + retries).
        attempts: u32,
        /// What the last attempt ran into.
        last_error: String,
    },
    /// The last attempt did not finish within the per-attempt timeout.
    #[error(
        "Prometheus at {url} did not answer within {timeout:?} ({attempts} attempts); \
         check its load or raise prometheus.timeout"
    )]
    Timeout {
        /// The base URL.
        url: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// How many attempts were made (1 + retries).
        attempts: u32,
    },
    /// Prometheus (or the local parser) rejected the query; not retried.
    #[error("query {query:?} rejected: {message}")]
    BadQuery {
        /// The query text as sent.
        query: String,
        /// Prometheus's own `error` message (or the parser's).
        message: String,
    },
    /// An answer came back that is not a Prometheus API response we understand.
    #[error("Prometheus at {url} sent an unexpected response: {reason}")]
    BadResponse {
        /// The base URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}
