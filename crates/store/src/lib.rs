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
//! What it must never do: rewrite the audit chain, or change a table the chain covers without
//! recording the change in it. Every state change is a row of the keyed chain (see [`chain`] and
//! docs/audit.md): the engine's decisions, and the store's own records of rollouts started and
//! ended, releases recorded and marked failed. The other tables are derived state that
//! [`Store::verify_chain`] checks against the chain.
#![forbid(unsafe_code)]

pub mod chain;
mod delivery;
pub mod recording;
mod schema;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use chain::{
    AuditKey, AuditPaths, ChainReport, ChainRow, Head, Problem, GENESIS_HASH, HEAD_FILE, KEY_FILE,
};
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
    #[error("cannot access the audit key file {path}: {source} (fix: check the file and its permissions, or pass --audit-key-file)", path = path.display())]
    KeyIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the audit key file {path} is accessible by other users (mode {mode:o}): whoever read it \
         can rewrite the audit chain; run `chmod 600 {path}` (and consider a new state dir if \
         someone may have read it)",
        path = path.display()
    )]
    KeyInsecure { path: PathBuf, mode: u32 },
    #[error("the audit key file {path} does not hold a key (64 hex digits): restore it from where you keep a copy", path = path.display())]
    KeyInvalid { path: PathBuf },
    #[error(
        "the audit chain in {db} is keyed but its key file {key} is missing: restore the key \
         (or pass --audit-key-file); cutover will not create a new key for a keyed chain, since \
         nothing written with it could be told apart from a forgery",
        db = db.display(), key = key.display()
    )]
    KeyMissing { db: PathBuf, key: PathBuf },
    #[error("cannot access the audit head file {path}: {source}", path = path.display())]
    HeadIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit head file {path} has a line that is not `SEQ MAC`: {line:?}", path = path.display())]
    HeadInvalid { path: PathBuf, line: String },
    #[error("the state database {} was opened read-only; nothing can be written to it", .0.display())]
    ReadOnly(PathBuf),
    #[error(
        "rollout {rollout_id}'s recorded events from #{first_seq} cannot be read: {detail} \
         (the state database is damaged there; `cutover export` of other rollouts still works)"
    )]
    Recording {
        rollout_id: i64,
        first_seq: i64,
        detail: String,
    },
    #[error("line {line} of the export is not a chain record: {source}")]
    ExportLine {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
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
    /// `None` for a store opened read-only ([`Store::open_read_only`]).
    key: Option<AuditKey>,
    audit: AuditPaths,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to [`SCHEMA_VERSION`],
    /// with the audit key and head beside it ([`AuditPaths::beside`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, AuditPaths::beside(path))
    }

    /// [`Store::open`] with the audit key and head where `audit` says.
    ///
    /// The key file is created (mode 0600) when it does not exist and the chain is not keyed yet;
    /// a keyed chain whose key is missing is refused. A chain without a key (a new database, or
    /// one written by a cutover from before the key) gets its `audit.keyed` record now, which
    /// MACs the plain chain's head: from then on a rewrite of the old rows is detected too.
    /// Opening does not verify: the caller decides what a failed [`Store::verify_chain`] means.
    pub fn open_with(path: &Path, audit: AuditPaths) -> Result<Store, StoreError> {
        let conn = Store::open_conn(path)?;
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))?;
        let keyed: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM decisions WHERE kind = ?1)
                 OR COALESCE((SELECT MIN(seq) FROM decisions), 1) > 1",
            [chain::kinds::KEYED],
            |r| r.get(0),
        )?;
        // An unkeyed chain with records is keyed here only on the first run after an upgrade
        // (no key, no head yet). With either present, an unkeyed chain is a downgrade (someone
        // removed the keyed records and recomputed the plain hashes): keying it now would bless
        // the rewrite, so it is left for verification to report.
        let first_keying =
            !keyed && (rows == 0 || (!audit.key_file.exists() && !audit.head_file.exists()));
        let key = if audit.key_file.exists() {
            AuditKey::load(&audit.key_file)?
        } else if keyed {
            return Err(StoreError::KeyMissing {
                db: path.to_owned(),
                key: audit.key_file.clone(),
            });
        } else {
            AuditKey::create(&audit.key_file)?
        };
        let mut store = Store {
            conn,
            path: path.to_owned(),
            key: Some(key),
            audit,
        };
        if first_keying {
            store.key_the_chain()?;
        }
        Ok(store)
    }

    /// Appends the `audit.keyed` record over the plain chain's head (see [`Store::open_with`]).
    fn key_the_chain(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (rows, last): (i64, Option<(i64, String)>) = (
            tx.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))?,
            tx.query_row(
                "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        );
        let numbers = serde_json::json!({
            "plain_rows": rows,
            "plain_head_seq": last.as_ref().map(|l| l.0),
            "plain_head": last.as_ref().map_or(GENESIS_HASH, |l| l.1.as_str()),
        });
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| StoreError::ReadOnly(self.path.clone()))?;
        let head = append_record(
            &tx,
            key,
            &DecisionRecord {
                seq: None,
                rollout_id: None,
                at: now_ms(),
                kind: chain::kinds::KEYED.into(),
                reason: format!(
                    "audit chain keyed (HMAC-SHA256); the {rows} record(s) before are plain SHA-256"
                ),
                numbers,
                hash: None,
            },
        )?;
        // A snapshot written before the key gets its MAC now, as the chain's old rows do.
        seal_snapshot(&tx, key)?;
        tx.commit()?;
        chain::append_head(&self.audit.head_file, &head)
    }

    /// Opens an existing database read-only, for readers that need no key (`cutover export`):
    /// nothing is migrated, keyed or written; [`Store::commit`] fails with
    /// [`StoreError::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            conn: open_read_only(path)?,
            path: path.to_owned(),
            key: None,
            audit: AuditPaths::beside(path),
        })
    }

    fn key(&self) -> Result<&AuditKey, StoreError> {
        self.key
            .as_ref()
            .ok_or_else(|| StoreError::ReadOnly(self.path.clone()))
    }

    fn open_conn(path: &Path) -> Result<Connection, StoreError> {
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
        Ok(conn)
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

    /// Where the audit key and head are.
    pub fn audit_paths(&self) -> &AuditPaths {
        &self.audit
    }

    /// Writes the whole batch in one transaction: on any error nothing is written. Returns the
    /// chain position (seq and MAC) of each of `batch.decisions`, in order, to be sent with
    /// notifications as an anchor outside this host.
    ///
    /// The head is appended to `audit.head` after the transaction commits. If that append
    /// fails the commit still stands (the engine has moved on) and the head file lags: a later
    /// commit anchors again, and verification accepts records after the anchored head.
    pub fn commit(&mut self, batch: Commit) -> Result<Vec<Head>, StoreError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| StoreError::ReadOnly(self.path.clone()))?;
        let tx = self.conn.transaction()?;
        let (anchors, last) = apply(&tx, key, &batch)?;
        tx.commit()?;
        if let Some(head) = last {
            if let Err(e) = chain::append_head(&self.audit.head_file, &head) {
                tracing::warn!(error = %e, "could not anchor the audit head; the next commit will");
            }
        }
        Ok(anchors)
    }

    /// A rollout's recorded events, in order, whether packed into blocks or not
    /// ([`recording`]).
    pub fn events(&self, rollout_id: i64) -> Result<Vec<EventRecord>, StoreError> {
        recording::read(&self.conn, rollout_id)
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
        // The store's own `audit.*` records are the chain's, not the engine's decisions.
        let mut stmt = self.conn.prepare(
            "SELECT seq, rollout_id, at, kind, reason, numbers_json, hash FROM decisions
             WHERE (?1 IS NULL OR rollout_id = ?1) AND kind NOT LIKE 'audit.%'
             ORDER BY seq DESC LIMIT ?2",
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

    /// Verifies the whole chain with this store's key, against the head anchored in
    /// `audit.head`, and the tables the chain covers against it. Any edited, inserted, removed
    /// or swapped record, a rewrite without the key, deleted newest records, or a flipped
    /// outcome or failed mark makes it fail, naming the first bad record.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let head = chain::read_head(&self.audit.head_file)?;
        let rows = chain_rows(&self.conn)?;
        let mut report = chain::verify_rows(&rows, self.key()?, head.as_ref());
        if head.is_none() && !rows.is_empty() {
            report = chain::merge(
                report,
                vec![Problem {
                    seq: None,
                    what: format!(
                        "the head file {} is missing: deletion of the newest records cannot be \
                         ruled out",
                        self.audit.head_file.display()
                    ),
                }],
            );
        }
        let mut more = cross_check(&self.conn, &rows)?;
        more.extend(check_snapshot(&self.conn, self.key()?, &rows)?);
        Ok(chain::merge(report, more))
    }

    /// Every row of the chain, in order: `cutover history --export`.
    pub fn chain_rows(&self) -> Result<Vec<ChainRow>, StoreError> {
        chain_rows(&self.conn)
    }

    /// Records that an operator accepted a store that failed verification: the bad rows'
    /// fingerprints (so they are not reported again, and any *further* change to them is), the
    /// tables as found, a checkpoint if the oldest rows are gone, and a new head. Returns the
    /// record's anchor.
    pub fn accept_tampered(
        &mut self,
        report: &ChainReport,
        at: i64,
        reason: &str,
    ) -> Result<Head, StoreError> {
        let rows = chain_rows(&self.conn)?;
        let bad: std::collections::BTreeSet<i64> =
            report.problems.iter().filter_map(|p| p.seq).collect();
        let fingerprints: Vec<String> = rows
            .iter()
            .filter(|r| bad.contains(&r.seq))
            .map(ChainRow::fingerprint_hex)
            .collect();
        if !rows.iter().any(|r| r.kind == chain::kinds::KEYED)
            && rows.first().is_some_and(|r| r.seq == 1)
        {
            self.key_the_chain()?;
        }
        let tx = self.conn.transaction()?;
        let mut records = rerecord_tables(&tx, &rows, at)?;
        if let Some(first) = rows.first().filter(|r| r.seq != 1) {
            records.push(store_record(
                None,
                at,
                chain::kinds::CHECKPOINT,
                format!("the chain starts at #{} (accepted as found)", first.seq),
                serde_json::json!({"first_seq": first.seq, "first_prev": first.prev}),
            ));
        }
        records.push(store_record(
            None,
            at,
            chain::kinds::TAMPER_ACCEPTED,
            format!("started on a store that failed verification ({reason})"),
            serde_json::json!({
                "first_bad_seq": report.first_bad_seq,
                "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "fingerprints": fingerprints,
            }),
        ));
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| StoreError::ReadOnly(self.path.clone()))?;
        let mut last = None;
        for r in &records {
            last = Some(append_record(&tx, key, r)?);
        }
        // The snapshot as found is accepted with the rest.
        seal_snapshot(&tx, key)?;
        tx.commit()?;
        let head = last.expect("the acceptance record was appended");
        chain::append_head(&self.audit.head_file, &head)?;
        Ok(head)
    }
}

/// What a prune must keep whatever its age: the rollout in progress (or the last one) and the
/// releases the engine still uses (stable, held previous, canary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InUse {
    pub rollouts: Vec<i64>,
    pub digests: Vec<String>,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub rollouts: u64,
    /// Recorded events removed with their rollouts, packed or not.
    pub events: u64,
    pub releases: u64,
    pub records: u64,
    /// Serving changes older than the cutoff (the last one before it is kept: it says whether
    /// the service was serving at the cutoff).
    pub serving: u64,
    /// Events of ended rollouts packed into blocks (a store written before blocks existed).
    pub packed: u64,
    /// Lines of `audit.head` that anchored pruned records, removed.
    pub head_lines: u64,
    /// The chain now starts here (a checkpoint record vouches for it).
    pub first_seq: Option<i64>,
}

impl Store {
    /// Removes what is older than `cutoff` (ms since the epoch) and not in use, in one
    /// transaction: rollouts that ended before it (with their recorded events), releases created
    /// before it that neither `keep` nor a remaining rollout refers to, and the oldest records of
    /// the chain — the prefix older than the cutoff, stopping at the first record of any
    /// remaining rollout, and never the newest record.
    ///
    /// The chain stays verifiable: an `audit.checkpoint` record says where it now starts, and
    /// every remaining table row whose records were pruned is recorded again (a rollout removed
    /// while records of it remain is recorded as `removed`). `now` stamps those records.
    pub fn prune(&mut self, cutoff: i64, now: i64, keep: &InUse) -> Result<Pruned, StoreError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| StoreError::ReadOnly(self.path.clone()))?;
        let tx = self.conn.transaction()?;
        let mut pruned = Pruned::default();
        let ended: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT id FROM rollouts WHERE ended_at IS NOT NULL AND ended_at < ?1 ORDER BY id",
            )?;
            let ids = st.query_map([cutoff], |r| r.get(0))?;
            ids.collect::<Result<Vec<i64>, _>>()?
        };
        for id in ended.into_iter().filter(|id| !keep.rollouts.contains(id)) {
            pruned.rollouts += tx.execute("DELETE FROM rollouts WHERE id = ?1", [id])? as u64;
            pruned.events += recording::count(&tx, id)?;
            tx.execute("DELETE FROM events WHERE rollout_id = ?1", [id])?;
            tx.execute("DELETE FROM event_blocks WHERE rollout_id = ?1", [id])?;
            tx.execute("DELETE FROM rollout_commits WHERE rollout_id = ?1", [id])?;
        }
        // Recordings and commits of rollouts no table row names (nothing can read them: export
        // looks a rollout up first).
        for table in ["events", "event_blocks", "rollout_commits"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE rollout_id NOT IN (SELECT id FROM rollouts)"),
                [],
            )?;
        }
        // What an older store (or a rollout ended before blocks) left unpacked.
        let unpacked: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT DISTINCT rollout_id FROM events
                 WHERE rollout_id IN (SELECT id FROM rollouts WHERE ended_at IS NOT NULL)
                 ORDER BY rollout_id",
            )?;
            let ids = st.query_map([], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        for id in unpacked {
            pruned.packed += recording::pack(&tx, id, 1)?;
        }
        // Serving changes past the cutoff, but the last of each service before it: `report`
        // of a period after the cutoff still knows whether the service was serving at its start.
        pruned.serving = tx.execute(
            "DELETE FROM serving WHERE at < ?1 AND seq NOT IN (
                 SELECT MAX(seq) FROM serving WHERE at < ?1 GROUP BY service)",
            [cutoff],
        )? as u64;
        let old_releases: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT digest FROM releases WHERE created_at < ?1
                   AND digest NOT IN (SELECT to_digest FROM rollouts)
                   AND digest NOT IN (SELECT from_digest FROM rollouts WHERE from_digest IS NOT NULL)
                 ORDER BY digest",
            )?;
            let ds = st.query_map([cutoff], |r| r.get(0))?;
            ds.collect::<Result<Vec<String>, _>>()?
        };
        for d in old_releases.iter().filter(|d| !keep.digests.contains(d)) {
            pruned.releases += tx.execute("DELETE FROM releases WHERE digest = ?1", [d])? as u64;
        }
        let rows = chain_rows(&tx)?;
        let remaining: std::collections::HashSet<i64> = {
            let mut st = tx.prepare("SELECT id FROM rollouts")?;
            let ids = st.query_map([], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        let newest = rows.last().map_or(0, |r| r.seq);
        let first_recent = rows
            .iter()
            .find(|r| r.at >= cutoff)
            .map_or(newest, |r| r.seq);
        let first_kept_rollout = rows
            .iter()
            .find(|r| r.rollout_id.is_some_and(|id| remaining.contains(&id)))
            .map_or(newest, |r| r.seq);
        let boundary = first_recent.min(first_kept_rollout).min(newest);
        let first = rows.first().map_or(0, |r| r.seq);
        let kept: Vec<ChainRow> = rows.iter().filter(|r| r.seq >= boundary).cloned().collect();
        let mut records = rerecord(&tx, &kept, now, "carried past a pruning")?;
        if boundary > first {
            let start = &kept[0];
            records.push(store_record(
                None,
                now,
                chain::kinds::CHECKPOINT,
                format!(
                    "records #{first} to #{} pruned (older than the retention); the chain starts \
                     at #{boundary}",
                    boundary - 1
                ),
                serde_json::json!({
                    "first_seq": boundary, "first_prev": start.prev, "cutoff": cutoff,
                    "pruned_rollouts": pruned.rollouts, "pruned_releases": pruned.releases,
                }),
            ));
            pruned.records = tx.execute("DELETE FROM decisions WHERE seq < ?1", [boundary])? as u64;
            pruned.first_seq = Some(boundary);
        }
        let mut last = None;
        for r in &records {
            last = Some(append_record(&tx, key, r)?);
        }
        if last.is_some() {
            seal_snapshot(&tx, key)?;
        }
        let first_seq: Option<i64> =
            tx.query_row("SELECT MIN(seq) FROM decisions", [], |r| r.get(0))?;
        tx.commit()?;
        if let Some(head) = &last {
            chain::append_head(&self.audit.head_file, head)?;
        }
        // The anchors of pruned records anchor nothing any more: `audit.head` keeps the lines
        // from the chain's first record on (verification reads its last line).
        // The pruning stands if this fails (the lines are only stale): the next one retries.
        if let Some(first) = first_seq {
            match chain::compact_head(&self.audit.head_file, first) {
                Ok(n) => pruned.head_lines = n,
                Err(e) => tracing::warn!(error = %e, "could not compact the audit head file"),
            }
        }
        Ok(pruned)
    }
}

/// Verifies a database file on its own (an auditor's copy), read-only: nothing is migrated,
/// keyed or written. `head_file`: the `audit.head` to check the newest records against
/// (`None`: truncation of the newest records cannot be detected, and the report says so with
/// `head: None`).
pub fn verify_db(
    db: &Path,
    key: &AuditKey,
    head_file: Option<&Path>,
) -> Result<ChainReport, StoreError> {
    let conn = open_read_only(db)?;
    let head = match head_file {
        Some(p) if !p.exists() => {
            return Err(StoreError::HeadIo {
                path: p.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        Some(p) => chain::read_head(p)?,
        None => None,
    };
    let rows = chain_rows(&conn)?;
    let report = chain::verify_rows(&rows, key, head.as_ref());
    let mut more = cross_check(&conn, &rows)?;
    more.extend(check_snapshot(&conn, key, &rows)?);
    Ok(chain::merge(report, more))
}

/// The chain of a database file, read-only (`cutover history --export` without a running
/// cutover).
pub fn export_db(db: &Path) -> Result<Vec<ChainRow>, StoreError> {
    chain_rows(&open_read_only(db)?)
}

/// Verifies JSON lines written by `cutover history --export` on their own (no database).
/// The tables are not in an export; the records that describe them are, and are verified.
pub fn verify_export(
    text: &str,
    key: &AuditKey,
    head: Option<&Head>,
) -> Result<ChainReport, StoreError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        rows.push(serde_json::from_str::<ChainRow>(line).map_err(|source| {
            StoreError::ExportLine {
                line: i + 1,
                source,
            }
        })?);
    }
    Ok(chain::verify_rows(&rows, key, head))
}

fn open_read_only(db: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let open_err = |source| StoreError::Open {
        path: db.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_err)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

fn chain_rows(conn: &Connection) -> Result<Vec<ChainRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, rollout_id, at, kind, reason, numbers_json, prev_hash, hash
         FROM decisions ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ChainRow {
            seq: r.get(0)?,
            rollout_id: r.get(1)?,
            at: r.get(2)?,
            kind: r.get(3)?,
            reason: r.get(4)?,
            numbers_json: r.get(5)?,
            prev: r.get(6)?,
            mac: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The MAC of the engine snapshot: its exact JSON and the chain position it was written at.
fn snapshot_mac(key: &AuditKey, head_seq: i64, engine_json: &str) -> String {
    chain::mac(
        key,
        "snapshot",
        &serde_json::json!([head_seq, engine_json]).to_string(),
    )
}

/// MACs the stored snapshot (if any) at the chain's current newest record.
fn seal_snapshot(conn: &Connection, key: &AuditKey) -> Result<(), StoreError> {
    let head_seq: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM decisions", [], |r| {
        r.get(0)
    })?;
    let json: Option<String> = conn
        .query_row("SELECT engine_json FROM snapshot WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(json) = json {
        conn.execute(
            "UPDATE snapshot SET head_seq = ?1, mac = ?2 WHERE id = 1",
            params![head_seq, snapshot_mac(key, head_seq, &json)],
        )?;
    }
    Ok(())
}

/// The engine snapshot is what a restarted cutover resumes from (its phase, its failed
/// marks): it must carry its MAC, and not be older than the newest engine decision.
fn check_snapshot(
    conn: &Connection,
    key: &AuditKey,
    rows: &[ChainRow],
) -> Result<Vec<Problem>, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 3 {
        // Written before the key (read-only, not migrated): the chain says "not keyed" already.
        return Ok(Vec::new());
    }
    let snap: Option<(String, Option<i64>, Option<String>)> = conn
        .query_row(
            "SELECT engine_json, head_seq, mac FROM snapshot WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((json, head_seq, mac)) = snap else {
        return Ok(Vec::new());
    };
    let problem = |what: &str| Problem {
        seq: None,
        what: format!(
            "the engine snapshot (the state a restarted cutover resumes from: phase, weights, \
             failed releases) {what}"
        ),
    };
    let (Some(head_seq), Some(mac)) = (head_seq, mac) else {
        return Ok(vec![problem("carries no MAC: edited outside cutover")]);
    };
    if snapshot_mac(key, head_seq, &json) != mac {
        return Ok(vec![problem(
            "does not match its MAC: edited outside cutover",
        )]);
    }
    let last_decision = rows
        .iter()
        .rev()
        .find(|r| !r.kind.starts_with(chain::kinds::PREFIX))
        .map_or(0, |r| r.seq);
    if head_seq < last_decision {
        return Ok(vec![problem(&format!(
            "was written at record #{head_seq}, before the newest decision #{last_decision}: \
             replaced by an older one"
        ))]);
    }
    Ok(Vec::new())
}

/// Appends one record to the chain inside the caller's transaction; returns its anchor.
fn append_record(
    tx: &Transaction<'_>,
    key: &AuditKey,
    d: &DecisionRecord,
) -> Result<Head, StoreError> {
    let prev: String = tx
        .query_row(
            "SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS_HASH.to_owned());
    let numbers_json = serde_json::to_string(&d.numbers)?;
    // The seq is part of the MAC but only known once AUTOINCREMENT assigns it, so insert first
    // and fill the MAC in; both happen inside the same transaction.
    tx.execute(
        "INSERT INTO decisions (rollout_id, at, kind, reason, numbers_json, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '')",
        params![d.rollout_id, d.at, d.kind, d.reason, numbers_json, prev],
    )?;
    let seq = tx.last_insert_rowid();
    let canonical = chain::canonical(seq, d.rollout_id, d.at, &d.kind, &d.reason, &numbers_json);
    let mac = chain::mac(key, &prev, &canonical);
    tx.execute(
        "UPDATE decisions SET hash = ?2 WHERE seq = ?1",
        params![seq, mac],
    )?;
    Ok(Head { seq, mac })
}

fn store_record(
    rollout_id: Option<i64>,
    at: i64,
    kind: &str,
    reason: String,
    numbers: serde_json::Value,
) -> DecisionRecord {
    DecisionRecord {
        seq: None,
        rollout_id,
        at,
        kind: kind.into(),
        reason,
        numbers,
        hash: None,
    }
}

fn started_numbers(r: &RolloutRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "service": r.service, "from_version": r.from_version,
        "from_digest": r.from_digest, "to_version": r.to_version, "to_digest": r.to_digest,
        "started_at": r.started_at,
    })
}

fn ended_numbers(id: i64, ended_at: Option<i64>, outcome: Option<&str>) -> serde_json::Value {
    serde_json::json!({"id": id, "ended_at": ended_at, "outcome": outcome})
}

fn release_numbers(
    digest: &str,
    name: &str,
    exe_sha256: &str,
    spec_json: &str,
    created_at: i64,
) -> serde_json::Value {
    serde_json::json!({
        "digest": digest, "name": name, "exe_sha256": exe_sha256,
        "spec_sha256": chain::sha256_hex(spec_json), "created_at": created_at,
    })
}

fn failed_numbers(digest: &str, at: Option<i64>, reason: Option<&str>) -> serde_json::Value {
    serde_json::json!({"digest": digest, "failed_at": at, "failed_reason": reason})
}

/// The `rollouts` and `releases` tables as the chain's records would describe them.
struct Tables {
    rollouts: Vec<RolloutRecord>,
    /// digest → (the release record's numbers, the failed record's numbers)
    releases: Vec<(String, serde_json::Value, serde_json::Value)>,
}

fn tables(conn: &Connection) -> Result<Tables, StoreError> {
    let mut stmt = conn.prepare(ROLLOUT_SELECT)?;
    let rollouts = stmt
        .query_map([], rollout_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(RELEASE_SELECT)?;
    let releases = stmt
        .query_map([], release_row)?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|r| {
            (
                r.digest.clone(),
                release_numbers(
                    &r.digest,
                    &r.name,
                    &r.exe_sha256,
                    &r.spec_json,
                    r.created_at,
                ),
                failed_numbers(&r.digest, r.failed_at, r.failed_reason.as_deref()),
            )
        })
        .collect();
    Ok(Tables { rollouts, releases })
}

/// Where the `rollouts` and `releases` tables disagree with the chain.
fn cross_check(conn: &Connection, rows: &[ChainRow]) -> Result<Vec<Problem>, StoreError> {
    let d = chain::derive(rows);
    let t = tables(conn)?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let no_fail = |digest: &str| failed_numbers(digest, None, None);
    for r in &t.rollouts {
        seen.insert(r.id);
        match d.started.get(&r.id) {
            None => out.push(Problem {
                seq: None,
                what: format!(
                    "rollout {} is in the rollouts table but no record of the chain started it: \
                     inserted outside cutover",
                    r.id
                ),
            }),
            Some((seq, n)) if *n != started_numbers(r) => out.push(Problem {
                seq: Some(*seq),
                what: format!(
                    "rollout {}'s row in the rollouts table differs from this record: edited \
                     outside cutover",
                    r.id
                ),
            }),
            Some(_) => {}
        }
        let found = ended_numbers(r.id, r.ended_at, r.outcome.as_deref());
        let (seq, want) = d
            .ended
            .get(&r.id)
            .map(|(s, n)| (Some(*s), n.clone()))
            .unwrap_or_else(|| (None, ended_numbers(r.id, None, None)));
        if found != want {
            out.push(Problem {
                seq,
                what: format!(
                    "rollout {}'s outcome in the rollouts table is {} (ended_at {}) but the \
                     chain says {} (ended_at {}): edited outside cutover",
                    r.id, found["outcome"], found["ended_at"], want["outcome"], want["ended_at"]
                ),
            });
        }
    }
    for (id, (seq, _)) in &d.started {
        if !seen.contains(id) {
            out.push(Problem {
                seq: Some(*seq),
                what: format!(
                    "rollout {id} is missing from the rollouts table: deleted outside cutover"
                ),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (digest, release, failed) in &t.releases {
        seen.insert(digest.clone());
        match d.releases.get(digest) {
            None => out.push(Problem {
                seq: None,
                what: format!(
                    "release {digest} is in the releases table but not in the chain: inserted \
                     outside cutover"
                ),
            }),
            Some((seq, n)) if n != release => out.push(Problem {
                seq: Some(*seq),
                what: format!(
                    "release {digest}'s row in the releases table differs from this record: \
                     edited outside cutover"
                ),
            }),
            Some(_) => {}
        }
        let (seq, want) = d
            .failed
            .get(digest)
            .map(|(s, n)| (Some(*s), n.clone()))
            .unwrap_or_else(|| (None, no_fail(digest)));
        if *failed != want {
            out.push(Problem {
                seq,
                what: format!(
                    "release {digest}'s failed mark in the releases table is {} but the chain \
                     says {}: edited outside cutover",
                    failed["failed_at"], want["failed_at"]
                ),
            });
        }
    }
    for (digest, (seq, _)) in &d.releases {
        if !seen.contains(digest) {
            out.push(Problem {
                seq: Some(*seq),
                what: format!(
                    "release {digest} is missing from the releases table: deleted outside cutover"
                ),
            });
        }
    }
    Ok(out)
}

/// Records that re-describe the tables as found where they disagree with the chain (for
/// [`Store::accept_tampered`]); a row deleted from a table is recorded as `removed`.
fn rerecord_tables(
    conn: &Connection,
    rows: &[ChainRow],
    at: i64,
) -> Result<Vec<DecisionRecord>, StoreError> {
    rerecord(conn, rows, at, "accepted as found")
}

/// [`rerecord_tables`], each record's reason ending with `why`.
fn rerecord(
    conn: &Connection,
    rows: &[ChainRow],
    at: i64,
    why: &str,
) -> Result<Vec<DecisionRecord>, StoreError> {
    let d = chain::derive(rows);
    let t = tables(conn)?;
    let mut out = Vec::new();
    let accepted = |what: String| format!("{what} ({why})");
    let mut seen = std::collections::HashSet::new();
    for r in &t.rollouts {
        seen.insert(r.id);
        if d.started.get(&r.id).map(|x| &x.1) != Some(&started_numbers(r)) {
            out.push(store_record(
                Some(r.id),
                at,
                chain::kinds::ROLLOUT_STARTED,
                accepted(format!("rollout {}", r.id)),
                started_numbers(r),
            ));
        }
        let found = ended_numbers(r.id, r.ended_at, r.outcome.as_deref());
        let want = d.ended.get(&r.id).map(|x| x.1.clone());
        if want.unwrap_or_else(|| ended_numbers(r.id, None, None)) != found {
            out.push(store_record(
                Some(r.id),
                at,
                chain::kinds::ROLLOUT_ENDED,
                accepted(format!("rollout {} outcome", r.id)),
                found,
            ));
        }
    }
    for id in d.started.keys().filter(|id| !seen.contains(id)) {
        out.push(store_record(
            Some(*id),
            at,
            chain::kinds::ROLLOUT_STARTED,
            accepted(format!("rollout {id} removed")),
            serde_json::json!({"id": id, "removed": true}),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (digest, release, failed) in &t.releases {
        seen.insert(digest.clone());
        if d.releases.get(digest).map(|x| &x.1) != Some(release) {
            out.push(store_record(
                None,
                at,
                chain::kinds::RELEASE,
                accepted(format!("release {digest}")),
                release.clone(),
            ));
        }
        let want = d.failed.get(digest).map(|x| x.1.clone());
        if want.unwrap_or_else(|| failed_numbers(digest, None, None)) != *failed {
            out.push(store_record(
                None,
                at,
                chain::kinds::RELEASE_FAILED,
                accepted(format!("release {digest} failed mark")),
                failed.clone(),
            ));
        }
    }
    for digest in d.releases.keys().filter(|x| !seen.contains(*x)) {
        out.push(store_record(
            None,
            at,
            chain::kinds::RELEASE,
            accepted(format!("release {digest} removed")),
            serde_json::json!({"digest": digest, "removed": true}),
        ));
    }
    Ok(out)
}

/// Applies a batch; returns the anchors of `b.decisions` and of the last record appended.
fn apply(
    tx: &Transaction<'_>,
    key: &AuditKey,
    b: &Commit,
) -> Result<(Vec<Head>, Option<Head>), StoreError> {
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
    // The chain's records of what this batch changes in the other tables, in the order the
    // changes are applied, then the engine's decisions.
    let mut records = Vec::new();
    let release_now = |digest: &str| -> Result<Option<serde_json::Value>, StoreError> {
        Ok(tx
            .query_row(
                "SELECT name, exe_sha256, spec_json, created_at FROM releases WHERE digest = ?1",
                [digest],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?
            .map(|(name, exe, spec, created)| release_numbers(digest, &name, &exe, &spec, created)))
    };
    for r in &b.releases {
        let before = release_now(&r.digest)?;
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
        let after = release_now(&r.digest)?;
        if after != before {
            if let Some(n) = after {
                records.push(store_record(
                    None,
                    r.created_at,
                    chain::kinds::RELEASE,
                    format!("release {} ({}) recorded", r.digest, r.name),
                    n,
                ));
            }
        }
        // A release inserted already failed carries its mark in the chain too.
        if before.is_none() && r.failed_at.is_some() {
            records.push(store_record(
                None,
                r.failed_at.unwrap_or(r.created_at),
                chain::kinds::RELEASE_FAILED,
                format!("release {} marked failed", r.digest),
                failed_numbers(&r.digest, r.failed_at, r.failed_reason.as_deref()),
            ));
        }
    }
    for (digest, at, reason) in &b.failed {
        let n = tx.execute(
            "UPDATE releases SET failed_at = ?2, failed_reason = ?3 WHERE digest = ?1",
            params![digest, at, reason],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRelease(digest.clone()));
        }
        records.push(store_record(
            None,
            *at,
            chain::kinds::RELEASE_FAILED,
            format!("release {digest} marked failed: {reason}"),
            failed_numbers(digest, Some(*at), Some(reason)),
        ));
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
        records.push(store_record(
            Some(r.id),
            r.started_at,
            chain::kinds::ROLLOUT_STARTED,
            format!("rollout {} of {} started", r.id, r.to_version),
            started_numbers(r),
        ));
        if r.ended_at.is_some() || r.outcome.is_some() {
            records.push(store_record(
                Some(r.id),
                r.ended_at.unwrap_or(r.started_at),
                chain::kinds::ROLLOUT_ENDED,
                format!("rollout {} ended", r.id),
                ended_numbers(r.id, r.ended_at, r.outcome.as_deref()),
            ));
        }
    }
    for (id, ended_at, outcome) in &b.rollouts_ended {
        let n = tx.execute(
            "UPDATE rollouts SET ended_at = ?2, outcome = ?3 WHERE id = ?1",
            params![id, ended_at, outcome],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRollout(*id));
        }
        records.push(store_record(
            Some(*id),
            *ended_at,
            chain::kinds::ROLLOUT_ENDED,
            format!("rollout {id} ended: {outcome}"),
            ended_numbers(*id, Some(*ended_at), Some(outcome)),
        ));
    }
    let mut last = None;
    for r in &records {
        last = Some(append_record(tx, key, r)?);
    }
    delivery::apply(tx, &b.commits)?;
    // A rollout's recording is packed a block at a time as it grows, and whole when it ends.
    let mut growing: Vec<i64> = b.events.iter().map(|e| e.rollout_id).collect();
    growing.dedup();
    for id in growing {
        recording::pack(tx, id, recording::BLOCK)?;
    }
    for (id, _, _) in &b.rollouts_ended {
        recording::pack(tx, *id, 1)?;
    }
    let mut anchors = Vec::with_capacity(b.decisions.len());
    for d in &b.decisions {
        let head = append_record(tx, key, d)?;
        last = Some(head.clone());
        anchors.push(head);
    }
    if let Some(snapshot) = &b.snapshot {
        tx.execute(
            "INSERT INTO snapshot (id, engine_json, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET engine_json = excluded.engine_json,
                                           updated_at = excluded.updated_at",
            params![serde_json::to_string(snapshot)?, now_ms()],
        )?;
    }
    // A batch without a snapshot keeps the stored one as the state at the new head.
    if b.snapshot.is_some() || last.is_some() {
        seal_snapshot(tx, key)?;
    }
    Ok((anchors, last))
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
