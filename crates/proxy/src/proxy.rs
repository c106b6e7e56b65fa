//! The proxy: accept loop, per-request routing and forwarding, upgrades, graceful shutdown.

use crate::body::{Guarded, ProxyBody, Resendable};
use crate::error::{ProxyError, UpstreamError};
use crate::headers;
use crate::table::{pick_backend, Backend, InFlight, RouteTable};
use crate::tls::SharedServerConfig;
use crate::ws::{self, WsDrainReport};
use arc_swap::ArcSwap;
use bytes::Bytes;
use cutover_core::spec::{StickySpec, UpstreamProtocol};
use cutover_telemetry::Recorder;
use http::header::{HeaderName, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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
    /// At most this many idle upstream connections are kept per backend.
    pub pool_max_idle_per_host: usize,
    /// How long [`Proxy::serve`] waits for in-flight requests after shutdown is asked for.
    pub shutdown_timeout: Duration,
    /// A client connection that sends no complete request head for this long is closed.
    pub header_read_timeout: Duration,
    /// A request head (request line and headers) larger than this is refused with 431
    /// (HTTP/1.1; for HTTP/2 it is the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`). At least
    /// 8 KiB. The HTTP/1.1 limit is enforced on hyper's read buffer, so it is approximate
    /// (within one read) rather than byte-exact.
    pub max_header_bytes: usize,
    /// An instance that sends no response head for this long gets the request answered 504
    /// (nginx's `proxy_read_timeout` defaults to the same 60 s).
    pub upstream_timeout: Duration,
    /// What instances speak. HTTP/2 is h2c with prior knowledge; WebSocket and other upgrades
    /// always go over HTTP/1.1, since HTTP/2 has no `Upgrade`.
    pub upstream_protocol: UpstreamProtocol,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            sticky: StickySpec::default(),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle_per_host: 64,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            // Envoy's default (60 KiB) rounded up; nginx allows 4 × 8 KiB lines.
            max_header_bytes: 64 * 1024,
            upstream_timeout: Duration::from_secs(60),
            upstream_protocol: UpstreamProtocol::Http1,
        }
    }
}

/// How [`Proxy::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every connection finished its in-flight requests and closed.
    Drained,
    /// `shutdown_timeout` passed with connections still open; they were abandoned.
    TimedOut,
}

/// The data plane. Cheap to clone; clones share the table, the counts and the upstream pool.
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
    client: Client<HttpConnector, Resendable>,
    /// HTTP/2-only pools, used for every non-upgrade request when `upstream_protocol` is
    /// HTTP/2 (built either way: it holds no connection until used).
    h2_client: Client<HttpConnector, Resendable>,
    recorder: Recorder,
    /// Open WebSocket sessions by backend address (what [`Proxy::drain_websockets`] closes).
    ws: Arc<ws::Sessions>,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector.clone());
        let h2_client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_only(true)
            .build(connector);
        Proxy {
            inner: Arc::new(Inner {
                config,
                sticky_header,
                table: ArcSwap::from_pointee(RouteTable::default()),
                registry: Mutex::new(HashMap::new()),
                client,
                h2_client,
                recorder,
                ws: Arc::default(),
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
            for b in pools.flat_map(|p| &p.backends) {
                let known = reg.entry(b.addr).or_default();
                if !known
                    .iter()
                    .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(b)))
                {
                    known.push(Arc::downgrade(b));
                }
            }
        }
        self.inner.table.store(Arc::new(table));
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

    /// The telemetry the proxy records into.
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// Serves HTTP/1.1 (and HTTP/2 with prior knowledge) on `listener` until `shutdown`
    /// completes; then stops accepting, lets in-flight requests finish and closes idle
    /// keep-alive connections, for at most `shutdown_timeout`.
    ///
    /// Upgraded connections (WebSockets) are tunnels outside hyper's connection tracking: they
    /// outlive this call and are drained by the host (it sees them in [`Proxy::in_flight`]).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> ShutdownOutcome {
        self.accept_loop(listener, None, shutdown).await
    }

    /// [`Proxy::serve`] behind TLS: each accepted connection is handshaken with the config
    /// `tls` points to at that moment (so a reload through [`crate::CertReloader`] applies to
    /// new connections only), then served as HTTP/2 if the client chose `h2` by ALPN and as
    /// HTTP/1.1 otherwise. A handshake not done within `header_read_timeout` is dropped.
    /// Shutdown is the same: GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: SharedServerConfig,
        shutdown: impl Future<Output = ()>,
    ) -> ShutdownOutcome {
        self.accept_loop(listener, Some(tls), shutdown).await
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        tls: Option<SharedServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> ShutdownOutcome {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.inner.config.header_read_timeout)
            // hyper's minimum; below it `max_buf_size` panics.
            .max_buf_size(self.inner.config.max_header_bytes.max(8192));
        builder.http2().max_header_list_size(
            u32::try_from(self.inner.config.max_header_bytes).unwrap_or(u32::MAX),
        );
        let header_read_timeout = self.inner.config.header_read_timeout;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
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
                    let proxy = self.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let tls = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
                    tokio::spawn(async move {
                        let Some(acceptor) = tls else {
                            if !first_bytes(&stream, header_read_timeout).await {
                                debug!(%peer, "client sent no request in time; closed");
                                return;
                            }
                            return proxy.serve_connection(builder, TokioIo::new(stream), peer, watcher).await;
                        };
                        let stream = match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
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
                        // (RFC 9113 §3.2), and hyper's HTTP/1 header timer then covers it.
                        let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            builder.http2_only()
                        } else {
                            builder.http1_only()
                        };
                        proxy.serve_connection(builder, TokioIo::new(stream), peer, watcher).await;
                    });
                }
            }
        }
        drop(listener);
        match tokio::time::timeout(self.inner.config.shutdown_timeout, graceful.shutdown()).await {
            Ok(()) => ShutdownOutcome::Drained,
            Err(_) => ShutdownOutcome::TimedOut,
        }
    }

    /// Serves one client connection, tracked by `watcher` for graceful shutdown.
    async fn serve_connection<I>(
        self,
        builder: auto::Builder<TokioExecutor>,
        io: I,
        peer: SocketAddr,
        watcher: Watcher,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let proxy = self.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        if let Err(e) = watcher.watch(conn).await {
            debug!(%peer, error = %e, "client connection ended with an error");
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        // The one load of the table for this request (invariant 1).
        let table = self.inner.table.load_full();
        let key = headers::sticky_key(
            &self.inner.config.sticky,
            self.inner.sticky_header.as_ref(),
            req.headers(),
            req.uri().query(),
            peer,
        );
        let Some((mut track, mut pool)) = table.route(&key) else {
            if let Some((_, pool)) = table.intended(&key) {
                self.record(&pool.version, 503, started, true);
            }
            return local(StatusCode::SERVICE_UNAVAILABLE, "no ready instance\n");
        };
        let Some(mut backend) = pick_backend(&pool.backends, None) else {
            // `route` only returns pools with backends; kept total rather than panicking.
            return local(StatusCode::SERVICE_UNAVAILABLE, "no ready instance\n");
        };

        let upgrade = headers::is_upgrade(req.headers());
        let websocket = upgrade && headers::is_websocket(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        // HTTP/2 clients name the host in `:authority`; HTTP/1.1 apps expect it in `Host`,
        // not the backend's address the upstream client would fill in.
        if !parts.headers.contains_key(HOST) {
            if let Some(v) = host
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok())
            {
                parts.headers.insert(HOST, v);
            }
        }
        headers::add_forwarded(&mut parts.headers, peer, host.as_deref());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());

        let (mut body, mut slot) = Resendable::new(body);
        let mut retried = false;
        // HTTP/2 has no `Upgrade`: upgrades always take the HTTP/1.1 pools.
        let (client, upstream_version) =
            if self.inner.config.upstream_protocol == UpstreamProtocol::Http2 && !upgrade {
                (&self.inner.h2_client, Version::HTTP_2)
            } else {
                (&self.inner.client, Version::HTTP_11)
            };
        // A client that gives up before the instance answers must still count: otherwise a
        // hung canary would show no samples, stay "inconclusive" and never be aborted.
        let mut abandoned = Abandoned::arm(self.inner.recorder.track(&pool.version), started);
        let result = loop {
            let guard = InFlight::new(backend.clone());
            let upstream =
                match upstream_request(&parts, backend.addr, &path, upstream_version, body) {
                    Some(r) => r,
                    None => {
                        // Cannot happen for a socket address and a path the server parsed; a
                        // failure here is still the proxy's, not the app's.
                        break Err((guard, None));
                    }
                };
            let sent =
                tokio::time::timeout(self.inner.config.upstream_timeout, client.request(upstream))
                    .await;
            let Ok(sent) = sent else {
                warn!(backend = %backend.id, track = track.as_str(), timeout = ?self.inner.config.upstream_timeout, "upstream timed out");
                abandoned.finish(504, true);
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the instance did not answer in time\n",
                );
            };
            match sent {
                Ok(resp) => break Ok((guard, resp)),
                Err(source) if source.is_connect() => {
                    let err = UpstreamError::Connect {
                        addr: backend.addr,
                        source,
                    };
                    let unread = slot.take_unread();
                    let retry = if retried {
                        None
                    } else {
                        table.retry_target(track, backend.addr)
                    };
                    match (unread, retry) {
                        (Some(unread), Some((t, p, b))) => {
                            debug!(error = %err, retry = %b.addr, "retrying on another backend");
                            retried = true;
                            (track, pool, backend) = (t, p, b);
                            // Nothing reached the refused instance: the wait is the retry's.
                            abandoned.disarm();
                            abandoned =
                                Abandoned::arm(self.inner.recorder.track(&pool.version), started);
                            (body, slot) = Resendable::new(unread);
                            continue;
                        }
                        _ => break Err((guard, Some(err))),
                    }
                }
                Err(source) => {
                    break Err((
                        guard,
                        Some(UpstreamError::Forward {
                            addr: backend.addr,
                            source,
                        }),
                    ))
                }
            }
        };

        let (guard, mut resp) = match result {
            Ok(ok) => ok,
            Err((_guard, err)) => {
                // The client's own body broke (bad chunking, a client gone mid-upload): a
                // 400, and not the version's error — a hostile or flaky client stuck to the
                // canary must not be able to get a rollout aborted.
                if slot.client_failed() {
                    debug!(backend = %backend.id, "the client's request body could not be read");
                    abandoned.finish(400, false);
                    return local(
                        StatusCode::BAD_REQUEST,
                        "bad request: the request body could not be read\n",
                    );
                }
                if let Some(err) = err {
                    warn!(backend = %backend.id, track = track.as_str(), error = %err, "bad gateway");
                }
                abandoned.finish(502, true);
                return local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: no response from the instance\n",
                );
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                let err = UpstreamError::UnexpectedUpgrade { addr: backend.addr };
                warn!(backend = %backend.id, error = %err, "bad gateway");
                abandoned.finish(502, true);
                return local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: unexpected protocol switch\n",
                );
            };
            abandoned.finish(101, false);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            if websocket && headers::is_websocket(resp.headers()) {
                let session = self.inner.ws.register(backend.addr);
                tokio::spawn(ws::relay(client_upgrade, upstream_upgrade, guard, session));
            } else {
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
            }
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, empty());
        }

        abandoned.finish(resp.status().as_u16(), false);
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        // hyper answers the client in the client's own version, whatever the upstream hop spoke.
        parts.version = Version::HTTP_11;
        Response::from_parts(parts, Guarded::new(body, guard).boxed_unsync())
    }

    fn record(&self, version: &str, status: u16, started: Instant, failed_at_proxy: bool) {
        self.inner
            .recorder
            .track(version)
            .record(status, started.elapsed(), failed_at_proxy);
    }
}

/// Waits, at most `within`, until the client has sent enough to tell HTTP/1.1 from HTTP/2.
///
/// hyper's HTTP/1-or-2 detection reads the first bytes with no timer of its own, and its
/// HTTP/1 `header_read_timeout` only starts after it: without this, a connection that sends
/// nothing (or a bit of the HTTP/2 preface) would be held open forever. `false`: close it.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let decided = async {
        loop {
            match stream.peek(&mut buf).await {
                // Gone before sending a request: nothing to serve.
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buf.len() || buf[..n] != H2_PREFACE[..n] => return true,
                // Part of the preface: `peek` returns at once while those bytes sit unread.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(within, decided).await.unwrap_or(false)
}

/// Records a request whose client went away before the instance answered: status 499 (the
/// nginx convention for "client closed request"), with the time waited so far as its latency
/// — a lower bound, which is what an abort rule on a quantile needs to see a hung instance.
/// Not an error: a client may leave for reasons of its own; its wait is the signal.
struct Abandoned {
    armed: Option<(cutover_telemetry::VersionRecorder, Instant)>,
}

impl Abandoned {
    fn arm(track: cutover_telemetry::VersionRecorder, started: Instant) -> Abandoned {
        Abandoned {
            armed: Some((track, started)),
        }
    }
    fn disarm(&mut self) {
        self.armed = None;
    }
    /// Records how the request ended, through the handle already looked up for the guard (one
    /// recorder lookup per request, not two), and disarms.
    fn finish(&mut self, status: u16, failed_at_proxy: bool) {
        if let Some((track, started)) = self.armed.take() {
            track.record(status, started.elapsed(), failed_at_proxy);
        }
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((track, started)) = self.armed.take() {
            track.record(499, started.elapsed(), false);
        }
    }
}

/// The request as sent to `addr`: the client's method, path, and (already cleaned) headers.
fn upstream_request(
    parts: &http::request::Parts,
    addr: SocketAddr,
    path: &str,
    version: Version,
    body: Resendable,
) -> Option<Request<Resendable>> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .ok()?;
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(version)
        .body(body)
        .ok()?;
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
