//! # cutover-notify: rollout events to webhook sinks
//!
//! Tells people and systems what a rollout did (`started`, `step`, `held`, `paused`, `promoted`,
//! `aborted`, `rolled_back`, ...) by POSTing a [`Notice`] to webhook sinks: a generic JSON
//! receiver or a Slack incoming webhook ([`Format`]). Delivery happens in the background, one
//! worker task per sink, with a per-attempt timeout and exponential backoff, in order per sink.
//!
//! What it must never do is **block or slow a rollout decision**. Notifications are a courtesy;
//! the decision (and the rollback that protects users) is not. So [`Notifier::notify`] is a
//! plain function that never awaits: it offers the notice to each sink's *bounded* queue and
//! returns. A sink that is slow or down fills its own queue, after which its notices are
//! dropped and counted ([`SinkStats::dropped`]): neither memory nor the caller's latency grows
//! with a sink's outage, and a dead sink never delays a healthy one.
//!
//! Delivery is best effort: a notice that still fails after [`SinkConfig::max_attempts`] is
//! given up and counted ([`SinkStats::failed`]), and one whose attempt timed out after the
//! receiver had acted on it may arrive twice. The audit log, not this, is the record.
#![forbid(unsafe_code)]

mod deliver;
mod format;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

pub use cutover_core::spec::NotifyKind;
pub use format::render;

/// One rollout event, as sent to every sink (the `Json` format is exactly this, serialised).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    /// `started`, `step`, `held`, `paused`, `resumed`, `promoted`, `aborted`, `rolled_back`, ...
    pub kind: NotifyKind,
    pub service: String,
    pub rollout: Option<u64>,
    pub version: Option<String>,
    /// Unix time in milliseconds, as decided by the caller (this crate reads no clock for it).
    pub at_ms: u64,
    /// Why it happened, for a human: e.g. the gate that failed.
    pub reason: String,
    /// The key numbers behind the event (weights, error ratios, latencies): an object of
    /// name → value, or `null`.
    pub numbers: serde_json::Value,
    /// Where this decision sits in cutover's audit chain: kept by whoever receives the notice,
    /// it anchors the chain outside the host (docs/audit.md), so deleting the newest records
    /// from the state store is detectable even if the local head file is rewritten too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditAnchor>,
}

/// A record of the audit chain: its sequence number and its HMAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    pub seq: i64,
    pub mac: String,
}

/// How a sink wants the notice encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The [`Notice`] as JSON.
    Json,
    /// A Slack incoming-webhook message (`text` plus Block Kit `blocks`).
    Slack,
}

/// One webhook sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Names the sink in errors, logs and [`SinkStats`]; unique.
    pub name: String,
    /// `http://host[:port]/path`. Only plain HTTP: TLS would need a client stack this crate does
    /// not carry; put a local relay in front of an `https://` endpoint.
    pub url: String,
    pub format: Format,
    /// Only these kinds are sent to this sink; `None` sends every kind.
    pub kinds: Option<Vec<NotifyKind>>,
    /// Per attempt, covering connect, request and response.
    pub timeout: Duration,
    /// Attempts per notice, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each further retry...
    pub backoff_initial: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
}

/// Counters of one sink, as [`Notifier::stats`] reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    pub name: String,
    /// Notices the sink accepted (2xx).
    pub delivered: u64,
    /// Notices given up after `max_attempts` failed attempts.
    pub failed: u64,
    /// Attempts after the first (one notice retried twice counts 2).
    pub retried: u64,
    /// Notices refused because the sink's queue was full.
    pub dropped: u64,
    /// Notices accepted and not yet delivered or given up (the one in flight included).
    pub queued: u64,
}

/// What can be wrong with the sinks given to [`Notifier::start`]. Each names the sink and the fix.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify sink {sink:?}: url {url:?} is not valid: {reason}")]
    InvalidUrl {
        sink: String,
        url: String,
        reason: String,
    },
    #[error("notify sink {sink:?}: {field}: {reason}")]
    InvalidConfig {
        sink: String,
        field: &'static str,
        reason: String,
    },
    #[error("notify sink name {0:?} is used twice: give each sink a unique name")]
    DuplicateName(String),
    #[error("notify queue length must be at least 1")]
    ZeroQueue,
    #[error("Notifier::start must be called inside a tokio runtime (it spawns the sink workers)")]
    NoRuntime,
}

/// Sends [`Notice`]s to the configured sinks in the background. Cheap to clone; the workers stop
/// once every clone is dropped and their queues are drained.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    sinks: Vec<SinkHandle>,
    /// Woken whenever a sink's `queued` drops to zero, so `flush` waits without polling.
    idle: Arc<Notify>,
}

struct SinkHandle {
    name: String,
    kinds: Option<Vec<NotifyKind>>,
    tx: mpsc::Sender<Notice>,
    counters: Arc<Counters>,
}

/// Shared between `notify` (the caller's thread) and the sink's worker; atomics so neither ever
/// waits for the other.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
}

impl Notifier {
    /// Validates every sink, then spawns one worker per sink on the current tokio runtime.
    /// `queue` bounds each sink's backlog (notices beyond it are dropped, see [`Notifier::notify`]).
    pub fn start(sinks: Vec<SinkConfig>, queue: usize) -> Result<Notifier, NotifyError> {
        if queue == 0 {
            return Err(NotifyError::ZeroQueue);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let mut names = HashSet::new();
        let mut prepared = Vec::with_capacity(sinks.len());
        for cfg in sinks {
            if !names.insert(cfg.name.clone()) {
                return Err(NotifyError::DuplicateName(cfg.name));
            }
            let uri = deliver::validate(&cfg)?;
            prepared.push((cfg, uri));
        }
        // Spawn only once everything is valid, so an error leaves nothing running.
        let idle = Arc::new(Notify::new());
        let handles = prepared
            .into_iter()
            .map(|(cfg, uri)| {
                let (tx, rx) = mpsc::channel(queue);
                let counters = Arc::new(Counters::default());
                let handle = SinkHandle {
                    name: cfg.name.clone(),
                    kinds: cfg.kinds.clone(),
                    tx,
                    counters: counters.clone(),
                };
                runtime.spawn(deliver::worker(cfg, uri, rx, counters, idle.clone()));
                handle
            })
            .collect();
        Ok(Notifier {
            inner: Arc::new(Inner {
                sinks: handles,
                idle,
            }),
        })
    }

    /// Offers `n` to every sink whose `kinds` match. Never awaits and never blocks, so it is
    /// safe to call from the decision path.
    ///
    /// A sink whose queue is full gets nothing: the notice is dropped for that sink and counted.
    /// Waiting for room would let a sink that is down slow the rollout's decisions, and an
    /// unbounded queue would let it grow memory for as long as it stays down; losing a
    /// notification is the cheaper failure (the audit log keeps the full history).
    pub fn notify(&self, n: Notice) {
        for sink in &self.inner.sinks {
            if let Some(kinds) = &sink.kinds {
                if !kinds.contains(&n.kind) {
                    continue;
                }
            }
            // Counted before the send so the worker can never finish the notice (and decrement)
            // before it was counted.
            sink.counters.queued.fetch_add(1, Ordering::SeqCst);
            if sink.tx.try_send(n.clone()).is_err() {
                sink.counters.queued.fetch_sub(1, Ordering::SeqCst);
                let before = sink.counters.dropped.fetch_add(1, Ordering::Relaxed);
                // Log the 1st, 2nd, 4th, 8th... drop: an outage is visible without the log
                // itself becoming a cost proportional to the event rate.
                let total = before + 1;
                if total.is_power_of_two() {
                    tracing::warn!(
                        sink = %sink.name,
                        dropped = total,
                        "notification queue full: dropping notices for this sink"
                    );
                }
            }
        }
    }

    /// A snapshot of every sink's counters, in configuration order.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.inner
            .sinks
            .iter()
            .map(|s| {
                let c = &s.counters;
                SinkStats {
                    name: s.name.clone(),
                    delivered: c.delivered.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    queued: c.queued.load(Ordering::SeqCst),
                }
            })
            .collect()
    }

    /// Waits until every accepted notice has been delivered or given up, or until `deadline`
    /// has passed; returns whether everything was flushed. For shutdown and tests: nothing on
    /// the decision path should ever wait on this.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Register interest before checking, so a wake-up between the check and the await
            // is not lost.
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.is_idle();
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.inner
            .sinks
            .iter()
            .all(|s| s.counters.queued.load(Ordering::SeqCst) == 0)
    }
}
