//! Frame-aware WebSocket relay and its drain.
//!
//! Upholds DESIGN.md invariant 4 (drain before stop; WebSockets get close code 1012 after the
//! drain window) for the sessions that outlive every request: a trading client holds one
//! WebSocket for hours and places orders over it. A byte tunnel can only be cut, which the
//! client sees as 1006 (abnormal closure) with no way to know whether the order it sent last
//! reached the instance — and a client that resends it may place it twice. Relaying frames
//! instead lets a drain act at frame boundaries:
//!
//! 1. client → instance frames stop at once (dropped, never half-written): a frame that never
//!    reached the instance cannot have been executed, so the client may safely resend it after
//!    reconnecting to another instance;
//! 2. instance → client frames keep flowing for the quiet period, so acks of orders the
//!    instance already took reach the client;
//! 3. then the client gets Close 1012 (service restart) and the instance Close 1001 (going
//!    away), both close handshakes are completed, and the connections end with a FIN — never a
//!    reset, never a 1006 made by cutover.
//!
//! A session the app (or the client) closes during the quiet period ends by that close, passed
//! through with its code and reason. Pings are answered by tungstenite on each hop; pongs only
//! answer that hop's pings, so neither is forwarded.

use crate::table::InFlight;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// The reason sent with the close frames that end a drained session.
pub(crate) const DRAIN_REASON: &str = "cutover: instance draining";

/// How long a close handshake may take once begun, before the connection is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`crate::Proxy::drain_websockets`] did; returned once every drained session ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsDrainReport {
    /// Sessions to the backend that were open when the drain began.
    pub sessions: usize,
    /// Of those, closed by the app during the quiet period (its close frame passed through).
    pub closed_by_app: usize,
    /// Closed by the client during the quiet period (its close frame passed through).
    pub closed_by_client: usize,
    /// Closed by cutover after the quiet period: 1012 to the client, 1001 to the instance.
    pub closed_by_cutover: usize,
    /// Ended without a close handshake: a peer's connection dropped.
    pub lost: usize,
}

/// How one session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    App,
    Client,
    Cutover,
    Lost,
}

/// Which side sent a close frame first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    App,
}

struct Handle {
    /// `Some(quiet)` once a drain was asked for (the first drain's quiet period wins).
    drain: watch::Sender<Option<Duration>>,
    /// Set by the session just before it ends.
    ended: watch::Receiver<Option<End>>,
}

/// Open WebSocket sessions by backend address.
#[derive(Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    by_backend: Mutex<HashMap<SocketAddr, HashMap<u64, Handle>>>,
}

/// One registered session; leaves the registry when dropped.
pub(crate) struct Session {
    sessions: Arc<Sessions>,
    addr: SocketAddr,
    id: u64,
    drain: watch::Receiver<Option<Duration>>,
    ended: watch::Sender<Option<End>>,
    end: Option<End>,
}

impl Sessions {
    /// Registers a session to `addr`; it counts from now (before the upgrade completes, so a
    /// drain cannot miss a session whose handshake is still finishing).
    pub(crate) fn register(self: &Arc<Self>, addr: SocketAddr) -> Session {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (drain_tx, drain_rx) = watch::channel(None);
        let (ended_tx, ended_rx) = watch::channel(None);
        self.lock().entry(addr).or_default().insert(
            id,
            Handle {
                drain: drain_tx,
                ended: ended_rx,
            },
        );
        Session {
            sessions: self.clone(),
            addr,
            id,
            drain: drain_rx,
            ended: ended_tx,
            end: None,
        }
    }

    pub(crate) fn count(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, HashMap::len)
    }

    /// Tells every session to `addr` to drain now; the future resolves once they all ended.
    pub(crate) fn drain(
        &self,
        addr: SocketAddr,
        quiet: Duration,
    ) -> impl Future<Output = WsDrainReport> + Send + 'static {
        let waits: Vec<watch::Receiver<Option<End>>> = self
            .lock()
            .get(&addr)
            .map(|sessions| {
                sessions
                    .values()
                    .map(|h| {
                        h.drain.send_if_modified(|q| {
                            let first = q.is_none();
                            if first {
                                *q = Some(quiet);
                            }
                            first
                        });
                        h.ended.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        async move {
            let mut report = WsDrainReport {
                sessions: waits.len(),
                ..WsDrainReport::default()
            };
            for mut ended in waits {
                // Err: the session task went away without saying how (runtime shutdown).
                let end = ended
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|e| *e)
                    .unwrap_or(End::Lost);
                match end {
                    End::App => report.closed_by_app += 1,
                    End::Client => report.closed_by_client += 1,
                    End::Cutover => report.closed_by_cutover += 1,
                    End::Lost => report.lost += 1,
                }
            }
            report
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HashMap<u64, Handle>>> {
        self.by_backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Session {
    fn finish(mut self, end: End) {
        self.end = Some(end);
    }
}

impl Drop for Session {
    /// Leaves the registry, then reports how the session ended (lost, when the task went
    /// away without finishing), so a drainer that sees the report also sees the count drop.
    fn drop(&mut self) {
        {
            let mut reg = self.sessions.lock();
            if let Some(sessions) = reg.get_mut(&self.addr) {
                sessions.remove(&self.id);
                if sessions.is_empty() {
                    reg.remove(&self.addr);
                }
            }
        }
        self.ended.send_replace(Some(self.end.unwrap_or(End::Lost)));
    }
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Relays WebSocket messages between the client and the backend once both sides switched
/// protocols; the backend stays counted in flight until the session ends.
pub(crate) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    session: Session,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "websocket upgrade did not complete");
            drop(in_flight);
            session.finish(End::Lost);
            return;
        }
    };
    let client = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
    let end = run(client, upstream, session.drain.clone()).await;
    debug!(backend = %session.addr, end = ?end, "websocket session ended");
    // Uncounted before the drain report can see the end: a drained backend reads 0 after.
    drop(in_flight);
    session.finish(end);
}

/// How the relay loop stopped.
enum Step {
    /// Both directions ended, or a close handshake ran out of time.
    Closed,
    /// One side's connection ended without a close frame (`app`: it was the instance's).
    Lost { app: bool },
    /// A drain's quiet period passed with the session still open.
    Cutover,
}

async fn run(client: Ws, upstream: Ws, mut drain: watch::Receiver<Option<Duration>>) -> End {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let (first_close, mut closing) = watch::channel(None::<Side>);
    let step = {
        let c2u = forward(
            &mut c_rx,
            &mut u_tx,
            Side::Client,
            &first_close,
            Some(drain.clone()),
        );
        let u2c = forward(&mut u_rx, &mut c_tx, Side::App, &first_close, None);
        tokio::pin!(c2u, u2c);
        let (mut c_done, mut u_done) = (false, false);
        let mut drain_open = true;
        // A drain may have been asked for while the upgrade was completing.
        let mut quiet_until = drain.borrow_and_update().map(|q| Instant::now() + q);
        let mut close_until: Option<Instant> = None;
        loop {
            let closed_by = *first_close.borrow();
            tokio::select! {
                () = &mut c2u, if !c_done => c_done = true,
                () = &mut u2c, if !u_done => u_done = true,
                changed = drain.changed(), if drain_open && quiet_until.is_none() => match changed {
                    Ok(()) => {
                        quiet_until = drain.borrow_and_update().map(|q| Instant::now() + q);
                    }
                    Err(_) => drain_open = false,
                },
                _ = closing.changed(), if close_until.is_none() => {}
                // A close begun by either side in the quiet period is let finish instead.
                () = until(quiet_until), if closed_by.is_none() => break Step::Cutover,
                () = until(close_until) => break Step::Closed,
            }
            let closed_by = *first_close.borrow();
            if c_done && u_done {
                break Step::Closed;
            }
            if (c_done || u_done) && closed_by.is_none() {
                break Step::Lost { app: u_done };
            }
            if closed_by.is_some() && close_until.is_none() {
                close_until = Some(Instant::now() + CLOSE_TIMEOUT);
            }
        }
    };
    let closed_by = *first_close.borrow();
    match step {
        Step::Closed => match closed_by {
            Some(Side::App) => End::App,
            Some(Side::Client) => End::Client,
            None => End::Lost,
        },
        // One side went away without a close frame — an instance that exited, or whose reset
        // discarded the close frame it had sent. The other side still gets a proper close, so
        // a client never sees a 1006 from cutover: 1012 (service restart) tells it to reconnect,
        // and its next session goes wherever the route table says.
        Step::Lost { app: true } => {
            let to_client = CloseFrame {
                code: CloseCode::Restart,
                reason: LOST_REASON.into(),
            };
            close(&mut c_tx, &mut c_rx, to_client).await;
            End::Lost
        }
        Step::Lost { app: false } => {
            let to_app = CloseFrame {
                code: CloseCode::Away,
                reason: "cutover: the client went away".into(),
            };
            close(&mut u_tx, &mut u_rx, to_app).await;
            End::Lost
        }
        Step::Cutover => {
            // The instance is closed first, and its frames keep flowing to the client until
            // its close reply: an app acks what it executed before it answers a close, so every
            // ack of an executed order reaches the client — an order still running when the
            // close arrives is the app's to cancel. Only then does the client get its 1012.
            // Closing both at once would lose an ack produced in between: a ghost order,
            // executed here and resent elsewhere.
            let to_app = CloseFrame {
                code: CloseCode::Away,
                reason: DRAIN_REASON.into(),
            };
            let to_client = CloseFrame {
                code: CloseCode::Restart,
                reason: DRAIN_REASON.into(),
            };
            let last_acks = async {
                if let Err(e) = u_tx.send(Message::Close(Some(to_app))).await {
                    debug!(error = %e, "close frame not sent to the instance");
                }
                while let Some(Ok(msg)) = u_rx.next().await {
                    match msg {
                        Message::Close(_)
                        | Message::Ping(_)
                        | Message::Pong(_)
                        | Message::Frame(_) => {}
                        data => {
                            let _ = c_tx.send(data).await;
                        }
                    }
                }
            };
            if tokio::time::timeout(CLOSE_TIMEOUT, last_acks)
                .await
                .is_err()
            {
                debug!("the instance did not answer its close in time");
            }
            close(&mut c_tx, &mut c_rx, to_client).await;
            End::Cutover
        }
    }
}

/// Forwards messages from one side to the other until `from` ends.
///
/// With `drain` (client → instance only), data frames read once a drain began are dropped:
/// such a frame never reached the instance, so it cannot have been executed, and the client
/// will resend it after reconnecting (to an instance that is not going away). The flag is
/// checked after each frame is read, so no frame the client sent after the drain began can be
/// forwarded. A frame already being written when the drain began was read before it, and is
/// completed: a frame is never cut in half.
async fn forward<R, W>(
    from: &mut R,
    to: &mut W,
    side: Side,
    first_close: &watch::Sender<Option<Side>>,
    drain: Option<watch::Receiver<Option<Duration>>>,
) where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    // Reads go on after a failed write: reading is what completes a close handshake and keeps
    // unread bytes from turning the final close into a reset.
    while let Some(Ok(msg)) = from.next().await {
        match msg {
            Message::Close(frame) => {
                first_close.send_if_modified(|c| {
                    let first = c.is_none();
                    if first {
                        *c = Some(side);
                    }
                    first
                });
                // Passed through with its code and reason. When the other side closed first,
                // tungstenite already answered it and this is a no-op.
                let _ = to.send(Message::Close(frame)).await;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            data => {
                if drain.as_ref().is_some_and(|d| d.borrow().is_some()) {
                    continue;
                }
                let _ = to.send(data).await;
            }
        }
    }
}

/// Sends `frame` and completes the close handshake (reads, discarding, until the peer's close
/// and the end of its stream), for at most [`CLOSE_TIMEOUT`].
async fn close<R, W>(to: &mut W, from: &mut R, frame: CloseFrame<'static>)
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    let handshake = async {
        if let Err(e) = to.send(Message::Close(Some(frame))).await {
            debug!(error = %e, "close frame not sent");
        }
        while let Some(Ok(_)) = from.next().await {}
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, handshake)
        .await
        .is_err()
    {
        debug!("close handshake timed out");
    }
}

/// The reason of the 1012 a client gets when its instance went away without closing.
const LOST_REASON: &str = "cutover: the instance went away";

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
