//! Schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1`. Migrations are only
//! ever appended: a released binary may open a state directory written by an older one, and must
//! refuse (not corrupt) one written by a newer one.

use crate::StoreError;
use rusqlite::Connection;

/// `MIGRATIONS[i]` upgrades a database at `user_version = i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema.
    r#"
    CREATE TABLE releases (
        digest        TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL,
        exe_sha256    TEXT NOT NULL,
        spec_json     TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        failed_at     INTEGER NULL,
        failed_reason TEXT NULL
    );
    CREATE TABLE rollouts (
        id           INTEGER PRIMARY KEY NOT NULL,
        service      TEXT NOT NULL,
        from_version TEXT NULL,
        from_digest  TEXT NULL,
        to_version   TEXT NOT NULL,
        to_digest    TEXT NOT NULL,
        started_at   INTEGER NOT NULL,
        ended_at     INTEGER NULL,
        outcome      TEXT NULL
    );
    CREATE INDEX rollouts_started_at ON rollouts(started_at);
    CREATE TABLE decisions (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout_id   INTEGER NULL,
        at           INTEGER NOT NULL,
        kind         TEXT NOT NULL,
        reason       TEXT NOT NULL,
        numbers_json TEXT NOT NULL,
        prev_hash    TEXT NOT NULL,
        hash         TEXT NOT NULL
    );
    CREATE INDEX decisions_rollout ON decisions(rollout_id, seq);
    CREATE TABLE snapshot (
        id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
        engine_json TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    "#,
    // 1 -> 2: every event the engine applied, per rollout, for `cutover simulate`.
    r#"
    CREATE TABLE events (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout_id   INTEGER NOT NULL,
        at           INTEGER NOT NULL,
        event_json   TEXT NOT NULL,
        state_before TEXT NULL
    );
    CREATE INDEX events_rollout ON events(rollout_id, seq);
    "#,
    // 2 -> 3: the engine snapshot is MACed with the audit key, with the chain position it was
    // written at (a snapshot replaced by an older one, or edited, is detected).
    r#"
    ALTER TABLE snapshot ADD COLUMN head_seq INTEGER NULL;
    ALTER TABLE snapshot ADD COLUMN mac TEXT NULL;
    "#,
    // 3 -> 4: what `cutover report` needs: the commit a rollout deployed, and every change of
    // "the service has a ready instance" (for unplanned downtime).
    r#"
    CREATE TABLE rollout_commits (
        rollout_id   INTEGER PRIMARY KEY NOT NULL,
        commit_sha   TEXT NOT NULL,
        committed_at INTEGER NOT NULL
    );
    CREATE TABLE serving (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        at      INTEGER NOT NULL,
        serving INTEGER NOT NULL,
        planned INTEGER NOT NULL
    );
    CREATE INDEX serving_at ON serving(at);
    "#,
    // 4 -> 5: a rollout's recorded events packed into deflated blocks (crate::recording): one
    // row per block of consecutive events instead of one full JSON row per evaluation. Rows of
    // `events` (older stores', and the newest events of a rollout in progress) stay readable.
    r#"
    CREATE TABLE event_blocks (
        rollout_id INTEGER NOT NULL,
        first_seq  INTEGER NOT NULL,
        last_seq   INTEGER NOT NULL,
        events     INTEGER NOT NULL,
        codec      TEXT NOT NULL,
        data       BLOB NOT NULL,
        PRIMARY KEY (rollout_id, first_seq)
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` up to [`SCHEMA_VERSION`], each step in its own transaction together with the
/// `user_version` bump, so a crash mid-migration leaves the previous version intact.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // PRAGMA takes no bound parameters; the value is our own integer, not user input.
        tx.execute_batch(&format!("PRAGMA user_version = {}", from + 1))?;
        tx.commit()?;
    }
    Ok(())
}
