//! The HTTP server: routes, bearer-token auth, and the mapping of every failure (including
//! axum's own extractor rejections) to the one JSON error format.

use crate::alerts::AlertmanagerPayload;
use crate::api::{
    check_version, ApiError, DeployRequest, HistoryQuery, LoginRequest, LogsQuery, Verb,
    VerbRequest,
};
use crate::dashboard::{self, Sessions, CSRF_HEADER};
use crate::token::TOKEN_FILE;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

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
    /// `GET /v1/events`: a subscription to the host's live feed. Each item is
    /// `{"type": "status" | "decision", "data": ...}`: a status document (as `GET /v1/status`)
    /// whenever something may have changed, and each decision as it is made. The default has no
    /// feed (404).
    fn events(&self) -> Option<broadcast::Receiver<Value>> {
        None
    }
    /// `GET /v1/history/{rollout}/replay`: a past rollout's recorded measurements and decisions
    /// (from the same recording `cutover export` writes), as chart series. The default refuses
    /// with 404.
    fn replay(&self, rollout: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        let _ = rollout;
        Box::pin(async {
            Err(ApiError::not_found(
                "rollout recordings are not available here",
            ))
        })
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
    /// The dashboard's page (`/`).
    Dashboard,
    /// One of the dashboard's embedded files.
    Asset,
    /// Exchanges the token for a dashboard session cookie.
    Login,
    /// The session's CSRF token.
    Session,
    /// Ends the dashboard session.
    Logout,
    /// The live feed, as server-sent events.
    Events,
    /// A past rollout's recorded charts and decisions.
    Replay,
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
    Route::authed(Method::Get, "/v1/events", Endpoint::Events),
    Route::authed(
        Method::Get,
        "/v1/history/{rollout}/replay",
        Endpoint::Replay,
    ),
    // The dashboard. Its page and assets hold no data (they are the same in every binary), so
    // they are open; the page logs in before it asks for anything.
    Route {
        method: Method::Get,
        path: "/",
        auth: false,
        endpoint: Endpoint::Dashboard,
    },
    Route {
        method: Method::Get,
        path: "/assets/{file}",
        auth: false,
        endpoint: Endpoint::Asset,
    },
    Route {
        method: Method::Post,
        path: "/ui/login",
        auth: false,
        endpoint: Endpoint::Login,
    },
    Route::authed(Method::Get, "/ui/session", Endpoint::Session),
    Route::authed(Method::Post, "/ui/logout", Endpoint::Logout),
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
        Endpoint::Dashboard => on(m, || async { &dashboard::INDEX }),
        Endpoint::Asset => on(m, asset),
        Endpoint::Login => on(m, login),
        Endpoint::Session => on(m, session),
        Endpoint::Logout => on(m, logout),
        Endpoint::Events => on(m, events),
        Endpoint::Replay => on(m, replay),
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
    sessions: Arc<Sessions>,
    /// Becomes `true` when the server shuts down: open event streams end.
    closing: watch::Receiver<bool>,
}

/// Serves the admin API on `listener` until `shutdown` completes, then finishes in-flight
/// requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Event streams never finish on their own: told of the shutdown, they end, so the
    // graceful shutdown does not wait for an open dashboard forever.
    let (closing_tx, closing) = watch::channel(false);
    axum::serve(listener, build(token, handler, None, closing))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        })
        .await
}

/// The admin API as a [`Router`], for embedding. `token_path`, when known, is named in the 401
/// message.
pub fn router(token: String, handler: Arc<dyn Handler>, token_path: Option<&Path>) -> Router {
    // Embedded, the router is not told of a shutdown: its event streams end with the feed.
    build(token, handler, token_path, watch::channel(false).1)
}

fn build(
    token: String,
    handler: Arc<dyn Handler>,
    token_path: Option<&Path>,
    closing: watch::Receiver<bool>,
) -> Router {
    let token_hint = match token_path {
        Some(p) => p.display().to_string(),
        None => format!("{TOKEN_FILE} in cutover's state directory"),
    };
    let state = AppState {
        handler,
        token: token.into(),
        token_hint: token_hint.into(),
        sessions: Arc::default(),
        closing,
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
        .fallback(|| async {
            ApiError::not_found("no such route: the API lives under /v1, the dashboard at /")
        })
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

/// The bearer token (the CLI, scripts, Prometheus, Alertmanager), or a dashboard session cookie;
/// with the cookie, a state change (anything but GET) must also carry the session's CSRF token.
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
        None => match dashboard::session_cookie(req.headers()) {
            Some(id) => match state.sessions.csrf(id) {
                Some(csrf) => {
                    if req.method() != axum::http::Method::GET {
                        let sent = req.headers().get(CSRF_HEADER).map(|v| v.as_bytes());
                        match sent {
                            Some(s) if constant_time_eq(s, csrf.as_bytes()) => {}
                            other => {
                                return dashboard::csrf_refused(other.is_some()).into_response()
                            }
                        }
                    }
                    next.run(req).await
                }
                None => ApiError::unauthorized(
                    "the dashboard session has ended (cutover restarted, or it expired): log in \
                     again with the admin token",
                )
                .into_response(),
            },
            None => ApiError::unauthorized(format!(
                "missing `Authorization: Bearer <token>` header: the token is in {}",
                state.token_hint
            ))
            .into_response(),
        },
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

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    match dashboard::asset(&file) {
        Some(a) => a.into_response(),
        None => ApiError::not_found(format!("no dashboard asset {file:?}")).into_response(),
    }
}

/// `POST /ui/login`: the token for a session cookie and the session's CSRF token.
async fn login(
    State(s): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(r) => return json_rejection(r).into_response(),
    };
    if !constant_time_eq(req.token.trim().as_bytes(), s.token.as_bytes()) {
        return ApiError::unauthorized(format!(
            "token: wrong admin token: use the token in {}",
            s.token_hint
        ))
        .into_response();
    }
    let (id, csrf) = s.sessions.create();
    (
        [(header::SET_COOKIE, dashboard::set_cookie(&id))],
        Json(serde_json::json!({ "csrf": csrf })),
    )
        .into_response()
}

/// `GET /ui/session`: the CSRF token of the cookie's session (`null` with the bearer token).
async fn session(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let csrf = dashboard::session_cookie(&headers).and_then(|id| s.sessions.csrf(id));
    Json(serde_json::json!({ "csrf": csrf })).into_response()
}

/// `POST /ui/logout`: ends the cookie's session.
async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = dashboard::session_cookie(&headers) {
        s.sessions.remove(id);
    }
    (
        [(header::SET_COOKIE, dashboard::clear_cookie())],
        Json(serde_json::json!({ "ok": true })),
    )
        .into_response()
}

/// One SSE event from a feed item `{"type": ..., "data": ...}`.
fn sse_event(item: &Value) -> SseEvent {
    let kind = item["type"].as_str().unwrap_or("message");
    SseEvent::default()
        .event(kind)
        .data(item["data"].to_string())
}

/// `GET /v1/events`: the current status first, then the host's feed as it comes. A subscriber
/// that falls behind gets a fresh status instead of what it missed.
async fn events(State(s): State<AppState>) -> Response {
    let Some(rx) = s.handler.events() else {
        return ApiError::not_found("live events are not available here").into_response();
    };
    let first = match s.handler.status().await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let first = serde_json::json!({"type": "status", "data": first});
    let stream = futures_util::stream::unfold(
        (Some(first), rx, s.handler.clone(), s.closing.clone()),
        |(pending, mut rx, handler, mut closing)| async move {
            if let Some(item) = pending {
                let next = (None, rx, handler, closing);
                return Some((Ok::<_, Infallible>(sse_event(&item)), next));
            }
            loop {
                let received = tokio::select! {
                    _ = closing.wait_for(|c| *c) => return None,
                    r = rx.recv() => r,
                };
                match received {
                    Ok(item) => {
                        return Some((Ok(sse_event(&item)), (None, rx, handler, closing)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Ok(v) = handler.status().await {
                            let item = serde_json::json!({"type": "status", "data": v});
                            return Some((Ok(sse_event(&item)), (None, rx, handler, closing)));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn replay(State(s): State<AppState>, UrlPath(rollout): UrlPath<String>) -> Response {
    let Ok(id) = rollout.parse::<i64>() else {
        return ApiError::invalid(format!(
            "rollout: {rollout:?} is not a rollout number: `cutover history` lists them"
        ))
        .into_response();
    };
    reply(s.handler.replay(id).await)
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
        // Only the admin API's own liveness, the dashboard's (data-free) page and assets, and
        // its login are open.
        let open: Vec<&str> = ROUTES.iter().filter(|r| !r.auth).map(|r| r.path).collect();
        assert_eq!(open, ["/healthz", "/", "/assets/{file}", "/ui/login"]);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
