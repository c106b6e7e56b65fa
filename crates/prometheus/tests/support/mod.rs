//! The Prometheus client's own test kit: a scripted fake Prometheus API and a metrics target
//! whose values advance deterministically at every scrape. Both are `cutover_testkit`'s
//! upstream (bound on `127.0.0.1:0`) with handlers that speak Prometheus: what is here is the
//! Prometheus side (query parameters, vector results, exposition text), nothing generic.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cutover_testkit::{upstream, Reply, Seen};

/// Serves every request with a handler until dropped: testkit's upstream.
pub use cutover_testkit::Upstream as HttpServer;

pub fn respond(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into().into(),
    }
}

/// The decoded query-string parameters of a request.
pub fn params(req: &Seen) -> BTreeMap<String, String> {
    req.query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A fake Prometheus answering `/api/v1/query` from a script, recording every query.
pub struct FakePrometheus {
    pub server: HttpServer,
    pub seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

impl FakePrometheus {
    pub async fn start(
        script: impl Fn(usize, &BTreeMap<String, String>) -> Reply + Send + Sync + 'static,
    ) -> FakePrometheus {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = upstream()
            .otherwise(move |req, _| {
                let p = params(req);
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(p.clone());
                    log.len()
                };
                script(n, &p)
            })
            .spawn()
            .await;
        FakePrometheus { server, seen }
    }

    pub fn queries(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| p["query"].clone())
            .collect()
    }
}

/// A JSON instant vector of `(labels, value)` pairs.
pub fn vector(samples: &[(&[(&str, &str)], &str)]) -> String {
    let result: Vec<_> = samples
        .iter()
        .map(|(labels, v)| {
            let metric: BTreeMap<_, _> = labels.iter().copied().collect();
            serde_json::json!({"metric": metric, "value": [1700000000.0, v]})
        })
        .collect();
    serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
        .to_string()
}

/// The metrics an app under rollout would expose, advancing one step per scrape: the stable
/// track is steady; the canary gets slower and fails more as scrapes go by, so that rates,
/// quantiles and error ratios all move. A separate counter resets every 15 scrapes.
#[derive(Debug, Default)]
pub struct RolloutMetrics {
    scrapes: u64,
    requests: BTreeMap<(&'static str, &'static str), u64>, // (track, code)
    /// Per track: cumulative bucket counts, sum.
    buckets: BTreeMap<&'static str, ([u64; BUCKETS.len()], f64)>,
    jobs: u64,
}

const BUCKETS: [f64; 6] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl RolloutMetrics {
    fn observe(&mut self, track: &'static str, latency: f64) {
        let (counts, sum) = self.buckets.entry(track).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if latency <= *le {
                counts[i] += 1;
            }
        }
        *sum += latency;
    }

    /// One step, then the text exposition.
    pub fn scrape(&mut self) -> String {
        self.scrapes += 1;
        let n = self.scrapes;
        for (track, ok, errors) in [("stable", 20, n % 7 / 6), ("canary", 5 + n % 3, n / 10 % 3)] {
            *self.requests.entry((track, "200")).or_default() += ok;
            *self.requests.entry((track, "500")).or_default() += errors;
            *self.requests.entry((track, "503")).or_default() += 0;
        }
        for i in 0..10u64 {
            self.observe("stable", 0.02 + 0.01 * i as f64);
            // The canary slows down: its tail grows with every scrape.
            self.observe("canary", 0.03 * i as f64 + 0.005 * n as f64);
        }
        self.jobs = if n.is_multiple_of(15) {
            1
        } else {
            self.jobs + 3
        };

        let mut out = String::new();
        out.push_str("# TYPE http_requests_total counter\n");
        for ((track, code), v) in &self.requests {
            out.push_str(&format!(
                "http_requests_total{{code=\"{code}\",track=\"{track}\"}} {v}\n"
            ));
        }
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (track, (counts, sum)) in &self.buckets {
            for (le, c) in BUCKETS.iter().zip(counts) {
                out.push_str(&format!(
                    "http_request_duration_seconds_bucket{{track=\"{track}\",le=\"{le}\"}} {c}\n"
                ));
            }
            let count = 10 * n;
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{track=\"{track}\",le=\"+Inf\"}} {count}\n\
                 http_request_duration_seconds_sum{{track=\"{track}\"}} {sum}\n\
                 http_request_duration_seconds_count{{track=\"{track}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "# TYPE jobs_processed_total counter\njobs_processed_total {}\n",
            self.jobs
        ));
        out
    }
}

/// Serves [`RolloutMetrics`] on `/metrics`, requiring `Authorization: Bearer <token>`.
pub async fn metrics_target(token: &'static str) -> HttpServer {
    let metrics = Mutex::new(RolloutMetrics::default());
    upstream()
        .otherwise(move |req, _| {
            if req.header("authorization") != Some(&format!("Bearer {token}")) {
                return respond(401, "missing or wrong bearer token");
            }
            if req.path != "/metrics" {
                return respond(404, "not found");
            }
            let text = metrics.lock().unwrap().scrape();
            Reply {
                status: 200,
                headers: vec![("content-type".into(), "text/plain; version=0.0.4".into())],
                body: text.into(),
            }
        })
        .spawn()
        .await
}
