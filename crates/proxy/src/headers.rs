//! Header handling: hop-by-hop stripping, `X-Forwarded-*`, upgrade detection, sticky keys.
//!
//! Hop-by-hop headers describe one connection (client↔proxy or proxy↔backend) and must not be
//! forwarded (RFC 9110 §7.6.1); hyper re-derives framing (`Transfer-Encoding`,
//! `Content-Length`) for each side itself.

use cutover_core::spec::{StickyFallback, StickySpec};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

/// Always hop-by-hop, whatever `Connection` says.
// Header names, not strings: removing by `&str` would parse the name on every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether the message asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Whether `Upgrade` names the WebSocket protocol (RFC 6455 §4.1, case-insensitive).
pub(crate) fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers. With `keep_upgrade`, the `Upgrade` header survives and
/// `Connection` is reduced to `upgrade`, which is what carries a protocol switch across hops.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The usual request has none: one pass over its few names instead of a lookup per
    // hop-by-hop name.
    if !keep_upgrade && !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's address as an `X-Forwarded-For` entry; computed once per connection.
pub(crate) fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    // An IP is always a valid header value; the fallback only avoids a panic path.
    HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The `X-Forwarded-*` fields a request leaves with: the client appended to `X-Forwarded-For`,
/// `X-Forwarded-Proto: http`, and, unless the client already sent one, `X-Forwarded-Host` from
/// the host it asked for.
pub(crate) struct Forwarded<'a> {
    /// The client, from [`forwarded_for`].
    pub(crate) client: &'a HeaderValue,
    pub(crate) host: Option<&'a HeaderValue>,
}

impl Forwarded<'_> {
    /// Whether the client's own field `name` gives way to one of [`Forwarded::fields`].
    pub(crate) fn replaces(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO
    }

    /// Which of the fields the client sent itself: `X-Forwarded-For`, `X-Forwarded-Host`.
    pub(crate) fn sent(name: &HeaderName) -> (bool, bool) {
        (name == X_FORWARDED_FOR, name == X_FORWARDED_HOST)
    }

    /// The fields to send along with the client's `headers` (less those it
    /// [replaces](Forwarded::replaces)); `sent` is [`Forwarded::sent`] over all of them.
    pub(crate) fn fields(
        &self,
        headers: &HeaderMap,
        (sent_chain, sent_host): (bool, bool),
    ) -> [(&'static HeaderName, Option<HeaderValue>); 3] {
        let chain = if sent_chain {
            let mut joined = String::new();
            for v in headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                joined.push_str(v);
                joined.push_str(", ");
            }
            joined.push_str(self.client.to_str().unwrap_or("unknown"));
            // Values that were valid, commas and an IP: always valid; kept total all the same.
            HeaderValue::from_str(&joined).unwrap_or_else(|_| self.client.clone())
        } else {
            self.client.clone()
        };
        let host = if sent_host { None } else { self.host.cloned() };
        [
            (&X_FORWARDED_FOR, Some(chain)),
            (&X_FORWARDED_PROTO, Some(HeaderValue::from_static("http"))),
            (&X_FORWARDED_HOST, host),
        ]
    }
}

/// Puts the [`Forwarded`] fields into `headers`, for a request hyper's clients send (HTTP/2,
/// upgrades); the worker's HTTP/1.1 connections write them out directly instead (`h1`).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, forwarded: &Forwarded<'_>) {
    let sent = (
        headers.contains_key(&X_FORWARDED_FOR),
        headers.contains_key(&X_FORWARDED_HOST),
    );
    let fields = forwarded.fields(headers, sent);
    // Room for the three at once, rather than growing the map for each.
    headers.reserve(fields.len());
    for (name, value) in fields {
        if let Some(value) = value {
            // Replaces every prior value of the name.
            headers.insert(name, value);
        }
    }
}

/// A client's sticky key: bytes of the request itself, or the fallback's few bytes, held
/// without a heap allocation per request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StickyKey<'a> {
    Borrowed(&'a [u8]),
    /// An IP address (4 or 16 bytes) or a random number (8), and how many bytes are used.
    Inline([u8; 16], usize),
}

impl StickyKey<'_> {
    fn inline(bytes: &[u8]) -> Self {
        let mut buf = [0u8; 16];
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        StickyKey::Inline(buf, n)
    }
}

impl std::ops::Deref for StickyKey<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            StickyKey::Borrowed(b) => b,
            StickyKey::Inline(buf, n) => &buf[..*n],
        }
    }
}

/// The sticky client key: the configured header, else the configured query parameter (in
/// `query`, the request URI's query string), else the configured cookie, else the fallback.
pub(crate) fn sticky_key<'a>(
    spec: &StickySpec,
    header_name: Option<&HeaderName>,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    peer: SocketAddr,
) -> StickyKey<'a> {
    if let Some(v) = header_name.and_then(|n| headers.get(n)) {
        if !v.as_bytes().is_empty() {
            return StickyKey::Borrowed(v.as_bytes());
        }
    }
    if let (Some(name), Some(query)) = (spec.query.as_deref(), query) {
        if let Some(v) = query_param(query, name) {
            return StickyKey::Borrowed(v.as_bytes());
        }
    }
    if let Some(name) = spec.cookie.as_deref() {
        if let Some(v) = cookie(headers, name) {
            return StickyKey::Borrowed(v.as_bytes());
        }
    }
    match spec.fallback {
        StickyFallback::PeerIp => match peer.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => StickyKey::inline(&ip.octets()),
            std::net::IpAddr::V6(ip) => StickyKey::inline(&ip.octets()),
        },
        StickyFallback::Random => StickyKey::inline(&rand::random::<u64>().to_le_bytes()),
    }
}

/// The first non-empty value of parameter `name` in a query string (`a=1&client=abc`), taken
/// verbatim (not percent-decoded: the key only has to be the same each time, not readable).
/// A parameter without `=` or with an empty value does not count.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("x-keep", "yes"),
        ]);
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, map(&[("x-keep", "yes")]));
    }

    #[test]
    fn upgrade_keeps_upgrade_and_normalises_connection() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h,
            map(&[
                ("upgrade", "websocket"),
                ("sec-websocket-key", "abc"),
                ("connection", "upgrade"),
            ])
        );
    }

    #[test]
    fn forwarded_headers_append_and_respect_existing_host() {
        let peer: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        add_forwarded(
            &mut h,
            &Forwarded {
                client: &forwarded_for(peer),
                host: Some(&host),
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");

        let mut h = map(&[("x-forwarded-host", "orig.example")]);
        let v6: SocketAddr = "[::ffff:10.0.0.8]:1".parse().unwrap();
        add_forwarded(
            &mut h,
            &Forwarded {
                client: &forwarded_for(v6),
                host: Some(&host),
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.8");
        assert_eq!(h["x-forwarded-host"], "orig.example");

        // Blank prior entries add nothing, not a leading comma.
        let mut h = map(&[("x-forwarded-for", " "), ("x-forwarded-proto", "https")]);
        add_forwarded(
            &mut h,
            &Forwarded {
                client: &forwarded_for(peer),
                host: None,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn sticky_key_order_is_header_cookie_fallback() {
        let spec = StickySpec {
            header: Some("x-client-id".into()),
            query: None,
            cookie: Some("sid".into()),
            fallback: StickyFallback::PeerIp,
        };
        let name = HeaderName::from_static("x-client-id");
        let peer: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let both = map(&[("x-client-id", "h"), ("cookie", "a=1; sid=c")]);
        assert_eq!(*sticky_key(&spec, Some(&name), &both, None, peer), *b"h");
        let cookie_only = map(&[("cookie", "a=1"), ("cookie", "sid=\"c\"; b=2")]);
        assert_eq!(
            *sticky_key(&spec, Some(&name), &cookie_only, None, peer),
            *b"c"
        );
        let empty = map(&[("x-client-id", ""), ("cookie", "sid=")]);
        assert_eq!(
            *sticky_key(&spec, Some(&name), &empty, None, peer),
            [192, 0, 2, 1]
        );
        let random = StickySpec {
            fallback: StickyFallback::Random,
            ..spec
        };
        let (none, none2) = (HeaderMap::new(), HeaderMap::new());
        let a = sticky_key(&random, None, &none, None, peer);
        let b = sticky_key(&random, None, &none2, None, peer);
        assert_eq!(a.len(), 8);
        assert_ne!(*a, *b);
    }

    #[test]
    fn sticky_query_parameter_sits_between_header_and_cookie() {
        let spec = StickySpec {
            header: Some("x-client-id".into()),
            query: Some("client".into()),
            cookie: Some("sid".into()),
            fallback: StickyFallback::PeerIp,
        };
        let name = HeaderName::from_static("x-client-id");
        let peer: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let key =
            |h: &HeaderMap, q: Option<&str>| sticky_key(&spec, Some(&name), h, q, peer).to_vec();
        let cookie = map(&[("cookie", "sid=c")]);
        let none = HeaderMap::new();
        // The header wins over the query, the query over the cookie.
        let header = map(&[("x-client-id", "h"), ("cookie", "sid=c")]);
        assert_eq!(key(&header, Some("client=q")), b"h");
        assert_eq!(key(&cookie, Some("client=abc")), b"abc");
        assert_eq!(key(&cookie, Some("a=1&client=abc&b=2")), b"abc");
        assert_eq!(key(&none, Some("client=abc&client=def")), b"abc");
        // Missing values, bare names and other parameters fall through to the cookie.
        for q in [
            "",
            "client",
            "client=",
            "client&a=1",
            "xclient=1",
            "a=client",
            "&&",
        ] {
            assert_eq!(key(&cookie, Some(q)), b"c", "query {q:?}");
        }
        assert_eq!(key(&none, Some("client=&client=z")), b"z");
        assert_eq!(key(&cookie, None), b"c");
        assert_eq!(key(&none, Some("client")), vec![192, 0, 2, 1]);
    }
}
