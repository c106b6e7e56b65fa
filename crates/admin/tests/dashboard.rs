//! The dashboard's side of the admin API over real sockets: its page and assets, the login that
//! trades the token for an `HttpOnly; SameSite=Strict` session cookie, the CSRF token every
//! cookie-authenticated state change must carry, and the live SSE feed.

use cutover_admin::{
    serve, ApiError, BoxFuture, DeployRequest, Handler, HistoryQuery, Verb, CSRF_HEADER,
    SESSION_COOKIE,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, oneshot};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Records the verbs that reached it; feeds `events` from `feed`.
struct Fake {
    calls: Mutex<Vec<String>>,
    feed: broadcast::Sender<Value>,
}

impl Handler for Fake {
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({"service": "shop"})) })
    }
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("deploy {}", req.version));
            Ok(json!({}))
        })
    }
    fn verb(&self, verb: Verb, reason: Option<String>) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{verb} {reason:?}"));
            Ok(json!({"message": "ok"}))
        })
    }
    fn history(&self, _: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({"rollouts": []})) })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async { Ok(String::new()) })
    }
    fn events(&self) -> Option<broadcast::Receiver<Value>> {
        Some(self.feed.subscribe())
    }
}

struct Server {
    addr: SocketAddr,
    fake: Arc<Fake>,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        calls: Mutex::default(),
        feed: broadcast::channel(16).0,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, TOKEN.into(), fake.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        fake,
        _stop: stop,
    }
}

/// A response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Logs in; returns the `Cookie` header to send and the CSRF token.
async fn login(addr: SocketAddr) -> (String, String) {
    let r = raw(
        addr,
        "POST",
        "/ui/login",
        &[],
        &json!({ "token": TOKEN }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").expect("a session cookie").to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    (
        format!("cookie: {pair}"),
        r.json()["csrf"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_embedded_with_a_same_origin_policy() {
    let s = start().await;
    let page = raw(s.addr, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        page.body.contains("/assets/uPlot.iife.min.js"),
        "{}",
        page.body
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("uPlot.iife.min.js", "text/javascript"),
        ("uPlot.min.css", "text/css"),
        ("uPlot.LICENSE", "text/plain"),
    ] {
        let r = raw(s.addr, "GET", &format!("/assets/{file}"), &[], "").await;
        assert_eq!(r.status, 200, "{file}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{file}"
        );
    }
    let license = raw(s.addr, "GET", "/assets/uPlot.LICENSE", &[], "").await;
    assert!(license.body.contains("MIT License"));
    let missing = raw(s.addr, "GET", "/assets/..%2fCargo.toml", &[], "").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn login_sets_an_http_only_same_site_strict_cookie_and_refuses_a_wrong_token() {
    let s = start().await;
    let wrong = raw(
        s.addr,
        "POST",
        "/ui/login",
        &[],
        &json!({"token": "nope"}).to_string(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(
        wrong.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong admin token"),
        "{}",
        wrong.body
    );
    let unknown = raw(
        s.addr,
        "POST",
        "/ui/login",
        &[],
        &json!({"token": TOKEN, "user": "x"}).to_string(),
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);

    let r = raw(
        s.addr,
        "POST",
        "/ui/login",
        &[],
        &json!({ "token": TOKEN }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with(&format!("{SESSION_COOKIE}=")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "the token is not the session id");
    assert_eq!(r.json()["csrf"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_cookie_session_reads_freely_but_changes_state_only_with_its_csrf_token() {
    let s = start().await;
    let (cookie, csrf) = login(s.addr).await;

    let status = raw(s.addr, "GET", "/v1/status", &[&cookie], "").await;
    assert_eq!(status.status, 200, "{}", status.body);
    let session = raw(s.addr, "GET", "/ui/session", &[&cookie], "").await;
    assert_eq!(session.json()["csrf"], csrf.as_str());

    // Without the CSRF token, and with another one: refused, and the handler never hears of it.
    let missing = raw(s.addr, "POST", "/v1/pause", &[&cookie], "").await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    assert_eq!(missing.json()["error"]["code"], "forbidden");
    assert!(
        missing.body.contains("missing X-CSRF-Token"),
        "{}",
        missing.body
    );
    let other = "f".repeat(64);
    let wrong = raw(
        s.addr,
        "POST",
        "/v1/pause",
        &[&cookie, &format!("{CSRF_HEADER}: {other}")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let deploy = raw(
        s.addr,
        "POST",
        "/v1/deploy",
        &[&cookie],
        &json!({"version": "v2"}).to_string(),
    )
    .await;
    assert_eq!(deploy.status, 403);
    assert!(s.fake.calls.lock().unwrap().is_empty());

    let ok = raw(
        s.addr,
        "POST",
        "/v1/pause",
        &[&cookie, &format!("{CSRF_HEADER}: {csrf}")],
        &json!({"reason": "checking"}).to_string(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        *s.fake.calls.lock().unwrap(),
        ["pause Some(\"checking\")".to_owned()]
    );

    // Logging out ends the session: the same cookie is refused afterwards.
    let out = raw(
        s.addr,
        "POST",
        "/ui/logout",
        &[&cookie, &format!("{CSRF_HEADER}: {csrf}")],
        "",
    )
    .await;
    assert_eq!(out.status, 200);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = raw(s.addr, "GET", "/v1/status", &[&cookie], "").await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("log in again"), "{}", after.body);
}

#[tokio::test]
async fn a_forged_session_cookie_is_refused() {
    let s = start().await;
    let forged = format!("cookie: {SESSION_COOKIE}={}", "a".repeat(64));
    let r = raw(s.addr, "GET", "/v1/status", &[&forged], "").await;
    assert_eq!(r.status, 401);
    let r = raw(
        s.addr,
        "POST",
        "/v1/promote",
        &[&forged, &format!("{CSRF_HEADER}: x")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

/// Reads from `s` until `needle` has arrived (or fails after a deadline).
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s; got {seen:?}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn the_event_stream_starts_with_the_status_and_relays_the_feed() {
    let s = start().await;
    let (cookie, _) = login(s.addr).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        format!("GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n{cookie}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_until(&mut conn, &mut seen, "\"service\":\"shop\"").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: status"), "{seen}");
    // Subscribed once the first event is out: what the host publishes now arrives.
    s.fake
        .feed
        .send(json!({"type": "decision", "data": {"kind": "aborted", "reason": "p99 too high"}}))
        .unwrap();
    read_until(&mut conn, &mut seen, "p99 too high").await;
    assert!(seen.contains("event: decision"), "{seen}");

    // Without a session or token, no stream.
    let r = raw(s.addr, "GET", "/v1/events", &[], "").await;
    assert_eq!(r.status, 401);
}

/// An open dashboard does not hold up a graceful shutdown: its event stream ends.
#[tokio::test]
async fn shutting_down_ends_open_event_streams() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        calls: Mutex::default(),
        feed: broadcast::channel(16).0,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, TOKEN.into(), fake.clone(), async {
        let _ = stopped.await;
    }));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_until(&mut conn, &mut seen, "event: status").await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stopped with a dashboard connected")
        .unwrap()
        .unwrap();
    // The feed's sender is still alive: only the shutdown ended the stream.
    assert_eq!(fake.feed.receiver_count(), 0);
}
