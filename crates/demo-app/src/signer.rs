//! The reference singleton: a signer that only acts while it holds the active role, and the
//! ledger downstream that fences stale holders. docs/handoff.md describes the protocol; this
//! is the smallest app that implements it.
//!
//! The signer (`--ledger ADDR` turns it on):
//! - At start it reads `CUTOVER_FENCING_ROLE` (`active` or `standby`) and
//!   `CUTOVER_FENCING_TOKEN` (its token when active).
//! - `POST /cutover/handoff` with `{"token": N}`: it takes the role with token N (never lowering
//!   the token it has) and answers 200. `--handoff-fail` answers 500 instead, and
//!   `--handoff-delay` answers late (to test cutover's failure paths).
//! - `POST /sign` (or `GET /sign`, for load generators): records a signature in the ledger with
//!   the token of the request's `X-Cutover-Fencing-Token` header (what cutover's proxy sends
//!   to the holder), else its own, after `--latency`. 200 with `{"version", "token"}`; 409
//!   when the ledger refused the token (a newer holder exists: the signer steps down); 503 as
//!   a standby asked directly, with no token.
//!
//! The ledger (any demo-app serves it): `POST /ledger` with `{"token": N, "by": "..."}` accepts
//! (200) unless a higher token was accepted before (409: the writer is a stale holder).
//! `GET /ledger` shows the highest token, every accepted entry in order and the rejections.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The header cutover's proxy sets on every request to the holder.
pub const FENCING_HEADER: &str = "x-cutover-fencing-token";

/// The signer's role, as cutover gave it (env at start, then the handoff call).
#[derive(Debug, Default)]
pub(crate) struct Signer {
    role: Mutex<Role>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Role {
    active: bool,
    token: u64,
}

impl Signer {
    /// From `CUTOVER_FENCING_ROLE` and `CUTOVER_FENCING_TOKEN`.
    pub(crate) fn from_env() -> Signer {
        let active = std::env::var("CUTOVER_FENCING_ROLE").is_ok_and(|r| r == "active");
        let token = std::env::var("CUTOVER_FENCING_TOKEN")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        Signer {
            role: Mutex::new(Role { active, token }),
        }
    }

    fn role(&self) -> Role {
        *self.role.lock().unwrap()
    }

    /// Takes the role with `token`; a token never goes down.
    fn take(&self, token: u64) -> Role {
        let mut r = self.role.lock().unwrap();
        r.active = true;
        r.token = r.token.max(token);
        *r
    }

    fn step_down(&self) {
        self.role.lock().unwrap().active = false;
    }
}

/// `POST /cutover/handoff {"token": N}`.
pub(crate) async fn handoff(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Some(token) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_u64())
    else {
        return (StatusCode::BAD_REQUEST, "expected {\"token\": N}\n").into_response();
    };
    if !state.cfg.handoff_delay.is_zero() {
        tokio::time::sleep(state.cfg.handoff_delay).await;
    }
    if state.cfg.handoff_fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "--handoff-fail\n").into_response();
    }
    let role = state.signer.take(token);
    eprintln!(
        "demo-app {}: took the active role with token {}",
        state.cfg.version, role.token
    );
    axum::Json(serde_json::json!({ "token": role.token })).into_response()
}

/// `POST /sign` (and `GET /sign`).
pub(crate) async fn sign(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(ledger) = state.cfg.ledger else {
        return (StatusCode::NOT_FOUND, "no --ledger: not a signer\n").into_response();
    };
    let own = state.signer.role();
    // The proxy's header is the current token of the holder it routes to; without it (a
    // request that did not come through cutover) only an active signer acts.
    let token = match headers
        .get(FENCING_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(t) => t.max(own.token),
        None if own.active => own.token,
        None => return (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response(),
    };
    // Signing takes time (`--latency`): a request in flight when the role moves writes late.
    state.inject_latency().await;
    match append(ledger, token, &state.cfg.version).await {
        Ok(StatusCode::OK) => {
            axum::Json(serde_json::json!({ "version": state.cfg.version, "token": token }))
                .into_response()
        }
        Ok(StatusCode::CONFLICT) => {
            state.signer.step_down();
            (
                StatusCode::CONFLICT,
                format!("token {token} is fenced: a newer holder exists\n"),
            )
                .into_response()
        }
        Ok(other) => (
            StatusCode::BAD_GATEWAY,
            format!("ledger answered {other}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("ledger: {e}\n")).into_response(),
    }
}

/// One `POST /ledger` on a fresh connection.
async fn append(ledger: SocketAddr, token: u64, by: &str) -> Result<StatusCode, String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(ledger)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = serde_json::json!({ "token": token, "by": by }).to_string();
        let req = hyper::Request::post("/ledger")
            .header(hyper::header::HOST, ledger.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The downstream that rejects stale holders.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    highest: u64,
    accepted: Vec<(u64, String)>,
    rejected: Vec<(u64, String)>,
}

/// `POST /ledger {"token": N, "by": "..."}`.
pub(crate) async fn ledger_append(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(token), by) = (
        v["token"].as_u64(),
        v["by"].as_str().unwrap_or("").to_string(),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"token\": N, \"by\": \"...\"}\n",
        )
            .into_response();
    };
    let mut l = state.ledger.inner.lock().unwrap();
    if token < l.highest {
        let highest = l.highest;
        l.rejected.push((token, by));
        return (
            StatusCode::CONFLICT,
            format!("token {token} is below {highest}, already accepted\n"),
        )
            .into_response();
    }
    l.highest = token;
    l.accepted.push((token, by));
    StatusCode::OK.into_response()
}

/// `GET /ledger`.
pub(crate) async fn ledger_show(State(state): State<Arc<AppState>>) -> Response {
    let l = state.ledger.inner.lock().unwrap();
    let entries = |v: &[(u64, String)]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|(t, by)| serde_json::json!({ "token": t, "by": by }))
            .collect()
    };
    axum::Json(serde_json::json!({
        "highest": l.highest,
        "accepted": entries(&l.accepted),
        "rejected": entries(&l.rejected),
    }))
    .into_response()
}
