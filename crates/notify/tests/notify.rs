//! Delivery end to end, against real HTTP receivers on loopback.

mod testkit;

use cutover_notify::{Format, Notifier, NotifyError, NotifyKind};
use serde_json::json;
use std::time::Duration;
use testkit::{eventually, notice, refused_url, silent_url, sink, Receiver};

/// Generous: these bound a wait on a condition, they are not expected durations.
const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn json_and_slack_payloads_arrive_well_formed() {
    let json_rx = Receiver::ok().await;
    let slack_rx = Receiver::ok().await;
    let mut slack = sink("slack", &slack_rx.url());
    slack.format = Format::Slack;
    let notifier = Notifier::start(vec![sink("json", &json_rx.url()), slack], 16).unwrap();

    let n = notice("rolled_back", "error ratio 3.1% > 2%");
    notifier.notify(n.clone());
    assert!(notifier.flush(PROMPTLY).await);

    let got = json_rx.wait_for(1, PROMPTLY).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(got[0].body, serde_json::to_value(&n).unwrap());

    let got = slack_rx.wait_for(1, PROMPTLY).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    let body = &got[0].body;
    let text = body["text"].as_str().expect("slack text is a string");
    assert_eq!(
        text,
        ":rotating_light: *checkout* rolled_back `v2` (rollout 7): error ratio 3.1% &gt; 2%"
    );
    let blocks = body["blocks"].as_array().expect("slack blocks");
    assert_eq!(
        blocks[0],
        json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    );
    assert_eq!(blocks[1]["type"], "context");
    let numbers: Vec<&str> = blocks[1]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "mrkdwn");
            e["text"].as_str().unwrap()
        })
        .collect();
    assert!(numbers.contains(&"*weight*: 25"), "{numbers:?}");
    assert!(numbers.contains(&"*error_ratio*: 0.031"), "{numbers:?}");

    for s in notifier.stats() {
        assert_eq!(
            (s.delivered, s.failed, s.retried, s.dropped, s.queued),
            (1, 0, 0, 0, 0)
        );
    }
}

#[tokio::test]
async fn kinds_filter_what_a_sink_receives() {
    let pager_rx = Receiver::ok().await;
    let all_rx = Receiver::ok().await;
    let mut pager = sink("pager", &pager_rx.url());
    pager.kinds = Some(vec![NotifyKind::Aborted, NotifyKind::RolledBack]);
    let notifier = Notifier::start(vec![pager, sink("all", &all_rx.url())], 16).unwrap();

    for (i, kind) in ["started", "step", "rolled_back", "paused", "aborted"]
        .iter()
        .enumerate()
    {
        notifier.notify(notice(kind, &i.to_string()));
    }
    assert!(notifier.flush(PROMPTLY).await);

    let kinds = |rx: &Receiver| -> Vec<String> {
        rx.received()
            .iter()
            .map(|r| r.body["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&pager_rx), ["rolled_back", "aborted"]);
    assert_eq!(
        kinds(&all_rx),
        ["started", "step", "rolled_back", "paused", "aborted"]
    );
    let stats = notifier.stats();
    assert_eq!((stats[0].name.as_str(), stats[0].delivered), ("pager", 2));
    assert_eq!((stats[1].name.as_str(), stats[1].delivered), ("all", 5));
}

#[tokio::test]
async fn failed_attempts_are_retried_in_order() {
    // The first two attempts get a 500, everything after a 200.
    let rx = Receiver::start(|i| if i < 2 { 500 } else { 200 }).await;
    let notifier = Notifier::start(vec![sink("flaky", &rx.url())], 16).unwrap();

    notifier.notify(notice("step", "A"));
    notifier.notify(notice("step", "B"));
    assert!(notifier.flush(PROMPTLY).await);

    let reasons: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.reason().to_owned())
        .collect();
    // A is retried until it lands; B is not sent before A is done with.
    assert_eq!(reasons, ["A", "A", "A", "B"]);
    let s = &notifier.stats()[0];
    assert_eq!(
        (s.delivered, s.retried, s.failed, s.dropped, s.queued),
        (2, 2, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_notice_is_given_up_after_max_attempts_and_the_next_one_still_goes() {
    // Attempts 0..3 fail (all of A's), then everything succeeds.
    let rx = Receiver::start(|i| if i < 3 { 503 } else { 204 }).await;
    let notifier = Notifier::start(vec![sink("down", &rx.url())], 16).unwrap();

    notifier.notify(notice("step", "A"));
    notifier.notify(notice("promoted", "B"));
    assert!(notifier.flush(PROMPTLY).await);

    let reasons: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.reason().to_owned())
        .collect();
    assert_eq!(reasons, ["A", "A", "A", "B"]);
    let s = &notifier.stats()[0];
    assert_eq!((s.delivered, s.failed, s.retried), (1, 1, 2));
}

#[tokio::test]
async fn an_attempt_that_gets_no_answer_times_out_and_counts_as_failed() {
    let (url, _silent) = silent_url().await;
    let mut s = sink("silent", &url);
    s.timeout = Duration::from_millis(100);
    s.max_attempts = 2;
    let notifier = Notifier::start(vec![s], 16).unwrap();

    notifier.notify(notice("step", "A"));
    assert!(notifier.flush(PROMPTLY).await);
    let s = &notifier.stats()[0];
    assert_eq!((s.delivered, s.failed, s.retried, s.queued), (0, 1, 1, 0));
}

#[tokio::test]
async fn a_dead_sink_never_blocks_notify_nor_delays_a_healthy_sink() {
    let healthy_rx = Receiver::ok().await;
    let mut dead = sink("dead", &refused_url().await);
    dead.max_attempts = 5;
    let notifier = Notifier::start(vec![dead, sink("healthy", &healthy_rx.url())], 256).unwrap();

    // A bound on "never blocks", not a performance claim: 10 000 calls while one sink refuses
    // every connection must return at once.
    let started = tokio::time::Instant::now();
    for i in 0..10_000 {
        notifier.notify(notice("step", &i.to_string()));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "10 000 notify calls took {took:?}"
    );

    let stats = notifier.stats();
    let (dead, healthy) = (&stats[0], &stats[1]);
    assert!(dead.dropped > 0, "{dead:?}");
    assert!(dead.dropped + dead.queued <= 10_000, "{dead:?}");
    // The loop never yielded, so the healthy sink's queue filled too; what it accepted it
    // delivers, in order, while the dead sink is still retrying.
    let accepted = (10_000 - healthy.dropped) as usize;
    let got = healthy_rx.wait_for(accepted, PROMPTLY).await;
    let expected: Vec<String> = (0..accepted).map(|i| i.to_string()).collect();
    let reasons: Vec<String> = got.iter().map(|r| r.reason().to_owned()).collect();
    assert_eq!(reasons, expected);

    // Once the burst is over, the healthy sink gets each new notice promptly, although the dead
    // sink's queue is still full.
    for i in 0..20 {
        notifier.notify(notice("promoted", &format!("after-{i}")));
    }
    let got = healthy_rx.wait_for(accepted + 20, PROMPTLY).await;
    assert_eq!(got.last().unwrap().reason(), "after-19");
    // The receiver logs a request before its answer reaches the sink's worker.
    eventually(PROMPTLY, "healthy sink counts its deliveries", || {
        notifier.stats()[1].queued == 0
    })
    .await;
    let stats = notifier.stats();
    let (dead, healthy) = (&stats[0], &stats[1]);
    assert_eq!(healthy.delivered, accepted as u64 + 20);
    assert_eq!(dead.delivered, 0);
    assert!(dead.queued > 0, "the dead sink is still retrying: {dead:?}");

    // flush gives up at its deadline rather than waiting on the dead sink.
    let started = tokio::time::Instant::now();
    assert!(!notifier.flush(Duration::from_millis(100)).await);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn flush_waits_for_delivery_and_returns_at_once_when_idle() {
    let rx = Receiver::start(|i| if i % 2 == 0 { 500 } else { 200 }).await;
    let notifier = Notifier::start(vec![sink("s", &rx.url())], 64).unwrap();
    assert!(
        notifier.flush(Duration::ZERO).await,
        "nothing queued: flushed"
    );

    for i in 0..10 {
        notifier.notify(notice("step", &i.to_string()));
    }
    assert!(notifier.stats()[0].queued > 0);
    assert!(notifier.flush(PROMPTLY).await);
    // Flushed means done with: every notice retried once, then delivered.
    let s = &notifier.stats()[0];
    assert_eq!((s.delivered, s.retried, s.queued), (10, 10, 0));
    assert_eq!(rx.received().len(), 20);
}

#[tokio::test]
async fn invalid_configuration_is_refused_naming_the_sink() {
    let ok = sink("ok", "http://127.0.0.1:9/hook");
    let cases = [
        (
            sink("slack", "https://hooks.slack.com/services/T/B/X"),
            "\"slack\"",
        ),
        (sink("typo", "htp://127.0.0.1/hook"), "\"typo\""),
        (sink("nohost", "/hook"), "\"nohost\""),
    ];
    for (bad, name) in cases {
        let err = Notifier::start(vec![ok.clone(), bad], 16)
            .err()
            .expect("refused");
        assert!(matches!(err, NotifyError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(
            err.to_string().contains("http://"),
            "says what to use: {err}"
        );
    }

    let err = Notifier::start(vec![ok.clone(), ok.clone()], 16)
        .err()
        .unwrap();
    assert!(
        matches!(err, NotifyError::DuplicateName(ref n) if n == "ok"),
        "{err}"
    );
    let err = Notifier::start(vec![ok.clone()], 0).err().unwrap();
    assert!(matches!(err, NotifyError::ZeroQueue), "{err}");
    let mut bad = ok.clone();
    bad.backoff_max = Duration::ZERO;
    let err = Notifier::start(vec![bad], 16).err().unwrap();
    assert!(err.to_string().contains("backoff_max"), "{err}");
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Notifier::start(vec![sink("ok", "http://127.0.0.1:9/")], 16)
        .err()
        .unwrap();
    assert!(matches!(err, NotifyError::NoRuntime), "{err}");
}
