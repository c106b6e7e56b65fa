//! The notifier's own test kit: webhook receivers, real HTTP servers on `127.0.0.1:0` that record
//! every request (failed attempts included), decode it as a notice and answer with a status
//! programmed per attempt; [`Receiver::wait_for`] wakes on each arrival rather than polling.
//! That is specific to webhooks (retries, per-attempt statuses, notice bodies); everything
//! generic (the condition wait, a refused address, a silent server) comes from
//! `cutover_testkit`.

use bytes::Bytes;
use cutover_notify::{Format, Notice, SinkConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Received {
    /// The notice's `reason`, which the tests use as its identity.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("<no reason>")
    }
}

#[derive(Default)]
struct Log {
    got: Mutex<Vec<Received>>,
    changed: Notify,
}

/// A running webhook receiver; dropping it stops accepting.
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::start(|_| 200).await
    }

    /// Answers request number `i` (0-based, counting every attempt) with `status(i)`.
    pub async fn start(status: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let status = Arc::new(status);
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (log, status) = (log.clone(), status.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, status) = (log.clone(), status.clone());
                        async move {
                            let method = req.method().to_string();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .map(|v| v.to_str().unwrap().to_owned());
                            let bytes = req.into_body().collect().await?.to_bytes();
                            // Not JSON is recorded as a string, so the test's own
                            // assertions fail (a panic here would only drop the connection).
                            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&bytes).into_owned())
                            });
                            let i = {
                                let mut got = log.got.lock().unwrap();
                                got.push(Received {
                                    method,
                                    content_type,
                                    body,
                                });
                                got.len() - 1
                            };
                            log.changed.notify_waiters();
                            let code = StatusCode::from_u16(status(i)).unwrap();
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = code;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Receiver { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived, failing the test after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                let got = self.received();
                panic!(
                    "expected {n} requests within {within:?}, got {}: {:?}",
                    got.len(),
                    got.iter().map(Received::reason).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// A URL where nothing listens: connecting is refused at once.
pub async fn refused_url() -> String {
    format!("http://{}/hook", cutover_testkit::dead_addr().await)
}

/// A server that accepts connections and never answers, to exercise the per-attempt timeout.
/// It stops when the returned guard is dropped.
pub async fn silent_url() -> (String, cutover_testkit::Silent) {
    let server = cutover_testkit::silent().await;
    (format!("http://{}/hook", server.addr), server)
}

/// A JSON sink with test-sized timings: quick retries, so a retry test takes milliseconds.
pub fn sink(name: &str, url: &str) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        url: url.into(),
        format: Format::Json,
        kinds: None,
        timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

/// A notice identified by `reason`.
pub fn notice(kind: &str, reason: &str) -> Notice {
    Notice {
        kind: kind.parse().unwrap(),
        service: "checkout".into(),
        rollout: Some(7),
        version: Some("v2".into()),
        at_ms: 1_700_000_000_000,
        reason: reason.into(),
        numbers: serde_json::json!({"weight": 25, "error_ratio": 0.031}),
        audit: None,
    }
}

/// Polls `cond` until it holds, failing the test after `within`. For conditions with no event
/// to wait on (counters read through `Notifier::stats`).
pub async fn eventually(within: Duration, what: &str, cond: impl FnMut() -> bool) {
    cutover_testkit::eventually_holds(within, what, cond).await
}
