//! WebSocket order clients: the "no order lost, none duplicated" side of the load generator.
//!
//! Each client holds one WebSocket to `path` (`client-<n>` in [`OrdersConfig::client_header`]
//! and optionally in a query parameter) and sends orders `{"id": "<run>-<n>-<seq>"}` at its
//! rate. An order stays **unacked** until a reply `{"id": ..., "version": ...}` names it.
//! Whenever the socket ends — a close frame (1012 during a rollout), an error, a dropped TCP
//! connection — the client records how it ended, reconnects after
//! [`OrdersConfig::reconnect_delay`] and first **resends every unacked order, in order**, then
//! carries on with new ones. Error replies (`{"id": ..., "error": "draining"}`) leave the order
//! unacked, so it is resent after the next reconnect.
//!
//! The server must be idempotent by id for resends not to duplicate executions; the report
//! lets a test check the client side: `acked` holds every id once, and after
//! [`Orders::stop`] `unacked` is empty when every order made it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Key in [`OrdersReport::closes`] for a socket that ended without a close frame (TCP reset or
/// EOF, protocol error: what browsers report as 1006).
pub const ABNORMAL_CLOSE: &str = "abnormal";

/// Deadline for one connection attempt (TCP + WebSocket handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a close frame or a failed send, how long to keep reading for the rest of the closing
/// handshake (or for the close frame that explains the failure).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Shortest interval between two orders of one client.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Where to connect, how many clients, how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct OrdersConfig {
    /// Address to connect to (plain `ws://`).
    pub target: SocketAddr,
    /// WebSocket path, e.g. `/orders`.
    pub path: String,
    /// Number of clients, each with its own socket (`client-0` ..).
    pub clients: usize,
    /// New orders per second per client (0 sends none; resends are not rate limited).
    pub rate_per_client: f64,
    /// Header carrying the client id on the upgrade request (empty: none).
    pub client_header: String,
    /// Also pass the client id as this query parameter (for proxies that route on the query).
    pub client_query: Option<String>,
    /// Pause between a socket ending and the next connection attempt.
    pub reconnect_delay: Duration,
    /// Prefix of every order id, so two runs against the same server never collide.
    pub run_id: String,
    /// How long [`Orders::stop`] keeps reconnecting and resending for outstanding acks.
    pub stop_timeout: Duration,
}

impl OrdersConfig {
    /// Defaults: `/orders`, 10 clients at 10 orders/s, `x-client-id`, no query parameter,
    /// 100 ms reconnect delay, a random run id, 10 s stop timeout.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            path: "/orders".to_owned(),
            clients: 10,
            rate_per_client: 10.0,
            client_header: "x-client-id".to_owned(),
            client_query: None,
            reconnect_delay: Duration::from_millis(100),
            run_id: format!("run{:08x}", rand::random::<u32>()),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// A view of the order clients, live ([`Orders::snapshot`]) or final ([`Orders::stop`]).
///
/// `sent_unique == acked.len() + unacked.len()` always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrdersReport {
    /// Distinct orders created (resends not counted).
    pub sent_unique: u64,
    /// Ids acknowledged, each once.
    pub acked: BTreeSet<String>,
    /// Acks for ids already acked (the server answered a resend, or answered twice).
    pub duplicate_acks: u64,
    /// Acks for ids this run never sent.
    pub unexpected_acks: u64,
    /// Orders without an ack yet, per client in sending order (client 0 first).
    pub unacked: Vec<String>,
    /// How sockets ended, seen from the client: the close code (`"1012"`, `"1000"`, `"1001"`;
    /// `"1005"` for a close frame without a code) or [`ABNORMAL_CLOSE`]. The clients' own
    /// closes at the end of [`Orders::stop`] are not counted.
    pub closes: BTreeMap<String, u64>,
    /// Successful connections after a client's first one.
    pub reconnects: u64,
    /// Connection attempts that failed (refused, timed out, handshake rejected e.g. 503).
    pub connect_failures: u64,
    /// Acked orders by the `version` in their ack (each id counted once).
    pub acked_by_version: BTreeMap<String, u64>,
    /// Error replies by their `error` text (e.g. `"draining"`); the order stays unacked.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    report: OrdersReport,
    /// Per client: unacked orders by sequence number (so resends keep sending order).
    unacked: Vec<BTreeMap<u64, String>>,
}

impl State {
    fn snapshot(&self) -> OrdersReport {
        let mut r = self.report.clone();
        r.unacked = self
            .unacked
            .iter()
            .flat_map(|m| m.values().cloned())
            .collect();
        r
    }
}

/// A reply from the server, as far as the client cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ack { id: String, version: String },
    Error { id: Option<String>, error: String },
    Other,
}

fn parse_reply(text: &str) -> Reply {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Reply::Other;
    };
    let id = v.get("id").and_then(|id| id.as_str()).map(str::to_owned);
    if let Some(error) = v.get("error") {
        let error = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_owned);
        return Reply::Error { id, error };
    }
    match (id, v.get("version").and_then(|v| v.as_str())) {
        (Some(id), Some(version)) => Reply::Ack {
            id,
            version: version.to_owned(),
        },
        _ => Reply::Other,
    }
}

/// The [`OrdersReport::closes`] key of a close frame.
fn close_key(frame: Option<&CloseFrame<'_>>) -> String {
    match frame {
        Some(f) => u16::from(f.code).to_string(),
        None => "1005".to_owned(),
    }
}

#[derive(Debug)]
struct Shared {
    cfg: OrdersConfig,
    state: Mutex<State>,
    /// `Some(deadline)` once stopping: no new orders; give up on acks at the deadline.
    stop: watch::Receiver<Option<Instant>>,
}

/// Running order clients. Dropping it makes every client close and exit promptly;
/// [`Orders::stop`] first waits (bounded) for the outstanding acks.
#[derive(Debug)]
pub struct Orders {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Orders {
    /// Starts `cfg.clients` clients on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(cfg: OrdersConfig) -> Orders {
        let (stop_tx, stop) = watch::channel(None);
        let state = State {
            report: OrdersReport::default(),
            unacked: vec![BTreeMap::new(); cfg.clients],
        };
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(state),
            stop,
        });
        let tasks = (0..shared.cfg.clients)
            .map(|n| tokio::spawn(client(n, Arc::clone(&shared))))
            .collect();
        Orders {
            shared,
            stop_tx,
            tasks,
        }
    }

    /// The configuration the clients run with.
    pub fn config(&self) -> &OrdersConfig {
        &self.shared.cfg
    }

    /// The counters so far.
    pub fn snapshot(&self) -> OrdersReport {
        self.shared.state.lock().unwrap().snapshot()
    }

    /// Stops creating orders, keeps reconnecting and resending until every order is acked or
    /// [`OrdersConfig::stop_timeout`] has passed, closes every socket with 1000 and returns the
    /// final report (orders never acked are in [`OrdersReport::unacked`]).
    pub async fn stop(mut self) -> OrdersReport {
        let deadline = Instant::now() + self.shared.cfg.stop_timeout;
        self.stop_tx.send_replace(Some(deadline));
        // Every client bounds itself by the deadline; the margin covers one closing handshake
        // and a connection attempt begun just before it.
        let hard = deadline + CLOSE_GRACE + CONNECT_TIMEOUT;
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(hard, task).await.is_err() {
                abort.abort();
            }
        }
        self.snapshot()
    }
}

impl Drop for Orders {
    fn drop(&mut self) {
        // A deadline already passed: clients stop without waiting for acks.
        self.stop_tx.send_replace(Some(Instant::now()));
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one connection ended.
enum Ended {
    /// The socket ended; the key for [`OrdersReport::closes`].
    Closed(String),
    /// Stopping, and nothing left to wait for (or the deadline passed): we closed with 1000.
    Done,
}

fn build_request(cfg: &OrdersConfig, client_id: &str) -> Result<Request, String> {
    let mut uri = format!("ws://{}{}", cfg.target, cfg.path);
    if let Some(q) = &cfg.client_query {
        let sep = if uri.contains('?') { '&' } else { '?' };
        uri = format!("{uri}{sep}{q}={client_id}");
    }
    let mut req = uri
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid request {uri:?}: {e}"))?;
    if !cfg.client_header.is_empty() {
        let name = HeaderName::try_from(cfg.client_header.as_str())
            .map_err(|e| format!("invalid client header {:?}: {e}", cfg.client_header))?;
        let value = HeaderValue::from_str(client_id).map_err(|e| e.to_string())?;
        req.headers_mut().insert(name, value);
    }
    Ok(req)
}

/// One client: connect, resend, send, and again after every socket end, until stopped.
async fn client(n: usize, shared: Arc<Shared>) {
    let cfg = &shared.cfg;
    let client_id = format!("client-{n}");
    let req = match build_request(cfg, &client_id) {
        Ok(req) => req,
        Err(e) => {
            *shared
                .state
                .lock()
                .unwrap()
                .report
                .errors
                .entry(e)
                .or_default() += 1;
            return;
        }
    };
    let mut seq: u64 = 0;
    let mut connected_before = false;
    loop {
        if let Some(deadline) = *shared.stop.borrow() {
            let idle = shared.state.lock().unwrap().unacked[n].is_empty();
            if idle || Instant::now() >= deadline {
                return;
            }
        }
        let connect_deadline = match *shared.stop.borrow() {
            Some(d) => d.min(Instant::now() + CONNECT_TIMEOUT),
            None => Instant::now() + CONNECT_TIMEOUT,
        };
        let connected = tokio::time::timeout_at(
            connect_deadline,
            tokio_tungstenite::connect_async(req.clone()),
        )
        .await;
        match connected {
            Ok(Ok((mut ws, _))) => {
                if connected_before {
                    shared.state.lock().unwrap().report.reconnects += 1;
                }
                connected_before = true;
                match connection(n, &shared, &mut ws, &mut seq).await {
                    Ended::Done => return,
                    Ended::Closed(key) => {
                        *shared
                            .state
                            .lock()
                            .unwrap()
                            .report
                            .closes
                            .entry(key)
                            .or_default() += 1;
                    }
                }
            }
            Ok(Err(_)) | Err(_) => shared.state.lock().unwrap().report.connect_failures += 1,
        }
        // Not cut short by a stop: the unacked orders still have to be resent.
        let mut stop = shared.stop.clone();
        let wake = Instant::now() + cfg.reconnect_delay;
        loop {
            let until = match *stop.borrow() {
                Some(deadline) => wake.min(deadline),
                None => wake,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                // A stop deadline earlier than the wake-up: recompute.
                r = stop.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Sends `id` as an order.
async fn send_order(ws: &mut Ws, id: &str) -> bool {
    let text = serde_json::json!({ "id": id }).to_string();
    ws.send(Message::text(text)).await.is_ok()
}

/// After a failed send: the close frame that explains it, if one arrives soon.
async fn why_ended(ws: &mut Ws) -> Ended {
    let found = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return Some(close_key(frame.as_ref())),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await;
    Ended::Closed(
        found
            .ok()
            .flatten()
            .unwrap_or_else(|| ABNORMAL_CLOSE.to_owned()),
    )
}

/// Serves one connection: resends the unacked orders, then sends new ones at the rate and
/// records replies, until the socket ends or the client is done.
async fn connection(n: usize, shared: &Shared, ws: &mut Ws, seq: &mut u64) -> Ended {
    let cfg = &shared.cfg;
    let mut stop = shared.stop.clone();
    let prefix = format!("{}-{n}-", cfg.run_id);

    // Resend before anything new, in the original order: the server sees this client's
    // orders in sequence even across reconnects.
    let pending: Vec<String> = shared.state.lock().unwrap().unacked[n]
        .values()
        .cloned()
        .collect();
    for id in &pending {
        if !send_order(ws, id).await {
            return why_ended(ws).await;
        }
    }

    let period = (cfg.rate_per_client > 0.0 && cfg.rate_per_client.is_finite())
        .then(|| Duration::from_secs_f64(1.0 / cfg.rate_per_client).max(MIN_PERIOD));
    // The first tick of an interval is immediate; start one period in, so a reconnect does
    // not fire an extra order at once.
    let mut tick = period.map(|p| {
        let mut i = tokio::time::interval_at(Instant::now() + p, p);
        // Orders are not made up for time lost while blocked on a slow socket.
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });

    loop {
        let deadline = *stop.borrow();
        if let Some(deadline) = deadline {
            let idle = shared.state.lock().unwrap().unacked[n].is_empty();
            if idle || Instant::now() >= deadline {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                if ws.close(Some(frame)).await.is_ok() {
                    // Complete the closing handshake (bounded): read until the server's reply.
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        while ws.next().await.is_some() {}
                    })
                    .await;
                }
                return Ended::Done;
            }
        }
        let stopping = deadline.is_some();
        tokio::select! {
            // Replies first: they settle orders.
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => record_reply(shared, n, &prefix, &t),
                Some(Ok(Message::Close(frame))) => {
                    let key = close_key(frame.as_ref());
                    // Let tungstenite send its close reply and see the end of the stream.
                    let _ =
                        tokio::time::timeout(CLOSE_GRACE, async { while ws.next().await.is_some() {} })
                            .await;
                    return Ended::Closed(key);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Closed(ABNORMAL_CLOSE.to_owned()),
            },
            _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() && !stopping => {
                *seq += 1;
                let id = format!("{prefix}{seq}");
                {
                    // Unacked before it is sent: its ack can only come after.
                    let mut st = shared.state.lock().unwrap();
                    st.unacked[n].insert(*seq, id.clone());
                    st.report.sent_unique += 1;
                }
                if !send_order(ws, &id).await {
                    return why_ended(ws).await;
                }
            }
            r = stop.changed(), if !stopping => if r.is_err() { return Ended::Done },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if stopping => {}
        }
    }
}

fn record_reply(shared: &Shared, n: usize, prefix: &str, text: &str) {
    let mut st = shared.state.lock().unwrap();
    match parse_reply(text) {
        Reply::Ack { id, version } => {
            let seq = id.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok());
            let settled = seq.is_some_and(|s| st.unacked[n].remove(&s).is_some());
            if settled {
                st.report.acked.insert(id);
                *st.report.acked_by_version.entry(version).or_default() += 1;
            } else if st.report.acked.contains(&id) {
                st.report.duplicate_acks += 1;
            } else {
                st.report.unexpected_acks += 1;
            }
        }
        Reply::Error { error, .. } => *st.report.errors.entry(error).or_default() += 1,
        Reply::Other => {
            *st.report
                .errors
                .entry("unexpected reply".to_owned())
                .or_default() += 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_reply(r#"{"id":"r-0-1","version":"v2"}"#),
            Reply::Ack {
                id: "r-0-1".into(),
                version: "v2".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"id":"r-0-1","error":"draining"}"#),
            Reply::Error {
                id: Some("r-0-1".into()),
                error: "draining".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"error":"bad"}"#),
            Reply::Error {
                id: None,
                error: "bad".into()
            }
        );
        assert_eq!(parse_reply("nope"), Reply::Other);
        assert_eq!(parse_reply(r#"{"id":"x"}"#), Reply::Other);
    }

    #[test]
    fn close_keys() {
        let f = |code: u16| CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        assert_eq!(close_key(Some(&f(1012))), "1012");
        assert_eq!(close_key(Some(&f(1000))), "1000");
        assert_eq!(close_key(None), "1005");
    }

    #[test]
    fn requests_carry_the_client_id() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cfg = OrdersConfig {
            client_query: Some("client".into()),
            ..OrdersConfig::new(addr)
        };
        let req = build_request(&cfg, "client-3").unwrap();
        assert_eq!(
            req.uri().to_string(),
            "ws://127.0.0.1:9/orders?client=client-3"
        );
        assert_eq!(req.headers()["x-client-id"], "client-3");
        let bad = OrdersConfig {
            client_header: "bad header".into(),
            ..cfg
        };
        assert!(build_request(&bad, "client-0").is_err());
    }

    #[test]
    fn acks_settle_once() {
        let (_tx, stop) = watch::channel(None);
        let shared = Shared {
            cfg: OrdersConfig::new("127.0.0.1:9".parse().unwrap()),
            state: Mutex::new(State {
                report: OrdersReport::default(),
                unacked: vec![BTreeMap::from([(1, "r-0-1".into()), (2, "r-0-2".into())])],
            }),
            stop,
        };
        shared.state.lock().unwrap().report.sent_unique = 2;
        let ack = r#"{"id":"r-0-1","version":"v1"}"#;
        record_reply(&shared, 0, "r-0-", ack);
        record_reply(&shared, 0, "r-0-", ack);
        record_reply(&shared, 0, "r-0-", r#"{"id":"r-0-9","version":"v1"}"#);
        record_reply(&shared, 0, "r-0-", r#"{"id":"r-0-2","error":"draining"}"#);
        let r = shared.state.lock().unwrap().snapshot();
        assert_eq!(r.acked, BTreeSet::from(["r-0-1".to_owned()]));
        assert_eq!((r.duplicate_acks, r.unexpected_acks), (1, 1));
        assert_eq!(r.unacked, ["r-0-2"]);
        assert_eq!(r.errors["draining"], 1);
        assert_eq!(r.acked_by_version["v1"], 1);
    }
}
