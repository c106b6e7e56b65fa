//! End to end over TLS: an HTTP/2 client on one TLS connection keeps concurrent streams going
//! through a whole rollout, then sees cutover's graceful shutdown as a GOAWAY.

mod common;

use bytes::Bytes;
use common::{is_promoted, serial, Harness};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(60);
const STREAMS: usize = 8;

/// Writes a self-signed `localhost` certificate into `dir`; returns it for the client to trust.
fn write_cert(dir: &std::path::Path) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// One TLS connection offering only `h2`, speaking HTTP/2 with the `h2` crate (which reports
/// a GOAWAY as such).
async fn h2_connect(
    addr: SocketAddr,
    root: CertificateDer<'static>,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

/// What one stream ended in.
enum Outcome {
    /// A complete response: its status and `x-app-version`.
    Response(u16, String),
    /// Refused or reset by the HTTP/2 layer.
    Refused(h2::Error),
}

async fn one_stream(send: &mut h2::client::SendRequest<Bytes>, client: &str) -> Outcome {
    let exchange = async {
        let mut ready = send.clone().ready().await?;
        // One connection carries many clients: the sticky key is the header, not the peer.
        let req = http::Request::get("https://localhost/")
            .header("x-client-id", client)
            .body(())
            .unwrap();
        let (resp, _) = ready.send_request(req, true)?;
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-app-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok::<_, h2::Error>(Outcome::Response(status, version))
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Refused(e),
        Err(_) => panic!("a stream got no answer in 10 s"),
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    by_version: Mutex<std::collections::BTreeMap<String, u64>>,
    bad: Mutex<Vec<String>>,
}

/// Invariant 5 over TLS and HTTP/2: concurrent streams on one connection through v1 → v2 to
/// promotion fail zero times; at shutdown the client gets a GOAWAY: streams in flight
/// complete, later ones are refused by it, and the connection ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_rollout_has_no_failed_streams_and_shutdown_sends_goaway() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let root = write_cert(dir.path());
    let text = common::config().merge(
        "[service.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nreload_interval = \"100ms\"\n",
    );
    let h = Harness::start_in(dir, text).await;
    h.first_release("v1").await;

    let (send, conn) = h2_connect(h.running().proxy_addr, root).await;
    let tally = Arc::new(Tally::default());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (mut send, tally, shutting_down) =
                (send.clone(), tally.clone(), shutting_down.clone());
            tokio::spawn(async move {
                loop {
                    let n = tally.sent.fetch_add(1, Ordering::Relaxed);
                    match one_stream(&mut send, &format!("client-{}", n % 1000)).await {
                        Outcome::Response(200, version) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            *tally.by_version.lock().unwrap().entry(version).or_default() += 1;
                        }
                        Outcome::Response(status, version) => tally
                            .bad
                            .lock()
                            .unwrap()
                            .push(format!("{status} from {version:?}")),
                        // The only way a worker ends: refused once cutover is shutting down.
                        Outcome::Refused(e) if shutting_down.load(Ordering::SeqCst) => return e,
                        Outcome::Refused(e) => tally.bad.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    drop(send);
    h.wait_for("streams flowing", LONG, |_| {
        tally.ok.load(Ordering::Relaxed) > 50
    })
    .await;

    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 promoted", LONG, is_promoted).await;
    let at_promotion = tally.ok.load(Ordering::Relaxed);
    h.wait_for("streams after promotion", LONG, |_| {
        tally.ok.load(Ordering::Relaxed) > at_promotion + 50
    })
    .await;
    assert!(
        tally.bad.lock().unwrap().is_empty(),
        "failed streams: {:?}",
        tally.bad.lock().unwrap()
    );
    {
        let by_version = tally.by_version.lock().unwrap();
        assert!(
            by_version.get("v1").is_some_and(|n| *n > 0),
            "{by_version:?}"
        );
        assert!(
            by_version.get("v2").is_some_and(|n| *n > 0),
            "{by_version:?}"
        );
    }

    // Graceful shutdown while the streams keep coming.
    shutting_down.store(true, Ordering::SeqCst);
    let stopping = tokio::spawn(h.shutdown());
    for w in workers {
        let err = tokio::time::timeout(LONG, w)
            .await
            .expect("each stream loop ends at the GOAWAY")
            .unwrap();
        assert!(
            err.is_go_away() && err.is_remote() && err.reason() == Some(h2::Reason::NO_ERROR),
            "a stream was refused by something else than a graceful GOAWAY: {err:?}"
        );
    }
    // Streams already in flight when the GOAWAY came completed with 200s: nothing else failed.
    assert!(
        tally.bad.lock().unwrap().is_empty(),
        "streams failed at shutdown: {:?}",
        tally.bad.lock().unwrap()
    );
    let ended = tokio::time::timeout(LONG, conn)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(ended.is_ok(), "the connection ended uncleanly: {ended:?}");
    tokio::time::timeout(LONG, stopping)
        .await
        .expect("cutover stops")
        .unwrap();
}

/// A certificate that does not load stops the start with an error naming the field; an empty
/// path is a config error.
#[tokio::test]
async fn a_missing_certificate_is_a_start_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config()
        .merge("[service.tls]\ncert = \"missing.pem\"\nkey = \"key.pem\"\n")
        .build();
    let loaded = cutover_host::config::Loaded {
        config,
        path: dir.path().join("cutover.toml"),
        dir: dir.path().to_path_buf(),
    };
    let err = cutover_host::start(loaded)
        .await
        .err()
        .expect("start fails");
    let msg = err.to_string();
    assert!(
        msg.contains("service.tls.cert") && msg.contains("missing.pem"),
        "{msg}"
    );

    let empty = common::config()
        .merge("[service.tls]\ncert = \"\"\nkey = \"key.pem\"\n")
        .to_toml();
    let err = cutover_core::spec::Config::from_toml_str(&empty).unwrap_err();
    assert!(err.to_string().contains("service.tls.cert"), "{err}");
}
