//! # cutover-store: the single-host state store
//!
//! One SQLite file in the state directory (WAL mode) holding the releases cutover knows, the
//! rollouts it ran, the engine's latest snapshot and a hash-chained log of every decision.
//!
//! It upholds DESIGN.md invariant 8 ("state is persisted before an action is taken"): the host
//! hands the engine's snapshot *and* the decisions that produced its next actions to
//! [`Store::commit`], which writes them in one transaction, and only then carries the actions out.
//! The store is deliberately generic over JSON (`serde_json::Value`) so that it does not depend on
//! the engine's types and an engine change never needs a schema migration.
//!
//! What it must never do: delete or rewrite decisions. The decision log is an audit trail whose
//! rows are chained by SHA-256 ([`Store::verify_chain`]); there is intentionally no API to prune
//! it, since removing a row would break the chain.
#![forbid(unsafe_code)]

mod chain;
mod delivery;
mod schema;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use chain::{ChainReport, GENESIS_HASH};
pub use delivery::{CommitInfo, DeployRow, ServingRecord};
pub use schema::SCHEMA_VERSION;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database has schema version {found} but this cutover only knows up to \
         {supported}: it was written by a newer cutover; upgrade cutover or use another state dir"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("release {0} is not known: add it to `releases` in the same commit before marking it failed")]
    UnknownRelease(String),
    #[error("rollout {0} is not known: it cannot be ended before it was started")]
    UnknownRollout(i64),
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

/// One engine decision (a phase transition, a gate verdict, an operator command...), with the
/// reason and the numbers that drove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Position in the log; assigned by the store, ignored on [`Store::commit`].
    #[serde(default)]
    pub seq: Option<i64>,
    pub rollout_id: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub kind: String,
    pub reason: String,
    pub numbers: serde_json::Value,
    /// The chain hash of this row; assigned by the store, ignored on [`Store::commit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A release: one version of a service's executable and spec, addressed by digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub digest: String,
    pub name: String,
    pub exe_sha256: String,
    pub spec: serde_json::Value,
    pub created_at: i64,
    /// Set when a rollout of this release was aborted; cutover refuses it again without `--force`.
    #[serde(default)]
    pub failed_at: Option<i64>,
    #[serde(default)]
    pub failed_reason: Option<String>,
}

/// One rollout from a version to the next. `from_*` is `None` for a service's first deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: i64,
    pub service: String,
    pub from_version: Option<String>,
    pub from_digest: Option<String>,
    pub to_version: String,
    pub to_digest: String,
    pub started_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub outcome: Option<String>,
}

/// Everything one engine step wants persisted, written in a single transaction.
///
/// Applied in this order, so a batch may mark failed a release it also upserts, and end a rollout
/// it also starts: `releases`, `failed`, `rollouts_started`, `rollouts_ended`, `commits`,
/// `decisions`, `snapshot`.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The engine's new state; `None` keeps the stored one.
    pub snapshot: Option<serde_json::Value>,
    pub decisions: Vec<DecisionRecord>,
    /// Upserted by digest; an existing release keeps its `created_at` and failure mark.
    pub releases: Vec<ReleaseRecord>,
    /// `(digest, at, reason)`: marks a known release failed.
    pub failed: Vec<(String, i64, String)>,
    /// New rollouts; a duplicate id fails the whole commit.
    pub rollouts_started: Vec<RolloutRecord>,
    /// `(id, ended_at, outcome)`.
    pub rollouts_ended: Vec<(i64, i64, String)>,
    /// Events the engine applied, in order (a rollout's recording).
    pub events: Vec<EventRecord>,
    /// The commits the rollouts started in this batch deployed (`deploy --commit`).
    pub commits: Vec<CommitInfo>,
}

/// One event the engine applied during a rollout. `state_before` is the engine's state before
/// it, kept for the rollout's first event (its deploy) so a replay can start from it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub rollout_id: i64,
    pub at: i64,
    pub event: serde_json::Value,
    #[serde(default)]
    pub state_before: Option<serde_json::Value>,
}

/// The open state database. Not `Sync`: the host owns one and serialises access to it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // A second cutover or a `cutover history` reading while the host writes waits instead of
        // failing at once with SQLITE_BUSY.
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL: readers (the CLI, the admin API) never block the writer and vice versa.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // e.g. a filesystem without shared memory support; we still work, just with locking.
            tracing::warn!(path = %path.display(), %mode, "state database is not in WAL mode");
        }
        // FULL, not NORMAL: with WAL, NORMAL is consistent but may lose the last commits on power
        // loss. Invariant 8 says a decision is durable *before* its action (a traffic switch, a
        // kill) happens, so each commit must be fsynced. Commits are rare (a few per evaluation
        // interval at most), so the fsync costs nothing that matters.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite journal mode in effect (`"wal"` normally).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
    }

    /// Writes the whole batch in one transaction: on any error nothing is written.
    pub fn commit(&mut self, batch: Commit) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        apply(&tx, &batch)?;
        tx.commit()?;
        Ok(())
    }

    /// A rollout's recorded events, in order.
    pub fn events(&self, rollout_id: i64) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT rollout_id, at, event_json, state_before FROM events WHERE rollout_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([rollout_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rollout_id, at, event, before) = row?;
            out.push(EventRecord {
                rollout_id,
                at,
                event: serde_json::from_str(&event)?,
                state_before: before.map(|b| serde_json::from_str(&b)).transpose()?,
            });
        }
        Ok(out)
    }

    /// The engine snapshot last committed, if any.
    pub fn load_snapshot(&self) -> Result<Option<serde_json::Value>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT engine_json FROM snapshot WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    pub fn release(&self, digest: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let sql = format!("{RELEASE_SELECT} WHERE digest = ?1");
        let row = self
            .conn
            .query_row(&sql, [digest], release_row)
            .optional()?;
        row.map(ReleaseRecord::try_from).transpose()
    }

    /// All releases, oldest first.
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        let sql = format!("{RELEASE_SELECT} ORDER BY created_at, digest");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], release_row)?;
        rows.map(|r| ReleaseRecord::try_from(r?)).collect()
    }

    /// `Some((failed_at, reason))` if a rollout of this release was aborted.
    pub fn is_failed(&self, digest: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row: Option<(Option<i64>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT failed_at, failed_reason FROM releases WHERE digest = ?1",
                [digest],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((Some(at), reason)) => Some((at, reason.unwrap_or_default())),
            _ => None,
        })
    }

    /// The `limit` most recent rollouts, newest first.
    pub fn rollouts(&self, limit: u32) -> Result<Vec<RolloutRecord>, StoreError> {
        let sql = format!("{ROLLOUT_SELECT} ORDER BY started_at DESC, id DESC LIMIT ?1");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([limit], rollout_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One rollout by id, if this store knows it.
    pub fn rollout(&self, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
        let sql = format!("{ROLLOUT_SELECT} WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id], rollout_row).optional()?)
    }

    /// The highest rollout id used so far, so the host can allocate the next one.
    pub fn max_rollout_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MAX(id) FROM rollouts", [], |r| r.get(0))?)
    }

    /// The `limit` most recent decisions (of one rollout, or of all), in chronological order.
    pub fn decisions(
        &self,
        rollout_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        // Newest `limit` first, then reversed: history wants the tail of the log, read forwards.
        let mut stmt = self.conn.prepare(
            "SELECT seq, rollout_id, at, kind, reason, numbers_json, hash FROM decisions
             WHERE (?1 IS NULL OR rollout_id = ?1) ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![rollout_id, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, rollout_id, at, kind, reason, numbers, hash) = row?;
            out.push(DecisionRecord {
                seq: Some(seq),
                rollout_id,
                at,
                kind,
                reason,
                numbers: serde_json::from_str(&numbers)?,
                hash: Some(hash),
            });
        }
        out.reverse();
        Ok(out)
    }

    /// Recomputes the whole decision chain; any edited, inserted or removed row (other than the
    /// very last ones, which a chain alone cannot vouch for) makes it fail.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        chain::verify(&self.conn)
    }
}

fn apply(tx: &Transaction<'_>, b: &Commit) -> Result<(), StoreError> {
    for e in &b.events {
        let before = e
            .state_before
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        tx.execute(
            "INSERT INTO events (rollout_id, at, event_json, state_before) VALUES (?1, ?2, ?3, ?4)",
            params![e.rollout_id, e.at, serde_json::to_string(&e.event)?, before],
        )?;
    }
    for r in &b.releases {
        tx.execute(
            "INSERT INTO releases (digest, name, exe_sha256, spec_json, created_at, failed_at,
                                   failed_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(digest) DO UPDATE SET
                name = excluded.name, exe_sha256 = excluded.exe_sha256,
                spec_json = excluded.spec_json",
            params![
                r.digest,
                r.name,
                r.exe_sha256,
                serde_json::to_string(&r.spec)?,
                r.created_at,
                r.failed_at,
                r.failed_reason
            ],
        )?;
    }
    for (digest, at, reason) in &b.failed {
        let n = tx.execute(
            "UPDATE releases SET failed_at = ?2, failed_reason = ?3 WHERE digest = ?1",
            params![digest, at, reason],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRelease(digest.clone()));
        }
    }
    for r in &b.rollouts_started {
        tx.execute(
            "INSERT INTO rollouts (id, service, from_version, from_digest, to_version, to_digest,
                                   started_at, ended_at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.id,
                r.service,
                r.from_version,
                r.from_digest,
                r.to_version,
                r.to_digest,
                r.started_at,
                r.ended_at,
                r.outcome
            ],
        )?;
    }
    for (id, ended_at, outcome) in &b.rollouts_ended {
        let n = tx.execute(
            "UPDATE rollouts SET ended_at = ?2, outcome = ?3 WHERE id = ?1",
            params![id, ended_at, outcome],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRollout(*id));
        }
    }
    delivery::apply(tx, &b.commits)?;
    for d in &b.decisions {
        chain::append(tx, d)?;
    }
    if let Some(snapshot) = &b.snapshot {
        tx.execute(
            "INSERT INTO snapshot (id, engine_json, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET engine_json = excluded.engine_json,
                                           updated_at = excluded.updated_at",
            params![serde_json::to_string(snapshot)?, now_ms()],
        )?;
    }
    Ok(())
}

const ROLLOUT_SELECT: &str = "SELECT id, service, from_version, from_digest, to_version,
                                     to_digest, started_at, ended_at, outcome FROM rollouts";

fn rollout_row(r: &Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: r.get(0)?,
        service: r.get(1)?,
        from_version: r.get(2)?,
        from_digest: r.get(3)?,
        to_version: r.get(4)?,
        to_digest: r.get(5)?,
        started_at: r.get(6)?,
        ended_at: r.get(7)?,
        outcome: r.get(8)?,
    })
}

const RELEASE_SELECT: &str = "SELECT digest, name, exe_sha256, spec_json, created_at, failed_at,
                                     failed_reason FROM releases";

/// A release row before its spec JSON is parsed (rusqlite's row closures cannot return
/// `serde_json::Error`).
struct RawRelease {
    digest: String,
    name: String,
    exe_sha256: String,
    spec_json: String,
    created_at: i64,
    failed_at: Option<i64>,
    failed_reason: Option<String>,
}

fn release_row(r: &Row<'_>) -> rusqlite::Result<RawRelease> {
    Ok(RawRelease {
        digest: r.get(0)?,
        name: r.get(1)?,
        exe_sha256: r.get(2)?,
        spec_json: r.get(3)?,
        created_at: r.get(4)?,
        failed_at: r.get(5)?,
        failed_reason: r.get(6)?,
    })
}

impl TryFrom<RawRelease> for ReleaseRecord {
    type Error = StoreError;
    fn try_from(r: RawRelease) -> Result<Self, StoreError> {
        Ok(ReleaseRecord {
            digest: r.digest,
            name: r.name,
            exe_sha256: r.exe_sha256,
            spec: serde_json::from_str(&r.spec_json)?,
            created_at: r.created_at,
            failed_at: r.failed_at,
            failed_reason: r.failed_reason,
        })
    }
}

/// `updated_at` of the snapshot is informational only (the engine's own times live inside the
/// snapshot), so reading the wall clock here does not break the "time is injected" rule.
fn now_ms() -> i64 {
    cutover_clock::unix_millis() as i64
}
