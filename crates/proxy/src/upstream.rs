//! Keep-alive HTTP/1.1 connections to instances: one pool per proxy worker.
//!
//! A worker's pool lives on that worker's single-threaded event loop, and a connection is
//! driven by the request using it (`h1`), so a request, its client connection and its upstream
//! connection are all served by one task on one thread: no lock is contended and no wakeup
//! crosses tasks or threads (hyper-util's pooled client, shared by every thread, spent more on
//! that than cutover spends routing; see BENCHMARKS.md).
//!
//! A connection goes back to its pool only once its response body was read to the end, and it
//! never goes back to an instance that left the route table: [`Http1Pool::retain`] closes the
//! idle connections of instances that left, so a draining instance sees no idle keep-alive
//! connection from the proxy (only those still carrying a request, until they finish).

use crate::body::{BodyError, Resendable};
use crate::h1::{Conn, Decoder, Failed, Head, Outbound, Upload};
use crate::table::{Backend, BackendRef};
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::UpstreamError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The idle connections of one worker, by instance address, most recently used last.
pub(crate) struct Http1Pool {
    /// A few instances at most: a scan beats hashing the address twice per request.
    idle: Mutex<Vec<(SocketAddr, Vec<Idle>)>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Still open, and idle for less than `idle_timeout`.
    fn usable(&self, idle_timeout: Duration) -> bool {
        !self.conn.is_closed() && self.since.elapsed() < idle_timeout
    }
}

impl Http1Pool {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle_per_backend: usize,
    ) -> Http1Pool {
        Http1Pool {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
            max_idle_per_backend,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SocketAddr, Vec<Idle>)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the request (`head`, then `body`) to `backend` over an idle connection, or a new
    /// one when none is left, and waits for the response head until `deadline`.
    ///
    /// An idle connection the instance closed meanwhile hands the body back unsent (see
    /// [`Failed::Unsent`]), and the next one is tried: only [`UpstreamError::Connect`] (nothing
    /// was sent: the body is still unread in its slot, for a retry elsewhere),
    /// [`UpstreamError::Forward`] (something may have been) and [`UpstreamError::TimedOut`]
    /// reach the caller.
    pub(crate) async fn send(
        self: &Arc<Self>,
        backend: &BackendRef,
        head: &Outbound<'_>,
        mut body: Resendable,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = backend.addr;
        while let Some(mut conn) = self.checkout(addr) {
            match conn.send(head, body, deadline, true).await {
                Ok(head) => return Ok(self.wrap(head, conn, backend)),
                Err(Failed::Unsent(unsent, _)) => body = unsent,
                Err(Failed::Sent(e)) => {
                    return Err(UpstreamError::Forward {
                        addr,
                        source: Box::new(e),
                    })
                }
                Err(Failed::TimedOut) => return Err(UpstreamError::TimedOut { addr }),
            }
        }
        let mut conn = match self.connect(addr, deadline).await {
            Ok(c) => c,
            Err(source) => return Err(UpstreamError::Connect { addr, source }),
        };
        match conn.send(head, body, deadline, false).await {
            Ok(head) => Ok(self.wrap(head, conn, backend)),
            // Closed before a byte of the request was written: as good as refused.
            Err(Failed::Unsent(_, e)) => Err(UpstreamError::Connect {
                addr,
                source: Box::new(e),
            }),
            Err(Failed::Sent(e)) => Err(UpstreamError::Forward {
                addr,
                source: Box::new(e),
            }),
            Err(Failed::TimedOut) => Err(UpstreamError::TimedOut { addr }),
        }
    }

    /// The most recently used idle connection to `addr` that is still open and fresh.
    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.lock();
        let (_, conns) = idle.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(c) = conns.pop() {
            if c.usable(self.idle_timeout) {
                return Some(c.conn);
            }
        }
        None
    }

    /// Takes a connection back after its response was read to the end, unless its instance
    /// left the route table, the connection closed, or the pool is full.
    fn checkin(&self, backend: &Backend, conn: Conn) {
        if !backend.in_rotation() || !conn.reusable() {
            return;
        }
        let mut idle = self.lock();
        let conns = match idle.iter().position(|(a, _)| *a == backend.addr) {
            Some(i) => &mut idle[i].1,
            None => {
                idle.push((backend.addr, Vec::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        if conns.len() < self.max_idle_per_backend {
            conns.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: SocketAddr, deadline: Instant) -> Result<Conn, BoxError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(Conn::new(stream, deadline))
    }

    fn wrap(
        self: &Arc<Self>,
        head: Head,
        conn: Conn,
        backend: &BackendRef,
    ) -> Response<UpstreamBody> {
        Response::from_parts(
            head.parts,
            UpstreamBody::Pooled(Pooled {
                conn: Some(conn),
                decoder: head.body,
                keep_alive: head.keep_alive,
                upload: head.upload,
                pool: Arc::downgrade(self),
                backend: backend.clone(),
            }),
        )
    }

    /// Closes the idle connections to instances not in `addrs` (they left rotation), and those
    /// idle for longer than the idle timeout.
    pub(crate) fn retain(&self, addrs: &HashSet<SocketAddr>) {
        self.sweep(|addr| addrs.contains(addr));
    }

    /// Closes connections idle for longer than the idle timeout; the worker calls this
    /// periodically so that an instance no request goes to any more is not held open.
    pub(crate) fn evict_expired(&self) {
        self.sweep(|_| true);
    }

    /// Drops closed and expired idle connections, and every one to an address not `kept`.
    fn sweep(&self, kept: impl Fn(&SocketAddr) -> bool) {
        let mut idle = self.lock();
        idle.retain_mut(|(addr, conns)| {
            conns.retain(|c| c.usable(self.idle_timeout));
            kept(addr) && !conns.is_empty()
        });
    }

    /// Idle connections held, all instances together.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().iter().map(|(_, c)| c.len()).sum()
    }
}

/// A response body from an instance.
// The pooled variant is the one nearly every response has; boxing it would cost an allocation
// per request to save a few words on the rarer ones.
#[allow(clippy::large_enum_variant)]
pub(crate) enum UpstreamBody {
    /// From the worker's pool, read off its connection here.
    Pooled(Pooled),
    /// From hyper's clients (HTTP/2, upgrades).
    Hyper(Incoming),
}

/// A response body read off a pooled connection. Read to the end, it returns its connection
/// to the pool when dropped; dropped earlier (the client went away), the connection is closed,
/// since the rest of the response would still be on it.
pub(crate) struct Pooled {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    /// The rest of the request, while it is still being sent.
    upload: Option<Upload>,
    pool: Weak<Http1Pool>,
    backend: BackendRef,
}

impl UpstreamBody {
    /// A body from a connection the pool does not own (HTTP/2, upgrades).
    pub(crate) fn unpooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody::Hyper(inner)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if !(self.keep_alive && self.decoder.is_done() && self.upload.is_none()) {
            return;
        }
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.checkin(&self.backend, conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            UpstreamBody::Pooled(p) => match p.conn.as_mut() {
                Some(conn) => conn
                    .poll_body(cx, &mut p.decoder, &mut p.upload)
                    .map(|f| f.map(|r| r.map_err(BodyError::new))),
                None => Poll::Ready(None),
            },
            UpstreamBody::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::new))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(p) => p.decoder.is_done(),
            UpstreamBody::Hyper(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Pooled(p) => p.decoder.size_hint(),
            UpstreamBody::Hyper(inner) => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Resendable;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 app on 127.0.0.1 answering `ok`; counts the connections still open.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        app_answering(usize::MAX).await
    }

    /// [`app`], answering only the first `answers` requests of each connection and never the
    /// later ones.
    async fn app_answering(answers: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let o = open.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = served.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if n >= answers {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open)
    }

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: shop\r\n\r\n";

    /// Sends a `GET /x` with an empty body through `pool`, as the proxy does: its head
    /// borrowed, its body handed over.
    async fn get(
        pool: &Arc<Http1Pool>,
        backend: &BackendRef,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (parts, body, _client) = crate::h1::tests::request_parts(GET).await;
        let head = crate::h1::tests::outbound(&parts, None);
        pool.send(backend, &head, Resendable::new(body).0, deadline)
            .await
    }

    /// A pool with a 2 s connect timeout.
    fn pool_of(idle_timeout: Duration, max_idle: usize) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(
            Duration::from_secs(2),
            idle_timeout,
            max_idle,
        ))
    }

    /// A request through `pool` that must be answered.
    async fn answered(pool: &Arc<Http1Pool>, backend: &BackendRef) -> Response<UpstreamBody> {
        match get(pool, backend, far()).await {
            Ok(resp) => resp,
            Err(_) => panic!("the app answers"),
        }
    }

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    async fn until(what: &str, cond: impl FnMut() -> bool) {
        cutover_testkit::eventually_holds(Duration::from_secs(10), what, cond).await
    }

    /// A refused connection is a connect error (safe to retry), and the request's body is
    /// still unread in its slot, for the retry to send.
    #[tokio::test]
    async fn a_refused_connection_leaves_the_body_to_retry() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let pool = pool_of(Duration::from_secs(30), 4);
        let backend = BackendRef::alone(Arc::new(Backend::new("gone", addr)));
        let (parts, body, _client) = crate::h1::tests::request_parts(
            b"POST /x HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        let (body, slot) = Resendable::new(body);
        let head = crate::h1::tests::outbound(&parts, None);
        match pool.send(&backend, &head, body, far()).await {
            Err(e @ UpstreamError::Connect { .. }) => {
                assert!(e.retry_safe());
                assert!(slot.take_unread().is_some(), "the body was read: no retry");
            }
            Err(e @ UpstreamError::Forward { .. }) => {
                panic!("a refused connection is not a forward error: {e}")
            }
            Err(UpstreamError::TimedOut { .. }) => panic!("a refused connection is not a timeout"),
            Err(e) => panic!("a refused connection is not {e}"),
            Ok(_) => panic!("nothing listens there"),
        }
    }

    #[tokio::test]
    async fn idle_connections_are_capped_and_expire() {
        let (addr, open) = app().await;
        let pool = pool_of(Duration::from_millis(50), 2);
        let backend = BackendRef::alone(Arc::new(Backend::new("app", addr)));
        // Three requests at once need three connections; only two are kept.
        let mut bodies = Vec::new();
        for _ in 0..3 {
            bodies.push(answered(&pool, &backend).await.into_body());
        }
        assert_eq!(pool.idle_count(), 0, "busy connections are not idle");
        for b in bodies {
            assert_eq!(b.collect().await.unwrap().to_bytes(), "ok");
        }
        assert_eq!(pool.idle_count(), 2);
        until("the third connection is closed", || {
            open.load(Ordering::SeqCst) == 2
        })
        .await;
        // Past the idle timeout, a sweep closes them.
        tokio::time::sleep(Duration::from_millis(60)).await;
        pool.evict_expired();
        assert_eq!(pool.idle_count(), 0);
        until("expired connections are closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_connection_to_an_instance_out_of_rotation_is_not_kept() {
        let (addr, open) = app().await;
        let pool = pool_of(Duration::from_secs(30), 4);
        let backend = BackendRef::alone(Arc::new(Backend::new("app", addr)));
        let resp = answered(&pool, &backend).await;
        backend.set_in_rotation(false);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pool.idle_count(), 0);
        until("its connection is closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_pooled_connection_bounds_each_wait_with_its_own_timer() {
        let (addr, open) = app_answering(1).await;
        let pool = pool_of(Duration::from_secs(30), 4);
        let backend = BackendRef::alone(Arc::new(Backend::new("app", addr)));
        let resp = answered(&pool, &backend).await;
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pool.idle_count(), 1);
        // The same connection (its timer was armed 60 s out by the first request): the
        // instance never answers, and the nearer deadline still applies.
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        let sent = tokio::time::timeout(Duration::from_secs(5), get(&pool, &backend, deadline));
        match sent
            .await
            .expect("the deadline is kept, not the timer's first one")
        {
            Err(UpstreamError::TimedOut { .. }) => {}
            Err(_) => panic!("expected a timeout"),
            Ok(_) => panic!("the instance does not answer a second request"),
        }
        assert!(Instant::now() >= deadline);
        assert_eq!(
            open.load(Ordering::SeqCst),
            1,
            "no other connection was made"
        );
        // A connection with a request still out on it is not reused.
        assert_eq!(pool.idle_count(), 0);
    }
}
