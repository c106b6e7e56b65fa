//! Frame-aware WebSocket relay and its drain.
//!
//! Upholds DESIGN.md invariant 4 (drain before stop; WebSockets get close code 1012 after the
//! drain window) for the sessions that outlive every request: a trading client holds one
//! WebSocket for hours and places orders over it. A byte tunnel can only be cut, which the
//! client sees as 1006 (abnormal closure) with no way to know whether the order it sent last
//! reached the instance — and a client that resends it may place it twice. Relaying frames
//! instead lets a drain act at frame boundaries:
//!
//! 1. client → instance frames stop at once (dropped, never half-written; a fragmented message
//!    the instance already began to receive is completed): a message that never reached the
//!    instance cannot have been executed, so the client may safely resend it after
//!    reconnecting to another instance;
//! 2. instance → client frames keep flowing for the quiet period, so acks of orders the
//!    instance already took reach the client;
//! 3. then the client gets Close 1012 (service restart) and the instance Close 1001 (going
//!    away), both close handshakes are completed, and the connections end with a FIN — never a
//!    reset, never a 1006 made by cutover.
//!
//! A session the app (or the client) closes during the quiet period ends by that close, passed
//! through with its code and reason.
//!
//! Upholds invariant 12 (what a standard client sends is relayed faithfully): frames are cut
//! out of the byte stream by the sans-IO codec in `frame` and forwarded exactly as they came —
//! RSV bits, the compressed payloads of permessage-deflate (RFC 7692), the client's masking
//! key — so compression is kept end to end and the relay never inflates anything. Pings and
//! pongs pass end to end like data. Only close frames are cutover's to write (1012/1001 at a
//! drain, when a side vanished): control frames, never compressed, written between whole
//! frames. An extension other than permessage-deflate is refused at the handshake
//! ([`unrelayable_extension`]), before the client gets its `101`.

mod frame;

use crate::table::InFlight;

use bytes::{Buf, Bytes, BytesMut};
use frame::{opcode, Frame, Messages};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;
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

    /// Every backend with a session open.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().keys().copied().collect()
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

type Io = TokioIo<Upgraded>;

/// Relays WebSocket frames between the client and the backend once both sides switched
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
    let (c_rd, c_wr) = tokio::io::split(TokioIo::new(client));
    let (u_rd, u_wr) = tokio::io::split(TokioIo::new(upstream));
    let client = Hop {
        rd: Reader::new(c_rd),
        wr: Writer::new(c_wr),
        to_instance: false,
    };
    let upstream = Hop {
        rd: Reader::new(u_rd),
        wr: Writer::new(u_wr),
        to_instance: true,
    };
    let end = run(client, upstream, session.drain.clone()).await;
    debug!(backend = %session.addr, end = ?end, "websocket session ended");
    // Uncounted before the drain report can see the end: a drained backend reads 0 after.
    drop(in_flight);
    session.finish(end);
}

/// How much a relay reads at once, at least (most frames are smaller).
const READ_CHUNK: usize = 8 * 1024;

/// Reads whole frames off one side. Cancel-safe: bytes read stay in `buf` when a read is
/// abandoned, so a relay that stops reading mid-frame loses nothing.
///
/// An idle session holds no read buffer: most of a trading client's hours are spent waiting,
/// and two 8 KiB buffers per session were two thirds of what an idle WebSocket cost (22 kB,
/// BENCHMARKS.md). Between frames `buf` is empty and owns no memory; a read then goes to a
/// scratch buffer on the stack (not in the task: it never lives across an `await`) and only
/// the bytes that came are kept. A frame that arrives in pieces is read straight into `buf`.
struct Reader {
    io: ReadHalf<Io>,
    buf: BytesMut,
}

/// Why a side's frames stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The connection ended (FIN) at a frame boundary.
    Eof,
    /// It ended mid-frame, failed, or sent what no peer may send.
    Failed(String),
}

impl Reader {
    fn new(io: ReadHalf<Io>) -> Reader {
        Reader {
            io,
            buf: BytesMut::new(),
        }
    }

    async fn next(&mut self) -> Result<Frame, ReadEnd> {
        loop {
            match frame::decode(&mut self.buf, frame::MAX_FRAME) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Failed(e.to_string())),
            }
            let read = if self.buf.is_empty() {
                // Whatever capacity is left is the tail of the allocation the last frame was
                // split from: let it go with that frame.
                self.buf = BytesMut::new();
                std::future::poll_fn(|cx| self.poll_read_idle(cx)).await
            } else {
                // Room for a good read: `read_buf` alone would grow a full buffer 64 bytes at
                // a time.
                if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                    self.buf.reserve(READ_CHUNK);
                }
                self.io.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) if self.buf.is_empty() => return Err(ReadEnd::Eof),
                Ok(0) => return Err(ReadEnd::Failed("connection ended mid-frame".into())),
                Ok(_) => {}
                Err(e) => return Err(ReadEnd::Failed(e.to_string())),
            }
        }
    }

    /// A read while `buf` is empty: into a scratch buffer on the stack, keeping what came.
    fn poll_read_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut scratch = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }
}

/// Writes whole frames to one side. Cancel-safe: what is queued stays queued when a flush is
/// abandoned, and the next flush writes the rest first, so a frame is never cut in half —
/// cutover's own close frame goes out after the frame being written, never inside it.
struct Writer {
    io: WriteHalf<Io>,
    queue: VecDeque<Bytes>,
    /// A write failed: the peer is gone, and what is sent to it from now on is discarded
    /// rather than piled up.
    broken: bool,
}

impl Writer {
    fn new(io: WriteHalf<Io>) -> Writer {
        Writer {
            io,
            queue: VecDeque::new(),
            broken: false,
        }
    }

    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.queue.push_back(frame);
        self.flush().await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let written = self.write_queue().await;
        if written.is_err() {
            self.broken = true;
            self.queue.clear();
        }
        written
    }

    async fn write_queue(&mut self) -> std::io::Result<()> {
        while let Some(front) = self.queue.front_mut() {
            if front.is_empty() {
                self.queue.pop_front();
                continue;
            }
            let n = self.io.write(front).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            front.advance(n);
        }
        self.io.flush().await
    }
}

/// One side of the session: its frames in, frames to it out.
struct Hop {
    rd: Reader,
    wr: Writer,
    /// Frames cutover writes to an instance are masked (cutover is its client, RFC 6455
    /// §5.3); to a client they are not.
    to_instance: bool,
}

impl Hop {
    /// Sends a close frame of cutover's own: a control frame, never compressed.
    async fn send_close(&mut self, code: u16, reason: &str) {
        let mask = self.to_instance.then(rand::random::<[u8; 4]>);
        if let Err(e) = self.wr.send(frame::close_frame(code, reason, mask)).await {
            debug!(error = %e, "close frame not sent");
        }
    }

    /// Reads (discarding) until this side's close frame or the end of its connection.
    async fn until_close(&mut self) {
        while let Ok(f) = self.rd.next().await {
            if f.header.opcode == opcode::CLOSE {
                break;
            }
        }
    }

    /// Writes out what is still queued; the connection then ends when the relay drops it. A
    /// FIN, not a reset: the peer sent its close frame, after which it sends nothing more, so
    /// nothing is left unread. (Not a `shutdown`: on a client connection that is a lingering
    /// close, which would hold the session open for as long as the client keeps its end.)
    async fn finish(&mut self) {
        if tokio::time::timeout(CLOSE_TIMEOUT, self.wr.flush())
            .await
            .is_err()
        {
            debug!("the last frames could not be written in time");
        }
    }
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

async fn run(
    mut client: Hop,
    mut upstream: Hop,
    mut drain: watch::Receiver<Option<Duration>>,
) -> End {
    let (first_close, mut closing) = watch::channel(None::<Side>);
    let step = {
        let c2u = forward(
            &mut client.rd,
            &mut upstream.wr,
            Side::Client,
            &first_close,
            Some(drain.clone()),
        );
        let u2c = forward(
            &mut upstream.rd,
            &mut client.wr,
            Side::App,
            &first_close,
            None,
        );
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
        Step::Closed => {
            tokio::join!(client.finish(), upstream.finish());
            match closed_by {
                Some(Side::App) => End::App,
                Some(Side::Client) => End::Client,
                None => End::Lost,
            }
        }
        // One side went away without a close frame — an instance that exited, or whose reset
        // discarded the close frame it had sent. The other side still gets a proper close, so
        // a client never sees a 1006 from cutover: 1012 (service restart) tells it to reconnect,
        // and its next session goes wherever the route table says.
        Step::Lost { app: true } => {
            close(&mut client, RESTART, LOST_REASON).await;
            End::Lost
        }
        Step::Lost { app: false } => {
            close(&mut upstream, GOING_AWAY, "cutover: the client went away").await;
            End::Lost
        }
        Step::Cutover => {
            // The instance is closed first, and its frames keep flowing to the client until
            // its close reply: an app acks what it executed before it answers a close, so every
            // ack of an executed order reaches the client — an order still running when the
            // close arrives is the app's to cancel. Only then does the client get its 1012.
            // Closing both at once would lose an ack produced in between: a ghost order,
            // executed here and resent elsewhere. Every data frame of the instance reaches the
            // client in order, so a compressed stream (permessage-deflate with context
            // takeover) stays decodable to its last frame.
            let last_acks = async {
                upstream.send_close(GOING_AWAY, DRAIN_REASON).await;
                loop {
                    match upstream.rd.next().await {
                        Ok(f) if f.header.opcode == opcode::CLOSE => break,
                        Ok(f) if f.header.is_control() => {}
                        Ok(f) => {
                            let _ = client.wr.send(f.raw).await;
                        }
                        Err(_) => break,
                    }
                }
            };
            if tokio::time::timeout(CLOSE_TIMEOUT, last_acks)
                .await
                .is_err()
            {
                debug!("the instance did not answer its close in time");
            }
            tokio::join!(close(&mut client, RESTART, DRAIN_REASON), upstream.finish());
            End::Cutover
        }
    }
}

/// Close code 1001: the endpoint is going away (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
/// Close code 1012: service restart, reconnect (IANA WebSocket close code registry).
const RESTART: u16 = 1012;

/// Forwards frames from one side to the other, byte for byte, until `from` sends its close
/// frame (which is forwarded too, so each side answers the other's close itself) or its
/// connection ends. Pings and pongs pass end to end, so a client's ping is answered by the
/// instance itself.
///
/// With `drain` (client → instance only), frames read once a drain began are dropped: such a
/// frame never reached the instance, so it cannot have been executed, and the client will
/// resend it after reconnecting (to an instance that is not going away). The flag is checked
/// after each frame is read, at message boundaries: the rest of a fragmented message the
/// instance already began to receive is still forwarded, so that it never gets half a message,
/// and nothing after it. A frame already being written when the drain began was read before
/// it, and is completed: a frame is never cut in half.
async fn forward(
    from: &mut Reader,
    to: &mut Writer,
    side: Side,
    first_close: &watch::Sender<Option<Side>>,
    drain: Option<watch::Receiver<Option<Duration>>>,
) {
    let mut messages = Messages::default();
    let mut stopped = false;
    loop {
        let f = match from.next().await {
            Ok(f) => f,
            Err(ReadEnd::Eof) => return,
            Err(ReadEnd::Failed(e)) => {
                debug!(from = ?side, error = %e, "websocket frames stopped");
                return;
            }
        };
        let at_boundary = messages.at_boundary();
        if let Err(e) = messages.observe(&f.header) {
            debug!(from = ?side, error = %e, "websocket protocol error");
            return;
        }
        if f.header.opcode == opcode::CLOSE {
            first_close.send_if_modified(|c| {
                let first = c.is_none();
                if first {
                    *c = Some(side);
                }
                first
            });
            debug!(from = ?side, code = ?f.close_code(), "websocket close");
            // Passed through with its code and reason.
            let _ = to.send(f.raw).await;
            return;
        }
        if drain.as_ref().is_some_and(|d| d.borrow().is_some()) {
            // After the drain began only the rest of a message already begun passes.
            if at_boundary && !f.header.is_control() {
                stopped = true;
            }
            if stopped || f.header.is_control() {
                continue;
            }
        }
        // Reads go on after a failed write: reading is what completes a close handshake and
        // keeps unread bytes from turning the final close into a reset.
        let _ = to.send(f.raw).await;
    }
}

/// Sends a close frame of cutover's own to `hop` and completes the close handshake: reads
/// (discarding) until the peer's close, then ends the connection; at most [`CLOSE_TIMEOUT`].
async fn close(hop: &mut Hop, code: u16, reason: &str) {
    let handshake = async {
        hop.send_close(code, reason).await;
        hop.until_close().await;
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, handshake)
        .await
        .is_err()
    {
        debug!("close handshake timed out");
    }
    hop.finish().await;
}

/// The reason of the 1012 a client gets when its instance went away without closing.
const LOST_REASON: &str = "cutover: the instance went away";

/// The one extension cutover relays (RFC 7692). Its frames need nothing of the relay but to be
/// passed on whole and in order with their RSV1 bit, and cutover's own frames (closes) are
/// control frames, which it never compresses.
pub(crate) const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The first extension in an instance's `Sec-WebSocket-Extensions` answer that cutover cannot
/// relay (any but permessage-deflate), or `None`. An extension cutover does not know may give
/// RSV2/RSV3 or reserved opcodes a meaning, or forbid a close frame written between its frames;
/// such a session is refused at the handshake rather than broken after its `101`.
pub(crate) fn unrelayable_extension(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_else(|_| vec!["<not ASCII>".to_owned()])
        })
        .map(|ext| ext.split(';').next().unwrap_or_default().trim().to_owned())
        .find(|name| !name.is_empty() && !name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
