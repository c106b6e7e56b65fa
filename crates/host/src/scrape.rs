//! Scraping the instances' `/metrics` at the evaluation interval.
//!
//! A task of its own, so a slow or hung instance never delays the driver: it fetches every
//! target concurrently with a timeout and hands the texts over; the driver appends them to its
//! series store with `version`, `track` and `instance` labels.

use cutover_promql::Labels;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One instance to scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub addr: SocketAddr,
    pub labels: Labels,
}

/// What one scrape round brought back: `(labels, text)` per target that answered, at `t_ms`.
#[derive(Debug)]
pub struct Scraped {
    pub t_ms: i64,
    pub results: Vec<(Labels, Result<String, String>)>,
}

/// Runs until `targets` is dropped: every `interval`, scrapes each target's `path`.
pub async fn run(
    path: String,
    interval: Duration,
    mut targets: watch::Receiver<Vec<Target>>,
    out: mpsc::Sender<Scraped>,
) {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let timeout = interval.max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = targets.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        let list = targets.borrow().clone();
        if list.is_empty() {
            continue;
        }
        let t_ms = cutover_clock::unix_millis() as i64;
        let fetches = list.into_iter().map(|t| {
            let client = client.clone();
            let path = path.clone();
            async move {
                let uri = format!("http://{}{}", t.addr, path);
                let res = tokio::time::timeout(timeout, async {
                    let resp = client
                        .get(uri.parse().map_err(|e| format!("{e}"))?)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("{uri} answered {}", resp.status()));
                    }
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    String::from_utf8(body.to_vec()).map_err(|_| format!("{uri}: not UTF-8"))
                })
                .await
                .unwrap_or_else(|_| Err(format!("{uri}: timed out after {timeout:?}")));
                (t.labels, res)
            }
        });
        let results = futures_util::future::join_all(fetches).await;
        if out.send(Scraped { t_ms, results }).await.is_err() {
            return;
        }
    }
}

/// What changed for an instance when its latest exposition was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It did not parse, and the previous one did (or it is the first): worth one warning.
    Broke,
    /// It parses again after being broken: worth one info line.
    Recovered,
    /// As before (still fine, or still broken: counted, not logged again).
    Same,
}

/// Per-instance health of scraped expositions: the hysteresis behind "warn once". An app
/// that serves a bad `/metrics` is warned about once (and again only if it recovers and breaks
/// again); every rejected exposition is counted for cutover's own `/metrics`, and the current
/// problem is shown in `status`.
#[derive(Debug, Default)]
pub struct ExpositionHealth {
    /// Instances (by their `instance` label) whose last exposition did not parse: the error.
    broken: BTreeMap<String, String>,
    /// Rejected expositions since this cutover started, by `(version, instance)`.
    rejected: BTreeMap<(String, String), u64>,
}

impl ExpositionHealth {
    pub fn observe(&mut self, version: &str, instance: &str, parsed: Result<(), String>) -> Change {
        match parsed {
            Ok(()) => match self.broken.remove(instance) {
                Some(_) => Change::Recovered,
                None => Change::Same,
            },
            Err(e) => {
                *self
                    .rejected
                    .entry((version.to_string(), instance.to_string()))
                    .or_default() += 1;
                match self.broken.insert(instance.to_string(), e) {
                    None => Change::Broke,
                    Some(_) => Change::Same,
                }
            }
        }
    }

    /// Why the instance's last exposition was rejected, if it was.
    pub fn problem(&self, instance: &str) -> Option<&str> {
        self.broken.get(instance).map(String::as_str)
    }

    /// Rejected expositions by `(version, instance)`.
    pub fn rejected(&self) -> &BTreeMap<(String, String), u64> {
        &self.rejected
    }

    /// Forgets the state of instances no longer scraped (a new one on the same address starts
    /// fresh); the counters stay, they are monotonic.
    pub fn retain(&mut self, scraped: impl Fn(&str) -> bool) {
        self.broken.retain(|instance, _| scraped(instance));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_breakage_and_counts_every_rejection() {
        let mut h = ExpositionHealth::default();
        let bad = || Err("line 1: unexpected '{'".to_string());
        assert_eq!(h.observe("v1", "a", Ok(())), Change::Same);
        assert_eq!(h.observe("v1", "a", bad()), Change::Broke);
        for _ in 0..50 {
            assert_eq!(h.observe("v1", "a", bad()), Change::Same);
        }
        assert_eq!(h.problem("a"), Some("line 1: unexpected '{'"));
        assert_eq!(h.observe("v1", "a", Ok(())), Change::Recovered);
        assert_eq!(h.problem("a"), None);
        assert_eq!(h.observe("v1", "a", bad()), Change::Broke, "broke again");
        assert_eq!(h.observe("v2", "b", bad()), Change::Broke, "per instance");
        assert_eq!(h.rejected()[&("v1".to_string(), "a".to_string())], 52);
        h.retain(|i| i == "b");
        assert_eq!(h.problem("a"), None);
        assert_eq!(h.rejected().len(), 2, "counters survive");
    }
}
