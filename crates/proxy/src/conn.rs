//! One client connection's life after its protocol is known: served until it ends, told to go
//! away when cutover shuts down, and — for HTTP/2 — closed when it has nothing in progress.
//!
//! hyper closes an idle HTTP/1.1 keep-alive connection itself (`header_read_timeout` re-arms
//! for the next head), but it has no timer for HTTP/2: a client that completes the TLS
//! handshake and then sends no preface, or opens a connection and never a stream, would hold
//! it until cutover stops. So an HTTP/2 connection counts its open streams, and one on which
//! no stream was open, started or ended for a whole `idle` period gets a GOAWAY (one that never sent its
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

/// The streams of one HTTP/2 connection: those open now, and how many times one started or
/// ended.
#[derive(Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
    activity: AtomicUsize,
}

impl Streams {
    /// Counts a stream as open until the guard is dropped (with its response body).
    pub(crate) fn start(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.activity.fetch_add(1, Ordering::Relaxed);
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

/// Drives `conn` to its end. When `stopping` completes (cutover shuts down; for HTTP/1.1,
/// [`after_grace`] later) it is asked to `go_away` (hyper's graceful shutdown: an idle HTTP/1.1
/// connection is closed, a busy one after its response; GOAWAY on HTTP/2); with `idle`, see
/// the module docs. `None`: it was closed for being idle.
pub(crate) async fn drive<C: Future>(
    conn: C,
    go_away: impl Fn(Pin<&mut C>),
    stopping: impl Future<Output = ()>,
    idle: Option<Idle>,
) -> Option<C::Output> {
    let mut conn = std::pin::pin!(conn);
    let mut stopping = std::pin::pin!(stopping);
    let mut going_away = false;
    let (mut tick, period) = match &idle {
        Some(i) => (Some(Box::pin(tokio::time::sleep(i.after))), i.after),
        None => (None, Duration::ZERO),
    };
    let mut seen_activity = 0;
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
                // Quiet: nothing open now, and nothing started or ended since the last tick.
                let activity = streams.activity.load(Ordering::Relaxed);
                let quiet = streams.open.load(Ordering::Relaxed) == 0 && activity == seen_activity;
                seen_activity = activity;
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

/// Completes `grace` after `stop` is cancelled: how long an HTTP/1.1 connection is still
/// served after cutover begins to shut down (see `ProxyConfig::shutdown_idle_grace`).
pub(crate) async fn after_grace(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const PERIOD: Duration = Duration::from_millis(100);

    /// A connection that never ends by itself, and counts the times it was asked to go away.
    fn watched(
        streams: &Arc<Streams>,
        stop: &CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Option<()>>,
        Arc<AtomicUsize>,
        Arc<AtomicBool>,
    ) {
        let asked = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let idle = Idle {
            streams: streams.clone(),
            after: PERIOD,
        };
        let (stop, counter, flag) = (stop.clone(), asked.clone(), closed.clone());
        let task = tokio::spawn(async move {
            let out = drive(
                std::future::pending::<()>(),
                move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                },
                stop.cancelled(),
                Some(idle),
            )
            .await;
            flag.store(true, Ordering::Relaxed);
            out
        });
        (task, asked, closed)
    }

    /// Lets the paused clock run to `at` (from the test's start) and the watch react.
    async fn at(start: tokio::time::Instant, at: Duration) {
        tokio::time::sleep_until(start + at).await;
        tokio::task::yield_now().await;
    }

    /// A stream that ends just before a tick is activity: the GOAWAY waits a whole quiet
    /// period after it, and the close one more.
    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_last_stream_that_ended() {
        let start = tokio::time::Instant::now();
        let streams = Arc::new(Streams::default());
        let stop = CancellationToken::new();
        let (task, asked, closed) = watched(&streams, &stop);

        at(start, PERIOD / 2).await;
        let stream = streams.start();
        at(start, PERIOD * 3 / 2).await;
        drop(stream);
        // Ticks at 1 and 2 periods saw the stream start, then end: not idle.
        at(start, PERIOD * 5 / 2).await;
        assert_eq!(
            asked.load(Ordering::Relaxed),
            0,
            "GOAWAY within a period of a stream"
        );
        // The tick at 3 periods closes nothing but sends the GOAWAY.
        at(start, PERIOD * 7 / 2).await;
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        assert!(
            !closed.load(Ordering::Relaxed),
            "closed without a GOAWAY first"
        );
        // Still there and still quiet one period later: closed.
        at(start, PERIOD * 9 / 2).await;
        assert!(closed.load(Ordering::Relaxed));
        assert_eq!(task.await.unwrap(), None);
    }

    /// A stream open across many periods keeps the connection; stopping asks it to go away
    /// once, at once.
    #[tokio::test(start_paused = true)]
    async fn an_open_stream_is_not_idleness_and_stopping_goes_away_at_once() {
        let start = tokio::time::Instant::now();
        let streams = Arc::new(Streams::default());
        let stop = CancellationToken::new();
        let (task, asked, closed) = watched(&streams, &stop);
        let stream = streams.start();
        at(start, PERIOD * 10).await;
        assert_eq!(asked.load(Ordering::Relaxed), 0);
        stop.cancel();
        at(start, PERIOD * 10 + PERIOD / 10).await;
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        // The open stream still holds it, however long.
        at(start, PERIOD * 20).await;
        assert!(!closed.load(Ordering::Relaxed));
        drop(stream);
        at(start, PERIOD * 23).await;
        assert!(closed.load(Ordering::Relaxed));
        assert_eq!(asked.load(Ordering::Relaxed), 1, "asked to go away once");
        assert_eq!(task.await.unwrap(), None);
    }
}
