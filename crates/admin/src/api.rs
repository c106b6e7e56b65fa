//! The request and error types of the admin API, and the validation done before a [`Handler`]
//! sees a request (invariant 9: bad input is refused whole, naming the field).
//!
//! [`Handler`]: crate::Handler

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// An error as the API returns it: an HTTP status and the body
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiError {
    pub status: u16,
    /// A stable machine-readable code, e.g. `"conflict"`.
    pub code: String,
    /// What went wrong and how to fix it, for a human.
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    /// 400: the request could not be parsed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    /// 401: missing or wrong bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }
    /// 404: no such route, rollout or release.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    /// 409: not possible in the current state (e.g. `resume` when nothing is paused).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    /// 422: parsed, but a field's value is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "invalid", message)
    }
    /// 500: cutover itself failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (status, Json(body)).into_response()
    }
}

/// `POST /v1/deploy`: roll out `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub version: String,
    /// Extra environment for the new version's processes.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra arguments, passed as-is (never through a shell).
    #[serde(default)]
    pub args: Vec<String>,
    /// Deploy even if this release was marked failed by an earlier abort.
    #[serde(default)]
    pub force: bool,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
    /// Secret environment for the new version's processes, never stored in clear: `""` takes
    /// the value from cutover's own environment, `"@/path"` from that file on cutover's host
    /// (read again at every start), anything else is the value itself.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    /// The commit this version was built from (4 to 64 hex digits), for `cutover report`.
    #[serde(default)]
    pub commit: Option<String>,
    /// When that commit was made, RFC 3339 (required with `commit`): `report`'s lead time.
    #[serde(default)]
    pub committed_at: Option<String>,
}

impl DeployRequest {
    /// Checks every field; the error names the first bad one and what is allowed.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_version(&self.version)?;
        for (key, value) in &self.env {
            let mut bytes = key.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ApiError::invalid(format!(
                    "env: {key:?} is not a valid variable name: use A-Z a-z 0-9 _ and do not \
                     start with a digit"
                )));
            }
            // A NUL cannot cross execve; refuse it here rather than fail at process start.
            if value.contains('\0') {
                return Err(ApiError::invalid(format!(
                    "env.{key}: the value contains a NUL byte"
                )));
            }
        }
        for (key, value) in &self.secret_env {
            let mut bytes = key.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ApiError::invalid(format!(
                    "secret_env: {key:?} is not a valid variable name: use A-Z a-z 0-9 _ and do \
                     not start with a digit"
                )));
            }
            if value.contains('\0') {
                return Err(ApiError::invalid(format!(
                    "secret_env.{key}: the value contains a NUL byte"
                )));
            }
            if self.env.contains_key(key) {
                return Err(ApiError::invalid(format!(
                    "secret_env.{key}: also in env, in clear text (fix: give it once, as a secret)"
                )));
            }
        }
        match (&self.commit, &self.committed_at) {
            (Some(c), Some(_)) => {
                if !(4..=64).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::invalid(format!(
                        "commit: {c:?} is not a commit id: use 4 to 64 hex digits (a git SHA)"
                    )));
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ApiError::invalid(
                    "committed_at: required with commit (fix: give the commit's time, RFC 3339 \
                     like 2026-12-04T10:00:00Z, e.g. from `git show -s --format=%cI SHA`)",
                ))
            }
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "commit: required with committed_at (fix: give the commit's SHA too)",
                ))
            }
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return Err(ApiError::invalid(format!(
                "args[{i}]: the argument contains a NUL byte"
            )));
        }
        Ok(())
    }
}

/// A version name as the API accepts it (it also names files: no `/`, no leading `.`).
pub fn check_version(v: &str) -> Result<(), ApiError> {
    let charset_ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if v.is_empty() || v.len() > 64 || !charset_ok || v.starts_with('.') {
        return Err(ApiError::invalid(format!(
            "version: {v:?} is not a valid version: use 1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with ."
        )));
    }
    Ok(())
}

/// `GET /v1/logs/{version}?instance=&offset=`: a slice of an instance's log file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// The instance index (`0` for `v2-0`); default 0.
    #[serde(default)]
    pub instance: u32,
    /// Return the bytes from here on (the `offset` of the previous answer, to follow the log);
    /// without it, the end of the file (at most [`LOGS_CHUNK`] bytes).
    pub offset: Option<u64>,
}

/// At most this many bytes of log per answer; a follower asks again from the new offset.
pub const LOGS_CHUNK: u64 = 256 * 1024;

/// The answer to `GET /v1/logs/{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsChunk {
    /// `v2-0`.
    pub instance: String,
    /// The log file on cutover's host.
    pub path: String,
    /// Where `text` starts in the file.
    pub from: u64,
    /// Where it ends: the `offset` to ask for next.
    pub offset: u64,
    /// The bytes `from..offset`, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Whether the instance still runs (so more may come); a follower stops once it does
    /// not and it has read everything.
    pub running: bool,
}

/// The manual verbs of DESIGN.md's rollout semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Hold at the current weight.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Skip to 100 %.
    Promote,
    /// Send everything back to stable and stop the canary.
    Abort,
    /// After promotion: send everything back to the previous version, still running.
    Rollback,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Pause,
        Verb::Resume,
        Verb::Promote,
        Verb::Abort,
        Verb::Rollback,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Promote => "promote",
            Verb::Abort => "abort",
            Verb::Rollback => "rollback",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The optional body of `POST /v1/{verb}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerbRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/history?limit=&rollout=&verify=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub limit: Option<u32>,
    pub rollout: Option<i64>,
    /// Also recompute the audit log's hash chain.
    #[serde(default)]
    pub verify: bool,
}

/// `POST /ui/login`: the admin token, exchanged for a dashboard session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub token: String,
}
