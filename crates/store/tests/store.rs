use cutover_store::{
    Commit, DecisionRecord, ReleaseRecord, RolloutRecord, Store, StoreError, SCHEMA_VERSION,
};
use serde_json::json;
use tempfile::TempDir;

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

fn release(digest: &str) -> ReleaseRecord {
    ReleaseRecord {
        digest: digest.into(),
        name: "api".into(),
        exe_sha256: "ab".repeat(32),
        spec: json!({"version": digest, "args": ["--port", "0"]}),
        created_at: 1_000,
        failed_at: None,
        failed_reason: None,
    }
}

fn rollout(id: i64, started_at: i64) -> RolloutRecord {
    RolloutRecord {
        id,
        service: "api".into(),
        from_version: Some("v1".into()),
        from_digest: Some("d1".into()),
        to_version: "v2".into(),
        to_digest: "d2".into(),
        started_at,
        ended_at: None,
        outcome: None,
    }
}

fn decision(rollout_id: Option<i64>, at: i64, kind: &str) -> DecisionRecord {
    DecisionRecord {
        seq: None,
        rollout_id,
        at,
        kind: kind.into(),
        reason: format!("{kind} because p99 within 5%"),
        numbers: json!({"p99_ms": 120.5, "weight_bp": 200}),
        hash: None,
    }
}

#[test]
fn open_sets_wal_and_schema_version() {
    let (dir, store) = open();
    assert_eq!(store.journal_mode().unwrap(), "wal");
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn round_trips_everything() {
    let (_dir, mut store) = open();
    assert_eq!(store.load_snapshot().unwrap(), None);
    store
        .commit(Commit {
            snapshot: Some(json!({"phase": "Progressing", "step": 2})),
            decisions: vec![
                decision(Some(1), 10, "start"),
                decision(Some(1), 20, "advance"),
            ],
            releases: vec![release("d1"), release("d2")],
            failed: vec![],
            rollouts_started: vec![rollout(1, 5)],
            rollouts_ended: vec![],
            events: vec![],
            commits: vec![],
        })
        .unwrap();
    store
        .commit(Commit {
            snapshot: Some(json!({"phase": "Aborted"})),
            decisions: vec![decision(Some(1), 30, "abort"), decision(None, 40, "note")],
            failed: vec![("d2".into(), 30, "p99 > 800ms for 45s".into())],
            rollouts_ended: vec![(1, 30, "aborted".into())],
            ..Commit::default()
        })
        .unwrap();

    assert_eq!(
        store.load_snapshot().unwrap(),
        Some(json!({"phase": "Aborted"}))
    );
    assert_eq!(store.release("d1").unwrap(), Some(release("d1")));
    assert_eq!(store.release("nope").unwrap(), None);
    assert_eq!(store.releases().unwrap().len(), 2);
    assert_eq!(store.is_failed("d1").unwrap(), None);
    assert_eq!(
        store.is_failed("d2").unwrap(),
        Some((30, "p99 > 800ms for 45s".into()))
    );

    let rollouts = store.rollouts(10).unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].ended_at, Some(30));
    assert_eq!(rollouts[0].outcome.as_deref(), Some("aborted"));
    assert_eq!(store.max_rollout_id().unwrap(), Some(1));

    let all = store.decisions(None, 100).unwrap();
    let kinds: Vec<_> = all.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["start", "advance", "abort", "note"]);
    // The store's own `audit.*` records share the sequence but are not the engine's decisions.
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "{all:?}");
    assert_eq!(all[0].numbers, json!({"p99_ms": 120.5, "weight_bp": 200}));
    let of_rollout = store.decisions(Some(1), 100).unwrap();
    assert_eq!(of_rollout.len(), 3);
    // The limit keeps the most recent rows, still in chronological order.
    let tail: Vec<_> = store
        .decisions(None, 2)
        .unwrap()
        .into_iter()
        .map(|d| d.kind)
        .collect();
    assert_eq!(tail, ["abort", "note"]);
}

#[test]
fn upsert_keeps_created_at_and_failure() {
    let (_dir, mut store) = open();
    store
        .commit(Commit {
            releases: vec![release("d1")],
            failed: vec![("d1".into(), 50, "crash loop".into())],
            ..Commit::default()
        })
        .unwrap();
    let mut again = release("d1");
    again.created_at = 9_999;
    again.name = "api2".into();
    store
        .commit(Commit {
            releases: vec![again],
            ..Commit::default()
        })
        .unwrap();
    let r = store.release("d1").unwrap().unwrap();
    assert_eq!((r.name.as_str(), r.created_at), ("api2", 1_000));
    assert_eq!(r.failed_at, Some(50));
}

#[test]
fn rollouts_are_newest_first() {
    let (_dir, mut store) = open();
    store
        .commit(Commit {
            rollouts_started: vec![rollout(1, 100), rollout(2, 200), rollout(3, 300)],
            ..Commit::default()
        })
        .unwrap();
    let ids: Vec<_> = store.rollouts(2).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [3, 2]);
    assert_eq!(store.rollout(2).unwrap().map(|r| r.started_at), Some(200));
    assert_eq!(store.rollout(9).unwrap(), None);
}

#[test]
fn a_failing_commit_writes_nothing() {
    let (_dir, mut store) = open();
    store
        .commit(Commit {
            snapshot: Some(json!({"v": 1})),
            rollouts_started: vec![rollout(1, 1)],
            decisions: vec![decision(Some(1), 1, "start")],
            ..Commit::default()
        })
        .unwrap();
    // Everything before the duplicate rollout id, and everything after it, must be rolled back.
    let err = store
        .commit(Commit {
            snapshot: Some(json!({"v": 2})),
            decisions: vec![decision(Some(2), 2, "start")],
            releases: vec![release("d9")],
            failed: vec![],
            rollouts_started: vec![rollout(2, 2), rollout(1, 2)],
            rollouts_ended: vec![],
            events: vec![],
            commits: vec![],
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
    assert_eq!(store.load_snapshot().unwrap(), Some(json!({"v": 1})));
    assert_eq!(store.release("d9").unwrap(), None);
    assert_eq!(store.rollouts(10).unwrap().len(), 1);
    assert_eq!(store.decisions(None, 10).unwrap().len(), 1);
    assert!(store.verify_chain().unwrap().ok);

    // Unknown references fail the same way.
    let err = store
        .commit(Commit {
            releases: vec![release("d8")],
            rollouts_ended: vec![(42, 5, "done".into())],
            ..Commit::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownRollout(42)), "{err}");
    assert_eq!(store.release("d8").unwrap(), None);
    let err = store
        .commit(Commit {
            failed: vec![("ghost".into(), 5, "x".into())],
            ..Commit::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[test]
fn reopen_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path).unwrap();
        store
            .commit(Commit {
                snapshot: Some(json!({"phase": "Paused"})),
                decisions: vec![decision(None, 1, "pause")],
                rollouts_started: vec![rollout(7, 1)],
                ..Commit::default()
            })
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(
        store.load_snapshot().unwrap(),
        Some(json!({"phase": "Paused"}))
    );
    assert_eq!(store.rollouts(1).unwrap()[0].id, 7);
    // The chain continues across a reopen.
    store
        .commit(Commit {
            decisions: vec![decision(None, 2, "resume")],
            ..Commit::default()
        })
        .unwrap();
    // audit.keyed, the rollout's start, pause, resume.
    let report = store.verify_chain().unwrap();
    assert_eq!((report.rows, report.ok), (4, true), "{report:?}");
}

fn store_with_chain(n: i64) -> (TempDir, Store) {
    let (dir, mut store) = open();
    for i in 0..n {
        store
            .commit(Commit {
                decisions: vec![decision(Some(1), i, "tick")],
                ..Commit::default()
            })
            .unwrap();
    }
    (dir, store)
}

fn tamper(dir: &TempDir, sql: &str) {
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn chain_links_rows() {
    let (_dir, store) = store_with_chain(3);
    let rows = store.decisions(None, 10).unwrap();
    assert!(rows.iter().all(|d| d.hash.as_ref().unwrap().len() == 64));
    // Row 1 is the `audit.keyed` record a new store starts with.
    let report = store.verify_chain().unwrap();
    assert_eq!(
        (report.rows, report.ok, report.first_bad_seq),
        (4, true, None)
    );
}

#[test]
fn tampering_with_a_reason_is_detected() {
    let (dir, store) = store_with_chain(5);
    tamper(
        &dir,
        "UPDATE decisions SET reason = 'all good' WHERE seq = 3",
    );
    let report = store.verify_chain().unwrap();
    assert_eq!(
        (report.rows, report.ok, report.first_bad_seq),
        (6, false, Some(3))
    );
}

#[test]
fn tampering_with_numbers_is_detected() {
    let (dir, store) = store_with_chain(3);
    tamper(
        &dir,
        r#"UPDATE decisions SET numbers_json = '{"p99_ms":1}' WHERE seq = 2"#,
    );
    assert_eq!(store.verify_chain().unwrap().first_bad_seq, Some(2));
}

#[test]
fn deleting_a_row_is_detected() {
    let (dir, store) = store_with_chain(4);
    tamper(&dir, "DELETE FROM decisions WHERE seq = 2");
    let report = store.verify_chain().unwrap();
    assert_eq!(
        (report.rows, report.ok, report.first_bad_seq),
        (4, false, Some(3))
    );
}

#[test]
fn rehashing_one_row_breaks_the_next_link() {
    let (dir, store) = store_with_chain(3);
    tamper(
        &dir,
        "UPDATE decisions SET hash = 'ff' || substr(hash, 3) WHERE seq = 1",
    );
    assert_eq!(store.verify_chain().unwrap().first_bad_seq, Some(1));
}

#[test]
fn events_are_recorded_per_rollout_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = cutover_store::Store::open(&dir.path().join("s.db")).unwrap();
    let ev = |rollout_id, at, n: i64| cutover_store::EventRecord {
        rollout_id,
        at,
        event: serde_json::json!({ "event": "tick", "n": n }),
        state_before: (n == 0).then(|| serde_json::json!({ "stable": null })),
    };
    store
        .commit(cutover_store::Commit {
            events: vec![ev(1, 10, 0), ev(2, 11, 0), ev(1, 12, 1)],
            ..Default::default()
        })
        .unwrap();
    let got = store.events(1).unwrap();
    assert_eq!(got, vec![ev(1, 10, 0), ev(1, 12, 1)]);
    assert!(store.events(3).unwrap().is_empty());
}
