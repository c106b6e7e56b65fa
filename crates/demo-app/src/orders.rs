//! The order endpoint `GET /orders`: a WebSocket on which every text message is an order.
//!
//! The point of this endpoint is to let tests and demos prove that a rollout neither loses nor
//! duplicates an order, so the rules are strict:
//!
//! - An order is **executed** (after `--order-delay`) by appending `"<id> <version>\n"` to
//!   `<state-dir>/executed.log` (written and flushed to the OS, no fsync) and only **then**
//!   acknowledged with `{"id": "...", "version": "..."}`. An ack therefore proves the execution
//!   is on record; a missing ack proves nothing (the client must resend).
//! - Execution is **idempotent by id within this process**: an id seen again (a client
//!   resending after a reconnect, possibly on another socket, possibly while the first copy is
//!   still executing) is executed at most once and acked every time.
//! - **Drain** (`POST /drain` or SIGTERM): open sockets stop taking new orders (they are
//!   answered `{"id": "...", "error": "draining"}` so the client resends them elsewhere), the
//!   orders in progress are executed and acked, then each socket is closed with 1012
//!   (service restart). New connections are refused with 503.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use rand::Rng as _;
use tokio::sync::OnceCell;

use crate::AppState;

/// Name of the executed-orders log inside `--state-dir`.
pub const EXECUTED_LOG: &str = "executed.log";

/// Longest accepted order id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Orders a single socket may have executing at once. Beyond it the socket is not read until
/// one finishes: back-pressure on a misbehaving client instead of unbounded memory.
const MAX_IN_PROGRESS_PER_SOCKET: usize = 1024;

/// How long a drained session waits for the client's close frame after sending its own.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);

/// Execution record of one process: which ids ran, in which order, and where they are logged.
#[derive(Debug)]
pub(crate) struct OrderBook {
    version: String,
    delay: Duration,
    jitter: Duration,
    /// One cell per id ever received. The cell is set once the execution is on record; a
    /// concurrent duplicate waits on the same cell instead of executing a second time. If the
    /// executing socket goes away before the write, the cell stays empty and a resend may run it.
    cells: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    /// Executed ids in execution order (also what the log holds when there is one).
    executed: Mutex<Vec<String>>,
    log: Option<Mutex<File>>,
    executed_total: AtomicU64,
    in_progress: AtomicI64,
}

impl OrderBook {
    /// Opens (appending, creating the directory if needed) `<state_dir>/executed.log`; without
    /// a state directory executions are only kept in memory.
    pub(crate) fn open(
        version: &str,
        delay: Duration,
        jitter: Duration,
        state_dir: Option<&Path>,
    ) -> std::io::Result<Self> {
        let log = match state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(EXECUTED_LOG))?;
                Some(Mutex::new(file))
            }
            None => None,
        };
        Ok(Self {
            version: version.to_owned(),
            delay,
            jitter,
            cells: Mutex::new(HashMap::new()),
            executed: Mutex::new(Vec::new()),
            log,
            executed_total: AtomicU64::new(0),
            in_progress: AtomicI64::new(0),
        })
    }

    /// Ids executed by this process, in execution order.
    pub(crate) fn executed(&self) -> Vec<String> {
        self.executed.lock().unwrap().clone()
    }

    pub(crate) fn executed_total(&self) -> u64 {
        self.executed_total.load(Ordering::SeqCst)
    }

    pub(crate) fn in_progress(&self) -> i64 {
        self.in_progress.load(Ordering::SeqCst)
    }

    fn cell(&self, id: &str) -> Arc<OnceCell<()>> {
        Arc::clone(self.cells.lock().unwrap().entry(id.to_owned()).or_default())
    }

    /// Whether `id` is already on record (executed by this process).
    fn is_executed(&self, id: &str) -> bool {
        self.cells
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|c| c.initialized())
    }

    /// Executes `id` unless it already was (or waits for the copy in progress). Returns once the
    /// execution is on record.
    async fn execute_once(&self, id: &str) -> Result<(), String> {
        let cell = self.cell(id);
        // Counted for every copy waiting, so `demo_orders_in_progress` covers duplicates too.
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        struct Dec<'a>(&'a AtomicI64);
        impl Drop for Dec<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _dec = Dec(&self.in_progress);
        cell.get_or_try_init(|| self.execute(id)).await.map(|_| ())
    }

    async fn execute(&self, id: &str) -> Result<(), String> {
        let mut delay = self.delay;
        if !self.jitter.is_zero() {
            let nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
            delay += Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // No await from here on: once the line is written the execution is complete, so a
        // cancelled socket can never leave an execution on file that the cell does not know.
        if let Some(log) = &self.log {
            let mut f = log.lock().unwrap();
            // One write_all per line: appends of a single buffer do not interleave.
            f.write_all(format!("{id} {}\n", self.version).as_bytes())
                .and_then(|()| f.flush())
                .map_err(|e| format!("execution failed: {e}"))?;
        }
        self.executed.lock().unwrap().push(id.to_owned());
        self.executed_total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Parses an order message; the error is the text sent back.
fn parse_order(text: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid order JSON: {e}"))?;
    let id = v
        .get("id")
        .and_then(|id| id.as_str())
        .ok_or("an order needs a string \"id\"")?;
    // The executed log is `id version` per line: whitespace or control characters in an id
    // would make it ambiguous.
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "invalid order id: 1 to {MAX_ID_LEN} bytes, no whitespace or control characters"
        ));
    }
    Ok(id.to_owned())
}

fn ack(id: &str, version: &str) -> Message {
    Message::Text(
        serde_json::json!({ "id": id, "version": version })
            .to_string()
            .into(),
    )
}

fn error(id: Option<&str>, error: &str) -> Message {
    let v = match id {
        Some(id) => serde_json::json!({ "id": id, "error": error }),
        None => serde_json::json!({ "error": error }),
    };
    Message::Text(v.to_string().into())
}

/// An execution running for one socket: yields the id and its outcome.
type OrderFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (String, Result<(), String>)> + Send + 'a>>;

/// Serves one order socket until the client leaves or a drain has finished it.
pub(crate) async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    let book = &state.orders;
    let version = state.cfg.version.as_str();
    let mut drain = state.drain_rx.clone();
    let mut in_progress: FuturesUnordered<OrderFuture<'_>> = FuturesUnordered::new();
    loop {
        // Drained: nothing in progress is left to ack, so the client may go.
        if state.is_draining() && in_progress.is_empty() {
            let frame = CloseFrame {
                code: 1012,
                reason: "service restart".into(),
            };
            if socket.send(Message::Close(Some(frame))).await.is_ok() {
                // Complete the close handshake (RFC 6455 §7.1.1: the server closes the TCP
                // connection once the client's close frame arrived). Dropping the socket at once
                // could meet an order the client sent meanwhile with a reset, which the client
                // sees as 1006 before it reads the 1012. Orders read here are not executed and
                // not acked: the client resends them elsewhere.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            return;
        }
        tokio::select! {
            // Acks first: they are what the client is waiting for.
            biased;
            Some((id, result)) = in_progress.next(), if !in_progress.is_empty() => {
                let reply = match result {
                    Ok(()) => ack(&id, version),
                    Err(e) => error(Some(&id), &e),
                };
                if socket.send(reply).await.is_err() {
                    return;
                }
            }
            // Only wakes the loop; the check at the top acts on it. (Wrapped because the `Ref`
            // that `wait_for` yields is not `Send`.)
            _ = async { drain.wait_for(|d| *d).await.is_ok() }, if !state.is_draining() => {}
            msg = socket.recv(), if in_progress.len() < MAX_IN_PROGRESS_PER_SOCKET => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let reply = error(None, "orders are JSON text messages");
                        if socket.send(reply).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The client left: unfinished executions are dropped here. An order whose
                    // line was written is on record (and acked again if resent to this
                    // process); one that was not never ran.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                };
                let id = match parse_order(text.as_str()) {
                    Ok(id) => id,
                    Err(e) => {
                        if socket.send(error(None, &e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                // The atomic, not the watch: it is set before `POST /drain` answers, so an
                // order sent after that answer is always refused.
                if state.is_draining() {
                    // An id already on record here is acked rather than bounced: bouncing it
                    // would make the client execute it a second time elsewhere.
                    let reply = if book.is_executed(&id) {
                        ack(&id, version)
                    } else {
                        error(Some(&id), "draining")
                    };
                    if socket.send(reply).await.is_err() {
                        return;
                    }
                    continue;
                }
                in_progress.push(Box::pin(async move {
                    let result = book.execute_once(&id).await;
                    (id, result)
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_parse() {
        assert_eq!(parse_order(r#"{"id":"a-1","qty":3}"#).unwrap(), "a-1");
        assert!(parse_order("not json").is_err());
        assert!(parse_order(r#"{"id":7}"#).is_err());
        assert!(parse_order(r#"{"id":""}"#).is_err());
        assert!(parse_order(r#"{"id":"a b"}"#).is_err());
        assert!(parse_order(r#"{"id":"a\nb"}"#).is_err());
        assert!(parse_order(&format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1))).is_err());
    }

    #[tokio::test]
    async fn concurrent_duplicates_execute_once() {
        let dir = tempfile::tempdir().unwrap();
        let book = OrderBook::open(
            "v9",
            Duration::from_millis(50),
            Duration::ZERO,
            Some(dir.path()),
        )
        .unwrap();
        let (a, b, c) = tokio::join!(
            book.execute_once("o1"),
            book.execute_once("o1"),
            book.execute_once("o2")
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        book.execute_once("o1").await.unwrap();
        let mut executed = book.executed();
        executed.sort();
        assert_eq!(executed, ["o1", "o2"]);
        assert!(book.is_executed("o1") && !book.is_executed("o3"));
        let log = std::fs::read_to_string(dir.path().join(EXECUTED_LOG)).unwrap();
        let mut lines: Vec<_> = log.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["o1 v9", "o2 v9"]);
        assert_eq!(book.in_progress(), 0);
    }

    #[tokio::test]
    async fn cancelled_execution_is_not_on_record() {
        let book = OrderBook::open("v1", Duration::from_secs(60), Duration::ZERO, None).unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), book.execute_once("o1")).await;
        assert!(r.is_err());
        assert!(!book.is_executed("o1"));
        assert!(book.executed().is_empty());
        assert_eq!(book.in_progress(), 0);
    }
}
