//! The front door: the Host rule (RFC 9112 §3.2, RFC 9113 §8.3.1) and whose forwarding headers
//! are believed (`service.trusted_proxies`). Raw bytes, hyper's HTTP/2 client and `curl` on
//! real sockets, against a real proxy in front of upstreams that record or echo what they got.

mod support;

use bytes::Bytes;
use cutover_core::Cidr;
use cutover_proxy::ProxyConfig;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::BufReader;
use tokio::net::TcpStream;

const FAST: Duration = Duration::ZERO;

/// Reads every response in `raw` (each with a `content-length` body).
async fn responses(raw: &[u8]) -> Vec<RawResponse> {
    let mut rd = BufReader::new(raw);
    let mut all = Vec::new();
    while let Ok(r) = read_response(&mut rd).await {
        all.push(r);
    }
    all
}

/// A request with no `Host`, several, or one that is not `host[:port]` is answered 400 by the
/// proxy with `Connection: close`, and the connection is closed cleanly (FIN, not a reset).
/// Nothing reaches the app, and nothing is counted against the version the client would have
/// gone to (a hostile client cannot raise a canary's numbers).
#[tokio::test]
async fn a_request_without_exactly_one_valid_host_is_400_and_closes() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    for (what, req, says) in [
        ("no Host", &b"GET /no-host HTTP/1.1\r\n\r\n"[..], "no Host"),
        (
            "no Host, with a body",
            b"POST /no-host HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "no Host",
        ),
        (
            "two Hosts",
            b"GET /two HTTP/1.1\r\nHost: app\r\nHost: app\r\n\r\n",
            "more than one",
        ),
        (
            "two different Hosts",
            b"GET /two HTTP/1.1\r\nHost: app\r\nHost: evil.example\r\n\r\n",
            "more than one",
        ),
        (
            "two Hosts on HTTP/1.0",
            b"GET /two HTTP/1.0\r\nHost: app\r\nHost: evil.example\r\n\r\n",
            "more than one",
        ),
        (
            "userinfo",
            b"GET /bad HTTP/1.1\r\nHost: user@app\r\n\r\n",
            "not a valid",
        ),
        (
            "a path in Host",
            b"GET /bad HTTP/1.1\r\nHost: app/x\r\n\r\n",
            "not a valid",
        ),
        (
            "a bad port",
            b"GET /bad HTTP/1.1\r\nHost: app:80x\r\n\r\n",
            "not a valid",
        ),
        (
            "an empty Host",
            b"GET /bad HTTP/1.1\r\nHost: \r\n\r\n",
            "not a valid",
        ),
        (
            "absolute form without Host",
            b"GET http://app/abs HTTP/1.1\r\n\r\n",
            "no Host",
        ),
    ] {
        let (raw, end) = raw_exchange(px.addr, req).await;
        let got = responses(&raw).await;
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(got.len(), 1, "{what}: {text}");
        assert_eq!(got[0].status, 400, "{what}: {text}");
        assert_eq!(got[0].header("connection"), Some("close"), "{what}: {text}");
        assert!(
            String::from_utf8_lossy(&got[0].body).contains(says),
            "{what}: {text}"
        );
        assert_eq!(end, End::Eof, "{what}: not closed cleanly");
    }
    assert!(up.seen().is_empty(), "reached the app: {:?}", up.seen());
    let w = px.recorder.window("v1", Duration::from_secs(60));
    assert_eq!(
        (w.requests, w.errors),
        (0, 0),
        "a refused request counted for the version"
    );
    // Counted as what they are instead (cutover_proxy_refused_requests_total).
    assert_eq!(
        px.proxy.refused_requests(),
        [
            ("no_host", 3),
            ("several_hosts", 3),
            ("invalid_host", 4),
            ("host_authority_conflict", 0)
        ]
    );

    // On a kept-alive connection: the good request is served, the bad one ends it.
    let (raw, end) = raw_exchange(
        px.addr,
        b"GET /first HTTP/1.1\r\nHost: app\r\n\r\nGET /second HTTP/1.1\r\n\r\nGET /third HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = responses(&raw).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "{}", String::from_utf8_lossy(&raw));
    assert_eq!(end, End::Eof);
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/first"]);
}

/// An absolute-form target names the host (RFC 9112 §3.2.2): it replaces `Host`, and the app
/// gets the origin form. An HTTP/1.0 request may name no host at all: it is forwarded with the
/// instance's address as `Host`, and no `X-Forwarded-Host`.
#[tokio::test]
async fn absolute_form_names_the_host_and_http_1_0_may_omit_it() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    let (raw, _) = raw_exchange(
        px.addr,
        b"GET http://shop.example:8080/abs?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let (raw, _) = raw_exchange(px.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].path, "/abs?q=1");
    assert_eq!(seen[0].headers["host"], "shop.example:8080");
    assert_eq!(seen[0].headers["x-forwarded-host"], "shop.example:8080");
    assert_eq!(seen[0].headers.get_all("host").iter().count(), 1);
    assert_eq!(seen[1].path, "/old");
    assert_eq!(seen[1].headers["host"], up.addr.to_string().as_str());
    assert!(!seen[1].headers.contains_key("x-forwarded-host"));
}

async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, String) {
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("a response");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// HTTP/2 names the host in `:authority`: the app gets it as `Host`. A `Host` field that
/// agrees (ASCII case aside) is fine; one that names another host makes the request malformed
/// (RFC 9113 §8.3.1): that stream is answered 400 and the connection carries on.
#[tokio::test]
async fn http2_authority_is_the_host_and_a_conflicting_host_is_400() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    let stream = TcpStream::connect(px.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str, host: Option<&str>| {
        let mut req = Request::get(format!("http://shop.example{path}"));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        req.body(Empty::new()).unwrap()
    };
    assert_eq!(
        h2_send(&mut sender, get("/authority", None)).await,
        (StatusCode::OK, "ok /authority".into())
    );
    assert_eq!(
        h2_send(&mut sender, get("/agree", Some("SHOP.example"))).await,
        (StatusCode::OK, "ok /agree".into())
    );
    let (status, body) = h2_send(&mut sender, get("/conflict", Some("evil.example"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(":authority"), "{body}");
    assert!(px
        .proxy
        .refused_requests()
        .contains(&("host_authority_conflict", 1)));
    // Only the stream was refused.
    assert_eq!(
        h2_send(&mut sender, get("/after", None)).await,
        (StatusCode::OK, "ok /after".into())
    );
    let seen = up.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/authority", "/agree", "/after"]);
    assert_eq!(seen[0].headers["host"], "shop.example");
    assert_eq!(seen[0].headers["x-forwarded-host"], "shop.example");
    assert_eq!(seen[1].headers.get_all("host").iter().count(), 1);
}

/// Runs `curl` (a client we did not write) with `args`; the status code of the last response.
async fn curl(args: &[String]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("curl is needed for this test (apt-get install curl): {e}"));
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        code.parse()
            .unwrap_or_else(|_| panic!("curl printed {code:?}: {stderr}")),
        stderr,
    )
}

/// `curl` with its defaults gets through over HTTP/1.1 and HTTP/2 (prior knowledge), and as a
/// forward-proxy client (absolute-form target); told to send no `Host`, it gets 400.
#[tokio::test]
async fn curl_with_its_defaults_gets_through() {
    let (px, up) = recorded(ProxyConfig::default(), FAST).await;
    let base = format!("http://{}", px.addr);
    let s = |v: &str| v.to_owned();
    assert_eq!(curl(&[format!("{base}/h1")]).await.0, 200);
    assert_eq!(
        curl(&[s("--http2-prior-knowledge"), format!("{base}/h2")])
            .await
            .0,
        200
    );
    assert_eq!(
        curl(&[s("-x"), base.clone(), s("http://shop.example/via-proxy")])
            .await
            .0,
        200
    );
    let (status, stderr) = curl(&[s("-H"), s("Host:"), format!("{base}/no-host")]).await;
    assert_eq!(status, 400, "{stderr}");

    let seen = up.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/h1", "/h2", "/via-proxy"]);
    let addr = px.addr.to_string();
    assert_eq!(seen[0].headers["host"], addr.as_str());
    assert_eq!(seen[1].headers["host"], addr.as_str());
    assert_eq!(seen[2].headers["host"], "shop.example");
}

/// The forwarding headers an app got, as `name: value` lines (the `Upstream`'s `/headers`).
async fn forwarding_seen(proxy: SocketAddr, sent: &[(&str, &str)]) -> Vec<String> {
    let mut req = Request::get(format!("http://{proxy}/headers")).header("host", "shop.example");
    for (k, v) in sent {
        req = req.header(*k, *v);
    }
    let a = send(&client(), req.body(Full::<Bytes>::default()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let mut lines: Vec<String> = a
        .body
        .lines()
        .filter(|l| l.starts_with("x-forwarded-") || l.starts_with("forwarded:"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// What a client behind a load balancer sends, as the balancer passes it on.
const FROM_A_BALANCER: [(&str, &str); 5] = [
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-for", "198.51.100.2"),
    ("x-forwarded-host", "lb.example"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "for=203.0.113.9;proto=https"),
];

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

async fn proxy_for(trusted: &[&str], listen: &str) -> (Running, Upstream) {
    let up = Upstream::start("v1#0").await;
    let config = ProxyConfig {
        trusted_proxies: cidrs(trusted),
        ..ProxyConfig::default()
    };
    let px = Running::listening(config, listen.parse().unwrap()).await;
    px.proxy
        .set_table(table(Some(pool("v1", &[up.backend()])), None));
    (px, up)
}

/// By default no peer is trusted: whatever a client says in `X-Forwarded-For`, `-Host`,
/// `-Proto` is replaced by what cutover saw, and its `Forwarded` is dropped; so it is when the
/// trusted ranges do not include the peer.
#[tokio::test]
async fn an_untrusted_clients_forwarding_headers_are_replaced() {
    let replaced = [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: shop.example",
        "x-forwarded-proto: http",
    ];
    for trusted in [&[][..], &["10.0.0.0/8", "::1/128", "127.0.0.2"][..]] {
        let (px, _up) = proxy_for(trusted, "127.0.0.1:0").await;
        assert_eq!(
            forwarding_seen(px.addr, &FROM_A_BALANCER).await,
            replaced,
            "trusted: {trusted:?}"
        );
        assert_eq!(forwarding_seen(px.addr, &[]).await, replaced);
    }
}

/// A peer in `trusted_proxies` (IPv4 or IPv6) is a load balancer whose word is taken: it is
/// appended to the `X-Forwarded-For` chain, its `X-Forwarded-Host`, `-Proto` and `Forwarded`
/// pass unchanged, and what it did not send is filled in from this hop.
#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_extended() {
    let (px, _up) = proxy_for(&["127.0.0.0/8"], "127.0.0.1:0").await;
    assert_eq!(
        forwarding_seen(px.addr, &FROM_A_BALANCER).await,
        [
            "forwarded: for=203.0.113.9;proto=https",
            "x-forwarded-for: 203.0.113.9, 198.51.100.2, 127.0.0.1",
            "x-forwarded-host: lb.example",
            "x-forwarded-proto: https",
        ]
    );
    assert_eq!(
        forwarding_seen(px.addr, &[]).await,
        [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-host: shop.example",
            "x-forwarded-proto: http",
        ]
    );
}

/// The same over IPv6 loopback (this test needs `::1`), trusted by a single address; and an
/// IPv6 peer outside the ranges is not.
#[tokio::test]
async fn an_ipv6_peer_is_matched_against_ipv6_ranges() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this test needs the IPv6 loopback address ::1"
    );
    let (px, _up) = proxy_for(&["10.0.0.0/8", "fd00::/8"], "[::1]:0").await;
    assert_eq!(
        forwarding_seen(px.addr, &FROM_A_BALANCER[..1]).await,
        [
            "x-forwarded-for: ::1",
            "x-forwarded-host: shop.example",
            "x-forwarded-proto: http",
        ]
    );
    let (px, _up) = proxy_for(&["10.0.0.0/8", "::1"], "[::1]:0").await;
    assert_eq!(
        forwarding_seen(px.addr, &FROM_A_BALANCER[..1]).await,
        [
            "x-forwarded-for: 203.0.113.9, ::1",
            "x-forwarded-host: shop.example",
            "x-forwarded-proto: http",
        ]
    );
}
