//! The dashboard: a browser view of the admin API, served by the same listener.
//!
//! Its page and assets are embedded in the binary (nothing is fetched from elsewhere: the page
//! works offline, and its `Content-Security-Policy` forbids any other origin). A browser logs in
//! once with the admin token (`POST /ui/login`) and gets a session cookie (`HttpOnly`, so no
//! script reads it; `SameSite=Strict`, so no other site's page sends it); the token never goes
//! into a URL. Every state-changing request made with that cookie must also carry the session's
//! CSRF token in `X-CSRF-Token`, which only a page of this origin can read (`GET /ui/session`).
//! The page then talks to the same `/v1` routes as the CLI, and follows the rollout through one
//! server-sent event stream (`GET /v1/events`).

use crate::api::ApiError;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cutover_session";
/// The header carrying the session's CSRF token on every state change.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a dashboard session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many live sessions; logging in past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page (`GET /`).
pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../assets/index.html"),
};

/// Everything under `/assets/`. uPlot is vendored unmodified (`assets/uPlot.LICENSE`).
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../assets/uPlot.LICENSE"),
    },
];

/// Only this origin: no CDN, no other host, no inline script; the page cannot be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        let mut r = self.body.into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        r
    }
}

/// The asset called `name`, if one is.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// A logged-in browser.
struct Session {
    csrf: String,
    expires: Instant,
}

/// The live dashboard sessions, in memory: a restarted cutover asks the browser to log in again.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// A new session: `(session id, csrf token)`.
    pub fn create(&self) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let now = cutover_clock::monotonic();
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|s| s.expires > cutover_clock::monotonic())
            .map(|s| s.csrf.clone())
    }

    pub fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id in the request's `Cookie` header(s), if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
}

/// `Set-Cookie` for a session: `HttpOnly` (scripts cannot read it), `SameSite=Strict` (no
/// other site's page sends it), `Path=/`, and as long as the session lasts. Not `Secure`: the
/// admin listener is plain HTTP on loopback, where browsers treat the origin as secure anyway.
pub fn set_cookie(id: &str) -> HeaderValue {
    let v = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("cutover_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// 403: a cookie-authenticated state change without the session's CSRF token.
pub fn csrf_refused(present: bool) -> ApiError {
    let message = if present {
        "wrong X-CSRF-Token for this session: reload the dashboard to get the current one"
    } else {
        "missing X-CSRF-Token header: a state change made with the dashboard's session cookie \
         must carry the session's CSRF token (the dashboard sends it; use the bearer token from \
         scripts)"
    };
    ApiError::new(403, "forbidden", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_cookie_and_can_end() {
        let s = Sessions::default();
        let (id, csrf) = s.create();
        assert_eq!(s.csrf(&id), Some(csrf));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={id}; c=d")).unwrap(),
        );
        assert_eq!(session_cookie(&h), Some(id.as_str()));
        s.remove(&id);
        assert_eq!(s.csrf(&id), None);
        assert_eq!(s.csrf("not-a-session"), None);
    }

    #[test]
    fn the_session_count_is_bounded() {
        let s = Sessions::default();
        let first = s.create().0;
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert_eq!(s.csrf(&first), None, "the oldest session made room");
        assert_eq!(s.by_id.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let v = set_cookie("abc");
        let v = v.to_str().unwrap();
        assert!(v.starts_with("cutover_session=abc;"), "{v}");
        assert!(
            v.contains("; HttpOnly") && v.contains("; SameSite=Strict"),
            "{v}"
        );
    }

    #[test]
    fn every_asset_is_embedded_and_nothing_loads_from_elsewhere() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.name);
        }
        for text in [
            page,
            std::str::from_utf8(asset("app.js").unwrap().body).unwrap(),
        ] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(page.contains("/assets/uPlot.iife.min.js"));
    }
}
