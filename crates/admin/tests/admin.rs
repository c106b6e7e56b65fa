use cutover_admin::{
    ensure_token, serve, AdminClient, AdminError, ApiError, BoxFuture, ClientError, DeployRequest,
    Handler, HistoryQuery, Verb,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Records what reached the handler, so tests can check that refused requests never did.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Handler for Fake {
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({"phase": "Progressing", "weight": 4.0})) })
    }
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            if req.version == "busy" {
                return Err(ApiError::conflict("a rollout is already in progress"));
            }
            self.record(format!("deploy {}", req.version));
            Ok(json!({"rollout": 1, "version": req.version, "env": req.env}))
        })
    }
    fn verb(&self, verb: Verb, reason: Option<String>) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.record(format!("{verb} {reason:?}"));
            Ok(json!({"verb": verb, "reason": reason}))
        })
    }
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move { Ok(serde_json::to_value(q).unwrap()) })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async { Ok("cutover_up 1\n".to_owned()) })
    }
}

/// A running server; dropping it shuts the server down.
struct TestServer {
    addr: SocketAddr,
    fake: Arc<Fake>,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let handler: Arc<dyn Handler> = fake.clone();
        tokio::spawn(serve(listener, TOKEN.into(), handler, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            fake,
            _stop: stop,
        }
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(self.addr, TOKEN.into())
    }

    /// A raw HTTP/1.1 exchange, for requests the client would never send.
    async fn raw(&self, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Value) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let json =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
        (status, json)
    }

    async fn authed(
        &self,
        method: &str,
        path: &str,
        ctype: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let auth = format!("authorization: Bearer {TOKEN}");
        let ct = ctype.map(|c| format!("content-type: {c}"));
        let mut headers = vec![auth.as_str()];
        headers.extend(ct.as_deref());
        self.raw(method, path, &headers, body).await
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().expect("JSON error body")
}

#[tokio::test]
async fn auth_is_required_except_for_healthz() {
    let srv = TestServer::start().await;
    let (status, body) = srv.raw("GET", "/v1/status", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(message(&body).contains("admin.token"), "{body}");

    let (status, body) = srv
        .raw("POST", "/v1/abort", &["authorization: Bearer nope"], "")
        .await;
    assert_eq!(status, 401);
    assert!(message(&body).contains("wrong bearer token"), "{body}");

    let (status, _) = srv.raw("GET", "/metrics", &[], "").await;
    assert_eq!(status, 401);

    let (status, body) = srv.raw("GET", "/healthz", &[], "").await;
    assert_eq!((status, body), (200, json!({"ok": true})));

    let err = AdminClient::new(srv.addr, "wrong".into())
        .get("/v1/status")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 401, .. }), "{err}");
    // Nothing unauthenticated reached the handler.
    assert!(srv.fake.calls().is_empty());
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400_naming_the_field() {
    let srv = TestServer::start().await;
    let json = Some("application/json");

    let (status, body) = srv
        .authed("POST", "/v1/deploy", json, "{\"version\": ")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    let (status, body) = srv
        .authed(
            "POST",
            "/v1/deploy",
            json,
            r#"{"version":"v2","forse":true}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("forse"), "{body}");

    let (status, body) = srv
        .authed(
            "POST",
            "/v1/deploy",
            json,
            r#"{"version":"v2","env":{"A":1}}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("env.A"), "{body}");

    let (status, body) = srv.authed("POST", "/v1/deploy", json, "{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("version"), "{body}");

    let (status, body) = srv
        .authed(
            "POST",
            "/v1/deploy",
            Some("text/plain"),
            r#"{"version":"v2"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("Content-Type"), "{body}");

    let (status, body) = srv
        .authed("POST", "/v1/pause", json, r#"{"reson":"typo"}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("reson"), "{body}");

    let (status, body) = srv.authed("GET", "/v1/history?limit=lots", None, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("limit"), "{body}");

    let big = format!(r#"{{"version":"v2","reason":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, body) = srv.authed("POST", "/v1/deploy", json, &big).await;
    assert_eq!(status, 413, "{body}");

    assert!(srv.fake.calls().is_empty());
}

#[tokio::test]
async fn invalid_values_are_422_naming_the_field() {
    let srv = TestServer::start().await;
    let client = srv.client();
    let cases = [
        (json!({"version": ""}), "version"),
        (json!({"version": "v2; rm -rf /"}), "version"),
        (json!({"version": "x".repeat(65)}), "version"),
        (json!({"version": "v2", "env": {"1BAD": "x"}}), "env"),
        (json!({"version": "v2", "env": {"A-B": "x"}}), "env"),
        (
            json!({"version": "v2", "args": ["ok", "nul\u{0}"]}),
            "args[1]",
        ),
    ];
    for (body, field) in cases {
        match client.post("/v1/deploy", &body).await {
            Err(ClientError::Api {
                status: 422,
                message,
                ..
            }) => assert!(message.starts_with(field), "{body}: {message}"),
            other => panic!("{body}: expected 422, got {other:?}"),
        }
    }
    assert!(srv.fake.calls().is_empty());
}

#[tokio::test]
async fn client_round_trips() {
    let srv = TestServer::start().await;
    let client = srv.client();

    assert_eq!(
        client.get("/v1/status").await.unwrap()["phase"],
        "Progressing"
    );

    let out = client
        .post(
            "/v1/deploy",
            &json!({"version": "v2.1_rc-1", "env": {"RUST_LOG": "debug"}, "force": true}),
        )
        .await
        .unwrap();
    assert_eq!(out["env"]["RUST_LOG"], "debug");

    let out = client
        .post("/v1/rollback", &json!({"reason": "p99 regression"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"verb": "rollback", "reason": "p99 regression"}));
    client.post("/v1/promote", &json!({})).await.unwrap();
    // A verb without any body (e.g. `curl -X POST`) is fine too.
    let (status, _) = srv.authed("POST", "/v1/resume", None, "").await;
    assert_eq!(status, 200);

    let q = client
        .get("/v1/history?limit=5&rollout=3&verify=true")
        .await
        .unwrap();
    assert_eq!(q, json!({"limit": 5, "rollout": 3, "verify": true}));
    let q = client.get("/v1/history").await.unwrap();
    assert_eq!(q, json!({"limit": null, "rollout": null, "verify": false}));

    assert_eq!(client.get_text("/metrics").await.unwrap(), "cutover_up 1\n");

    let err = client
        .post("/v1/deploy", &json!({"version": "busy"}))
        .await
        .unwrap_err();
    match err {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!((status, code.as_str()), (409, "conflict"));
            assert_eq!(message, "a rollout is already in progress");
        }
        other => panic!("expected 409, got {other:?}"),
    }

    let err = client.get("/v1/nope").await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 404, .. }), "{err}");
    let (status, body) = srv.raw("GET", "/nope", &[], "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = srv.authed("GET", "/v1/deploy", None, "").await;
    assert_eq!(status, 405);

    assert_eq!(
        srv.fake.calls(),
        [
            "deploy v2.1_rc-1",
            "rollback Some(\"p99 regression\")",
            "promote None",
            "resume None"
        ]
    );
}

#[tokio::test]
async fn client_says_when_cutover_is_not_running() {
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let err = AdminClient::new(addr, TOKEN.into())
        .get("/v1/status")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "cannot reach cutover's admin API at {addr}: is `cutover run` running?"
        )),
        "{msg}"
    );
}

#[test]
fn token_is_created_0600_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = ensure_token(&state).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let path = state.join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ensure_token(&state).unwrap(), token);

    let other = tempfile::tempdir().unwrap();
    assert_ne!(ensure_token(other.path()).unwrap(), token);
}

#[test]
fn insecure_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ensure_token(dir.path()).unwrap();
    let path = dir.path().join("admin.token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ensure_token(dir.path()).unwrap_err();
    assert!(
        matches!(err, AdminError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("chmod 600 {}", path.display())),
        "{err}"
    );
}

#[test]
fn empty_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.token");
    std::fs::write(&path, "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = ensure_token(dir.path()).unwrap_err();
    assert!(matches!(err, AdminError::EmptyToken { .. }), "{err}");
}
