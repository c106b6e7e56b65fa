//! The HTTP server: routes, bearer-token auth, and the mapping of every failure (including
//! axum's own extractor rejections) to the one JSON error format.

use crate::alerts::AlertmanagerPayload;
use crate::api::{
    check_version, ApiError, DeployRequest, HistoryQuery, LogsQuery, Verb, VerbRequest,
};
use crate::token::TOKEN_FILE;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed `Send` future, so [`Handler`] stays object safe (`Arc<dyn Handler>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Requests bigger than this are refused with 413: no legitimate admin request comes close, and
/// the bound keeps a misbehaving client from making the host buffer without limit.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the admin API asks of the runtime. Requests arrive already authenticated and validated;
/// an `Err` is sent to the client as is.
pub trait Handler: Send + Sync + 'static {
    /// `GET /v1/status`: the current rollout, phase, weights, gates.
    fn status(&self) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// `POST /v1/deploy`.
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// `POST /v1/{pause,resume,promote,abort,rollback}`, with the operator's optional reason.
    fn verb(&self, verb: Verb, reason: Option<String>) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// `GET /v1/history`.
    fn history(&self, query: HistoryQuery) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// `GET /metrics`: Prometheus text exposition.
    fn metrics(&self) -> BoxFuture<'_, Result<String, ApiError>>;
    /// `GET /v1/logs/{version}`: a slice of one instance's log file (a [`crate::LogsChunk`]).
    /// The default refuses with 404, for hosts without instance logs.
    fn logs(&self, version: String, query: LogsQuery) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = (version, query);
        Box::pin(async { Err(ApiError::not_found("instance logs are not available here")) })
    }
    /// `POST /v1/reload`: re-read and validate the config file; apply it or refuse it whole.
    /// The default refuses with 404, for hosts without a config file to re-read.
    fn reload(&self) -> BoxFuture<'_, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::not_found("reload is not available here")) })
    }
    /// `POST /v1/alerts`: an Alertmanager webhook notification (payload version 4). The default
    /// refuses with 404, so a host that does not act on alerts needs no code and Alertmanager's
    /// logs say plainly that the receiver is not enabled.
    fn alerts(&self, payload: AlertmanagerPayload) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = payload;
        Box::pin(async { Err(ApiError::not_found("alert webhooks are not enabled")) })
    }
}

/// An HTTP method the admin API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// As on the wire: `GET`, `POST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
        }
    }
}

/// Which [`Handler`] call a route leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Liveness of the admin API itself; no handler call.
    Healthz,
    Status,
    Deploy,
    Verb(Verb),
    History,
    /// An instance's log, in chunks from an offset (`cutover logs`).
    Logs,
    Alerts,
    Metrics,
    /// Re-read the config file (`cutover reload`).
    Reload,
}

/// One route of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Whether the bearer token is required.
    pub auth: bool,
    pub endpoint: Endpoint,
}

impl Route {
    const fn authed(method: Method, path: &'static str, endpoint: Endpoint) -> Route {
        Route {
            method,
            path,
            auth: true,
            endpoint,
        }
    }
}

/// Every route the admin API serves: [`router`] is built from this table and nothing else, and
/// `docs/admin-api.yaml` (the OpenAPI reference) is tested against it in both directions
/// (`crates/admin/tests/openapi.rs`), so neither can gain a route the other lacks.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/healthz",
        auth: false,
        endpoint: Endpoint::Healthz,
    },
    Route::authed(Method::Get, "/v1/status", Endpoint::Status),
    Route::authed(Method::Post, "/v1/deploy", Endpoint::Deploy),
    Route::authed(Method::Post, "/v1/pause", Endpoint::Verb(Verb::Pause)),
    Route::authed(Method::Post, "/v1/resume", Endpoint::Verb(Verb::Resume)),
    Route::authed(Method::Post, "/v1/promote", Endpoint::Verb(Verb::Promote)),
    Route::authed(Method::Post, "/v1/abort", Endpoint::Verb(Verb::Abort)),
    Route::authed(Method::Post, "/v1/rollback", Endpoint::Verb(Verb::Rollback)),
    Route::authed(Method::Get, "/v1/history", Endpoint::History),
    Route::authed(Method::Get, "/v1/logs/{version}", Endpoint::Logs),
    Route::authed(Method::Post, "/v1/alerts", Endpoint::Alerts),
    Route::authed(Method::Post, "/v1/reload", Endpoint::Reload),
    // Prometheus scrapes this one: it needs the token too (`authorization` in the scrape
    // config), since it names versions and rollout decisions.
    Route::authed(Method::Get, "/metrics", Endpoint::Metrics),
];

/// The handler serving `endpoint` on `method`.
fn method_router(method: Method, endpoint: Endpoint) -> MethodRouter<AppState> {
    let m = method.filter();
    match endpoint {
        Endpoint::Healthz => on(m, || async { Json(serde_json::json!({"ok": true})) }),
        Endpoint::Status => on(m, status),
        Endpoint::Deploy => on(m, deploy),
        Endpoint::Verb(verb) => on(
            m,
            move |state: State<AppState>,
                  body: Result<Option<Json<VerbRequest>>, JsonRejection>| {
                verb_route(state, verb, body)
            },
        ),
        Endpoint::History => on(m, history),
        Endpoint::Logs => on(m, logs),
        Endpoint::Alerts => on(m, alerts),
        Endpoint::Metrics => on(m, metrics),
        Endpoint::Reload => on(m, |State(s): State<AppState>| async move {
            reply(s.handler.reload().await)
        }),
    }
}

#[derive(Clone)]
struct AppState {
    handler: Arc<dyn Handler>,
    token: Arc<str>,
    /// Said in the 401 message so the operator knows where to look.
    token_hint: Arc<str>,
}

/// Serves the admin API on `listener` until `shutdown` completes, then finishes in-flight
/// requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(token, handler, None))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin API as a [`Router`], for embedding. `token_path`, when known, is named in the 401
/// message.
pub fn router(token: String, handler: Arc<dyn Handler>, token_path: Option<&Path>) -> Router {
    let token_hint = match token_path {
        Some(p) => p.display().to_string(),
        None => format!("{TOKEN_FILE} in cutover's state directory"),
    };
    let state = AppState {
        handler,
        token: token.into(),
        token_hint: token_hint.into(),
    };
    let (mut public, mut authed) = (Router::new(), Router::new());
    for r in ROUTES {
        let served = method_router(r.method, r.endpoint);
        if r.auth {
            authed = authed.route(r.path, served);
        } else {
            public = public.route(r.path, served);
        }
    }
    // route_layer: auth runs only for matched routes, so an unknown path is a plain 404 rather
    // than a 401 that would suggest the path exists.
    let authed = authed.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    public
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such route: the API lives under /v1") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.trim().as_bytes(), state.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized(format!(
            "wrong bearer token: use the token in {}",
            state.token_hint
        ))
        .into_response(),
        None => ApiError::unauthorized(format!(
            "missing `Authorization: Bearer <token>` header: the token is in {}",
            state.token_hint
        ))
        .into_response(),
    }
}

/// Compares without an early exit, so response timing does not reveal how many leading bytes of
/// a guess were right. The length is not secret (tokens are always 64 hex characters).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Every JSON rejection becomes our error format. axum's message already names the field path
/// (it deserialises through `serde_path_to_error`). Unparseable and semantically wrong *shapes*
/// are both 400 here (axum would say 422 for the latter); 422 is kept for values that parse but
/// fail validation. Only an oversized body keeps its own status (413).
fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            413,
            "payload_too_large",
            format!("request body is larger than {BODY_LIMIT} bytes"),
        );
    }
    ApiError::bad_request(r.body_text())
}

fn reply(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status(State(s): State<AppState>) -> Response {
    reply(s.handler.status().await)
}

async fn deploy(
    State(s): State<AppState>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(r) => return json_rejection(r).into_response(),
    };
    if let Err(e) = req.validate() {
        return e.into_response();
    }
    reply(s.handler.deploy(req).await)
}

async fn verb_route(
    State(s): State<AppState>,
    verb: Verb,
    body: Result<Option<Json<VerbRequest>>, JsonRejection>,
) -> Response {
    // No body (no Content-Type) is fine: the reason is optional.
    let reason = match body {
        Ok(b) => b.and_then(|Json(b)| b.reason),
        Err(r) => return json_rejection(r).into_response(),
    };
    reply(s.handler.verb(verb, reason).await)
}

async fn alerts(
    State(s): State<AppState>,
    body: Result<Json<AlertmanagerPayload>, JsonRejection>,
) -> Response {
    let payload = match body {
        Ok(Json(p)) => p,
        Err(r) => return json_rejection(r).into_response(),
    };
    if let Err(e) = payload.validate() {
        return e.into_response();
    }
    reply(s.handler.alerts(payload).await)
}

async fn history(
    State(s): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => reply(s.handler.history(q).await),
        Err(r) => ApiError::bad_request(r.body_text()).into_response(),
    }
}

async fn logs(
    State(s): State<AppState>,
    UrlPath(version): UrlPath<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(r) => return ApiError::bad_request(r.body_text()).into_response(),
    };
    // The version names a file: refuse anything that is not a version name before the host
    // sees it (no `..`, no `/`).
    if let Err(e) = check_version(&version) {
        return e.into_response();
    }
    reply(s.handler.logs(version, q).await)
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.handler.metrics().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, Endpoint, Method, ROUTES};
    use crate::api::Verb;

    /// Every verb has its `POST /v1/{verb}`, and every route is listed once.
    #[test]
    fn the_route_table_has_every_verb_and_no_duplicate() {
        for verb in Verb::ALL {
            let path = format!("/v1/{verb}");
            let found: Vec<_> = ROUTES.iter().filter(|r| r.path == path).collect();
            assert_eq!(found.len(), 1, "{path}");
            assert_eq!(found[0].method, Method::Post);
            assert_eq!(found[0].endpoint, Endpoint::Verb(verb));
            assert!(found[0].auth);
        }
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{r:?} listed twice");
        }
        // Only the admin API's own liveness is open.
        let open: Vec<&str> = ROUTES.iter().filter(|r| !r.auth).map(|r| r.path).collect();
        assert_eq!(open, ["/healthz"]);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
