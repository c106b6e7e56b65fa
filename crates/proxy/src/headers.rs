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
/// RFC 7239's `Forwarded`.
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// nginx's `X-Real-IP`: a client's address that apps (and nginx's realip module) believe.
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The client's address as an `X-Forwarded-For` entry; computed once per connection.
pub(crate) fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    // An IP is always a valid header value; the fallback only avoids a panic path.
    HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Which of the forwarding fields a request came with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    chain: bool,
    host: bool,
    proto: bool,
}

impl Sent {
    /// Notes `name` if it is one of the forwarding fields.
    pub(crate) fn note(&mut self, name: &HeaderName) {
        self.chain |= name == X_FORWARDED_FOR;
        self.host |= name == X_FORWARDED_HOST;
        self.proto |= name == X_FORWARDED_PROTO;
    }

    fn of(headers: &HeaderMap) -> Sent {
        Sent {
            chain: headers.contains_key(&X_FORWARDED_FOR),
            host: headers.contains_key(&X_FORWARDED_HOST),
            proto: headers.contains_key(&X_FORWARDED_PROTO),
        }
    }
}

/// The `X-Forwarded-*` fields a request leaves with.
///
/// From a peer in `service.trusted_proxies` (a load balancer in front of cutover) what it
/// says is kept: the peer is appended to its `X-Forwarded-For`, its `X-Forwarded-Host`,
/// `X-Forwarded-Proto` and `Forwarded` pass unchanged (and are filled in from this hop when
/// absent). From any other peer they are not to be believed: `X-Forwarded-For` is the peer,
/// `X-Forwarded-Host` the host it asked for, `X-Forwarded-Proto` the scheme it used, whatever
/// it sent, and its `Forwarded` and `X-Real-IP` are dropped (cutover writes neither: an app
/// that reads them would otherwise take the client's word for its address).
pub(crate) struct Forwarded<'a> {
    /// The client, from [`forwarded_for`].
    pub(crate) client: &'a HeaderValue,
    pub(crate) host: Option<&'a HeaderValue>,
    /// The scheme the client connected with: `http` or `https`.
    pub(crate) proto: &'a HeaderValue,
    /// Whether the peer is a trusted proxy; decided once per connection.
    pub(crate) trusted: bool,
}

impl Forwarded<'_> {
    /// Whether the client's own field `name` gives way to one of [`Forwarded::fields`] (or,
    /// for an untrusted peer's `Forwarded`, is dropped).
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || (!self.trusted
                && (name == X_FORWARDED_PROTO
                    || name == X_FORWARDED_HOST
                    || name == FORWARDED
                    || name == X_REAL_IP))
    }

    /// The fields to send along with the client's `headers` (less those it
    /// [replaces](Forwarded::replaces)); `sent` is [`Sent::note`] over all of them.
    pub(crate) fn fields(
        &self,
        headers: &HeaderMap,
        sent: Sent,
    ) -> [(&'static HeaderName, Option<HeaderValue>); 3] {
        // Only a trusted peer's chain is extended: the untrusted default allocates nothing.
        let chain = if self.trusted && sent.chain {
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
        let keep = |sent: bool| self.trusted && sent;
        let host = if keep(sent.host) {
            None
        } else {
            self.host.cloned()
        };
        let proto = (!keep(sent.proto)).then(|| self.proto.clone());
        [
            (&X_FORWARDED_FOR, Some(chain)),
            (&X_FORWARDED_PROTO, proto),
            (&X_FORWARDED_HOST, host),
        ]
    }
}

/// Puts the [`Forwarded`] fields into `headers`, for a request hyper's clients send (HTTP/2,
/// upgrades); the worker's HTTP/1.1 connections write them out directly instead (`h1`).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, forwarded: &Forwarded<'_>) {
    let fields = forwarded.fields(headers, Sent::of(headers));
    if !forwarded.trusted {
        for name in [
            &X_FORWARDED_HOST,
            &X_FORWARDED_PROTO,
            &FORWARDED,
            &X_REAL_IP,
        ] {
            headers.remove(name);
        }
    }
    // Room for the three at once, rather than growing the map for each.
    headers.reserve(fields.len());
    for (name, value) in fields {
        if let Some(value) = value {
            // Replaces every prior value of the name.
            headers.insert(name, value);
        }
    }
}

/// Why a request's host is refused with 400 (RFC 9112 §3.2, RFC 9113 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`, or an HTTP/2 one without `:authority` or `Host`.
    Missing,
    /// More than one `Host` field line.
    Several,
    /// A `Host` (or a target's authority) that is not `host[:port]`.
    Invalid,
    /// HTTP/2: `Host` and `:authority` name different hosts.
    Conflict,
}

impl HostError {
    /// Every reason, in the order of [`HostError::index`].
    pub(crate) const ALL: [HostError; 4] = [
        HostError::Missing,
        HostError::Several,
        HostError::Invalid,
        HostError::Conflict,
    ];

    /// Its place in [`HostError::ALL`] (and in the proxy's counters).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Its `reason` label on `/metrics`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            HostError::Missing => "no_host",
            HostError::Several => "several_hosts",
            HostError::Invalid => "invalid_host",
            HostError::Conflict => "host_authority_conflict",
        }
    }

    /// What the client is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            HostError::Missing => "bad request: the request has no Host header\n",
            HostError::Several => "bad request: the request has more than one Host header\n",
            HostError::Invalid => "bad request: the Host header is not a valid host[:port]\n",
            HostError::Conflict => {
                "bad request: the Host header and :authority name different hosts\n"
            }
        }
    }

    /// For the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            HostError::Missing => "no Host",
            HostError::Several => "several Host fields",
            HostError::Invalid => "invalid Host",
            HostError::Conflict => "Host differs from :authority",
        }
    }
}

/// The host a request is for, checked as RFC 9112 §3.2 and RFC 9113 §8.3.1 ask:
///
/// - more than one `Host` field line, or one that is not `host[:port]`: refused, whatever the
///   version;
/// - a target with an authority (HTTP/1.1's absolute form, HTTP/2's `:authority`): that
///   authority, which replaces `Host` (§3.2.2); on HTTP/2 a `Host` that names another host is
///   refused (§8.3.1 calls such a request malformed);
/// - otherwise `Host`; an HTTP/1.1 request without one is refused, and so is an HTTP/2 request
///   with neither `Host` nor `:authority` (there is no host to route or forward it to); an
///   HTTP/1.0 request may name none (`Ok(None)`).
///
/// `Ok((host, from_target))`: `from_target` when the host came from the request target, so the
/// request's `Host` must be set to it.
pub(crate) fn request_host(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Option<(HeaderValue, bool)>, HostError> {
    let mut fields = headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(HostError::Several);
    }
    if let Some(v) = field {
        if !valid_host(v.as_bytes()) {
            return Err(HostError::Invalid);
        }
    }
    if let Some(authority) = uri.authority() {
        let a = authority.as_str();
        if !valid_host(a.as_bytes()) {
            return Err(HostError::Invalid);
        }
        if version == http::Version::HTTP_11 && field.is_none() {
            // §3.2: "A client MUST send a Host header field in all HTTP/1.1 request messages",
            // absolute form or not.
            return Err(HostError::Missing);
        }
        if version >= http::Version::HTTP_2 {
            if let Some(v) = field {
                if !v.as_bytes().eq_ignore_ascii_case(a.as_bytes()) {
                    return Err(HostError::Conflict);
                }
                return Ok(Some((v.clone(), false)));
            }
        }
        let value = HeaderValue::from_str(a).map_err(|_| HostError::Invalid)?;
        return Ok(Some((value, true)));
    }
    match field {
        Some(v) => Ok(Some((v.clone(), false))),
        None if version <= http::Version::HTTP_10 => Ok(None),
        None => Err(HostError::Missing),
    }
}

/// Whether `b` is `uri-host [ ":" port ]` (RFC 9110 §7.2): a registered name (unreserved,
/// percent-encoded and sub-delimiter characters), an IPv4 address, or an IPv6 address in
/// brackets; the port digits only. No userinfo (`user@host`), no whitespace. Not empty: the
/// grammar allows an empty name, but an `http` URI with an empty host is invalid (RFC 9110
/// §4.2.1), and that is the only kind of resource cutover serves.
fn valid_host(b: &[u8]) -> bool {
    let port = if let Some(rest) = b.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        &rest[end + 1..]
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        let (name, port) = b.split_at(end);
        if name.is_empty() {
            return false;
        }
        let mut i = 0;
        while i < name.len() {
            match name[i] {
                b'%' => {
                    let hex = |j: usize| name.get(j).is_some_and(u8::is_ascii_hexdigit);
                    if !(hex(i + 1) && hex(i + 2)) {
                        return false;
                    }
                    i += 3;
                    continue;
                }
                c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => {}
                _ => return false,
            }
            i += 1;
        }
        port
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
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

    fn forwarded<'a>(
        client: &'a HeaderValue,
        host: Option<&'a HeaderValue>,
        trusted: bool,
    ) -> Forwarded<'a> {
        static HTTP: HeaderValue = HeaderValue::from_static("http");
        Forwarded {
            client,
            host,
            proto: &HTTP,
            trusted,
        }
    }

    #[test]
    fn a_trusted_proxys_forwarded_headers_are_extended_and_kept() {
        let peer: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("forwarded", "for=1.1.1.1;proto=https"),
            ("x-real-ip", "1.1.1.1"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        let client = forwarded_for(peer);
        add_forwarded(&mut h, &forwarded(&client, Some(&host), true));
        assert_eq!(h["x-real-ip"], "1.1.1.1", "a trusted proxy's word is kept");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["forwarded"], "for=1.1.1.1;proto=https");

        let mut h = map(&[
            ("x-forwarded-host", "orig.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let v6: SocketAddr = "[::ffff:10.0.0.8]:1".parse().unwrap();
        let client = forwarded_for(v6);
        add_forwarded(&mut h, &forwarded(&client, Some(&host), true));
        assert_eq!(h["x-forwarded-for"], "10.0.0.8");
        assert_eq!(h["x-forwarded-host"], "orig.example");
        assert_eq!(h["x-forwarded-proto"], "https");

        // Blank prior entries add nothing, not a leading comma.
        let mut h = map(&[("x-forwarded-for", " ")]);
        let client = forwarded_for(peer);
        add_forwarded(&mut h, &forwarded(&client, None, true));
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn an_untrusted_clients_forwarded_headers_are_replaced_or_dropped() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let client = forwarded_for(peer);
        let host = HeaderValue::from_static("shop.example");
        let sent = [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1;proto=https"),
            ("x-real-ip", "1.1.1.1"),
            ("x-app", "kept"),
        ];
        let mut h = map(&sent);
        add_forwarded(&mut h, &forwarded(&client, Some(&host), false));
        assert_eq!(
            h,
            map(&[
                ("x-app", "kept"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "shop.example"),
            ])
        );
        // No host to name (HTTP/1.0 without `Host`): the client's is dropped all the same.
        let mut h = map(&sent);
        add_forwarded(&mut h, &forwarded(&client, None, false));
        assert!(!h.contains_key("x-forwarded-host"), "{h:?}");
        assert!(!h.contains_key("forwarded"), "{h:?}");
        // What the HTTP/1.1 writer skips and writes instead: the same.
        let f = forwarded(&client, Some(&host), false);
        let h = map(&sent);
        let mut noted = Sent::default();
        h.keys().for_each(|k| noted.note(k));
        let kept: Vec<&str> = h
            .keys()
            .filter(|k| !f.replaces(k))
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(kept, ["x-app"]);
        let written: Vec<(&str, Option<HeaderValue>)> = f
            .fields(&h, noted)
            .into_iter()
            .map(|(n, v)| (n.as_str(), v))
            .collect();
        assert_eq!(
            written,
            [
                ("x-forwarded-for", Some(client.clone())),
                ("x-forwarded-proto", Some(HeaderValue::from_static("http"))),
                ("x-forwarded-host", Some(host.clone())),
            ]
        );
    }

    #[test]
    fn the_host_rule_of_rfc_9112_and_9113() {
        use http::Version;
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let host = |version, target: &str, fields: &[(&str, &str)]| {
            request_host(version, &uri(target), &map(fields))
                .map(|h| h.map(|(v, from_target)| (v.to_str().unwrap().to_owned(), from_target)))
        };
        let ok = |v: &str, from_target| Ok(Some((v.to_owned(), from_target)));
        let v11 = Version::HTTP_11;
        assert_eq!(host(v11, "/", &[("host", "shop")]), ok("shop", false));
        assert_eq!(host(v11, "/", &[]), Err(HostError::Missing));
        assert_eq!(
            host(v11, "/", &[("host", "a"), ("host", "a")]),
            Err(HostError::Several)
        );
        // HTTP/1.0 may name no host; more than one is refused there too.
        assert_eq!(host(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(
            host(Version::HTTP_10, "/", &[("host", "a"), ("host", "b")]),
            Err(HostError::Several)
        );
        // Absolute form: the target's authority wins, but HTTP/1.1 must still send `Host`.
        assert_eq!(
            host(v11, "http://shop.example:8080/x", &[("host", "other")]),
            ok("shop.example:8080", true)
        );
        assert_eq!(
            host(v11, "http://shop.example/x", &[]),
            Err(HostError::Missing)
        );
        assert_eq!(
            host(Version::HTTP_10, "http://shop.example/x", &[]),
            ok("shop.example", true)
        );
        assert_eq!(
            host(
                v11,
                "http://user@shop.example/x",
                &[("host", "shop.example")]
            ),
            Err(HostError::Invalid)
        );
        // HTTP/2: `:authority` is the host; a `Host` must agree with it.
        let v2 = Version::HTTP_2;
        assert_eq!(host(v2, "http://shop/x", &[]), ok("shop", true));
        assert_eq!(
            host(v2, "http://shop/x", &[("host", "SHOP")]),
            ok("SHOP", false)
        );
        assert_eq!(
            host(v2, "http://shop/x", &[("host", "evil")]),
            Err(HostError::Conflict)
        );
        assert_eq!(host(v2, "/x", &[("host", "shop")]), ok("shop", false));
        assert_eq!(host(v2, "/x", &[]), Err(HostError::Missing));
        // The grammar: host[:port], nothing else.
        for good in [
            "shop",
            "shop.example:8080",
            "10.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "a%41b",
            "shop:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?} refused");
        }
        for bad in [
            "user@shop",
            "shop example",
            "shop:80x",
            "shop:80:90",
            "[::1",
            "[zz]",
            "[::1]x",
            "sh/op",
            "shop\\",
            "a%4",
            "a%zz",
            "ünï",
            "",
            ":80",
            "[]",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} accepted");
        }
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
