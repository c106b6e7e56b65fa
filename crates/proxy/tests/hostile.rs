//! Hostile and malformed clients, and shutdown under load: raw bytes on real sockets against a
//! real proxy in front of an upstream that records everything it receives, so each test can
//! assert what did — and did not — reach the app.

mod support;

use bytes::Bytes;
use cutover_proxy::ProxyConfig;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upstream answers immediately unless a test wants it slow.
const FAST: Duration = Duration::ZERO;

/// The proxy still answers a well-formed request (no panic took the server down), and that
/// request is the only thing the upstream has seen.
async fn assert_alive_and_untouched(px: &Running, up: &RecordingUpstream) {
    assert!(!px.done.is_finished(), "the proxy stopped serving");
    let (raw, _) = raw_exchange(
        px.addr,
        b"GET /alive HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        seen,
        ["/alive"],
        "only the well-formed request reached the upstream"
    );
}

/// Sends `bytes` and expects the proxy to answer `status` itself and close the connection.
async fn rejected(px: &Running, bytes: &[u8], status: u16, what: &str) {
    let (raw, end) = raw_exchange(px.addr, bytes).await;
    assert_eq!(
        status_of(&raw),
        Some(status),
        "{what}: got {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    assert_ne!(
        end,
        End::Open,
        "{what}: connection left open after a parse error"
    );
}

fn header_block(n: usize, value_len: usize) -> Vec<u8> {
    let mut req = b"GET /big HTTP/1.1\r\nHost: app\r\n".to_vec();
    let value = "a".repeat(value_len);
    for i in 0..n {
        req.extend_from_slice(format!("x-filler-{i}: {value}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

// ---------------------------------------------------------------------------------------------
// 1. Oversized request heads.

/// 100 KB of request head — in one header, or spread over ten — is refused with 431 by the
/// proxy's own HTTP parser (`ProxyConfig::max_header_bytes`, 64 KiB by default); as are more
/// than hyper's 100 header lines. Nothing reaches the upstream.
#[tokio::test]
async fn oversized_request_head_is_431_and_never_forwarded() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    rejected(&px, &header_block(1, 100 * 1024), 431, "one 100 KB header").await;
    rejected(&px, &header_block(10, 10 * 1024), 431, "ten 10 KB headers").await;
    rejected(&px, &header_block(200, 8), 431, "200 header lines").await;
    // A large but acceptable head still goes through (the limit is not absurdly low).
    let (raw, _) = raw_exchange(
        px.addr,
        &header_block(4, 8 * 1024).replace_last_crlf_with_close(),
    )
    .await;
    assert_eq!(status_of(&raw), Some(200), "a 32 KB head is accepted");
    assert_eq!(up.seen().len(), 1);
    up.seen.lock().unwrap().clear();
    assert_alive_and_untouched(&px, &up).await;
}

trait CloseAfter {
    fn replace_last_crlf_with_close(self) -> Vec<u8>;
}

impl CloseAfter for Vec<u8> {
    /// Adds `Connection: close` to a raw request head ending in `\r\n\r\n`.
    fn replace_last_crlf_with_close(mut self) -> Vec<u8> {
        self.truncate(self.len() - 2);
        self.extend_from_slice(b"Connection: close\r\n\r\n");
        self
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Invalid chunked encoding.

/// A chunked body whose very first chunk size is not hex. hyper parses the head fine and hands
/// the request to the proxy, which starts forwarding it; the error surfaces only when the body
/// is read. Pinned: the upstream never sees a complete body (at most a head followed by an
/// aborted body), and the client gets no 2xx — today a 502, then the connection is closed.
#[tokio::test]
async fn invalid_chunk_size_never_reaches_the_upstream_complete() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    for (what, req) in [
        (
            "bad first chunk size",
            &b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "bad size after a good chunk",
            &b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"[..],
        ),
        (
            "chunk longer than announced",
            &b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"[..],
        ),
    ] {
        let (raw, end) = raw_exchange(px.addr, req).await;
        let status = status_of(&raw);
        // Observed: 502 from the proxy (the upstream request failed because the client's
        // body did), then the connection closes. 400 is what it should be (see the ignored
        // test below); either way never a success.
        assert!(
            matches!(status, Some(400 | 502)),
            "{what}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        assert_ne!(end, End::Open, "{what}: connection left open");
    }
    // Whether the head reached the upstream before the body failed is a race (and the
    // upstream may see it after the client got its 502): whatever arrived must have ended in
    // a failed body, never a complete request.
    let (raw, _) = raw_exchange(
        px.addr,
        b"GET /alive HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), Some(200));
    eventually("the upstream to finish reading every body it got", || {
        up.seen().iter().all(|s| s.body.is_some())
    })
    .await;
    for s in up.seen().iter().filter(|s| s.path != "/alive") {
        assert_eq!(s.path, "/chunked");
        assert!(
            matches!(s.body, Some(Err(_))),
            "the upstream saw a complete request: {s:?}"
        );
    }
}

/// A client whose own body is malformed is not the app's failure: 400, and not counted as an
/// error of the version the client is routed to — otherwise a client (hostile, or merely
/// dropping mid-upload) could inflate a canary's error rate and get a rollout aborted.
#[tokio::test]
async fn client_body_errors_are_not_the_versions_errors() {
    let (px, _up) = recorded(ProxyConfig::default(), FAST).await;
    let (raw, _) = raw_exchange(
        px.addr,
        b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), Some(400));
    let w = px.recorder.window("v1", Duration::from_secs(60));
    assert_eq!(
        w.errors, 0,
        "a client's malformed body counted against the version"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Request smuggling.

/// `Content-Length` *and* `Transfer-Encoding: chunked`: hyper does not reject this (RFC 9112
/// §6.1 allows either rejecting or proceeding); it lets chunked win, drops the
/// `Content-Length`, and closes the connection after the response. Pinned: the upstream gets
/// exactly one request, framed by the chunks only, the bytes after the chunked body (a
/// would-be smuggled second request) are never parsed as a request, and the client connection
/// is closed.
#[tokio::test]
async fn content_length_with_chunked_uses_chunked_and_closes() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    // CL.TE: a CL-trusting hop would forward 4 bytes; TE.CL: a TE-trusting one, the chunks.
    let req = b"POST /cl-te HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let (raw, end) = raw_exchange(px.addr, req).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), Some(200), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_ne!(end, End::Open);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/cl-te");
    assert!(seen[0].headers.get("content-length").is_none(), "{seen:?}");
    assert_eq!(seen[0].body, Some(Ok(Bytes::from_static(b"hello"))));
    up.seen.lock().unwrap().clear();

    // Same with the headers the other way round.
    let req = b"POST /te-cl HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let (raw, _) = raw_exchange(px.addr, req).await;
    assert_eq!(status_of(&raw), Some(200));
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body, Some(Ok(Bytes::from_static(b"hello"))));
    up.seen.lock().unwrap().clear();
    assert_alive_and_untouched(&px, &up).await;
}

/// Conflicting duplicate `Content-Length` → 400; an unparsable one → 400; a duplicate with
/// the same value is accepted and forwarded as a single `Content-Length`.
#[tokio::test]
async fn conflicting_content_lengths_are_400() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    rejected(
        &px,
        b"POST /dup HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
        "two different Content-Length headers",
    )
    .await;
    rejected(
        &px,
        b"POST /dup HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
        "a Content-Length list with different values",
    )
    .await;
    rejected(
        &px,
        b"POST /neg HTTP/1.1\r\nHost: app\r\nContent-Length: -1\r\n\r\n",
        400,
        "a negative Content-Length",
    )
    .await;
    rejected(
        &px,
        b"POST /plus HTTP/1.1\r\nHost: app\r\nContent-Length: +5\r\n\r\nhello",
        400,
        "a signed Content-Length",
    )
    .await;
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    let (raw, _) = raw_exchange(
        px.addr,
        b"POST /same HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&raw), Some(200));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get_all("content-length").iter().count(),
        1,
        "{seen:?}"
    );
    assert_eq!(seen[0].body, Some(Ok(Bytes::from_static(b"hello"))));
    up.seen.lock().unwrap().clear();
    assert_alive_and_untouched(&px, &up).await;
}

/// `Transfer-Encoding` edge cases as hyper handles them: a request is chunked iff `chunked` is
/// the last coding of the last `Transfer-Encoding` line; any other request with
/// `Transfer-Encoding` is 400 (its length cannot be known), as is `Transfer-Encoding` on
/// HTTP/1.0.
///
/// Documented, not asserted as desirable: for `gzip, chunked` the proxy forwards the de-chunked
/// bytes (still gzip-coded) with its own `transfer-encoding: chunked` only — the `gzip`
/// transfer-coding is dropped with the other hop-by-hop headers. No smuggling results (one
/// request, chunk-framed), but the app gets coded bytes without being told.
#[tokio::test]
async fn transfer_encoding_edge_cases() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    for (what, req) in [
        (
            "chunked is not last",
            &b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "only gzip",
            &b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\nhello"[..],
        ),
        (
            "chunked then gzip on separate lines",
            &b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "misspelt chunked",
            &b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "chunked on HTTP/1.0",
            &b"POST /te HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "space before the colon",
            &b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
    ] {
        rejected(&px, req, 400, what).await;
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    for (what, req) in [
        (
            "gzip, chunked",
            &b"POST /gz HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "gzip then chunked on separate lines",
            &b"POST /gz HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        (
            "CHUNKED in capitals",
            &b"POST /gz HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
    ] {
        let (raw, _) = raw_exchange(px.addr, req).await;
        assert_eq!(status_of(&raw), Some(200), "{what}");
        let seen = up.seen();
        assert_eq!(seen.len(), 1, "{what}: {seen:?}");
        assert_eq!(seen[0].body, Some(Ok(Bytes::from_static(b"hello"))), "{what}");
        let te: Vec<_> = seen[0].headers.get_all("transfer-encoding").iter().collect();
        assert_eq!(te, ["chunked"], "{what}: the upstream hop is framed by the proxy");
        up.seen.lock().unwrap().clear();
    }
    assert_alive_and_untouched(&px, &up).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Slowloris.

const HEAD_TIMEOUT: Duration = Duration::from_millis(200);

fn slow_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: HEAD_TIMEOUT,
        ..ProxyConfig::default()
    }
}

/// Waits for the proxy to close `stream`, at most five header timeouts; returns how long it
/// took. `drip` bytes are written every 50 ms meanwhile (writes failing once it is closed).
async fn closed_within(stream: TcpStream, drip: Option<&'static [u8]>) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let dripping = tokio::spawn(async move {
        if let Some(drip) = drip {
            while wr.write_all(drip).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            // Keep the write half open: dropping it would send FIN.
            std::future::pending::<()>().await;
        }
    });
    let bound = HEAD_TIMEOUT * 5;
    let read = tokio::time::timeout(bound, read_to_end(&mut rd)).await;
    dripping.abort();
    let (got, end) = read.unwrap_or_else(|_| panic!("connection still open after {bound:?}"));
    assert_ne!(end, End::Open);
    (started.elapsed(), got)
}

/// A client that sends a request line and then one header line every 50 ms, never finishing
/// its head, is disconnected after `header_read_timeout` (hyper sends no response, it just
/// closes), however much it keeps trickling. Nothing reaches the upstream.
#[tokio::test]
async fn slowloris_head_is_cut_off_after_header_read_timeout() {
    let (px, up) = recorded(slow_config(), FAST).await;
    let mut stream = TcpStream::connect(px.addr).await.unwrap();
    stream
        .write_all(b"GET /slowloris HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    let (took, got) = closed_within(stream, Some(b"x-drip: 1\r\n")).await;
    assert!(
        took >= HEAD_TIMEOUT - Duration::from_millis(20),
        "closed after {took:?}"
    );
    assert!(
        got.is_empty() || status_of(&got).is_some_and(|s| s >= 400),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_alive_and_untouched(&px, &up).await;
}

/// A connection that sends nothing at all is closed after `header_read_timeout` too, as is
/// one that sends only the first bytes of the HTTP/2 preface (both are still in the
/// HTTP/1-or-2 detection, before hyper's HTTP/1 header timer exists).
#[tokio::test]
async fn silent_and_half_preface_connections_are_closed() {
    let (px, up) = recorded(slow_config(), FAST).await;
    let silent = TcpStream::connect(px.addr).await.unwrap();
    let mut half = TcpStream::connect(px.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (a, b) = tokio::join!(closed_within(silent, None), closed_within(half, None));
    for (what, (took, got)) in [("silent", a), ("half preface", b)] {
        assert!(got.is_empty(), "{what}: {got:?}");
        assert!(
            took >= HEAD_TIMEOUT - Duration::from_millis(20),
            "{what}: {took:?}"
        );
    }
    assert_alive_and_untouched(&px, &up).await;
}

/// An idle keep-alive connection is closed after `header_read_timeout` once its request was
/// answered (hyper re-arms the timer for the next head).
#[tokio::test]
async fn idle_keep_alive_is_closed_after_header_read_timeout() {
    let (px, up) = recorded(slow_config(), FAST).await;
    let stream = TcpStream::connect(px.addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    wr.write_all(b"GET /alive HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut rd = BufReader::new(rd);
    let resp = read_response(&mut rd).await.unwrap();
    assert_eq!(resp.status, 200);
    let started = Instant::now();
    let (_, end) = tokio::time::timeout(HEAD_TIMEOUT * 5, read_to_end(&mut rd))
        .await
        .expect("idle connection closed in time");
    assert_eq!(end, End::Eof);
    assert!(started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(20));
    drop(wr);
    up.seen.lock().unwrap().clear();
    assert_alive_and_untouched(&px, &up).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Bad request lines.

/// Request lines hyper cannot parse — a method with non-token bytes, no method, an invalid or
/// control-character URI, an unknown HTTP version, a header with a NUL — are 400 and never
/// reach the upstream. (A long method made of valid token characters is legal syntax: it is
/// forwarded and the app decides; see `long_extension_method_is_forwarded`.)
#[tokio::test]
async fn malformed_request_lines_are_400() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    for (what, req) in [
        (
            "method with '<'",
            &b"G<T / HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        (
            "method with NUL",
            &b"\0GET / HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        (
            "method with UTF-8",
            "GÉT / HTTP/1.1\r\nHost: app\r\n\r\n".as_bytes(),
        ),
        ("no method", &b" / HTTP/1.1\r\nHost: app\r\n\r\n"[..]),
        (
            "DEL in the URI",
            &b"GET /a\x7fb HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        (
            "control char URI",
            &b"GET /\x01 HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        (
            "space in the URI",
            &b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        (
            "broken authority",
            &b"GET http://[::1/ HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        ),
        ("HTTP/9.9", &b"GET / HTTP/9.9\r\nHost: app\r\n\r\n"[..]),
        ("no version", &b"GET /\r\nHost: app\r\n\r\n"[..]),
        (
            "NUL in a header",
            &b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\0b\r\n\r\n"[..],
        ),
        (
            "header without colon",
            &b"GET / HTTP/1.1\r\nHost: app\r\nX-A\r\n\r\n"[..],
        ),
    ] {
        rejected(&px, req, 400, what).await;
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_alive_and_untouched(&px, &up).await;
}

/// A 2 000-character method of token characters is syntactically valid HTTP: the proxy
/// forwards it unchanged rather than judging it.
#[tokio::test]
async fn long_extension_method_is_forwarded() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    let method = "X".repeat(2_000);
    let req = format!("{method} /m HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    let (raw, _) = raw_exchange(px.addr, req.as_bytes()).await;
    assert_eq!(status_of(&raw), Some(200));
    assert_eq!(up.seen()[0].method, method);
}

// ---------------------------------------------------------------------------------------------
// 6. Shutdown under load.

/// 24 keep-alive HTTP/1.1 clients each get one answer (keep-alive), then send a second
/// request that the upstream holds. With all 24 held, shutdown is asked for: new connections
/// are refused at once; once released, every held request completes with its full response,
/// marked `connection: close`, after which the proxy closes the connection cleanly (FIN, not
/// RST); `serve` reports `Drained`.
///
/// History: while the proxy served from the caller's multi-threaded runtime with a shared
/// upstream client, about 1 run in 25 with both cores saturated saw a reset instead of this
/// clean close, and the test was parked. Since the proxy serves from its own worker threads
/// it has passed 210 runs alone and 30 runs of the whole file, both cores saturated by two
/// `yes` processes; the cause of the earlier resets was not pinned down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_in_flight_http1_requests() {
    const CLIENTS: usize = 24;
    let (mut px, up) = recorded(ProxyConfig::default(), Duration::from_millis(20)).await;
    let addr = px.addr;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            wr.write_all(format!("GET /fast/{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let first = read_response(&mut rd).await.expect("first response");
            wr.write_all(format!("GET /hold/{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let second = read_response(&mut rd).await;
            let (_, end) = read_to_end(&mut rd).await;
            drop(wr);
            (first, second, end)
        }));
    }
    eventually("every client's second request to be held upstream", || {
        up.seen()
            .iter()
            .filter(|s| s.path.starts_with("/hold"))
            .count()
            == CLIENTS
    })
    .await;

    px.shutdown();
    // While the listener closes, a connect may be reset rather than refused.
    cutover_testkit::eventually(
        DEADLINE,
        "new connections refused after shutdown",
        || async move {
            match TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| e.kind())
            {
                Err(std::io::ErrorKind::ConnectionRefused) => Ok(()),
                other => Err(format!("connect: {other:?}")),
            }
        },
    )
    .await;
    assert!(
        !px.done.is_finished(),
        "serve returned with requests in flight"
    );

    up.release();
    for (i, c) in clients.into_iter().enumerate() {
        let (first, second, end) = c.await.unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body, format!("ok /fast/{i}").as_bytes());
        assert_eq!(
            first.header("connection"),
            None,
            "keep-alive before shutdown"
        );
        let second = second.unwrap_or_else(|e| panic!("client {i}: held request lost: {e}"));
        assert_eq!(second.status, 200);
        assert_eq!(second.body, format!("ok /hold/{i}").as_bytes());
        assert_eq!(second.header("connection"), Some("close"), "client {i}");
        assert_eq!(
            end,
            End::Eof,
            "client {i}: connection reset instead of closed"
        );
    }
    let outcome = tokio::time::timeout(DEADLINE, &mut px.done)
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert_eq!(outcome, cutover_proxy::ShutdownOutcome::Drained);
    assert_eq!(up.seen().len(), CLIENTS * 2);
}

/// Shutdown serves what already arrived (nginx-like): 48 idle keep-alive connections (one
/// answer each) and 8 accepted connections that have sent nothing yet; shutdown begins (new
/// connections are refused); only then does each send a request. Every one is answered in
/// full, marked `connection: close`, and the connection then closed cleanly (FIN, no reset).
/// With no grace (`shutdown_idle_grace = 0`, the behaviour before) these requests found their
/// connections closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_serves_requests_arriving_on_idle_keep_alive_connections() {
    const IDLE: usize = 48;
    const FRESH: usize = 8;
    let config = ProxyConfig {
        // Generous, so that a loaded machine sends every request well within it.
        shutdown_idle_grace: Duration::from_secs(5),
        ..ProxyConfig::default()
    };
    let (mut px, up) = recorded(config, Duration::from_millis(1)).await;
    let addr = px.addr;
    let mut conns = Vec::new();
    for i in 0..IDLE {
        let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(format!("GET /fast/a{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let first = read_response(&mut rd).await.expect("first response");
        assert_eq!(first.status, 200);
        assert_eq!(
            first.header("connection"),
            None,
            "keep-alive before shutdown"
        );
        conns.push((rd, wr));
    }
    for _ in 0..FRESH {
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        conns.push((BufReader::new(rd), wr));
    }
    // Accepted by the proxy, not just waiting in the backlog (which closes with the listener).
    eventually("every connection accepted", || {
        px.proxy.connections_by_worker().iter().sum::<usize>() == IDLE + FRESH
    })
    .await;

    px.shutdown();
    tokio::time::timeout(DEADLINE, async {
        while TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| e.kind())
            != Err(std::io::ErrorKind::ConnectionRefused)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("new connections refused after shutdown");

    let mut clients = Vec::new();
    for (i, (mut rd, mut wr)) in conns.into_iter().enumerate() {
        clients.push(tokio::spawn(async move {
            let sent = wr
                .write_all(format!("GET /fast/b{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
                .await;
            let second = read_response(&mut rd).await;
            let (_, end) = read_to_end(&mut rd).await;
            drop(wr);
            (sent.is_ok(), second, end)
        }));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let (sent, second, end) = c.await.unwrap();
        assert!(
            sent,
            "connection {i}: closed before the request was written"
        );
        let second =
            second.unwrap_or_else(|e| panic!("connection {i}: request after shutdown lost: {e}"));
        assert_eq!(second.status, 200, "connection {i}");
        assert_eq!(second.body, format!("ok /fast/b{i}").as_bytes());
        assert_eq!(second.header("connection"), Some("close"), "connection {i}");
        assert_eq!(end, End::Eof, "connection {i}: reset instead of closed");
    }
    let outcome = tokio::time::timeout(DEADLINE, &mut px.done)
        .await
        .expect("serve returns once every connection closed")
        .unwrap();
    assert_eq!(outcome, cutover_proxy::ShutdownOutcome::Drained);
    assert_eq!(up.seen().len(), IDLE * 2 + FRESH);
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// HTTP/2 with prior knowledge: eight streams held upstream on one connection, then shutdown.
/// The proxy sends GOAWAY — observed as the client's connection task ending `Ok` and refusing
/// new streams — every in-flight stream still completes with its full response, and `serve`
/// then reports `Drained` (the server side of the connection closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_completes_http2_streams() {
    const STREAMS: usize = 8;
    let (mut px, up) = recorded(ProxyConfig::default(), FAST).await;
    let addr = px.addr;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);

    let mut in_flight = Vec::new();
    for i in 0..STREAMS {
        let mut sender = sender.clone();
        in_flight.push(tokio::spawn(async move {
            h2_get(&mut sender, addr, &format!("/hold/h2-{i}")).await
        }));
    }
    eventually("every stream held upstream", || up.seen().len() == STREAMS).await;

    px.shutdown();
    // GOAWAY: new streams on this connection are refused (a stream opened before the proxy
    // sent it is served normally, hence the loop).
    cutover_testkit::eventually(DEADLINE, "the client saw GOAWAY", || {
        let mut probe = sender.clone();
        async move {
            if probe.ready().await.is_ok() && h2_get(&mut probe, addr, "/late").await.is_ok() {
                Err("a new stream was still served")
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "a held stream ended before its response"
    );

    up.release();
    for (i, t) in in_flight.into_iter().enumerate() {
        let (status, body) = t.await.unwrap().expect("in-flight stream completes");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("ok /hold/h2-{i}"));
    }
    // With every stream done, the connection ends cleanly (a GOAWAY, not a reset). When
    // hyper's client task notices the GOAWAY relative to the held streams is its own
    // business, so it is only checked once they completed.
    let goaway = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the client connection ends after GOAWAY")
        .unwrap();
    assert!(
        goaway.is_ok(),
        "connection failed instead of going away: {goaway:?}"
    );
    let outcome = tokio::time::timeout(DEADLINE, &mut px.done)
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert_eq!(outcome, cutover_proxy::ShutdownOutcome::Drained);
}

// ---------------------------------------------------------------------------------------------
// 7. Closing without a reset.

/// After the proxy closes a connection (here after a `connection: close` response), what the
/// client still sends is read and discarded until the client closes too — 16 MiB, far more
/// than the socket buffers hold, so only a reader on the other end gets it all through.
/// Closing the socket at once would answer those bytes with a reset, which can destroy the
/// response in the client's buffer before it is read (RFC 9112 §9.6). A client that does not
/// close is let go after `linger_timeout`.
#[tokio::test]
async fn a_closed_connection_lingers_for_the_clients_late_bytes() {
    // Long enough for 16 MiB to get through on a loaded machine, short for a test.
    const LINGER: Duration = Duration::from_secs(2);
    let config = ProxyConfig {
        linger_timeout: LINGER,
        ..ProxyConfig::default()
    };
    let (px, up) = recorded(config, FAST).await;
    let started = Instant::now();
    let stream = TcpStream::connect(px.addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"GET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut rd).await.expect("the response");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok /last"[..]));
    let (_, end) = read_to_end(&mut rd).await;
    assert_eq!(end, End::Eof, "the proxy closes its side");

    // Late bytes, as from a client that pipelined before it saw the close.
    let late = vec![b'x'; 16 << 20];
    tokio::time::timeout(DEADLINE, wr.write_all(&late))
        .await
        .expect("the proxy reads what comes after its close")
        .expect("no reset: the proxy reads what comes after its close");
    // The client keeps the connection open: the proxy closes after `linger_timeout`, and the
    // next bytes are then refused.
    tokio::time::timeout(DEADLINE, async {
        while wr.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the proxy lets go of a client that never closes");
    assert!(started.elapsed() >= LINGER, "{:?}", started.elapsed());
    assert_eq!(up.seen().len(), 1, "the late bytes are never parsed");
}

// ---------------------------------------------------------------------------------------------
// 8. Idle HTTP/2 connections.

/// hyper has no idle timer for HTTP/2, so the proxy keeps one: a connection on which no stream
/// was open, started or ended for `header_read_timeout` gets a GOAWAY and ends cleanly. A
/// stream held open for several such periods is not idleness: its connection is left alone,
/// still takes new streams, and the held stream completes.
#[tokio::test]
async fn idle_http2_connections_go_away_but_open_streams_are_kept() {
    let (px, up) = recorded(slow_config(), FAST).await;
    let addr = px.addr;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);

    let mut held = sender.clone();
    let held = tokio::spawn(async move { h2_get(&mut held, addr, "/hold/long").await });
    eventually("the stream to be held upstream", || up.seen().len() == 1).await;
    // Three idle periods with the stream open: nothing may happen to the connection.
    tokio::time::sleep(HEAD_TIMEOUT * 3).await;
    assert!(
        !conn.is_finished(),
        "a connection with an open stream was closed"
    );
    assert_eq!(
        h2_get(&mut sender, addr, "/fast").await.unwrap().0,
        StatusCode::OK
    );
    // The held stream cannot end before this: the connection's last activity comes after.
    let before_last_activity = Instant::now();
    up.release();
    let (status, body) = held.await.unwrap().expect("the held stream completes");
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"ok /hold/long"[..])
    );

    let ended = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap();
    assert!(ended.is_ok(), "a GOAWAY, not a reset: {ended:?}");
    assert!(
        before_last_activity.elapsed() >= HEAD_TIMEOUT,
        "closed {:?} after its last stream",
        before_last_activity.elapsed()
    );
    assert!(!px.done.is_finished(), "the proxy stopped serving");
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/hold/long", "/fast"]);
}
