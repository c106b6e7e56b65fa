//! The proxy: accept loop, per-request routing and forwarding, upgrades, graceful shutdown.

use crate::body::{BodySlot, Guarded, ProxyBody, Resendable};
use crate::conn::{self, Idle, Streams};
use crate::error::{ProxyError, UpstreamError};
use crate::h1;
use crate::headers;
use crate::linger::Linger;
use crate::table::{pick_backend, Backend, BackendRef, InFlight, RouteTable, Routes};
use crate::tls::SharedServerConfig;
use crate::upstream::{Http1Pool, UpstreamBody};
use crate::ws::{self, WsDrainReport};
use arc_swap::ArcSwap;
use bytes::Bytes;
use cutover_core::spec::{StickySpec, UpstreamProtocol};
use cutover_core::stats::Track;
use cutover_core::Cidr;
use cutover_telemetry::{Recorder, VersionRecorder};
use http::header::{HeaderName, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Upstreams;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How the proxy behaves; [`ProxyConfig::default`] holds sane values for everything but the
/// sticky key, which comes from the rollout spec.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How a client key is derived (header, cookie, fallback).
    pub sticky: StickySpec,
    /// Giving up on a backend that does not accept the connection; the request is then retried
    /// once elsewhere, since it never reached an app.
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// At most this many idle upstream connections are kept per backend, by each worker.
    pub pool_max_idle_per_host: usize,
    /// How long [`Proxy::serve`] waits for in-flight requests after shutdown is asked for.
    pub shutdown_timeout: Duration,
    /// A client connection that sends no complete request head for this long is closed.
    pub header_read_timeout: Duration,
    /// When shutdown begins, an open HTTP/1.1 connection is still served this long: a request
    /// that arrives on an idle keep-alive connection (the client could not know) is answered,
    /// with `connection: close`, instead of finding the connection closed; so is the first
    /// request on a connection accepted just before. Every response after shutdown began
    /// carries `connection: close`, and a connection still idle at the end is closed. HTTP/2
    /// gets its GOAWAY at once (its clients retry what the GOAWAY says was not processed).
    pub shutdown_idle_grace: Duration,
    /// A request head (request line and headers) larger than this is refused with 431
    /// (HTTP/1.1; for HTTP/2 it is the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`). At least
    /// 8 KiB.
    pub max_header_bytes: usize,
    /// An instance that sends no response head for this long gets the request answered 504
    /// (nginx's `proxy_read_timeout` defaults to the same 60 s).
    pub upstream_timeout: Duration,
    /// What instances speak. HTTP/2 is h2c with prior knowledge; WebSocket and other upgrades
    /// always go over HTTP/1.1, since HTTP/2 has no `Upgrade`.
    pub upstream_protocol: UpstreamProtocol,
    /// After cutover closes a client connection (FIN, after TLS's `close_notify`), how long
    /// it keeps reading what the client still sends, waiting for the client to close too,
    /// before it closes the socket. Closing at once would answer the client's late bytes with
    /// a reset, which can destroy the last response before the client reads it (RFC 9112
    /// §9.6; nginx's `lingering_close`). Clients close at once, so this is paid only by one
    /// that does not.
    pub linger_timeout: Duration,
    /// Threads serving the listener (at least 1), like nginx's worker processes: each runs its
    /// own event loop and keeps its own upstream connections, so a request is served start to
    /// finish on one thread, with no hand-off between threads. Defaults to one per CPU.
    pub workers: usize,
    /// Peers whose forwarding headers are believed (`service.trusted_proxies`); see
    /// [`crate::headers`]'s `Forwarded`. Checked once per connection.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            sticky: StickySpec::default(),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
            // Per worker. Enough for the requests one worker has in flight to a backend at
            // once: each HTTP/2 stream is a request on a connection of its own upstream, and
            // a response whose connection found the pool full closed it, so the next request
            // paid a new connection. At 64, 8 HTTP/2 clients with 100 streams each reconnected
            // for most requests (30,500 req/s; 60,100 at 1,024: BENCHMARKS.md). Idle ones
            // still close after `pool_idle_timeout`. (HAProxy keeps every idle connection by
            // default; hyper-util's client too.)
            pool_max_idle_per_host: 1024,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            // Well above a round trip: what a client sent before it saw the close arrives in it.
            shutdown_idle_grace: Duration::from_secs(1),
            // nginx's `lingering_timeout`.
            linger_timeout: Duration::from_secs(5),
            // Envoy's default (60 KiB) rounded up; nginx allows 4 × 8 KiB lines.
            max_header_bytes: 64 * 1024,
            upstream_timeout: Duration::from_secs(60),
            upstream_protocol: UpstreamProtocol::Http1,
            workers: default_workers(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// One worker per CPU the process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// How [`Proxy::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every connection finished its in-flight requests and closed.
    Drained,
    /// `shutdown_timeout` passed with connections still open; they were abandoned.
    TimedOut,
}

/// The data plane. Cheap to clone; clones share the table and the counts.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .field("table", &self.inner.table.load())
            .finish()
    }
}

struct Inner {
    config: ProxyConfig,
    sticky_header: Option<HeaderName>,
    table: ArcSwap<RouteTable>,
    /// Every backend ever published, by address, weakly: a backend removed from the table is
    /// kept alive by its in-flight guards only, and [`Proxy::in_flight`] can still see it while
    /// it drains.
    registry: Mutex<HashMap<SocketAddr, Vec<Weak<Backend>>>>,
    /// Every worker's HTTP/1.1 pool, to close idle connections to instances leaving rotation.
    upstream_pools: Mutex<Vec<Weak<Http1Pool>>>,
    /// The workers' open connections, while they serve.
    balance: Mutex<Weak<Balance>>,
    recorder: Recorder,
    /// Open WebSocket sessions by backend address (what [`Proxy::drain_websockets`] closes).
    ws: Arc<ws::Sessions>,
    /// Requests refused for their host, by [`headers::HostError::index`]. Shared by the
    /// workers, but written only on that rare path.
    refused: [std::sync::atomic::AtomicU64; headers::HostError::ALL.len()],
    /// Cold start: requests wait for the first ready instance ([`Proxy::hold_while_cold`]).
    cold: crate::cold::Cold,
}

impl Proxy {
    /// A proxy with an empty table (every request gets 503 until [`Proxy::set_table`]).
    pub fn new(config: ProxyConfig, recorder: Recorder) -> Proxy {
        let sticky_header = config.sticky.header.as_deref().and_then(|h| {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| {
                    warn!(
                        header = h,
                        "sticky header is not a valid header name; ignored"
                    )
                })
                .ok()
        });
        Proxy {
            inner: Arc::new(Inner {
                config,
                sticky_header,
                table: ArcSwap::from_pointee(RouteTable::default()),
                registry: Mutex::new(HashMap::new()),
                upstream_pools: Mutex::default(),
                balance: Mutex::new(Weak::new()),
                recorder,
                ws: Arc::default(),
                refused: Default::default(),
                cold: crate::cold::Cold::default(),
            }),
        }
    }

    /// Binds a listener for [`Proxy::serve`], naming the address when that fails.
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, source })
    }

    /// Publishes a new table atomically: requests already routed keep the table they loaded,
    /// every later request sees this one (DESIGN.md invariant 1).
    ///
    /// Reuse the same `Arc<Backend>` for the same instance across tables so its in-flight
    /// count carries over.
    pub fn set_table(&self, table: RouteTable) {
        let mut addrs = HashSet::new();
        {
            let mut reg = self
                .inner
                .registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            reg.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
            let pools = table
                .stable
                .iter()
                .chain(table.canary.iter().map(|(p, _)| p));
            let mut in_table = HashSet::new();
            for b in pools.flat_map(|p| &p.backends) {
                in_table.insert(Arc::as_ptr(b));
                addrs.insert(b.addr);
                let known = reg.entry(b.addr).or_default();
                if !known
                    .iter()
                    .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(b)))
                {
                    known.push(Arc::downgrade(b));
                }
            }
            for b in reg.values().flatten().filter_map(Weak::upgrade) {
                b.set_in_rotation(in_table.contains(&Arc::as_ptr(&b)));
            }
        }
        let routable = !addrs.is_empty();
        self.inner.table.store(Arc::new(table));
        self.inner.cold.published(routable);
        // Idle connections to instances that left rotation are closed now, not when they exit.
        let mut workers = self
            .inner
            .upstream_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        workers.retain(|w| w.strong_count() > 0);
        for pool in workers.iter().filter_map(Weak::upgrade) {
            pool.retain(&addrs);
        }
    }

    /// A cold start: until a table with a ready backend is published, a request waits for it
    /// (at most `bound` from now) instead of being answered 503 "no ready instance". For a
    /// restarted cutover whose instances are starting: connections are accepted (they may
    /// have waited in the backlog) and their requests are served once the first instance is
    /// ready. The first routable table, or the bound, ends the hold for good.
    pub fn hold_while_cold(&self, bound: Duration) {
        self.inner.cold.hold(bound);
    }

    /// The table requests are being routed with now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// Requests and tunnels in flight to `addr`, including through backends no longer in the
    /// table (what drain waits on). 0 for an address never published.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let reg = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reg.get(&addr)
            .map(|v| {
                v.iter()
                    .filter_map(Weak::upgrade)
                    .map(|b| b.in_flight())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Open client connections (upgraded ones included) on each worker; empty when not
    /// serving.
    pub fn connections_by_worker(&self) -> Vec<usize> {
        self.inner
            .balance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
            .map(|b| b.counts())
            .unwrap_or_default()
    }

    /// WebSocket sessions open to `addr` (also counted in [`Proxy::in_flight`]).
    pub fn websocket_sessions(&self, addr: SocketAddr) -> usize {
        self.inner.ws.count(addr)
    }

    /// Drains every WebSocket session open to the backend at `addr` (DESIGN.md invariant 4),
    /// starting at the call, not at the first poll: client → instance frames are dropped from
    /// now on, instance → client frames flow for `quiet` more, then the client gets Close 1012
    /// and the instance Close 1001. Sessions closed by either side meanwhile end by that close.
    /// Resolves once every one of those sessions ended. Call it after the backend left the
    /// table, or new sessions may open to it; sessions already being drained keep the first
    /// drain's `quiet`.
    pub fn drain_websockets(
        &self,
        addr: SocketAddr,
        quiet: Duration,
    ) -> impl Future<Output = WsDrainReport> + Send + 'static {
        self.inner.ws.drain(addr, quiet)
    }

    /// WebSocket sessions open, to every backend.
    pub fn websocket_sessions_total(&self) -> usize {
        self.inner
            .ws
            .addrs()
            .into_iter()
            .map(|a| self.inner.ws.count(a))
            .sum()
    }

    /// [`Proxy::drain_websockets`] for every backend at once (a cutover handing over to its
    /// successor on `cutover upgrade`): resolves once every session open now has ended.
    pub fn drain_all_websockets(
        &self,
        quiet: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let drains: Vec<_> = self
            .inner
            .ws
            .addrs()
            .into_iter()
            .map(|addr| self.inner.ws.drain(addr, quiet))
            .collect();
        async move {
            for d in drains {
                d.await;
            }
        }
    }

    /// Requests the proxy answered 400 itself for their host (RFC 9112 §3.2), since it
    /// started, by reason (`no_host`, `several_hosts`, `invalid_host`,
    /// `host_authority_conflict`; every reason, zero or not). They reached no version and are
    /// in no version's numbers.
    pub fn refused_requests(&self) -> Vec<(&'static str, u64)> {
        headers::HostError::ALL
            .iter()
            .map(|e| {
                let n = self.inner.refused[e.index()].load(std::sync::atomic::Ordering::Relaxed);
                (e.label(), n)
            })
            .collect()
    }

    /// The telemetry the proxy records into.
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// Serves HTTP/1.1 (and HTTP/2 with prior knowledge) on `listener` until `shutdown`
    /// completes; then stops accepting, lets in-flight requests finish and closes idle
    /// keep-alive connections, for at most `shutdown_timeout`. [`Proxy::start`], then
    /// [`Serving::until`].
    ///
    /// # Errors
    /// As [`Proxy::start`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownOutcome, ProxyError> {
        Ok(self.start(listener, None)?.until(shutdown).await)
    }

    /// [`Proxy::serve`] behind TLS: each accepted connection is handshaken with the config
    /// `tls` points to at that moment (so a reload through [`crate::CertReloader`] applies to
    /// new connections only), then served as HTTP/2 if the client chose `h2` by ALPN and as
    /// HTTP/1.1 otherwise. A handshake not done within `header_read_timeout` is dropped.
    /// Shutdown is the same: GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1.
    ///
    /// # Errors
    /// As [`Proxy::start`].
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: SharedServerConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownOutcome, ProxyError> {
        Ok(self.start(listener, Some(tls))?.until(shutdown).await)
    }

    /// Starts serving `listener` (behind TLS when `tls` is set, see [`Proxy::serve_tls`]) on
    /// [`ProxyConfig::workers`] threads, each accepting from the one listener on its own
    /// single-threaded event loop (one accept queue, like nginx without `reuseport`: whichever
    /// worker is free takes the next connection). Connections are accepted from the moment
    /// this returns; [`Serving::until`] stops them.
    ///
    /// Upgraded connections (WebSockets) are tunnels outside hyper's connection tracking: they
    /// outlive the shutdown, on their worker, and are drained by the host (it sees them in
    /// [`Proxy::in_flight`]).
    ///
    /// # Errors
    /// When a worker cannot be set up (no thread, event loop or handle on the listener for
    /// it). Then no worker serves, and the listener is closed.
    pub fn start(
        &self,
        listener: TcpListener,
        tls: Option<SharedServerConfig>,
    ) -> Result<Serving, ProxyError> {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let setup = |source| ProxyError::Workers { addr, source };
        let listener = listener.into_std().map_err(setup)?;
        let mut prepared = Vec::new();
        for _ in 0..self.inner.config.workers.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(setup)?;
            // Registered with the worker's own event loop, from this thread.
            let cloned = {
                let _in_worker = runtime.enter();
                TcpListener::from_std(listener.try_clone().map_err(setup)?).map_err(setup)?
            };
            prepared.push((runtime, cloned));
        }
        drop(listener);
        let balance = Arc::new(Balance::new(prepared.len()));
        *self
            .inner
            .balance
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&balance);
        // Dropping `stop` (an error below, or a dropped `Serving`) stops the workers too.
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut done = Vec::new();
        for (i, (runtime, listener)) in prepared.into_iter().enumerate() {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let proxy = self.clone();
            let tls = tls.clone();
            let mut stop_rx = stop_rx.clone();
            let balance = balance.clone();
            std::thread::Builder::new()
                .name(format!("cutover-proxy-{i}"))
                .spawn(move || {
                    // Its own shard of the telemetry counters, as of the in-flight counts.
                    cutover_telemetry::pin_thread(i);
                    runtime.block_on(async move {
                        let worker = Arc::new(Worker::new(proxy.clone(), i, balance));
                        proxy
                            .inner
                            .upstream_pools
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Arc::downgrade(&worker.http1));
                        // Ends with the runtime, when the worker is done.
                        let pool = worker.http1.clone();
                        let every = (proxy.inner.config.pool_idle_timeout / 2)
                            .max(Duration::from_millis(10));
                        tokio::spawn(async move {
                            let mut tick = tokio::time::interval(every);
                            loop {
                                tick.tick().await;
                                pool.evict_expired();
                            }
                        });
                        let stopped = async move {
                            let _ = stop_rx.wait_for(|s| *s).await;
                        };
                        let outcome = proxy.accept_loop(listener, tls, stopped, &worker).await;
                        let _ = done_tx.send(outcome);
                        // Tunnels and WebSocket relays run on this thread until they end (the
                        // host drains them); then the runtime goes, with its idle connections.
                        worker.tunnels.close();
                        worker.tunnels.wait().await;
                    });
                })
                .map_err(setup)?;
            done.push(done_rx);
        }
        Ok(Serving { stop, done })
    }

    /// One worker's accept loop, on its own thread's event loop, until `shutdown`; then its
    /// graceful drain.
    async fn accept_loop(
        &self,
        listener: TcpListener,
        tls: Option<SharedServerConfig>,
        shutdown: impl Future<Output = ()>,
        worker: &Arc<Worker>,
    ) -> ShutdownOutcome {
        // Connections are told to go away through `stop`, and waited for through `conns`.
        let stop = Stop::default();
        let conns = tokio_util::task::TaskTracker::new();
        // One builder per protocol: the protocol is known before hyper sees the connection
        // (`first_bytes`, or ALPN), so hyper's auto-detecting wrapper, which re-reads the
        // first bytes through a rewinding reader on every read, is not needed.
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.inner.config.header_read_timeout)
            // Exact: the parsed head's length, whatever the reads that brought it.
            .max_header_size(self.inner.config.max_header_bytes)
            // hyper's minimum; below it `max_buf_size` panics.
            .max_buf_size(self.inner.config.max_header_bytes.max(8192));
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.max_header_list_size(
            u32::try_from(self.inner.config.max_header_bytes).unwrap_or(u32::MAX),
        );
        let builder = Builders { http1, http2 };
        let header_read_timeout = self.inner.config.header_read_timeout;
        let shutdown_idle_grace = self.inner.config.shutdown_idle_grace;
        let linger_timeout = self.inner.config.linger_timeout;
        let mut shutdown = std::pin::pin!(shutdown);
        'serving: loop {
            // A worker with more connections than the others leaves the next one to them.
            loop {
                let changed = worker.balance.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if worker.balance.may_accept(worker.index) {
                    break;
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'serving,
                    () = changed => {}
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Usually out of file descriptors: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let open = worker.balance.open(worker.index);
                    let worker = worker.clone();
                    let builder = builder.clone();
                    let stop = stop.clone();
                    let tls = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
                    conns.spawn(async move {
                        let _open = open;
                        // A connection with no request yet is closed when shutdown begins, after
                        // the grace in which a request already sent still arrives and is served.
                        let Some(acceptor) = tls else {
                            let first = tokio::select! {
                                biased;
                                () = conn::after_grace(&stop.token, shutdown_idle_grace) => return,
                                first = first_bytes(&stream, header_read_timeout) => first,
                            };
                            let Some(protocol) = first else {
                                debug!(%peer, "client sent no request in time; closed");
                                return;
                            };
                            let stream = TokioIo::new(Linger::new(stream, linger_timeout));
                            return serve_connection(worker, &builder, stream, peer, protocol, false, &stop).await;
                        };
                        let handshake = tokio::select! {
                            biased;
                            () = conn::after_grace(&stop.token, shutdown_idle_grace) => return,
                            done = tokio::time::timeout(header_read_timeout, acceptor.accept(stream)) => done,
                        };
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "client did not complete the TLS handshake in time; closed");
                                return;
                            }
                        };
                        // ALPN decided the protocol; without ALPN a TLS client speaks HTTP/1.1
                        // (RFC 9113 §3.2).
                        let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            Protocol::Http2
                        } else {
                            Protocol::Http1
                        };
                        let stream = TokioIo::new(Linger::new(stream, linger_timeout));
                        serve_connection(worker, &builder, stream, peer, protocol, true, &stop).await;
                    });
                }
            }
        }
        drop(listener);
        stop.begin();
        conns.close();
        match tokio::time::timeout(self.inner.config.shutdown_timeout, conns.wait()).await {
            Ok(()) => ShutdownOutcome::Drained,
            Err(_) => ShutdownOutcome::TimedOut,
        }
    }

    /// One request, as four named phases (pingora's request phases); each may answer the
    /// client itself, and each hands the next what it decided:
    /// 1. [`route`](Self::route): which instance serves it, on one load of the table;
    /// 2. [`prepare`](Self::prepare): the request as it leaves (hop-by-hop headers stripped,
    ///    `Host` and `X-Forwarded-*` set, the body made resendable);
    /// 3. [`forward`](Self::forward): send it and wait for the response head, retrying once
    ///    on another backend when nothing reached the first;
    /// 4. [`respond`](Self::respond): the instance's answer, a protocol switch, or the proxy's
    ///    own error, recorded for the version that served it.
    async fn handle(
        &self,
        worker: &Worker,
        client: &Client,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let Routed {
            routes,
            mut target,
            started,
            host,
        } = match self.route(worker, client, &req).await {
            Ok(routed) => routed,
            Err(refused) => return refused.response(),
        };
        let (mut outgoing, upgrade) = self.prepare(client, req, host);
        if let Some(token) = routes.table.fencing {
            // Only the holder's token counts: a client's own header of that name is replaced.
            outgoing.parts.headers.remove(&FENCING_TOKEN);
            if target.track == Track::Stable {
                outgoing
                    .parts
                    .headers
                    .insert(FENCING_TOKEN, http::HeaderValue::from(token));
            }
        }
        // A client that gives up before the instance answers must still count: otherwise a
        // hung canary would show no samples, stay "inconclusive" and never be aborted.
        let mut abandoned = Abandoned::arm(routes.recorder(target.track), started);
        let sent = self
            .forward(
                worker,
                &routes,
                &mut target,
                &mut outgoing,
                &mut abandoned,
                started,
            )
            .await;
        self.respond(worker, &target, upgrade, sent, abandoned)
    }

    /// Phase 1, route: the request's instance, from the table loaded once for this request
    /// (invariant 1) and the client's sticky key. [`Refused`] when the proxy answers itself:
    /// 400 for a request whose host cannot be told (before anything else: it reached no
    /// version and counts for none), 503 when its track has no ready instance. During a cold
    /// start it first waits (bounded) for the first ready instance.
    async fn route(
        &self,
        worker: &Worker,
        client: &Client,
        req: &Request<Incoming>,
    ) -> Result<Routed, Refused> {
        let peer = client.peer;
        let host = match headers::request_host(req.version(), req.uri(), req.headers()) {
            Ok(host) => host,
            Err(e) => {
                debug!(%peer, reason = e.reason(), "request refused: 400");
                self.inner.refused[e.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Refused::BadHost {
                    message: e.message(),
                    close: req.version() < Version::HTTP_2,
                });
            }
        };
        let started = Instant::now();
        // A cold start waits for the first ready instance rather than answering 503.
        self.inner.cold.wait().await;
        let key = headers::sticky_key(
            &self.inner.config.sticky,
            self.inner.sticky_header.as_ref(),
            req.headers(),
            req.uri().query(),
            peer,
        );
        // The one load of the table for this request (invariant 1), unless the hold began
        // between the wait above and that load (a singleton's role moving): then the request
        // waits for the next table like the others. The atomic load comes first, so the
        // request path pays for no second route otherwise.
        let mut routes = worker.routes();
        if self.inner.cold.is_held() && routes.table.route(&key).is_none() {
            self.inner.cold.wait().await;
            routes = worker.routes();
        }
        let table = &routes.table;
        let Some((track, pool)) = table.route(&key) else {
            if let Some((_, pool)) = table.intended(&key) {
                self.record(&pool.version, 503, started, true);
            }
            return Err(Refused::NoInstance);
        };
        let Some(backend) =
            pick_backend(&pool.backends, None).and_then(|i| routes.backend(track, i))
        else {
            // `route` only returns pools with backends; kept total rather than panicking.
            return Err(Refused::NoInstance);
        };
        Ok(Routed {
            target: Target { track, backend },
            routes,
            started,
            host,
        })
    }

    /// Phase 2, prepare: the request as it leaves the proxy. Hop-by-hop headers go (the host
    /// is taken first, so even a `Connection: host` keeps it); `Host` is set from what the
    /// client named; `X-Forwarded-*` are added here for hyper's clients (the worker's HTTP/1.1
    /// connections write them with the head); the body becomes resendable for a retry; and
    /// the client's half of an upgrade is taken for [`respond`](Self::respond).
    fn prepare<'c>(
        &self,
        client: &'c Client,
        mut req: Request<Incoming>,
        host: Option<(http::HeaderValue, bool)>,
    ) -> (Outgoing<'c>, ClientUpgrade) {
        let upgrade = headers::is_upgrade(req.headers());
        let websocket = upgrade && headers::is_websocket(req.headers());
        let on = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Taken before the hop-by-hop headers go, so that even a `Connection: host` keeps it.
        let (host, from_target) = match host {
            Some((v, from_target)) => (Some(v), from_target),
            None => (None, false),
        };
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        // HTTP/2 clients name the host in `:authority`, an absolute-form target in the target
        // (which overrides `Host`, RFC 9112 §3.2.2); HTTP/1.1 apps expect it in `Host`, not
        // the backend's address the upstream client would fill in.
        if from_target || !parts.headers.contains_key(HOST) {
            if let Some(v) = &host {
                parts.headers.insert(HOST, v.clone());
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let (body, slot) = Resendable::new(body);
        // HTTP/2 has no `Upgrade`: upgrades always go over HTTP/1.1.
        let via = if upgrade {
            Via::Upgrade
        } else if self.inner.config.upstream_protocol == UpstreamProtocol::Http2 {
            Via::Http2
        } else {
            Via::Http1
        };
        // The worker's HTTP/1.1 connections write these out with the head.
        if via != Via::Http1 {
            headers::add_forwarded(&mut parts.headers, &client.forwarded(host.as_ref()));
        }
        let outgoing = Outgoing {
            client,
            parts,
            path,
            host,
            via,
            body: Some(body),
            slot,
        };
        (outgoing, ClientUpgrade { on, websocket })
    }

    /// Phase 3, forward/retry: sends the request to `target` and waits for the response head
    /// until `upstream_timeout` after `started`, retry included. When nothing reached the instance (it refused the connection) and
    /// the body was not read yet, the request goes to another backend, once: `target` and
    /// `abandoned` then follow the retry. The [`InFlight`] guard counts the backend that was
    /// asked last.
    ///
    /// `outgoing` is borrowed, not moved; the worker's HTTP/1.1 pool is awaited here
    /// directly and writes the head from `outgoing` ([`h1::Outbound`]), so no request is
    /// built for it: each async layer a request passes through copies its arguments and
    /// nests its callee's future in its own, and this is the path of every request
    /// (BENCHMARKS.md, "Did the refactor regress the proxy?").
    async fn forward<'r>(
        &self,
        worker: &Worker,
        routes: &'r Arc<Routes>,
        target: &mut Target,
        outgoing: &mut Outgoing<'_>,
        abandoned: &mut Abandoned<'r>,
        started: Instant,
    ) -> Sent {
        let Outgoing {
            client,
            parts,
            path,
            host,
            via,
            body,
            slot,
        } = outgoing;
        let via = *via;
        let forwarded = client.forwarded(host.as_ref());
        let deadline = started + self.inner.config.upstream_timeout;
        let mut retried = false;
        let result = loop {
            let guard = InFlight::new(target.backend.clone());
            // Taken by this attempt; a retry puts back what the refused one did not read.
            // `None` cannot happen for a socket address and a path the server parsed; a
            // failure here is still the proxy's, not the app's.
            let (Some(sending), Some(authority)) = (body.take(), target.backend.authority.as_ref())
            else {
                break Err((guard, None));
            };
            let answer = if via == Via::Http1 {
                // The worker's own pool writes the head from here: nothing of it is moved.
                let head = h1::Outbound {
                    method: &parts.method,
                    target: path.as_str(),
                    headers: &parts.headers,
                    default_host: authority.as_str(),
                    forwarded: Some(&forwarded),
                };
                let http1 = &worker.http1;
                http1.send(&target.backend, &head, sending, deadline).await
            } else {
                let Some(upstream) = upstream_request(parts, authority, path, via, sending) else {
                    break Err((guard, None));
                };
                worker.send(via, &target.backend, upstream, deadline).await
            };
            match answer {
                Ok(resp) => break Ok((guard, resp)),
                Err(UpstreamError::TimedOut { .. }) => {
                    return Err((guard, Unanswered::TimedOut));
                }
                // Nothing reached the instance (it refused the connection): the request may
                // go to another backend, once.
                Err(err) if err.retry_safe() => {
                    let unread = slot.take_unread();
                    let retry = if retried {
                        None
                    } else {
                        routes.table.retry_target(target.track, target.backend.addr)
                    };
                    match (unread, retry.and_then(|(t, i)| routes.backend(t, i))) {
                        (Some(unread), Some(b)) => {
                            debug!(error = %err, retry = %b.addr, "retrying on another backend");
                            retried = true;
                            *target = Target {
                                track: b.track(),
                                backend: b,
                            };
                            // Nothing reached the refused instance: the wait is the retry's.
                            abandoned.disarm();
                            *abandoned = Abandoned::arm(routes.recorder(target.track), started);
                            let (resent, resent_slot) = Resendable::new(unread);
                            (*body, *slot) = (Some(resent), resent_slot);
                            continue;
                        }
                        _ => break Err((guard, Some(err))),
                    }
                }
                Err(err) => break Err((guard, Some(err))),
            }
        };
        result.map_err(|(guard, err)| {
            // The client's own body broke (bad chunking, a client gone mid-upload): not the
            // version's error.
            if slot.client_failed() {
                (guard, Unanswered::ClientBody)
            } else {
                (guard, Unanswered::Failed(err))
            }
        })
    }

    /// Phase 4, respond: what the client gets. The instance's response, relayed with its
    /// hop-by-hop headers stripped and the backend counted in flight until its body ends; a
    /// protocol switch ([`switch_protocols`](Self::switch_protocols)); or, when there was no
    /// answer, the proxy's own error ([`unanswered`](Self::unanswered)). Each is recorded once,
    /// for the version that served it.
    fn respond(
        &self,
        worker: &Worker,
        target: &Target,
        upgrade: ClientUpgrade,
        sent: Sent,
        mut abandoned: Abandoned<'_>,
    ) -> Response<ProxyBody> {
        let (guard, resp) = match sent {
            Ok(sent) => sent,
            // The guard counts the backend in flight until the failure is recorded.
            Err((_guard, why)) => return self.unanswered(target, why, &mut abandoned),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return self.switch_protocols(worker, target, upgrade, guard, resp, &mut abandoned);
        }
        abandoned.finish(resp.status().as_u16(), false);
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        // hyper answers the client in the client's own version, whatever the upstream hop spoke.
        parts.version = Version::HTTP_11;
        Response::from_parts(parts, Guarded::new(body, guard).boxed_unsync())
    }

    /// The proxy's own answer when the instance gave none: 504 past `upstream_timeout`, 400
    /// when the client's own body broke (a hostile or flaky client stuck to the canary must
    /// not be able to get a rollout aborted), 502 otherwise. Only 502 and 504 count against
    /// the version.
    fn unanswered(
        &self,
        target: &Target,
        why: Unanswered,
        abandoned: &mut Abandoned<'_>,
    ) -> Response<ProxyBody> {
        let backend = &target.backend;
        match why {
            Unanswered::TimedOut => {
                warn!(backend = %backend.id, track = target.track.as_str(), timeout = ?self.inner.config.upstream_timeout, "upstream timed out");
                abandoned.finish(504, true);
                local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the instance did not answer in time\n",
                )
            }
            Unanswered::ClientBody => {
                debug!(backend = %backend.id, "the client's request body could not be read");
                abandoned.finish(400, false);
                local(
                    StatusCode::BAD_REQUEST,
                    "bad request: the request body could not be read\n",
                )
            }
            Unanswered::Failed(err) => {
                if let Some(err) = err {
                    warn!(backend = %backend.id, track = target.track.as_str(), error = %err, "bad gateway");
                }
                abandoned.finish(502, true);
                local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: no response from the instance\n",
                )
            }
        }
    }

    /// A 101 from the instance: the client gets it, and the two upgraded connections are
    /// joined on this worker (a WebSocket relay, or a byte tunnel for other protocols). Refused
    /// with 502 when the client asked for no switch, or when the instance accepted a WebSocket
    /// extension cutover cannot relay — before the client sees a 101 rather than broken after
    /// it (DESIGN.md invariant 12): the instance's connection is dropped unused.
    fn switch_protocols(
        &self,
        worker: &Worker,
        target: &Target,
        upgrade: ClientUpgrade,
        guard: InFlight,
        mut resp: Response<UpstreamBody>,
        abandoned: &mut Abandoned<'_>,
    ) -> Response<ProxyBody> {
        let backend = &target.backend;
        let ClientUpgrade { on, websocket } = upgrade;
        let Some(client_upgrade) = on else {
            let err = UpstreamError::UnexpectedUpgrade { addr: backend.addr };
            warn!(backend = %backend.id, error = %err, "bad gateway");
            abandoned.finish(502, true);
            return local(
                StatusCode::BAD_GATEWAY,
                "bad gateway: unexpected protocol switch\n",
            );
        };
        if let Some(extension) = websocket
            .then(|| ws::unrelayable_extension(resp.headers()))
            .flatten()
        {
            let err = UpstreamError::UnrelayableExtension {
                addr: backend.addr,
                extension,
            };
            warn!(backend = %backend.id, error = %err, "websocket refused");
            abandoned.finish(502, true);
            return local(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the instance accepted a WebSocket extension cutover cannot relay\n",
            );
        }
        abandoned.finish(101, false);
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if websocket && headers::is_websocket(resp.headers()) {
            let session = self.inner.ws.register(backend.addr);
            // The upgraded connection stays on this worker: it still counts as its own.
            let open = worker.balance.open(worker.index);
            worker.tunnels.spawn(async move {
                let _open = open;
                ws::relay(client_upgrade, upstream_upgrade, guard, session).await;
            });
        } else {
            let open = worker.balance.open(worker.index);
            worker.tunnels.spawn(async move {
                let _open = open;
                tunnel(client_upgrade, upstream_upgrade, guard).await;
            });
        }
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        Response::from_parts(parts, empty())
    }

    fn record(&self, version: &str, status: u16, started: Instant, failed_at_proxy: bool) {
        self.inner
            .recorder
            .track(version)
            .record(status, started.elapsed(), failed_at_proxy);
    }
}

/// The proxy's workers, serving until [`Serving::until`]'s shutdown (or until dropped).
#[derive(Debug)]
pub struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<ShutdownOutcome>>,
}

impl Serving {
    /// Serves until `shutdown` completes, then has every worker stop accepting and drain (see
    /// [`Proxy::serve`]); `TimedOut` if any worker had to abandon connections.
    pub async fn until(self, shutdown: impl Future<Output = ()>) -> ShutdownOutcome {
        shutdown.await;
        let _ = self.stop.send(true);
        let mut outcome = ShutdownOutcome::Drained;
        for done in self.done {
            match done.await {
                Ok(ShutdownOutcome::Drained) => {}
                // A worker that timed out, or whose thread panicked, left connections undrained.
                Ok(ShutdownOutcome::TimedOut) | Err(_) => outcome = ShutdownOutcome::TimedOut,
            }
        }
        outcome
    }
}

/// Open client connections per worker (upgraded ones included, which stay on their worker for
/// hours). One shared listener lets whichever worker wakes first take a connection, which can
/// leave one worker with most of a burst and, with long-lived connections, keep it that way;
/// so a worker with more than the least loaded one (plus an eighth) declines to accept and
/// leaves the connection to the others (Envoy's "exact" connection balance, by declining
/// rather than handing sockets over).
struct Balance {
    open: Box<[std::sync::atomic::AtomicUsize]>,
    changed: tokio::sync::Notify,
}

impl Balance {
    fn new(workers: usize) -> Balance {
        Balance {
            open: (0..workers).map(|_| Default::default()).collect(),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn counts(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Whether worker `me` may take the next connection. The least loaded one always may.
    fn may_accept(&self, me: usize) -> bool {
        let counts = self.counts();
        let least = counts.iter().copied().min().unwrap_or(0);
        counts.get(me).copied().unwrap_or(0) <= least + 1 + least / 8
    }

    /// Counts a connection on worker `me` until the guard drops.
    fn open(self: &Arc<Self>, me: usize) -> OpenConnection {
        self.open[me].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
        OpenConnection {
            balance: self.clone(),
            worker: me,
        }
    }
}

struct OpenConnection {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.balance.open[self.worker].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.balance.changed.notify_waiters();
    }
}

/// The client connection a request came on.
#[derive(Clone)]
struct Client {
    peer: SocketAddr,
    /// `peer` as an `X-Forwarded-For` entry.
    forwarded_for: http::HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: http::HeaderValue,
    /// Whether `peer` is one of `trusted_proxies`, whose forwarding headers are kept.
    trusted: bool,
}

impl Client {
    /// The `X-Forwarded-*` fields for a request from this client that named `host`.
    fn forwarded<'a>(&'a self, host: Option<&'a http::HeaderValue>) -> headers::Forwarded<'a> {
        headers::Forwarded {
            client: &self.forwarded_for,
            host,
            proto: &self.proto,
            trusted: self.trusted,
        }
    }
}

/// What one worker thread owns: its upstream connections and its tunnels.
struct Worker {
    proxy: Proxy,
    /// Keep-alive HTTP/1.1 connections, for every request but upgrades and HTTP/2.
    http1: Arc<Http1Pool>,
    /// Upgrades (WebSockets): a connection each, handed over to the tunnel.
    upgrades: Upstreams<HttpConnector, Resendable>,
    /// HTTP/2-only pools, used for every non-upgrade request when `upstream_protocol` is
    /// HTTP/2 (built either way: it holds no connection until used).
    http2: Upstreams<HttpConnector, Resendable>,
    /// Upgraded connections, which outlive the worker's accept loop.
    tunnels: tokio_util::task::TaskTracker,
    /// This worker's number, and the open connections of all of them.
    index: usize,
    balance: Arc<Balance>,
    /// This worker's view of the published table, rebuilt when another is published.
    routes: Mutex<Arc<Routes>>,
}

impl Worker {
    fn new(proxy: Proxy, index: usize, balance: Arc<Balance>) -> Worker {
        let config = &proxy.inner.config;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let http1 = Arc::new(Http1Pool::new(
            config.connect_timeout,
            config.pool_idle_timeout,
            config.pool_max_idle_per_host,
        ));
        let upgrades = Upstreams::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(connector.clone());
        let http2 = Upstreams::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_only(true)
            .build(connector);
        let routes = Routes::new(proxy.inner.table.load_full(), &proxy.inner.recorder, index);
        Worker {
            routes: Mutex::new(Arc::new(routes)),
            proxy,
            http1,
            upgrades,
            http2,
            tunnels: tokio_util::task::TaskTracker::new(),
            index,
            balance,
        }
    }

    /// The worker's view of the table published now. Comparing pointers and cloning the
    /// worker's own `Arc` writes nothing the other workers touch; only a newly published
    /// table costs a rebuild (once per worker).
    fn routes(&self) -> Arc<Routes> {
        let published = self.proxy.inner.table.load();
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&routes.table, &published) {
            *routes = Arc::new(Routes::new(
                Arc::clone(&published),
                &self.proxy.inner.recorder,
                self.index,
            ));
        }
        Arc::clone(&routes)
    }

    /// Sends `req` to `backend` over one of hyper's clients, HTTP/2 or the one for upgrades,
    /// and waits for the response head until `deadline`. They find the `X-Forwarded-*` fields
    /// in the request's map already. (The worker's own HTTP/1.1 pool, which writes them out
    /// with the head, is called by [`Proxy::forward`] directly.)
    async fn send(
        &self,
        via: Via,
        backend: &BackendRef,
        req: Request<Resendable>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let client = if via == Via::Http2 {
            &self.http2
        } else {
            &self.upgrades
        };
        let addr = backend.addr;
        match tokio::time::timeout_at(deadline, client.request(req)).await {
            Err(_) => Err(UpstreamError::TimedOut { addr }),
            Ok(Ok(resp)) => Ok(resp.map(UpstreamBody::unpooled)),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect {
                addr,
                source: Box::new(e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Forward {
                addr,
                source: Box::new(e),
            }),
        }
    }
}

/// What a client connection speaks, known before hyper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// How client connections are served, one builder per protocol.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Shutdown of one accept loop as its connections see it: the token their drivers wait on,
/// and the same fact as a flag, which a request reads (and holds a reference to) for an atomic
/// load and a reference count, where the token's `is_cancelled` and `clone` each take its
/// lock: that was 180 instructions per request (BENCHMARKS.md, "Part A").
#[derive(Clone, Default)]
struct Stop {
    token: tokio_util::sync::CancellationToken,
    begun: Arc<AtomicBool>,
}

impl Stop {
    fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// Serves one client connection until it ends, goes away when `stop` begins, or (HTTP/2)
/// is closed for being idle (see [`conn::drive`]).
async fn serve_connection<I>(
    worker: Arc<Worker>,
    builder: &Builders,
    io: I,
    peer: SocketAddr,
    protocol: Protocol,
    tls: bool,
    stop: &Stop,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let trusted = worker
        .proxy
        .inner
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(peer.ip()));
    let client = Client {
        peer,
        forwarded_for: headers::forwarded_for(peer),
        proto: http::HeaderValue::from_static(if tls { "https" } else { "http" }),
        trusted,
    };
    // hyper closes an idle HTTP/1.1 connection itself; HTTP/2 is watched here.
    let streams = (protocol == Protocol::Http2).then(|| Arc::new(Streams::default()));
    let idle = streams.clone().map(|streams| Idle {
        streams,
        after: worker.proxy.inner.config.header_read_timeout,
    });
    // Each request holds the worker (whose count only this thread touches), not a clone
    // of the proxy, whose count every worker shares.
    let grace = worker.proxy.inner.config.shutdown_idle_grace;
    let stopped = stop.begun.clone();
    let service = hyper::service::service_fn(move |req| {
        let worker = worker.clone();
        let client = client.clone();
        let stream = streams.as_ref().map(Streams::start);
        let stopped = stopped.clone();
        async move {
            let mut resp = worker.proxy.handle(&worker, &client, req).await;
            // Shutting down: each HTTP/1.1 connection ends with its next response (hyper
            // closes after a `connection: close` response); not a switch of protocols.
            if protocol == Protocol::Http1
                && stopped.load(Ordering::Acquire)
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(match stream {
                Some(stream) => resp.map(|body| stream.hold(body)),
                None => resp,
            })
        }
    });
    let served = match protocol {
        Protocol::Http1 => {
            let conn = builder.http1.serve_connection(io, service).with_upgrades();
            let stopping = conn::after_grace(&stop.token, grace);
            conn::drive(conn, |c| c.graceful_shutdown(), stopping, idle).await
        }
        Protocol::Http2 => {
            let conn = builder.http2.serve_connection(io, service);
            conn::drive(
                conn,
                |c| c.graceful_shutdown(),
                stop.token.cancelled(),
                idle,
            )
            .await
        }
    };
    match served {
        Some(Ok(())) => {}
        Some(Err(e)) => debug!(%peer, error = %e, "client connection ended with an error"),
        None => debug!(%peer, "idle HTTP/2 connection closed"),
    }
}

/// Waits, at most `within`, until the client has sent enough to tell HTTP/1.1 from HTTP/2:
/// `None` if it did not (close it).
///
/// hyper's HTTP/1-or-2 detection reads the first bytes with no timer of its own, and its
/// HTTP/1 `header_read_timeout` only starts after it: without this, a connection that sends
/// nothing (or a bit of the HTTP/2 preface) would be held open forever.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> Option<Protocol> {
    const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let decided = async {
        loop {
            match stream.peek(&mut buf).await {
                // Gone before sending a request: nothing to serve.
                Ok(0) | Err(_) => return None,
                Ok(n) if buf[..n] != H2_PREFACE[..n] => return Some(Protocol::Http1),
                Ok(n) if n == buf.len() => return Some(Protocol::Http2),
                // Part of the preface: `peek` returns at once while those bytes sit unread.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(within, decided).await.ok().flatten()
}

/// Records a request whose client went away before the instance answered: status 499 (the
/// nginx convention for "client closed request"), with the time waited so far as its latency
/// — a lower bound, which is what an abort rule on a quantile needs to see a hung instance.
/// Not an error: a client may leave for reasons of its own; its wait is the signal.
struct Abandoned<'a> {
    armed: Option<(&'a VersionRecorder, Instant)>,
}

impl<'a> Abandoned<'a> {
    /// Borrows the recorder from the worker's [`Routes`]: no lookup and no reference count
    /// shared with the other workers. `None` records nothing (a track without a pool, which
    /// routing never returns).
    fn arm(track: Option<&'a VersionRecorder>, started: Instant) -> Abandoned<'a> {
        Abandoned {
            armed: track.map(|t| (t, started)),
        }
    }
    fn disarm(&mut self) {
        self.armed = None;
    }
    /// Records how the request ended, and disarms.
    fn finish(&mut self, status: u16, failed_at_proxy: bool) {
        if let Some((track, started)) = self.armed.take() {
            track.record_since(status, started, failed_at_proxy);
        }
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some((track, started)) = self.armed.take() {
            track.record_since(499, started, false);
        }
    }
}

/// What [`Proxy::route`] decided: where the request goes.
struct Routed {
    /// This worker's view of the table, loaded once for the request (invariant 1).
    routes: Arc<Routes>,
    target: Target,
    /// When the proxy took the request: its latency and `upstream_timeout` count from here.
    started: Instant,
    /// The host the client named, and whether it came from an absolute-form target (`None`:
    /// an HTTP/1.0 client that named none).
    host: Option<(http::HeaderValue, bool)>,
}

/// Why [`Proxy::route`] answers a request itself.
enum Refused {
    /// The host cannot be told (400). `close`: HTTP/1.1, whose connection ends with it (HTTP/2
    /// has no `Connection`; only the stream is answered).
    BadHost { message: &'static str, close: bool },
    /// The request's track has no ready instance (503).
    NoInstance,
}

impl Refused {
    fn response(self) -> Response<ProxyBody> {
        match self {
            Refused::BadHost { message, close } => {
                let mut resp = local(StatusCode::BAD_REQUEST, message);
                if close {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                resp
            }
            Refused::NoInstance => local(StatusCode::SERVICE_UNAVAILABLE, "no ready instance\n"),
        }
    }
}

/// The instance a request is sent to, and the track it serves; a retry moves it.
struct Target {
    track: Track,
    backend: BackendRef,
}

/// The header a singleton's holder gets its fencing token in ([`RouteTable::fencing`]).
pub const FENCING_TOKEN: http::HeaderName =
    http::HeaderName::from_static("x-cutover-fencing-token");

/// What [`Proxy::prepare`] made of the request: everything an attempt needs to send it. The
/// worker's HTTP/1.1 pool writes the head from here ([`h1::Outbound`]); for hyper's clients
/// each attempt builds its own request (see [`upstream_request`]).
struct Outgoing<'c> {
    client: &'c Client,
    /// Method and cleaned headers.
    parts: http::request::Parts,
    path: PathAndQuery,
    /// The host the client named, for `X-Forwarded-Host`.
    host: Option<http::HeaderValue>,
    via: Via,
    /// The request's body, until an attempt takes it.
    body: Option<Resendable>,
    /// Whether the body was read, and whether the client broke it.
    slot: BodySlot,
}

/// The client's half of a protocol switch: `on` is `None` when it asked for none.
struct ClientUpgrade {
    on: Option<hyper::upgrade::OnUpgrade>,
    websocket: bool,
}

/// How [`Proxy::forward`] ended: the response head, or why there is none. Either way with the
/// [`InFlight`] guard of the backend asked last, kept for as long as the answer needs it.
type Sent = Result<(InFlight, Response<UpstreamBody>), (InFlight, Unanswered)>;

/// Why [`Proxy::forward`] has no response to relay.
enum Unanswered {
    /// No response head before `upstream_timeout` (504).
    TimedOut,
    /// The client's own request body broke (400: not the version's error).
    ClientBody,
    /// Nothing came back from the instance, after the retry if there was one (502); `None`:
    /// the request could not even be built for it.
    Failed(Option<UpstreamError>),
}

/// How a request travels to its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The worker's own HTTP/1.1 pool (the common case).
    Http1,
    /// HTTP/2 with prior knowledge (`upstream_protocol = "http2"`).
    Http2,
    /// A protocol switch (WebSocket), on a connection of its own.
    Upgrade,
}

/// The request as hyper's clients (HTTP/2, upgrades) send it to the instance at `authority`:
/// the client's method, path, and (already cleaned) headers, with the absolute-form URI
/// they want, to know where to connect. (The worker's own HTTP/1.1 pool takes an
/// [`h1::Outbound`] instead, borrowed, not built.)
fn upstream_request(
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    path: &PathAndQuery,
    via: Via,
    body: Resendable,
) -> Option<Request<Resendable>> {
    let uri = Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path.clone())
        .build()
        .ok()?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if via == Via::Http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = parts.headers.clone();
    Some(req)
}

/// Copies bytes both ways between the client and the backend once both sides switched
/// protocols; the backend stays counted in flight until the tunnel closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let _in_flight = in_flight;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(error = %e, "tunnel closed with an error");
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short plain-text response generated by the proxy itself.
fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
