//! The client against a scripted fake Prometheus: encoding, decoding, retries, error kinds and
//! rule verdicts.

mod support;

use std::time::Duration;

use cutover_prometheus::{PrometheusClient, ProviderError};
use cutover_promql::{Query, RuleResult, Value};
use support::{respond, vector, FakePrometheus};
use tokio::time::Instant;

const T: i64 = 1_700_000_000_250;

fn client(url: &str, retries: u32) -> PrometheusClient {
    PrometheusClient::new(url, Duration::from_secs(2), retries).unwrap()
}

#[tokio::test]
async fn query_encodes_the_query_and_time_and_decodes_the_vector() {
    let fake = FakePrometheus::start(|_, _| {
        respond(
            200,
            vector(&[(&[("track", "canary")], "+Inf"), (&[], "0.25")]),
        )
    })
    .await;
    let q = r#"sum by (track) (rate(http_requests_total{code=~"5.."}[2s])) / 2 + 1"#;
    let Value::Vector(v) = client(&fake.server.url(), 0).query(q, T).await.unwrap() else {
        panic!("not a vector")
    };
    assert_eq!(v[0].labels["track"], "canary");
    assert_eq!(v[0].value, f64::INFINITY);
    assert_eq!(v[1].value, 0.25);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen[0]["query"], q);
    assert_eq!(seen[0]["time"], "1700000000.250");
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let fake = FakePrometheus::start(|n, _| match n {
        1 | 2 => respond(
            503,
            r#"{"status":"error","errorType":"unavailable","error":"busy"}"#,
        ),
        _ => respond(200, vector(&[(&[], "1")])),
    })
    .await;
    let started = Instant::now();
    assert!(client(&fake.server.url(), 2).query("up", T).await.is_ok());
    assert_eq!(fake.queries().len(), 3);
    // Backoff 100 ms then 200 ms.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn persistent_server_errors_are_unreachable_with_the_last_message() {
    let fake = FakePrometheus::start(|_, _| {
        respond(
            500,
            r#"{"status":"error","errorType":"internal","error":"disk on fire"}"#,
        )
    })
    .await;
    let e = client(&fake.server.url(), 1)
        .query("up", T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Unreachable { attempts: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("disk on fire"), "{e}");
    assert_eq!(fake.queries().len(), 2);
}

#[tokio::test]
async fn a_rejected_query_is_not_retried_and_keeps_prometheus_message() {
    let fake = FakePrometheus::start(|_, _| {
        respond(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:6: parse error: unexpected end of input"}"#,
        )
    })
    .await;
    let e = client(&fake.server.url(), 3)
        .query("rate(", T)
        .await
        .unwrap_err();
    let ProviderError::BadQuery { query, message } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(query, "rate(");
    assert!(message.contains("unexpected end of input"), "{message}");
    assert_eq!(fake.queries().len(), 1);
}

#[tokio::test]
async fn non_api_answers_are_bad_responses() {
    let fake = FakePrometheus::start(|n, _| match n {
        1 => respond(404, "404 page not found"),
        _ => respond(200, "<html>a login page</html>"),
    })
    .await;
    let c = client(&fake.server.url(), 3);
    for _ in 0..2 {
        let e = c.query("up", T).await.unwrap_err();
        assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
    }
    assert_eq!(fake.queries().len(), 2);
}

#[tokio::test]
async fn nothing_listening_is_unreachable_after_the_retries_in_bounded_time() {
    // Bind then release a port so that nothing listens on it.
    let addr = cutover_testkit::dead_addr().await;
    let started = Instant::now();
    let e = client(&format!("http://{addr}"), 2)
        .query("up", T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Unreachable { attempts: 3, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "Prometheus at http://{addr} unreachable after 3 attempts: "
        )),
        "{msg}"
    );
    // 100 + 200 ms of backoff, connects refused at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hanging_server_times_out_per_attempt() {
    // Accepts connections and never answers.
    let hold = cutover_testkit::silent().await;
    let addr = hold.addr;
    let c =
        PrometheusClient::new(&format!("http://{addr}"), Duration::from_millis(150), 1).unwrap();
    let started = Instant::now();
    let e = c.query("up", T).await.unwrap_err();
    assert!(
        matches!(e, ProviderError::Timeout { attempts: 2, .. }),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(e.to_string().contains("did not answer within 150ms"), "{e}");
    drop(hold);
}

#[tokio::test]
async fn eval_rule_sends_the_vector_side_and_compares_locally() {
    let fake = FakePrometheus::start(|_, p| {
        let q = &p["query"];
        if q.starts_with("histogram_quantile") {
            respond(
                200,
                vector(&[
                    (&[("track", "canary")], "0.9"),
                    (&[("track", "stable")], "0.2"),
                ]),
            )
        } else if q.starts_with("sum(rate(absent_metric") {
            respond(200, vector(&[]))
        } else if q == "scalar(threshold)" {
            respond(
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.95"]}}"#,
            )
        } else {
            respond(
                400,
                r#"{"status":"error","errorType":"bad_data","error":"unexpected query"}"#,
            )
        }
    })
    .await;
    let c = client(&fake.server.url(), 0);
    let hq = "histogram_quantile(0.99, sum by (le, track) (rate(http_request_duration_seconds_bucket[2s])))";
    let rule = |text: &str| Query::parse(text).unwrap();

    let fired = c.eval_rule(&rule(&format!("{hq} > 0.8")), T).await.unwrap();
    assert_eq!(fired, RuleResult::Fired { value: Some(0.9) });
    assert_eq!(
        fake.queries().last().unwrap(),
        hq,
        "only the vector side is sent"
    );

    let clear = c.eval_rule(&rule(&format!("{hq} > 1")), T).await.unwrap();
    assert_eq!(clear, RuleResult::Clear { value: Some(0.9) });
    // Threshold on the left means the same as on the right, flipped.
    let left = c.eval_rule(&rule(&format!("0.5 > {hq}")), T).await.unwrap();
    assert_eq!(left, RuleResult::Fired { value: Some(0.2) });
    let scalar_side = c
        .eval_rule(&rule(&format!("{hq} > scalar(threshold)")), T)
        .await
        .unwrap();
    assert_eq!(scalar_side, RuleResult::Clear { value: Some(0.9) });

    let none = c
        .eval_rule(&rule("sum(rate(absent_metric[1m])) > 0"), T)
        .await
        .unwrap();
    assert_eq!(none, RuleResult::NoData);

    let e = c
        .eval_rule(&rule("sum(rate(other[1m])) > 0"), T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::BadQuery { ref message, .. } if message.contains("unexpected query"))
    );
}
