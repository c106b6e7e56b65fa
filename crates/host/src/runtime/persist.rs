//! Persistence: what one engine outcome writes (the new state, its decisions, new releases,
//! failure marks, rollout records, the recorded event), and the store actor that writes it.
//!
//! Upholds DESIGN.md invariant 8 with the driver: the commit for an outcome is built here and
//! awaited there before any of its actions is carried out. A value that cannot be serialised
//! is an error, never a silently missing snapshot.
//!
//! The SQLite work runs on a thread of its own ([`StoreActor`]) that owns the
//! [`cutover_store::Store`] and takes jobs from a channel in order, so a slow disk never
//! blocks the driver's task (nor a tokio worker), and every caller — the driver's commits,
//! the admin API's history reads — is served in the order it asked.

use cutover_core::engine::{Decision, Event, Phase, Rollout, State};
use cutover_core::Timestamp;
use cutover_store::{
    Commit, DecisionRecord, EventRecord, ReleaseRecord, RolloutRecord, Store, StoreError,
};
use cutover_supervisor::Release as SupRelease;
use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use tokio::sync::oneshot;

/// Why the rollout state could not be persisted (the outcome it was for was not carried out).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PersistError(pub String);

impl From<StoreError> for PersistError {
    fn from(e: StoreError) -> Self {
        PersistError(e.to_string())
    }
}

impl PersistError {
    fn serialize(what: &str, e: serde_json::Error) -> Self {
        PersistError(format!("cannot serialise {what}: {e}"))
    }
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle on the thread that owns the state store. Cheap to clone; the thread ends when the
/// last handle is dropped, after the jobs already sent.
#[derive(Clone)]
pub struct StoreActor {
    jobs: std_mpsc::Sender<Job>,
}

impl StoreActor {
    /// Moves `store` onto a thread of its own.
    pub fn spawn(store: Store) -> std::io::Result<StoreActor> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cutover-store".into())
            .spawn(move || {
                let mut store = store;
                for job in rx {
                    job(&mut store);
                }
            })?;
        Ok(StoreActor { jobs })
    }

    /// Runs `f` on the store's thread, after every job sent before it; the future is its
    /// result. Sending does not wait: a caller that drops the future writes behind.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, PersistError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .jobs
            .send(Box::new(move |s: &mut Store| {
                let _ = tx.send(f(s));
            }))
            .is_ok();
        async move {
            let gone = || PersistError("the state store's thread has stopped".into());
            if !sent {
                return Err(gone());
            }
            rx.await.map_err(|_| gone())
        }
    }

    /// Waits until every job sent before this one is done (shutdown: nothing written behind
    /// is cut off).
    pub async fn flush(&self) {
        let _ = self.call(|_| ()).await;
    }
}

/// The commit for one outcome: `after` is the engine's state once it handled the event.
/// `releases` are the resolved releases by digest (a new rollout's is recorded with it).
pub fn commit_for(
    before: &State,
    after: &State,
    decisions: &[Decision],
    releases: &HashMap<String, SupRelease>,
    deploy_commit: Option<&(String, i64)>,
) -> Result<Commit, PersistError> {
    let mut commit = Commit {
        snapshot: Some(
            serde_json::to_value(after)
                .map_err(|e| PersistError::serialize("the engine state", e))?,
        ),
        ..Commit::default()
    };
    commit.decisions = decisions
        .iter()
        .map(|d| DecisionRecord {
            seq: None,
            rollout_id: d.rollout.map(|r| r as i64),
            at: d.at.millis() as i64,
            kind: d.kind.as_str().to_string(),
            reason: d.reason.clone(),
            numbers: d.numbers.clone(),
            hash: None,
        })
        .collect();
    if let Some(r) = &after.rollout {
        let new = before.rollout.as_ref().is_none_or(|b| b.id != r.id);
        if new {
            if let Some(rel) = releases.get(&r.to.digest) {
                commit.releases.push(ReleaseRecord {
                    digest: rel.digest.clone(),
                    name: rel.name.clone(),
                    exe_sha256: rel.exe_sha256.clone(),
                    spec: serde_json::to_value(rel)
                        .map_err(|e| PersistError::serialize("the release", e))?,
                    created_at: r.started.millis() as i64,
                    failed_at: None,
                    failed_reason: None,
                });
            }
            if let Some((sha, at)) = deploy_commit {
                commit.commits.push(cutover_store::CommitInfo {
                    rollout_id: r.id as i64,
                    commit: sha.clone(),
                    committed_at: *at,
                });
            }
            commit.rollouts_started.push(RolloutRecord {
                id: r.id as i64,
                service: after.service.clone(),
                from_version: r.from.as_ref().map(|f| f.version.clone()),
                from_digest: r.from.as_ref().map(|f| f.digest.clone()),
                to_version: r.to.version.clone(),
                to_digest: r.to.digest.clone(),
                started_at: r.started.millis() as i64,
                ended_at: None,
                outcome: None,
            });
        }
    }
    let at = decisions.first().map(|d| d.at);
    if let Some(ended) = ended_record(before.rollout.as_ref(), after.rollout.as_ref(), at) {
        commit.rollouts_ended.push(ended);
    }
    for (digest, f) in &after.failed {
        if !before.failed.contains_key(digest) {
            commit
                .failed
                .push((digest.clone(), f.at.millis() as i64, f.reason.clone()));
        }
    }
    Ok(commit)
}

/// The event, recorded with the rollout it belongs to (for `cutover simulate`); the state
/// before a deploy is kept with it, as the replay's starting point.
pub fn recording(
    before: &State,
    after: &State,
    at: Timestamp,
    event: &Event,
) -> Result<Vec<EventRecord>, PersistError> {
    // Neither is about the rollout: a recovery re-issues what the state says, and an expired
    // failure mark is decided on the retention, which a replay does not know.
    if matches!(event, Event::Recover { .. } | Event::ExpireFailures { .. }) {
        return Ok(Vec::new());
    }
    let active = |s: &State| {
        s.rollout
            .as_ref()
            .filter(|r| r.phase.is_active())
            .map(|r| r.id)
    };
    let Some(id) = active(before).or(active(after)) else {
        return Ok(Vec::new());
    };
    let state_before = matches!(event, Event::Deploy { .. })
        .then(|| serde_json::to_value(before))
        .transpose()
        .map_err(|e| PersistError::serialize("the state before the deploy", e))?;
    Ok(vec![EventRecord {
        rollout_id: id as i64,
        at: at.millis() as i64,
        event: serde_json::to_value(event).map_err(|e| PersistError::serialize("the event", e))?,
        state_before,
    }])
}

/// The `(id, ended_at, outcome)` to record when this event ended the rollout: its outcome is
/// how it ended, so a promotion is recorded when it happens (not an hour later, when the held
/// previous release is let go: `promoted` → `done` keeps `promoted`), and a rollback after a
/// promotion replaces it.
pub fn ended_record(
    before: Option<&Rollout>,
    after: Option<&Rollout>,
    at: Option<Timestamp>,
) -> Option<(i64, i64, String)> {
    let a = after?;
    let was = before.filter(|b| b.id == a.id).map(|b| &b.phase);
    let ended = match (was, &a.phase) {
        (_, p) if p.is_active() => false,
        (Some(Phase::Promoted { .. }), Phase::Done { .. }) => false,
        (Some(b), p) if !b.is_active() => {
            matches!(p, Phase::RolledBack { .. }) && !matches!(b, Phase::RolledBack { .. })
        }
        _ => true,
    };
    let when = a.ended().or(at)?;
    ended.then(|| {
        (
            a.id as i64,
            when.millis() as i64,
            a.phase.name().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::engine::{Engine, Release, Verb};

    /// A rollout's outcome is recorded when it ends: at promotion (not when the held previous
    /// release is let go, which `history` would show as "in progress" until then), replaced by a
    /// rollback after it, and an abort's too.
    #[test]
    fn outcomes_are_recorded_when_the_rollout_ends() {
        let spec = cutover_core::spec::RolloutSpec::default();
        let mut e = Engine::new("shop", spec);
        let t = |s: u64| Timestamp(1_000_000 + s * 1000);
        let step = |e: &mut Engine, at: Timestamp, ev: Event| {
            let before = e.state().rollout.clone();
            e.handle(at, ev).unwrap();
            ended_record(before.as_ref(), e.state().rollout.as_ref(), Some(at))
        };
        let deploy = |v: &str, d: &str| Event::Deploy {
            release: Release::new(v, d),
            force: false,
            start_timeout: None,
        };
        assert_eq!(step(&mut e, t(0), deploy("v1", "a")), None);
        let first = step(&mut e, t(1), Event::Ready { digest: "a".into() });
        assert_eq!(first, Some((1, t(1).millis() as i64, "done".into())));
        assert_eq!(step(&mut e, t(2), deploy("v2", "b")), None);
        assert_eq!(
            step(&mut e, t(3), Event::Ready { digest: "b".into() }),
            None
        );
        let promoted = step(&mut e, t(4), Event::Command(Verb::Promote));
        assert_eq!(promoted, Some((2, t(4).millis() as i64, "promoted".into())));
        let rolled_back = step(&mut e, t(5), Event::Command(Verb::Rollback));
        assert_eq!(
            rolled_back,
            Some((2, t(5).millis() as i64, "rolled_back".into()))
        );
        assert_eq!(step(&mut e, t(6), deploy("v3", "c")), None);
        assert_eq!(
            step(&mut e, t(7), Event::Command(Verb::Abort)).map(|r| r.2),
            Some("aborted".into())
        );
    }

    /// The actor runs jobs in the order they were sent, a dropped future still writes (write
    /// behind), and `flush` waits for it.
    #[tokio::test]
    async fn the_store_actor_keeps_order_and_writes_behind() {
        let dir = tempfile::tempdir().unwrap();
        let actor = StoreActor::spawn(Store::open(&dir.path().join("s.db")).unwrap()).unwrap();
        let snapshot = |n: u64| Commit {
            snapshot: Some(serde_json::json!({ "n": n })),
            ..Commit::default()
        };
        for n in 0..5 {
            drop(actor.call(move |s| s.commit(snapshot(n))));
        }
        actor.flush().await;
        let stored = actor.call(|s| s.load_snapshot()).await.unwrap().unwrap();
        assert_eq!(stored, Some(serde_json::json!({ "n": 4 })));
        // A store error is an error, with the store's reason.
        let bad = Commit {
            failed: vec![("nope".into(), 1, "x".into())],
            ..Commit::default()
        };
        let err = actor
            .call(move |s| s.commit(bad).map_err(PersistError::from))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.0.contains("release nope is not known"), "{err}");
    }
}
