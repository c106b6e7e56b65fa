//! Scraping the instances' `/metrics` at the evaluation interval.
//!
//! A task of its own, so a slow or hung instance never delays the driver: it fetches every
//! target concurrently with a timeout and hands the texts over; the driver appends them to its
//! series store with `version`, `track` and `instance` labels.

use cutover_promql::Labels;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
        let t_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
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
