//! `cutover reload`: a changed abort rule applies to the next rollout (the running one keeps the
//! policy it is judged by); an invalid file, or one changing what needs a restart, changes
//! nothing and says why. Real cutover, real demo-app instances, real load.

mod common;

use common::{is_aborted, is_promoted, serial, Harness};
use cutover_core::engine::Phase;
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// Fires when the canary's p99 is above 15 ms: a 40 ms canary trips it, the old rules do not.
const STRICT: &str = r#"name = "p99-over-15ms"
metric = "latency"
quantile = 0.99
above = "15ms"
for = "300ms""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_abort_rule_applies_to_the_next_rollout_and_a_bad_file_changes_nothing() {
    let _g = serial().await;
    let base = common::config().hold_previous("200ms");
    let h = Harness::start_with(base.clone()).await;
    let file = h.dir.path().join("cutover.toml");
    h.first_release("v1").await;
    let status = |h: &Harness| {
        let c = h.client.clone();
        async move { c.get("/v1/status").await.unwrap()["config"].clone() }
    };
    assert_eq!(status(&h).await["file"], "same");

    // An invalid file: refused whole, naming the key; the running config is kept.
    std::fs::write(&file, base.clone().insert("rollout.bogus", 1).to_toml()).unwrap();
    let e = h.verb("reload").await.unwrap_err().to_string();
    assert!(e.contains("nothing changed") && e.contains("bogus"), "{e}");
    let c = status(&h).await;
    assert_eq!(c["file"], "invalid", "{c}");

    // A valid file that changes a listener: refused, naming it and the way to change it.
    std::fs::write(
        &file,
        base.clone()
            .set("service.listen", "127.0.0.1:1")
            .abort_rule(STRICT)
            .to_toml(),
    )
    .unwrap();
    let e = h.verb("reload").await.unwrap_err().to_string();
    assert!(
        e.contains("nothing changed") && e.contains("service.listen") && e.contains("restart"),
        "{e}"
    );
    let c = status(&h).await;
    assert_eq!(c["file"], "differs", "{c}");

    let load = h.load(200, Duration::from_secs(2));
    h.wait_for("load flowing", LONG, |_| load.snapshot().ok > 50)
        .await;

    // v2 answers in 40 ms: the rules it is deployed under let it through; the strict rule,
    // reloaded while it rolls out, waits for the next rollout.
    h.deploy("v2", json!({ "DEMO_LATENCY": "40ms" }))
        .await
        .unwrap();
    std::fs::write(&file, base.clone().abort_rule(STRICT).to_toml()).unwrap();
    let r = h.verb("reload").await.unwrap();
    assert_eq!(
        r["changes"],
        json!([{ "key": "rollout.aborts", "applies": "next_rollout", "when": "applies to the next rollout" }]),
        "{r}"
    );
    let c = status(&h).await;
    assert_eq!(c["file"], "same", "{c}");
    assert_eq!(c["pending"], json!(["rollout.aborts"]), "{c}");
    let s = h
        .wait_for("v2 promoted under the rules it started with", LONG, |s| {
            is_promoted(s) || is_aborted(s)
        })
        .await;
    assert!(is_promoted(&s), "{}", cutover_host::render::status(&s));
    h.wait_for("v2 done", LONG, |s| {
        matches!(common::phase(s), Some(Phase::Done { .. }))
    })
    .await;

    // The next rollout is judged by the reloaded rule: the same 40 ms canary is aborted by it.
    h.deploy("v3", json!({ "DEMO_LATENCY": "40ms" }))
        .await
        .unwrap();
    assert_eq!(status(&h).await["pending"], json!(null));
    let s = h.wait_for("v3 aborted", LONG, is_aborted).await;
    let Some(Phase::Aborted { reason, .. }) = common::phase(&s) else {
        unreachable!()
    };
    assert!(reason.contains("p99-over-15ms"), "{reason}");
    let report = load.stop().await;
    assert_eq!(
        report.by_version.get("v2").map_or(1, |c| c.ok),
        report.by_version.get("v2").map_or(1, |c| c.ok + c.failed),
        "v2 failed no request: {report:?}"
    );
    h.shutdown().await;
}
