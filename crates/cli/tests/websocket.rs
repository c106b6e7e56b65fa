//! Long-lived connections through rollouts: WebSocket clients place orders continuously while
//! cutover moves traffic. Real runtime, real demo-app processes (their `/orders` endpoint
//! executes each order, logs it to a file, then acks it), real WebSocket clients that reconnect
//! and resend what was not acked. DESIGN.md invariant 4 and issue 3's "no lost orders".

mod common;

use common::{serial, Harness};
use cutover_core::engine::Phase;
use cutover_core::Dur;
use cutover_loadgen::{Orders, OrdersConfig, OrdersReport};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Every order id every instance executed, with how many times.
fn executed(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("exec"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path().join("executed.log")) else {
            continue;
        };
        for line in text.lines() {
            if let Some(id) = line.split_whitespace().next() {
                *out.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

fn config(dir: &Path, drain_path: bool) -> common::ConfigBuilder {
    let state = format!("{}/{{version}}-{{instance}}", dir.join("exec").display());
    let c = common::config()
        .env(&[
            ("DEMO_STATE_DIR", &state),
            ("DEMO_ORDER_DELAY", "20ms"),
            ("DEMO_ORDER_DELAY_JITTER", "600ms"),
        ])
        .quiet_period("300ms")
        .initial_weight(50.0)
        .step_interval("60s")
        .hold_previous("1s");
    if drain_path {
        c.drain_path("/drain")
    } else {
        c
    }
}

fn orders(h: &Harness) -> Orders {
    let mut cfg = OrdersConfig::new(h.running().proxy_addr);
    cfg.clients = 16;
    cfg.rate_per_client = 15.0;
    cfg.reconnect_delay = Duration::from_millis(50);
    cfg.stop_timeout = Duration::from_secs(20);
    Orders::start(cfg)
}

/// v1 stable, v2 at 50 %, order clients connected (half of them land on the canary) and
/// acked by both, then an abort: the canary's sessions are drained and their clients
/// reconnect to v1.
async fn canary_with_orders_then_abort(
    drain_path: bool,
    tweak: impl Fn(common::ConfigBuilder) -> common::ConfigBuilder,
) -> (Harness, Orders) {
    let dir = tempfile::tempdir().unwrap();
    let text = tweak(config(dir.path(), drain_path));
    let h = Harness::start_in(dir, text).await;
    h.first_release("v1").await;
    // The drain settings in force are in `status`, in the view and in the JSON.
    let s = h.status().await;
    assert_eq!(s.settings.quiet_period, Dur::from_millis(300));
    assert!(
        cutover_host::render::status(&s).contains("quiet period 300ms"),
        "{}",
        cutover_host::render::status(&s)
    );
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 at 50%", LONG, |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        )
    })
    .await;
    let load = orders(&h);
    h.wait_for("orders acked by both versions", LONG, |_| {
        let r = load.snapshot();
        r.acked_by_version.get("v1").copied().unwrap_or(0) > 20
            && r.acked_by_version.get("v2").copied().unwrap_or(0) > 20
    })
    .await;
    h.verb("abort").await.unwrap();
    h.wait_for("v2 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v1")
    })
    .await;
    (h, load)
}

fn assert_no_lost_or_ghost_orders(report: &OrdersReport, dir: &Path) {
    assert!(report.sent_unique > 200, "{report:?}");
    assert!(report.unacked.is_empty(), "unacked: {:?}", report.unacked);
    assert_eq!(
        report.acked.len() as u64,
        report.sent_unique,
        "every order acked"
    );
    assert_eq!(report.duplicate_acks, 0, "every order acked exactly once");
    assert_eq!(
        report.closes.get(cutover_loadgen::ABNORMAL_CLOSE),
        None,
        "no 1006 / reset: {:?}",
        report.closes
    );
    assert!(
        report
            .closes
            .keys()
            .all(|code| code == "1012" || code == "1000"),
        "closes: {:?}",
        report.closes
    );
    let exec = executed(dir);
    let twice: Vec<_> = exec.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    let executed: BTreeSet<String> = exec.into_keys().collect();
    let ghosts: Vec<_> = executed.difference(&report.acked).collect();
    assert!(
        ghosts.is_empty(),
        "executed without the ack reaching the client: {ghosts:?}"
    );
    let lost: Vec<_> = report.acked.difference(&executed).collect();
    assert!(lost.is_empty(), "acked but not executed: {lost:?}");
}

/// Orders through an abort (the canary's sessions are drained by the app itself, told by
/// `POST /drain`) and a promotion followed by the end of hold_previous (the previous
/// release's sessions drained the same way). Some orders take longer than the quiet period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_abort_and_promotion_with_app_driven_drain() {
    let _g = serial().await;
    let (h, load) = canary_with_orders_then_abort(true, |t| t).await;
    let after_abort = load.snapshot();
    assert!(
        after_abort.closes.get("1012").copied().unwrap_or(0) > 0,
        "{:?}",
        after_abort.closes
    );

    // Promotion, then hold_previous ends: v1's sessions move to v3.
    h.deploy("v3", json!({})).await.unwrap();
    h.wait_for("v3 progressing", LONG, |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        )
    })
    .await;
    h.verb("promote").await.unwrap();
    h.wait_for("v1 stopped after hold_previous", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v3")
    })
    .await;
    h.wait_for("orders acked by v3", LONG, |_| {
        load.snapshot()
            .acked_by_version
            .get("v3")
            .copied()
            .unwrap_or(0)
            > 50
    })
    .await;
    let report = load.stop().await;
    assert_no_lost_or_ghost_orders(&report, h.dir.path());
    h.shutdown().await;
}

/// The same with an app that is not told to drain: when the drain window ends, cutover itself
/// stops forwarding client frames, lets acks in flight through for the quiet period, then
/// closes the clients with 1012 — still no lost and no ghost orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_a_cutover_driven_drain() {
    let _g = serial().await;
    let (h, load) = canary_with_orders_then_abort(false, |t| t.drain_timeout("500ms")).await;
    h.wait_for("more orders on v1", LONG, |_| {
        load.snapshot()
            .acked_by_version
            .get("v1")
            .copied()
            .unwrap_or(0)
            > 300
    })
    .await;
    let report = load.stop().await;
    assert!(
        report.closes.get("1012").copied().unwrap_or(0) > 0,
        "{:?}",
        report.closes
    );
    assert_no_lost_or_ghost_orders(&report, h.dir.path());
    h.shutdown().await;
}
