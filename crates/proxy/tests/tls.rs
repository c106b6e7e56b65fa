//! TLS termination (ALPN h2 and http/1.1, certificate reload, handshake timeout) and HTTP/2 to
//! upstreams, against real sockets on 127.0.0.1.

mod support;

use bytes::Bytes;
use cutover_core::spec::UpstreamProtocol;
use cutover_proxy::{CertReloader, Proxy, ProxyConfig, Reload, ShutdownOutcome};
use cutover_telemetry::Recorder;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{pool, table, Upstream, DEADLINE};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost`, written as `cert.pem` and `key.pem` into a dir.
struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn new(common_name: &str) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key).unwrap();
        Cert {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes both files through a rename each, as a certificate manager would.
    fn install(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        atomic_write(&cert, self.cert_pem.as_bytes());
        atomic_write(&key, self.key_pem.as_bytes());
        (cert, key)
    }
}

fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A proxy serving TLS on an ephemeral port in front of one upstream named `v1`.
struct TlsProxy {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    done: JoinHandle<ShutdownOutcome>,
    _upstream: Upstream,
}

impl TlsProxy {
    async fn start(reloader: &CertReloader, config: ProxyConfig) -> TlsProxy {
        let upstream = Upstream::start("v1").await;
        let proxy = Proxy::new(
            config,
            Recorder::new(Duration::from_secs(1), Duration::from_secs(60)),
        );
        proxy.set_table(table(Some(pool("v1", &[upstream.backend()])), None));
        let listener = Proxy::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let tls = reloader.server_config();
        let done = tokio::spawn(async move {
            proxy
                .serve_tls(listener, tls, async {
                    let _ = rx.await;
                })
                .await
                .expect("the proxy workers start")
        });
        TlsProxy {
            addr,
            shutdown: Some(tx),
            done,
            _upstream: upstream,
        }
    }
}

/// A certificate for `localhost`, installed in a fresh directory (kept alive by the caller)
/// and loaded.
fn one_cert() -> (tempfile::TempDir, Cert, CertReloader) {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new("one");
    let (c, k) = cert.install(dir.path());
    let reloader = CertReloader::load(c, k).unwrap();
    (dir, cert, reloader)
}

/// A TLS connection to `addr` trusting `roots`, offering `alpn`.
async fn connect(addr: SocketAddr, roots: &[&Cert], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.der.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake within the deadline")
    .expect("handshake")
}

fn alpn(tls: &TlsStream<TcpStream>) -> Option<&[u8]> {
    tls.get_ref().1.alpn_protocol()
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2(tls: TlsStream<TcpStream>) -> H2 {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_get(send: &mut H2) -> (StatusCode, String) {
    send.ready().await.unwrap();
    let req = Request::get("https://localhost/")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A client offering both protocols is served HTTP/2; concurrent streams all get 200s.
#[tokio::test]
async fn alpn_h2_is_negotiated_and_served() {
    let (_dir, cert, reloader) = one_cert();
    let mut proxy = TlsProxy::start(&reloader, ProxyConfig::default()).await;

    let tls = connect(proxy.addr, &[&cert], &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn(&tls), Some(&b"h2"[..]));
    let send = h2(tls).await;
    let streams = (0..20).map(|_| {
        let mut send = send.clone();
        tokio::spawn(async move { h2_get(&mut send).await })
    });
    for s in streams {
        assert_eq!(s.await.unwrap(), (StatusCode::OK, "v1".to_owned()));
    }

    proxy.shutdown.take().unwrap().send(()).unwrap();
    drop(send);
    let outcome = tokio::time::timeout(DEADLINE, proxy.done).await.unwrap();
    assert_eq!(outcome.unwrap(), ShutdownOutcome::Drained);
}

/// A client offering only HTTP/1.1 is served HTTP/1.1.
#[tokio::test]
async fn alpn_http1_is_negotiated_and_served() {
    let (_dir, cert, reloader) = one_cert();
    let proxy = TlsProxy::start(&reloader, ProxyConfig::default()).await;

    let tls = connect(proxy.addr, &[&cert], &[b"http/1.1"]).await;
    assert_eq!(alpn(&tls), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"v1");
    }
    // The app hears that the client used TLS, whatever the (untrusted) client claimed.
    let req = Request::get("/headers")
        .header("host", "localhost")
        .header("x-forwarded-proto", "http")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8_lossy(&body);
    let protos: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("x-forwarded-proto:"))
        .collect();
    assert_eq!(protos, ["x-forwarded-proto: https"], "{seen}");
}

/// A renewed certificate is served to new connections after the reload interval, while a
/// connection opened before keeps working; a replacement that does not parse is refused and
/// the certificate in use is kept.
#[tokio::test]
async fn certificate_reloads_without_a_restart_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Cert::new("old"), Cert::new("new"));
    let (c, k) = old.install(dir.path());
    let reloader = CertReloader::load(&c, &k).unwrap();
    let proxy = TlsProxy::start(&reloader, ProxyConfig::default()).await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let reloading = tokio::spawn(reloader.run(Duration::from_millis(100), async {
        let _ = stop_rx.await;
    }));

    let before = connect(proxy.addr, &[&old, &new], &[b"h2"]).await;
    assert_eq!(peer_cert(&before), old.der);
    let mut open = h2(before).await;
    assert_eq!(h2_get(&mut open).await.0, StatusCode::OK);

    new.install(dir.path());
    let (addr, roots, new_der) = (proxy.addr, [&old, &new], &new.der);
    let after = cutover_testkit::eventually(
        DEADLINE,
        "a new connection sees the new certificate",
        || async move {
            let tls = connect(addr, &roots, &[b"h2"]).await;
            if peer_cert(&tls) == *new_der {
                Ok(tls)
            } else {
                Err("a new connection was still shown the old certificate")
            }
        },
    )
    .await;
    let mut fresh = h2(after).await;
    assert_eq!(h2_get(&mut fresh).await.0, StatusCode::OK);
    // The connection accepted with the old certificate is untouched by the swap.
    assert_eq!(h2_get(&mut open).await.0, StatusCode::OK);

    let _ = stop_tx.send(());
    reloading.await.unwrap();

    // Step the reloader by hand for the bad files: each check is one decision.
    let mut reloader = CertReloader::load(&c, &k).unwrap();
    let shared = reloader.server_config();
    let proxy = TlsProxy::start(&reloader, ProxyConfig::default()).await;
    assert!(matches!(reloader.check(), Reload::Unchanged));
    atomic_write(&c, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    let failed = reloader.check();
    assert!(matches!(failed, Reload::Failed(_)), "{failed:?}");
    let in_use = Arc::as_ptr(&shared.load_full());
    let tls = connect(proxy.addr, &[&old, &new], &[b"h2"]).await;
    assert_eq!(peer_cert(&tls), new.der, "the previous certificate is kept");
    // A key that does not match the certificate is refused too.
    atomic_write(&c, old.cert_pem.as_bytes());
    let failed = reloader.check();
    assert!(matches!(failed, Reload::Failed(_)), "{failed:?}");
    assert_eq!(Arc::as_ptr(&shared.load_full()), in_use);
    // Once both files are consistent again it loads.
    atomic_write(&k, old.key_pem.as_bytes());
    assert!(matches!(reloader.check(), Reload::Reloaded));
    let tls = connect(proxy.addr, &[&old, &new], &[b"h2"]).await;
    assert_eq!(peer_cert(&tls), old.der);
}

/// Files that do not load are an error at start, naming the file.
#[test]
fn unreadable_files_are_an_error_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new("one");
    let (c, k) = cert.install(dir.path());
    let missing = CertReloader::load(dir.path().join("nope.pem"), &k).unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    std::fs::write(&k, "no key here").unwrap();
    let no_key = CertReloader::load(&c, &k).unwrap_err();
    assert!(no_key.to_string().contains("private key"), "{no_key}");
}

/// A client that opens TCP and never sends a ClientHello is dropped after
/// `header_read_timeout`.
#[tokio::test]
async fn a_silent_client_is_dropped_after_header_read_timeout() {
    let (_dir, _cert, reloader) = one_cert();
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = TlsProxy::start(&reloader, config).await;

    let started = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .expect("the proxy closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(190));
}

/// A client that completes the TLS handshake choosing `h2`, then never sends the HTTP/2
/// preface, is closed after `header_read_timeout` too. Until then it may read the proxy's
/// half of the preface (a SETTINGS frame, which a server may send first: RFC 9113 §3.4).
#[tokio::test]
async fn an_http2_client_that_never_sends_its_preface_is_closed() {
    let (_dir, cert, reloader) = one_cert();
    let period = Duration::from_millis(200);
    let config = ProxyConfig {
        header_read_timeout: period,
        ..ProxyConfig::default()
    };
    let proxy = TlsProxy::start(&reloader, config).await;

    let started = tokio::time::Instant::now();
    let mut tls = connect(proxy.addr, &[&cert], &[b"h2"]).await;
    assert_eq!(alpn(&tls), Some(&b"h2"[..]));
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 64];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the proxy closes the connection");
    assert!(started.elapsed() >= period, "{:?}", started.elapsed());
    // Frames only (9-byte headers): no HTTP/1.1 answer to a client that chose h2.
    assert!(!received.starts_with(b"HTTP/"), "{received:?}");
}

/// An upstream that speaks only HTTP/2 (h2c, prior knowledge) receives HTTP/2 from the proxy
/// when `upstream_protocol` says so; the client's own protocol does not matter.
#[tokio::test]
async fn http2_upstream_receives_http2() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = format!("{:?}", req.version());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let running = support::Running::with_config(ProxyConfig {
        upstream_protocol: UpstreamProtocol::Http2,
        ..ProxyConfig::default()
    })
    .await;
    let backend = Arc::new(cutover_proxy::Backend::new("h2c", addr));
    running
        .proxy
        .set_table(table(Some(pool("v1", &[backend])), None));

    let client = support::client();
    for _ in 0..3 {
        let a = support::get(&client, running.addr, "/", None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "HTTP/2.0");
    }
}
