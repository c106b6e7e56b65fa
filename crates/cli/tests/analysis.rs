//! Analysis end to end: PromQL rules on cutover's own metrics (embedded and on a real
//! Prometheus), Alertmanager's webhook, notification sinks, and `simulate` reproducing live
//! decisions. Real runtime, real demo-app processes, real load, real Prometheus (Debian's).

mod common;

use common::{is_aborted, is_promoted, serial, Harness};
use cutover_core::engine::Phase;
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// The blueprint's abort rule, verbatim (expression and `for`).
const BLUEPRINT: &str = r#"
[[rollout.aborts]]
name = "blueprint-p99"
metric = "promql"
query = "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[30s])) > 0.800"
for = "45s"
"#;

/// A config whose only abort rule is `rule`, with `extra` added.
fn with_rules(rule: &str, extra: &str) -> common::ConfigBuilder {
    // Drop the built-in abort rules: the PromQL rule alone must do the work.
    common::config()
        .no_aborts()
        .merge(rule)
        .merge("[metrics]\nretention = \"2m\"\nprometheus_version = 2\n")
        .merge(extra)
}

/// A gate on a metric only the instances expose (demo-app's own request counter), scraped from
/// their `/metrics` with `track` and `version` added: it can only pass if scraping and labelling
/// work — no data would hold the rollout forever.
const INSTANCE_GATE: &str = r#"
[[rollout.gates]]
name = "canary-serves"
metric = "promql"
query = "sum(rate(demo_requests_total{track=\"{{track}}\", version=\"{{version}}\"}[2s])) < 0.5"
"#;

/// `cutover export` then `cutover simulate` with the harness's config: the printed timeline.
fn simulate_last(h: &Harness) -> String {
    let cfg = h.dir.path().join("cutover.toml");
    let file = h.dir.path().join("run.json");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["export", "-o"]);
    run(&["simulate"])
}

/// The blueprint's rule, verbatim, does not abort a healthy canary, which is promoted while the
/// rule evaluates clear on real data; a gate on the instances' own metrics passes; `simulate`
/// on the recording reproduces the live decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blueprint_rule_leaves_a_healthy_canary_alone() {
    let _g = serial().await;
    let h = Harness::start_with(with_rules(&format!("{BLUEPRINT}\n{INSTANCE_GATE}"), "")).await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    h.deploy("v2", json!({})).await.unwrap();
    let mut evaluated = false;
    let s = h
        .wait_for("v2 promoted", LONG, |s| {
            if let Some(v) = s
                .rollout
                .as_ref()
                .and_then(|r| r.last_evaluation.as_ref())
                .and_then(|e| e.aborts.first())
            {
                assert_ne!(
                    v.outcome,
                    cutover_core::judge::Outcome::Fail,
                    "the rule fired on a healthy canary: {}",
                    v.detail
                );
            }
            is_promoted(s)
        })
        .await;
    let hist = h.client.get("/v1/history?limit=1").await.unwrap();
    let kinds: Vec<&str> = hist["rollouts"][0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"breach_started"), "{kinds:?}");
    // Promoted is how it ended, recorded when it happened: not "in progress" for the hour the
    // previous release is held.
    assert_eq!(hist["rollouts"][0]["outcome"], "promoted", "{hist}");
    assert!(hist["rollouts"][0]["ended_at"].is_string(), "{hist}");
    evaluated |= s.rollout.is_some();
    assert!(evaluated);
    assert_eq!(load.stop().await.failed, 0);
    // The exposition the rule read is served on /metrics, with conventional names and labels.
    let metrics = h.client.get_text("/metrics").await.unwrap();
    assert!(metrics.contains("http_request_duration_seconds_bucket{service=\"e2e\",version=\"v2\",track=\"stable\",le=\"0.8\"}"), "{metrics}");
    assert!(
        metrics.contains("cutover_decisions_total{service=\"e2e\",kind=\"promoted\"}"),
        "{metrics}"
    );
    let r = s.rollout.as_ref().unwrap();
    let gate = r
        .last_evaluation
        .as_ref()
        .unwrap()
        .gates
        .iter()
        .find(|g| g.rule == "canary-serves")
        .cloned()
        .unwrap();
    assert_eq!(
        gate.outcome,
        cutover_core::judge::Outcome::Pass,
        "{}",
        gate.detail
    );
    let text = simulate_last(&h);
    assert!(
        text.contains("the simulated decisions are the live ones")
            && text.contains("simulated: promoted"),
        "{text}"
    );
    h.shutdown().await;
}

/// The blueprint's rule, verbatim, aborts a canary with injected latency: 45 s of breach.
/// `simulate` on the recording reproduces the live decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blueprint_rule_aborts_a_slow_canary_and_simulate_reproduces_it() {
    let _g = serial().await;
    let h = Harness::start_with(with_rules(BLUEPRINT, "")).await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    h.deploy("v2", json!({ "DEMO_LATENCY": "1200ms" }))
        .await
        .unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let Some(Phase::Aborted { reason, .. }) = s.rollout.as_ref().map(|r| &r.phase) else {
        unreachable!()
    };
    assert!(
        reason.contains("blueprint-p99") && reason.contains("for 45"),
        "{reason}"
    );
    load.stop().await;

    let text = simulate_last(&h);
    assert!(
        text.contains("the simulated decisions are the live ones"),
        "{text}"
    );
    assert!(text.contains("simulated: aborted"), "{text}");
    h.shutdown().await;
}

/// Rules on a Prometheus that is down are inconclusive: the rollout holds and never promotes;
/// with `max_inconclusive` it is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_is_inconclusive_and_never_promotes() {
    let _g = serial().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = r#"
[[rollout.aborts]]
name = "remote-errors"
metric = "promql"
provider = "prometheus"
query = "sum(rate(http_requests_total{code=~\"5..\"}[30s])) > 1"
"#;
    let extra =
        format!("[prometheus]\nurl = \"http://{dead}\"\ntimeout = \"200ms\"\nretries = 1\n");
    let text = with_rules(gate, &extra).max_inconclusive("3s");
    let h = Harness::start_with(text).await;
    h.first_release("v1").await;
    let load = h.load(400, Duration::from_secs(5));
    h.deploy("v2", json!({})).await.unwrap();
    // Steps are 400 ms: a judged rollout would be promoted in ~2 s. It is held instead, then
    // aborted when it has been inconclusive for longer than 3 s.
    let s = h
        .wait_for("aborted as inconclusive", LONG, |s| {
            !s.rollout.as_ref().unwrap().phase.is_active()
        })
        .await;
    let r = s.rollout.unwrap();
    let Phase::Aborted { reason, .. } = &r.phase else {
        panic!("not aborted: {:?}", r.phase)
    };
    assert!(
        reason.contains("max_inconclusive") && reason.contains("unreachable"),
        "{reason}"
    );
    assert_eq!(r.step, 0, "never advanced on missing data");
    assert_eq!(load.stop().await.failed, 0);
    h.shutdown().await;
}

/// Alertmanager's webhook aborts a matching rollout and ignores a non-matching alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_webhook_aborts_a_matching_rollout_only() {
    let _g = serial().await;
    let text = common::config()
        .merge("[alerts]\nmatch = { service = \"{{service}}\", severity = \"page\" }\n");
    let h = Harness::start_with(text).await;
    h.first_release("v1").await;
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 progressing", LONG, |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        )
    })
    .await;
    h.verb("pause").await.unwrap();
    let payload = |service: &str, severity: &str, status: &str| {
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"HotWalletLag\"}", "truncatedAlerts": 0, "status": status,
            "receiver": "cutover", "groupLabels": { "alertname": "HotWalletLag" }, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [{ "status": status, "labels": { "alertname": "HotWalletLag", "service": service, "severity": severity },
                         "annotations": { "summary": "replication lag" }, "startsAt": "2026-11-24T11:00:00Z",
                         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": "abc" }]
        })
    };
    let r = h
        .client
        .post("/v1/alerts", &payload("other", "page", "firing"))
        .await
        .unwrap();
    assert_eq!(r["matched"].as_array().unwrap().len(), 0, "{r}");
    let r = h
        .client
        .post("/v1/alerts", &payload("e2e", "ticket", "firing"))
        .await
        .unwrap();
    assert_eq!(r["matched"].as_array().unwrap().len(), 0, "{r}");
    let r = h
        .client
        .post("/v1/alerts", &payload("e2e", "page", "resolved"))
        .await
        .unwrap();
    assert_eq!(r["matched"].as_array().unwrap().len(), 0, "{r}");
    assert!(
        matches!(
            h.status().await.rollout.unwrap().phase,
            Phase::Paused { .. }
        ),
        "non-matching alerts changed nothing"
    );
    let r = h
        .client
        .post("/v1/alerts", &payload("e2e", "page", "firing"))
        .await
        .unwrap();
    assert_eq!(r["matched"], json!(["HotWalletLag"]), "{r}");
    let s = h.status().await;
    let Some(Phase::Aborted {
        reason,
        automatic: true,
        ..
    }) = s.rollout.as_ref().map(|r| &r.phase)
    else {
        panic!("{:?}", s.rollout)
    };
    assert!(
        reason.contains("alert HotWalletLag is firing") && reason.contains("severity=\"page\""),
        "{reason}"
    );
    h.shutdown().await;
}

/// A sink that is down does not delay the rollout; a sink that fails twice gets every event,
/// in order, after retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_notification_sink_does_not_delay_the_rollout() {
    let _g = serial().await;
    let dead = common::dead_addr().await;
    // A webhook receiver that answers 500 to its first two requests.
    let receiver = common::upstream()
        .otherwise(|_, n| common::Reply::new(if n <= 2 { 500 } else { 200 }, ""))
        .spawn()
        .await;
    let flaky = receiver.addr;
    let sinks = format!(
        "[[notify]]\nname = \"down\"\nurl = \"http://{dead}/hook\"\ntimeout = \"2s\"\nmax_attempts = 10\n\n\
         [[notify]]\nname = \"flaky\"\nurl = \"http://{flaky}/hook\"\nformat = \"json\"\n"
    );
    let h = Harness::start_with(common::config().merge(&sinks)).await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 promoted", LONG, is_promoted).await;
    // Five 400 ms steps: promoted in a few seconds although every delivery to "down" fails.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(load.stop().await.failed, 0);
    let kinds = common::eventually(LONG, "promoted delivered", || {
        // The bodies it accepted: every request after the first two.
        let kinds: Vec<String> = receiver
            .seen()
            .iter()
            .skip(2)
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default())
            .filter(|n| n["rollout"] == 2)
            .map(|n| n["kind"].as_str().unwrap_or("").to_string())
            .collect();
        std::future::ready(if kinds.last().map(String::as_str) == Some("promoted") {
            Ok(kinds)
        } else {
            Err(format!("{kinds:?}"))
        })
    })
    .await;
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("started"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "step").count() >= 5,
        "{kinds:?}"
    );
    assert!(
        receiver.hits() >= 2 + 7,
        "the first two attempts failed and were retried"
    );
    h.shutdown().await;
}

/// Equivalence with a real Prometheus (Debian's, started on loopback): it scrapes cutover's
/// admin `/metrics` every 100 ms while a slow canary rolls out under load. The same rule, once
/// on the embedded evaluator and once on Prometheus, reaches the same verdict (both fire and the
/// canary is aborted); on the same data — Prometheus's own samples copied into a series store —
/// the two evaluators agree on the blueprint's expressions to 1e-9; and `simulate --prometheus`
/// over the run concludes the canary would have been aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_evaluator_and_prometheus_agree_on_cutovers_metrics() {
    use cutover_prometheus::harness::{PrometheusOptions, PrometheusServer, ScrapeTarget};
    use std::os::unix::fs::OpenOptionsExt;
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.path().join("state/admin.token"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()))
        .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let prom = PrometheusServer::start(PrometheusOptions {
        targets: vec![ScrapeTarget {
            addr: admin,
            metrics_path: "/metrics".into(),
            bearer_token: Some(token.into()),
            labels: Default::default(),
        }],
        scrape_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("prometheus starts (scripts/test installs Debian's package)");

    let query = "histogram_quantile(0.99, sum by (le, track) (rate(http_request_duration_seconds_bucket[3s]))) > 0.800";
    let rules = format!(
        "[[rollout.aborts]]\nname = \"p99-embedded\"\nmetric = \"promql\"\nquery = {query:?}\nfor = \"1s\"\n\n\
         [[rollout.aborts]]\nname = \"p99-prometheus\"\nmetric = \"promql\"\nprovider = \"prometheus\"\nquery = {query:?}\nfor = \"1s\"\n"
    );
    // Debian's Prometheus is 2.42: the embedded rules follow its semantics.
    let extra = format!(
        "[prometheus]\nurl = \"{}\"\ntimeout = \"1s\"\nretries = 1\n",
        prom.url()
    );
    let text = with_rules(&rules, &extra).admin_listen(admin);
    assert!(text.to_toml().contains(&admin.to_string()));
    let h = Harness::start_in(dir, text).await;
    h.first_release("v1").await;
    let load = h.load(300, Duration::from_secs(5));
    prom.wait_for_samples("http_request_duration_seconds_count", 20, LONG)
        .await
        .unwrap();
    let from = cutover_prometheus::harness::now_ms();
    h.deploy("v2", json!({ "DEMO_LATENCY": "1200ms" }))
        .await
        .unwrap();
    let s = h.wait_for("v2 aborted", LONG, is_aborted).await;
    let r = s.rollout.clone().unwrap();
    let aborts = &r.last_evaluation.as_ref().unwrap().aborts;
    let verdict = |name: &str| aborts.iter().find(|v| v.rule == name).map(|v| v.outcome);
    assert_eq!(
        verdict("p99-embedded"),
        Some(cutover_core::judge::Outcome::Fail),
        "{aborts:?}"
    );
    assert_eq!(
        verdict("p99-prometheus"),
        Some(cutover_core::judge::Outcome::Fail),
        "{aborts:?}"
    );
    // Keep stable's traffic flowing a little, then compare on Prometheus's own samples.
    tokio::time::sleep(Duration::from_millis(500)).await; // more scrapes to compare, not a sync
    load.stop().await;
    let to = cutover_prometheus::harness::now_ms();
    let client = prom.client();
    let raw = client
        .raw_series("{__name__=~\"http_request.*\"}", to, 600_000)
        .await
        .unwrap();
    assert!(!raw.is_empty());
    let mut store = cutover_promql::MemStore::new(3_600_000);
    store.import(raw);
    let opts = cutover_promql::EvalOptions {
        compat: cutover_promql::Compat::V2,
        ..Default::default()
    };
    let exprs = [
        "histogram_quantile(0.99, sum by (le, track) (rate(http_request_duration_seconds_bucket[3s])))",
        "sum by (track) (rate(http_requests_total[3s]))",
        "sum by (version) (increase(http_request_duration_seconds_count[5s]))",
        "sum(rate(http_requests_total{code=~\"5..\"}[3s])) / sum(rate(http_requests_total[3s]))",
        query,
    ];
    let mut compared = 0;
    for at in [from + 1500, from + 3000, (from + to) / 2, to - 300] {
        for e in exprs {
            let ours = cutover_promql::Query::parse(e)
                .unwrap()
                .eval(&store, at, &opts)
                .unwrap();
            let theirs = client.query(e, at).await.unwrap();
            let (cutover_promql::Value::Vector(mut a), cutover_promql::Value::Vector(mut b)) =
                (ours, theirs)
            else {
                panic!("{e}: not vectors")
            };
            a.sort_by(|x, y| x.labels.cmp(&y.labels));
            b.sort_by(|x, y| x.labels.cmp(&y.labels));
            assert_eq!(
                a.iter().map(|s| &s.labels).collect::<Vec<_>>(),
                b.iter().map(|s| &s.labels).collect::<Vec<_>>(),
                "{e} at {at}"
            );
            for (x, y) in a.iter().zip(&b) {
                let same = (x.value.is_nan() && y.value.is_nan())
                    || (x.value - y.value).abs() <= 1e-9 * x.value.abs().max(1.0);
                assert!(
                    same,
                    "{e} at {at}: embedded {} vs prometheus {}",
                    x.value, y.value
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 10, "only {compared} values compared");

    // simulate from Prometheus: the same policy, replayed on Prometheus's measurements.
    let cfg = h.dir.path().join("cutover.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "simulate",
            "--prometheus",
            prom.url(),
            "--stable",
            "v1",
            "--canary",
            "v2",
        ])
        .args([
            "--from",
            &format!("{}", from as f64 / 1000.0),
            "--to",
            &format!("{}", to as f64 / 1000.0),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("simulated: aborted"), "{text}");
    h.shutdown().await;
    prom.stop().await.unwrap();
}
