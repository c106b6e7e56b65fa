//! `docs/admin-api.yaml` (the OpenAPI reference) against the server: the same paths, methods and
//! authentication as [`ROUTES`] (from which the router is built), in both directions, and a
//! live server that answers each documented operation, refuses it without the token when the
//! document says the token is needed, and refuses the methods the document does not list.

use cutover_admin::{
    serve, AlertmanagerPayload, ApiError, BoxFuture, DeployRequest, Handler, HistoryQuery,
    LogsQuery, Verb, ROUTES,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The operations of an OpenAPI path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/admin-api.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Whether a list of security requirements asks for the bearer token: OpenAPI accepts any one
/// entry of the list, so an empty list, or an empty entry (`{}`), means none is needed.
fn requires_token(security: &Value) -> bool {
    let list = security.as_array().expect("security is a list");
    !list.is_empty()
        && list.iter().all(|req| {
            req.as_object()
                .is_some_and(|o| o.contains_key("bearer") || o.contains_key("session"))
        })
}

/// One operation: method (upper case), path, whether it needs the token.
type Op = (String, String, bool);

/// Every operation the document lists.
fn documented(doc: &Value) -> BTreeSet<Op> {
    let default = doc.get("security").is_some_and(requires_token);
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is a map");
        for (key, op) in item {
            if !METHODS.contains(&key.as_str()) {
                continue;
            }
            let auth = op.get("security").map_or(default, requires_token);
            ops.insert((key.to_ascii_uppercase(), path.clone(), auth));
        }
    }
    ops
}

/// Every operation the server serves.
fn served() -> BTreeSet<Op> {
    ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned(), r.auth))
        .collect()
}

#[test]
fn the_document_lists_exactly_the_servers_routes() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let (documented, served) = (documented(&doc), served());
    let undocumented: Vec<&Op> = served.difference(&documented).collect();
    let unserved: Vec<&Op> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/admin-api.yaml (or with other auth): {undocumented:?}\n\
         in docs/admin-api.yaml but not served (or with other auth): {unserved:?}"
    );
    // What the issue named: Prometheus's scrape target needs the token.
    assert!(documented.contains(&("GET".into(), "/metrics".into(), true)));
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("{reference}: only local references are used"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} points at nothing"))
}

fn each_ref<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r);
            }
            m.values().for_each(|v| each_ref(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| each_ref(v, out)),
        _ => {}
    }
}

/// Every reference resolves; every operation has an id, a 2xx answer and — when it needs the
/// token — its 401, and every error answer is the one error shape.
#[test]
fn every_operation_documents_its_answers_and_every_reference_resolves() {
    let doc = document();
    let mut refs = Vec::new();
    each_ref(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        resolve(&doc, r);
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut ids = BTreeSet::new();
    for (method, path, auth) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let what = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no operationId"));
        assert!(
            ids.insert(id.to_owned()),
            "{what}: operationId {id} used twice"
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(
            responses.keys().any(|k| k.starts_with('2')),
            "{what}: no 2xx"
        );
        // The login route needs no token to be asked, but refuses a wrong one in its body.
        assert_eq!(
            responses.contains_key("401"),
            auth || path == "/ui/login",
            "{what}: 401 documented iff the token is needed"
        );
        for (code, response) in responses {
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(&doc, r),
                None => response,
            };
            assert!(
                response["description"].is_string(),
                "{what} {code}: no description"
            );
            if code.starts_with('4') || code.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"], error,
                    "{what} {code}: not the error shape"
                );
            }
        }
    }
}

/// Answers everything with success, so that a live request's status shows only routing and
/// authentication.
struct Ok200;

impl Handler for Ok200 {
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
        Box::pin(async { Ok(json!({"rollouts": []})) })
    }
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>> {
        Box::pin(async { Ok("cutover_up 1\n".to_owned()) })
    }
    fn alerts(&self, _: AlertmanagerPayload) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({"matched": [], "ignored": []})) })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async {
            Ok(
                json!({"message": "reloaded: nothing changed", "changes": [],
                      "waits_for_next_rollout": false}),
            )
        })
    }
    fn logs(&self, _: String, _: LogsQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async {
            Ok(
                json!({"instance": "v2-0", "path": "v2-0.log", "from": 0, "offset": 0,
                      "text": "", "running": true}),
            )
        })
    }
    /// A feed that has already ended: the stream sends the status and closes, so a raw
    /// `Connection: close` exchange completes.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<Value>> {
        Some(tokio::sync::broadcast::channel(1).1)
    }
    fn replay(&self, _: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Ok(json!({"rollout": 1, "points": [], "decisions": [], "summary": {}})) })
    }
}

/// One raw HTTP/1.1 exchange: the status and the body.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: bool,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    if token {
        req.push_str(&format!("authorization: Bearer {TOKEN}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

/// A body each documented request body accepts.
fn body_for(path: &str) -> &'static str {
    match path {
        "/ui/login" => concat!(
            r#"{"token": ""#,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            r#""}"#
        ),
        "/v1/deploy" => r#"{"version": "v2"}"#,
        "/v1/alerts" => r#"{"version": "4", "status": "firing", "alerts": []}"#,
        _ => "",
    }
}

/// A templated path with a valid value for its parameter.
fn concrete(path: &str) -> String {
    path.replace("{version}", "v2")
        .replace("{rollout}", "1")
        .replace("{file}", "app.js")
}

#[tokio::test]
async fn the_live_server_answers_each_documented_operation_as_documented() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, TOKEN.into(), Arc::new(Ok200), async {
        let _ = stopped.await;
    }));
    let ops = documented(&document());
    for (method, path, auth) in &ops {
        let body = body_for(path);
        // A templated path is asked with a valid value for its parameter.
        let path = &concrete(path);
        let (status, text) = exchange(addr, method, path, false, body).await;
        let expected = if *auth { 401 } else { 200 };
        assert_eq!(
            status, expected,
            "{method} {path} without the token: {text}"
        );
        let (status, text) = exchange(addr, method, path, true, body).await;
        assert_eq!(status, 200, "{method} {path} with the token: {text}");
    }
    // A method the document does not list on a path it does is refused.
    for path in ops.iter().map(|(_, p, _)| p).collect::<BTreeSet<_>>() {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            if ops.iter().any(|(m, p, _)| m == method && p == path) {
                continue;
            }
            let (status, text) = exchange(addr, method, &concrete(path), true, "").await;
            assert_eq!(status, 405, "{method} {path}: {text}");
        }
    }
}
