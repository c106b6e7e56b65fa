//! Runs Debian's `prometheus` on loopback, for tests and benchmarks only.
//!
//! Everything lives in a tempdir (config, bearer tokens, TSDB, log) and the process is killed
//! on [`PrometheusServer::stop`] or on drop, so a test leaves nothing behind. Waiting is on
//! conditions with deadlines (`/-/ready`, samples present), never on fixed sleeps.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cutover_promql::{Labels, SeriesDump};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::{PrometheusClient, ProviderError};

/// Where Debian's package installs the binary.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// One scrape target.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    /// Where the target listens.
    pub addr: SocketAddr,
    /// Usually `/metrics`.
    pub metrics_path: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Extra labels on every series scraped from this target.
    pub labels: Labels,
}

/// How to run Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// Each target gets its own scrape job, `target-<index>`.
    pub targets: Vec<ScrapeTarget>,
    /// May be sub-second (written as milliseconds); also the scrape timeout.
    pub scrape_interval: Duration,
    /// How often rule files are evaluated.
    pub evaluation_interval: Duration,
    /// Rule files' YAML texts (optional).
    pub rule_files: Vec<String>,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            scrape_interval: Duration::from_millis(100),
            evaluation_interval: Duration::from_secs(1),
            rule_files: Vec::new(),
        }
    }
}

/// Why the harness could not give a running Prometheus, or the condition waited for.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binary is missing.
    #[error("{path} not found: install it with `apt-get install prometheus` (Debian package)")]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Invalid options.
    #[error("harness options: {0}")]
    Options(String),
    /// A filesystem or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Prometheus exited or did not become ready in time.
    #[error("prometheus did not start: {reason}; last lines of its log:\n{log_tail}")]
    Startup {
        /// What happened.
        reason: String,
        /// The end of its log file.
        log_tail: String,
    },
    /// The condition waited for did not happen by the deadline.
    #[error("waited {waited:?} for {what}; last seen: {last}")]
    Deadline {
        /// The condition.
        what: String,
        /// How long.
        waited: Duration,
        /// The last observation or error.
        last: String,
    },
    /// A query failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// A running Prometheus on `127.0.0.1:<free port>`; killed on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    url: String,
    scrape_interval: Duration,
    // Dropped after the child (field order), so the TSDB outlives the process.
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Writes the config, starts Prometheus and waits (up to 30 s) until `/-/ready` answers.
    pub async fn start(options: PrometheusOptions) -> Result<PrometheusServer, HarnessError> {
        let bin = Path::new(PROMETHEUS_BIN);
        if !bin.exists() {
            return Err(HarnessError::NotInstalled { path: bin.into() });
        }
        let dir = tempfile::Builder::new()
            .prefix("cutover-prometheus-")
            .tempdir()
            .map_err(io("creating a tempdir"))?;
        let config = write_config(dir.path(), &options)?;
        // The free port is found by binding :0 and releasing it; another process may grab it
        // in between, so a bind failure is retried with a fresh port.
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            match Self::spawn(bin, dir.path(), &config, port).await {
                Ok((child, addr)) => {
                    return Ok(PrometheusServer {
                        child,
                        addr,
                        url: format!("http://{addr}"),
                        scrape_interval: options.scrape_interval,
                        dir,
                    })
                }
                Err(e @ HarnessError::Startup { .. })
                    if e.to_string().contains("address already in use") =>
                {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HarnessError::Options("no free port".into())))
    }

    async fn spawn(
        bin: &Path,
        dir: &Path,
        config: &Path,
        port: u16,
    ) -> Result<(Child, SocketAddr), HarnessError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).map_err(io("creating prometheus.log"))?;
        let log2 = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawning prometheus"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let uri: http::Uri = format!("http://{addr}/-/ready")
            .parse()
            .map_err(|e| HarnessError::Options(format!("{e}")))?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        loop {
            if let Some(status) = child.try_wait().map_err(io("polling prometheus"))? {
                return Err(HarnessError::Startup {
                    reason: format!("it exited with {status}"),
                    log_tail: log_tail(&log_path),
                });
            }
            let probe = tokio::time::timeout(Duration::from_secs(1), http.get(uri.clone())).await;
            if let Ok(Ok(r)) = probe {
                if r.status().is_success() {
                    return Ok((child, addr));
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(HarnessError::Startup {
                    reason: "/-/ready did not answer 200 within 30s".into(),
                    log_tail: log_tail(&log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tempdir holding config, data and `prometheus.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Prometheus's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// A client with a 5 s timeout and 2 retries.
    pub fn client(&self) -> PrometheusClient {
        PrometheusClient::new(&self.url, Duration::from_secs(5), 2)
            .expect("the harness's own URL is valid")
    }

    /// Polls until every series matching `selector` holds at least `n` samples from the last
    /// hour (and there is at least one series), then returns them; fails at `deadline`.
    pub async fn wait_for_samples(
        &self,
        selector: &str,
        n: usize,
        deadline: Duration,
    ) -> Result<Vec<SeriesDump>, HarnessError> {
        let client = self.client();
        let start = Instant::now();
        let poll =
            (self.scrape_interval / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let last = match client.raw_series(selector, now_ms(), 3_600_000).await {
                Ok(series) if !series.is_empty() && series.iter().all(|s| s.samples.len() >= n) => {
                    return Ok(series)
                }
                Ok(series) => format!(
                    "{} series, sample counts {:?}",
                    series.len(),
                    series.iter().map(|s| s.samples.len()).collect::<Vec<_>>()
                ),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= deadline {
                return Err(HarnessError::Deadline {
                    what: format!("{n} samples of every series matching {selector}"),
                    waited: deadline,
                    last,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Kills Prometheus and waits for it to exit.
    pub async fn stop(mut self) -> Result<(), HarnessError> {
        self.child.kill().await.map_err(io("killing prometheus"))
    }
}

/// Wall-clock Unix milliseconds: Prometheus timestamps its samples with it.
pub fn now_ms() -> i64 {
    cutover_clock::unix_millis() as i64
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        what: what.to_string(),
        source,
    }
}

fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Prometheus durations: an integer with a unit; milliseconds are always exact.
fn duration(d: Duration, field: &str) -> Result<String, HarnessError> {
    let ms = d.as_millis();
    if ms == 0 {
        return Err(HarnessError::Options(format!(
            "{field} must be at least 1ms"
        )));
    }
    Ok(format!("{ms}ms"))
}

/// YAML scalars are written as JSON strings, which YAML reads verbatim.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn write_config(dir: &Path, o: &PrometheusOptions) -> Result<PathBuf, HarnessError> {
    let scrape = duration(o.scrape_interval, "scrape_interval")?;
    let mut y = String::new();
    let _ = writeln!(y, "global:");
    let _ = writeln!(y, "  scrape_interval: {scrape}");
    // The default scrape timeout (10s) must not exceed the interval.
    let _ = writeln!(y, "  scrape_timeout: {scrape}");
    let _ = writeln!(
        y,
        "  evaluation_interval: {}",
        duration(o.evaluation_interval, "evaluation_interval")?
    );
    if !o.rule_files.is_empty() {
        let _ = writeln!(y, "rule_files:");
        for (i, text) in o.rule_files.iter().enumerate() {
            let path = dir.join(format!("rules-{i}.yml"));
            std::fs::write(&path, text).map_err(io("writing a rule file"))?;
            let _ = writeln!(y, "  - {}", quote(&path.display().to_string()));
        }
    }
    let _ = writeln!(y, "scrape_configs:");
    for (i, t) in o.targets.iter().enumerate() {
        let _ = writeln!(y, "  - job_name: target-{i}");
        let _ = writeln!(y, "    metrics_path: {}", quote(&t.metrics_path));
        if let Some(token) = &t.bearer_token {
            let path = dir.join(format!("token-{i}"));
            std::fs::write(&path, token).map_err(io("writing a bearer token file"))?;
            let _ = writeln!(y, "    authorization:");
            let _ = writeln!(y, "      type: Bearer");
            let _ = writeln!(
                y,
                "      credentials_file: {}",
                quote(&path.display().to_string())
            );
        }
        let _ = writeln!(y, "    static_configs:");
        let _ = writeln!(y, "      - targets: [{}]", quote(&t.addr.to_string()));
        if !t.labels.is_empty() {
            let _ = writeln!(y, "        labels:");
            for (k, v) in &t.labels {
                let _ = writeln!(y, "          {}: {}", quote(k), quote(v));
            }
        }
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, y).map_err(io("writing prometheus.yml"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_ms_intervals_tokens_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let o = PrometheusOptions {
            targets: vec![ScrapeTarget {
                addr: "127.0.0.1:8080".parse().unwrap(),
                metrics_path: "/metrics".into(),
                bearer_token: Some("s3cret".into()),
                labels: [("track".to_string(), "canary".to_string())].into(),
            }],
            scrape_interval: Duration::from_millis(100),
            evaluation_interval: Duration::from_secs(1),
            rule_files: vec!["groups: []\n".into()],
        };
        let path = write_config(dir.path(), &o).unwrap();
        let y = std::fs::read_to_string(path).unwrap();
        assert!(y.contains("scrape_interval: 100ms"), "{y}");
        assert!(y.contains("scrape_timeout: 100ms"), "{y}");
        assert!(y.contains("evaluation_interval: 1000ms"), "{y}");
        assert!(y.contains("credentials_file:"), "{y}");
        assert!(y.contains(r#""track": "canary""#), "{y}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("token-0")).unwrap(),
            "s3cret"
        );
        assert!(dir.path().join("rules-0.yml").exists());
        let zero = PrometheusOptions {
            scrape_interval: Duration::ZERO,
            ..PrometheusOptions::default()
        };
        assert!(write_config(dir.path(), &zero).is_err());
    }
}
