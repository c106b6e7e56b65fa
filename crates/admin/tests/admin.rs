use cutover_admin::{
    ensure_token, serve, AdminClient, AdminError, AlertStatus, AlertmanagerPayload, ApiError,
    BoxFuture, ClientError, DeployRequest, Handler, HistoryQuery, LogsQuery, Verb,
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
    alert_payloads: Mutex<Vec<AlertmanagerPayload>>,
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
    fn logs(&self, version: String, q: LogsQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.record(format!("logs {version} {} {:?}", q.instance, q.offset));
            Ok(json!({"version": version}))
        })
    }
    fn alerts(&self, payload: AlertmanagerPayload) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            self.record(format!("alerts {}", payload.alerts.len()));
            self.alert_payloads.lock().unwrap().push(payload);
            Ok(json!({"accepted": true}))
        })
    }
}

/// A host that does not override [`Handler::alerts`]: the default must refuse.
struct NoAlerts;

impl Handler for NoAlerts {
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({})) })
    }
    fn deploy(&self, _: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({})) })
    }
    fn verb(&self, _: Verb, _: Option<String>) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({})) })
    }
    fn history(&self, _: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!([])) })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async { Ok(String::new()) })
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
        let fake = Arc::new(Fake::default());
        Self::start_with(fake.clone(), fake).await
    }

    /// Serves `handler`; `fake` is what `calls()` reads (pass a fresh one if `handler` is not it).
    async fn start_with(handler: Arc<dyn Handler>, fake: Arc<Fake>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
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
        (
            json!({"version": "v2", "secret_env": {"9X": ""}}),
            "secret_env",
        ),
        (
            json!({"version": "v2", "env": {"K": "1"}, "secret_env": {"K": "2"}}),
            "secret_env.K",
        ),
        (
            json!({"version": "v2", "commit": "abc1234"}),
            "committed_at",
        ),
        (
            json!({"version": "v2", "committed_at": "2026-12-04T10:00:00Z"}),
            "commit",
        ),
        (
            json!({"version": "v2", "commit": "not hex", "committed_at": "2026-12-04T10:00:00Z"}),
            "commit",
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
    let addr = cutover_testkit::dead_addr().await;
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

/// A notification as Alertmanager 0.25 sends it to a `webhook_config` receiver, plus fields a
/// later release (or a compatible sender) might add, which must be accepted.
const ALERTMANAGER_BODY: &str = r#"{
  "receiver": "cutover",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "CheckoutHighErrorRate",
        "service": "checkout",
        "severity": "page",
        "instance": "127.0.0.1:8080"
      },
      "annotations": {
        "summary": "checkout 5xx ratio above 2%",
        "runbook_url": "https://runbooks.example.org/checkout"
      },
      "startsAt": "2024-03-05T10:15:30.123Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=rate%28http_requests_total%5B1m%5D%29&g0.tab=1",
      "fingerprint": "a1b2c3d4e5f60718",
      "silenceURL": "http://alertmanager:9093/#/silences/new",
      "values": {"B": 0.031}
    },
    {
      "status": "resolved",
      "labels": {"alertname": "CheckoutSlow", "service": "checkout"},
      "annotations": {},
      "startsAt": "2024-03-05T10:00:00Z",
      "endsAt": "2024-03-05T10:14:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
      "fingerprint": "0f1e2d3c4b5a6978"
    }
  ],
  "groupLabels": {"service": "checkout"},
  "commonLabels": {"service": "checkout"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "version": "4",
  "groupKey": "{}/{severity=\"page\"}:{service=\"checkout\"}",
  "truncatedAlerts": 0,
  "orgId": 1,
  "someFutureField": {"nested": [1, 2, 3]}
}"#;

#[tokio::test]
async fn alertmanager_webhook_reaches_the_handler_with_labels_intact() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .authed(
            "POST",
            "/v1/alerts",
            Some("application/json"),
            ALERTMANAGER_BODY,
        )
        .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));

    let got = srv.fake.alert_payloads.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(p.version, "4");
    assert_eq!(p.status, AlertStatus::Firing);
    assert_eq!(p.receiver, "cutover");
    assert_eq!(p.group_key, "{}/{severity=\"page\"}:{service=\"checkout\"}");
    assert_eq!(p.truncated_alerts, 0);
    assert_eq!(p.external_url, "http://alertmanager:9093");
    assert_eq!(p.group_labels["service"], "checkout");
    assert_eq!(p.alerts.len(), 2);
    let a = &p.alerts[0];
    assert_eq!(a.status, AlertStatus::Firing);
    assert_eq!(
        a.labels.iter().collect::<Vec<_>>(),
        [
            (&"alertname".to_owned(), &"CheckoutHighErrorRate".to_owned()),
            (&"instance".to_owned(), &"127.0.0.1:8080".to_owned()),
            (&"service".to_owned(), &"checkout".to_owned()),
            (&"severity".to_owned(), &"page".to_owned()),
        ]
    );
    assert_eq!(a.annotations["summary"], "checkout 5xx ratio above 2%");
    assert_eq!(a.starts_at, "2024-03-05T10:15:30.123Z");
    assert_eq!(a.ends_at, "0001-01-01T00:00:00Z");
    assert!(a.generator_url.starts_with("http://prometheus:9090/graph"));
    assert_eq!(a.fingerprint, "a1b2c3d4e5f60718");
    assert_eq!(p.alerts[1].status, AlertStatus::Resolved);
    assert_eq!(p.alerts[1].ends_at, "2024-03-05T10:14:00Z");

    // `truncatedAlerts` is optional (older Alertmanagers omit it).
    let mut older: Value = serde_json::from_str(ALERTMANAGER_BODY).unwrap();
    older.as_object_mut().unwrap().remove("truncatedAlerts");
    let (status, _) = srv
        .authed(
            "POST",
            "/v1/alerts",
            Some("application/json"),
            &older.to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(srv.fake.calls(), ["alerts 2", "alerts 2"]);
}

#[tokio::test]
async fn alertmanager_webhook_requires_the_token_and_well_formed_json() {
    let srv = TestServer::start().await;
    let ct = "content-type: application/json";

    let (status, body) = srv
        .raw("POST", "/v1/alerts", &[ct], ALERTMANAGER_BODY)
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = srv
        .raw(
            "POST",
            "/v1/alerts",
            &[ct, "authorization: Bearer wrong"],
            ALERTMANAGER_BODY,
        )
        .await;
    assert_eq!(status, 401);

    let json = Some("application/json");
    let (status, body) = srv
        .authed("POST", "/v1/alerts", json, r#"{"version":"4","alerts":["#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // Well-formed JSON of the wrong shape names the field.
    let bad_status =
        ALERTMANAGER_BODY.replacen(r#""status": "firing""#, r#""status": "burning""#, 1);
    let (status, body) = srv.authed("POST", "/v1/alerts", json, &bad_status).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("status"), "{body}");

    let v5 = ALERTMANAGER_BODY.replace(r#""version": "4""#, r#""version": "5""#);
    let (status, body) = srv.authed("POST", "/v1/alerts", json, &v5).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).starts_with("version"), "{body}");

    let big = format!(
        r#"{{"version":"4","status":"firing","alerts":[],"receiver":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, _) = srv.authed("POST", "/v1/alerts", json, &big).await;
    assert_eq!(status, 413);

    assert!(srv.fake.calls().is_empty());
}

#[tokio::test]
async fn alert_webhooks_are_refused_when_the_host_does_not_handle_them() {
    let srv = TestServer::start_with(Arc::new(NoAlerts), Arc::default()).await;
    let (status, body) = srv
        .authed(
            "POST",
            "/v1/alerts",
            Some("application/json"),
            ALERTMANAGER_BODY,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(message(&body), "alert webhooks are not enabled");
}

/// `GET /v1/logs/{version}`: the version names a file on cutover's host, so anything that is
/// not a version name is refused before the handler sees it; bad query fields are 400.
#[tokio::test]
async fn logs_requests_are_checked_before_the_handler() {
    let srv = TestServer::start().await;
    let client = srv.client();
    let v = client
        .get("/v1/logs/v2?instance=1&offset=10")
        .await
        .unwrap();
    assert_eq!(v["version"], "v2");
    assert_eq!(srv.fake.calls(), ["logs v2 1 Some(10)"]);
    for bad in ["..", ".hidden", "a%2F..%2F..%2Fetc"] {
        match client.get(&format!("/v1/logs/{bad}")).await {
            Err(ClientError::Api {
                status: 422,
                message,
                ..
            }) => assert!(message.starts_with("version"), "{bad}: {message}"),
            other => panic!("{bad}: expected 422, got {other:?}"),
        }
    }
    let (status, body) = srv.authed("GET", "/v1/logs/v2?instance=-1", None, "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = srv.authed("GET", "/v1/logs/v2?follow=1", None, "").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = srv.raw("GET", "/v1/logs/v2", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(
        srv.fake.calls().len(),
        1,
        "refused requests never reach the handler"
    );
}
