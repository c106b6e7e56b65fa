//! `strategy = "handoff"` end to end (DESIGN.md invariant 7, docs/handoff.md): real demo-app
//! signers behind the real proxy, a real demo-app ledger downstream that rejects a token lower
//! than one it accepted, continuous requests to `/sign` throughout.
//!
//! Each scenario checks the same three things: no request failed (the proxy held the new
//! requests while the role moved, and the right holder answered each), the ledger never
//! accepted a stale holder (nothing was rejected, and the accepted tokens never go down), and
//! the tokens given out only grow. The failure cases also check that the old holder kept the
//! role, and that the failure is in the decisions and in `status`.

mod common;

use common::{is_aborted, phase, serial, Harness};
use cutover_core::engine::{Fencing, Phase, Release};
use cutover_loadgen::{Load, LoadConfig, LoadReport};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;

const LONG: Duration = Duration::from_secs(60);

/// A demo-app process serving the ledger (`/ledger`).
struct Ledger {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl Ledger {
    async fn start() -> Ledger {
        let mut child = tokio::process::Command::new(common::demo_app())
            .args(["--port", "0", "--version", "ledger"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the ledger");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .unwrap();
        let addr = line
            .trim()
            .rsplit_once(" listening on ")
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .1
            .parse()
            .unwrap();
        Ledger {
            _child: child,
            addr,
        }
    }

    async fn entries(&self) -> Value {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/ledger")
            .header("host", self.addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    /// The ledger's own record: nothing rejected, accepted tokens never lower than one
    /// accepted before, and each holder's writes in one run (no holder writes again after a
    /// newer one did). Returns the accepted `(token, by)` in order.
    async fn check(&self) -> Vec<(u64, String)> {
        let l = self.entries().await;
        assert_eq!(
            l["rejected"],
            json!([]),
            "the ledger had to fence a stale holder: {l}"
        );
        let accepted: Vec<(u64, String)> = l["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["token"].as_u64().unwrap(),
                    e["by"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            accepted.windows(2).all(|w| w[0].0 <= w[1].0),
            "accepted tokens went down: {accepted:?}"
        );
        let mut runs: Vec<(u64, String)> = Vec::new();
        for (t, by) in &accepted {
            if runs.last() != Some(&(*t, by.clone())) {
                assert!(
                    !runs.iter().any(|(_, b)| b == by) || runs.last().map(|r| &r.1) == Some(by),
                    "{by} wrote again after another holder: {accepted:?}"
                );
                runs.push((*t, by.clone()));
            }
        }
        runs
    }
}

/// A singleton signer behind cutover, its ledger, and load on `/sign`.
async fn singleton(start_timeout: &str) -> (Harness, Ledger) {
    let ledger = Ledger::start().await;
    let config = common::config()
        .insert("rollout.strategy", "handoff")
        .merge("[rollout.handoff]\ntimeout = \"300ms\"\ndrain_timeout = \"2s\"")
        .start_timeout(start_timeout)
        .env(&[
            // Signing takes a while on v1: a request still in flight on it when the role
            // moved would write after the new holder did, and be rejected.
            ("DEMO_LATENCY", "20ms"),
            ("DEMO_LATENCY_JITTER", "60ms"),
            ("DEMO_LEDGER", &ledger.addr.to_string()),
        ]);
    let h = Harness::start_with(config).await;
    h.first_release("v1").await;
    (h, ledger)
}

fn sign_load(h: &Harness) -> Load {
    let mut cfg = LoadConfig::new(h.running().proxy_addr);
    cfg.path = "/sign".into();
    cfg.rate_per_sec = 300;
    cfg.clients = 50;
    cfg.max_in_flight = 256;
    // Longer than the longest hold (drain_timeout + timeout): a held request still counts.
    cfg.timeout = Duration::from_secs(5);
    Load::start(cfg)
}

/// One `/sign` through the proxy with a client's own (forged) fencing header: the proxy
/// replaces it with the holder's token, which the signer answers with.
async fn sign_forged(h: &Harness) -> Value {
    let addr = h.running().proxy_addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/sign")
        .header("host", "signer")
        .header("x-cutover-fencing-token", "99")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn holder(h: &cutover_host::status::StatusView) -> Option<Fencing> {
    h.fencing.clone()
}

fn no_failures(report: &LoadReport) {
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
}

/// The happy path under continuous load: v2 takes the role with token 2, the requests held
/// meanwhile are answered by v2, v1 is drained and stopped; nothing fails, the ledger never
/// sees v1 after v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_under_load_moves_the_role_with_zero_failed_requests_and_no_stale_holder() {
    let _g = serial().await;
    let (h, ledger) = singleton("20s").await;
    let s = h.status().await;
    assert_eq!(
        holder(&s),
        Some(Fencing {
            holder: s.stable.clone().unwrap(),
            token: 1
        })
    );
    assert!(
        cutover_host::render::status(&s).contains("v1"),
        "{}",
        cutover_host::render::status(&s)
    );
    assert_eq!(
        sign_forged(&h).await,
        json!({ "version": "v1", "token": 1 }),
        "the proxy sends the holder's token, not the client's"
    );
    let load = sign_load(&h);
    h.wait_for("load flowing", LONG, |_| load.snapshot().ok > 100)
        .await;

    // v2 signs fast: it would overtake v1's slow writes if it took the role too early.
    h.deploy(
        "v2",
        json!({ "DEMO_LATENCY": "1ms", "DEMO_LATENCY_JITTER": "0" }),
    )
    .await
    .unwrap();
    let s = h
        .wait_for("v2 holds the role", LONG, |s| {
            s.fencing.as_ref().is_some_and(|f| f.holder.version == "v2")
                && matches!(phase(s), Some(Phase::Done { .. }))
        })
        .await;
    let text = cutover_host::render::status(&s);
    assert!(
        text.contains("v2") && text.contains("fencing token 2"),
        "{text}"
    );
    assert!(
        text.contains("then POST /cutover/handoff on the new instance (at most 300ms)")
            && !text.contains("hold_previous"),
        "the handoff's settings, not the canary's: {text}"
    );
    h.wait_for("v1 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v2")
    })
    .await;
    let at = load.snapshot().ok;
    h.wait_for("v2 serving", LONG, |_| load.snapshot().ok > at + 100)
        .await;
    let report = load.stop().await;
    no_failures(&report);
    assert_eq!(
        sign_forged(&h).await,
        json!({ "version": "v2", "token": 2 })
    );
    assert!(report.by_version.get("v1").is_some_and(|c| c.ok > 50));
    assert!(report.by_version.get("v2").is_some_and(|c| c.ok > 50));

    let runs = ledger.check().await;
    assert_eq!(
        runs,
        vec![(1, "v1".to_string()), (2, "v2".to_string())],
        "v1 signed with 1, then v2 with 2, and v1 never again"
    );

    let hist = h
        .client
        .get("/v1/history?limit=1&verify=true")
        .await
        .unwrap();
    assert_eq!(hist["verify"]["ok"], true, "{hist}");
    let decisions = hist["rollouts"][0]["decisions"].as_array().unwrap();
    let handoff = decisions
        .iter()
        .find(|d| d["kind"] == "handoff")
        .unwrap_or_else(|| panic!("no handoff decision: {decisions:?}"));
    assert_eq!(handoff["numbers"]["token"], 2, "{handoff}");
    assert!(decisions.iter().any(|d| d["kind"] == "promoted"));
    h.shutdown().await;
}

/// One failure case under load: `v2` deployed with `env`, the rollout aborts with a reason
/// containing `why`, v1 keeps serving with `token`; nothing fails; the ledger saw v1 only
/// (and v2 never).
async fn failed_handoff_keeps_the_old_holder(
    env: Value,
    start_timeout: &str,
    why: &str,
    token: u64,
) {
    let _g = serial().await;
    let (h, ledger) = singleton(start_timeout).await;
    let load = sign_load(&h);
    h.wait_for("load flowing", LONG, |_| load.snapshot().ok > 100)
        .await;

    h.deploy("v2", env).await.unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let Some(Phase::Aborted { reason, .. }) = phase(&s) else {
        unreachable!()
    };
    assert!(reason.contains(why), "{reason}");
    assert_eq!(
        holder(&s),
        Some(Fencing {
            holder: Release::new("v1", s.stable.as_ref().unwrap().digest.clone()),
            token
        }),
        "v1 keeps the role"
    );
    let text = cutover_host::render::status(&s);
    assert!(text.contains("ABORTED") && text.contains(why), "{text}");
    assert!(text.contains(&format!("fencing token {token}")), "{text}");
    h.wait_for("v2 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v1")
    })
    .await;
    // v1 goes on serving, with its new token.
    let at = load.snapshot().ok;
    h.wait_for("v1 serving after the abort", LONG, |_| {
        load.snapshot().ok > at + 100
    })
    .await;
    let report = load.stop().await;
    no_failures(&report);
    assert_eq!(
        sign_forged(&h).await,
        json!({ "version": "v1", "token": token })
    );
    assert_eq!(
        report.by_version.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "only v1 answered"
    );
    let runs = ledger.check().await;
    assert!(runs.iter().all(|(_, by)| by == "v1"), "{runs:?}");
    assert_eq!(runs.first().map(|r| r.0), Some(1));
    assert!(runs.iter().all(|(t, _)| *t == 1 || *t == token), "{runs:?}");

    let hist = h.client.get("/v1/history?limit=1").await.unwrap();
    let decisions = hist["rollouts"][0]["decisions"].as_array().unwrap();
    let aborted = decisions
        .iter()
        .find(|d| d["kind"] == "aborted")
        .unwrap_or_else(|| panic!("no aborted decision: {decisions:?}"));
    assert!(
        aborted["reason"].as_str().unwrap().contains(why),
        "{aborted}"
    );
    h.shutdown().await;
}

/// The new instance never becomes ready within `app.start_timeout`: no token is given out,
/// the role never moves, no request is ever held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_that_is_never_ready_leaves_the_holder_serving() {
    failed_handoff_keeps_the_old_holder(
        json!({ "DEMO_READY_DELAY": "1h" }),
        "1500ms",
        "not ready within app.start_timeout",
        1,
    )
    .await;
}

/// The handoff call answers 500: v1 gets token 3 (2 was offered to v2) and the held requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_call_that_errors_leaves_the_holder_serving_with_a_higher_token() {
    failed_handoff_keeps_the_old_holder(
        json!({ "DEMO_HANDOFF_FAIL": "true" }),
        "20s",
        "answered 500",
        3,
    )
    .await;
}

/// The handoff call answers after `rollout.handoff.timeout`: the same as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_call_that_times_out_leaves_the_holder_serving_with_a_higher_token() {
    failed_handoff_keeps_the_old_holder(
        json!({ "DEMO_HANDOFF_DELAY": "2s" }),
        "20s",
        "no answer within",
        3,
    )
    .await;
}
