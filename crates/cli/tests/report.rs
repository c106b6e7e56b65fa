//! `cutover report` (issue 14 item 6): its figures equal a hand-computed history, both for a
//! history written through the store's API and for one made of real rollouts; and what a run
//! leaves on disk is owner-only (item 3).

mod common;

use common::{is_promoted, Harness};
use cutover_core::Timestamp;
use cutover_host::render::rfc3339;
use cutover_store::{Commit, CommitInfo, RolloutRecord, ServingRecord, Store};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn cutover(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cutover -c <cfg> args...` on a blocking thread, so an in-process runtime keeps serving it.
async fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-c".to_string(), cfg.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let dir = cfg.parent().unwrap().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        cutover(&args, &dir)
    })
    .await
    .unwrap()
}

fn at(ms: i64) -> String {
    rfc3339(Timestamp(ms as u64))
}

fn rollout(id: i64, service: &str, started_at: i64) -> RolloutRecord {
    RolloutRecord {
        id,
        service: service.into(),
        from_version: None,
        from_digest: None,
        to_version: format!("v{id}"),
        to_digest: format!("d{id}"),
        started_at,
        ended_at: None,
        outcome: None,
    }
}

/// A history written through the store's API, and every figure of the report computed by hand.
#[test]
fn report_figures_equal_a_hand_computed_history() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cutover.toml"), common::config().to_toml()).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let t0: i64 = 1_764_000_000_000;
    let hour = 3_600_000;
    {
        let mut store = Store::open(&dir.path().join("state/cutover.db")).unwrap();
        // (id, service, started, ended, outcome, committed_at)
        type Row<'a> = (i64, &'a str, i64, Option<i64>, Option<&'a str>, Option<i64>);
        let history: [Row; 7] = [
            (1, "api", t0 - 1_000, Some(t0 - 500), Some("done"), None), // before the period
            (
                2,
                "api",
                t0 + 1_000,
                Some(t0 + 61_000),
                Some("promoted"),
                Some(t0 - hour),
            ),
            (
                3,
                "api",
                t0 + 100_000,
                Some(t0 + 130_000),
                Some("aborted"),
                None,
            ),
            (
                4,
                "api",
                t0 + 200_000,
                Some(t0 + 260_000),
                Some("done"),
                Some(t0 + 150_000),
            ),
            (
                5,
                "api",
                t0 + 300_000,
                Some(t0 + 400_000),
                Some("rolled_back"),
                None,
            ),
            (6, "api", t0 + 500_000, None, None, Some(t0 + 450_000)), // still running
            (
                7,
                "worker",
                t0 + 10_000,
                Some(t0 + 20_000),
                Some("done"),
                None,
            ),
        ];
        for (id, service, started, ended, outcome, committed) in history {
            let mut c = Commit::default();
            c.rollouts_started.push(rollout(id, service, started));
            if let Some(sha_at) = committed {
                c.commits.push(CommitInfo {
                    rollout_id: id,
                    commit: format!("{id:040x}"),
                    committed_at: sha_at,
                });
            }
            if let (Some(e), Some(o)) = (ended, outcome) {
                c.rollouts_ended.push((id, e, o.to_string()));
            }
            store.commit(c).unwrap();
        }
        // (at, serving, planned)
        let serving = [
            (t0 - 2_000, true, false),
            (t0 + 390_000, false, false), // down while 5 is rolled back
            (t0 + 420_000, true, false),
            (t0 + 600_000, false, true), // cutover's own shutdown: planned
            (t0 + 700_000, true, false),
            (t0 + 800_000, false, false),
            (t0 + 830_000, true, false),
        ];
        for (at, serving, planned) in serving {
            store
                .record_serving(&ServingRecord {
                    service: "api".into(),
                    at,
                    serving,
                    planned,
                })
                .unwrap();
        }
    }
    let (since, until) = (at(t0), at(t0 + 2 * 24 * hour));
    let (code, out, err) = cutover(
        &["report", "--json", "--since", &since, "--until", &until],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    // By hand: api has 2, 3, 4, 5, 6 in the period (5 over 2 days); 2, 3, 4, 5 finished; 3 and
    // 5 failed. 3 was restored at its abort (30 s after its start); 5 at the end of the outage
    // around its rollback (420 s - 300 s). Lead times: 2: 61 s + 1 h; 4: 260 s - 150 s.
    // Unplanned downtime: 390..420 s and 800..830 s; the shutdown at 600 s is planned.
    let expected = json!({
        "since": since,
        "until": until,
        "services": [
            {
                "service": "api",
                "deployments": 5,
                "deployments_per_day": 2.5,
                "finished": 4,
                "failed": 2,
                "change_failure_rate": 0.5,
                "time_to_restore": { "count": 2, "median_ms": 75_000, "mean_ms": 75_000, "max_ms": 120_000 },
                "lead_time": { "count": 2, "median_ms": 1_885_500, "mean_ms": 1_885_500, "max_ms": 3_661_000 },
                "without_commit_time": 0,
                "unplanned_downtime_ms": 60_000,
                "downtime": [
                    { "from": at(t0 + 390_000), "to": at(t0 + 420_000), "open": false },
                    { "from": at(t0 + 800_000), "to": at(t0 + 830_000), "open": false },
                ],
            },
            {
                "service": "worker",
                "deployments": 1,
                "deployments_per_day": 0.5,
                "finished": 1,
                "failed": 0,
                "change_failure_rate": 0.0,
                "time_to_restore": { "count": 0, "median_ms": null, "mean_ms": null, "max_ms": null },
                "lead_time": { "count": 0, "median_ms": null, "mean_ms": null, "max_ms": null },
                "without_commit_time": 1,
                "unplanned_downtime_ms": 0,
                "downtime": [],
            },
        ],
    });
    assert_eq!(got, expected, "{out}");

    // The table says the same.
    let (code, table, err) = cutover(
        &["report", "--since", &since, "--until", &until],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "service api",
        "deployments           5 (2.50/day)",
        "change failure rate   50.0% (2 of 4 finished)",
        "time to restore       median 1m 15s, mean 1m 15s, max 2m (n=2)",
        "lead time             median 31m 25s 500ms, mean 31m 25s 500ms, max 1h 1m 1s (n=2)",
        "    2025-11-24T16:06:30.000Z → 2025-11-24T16:07:00.000Z",
        "unplanned downtime    1m in 2 period(s)",
        "(1 promoted without --committed-at)",
    ] {
        assert!(table.contains(line), "{line:?} not in:\n{table}");
    }

    // A period that is empty is refused, naming the flags; so is a time that is not one.
    let (code, _, err) = cutover(
        &["report", "--since", &until, "--until", &since],
        dir.path(),
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--since") && err.contains("--until"), "{err}");
    let (code, _, err) = cutover(&["report", "--since", "yesterday"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
}

/// Every file under `dir` with its mode, recursively.
fn modes(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        out.push((e.path(), meta.permissions().mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            modes(&e.path(), out);
        }
    }
}

/// Real rollouts (the deploys naming their commit through the CLI): a first release, a
/// promotion rolled back, a promotion kept. The report's figures equal those computed by hand
/// from the times the store recorded; the graceful shutdown is no downtime. And everything the
/// run left under the state directory is owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rollouts_report_and_leave_private_files() {
    let _g = common::serial().await;
    let h = Harness::start().await;
    let cfg = {
        let text = common::ConfigBuilder::parse(&h.text)
            .admin_listen(h.client.addr())
            .to_toml();
        let path = h.dir.path().join("cli.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let now = cutover_clock::unix_millis() as i64;
    let committed = [now - 7_200_000, now - 3_600_000, now - 60_000];
    let deploy = |version: &'static str, sha: &'static str, t: i64| {
        let cfg = cfg.clone();
        async move {
            let (code, out, err) = cli(
                &cfg,
                &["deploy", version, "--commit", sha, "--committed-at", &at(t)],
            )
            .await;
            assert_eq!(code, 0, "{out}{err}");
        }
    };
    deploy("v1", "aaaa1111", committed[0]).await;
    h.wait_for("v1 stable", LONG, |s| {
        s.stable.as_ref().is_some_and(|r| r.version == "v1")
            && s.rollout
                .as_ref()
                .is_some_and(|r| matches!(r.phase, cutover_core::engine::Phase::Done { .. }))
    })
    .await;
    // Gates need traffic to pass.
    let load = h.load(200, Duration::from_secs(5));
    deploy("v2", "bbbb2222", committed[1]).await;
    h.wait_for("v2 promoted", LONG, is_promoted).await;
    h.verb("rollback").await.unwrap();
    h.wait_for("v2 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v1")
    })
    .await;
    deploy("v3", "cccc3333", committed[2]).await;
    h.wait_for("v3 promoted", LONG, |s| {
        is_promoted(s) && s.rollout.as_ref().is_some_and(|r| r.to.version == "v3")
    })
    .await;
    load.stop().await;
    // A commit time that is not one is refused by the runtime, naming the field.
    let err = h
        .client
        .post(
            "/v1/deploy",
            &json!({ "version": "v4", "commit": "dddd", "committed_at": "yesterday" }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, cutover_admin::ClientError::Api { status: 422, message, .. }
            if message.contains("committed_at") && message.contains("RFC 3339")),
        "{err:?}"
    );
    // A bad pairing is refused before anything happens.
    let (code, _, err) = cli(&cfg, &["deploy", "v4", "--commit", "dddd"]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--committed-at"), "{err}");
    let state = h.running().state_dir.clone();
    // Shut down, but keep the harness (and its temporary directory) to read what is left.
    let mut h = h;
    h.running.take().unwrap().shutdown().await;

    // By hand, from what the store recorded.
    let store = Store::open(&state.join("cutover.db")).unwrap();
    let mut rollouts = store.rollouts(10).unwrap();
    rollouts.reverse();
    let outcomes: Vec<_> = rollouts
        .iter()
        .map(|r| (r.to_version.as_str(), r.outcome.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("v1", Some("done")),
            ("v2", Some("rolled_back")),
            ("v3", Some("promoted"))
        ]
    );
    let (v1, v2, v3) = (&rollouts[0], &rollouts[1], &rollouts[2]);
    let restore = v2.ended_at.unwrap() - v2.started_at;
    let mut leads = [
        v1.ended_at.unwrap() - committed[0],
        v3.ended_at.unwrap() - committed[2],
    ];
    leads.sort();
    let facts = store.serving_facts(i64::MAX).unwrap();
    let facts: Vec<_> = facts.iter().map(|f| (f.serving, f.planned)).collect();
    assert_eq!(
        facts,
        [(true, false), (false, true)],
        "ready once, then shut down on purpose"
    );
    drop(store);

    let (code, out, err) = cli(&cfg, &["report", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let s = &got["services"][0];
    assert_eq!(got["services"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(s["service"], "e2e", "{out}");
    assert_eq!(s["deployments"], 3);
    assert_eq!(s["finished"], 3);
    assert_eq!(s["failed"], 1);
    assert_eq!(s["change_failure_rate"].as_f64(), Some(1.0 / 3.0));
    assert_eq!(
        s["time_to_restore"],
        json!({ "count": 1, "median_ms": restore, "mean_ms": restore, "max_ms": restore })
    );
    assert_eq!(
        s["lead_time"],
        json!({
            "count": 2,
            "median_ms": (leads[0] + leads[1]) / 2,
            "mean_ms": (leads[0] + leads[1]) / 2,
            "max_ms": leads[1],
        })
    );
    assert_eq!(s["without_commit_time"], 0);
    assert_eq!(
        s["unplanned_downtime_ms"], 0,
        "a graceful shutdown is planned"
    );

    // Owner-only, all of it (and the walk did see the database and a log).
    let mut found = Vec::new();
    modes(&state, &mut found);
    assert!(found.iter().any(|(p, _, _)| p.ends_with("cutover.db")));
    assert!(found
        .iter()
        .any(|(p, _, _)| p.extension().is_some_and(|x| x == "log")));
    let state_mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(state_mode, 0o700);
    for (path, mode, dir) in found {
        let want = if dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}
