//! One client connection's life after its protocol is known: served until it ends, told to go
//! away when cutover shuts down, and — for HTTP/2 — closed when it has nothing in progress.
//!
//! hyper closes an idle HTTP/1.1 keep-alive connection itself (`header_read_timeout` re-arms
//! for the next head), but it has no timer for HTTP/2: a client that completes the TLS
//! handshake and then sends no preface, or opens a connection and never a stream, would hold
//! it until cutover stops. So an HTTP/2 connection counts its open streams, and one that had
//! none, and started none, for a whole `idle` period gets a GOAWAY (one that never sent its
//! preface is closed then: hyper stops waiting for it); if it is still there, and still has
//! no stream, one period later, it is closed.

use crate::body::{Guarded, ProxyBody};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The streams of one HTTP/2 connection: those open now, and how many ever started.
#[derive(Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
    started: AtomicUsize,
}

impl Streams {
    /// Counts a stream as open until the guard is dropped (with its response body).
    pub(crate) fn start(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamGuard {
    /// Keeps the stream counted until `body` is sent (or dropped).
    pub(crate) fn hold(self, body: ProxyBody) -> ProxyBody {
        Guarded::new(body, self).boxed_unsync()
    }
}

/// HTTP/2's idle watch: the connection's streams, and the period.
pub(crate) struct Idle {
    pub(crate) streams: Arc<Streams>,
    pub(crate) after: Duration,
}

/// Drives `conn` to its end. When `stop` is cancelled (cutover shuts down) it is asked to
/// `go_away` (hyper's graceful shutdown: `connection: close` on HTTP/1.1, GOAWAY on HTTP/2);
/// with `idle`, see the module docs. `None`: it was closed for being idle.
pub(crate) async fn drive<C: Future>(
    conn: C,
    go_away: impl Fn(Pin<&mut C>),
    stop: &CancellationToken,
    idle: Option<Idle>,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let mut stopping = std::pin::pin!(stop.cancelled());
    let mut going_away = false;
    let (mut tick, period) = match &idle {
        Some(i) => (Some(Box::pin(tokio::time::sleep(i.after))), i.after),
        None => (None, Duration::ZERO),
    };
    let mut seen_started = 0;
    loop {
        tokio::select! {
            biased;
            out = conn.as_mut() => return Some(out),
            () = &mut stopping, if !going_away => {
                going_away = true;
                go_away(conn.as_mut());
                // The client gets a whole period to finish and close before being closed.
                if let Some(t) = tick.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + period);
                }
            }
            () = async { tick.as_mut().expect("guarded").as_mut().await }, if tick.is_some() => {
                let streams = &idle.as_ref().expect("a tick implies a watch").streams;
                let started = streams.started.load(Ordering::Relaxed);
                let quiet = streams.open.load(Ordering::Relaxed) == 0 && started == seen_started;
                seen_started = started;
                if quiet && going_away {
                    // No stream for a period after the GOAWAY, or no handshake at all.
                    return None;
                }
                if quiet {
                    going_away = true;
                    go_away(conn.as_mut());
                }
                if let Some(t) = tick.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + period);
                }
            }
        }
    }
}
