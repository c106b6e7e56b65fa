//! One worker per sink: takes notices off the sink's queue one at a time and POSTs each until it
//! is accepted or its attempts run out. One at a time is what keeps a sink's notices in order
//! (a `rolled_back` must not arrive before the `step` that preceded it); the cost, head-of-line
//! blocking while a notice is retried, is confined to that sink's own queue.

use crate::{format, Counters, NotifyError, SinkConfig};
use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How much of a response body is read: enough for an error message (Slack answers
/// `invalid_payload`), and a misbehaving receiver cannot make us buffer more.
const RESPONSE_LIMIT: usize = 16 * 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Checks what can be checked before anything runs; each error names the sink and the field.
pub(crate) fn validate(cfg: &SinkConfig) -> Result<Uri, NotifyError> {
    let bad_url = |reason: &str| NotifyError::InvalidUrl {
        sink: cfg.name.clone(),
        url: cfg.url.clone(),
        reason: reason.to_owned(),
    };
    let uri: Uri = cfg
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(&format!("{e}: use http://host:port/path")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad_url(
                "https is not supported: use an http:// URL (e.g. a local relay)",
            ))
        }
        _ => {
            return Err(bad_url(
                "use an http:// URL, e.g. http://127.0.0.1:9000/hook",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad_url("the URL has no host: use http://host:port/path"));
    }
    let bad = |field, reason: &str| NotifyError::InvalidConfig {
        sink: cfg.name.clone(),
        field,
        reason: reason.to_owned(),
    };
    if cfg.max_attempts == 0 {
        return Err(bad("max_attempts", "must be at least 1 (1 = no retries)"));
    }
    if cfg.timeout.is_zero() {
        return Err(bad("timeout", "must be greater than zero"));
    }
    if cfg.backoff_max < cfg.backoff_initial {
        return Err(bad("backoff_max", "must be at least backoff_initial"));
    }
    Ok(uri)
}

/// The wait before retry number `retry` (1 for the first retry): `initial`, doubled per retry,
/// capped at `max`. No jitter: each sink has exactly one sender, so there is no herd to spread.
pub(crate) fn backoff(retry: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

pub(crate) async fn worker(
    cfg: SinkConfig,
    uri: Uri,
    mut rx: mpsc::Receiver<crate::Notice>,
    counters: Arc<Counters>,
    idle: Arc<Notify>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout));
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);

    // Ends when every `Notifier` clone is gone and the queue is drained.
    while let Some(notice) = rx.recv().await {
        let body = Bytes::from(
            serde_json::to_vec(&format::render(cfg.format, &notice))
                .expect("a serde_json::Value always serialises"),
        );
        let mut attempt = 1;
        loop {
            match post(&client, &uri, body.clone(), cfg.timeout).await {
                Ok(()) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(why) if attempt >= cfg.max_attempts => {
                    tracing::warn!(
                        sink = %cfg.name, kind = %notice.kind, attempts = attempt, error = %why,
                        "giving up on a notification"
                    );
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(why) => {
                    let wait = backoff(attempt, cfg.backoff_initial, cfg.backoff_max);
                    tracing::debug!(
                        sink = %cfg.name, kind = %notice.kind, attempt, error = %why, ?wait,
                        "notification failed; will retry"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    counters.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if counters.queued.fetch_sub(1, Ordering::SeqCst) == 1 {
            idle.notify_waiters();
        }
    }
}

/// One attempt: `Ok` on 2xx, otherwise why not. The timeout covers the whole exchange,
/// including reading the (bounded) response body.
async fn post(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("cutover-notify/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // The legacy client's error is terse; its source says what actually happened.
            match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            }
        })?;
        let status = resp.status();
        // Read the body even on success so the pooled connection can be reused.
        let text = Limited::new(resp.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let text: String = text.chars().take(200).collect();
            Err(format!("HTTP {status}: {text}"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn sink(url: &str) -> SinkConfig {
        SinkConfig {
            name: "ops".into(),
            url: url.into(),
            format: Format::Json,
            kinds: None,
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = |n| Duration::from_millis(n);
        let got: Vec<_> = (1..=6).map(|r| backoff(r, ms(100), ms(1000))).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(backoff(100, ms(100), ms(1000)), ms(1000));
        assert_eq!(backoff(u32::MAX, ms(100), ms(1000)), ms(1000));
    }

    #[test]
    fn urls_are_validated_naming_the_sink() {
        assert!(validate(&sink("http://127.0.0.1:9000/hook")).is_ok());
        assert!(validate(&sink("http://hooks.internal/x?y=1")).is_ok());
        for url in [
            "https://hooks.slack.com/x",
            "hooks/x",
            "",
            "ftp://x/y",
            "http://",
            "http:// x",
        ] {
            let err = validate(&sink(url)).unwrap_err();
            assert!(
                matches!(err, NotifyError::InvalidUrl { .. }),
                "{url}: {err}"
            );
            assert!(err.to_string().contains("\"ops\""), "{err}");
        }
        let mut s = sink("http://127.0.0.1:1/");
        s.max_attempts = 0;
        let err = validate(&s).unwrap_err().to_string();
        assert!(err.contains("max_attempts"), "{err}");
    }
}
