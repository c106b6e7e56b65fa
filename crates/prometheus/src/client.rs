//! The Prometheus HTTP API client: per-attempt timeouts, bounded retries with exponential
//! backoff, and errors that say whether retrying could ever help.

use std::time::Duration;

use bytes::Bytes;
use cutover_promql::{Query, RuleResult, SeriesDump, Value};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::response::{decode_data, Envelope};
use crate::rule::{RulePlan, Threshold};
use crate::ProviderError;

/// The first retry waits this long; each further retry waits twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A client for one Prometheus server's HTTP API (`/api/v1/query`, `/api/v1/query_range`).
///
/// Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct PrometheusClient {
    /// Without a trailing slash; may carry a path prefix (`http://host/prometheus`).
    base: String,
    timeout: Duration,
    retries: u32,
    http: Client<HttpConnector, Empty<Bytes>>,
}

/// What one attempt ran into, and whether another attempt may help.
enum AttemptError {
    /// Connect errors, resets, 5xx: worth retrying.
    Transient(String),
    TimedOut,
    /// Final: a 4xx or an answer we cannot use.
    Final(ProviderError),
}

impl PrometheusClient {
    /// A client for the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix). Each attempt is bounded by `timeout`; connect errors, timeouts and 5xx answers
    /// are retried `retries` times with exponential backoff from 100 ms.
    pub fn new(base_url: &str, timeout: Duration, retries: u32) -> Result<Self, ProviderError> {
        let invalid = |reason: &str| ProviderError::InvalidUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = base_url
            .parse()
            .map_err(|e| invalid(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(invalid(
                "https is not supported; use http:// (e.g. through a local TLS-terminating proxy)",
            )),
            _ => return Err(invalid("the URL must start with http://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("the URL must not have a query string"));
        }
        if timeout.is_zero() {
            return Err(ProviderError::InvalidUrl {
                url: base_url.to_string(),
                reason: "prometheus.timeout must be positive".into(),
            });
        }
        let base = base_url.trim_end_matches('/').to_string();
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            base,
            timeout,
            retries,
            http,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluates `q` at `at_ms` (Unix milliseconds) with `GET /api/v1/query`.
    pub async fn query(&self, q: &str, at_ms: i64) -> Result<Value, ProviderError> {
        let path = format!("/api/v1/query?query={}&time={}", encode(q), seconds(at_ms));
        self.get(&path, q).await
    }

    /// Evaluates `q` at every `step_ms` from `start_ms` to `end_ms` (inclusive) with
    /// `GET /api/v1/query_range`.
    pub async fn query_range(
        &self,
        q: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<SeriesDump>, ProviderError> {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            encode(q),
            seconds(start_ms),
            seconds(end_ms),
            seconds(step_ms)
        );
        match self.get(&path, q).await? {
            Value::Matrix(m) => Ok(m),
            _ => Err(self.bad_response("query_range did not return a matrix")),
        }
    }

    /// The raw samples of the series matching `selector` (e.g. `{__name__=~"http_.*"}`) in the
    /// window `(at_ms - range_ms, at_ms]`: an instant query of `selector[range]`. Used to copy
    /// Prometheus's exact data into a `cutover_promql::MemStore`.
    pub async fn raw_series(
        &self,
        selector: &str,
        at_ms: i64,
        range_ms: i64,
    ) -> Result<Vec<SeriesDump>, ProviderError> {
        let q = format!("{selector}[{range_ms}ms]");
        match self.query(&q, at_ms).await? {
            Value::Matrix(m) => Ok(m),
            _ => Err(self.bad_response("a range selector did not return a matrix")),
        }
    }

    /// The verdict of a rule at `at_ms`, with the semantics of
    /// `cutover_promql::Query::eval_rule`.
    ///
    /// A filtering (non-`bool`) comparison between a vector and a scalar (`<vector> > 0.8`,
    /// `0.8 < <vector>`) is split: only the vector side is sent (printed back from the parsed
    /// tree), a non-literal scalar side is sent as its own query, and the comparison is applied
    /// here, so that an empty answer means `NoData` (no series) rather than "below the
    /// threshold". Some element passes → `Fired` with the worst (max for `>`/`>=`, min for
    /// `<`/`<=`, as if the threshold were on the right; first for `==`/`!=`); none → `Clear`
    /// with the worst of all. Any other query is sent as written: a non-empty vector fires with
    /// its first value, an empty one is `NoData`; a scalar fires if nonzero, is `Clear` if zero
    /// and `NoData` if NaN.
    pub async fn eval_rule(&self, query: &Query, at_ms: i64) -> Result<RuleResult, ProviderError> {
        let text = query.text();
        let bad_query = |message: String| ProviderError::BadQuery {
            query: text.to_string(),
            message,
        };
        match RulePlan::new(text).map_err(bad_query)? {
            RulePlan::Threshold {
                vector,
                cmp,
                threshold,
            } => {
                let values = match self.query(&vector, at_ms).await? {
                    Value::Vector(samples) => {
                        samples.into_iter().map(|s| s.value).collect::<Vec<_>>()
                    }
                    _ => {
                        return Err(bad_query(format!(
                            "{vector} did not yield an instant vector"
                        )))
                    }
                };
                let threshold = match threshold {
                    // No data needs no threshold (and saves a request).
                    _ if values.is_empty() => return Ok(RuleResult::NoData),
                    Threshold::Literal(v) => v,
                    Threshold::Query(q) => match self.query(&q, at_ms).await? {
                        Value::Scalar(v) => v,
                        _ => return Err(bad_query(format!("{q} did not yield a scalar"))),
                    },
                };
                Ok(RulePlan::judge(cmp, &values, threshold))
            }
            RulePlan::AsWritten(q) => match self.query(&q, at_ms).await? {
                Value::Scalar(v) => Ok(RulePlan::scalar(v)),
                Value::Vector(samples) => Ok(RulePlan::any_vector(
                    &samples.iter().map(|s| s.value).collect::<Vec<_>>(),
                )),
                Value::Matrix(_) => Err(bad_query(
                    "a rule must evaluate to an instant vector or a scalar, not a range vector"
                        .into(),
                )),
            },
        }
    }

    fn bad_response(&self, reason: &str) -> ProviderError {
        ProviderError::BadResponse {
            url: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    /// One API call with retries; `q` is only for error messages.
    async fn get(&self, path_and_query: &str, q: &str) -> Result<Value, ProviderError> {
        let uri = format!("{}{}", self.base, path_and_query);
        let attempts = self.retries.saturating_add(1);
        let mut backoff = FIRST_BACKOFF;
        let mut last = AttemptError::TimedOut;
        for attempt in 1..=attempts {
            let result = match tokio::time::timeout(self.timeout, self.attempt(&uri, q)).await {
                Ok(result) => result,
                Err(_) => Err(AttemptError::TimedOut),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(AttemptError::Final(e)) => return Err(e),
                Err(e) => last = e,
            }
            if attempt < attempts {
                tracing::debug!(url = %self.base, attempt, ?backoff, "Prometheus query failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(match last {
            AttemptError::TimedOut => ProviderError::Timeout {
                url: self.base.clone(),
                timeout: self.timeout,
                attempts,
            },
            AttemptError::Transient(last_error) => ProviderError::Unreachable {
                url: self.base.clone(),
                attempts,
                last_error,
            },
            AttemptError::Final(e) => e,
        })
    }

    async fn attempt(&self, uri: &str, q: &str) -> Result<Value, AttemptError> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|e| AttemptError::Final(self.bad_response(&format!("request URI: {e}"))))?;
        let response = self.http.get(uri).await.map_err(|e| {
            // The source chain has the useful part ("Connection refused").
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            AttemptError::Transient(msg)
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| AttemptError::Transient(format!("reading the answer: {e}")))?
            .to_bytes();
        let envelope: Option<Envelope> = serde_json::from_slice(&body).ok();
        let api_error = envelope.as_ref().and_then(|e| {
            e.error.as_ref().map(|msg| match &e.error_type {
                Some(t) => format!("{t}: {msg}"),
                None => msg.clone(),
            })
        });
        if status.is_server_error() {
            let detail = api_error.unwrap_or_else(|| snippet(&body));
            return Err(AttemptError::Transient(format!("HTTP {status}: {detail}")));
        }
        if status.is_client_error() {
            // Prometheus answers 400 (bad_data) and 422 (execution) with a JSON error; any
            // other 4xx (404 from a wrong path prefix, say) is not about the query.
            return Err(AttemptError::Final(match (envelope.is_some(), api_error) {
                (true, Some(message)) => ProviderError::BadQuery {
                    query: q.to_string(),
                    message,
                },
                _ => self.bad_response(&format!("HTTP {status}: {}", snippet(&body))),
            }));
        }
        let Some(envelope) = envelope else {
            return Err(AttemptError::Final(self.bad_response(&format!(
                "HTTP {status}, not Prometheus API JSON: {}",
                snippet(&body)
            ))));
        };
        match (envelope.status.as_str(), envelope.data) {
            ("success", Some(data)) => {
                decode_data(data).map_err(|reason| AttemptError::Final(self.bad_response(&reason)))
            }
            _ => Err(AttemptError::Final(self.bad_response(&format!(
                "HTTP {status} with status {:?}: {}",
                envelope.status,
                envelope.error.unwrap_or_default()
            )))),
        }
    }
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Unix milliseconds as the API's decimal seconds (`1700000000.123`), exactly.
fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// Percent-encodes a query parameter: everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(1_700_000_000_123), "1700000000.123");
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(-1500), "-1.500");
    }

    #[test]
    fn encoding_covers_promql_punctuation() {
        assert_eq!(
            encode(r#"sum(rate(x{code=~"5.."}[2s])) + 1 & é"#),
            "sum%28rate%28x%7Bcode%3D~%225..%22%7D%5B2s%5D%29%29%20%2B%201%20%26%20%C3%A9"
        );
    }

    #[test]
    fn urls_are_validated_with_the_field_name() {
        let t = Duration::from_secs(1);
        for bad in [
            "",
            "localhost:9090",
            "https://p:9090",
            "ftp://p",
            "http://",
            "http://p/?a=1",
        ] {
            let e = PrometheusClient::new(bad, t, 0).unwrap_err();
            assert!(e.to_string().starts_with("prometheus.url: "), "{bad}: {e}");
        }
        let c = PrometheusClient::new("http://127.0.0.1:9090/prom/", t, 0).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:9090/prom");
    }
}
