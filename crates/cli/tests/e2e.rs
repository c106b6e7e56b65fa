//! End to end on loopback: the real runtime, real demo-app processes, continuous concurrent
//! HTTP load. Each test is one scenario from the single-host issue and DESIGN.md's invariants.

mod common;

use common::{is_aborted, is_promoted, phase, serial, Harness};
use cutover_admin::ClientError;
use cutover_core::engine::{Phase, PhaseKind};
use cutover_core::{sticky, Weight};
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Invariant 5: a healthy rollout under load reaches 100 % with zero failed requests, clients
/// only ever move stable → canary (invariant 2), and the previous release is drained and
/// stopped at the end of hold_previous without failing a request (invariant 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_rollout_reaches_full_with_zero_failed_requests() {
    let _g = serial().await;
    let text = common::config().hold_previous("1500ms");
    let h = Harness::start_with(text).await;
    h.first_release("v1").await;
    let load = h.load(300, Duration::from_secs(5));
    h.wait_for("load flowing", LONG, |s| {
        s.instances.iter().any(|i| i.in_flight > 0) || load.snapshot().ok > 50
    })
    .await;

    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 promoted", LONG, is_promoted).await;
    // hold_previous ends: v1 is drained and stopped while the load goes on.
    h.wait_for("v1 stopped after hold_previous", LONG, |s| {
        s.previous.is_none() && s.instances.iter().all(|i| i.version == "v2")
    })
    .await;
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(
        report.by_version.get("v2").is_some_and(|c| c.ok > 100),
        "{:?}",
        report.by_version.keys()
    );
    assert!(report.by_version.get("v1").is_some_and(|c| c.ok > 100));
    for (client, seq) in &report.per_client {
        let versions: Vec<&str> = seq.iter().map(|(v, _)| v.as_str()).collect();
        assert!(
            !versions.windows(2).any(|w| w == ["v2", "v1"]),
            "client {client} went back: {versions:?}"
        );
    }
    let s = h.status().await;
    let r = s.rollout.as_ref().unwrap();
    assert_eq!(r.phase.kind(), PhaseKind::Done);
    let plan: Vec<u16> = r.plan.iter().map(|s| s.weight.bp()).collect();
    assert_eq!(plan, vec![500, 1000, 2000, 4000, 8000]);

    // Every decision is in the history with its numbers, and the audit chain verifies.
    let hist = h
        .client
        .get("/v1/history?limit=5&verify=true")
        .await
        .unwrap();
    assert_eq!(hist["verify"]["ok"], true, "{hist}");
    let decisions = hist["rollouts"][0]["decisions"].as_array().unwrap();
    let kinds: Vec<&str> = decisions
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    for k in [
        "deploy",
        "ready",
        "advance",
        "promoted",
        "previous_released",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let advance = decisions.iter().find(|d| d["kind"] == "advance").unwrap();
    assert!(
        advance["numbers"]["gates"][0]["observed"]
            .as_f64()
            .is_some(),
        "{advance}"
    );
    h.shutdown().await;
}

/// Invariant 5, the bad case: a canary with injected latency is aborted by the p99 rule; all
/// traffic is back on stable; stable's requests never fail; the only failures are requests of
/// clients assigned to the canary (its share, by the sticky rule), and they stop at the abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_aborted_and_only_its_share_fails() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    // Clients give up after 1 s; the canary answers in 1.5 s: each canary request is a failure.
    let load = h.load(300, Duration::from_secs(1));
    h.wait_for("load flowing", LONG, |_| load.snapshot().ok > 50)
        .await;

    h.deploy("v2", json!({ "DEMO_LATENCY": "1500ms" }))
        .await
        .unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let r = s.rollout.clone().unwrap();
    let Phase::Aborted {
        reason, automatic, ..
    } = &r.phase
    else {
        unreachable!()
    };
    assert!(automatic);
    assert!(reason.contains("p99-over-800ms"), "{reason}");
    let at_abort = load.snapshot();
    // After the abort every request is served by stable.
    h.wait_for("more load after the abort", LONG, |_| {
        load.snapshot().sent > at_abort.sent + 300
    })
    .await;
    let report = load.stop().await;

    assert_eq!(
        report.by_version.get("v1").map_or(1, |c| c.failed),
        0,
        "stable never fails"
    );
    let canary_weight = Weight::from_bp(500).unwrap();
    for f in &report.failures {
        assert!(
            sticky::is_canary(r.salt, f.client.as_bytes(), canary_weight),
            "a failure hit {} which is not a canary client: {f:?}",
            f.client
        );
    }
    // Blast radius: bounded by the canary's share of what was sent before the abort.
    assert!(
        report.failed > 0,
        "the canary was slower than the client timeout, so its requests failed"
    );
    assert!(
        (report.failed as f64) < at_abort.sent as f64 * 0.10,
        "{} failed of {}",
        report.failed,
        at_abort.sent
    );
    let late: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.at > at_abort.elapsed + Duration::from_millis(1600))
        .collect();
    assert!(late.is_empty(), "failures after the abort: {late:?}");
    let served_after = report.by_version.get("v2").map_or(0, |c| c.ok + c.failed)
        - at_abort.by_version.get("v2").map_or(0, |c| c.ok + c.failed);
    assert_eq!(served_after, 0, "v2 served requests after the abort");

    // The canary is drained and stopped; its digest is failed and refused on redeploy.
    h.wait_for("v2 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v1")
    })
    .await;
    let err = h
        .deploy("v2", json!({ "DEMO_LATENCY": "1500ms" }))
        .await
        .unwrap_err();
    let ClientError::Api {
        status, message, ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(status, 409);
    assert!(message.contains("--force"), "{message}");
    // The same version name with other settings is another release; --force overrides.
    let forced = h
        .client
        .post(
            "/v1/deploy",
            &json!({ "version": "v2", "env": { "DEMO_LATENCY": "1500ms" }, "force": true }),
        )
        .await
        .unwrap();
    assert!(
        forced["message"].as_str().unwrap().contains("forced"),
        "{forced}"
    );
    h.verb("abort").await.unwrap();
    h.shutdown().await;
}

/// A crash-looping canary is aborted, and stable keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_canary_is_aborted() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(2));
    h.deploy("v2", json!({ "DEMO_FAIL_AFTER": "150ms" }))
        .await
        .unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let Some(Phase::Aborted {
        reason,
        automatic: true,
        ..
    }) = phase(&s)
    else {
        panic!("{:?}", phase(&s))
    };
    assert!(reason.contains("crash-looping"), "{reason}");
    let report = load.stop().await;
    assert_eq!(report.by_version.get("v1").map_or(1, |c| c.failed), 0);
    assert_eq!(s.stable.as_ref().unwrap().version, "v1");
    assert!(s.failed.values().any(|f| f.version == "v2"));
    h.shutdown().await;
}

/// Invariant 6: after promotion, rollback inside hold_previous is one switch back to the
/// previous release, which never stopped: no process starts, no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_inside_hold_previous_needs_no_process_start() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    h.deploy("v2", json!({})).await.unwrap();
    let before = h.wait_for("v2 promoted", LONG, is_promoted).await;
    let v1_before: Vec<_> = before
        .instances
        .iter()
        .filter(|i| i.version == "v1")
        .map(|i| (i.id.clone(), i.pid, i.starts))
        .collect();
    assert!(!v1_before.is_empty(), "v1 is held after promotion");
    let seen = load.snapshot();
    let rb = h.verb("rollback").await.unwrap();
    assert!(
        rb["message"].as_str().unwrap().contains("no process start"),
        "{rb}"
    );
    let after = h.status().await;
    assert_eq!(after.stable.as_ref().unwrap().version, "v1");
    let v1_after: Vec<_> = after
        .instances
        .iter()
        .filter(|i| i.version == "v1")
        .map(|i| (i.id.clone(), i.pid, i.starts))
        .collect();
    assert_eq!(v1_before, v1_after, "same processes, no new start");
    h.wait_for("traffic on v1 again", LONG, |_| {
        load.snapshot().by_version.get("v1").map_or(0, |c| c.ok)
            > seen.by_version.get("v1").map_or(0, |c| c.ok) + 200
    })
    .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    // v2 was rolled back: refused without --force.
    let err = h.deploy("v2", json!({})).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Api { status: 409, .. }),
        "{err:?}"
    );
    h.shutdown().await;
}

/// Invariant 3: a canary that is slow to become ready gets no traffic until it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_before_readiness() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    h.deploy("v2", json!({ "DEMO_READY_DELAY": "1500ms" }))
        .await
        .unwrap();
    let s = h
        .wait_for("v2 starting, not ready", LONG, |s| {
            s.instances.iter().any(|i| i.version == "v2")
        })
        .await;
    assert_eq!(phase(&s).map(Phase::kind), Some(PhaseKind::Starting));
    h.wait_for("v2 ready and serving", LONG, |s| {
        matches!(phase(s), Some(Phase::Progressing { .. }))
    })
    .await;
    h.verb("abort").await.unwrap();
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    h.shutdown().await;
}

/// Invariant 8: state is persisted before actions; a restarted cutover resumes the rollout
/// where it was (same rollout, step, weight and pause), restarting the instances it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_cutover_resumes_the_rollout() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 at 10%", LONG, |s| {
        s.rollout.as_ref().is_some_and(|r| r.weight.bp() >= 1000)
    })
    .await;
    h.verb("pause").await.unwrap();
    let before = h.status().await;
    let r0 = before.rollout.clone().unwrap();
    load.stop().await;

    let h = h.restart().await;
    let after = h
        .wait_for("instances back", LONG, |s| {
            s.instances.iter().filter(|i| i.state == "ready").count() == 2
        })
        .await;
    let r1 = after.rollout.clone().unwrap();
    assert_eq!(
        (r1.id, r1.step, r1.weight, r1.salt),
        (r0.id, r0.step, r0.weight, r0.salt)
    );
    assert!(
        matches!(r1.phase, Phase::Paused { manual: true, .. }),
        "{:?}",
        r1.phase
    );
    let hist = h.client.get("/v1/history?limit=1").await.unwrap();
    assert!(
        hist["rollouts"][0]["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "recovered"),
        "{hist}"
    );

    let load = h.load(200, Duration::from_secs(5));
    h.verb("resume").await.unwrap();
    h.wait_for("v2 promoted after the restart", LONG, is_promoted)
        .await;
    assert_eq!(load.stop().await.failed, 0);
    h.shutdown().await;
}

/// Invariant 9: bad API requests get a clear JSON error and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests_are_refused_and_change_nothing() {
    let _g = serial().await;
    let h = Harness::start().await;
    h.first_release("v1").await;
    let before = h.status_json().await;

    let cases = [
        (json!({ "version": "v2", "forse": true }), 400, "forse"),
        (json!({ "version": "../etc" }), 422, "version"),
        (json!({ "version": "" }), 422, "version"),
        (json!({ "version": "v2", "env": { "A": 1 } }), 400, "env"),
        (
            json!({ "version": "v1" }),
            409,
            "already the stable release",
        ),
    ];
    for (body, code, needle) in cases {
        let err = h.client.post("/v1/deploy", &body).await.unwrap_err();
        let ClientError::Api {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*status, code, "{body}: {message}");
        assert!(message.contains(needle), "{body}: {message}");
    }
    for verb in ["pause", "resume", "promote", "abort", "rollback"] {
        let err = h.verb(verb).await.unwrap_err();
        let ClientError::Api {
            status, message, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 409, "{verb}");
        assert!(message.contains("nothing to"), "{verb}: {message}");
    }
    let bad = cutover_admin::AdminClient::new(h.running().admin_addr, "not-the-token".into());
    let err = bad
        .post("/v1/deploy", &json!({ "version": "v2" }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Api { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(
        h.status_json().await,
        before,
        "a refused request changed the state"
    );

    // A deploy during a rollout is refused too.
    h.deploy("v2", json!({})).await.unwrap();
    let err = h.deploy("v3", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 409, message, .. } if message.contains("cutover abort")),
        "{err:?}"
    );
    h.verb("abort").await.unwrap();
    h.shutdown().await;
}

/// A release whose executable does not exist is refused with the field and the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_executable_is_a_clear_error() {
    let _g = serial().await;
    let text = common::config().program(&["./releases/{version}/app"]);
    let h = Harness::start_with(text).await;
    let err = h.deploy("v1", json!({})).await.unwrap_err();
    let ClientError::Api {
        status, message, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 422);
    assert!(
        message.contains("app.command[0]") && message.contains("releases/v1/app"),
        "{message}"
    );
    assert!(h.status().await.rollout.is_none());
    h.shutdown().await;
}
