//! The facts `cutover report` reads: a rollout's commit (written with its start, in the same
//! transaction) and the serving changes.

use cutover_store::{Commit, CommitInfo, DeployRow, RolloutRecord, ServingRecord, Store};

fn rollout(id: i64, started_at: i64) -> RolloutRecord {
    RolloutRecord {
        id,
        service: "api".into(),
        from_version: None,
        from_digest: None,
        to_version: format!("v{id}"),
        to_digest: format!("d{id}"),
        started_at,
        ended_at: None,
        outcome: None,
    }
}

#[test]
fn commits_and_serving_changes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("state.db")).unwrap();
    let info = |id| CommitInfo {
        rollout_id: id,
        commit: "abc123".into(),
        committed_at: 7,
    };
    store
        .commit(Commit {
            rollouts_started: vec![rollout(1, 10)],
            commits: vec![info(1)],
            ..Commit::default()
        })
        .unwrap();
    store
        .commit(Commit {
            rollouts_started: vec![rollout(2, 20)],
            rollouts_ended: vec![(2, 25, "aborted".into())],
            ..Commit::default()
        })
        .unwrap();
    // A second commit for a rollout fails the whole batch: the rollout 3 is not written either.
    let err = store.commit(Commit {
        rollouts_started: vec![rollout(3, 30)],
        commits: vec![info(1)],
        ..Commit::default()
    });
    assert!(err.is_err());
    assert_eq!(store.rollout(3).unwrap(), None);

    let got = store.deploys(i64::MAX).unwrap();
    assert_eq!(
        got,
        [
            DeployRow {
                id: 1,
                service: "api".into(),
                started_at: 10,
                ended_at: None,
                outcome: None,
                commit: Some("abc123".into()),
                committed_at: Some(7),
            },
            DeployRow {
                id: 2,
                service: "api".into(),
                started_at: 20,
                ended_at: Some(25),
                outcome: Some("aborted".into()),
                commit: None,
                committed_at: None,
            },
        ]
    );
    assert_eq!(store.deploys(20).unwrap().len(), 1, "until is excluded");

    assert_eq!(store.last_serving("api").unwrap(), None);
    for (at, serving, planned) in [(1, true, false), (5, false, true)] {
        store
            .record_serving(&ServingRecord {
                service: "api".into(),
                at,
                serving,
                planned,
            })
            .unwrap();
    }
    assert_eq!(
        store.serving_facts(5).unwrap().len(),
        1,
        "until is excluded"
    );
    let last = store.last_serving("api").unwrap().unwrap();
    assert_eq!((last.at, last.serving, last.planned), (5, false, true));
    assert_eq!(store.last_serving("other").unwrap(), None);
}
