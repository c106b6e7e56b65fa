//! The keyed audit chain against tampering done the way an attacker would: by editing the
//! SQLite file directly, with rusqlite, without the key.

use cutover_store::{
    chain::kinds, verify_db, verify_export, AuditKey, AuditPaths, ChainReport, Commit,
    DecisionRecord, ReleaseRecord, RolloutRecord, Store, StoreError,
};
use rusqlite::{params, Connection};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn release(digest: &str) -> ReleaseRecord {
    ReleaseRecord {
        digest: digest.into(),
        name: "api".into(),
        exe_sha256: "ab".repeat(32),
        spec: json!({"version": digest}),
        created_at: 1_000,
        failed_at: None,
        failed_reason: None,
    }
}

fn rollout(id: i64, from: &str, to: &str, at: i64) -> RolloutRecord {
    RolloutRecord {
        id,
        service: "api".into(),
        from_version: Some(from.into()),
        from_digest: Some(format!("d-{from}")),
        to_version: to.into(),
        to_digest: format!("d-{to}"),
        started_at: at,
        ended_at: None,
        outcome: None,
    }
}

fn decision(rollout_id: i64, at: i64, kind: &str) -> DecisionRecord {
    DecisionRecord {
        seq: None,
        rollout_id: Some(rollout_id),
        at,
        kind: kind.into(),
        reason: format!("{kind}: p99 within 5%"),
        numbers: json!({"p99_ms": 120.5}),
        hash: None,
    }
}

/// A history: v2 aborted (and marked failed), v3 promoted.
fn history() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    s.commit(Commit {
        releases: vec![release("d-v1"), release("d-v2")],
        rollouts_started: vec![rollout(1, "v1", "v2", 2_000)],
        decisions: vec![decision(1, 2_000, "deploy")],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        decisions: vec![decision(1, 3_000, "step")],
        snapshot: Some(json!({"phase": "progressing", "failed": {}})),
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        failed: vec![("d-v2".into(), 4_000, "p99 > 800ms for 45s".into())],
        rollouts_ended: vec![(1, 4_000, "aborted".into())],
        decisions: vec![decision(1, 4_000, "aborted")],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        releases: vec![release("d-v3")],
        rollouts_started: vec![rollout(2, "v1", "v3", 5_000)],
        decisions: vec![decision(2, 5_000, "deploy")],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        rollouts_ended: vec![(2, 6_000, "promoted".into())],
        decisions: vec![decision(2, 6_000, "promoted")],
        snapshot: Some(json!({"phase": "promoted", "failed": {"d-v2": {"at": 4_000}}})),
        ..Commit::default()
    })
    .unwrap();
    assert!(s.verify_chain().unwrap().ok);
    (dir, db)
}

fn sql(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn seq_of(db: &Path, kind: &str, nth: usize) -> i64 {
    let c = Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT seq FROM decisions WHERE kind = ?1 ORDER BY seq")
        .unwrap();
    let seqs: Vec<i64> = st
        .query_map([kind], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    seqs[nth]
}

fn key(db: &Path) -> AuditKey {
    AuditKey::load(&AuditPaths::beside(db).key_file).unwrap()
}

/// Both ways of verifying: the store cutover opens at start, and an auditor's read-only check.
fn verify_both(db: &Path) -> ChainReport {
    let paths = AuditPaths::beside(db);
    let offline = verify_db(db, &key(db), Some(&paths.head_file)).unwrap();
    let online = Store::open(db).unwrap().verify_chain().unwrap();
    assert_eq!(offline.first_bad_seq, online.first_bad_seq, "{offline:?}");
    assert_eq!(offline.ok, online.ok);
    online
}

fn assert_bad(r: &ChainReport, seq: i64, says: &str) {
    assert!(!r.ok, "tampering not detected: {r:?}");
    assert_eq!(r.first_bad_seq, Some(seq), "{r:#?}");
    assert!(r.problems[0].what.contains(says), "{:#?}", r.problems);
}

#[test]
fn an_untouched_history_verifies_and_derives_its_tables() {
    let (_dir, db) = history();
    let r = verify_both(&db);
    assert!(r.ok && r.problems.is_empty(), "{r:?}");
    assert_eq!(r.head.as_ref().map(|h| h.seq), Some(r.rows as i64));
}

#[test]
fn an_edited_decision_is_detected() {
    let (_dir, db) = history();
    let s = seq_of(&db, "step", 0);
    sql(
        &db,
        &format!("UPDATE decisions SET reason = 'all good' WHERE seq = {s}"),
    );
    assert_bad(&verify_both(&db), s, "content does not match its MAC");
}

#[test]
fn a_deleted_decision_is_detected() {
    let (_dir, db) = history();
    let s = seq_of(&db, "step", 0);
    sql(&db, &format!("DELETE FROM decisions WHERE seq = {s}"));
    assert_bad(&verify_both(&db), s + 1, "link to the record before it");
}

#[test]
fn swapped_decisions_are_detected() {
    let (_dir, db) = history();
    let a = seq_of(&db, "deploy", 0);
    let b = seq_of(&db, "step", 0);
    // Swap their whole content, MACs included: each row is intact but out of place.
    sql(
        &db,
        &format!(
            "UPDATE decisions SET seq = -1 WHERE seq = {a};
             UPDATE decisions SET seq = {a} WHERE seq = {b};
             UPDATE decisions SET seq = {b} WHERE seq = -1;"
        ),
    );
    assert_bad(&verify_both(&db), a, "");
}

#[test]
fn deleting_the_newest_records_is_detected() {
    let (_dir, db) = history();
    let last = seq_of(&db, "promoted", 0);
    // The chain that remains is valid on its own; only the anchored head tells.
    sql(
        &db,
        &format!(
            "DELETE FROM decisions WHERE seq >= {};
             UPDATE rollouts SET ended_at = NULL, outcome = NULL WHERE id = 2;",
            last - 1
        ),
    );
    assert_bad(&verify_both(&db), last, "the newest records were deleted");
}

/// HMAC-SHA256 with a key the attacker does not have (here: a guess of their own).
fn hmac_hex(key: &[u8], prev: &str, canonical: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(prev.as_bytes());
    m.update(canonical.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn canonical(row: &cutover_store::ChainRow) -> String {
    json!([
        row.seq,
        row.rollout_id,
        row.at,
        row.kind,
        row.reason,
        row.numbers_json
    ])
    .to_string()
}

/// Rewrites every row from `from` on with `mac_of`, links included, and anchors the new head:
/// everything an attacker can do without the key.
fn rewrite_chain(db: &Path, from: i64, mac_of: impl Fn(&str, &str) -> String) {
    let rows = cutover_store::export_db(db).unwrap();
    let c = Connection::open(db).unwrap();
    let mut prev = rows
        .iter()
        .take_while(|r| r.seq < from)
        .last()
        .map_or(cutover_store::GENESIS_HASH.to_owned(), |r| r.mac.clone());
    let mut last = None;
    for r in rows.iter().filter(|r| r.seq >= from) {
        let mut r = r.clone();
        r.prev = prev.clone();
        let mac = mac_of(&prev, &canonical(&r));
        c.execute(
            "UPDATE decisions SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            params![r.seq, r.prev, mac],
        )
        .unwrap();
        prev = mac.clone();
        last = Some((r.seq, mac));
    }
    let (seq, mac) = last.unwrap();
    let head = AuditPaths::beside(db).head_file;
    std::fs::write(&head, format!("{seq} {mac}\n")).unwrap();
}

#[test]
fn a_rewrite_that_recomputes_the_chain_without_the_key_is_detected() {
    let (_dir, db) = history();
    let s = seq_of(&db, "step", 0);
    sql(
        &db,
        &format!("UPDATE decisions SET reason = 'all good' WHERE seq = {s}"),
    );
    rewrite_chain(&db, s, |prev, c| hmac_hex(b"a guessed key", prev, c));
    assert_bad(&verify_both(&db), s, "rewritten without the key");
}

#[test]
fn a_downgrade_to_the_plain_chain_is_detected_and_not_blessed_by_a_restart() {
    let (_dir, db) = history();
    // Drop the keyed marker, renumber from 1, and recompute everything as the old unkeyed
    // sha256 chain, head file included: a chain that looks written before the key.
    let keyed = seq_of(&db, kinds::KEYED, 0);
    sql(
        &db,
        &format!(
            "DELETE FROM decisions WHERE seq = {keyed};
             UPDATE decisions SET seq = -seq WHERE seq > {keyed};
             UPDATE decisions SET seq = -seq - 1 WHERE seq < 0;"
        ),
    );
    rewrite_chain(&db, 1, |prev, c| {
        hex::encode(Sha256::digest(format!("{prev}{c}").as_bytes()))
    });
    let r = verify_both(&db);
    assert_bad(&r, 1, "not keyed");
    // verify_both opened it as `cutover run` does: it did not key (bless) the rewrite.
    assert_bad(&verify_both(&db), 1, "not keyed");
}

#[test]
fn a_flipped_outcome_is_detected() {
    let (_dir, db) = history();
    sql(&db, "UPDATE rollouts SET outcome = 'promoted' WHERE id = 1");
    let ended = seq_of(&db, kinds::ROLLOUT_ENDED, 0);
    assert_bad(&verify_both(&db), ended, "rollout 1's outcome");
}

#[test]
fn a_cleared_failed_mark_is_detected() {
    let (_dir, db) = history();
    sql(
        &db,
        "UPDATE releases SET failed_at = NULL, failed_reason = NULL WHERE digest = 'd-v2'",
    );
    let mark = seq_of(&db, kinds::RELEASE_FAILED, 0);
    assert_bad(&verify_both(&db), mark, "release d-v2's failed mark");
}

#[test]
fn a_failed_mark_set_outside_cutover_is_detected() {
    let (_dir, db) = history();
    sql(
        &db,
        "UPDATE releases SET failed_at = 1 WHERE digest = 'd-v3'",
    );
    let r = verify_both(&db);
    assert!(!r.ok);
    assert!(
        r.problems
            .iter()
            .any(|p| p.what.contains("release d-v3's failed mark")),
        "{r:#?}"
    );
}

/// What a restarted cutover resumes from, failed marks included, is covered too: edited, or
/// put back as it was earlier.
#[test]
fn an_edited_or_replayed_engine_snapshot_is_detected() {
    let (_dir, db) = history();
    sql(
        &db,
        r#"UPDATE snapshot SET engine_json = '{"failed":{},"phase":"promoted"}'"#,
    );
    let r = verify_both(&db);
    assert!(!r.ok);
    assert!(
        r.problems[0].what.contains("engine snapshot") && r.problems[0].what.contains("MAC"),
        "{r:#?}"
    );

    // A snapshot with a valid MAC from earlier in the same chain: replayed.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    let snap = |phase: &str| Commit {
        decisions: vec![decision(1, 1, phase)],
        snapshot: Some(json!({ "phase": phase })),
        ..Commit::default()
    };
    s.commit(snap("progressing")).unwrap();
    let old: (String, i64, String) = Connection::open(&db)
        .unwrap()
        .query_row("SELECT engine_json, head_seq, mac FROM snapshot", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    s.commit(snap("aborted")).unwrap();
    assert!(s.verify_chain().unwrap().ok);
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE snapshot SET engine_json = ?1, head_seq = ?2, mac = ?3",
            params![old.0, old.1, old.2],
        )
        .unwrap();
    let r = s.verify_chain().unwrap();
    assert!(!r.ok);
    assert!(
        r.problems[0].what.contains("replaced by an older one"),
        "{r:#?}"
    );
}

#[test]
fn a_deleted_or_inserted_rollout_row_is_detected() {
    let (_dir, db) = history();
    sql(&db, "DELETE FROM rollouts WHERE id = 1");
    let started = seq_of(&db, kinds::ROLLOUT_STARTED, 0);
    assert_bad(
        &verify_both(&db),
        started,
        "missing from the rollouts table",
    );

    let (_dir, db) = history();
    sql(
        &db,
        "INSERT INTO rollouts (id, service, to_version, to_digest, started_at)
         VALUES (9, 'api', 'v9', 'd-v9', 1)",
    );
    let r = verify_both(&db);
    assert!(!r.ok);
    assert!(r.problems[0].what.contains("rollout 9"), "{r:#?}");
}

#[test]
fn accepting_tampering_is_recorded_and_later_tampering_still_detected() {
    let (_dir, db) = history();
    let s = seq_of(&db, "step", 0);
    sql(
        &db,
        &format!(
            "UPDATE decisions SET reason = 'edited' WHERE seq = {s};
             UPDATE rollouts SET outcome = 'promoted' WHERE id = 1;"
        ),
    );
    let mut store = Store::open(&db).unwrap();
    let report = store.verify_chain().unwrap();
    assert!(!report.ok);
    let head = store
        .accept_tampered(&report, 9_000, "restored from a backup")
        .unwrap();
    let after = store.verify_chain().unwrap();
    assert!(after.ok, "{after:#?}");
    assert_eq!(after.accepted, 1);
    assert_eq!(after.head, Some(head));
    drop(store);
    let rows = cutover_store::export_db(&db).unwrap();
    let acc = rows
        .iter()
        .find(|r| r.kind == kinds::TAMPER_ACCEPTED)
        .unwrap();
    assert!(acc.reason.contains("restored from a backup"), "{acc:?}");
    // The accepted row may not change again, nor may anything else.
    sql(
        &db,
        &format!("UPDATE decisions SET reason = 'edited twice' WHERE seq = {s}"),
    );
    assert_bad(&verify_both(&db), s, "content does not match");
}

/// The schema and plain sha256 chain a cutover from before the key wrote (schema version 2).
fn legacy_store(dir: &Path) -> PathBuf {
    let db = dir.join("cutover.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE releases (digest TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,
            exe_sha256 TEXT NOT NULL, spec_json TEXT NOT NULL, created_at INTEGER NOT NULL,
            failed_at INTEGER NULL, failed_reason TEXT NULL);
         CREATE TABLE rollouts (id INTEGER PRIMARY KEY NOT NULL, service TEXT NOT NULL,
            from_version TEXT NULL, from_digest TEXT NULL, to_version TEXT NOT NULL,
            to_digest TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER NULL,
            outcome TEXT NULL);
         CREATE INDEX rollouts_started_at ON rollouts(started_at);
         CREATE TABLE decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id INTEGER NULL,
            at INTEGER NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
            numbers_json TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
         CREATE INDEX decisions_rollout ON decisions(rollout_id, seq);
         CREATE TABLE snapshot (id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
            engine_json TEXT NOT NULL, updated_at INTEGER NOT NULL);
         CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id INTEGER NOT NULL,
            at INTEGER NOT NULL, event_json TEXT NOT NULL, state_before TEXT NULL);
         CREATE INDEX events_rollout ON events(rollout_id, seq);
         INSERT INTO snapshot VALUES (1, '{\"phase\":\"done\"}', 1);
         PRAGMA user_version = 2;",
    )
    .unwrap();
    let mut prev = cutover_store::GENESIS_HASH.to_owned();
    for (seq, kind) in [(1, "deploy"), (2, "step"), (3, "promoted")] {
        let numbers = r#"{"weight_bp":200}"#;
        let canonical = json!([seq, 1, seq * 1000, kind, "why", numbers]).to_string();
        let hash = hex::encode(Sha256::digest(format!("{prev}{canonical}").as_bytes()));
        c.execute(
            "INSERT INTO decisions VALUES (?1, 1, ?2, ?3, 'why', ?4, ?5, ?6)",
            params![seq, seq * 1000, kind, numbers, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    db
}

#[test]
fn an_unkeyed_store_is_keyed_on_open_and_its_old_rows_stay_protected() {
    let dir = tempfile::tempdir().unwrap();
    let db = legacy_store(dir.path());
    let paths = AuditPaths::beside(&db);
    assert!(!paths.key_file.exists());
    // An auditor with a key but no migration yet: the chain is not keyed, and says so.
    let r = verify_db(&db, &AuditKey::from_bytes([7; 32]), None).unwrap();
    assert!(!r.ok && r.problems[0].what.contains("not keyed"), "{r:?}");

    let store = Store::open(&db).unwrap();
    let mode = std::fs::metadata(&paths.key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = store.verify_chain().unwrap();
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.rows, 4);
    drop(store);

    // Rewriting an old (plain) row and recomputing the plain chain after it, which needs no
    // key, breaks the link of the keyed record that MACed the old head.
    sql(&db, "UPDATE decisions SET reason = 'fine' WHERE seq = 2");
    let c = Connection::open(&db).unwrap();
    let mut prev: String = c
        .query_row("SELECT hash FROM decisions WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    for seq in 2..=3i64 {
        let (kind, reason, numbers, at): (String, String, String, i64) = c
            .query_row(
                "SELECT kind, reason, numbers_json, at FROM decisions WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let canonical = json!([seq, 1, at, kind, reason, numbers]).to_string();
        let hash = hex::encode(Sha256::digest(format!("{prev}{canonical}").as_bytes()));
        c.execute(
            "UPDATE decisions SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            params![seq, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    assert_bad(&verify_both(&db), 4, "link to the record before it");
}

#[test]
fn a_keyed_store_without_its_key_is_refused_and_a_readable_key_too() {
    let (_dir, db) = history();
    let paths = AuditPaths::beside(&db);
    std::fs::set_permissions(&paths.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(&db).unwrap_err();
    assert!(matches!(err, StoreError::KeyInsecure { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::remove_file(&paths.key_file).unwrap();
    let err = Store::open(&db).unwrap_err();
    assert!(matches!(err, StoreError::KeyMissing { .. }), "{err}");
    assert!(
        !paths.key_file.exists(),
        "no new key was made for a keyed chain"
    );
}

#[test]
fn a_key_elsewhere_is_used_and_the_state_dir_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let paths = AuditPaths {
        key_file: keys.path().join("cutover-audit.key"),
        head_file: dir.path().join("audit.head"),
    };
    let mut s = Store::open_with(&db, paths.clone()).unwrap();
    s.commit(Commit {
        decisions: vec![decision(1, 1, "deploy")],
        ..Commit::default()
    })
    .unwrap();
    assert!(s.verify_chain().unwrap().ok);
    assert!(!dir.path().join("audit.key").exists());
    let k = AuditKey::load(&paths.key_file).unwrap();
    assert!(verify_db(&db, &k, Some(&paths.head_file)).unwrap().ok);
    // The wrong key fails every keyed record, from the first.
    let r = verify_db(&db, &AuditKey::from_bytes([1; 32]), None).unwrap();
    assert_eq!(r.first_bad_seq, Some(1));
}

#[test]
fn an_export_verifies_on_its_own() {
    let (_dir, db) = history();
    let k = key(&db);
    let head = cutover_store::chain::read_head(&AuditPaths::beside(&db).head_file)
        .unwrap()
        .unwrap();
    let lines: Vec<String> = cutover_store::export_db(&db)
        .unwrap()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let text = lines.join("\n") + "\n";
    let r = verify_export(&text, &k, Some(&head)).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.rows as usize, lines.len());
    // Each line carries its seq, prev and mac.
    let first: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        first["prev"],
        json!(serde_json::from_str::<serde_json::Value>(&lines[0]).unwrap()["mac"])
    );
    assert!(first["seq"].is_i64());

    let edited = text.replacen("p99 within 5%", "p99 within 50%", 1);
    let r = verify_export(&edited, &k, Some(&head)).unwrap();
    assert!(!r.ok);
    let truncated = lines[..lines.len() - 1].join("\n");
    let r = verify_export(&truncated, &k, Some(&head)).unwrap();
    assert_bad(&r, head.seq, "newest records were deleted");
    let err = verify_export("{not json", &k, None).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

fn event(rollout_id: i64, at: i64) -> cutover_store::EventRecord {
    cutover_store::EventRecord {
        rollout_id,
        at,
        event: json!({"event": "tick", "at": at}),
        state_before: None,
    }
}

fn commit_info(rollout_id: i64) -> cutover_store::CommitInfo {
    cutover_store::CommitInfo {
        rollout_id,
        commit: format!("{rollout_id:040}"),
        committed_at: 1,
    }
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Retention removes exactly what ended before the cutoff and is not in use; what remains
/// verifies, with a checkpoint where the chain now starts.
#[test]
fn retention_prunes_exactly_what_is_past_it_and_not_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    // Times after the `audit.keyed` record the store wrote on open (at the wall clock's now).
    let t0 = cutover_clock::unix_millis() as i64 + 3_600_000;
    let t = |ms: i64| t0 + ms;
    // Rollout 1: v1 → v2, ended at 2 000 (old). Rollout 2: v2 → v3, ended at 2 500 (old, but
    // in use: say it is the last rollout and v2 is held). Rollout 3: v2 → v4, ended at 9 000.
    // Rollout 4: v2 → v5 running since 1 500 (in use; started long ago).
    let mut old_v0 = release("d-v0");
    old_v0.created_at = t(100);
    let recent = |d: &str| ReleaseRecord {
        created_at: t(1_000),
        ..release(d)
    };
    s.commit(Commit {
        releases: vec![old_v0, recent("d-v1"), recent("d-v2")],
        rollouts_started: vec![rollout(1, "v1", "v2", t(1_000))],
        decisions: vec![decision(1, t(1_000), "deploy")],
        events: vec![event(1, t(1_000)), event(1, t(1_100))],
        commits: vec![commit_info(1)],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        rollouts_started: vec![rollout(4, "v2", "v5", t(1_500))],
        decisions: vec![decision(4, t(1_500), "deploy")],
        events: vec![event(4, t(1_500))],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        failed: vec![("d-v1".into(), t(2_000), "p99".into())],
        rollouts_ended: vec![(1, t(2_000), "aborted".into())],
        decisions: vec![decision(1, t(2_000), "aborted")],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        rollouts_started: vec![rollout(2, "v2", "v3", t(2_100))],
        rollouts_ended: vec![(2, t(2_500), "aborted".into())],
        decisions: vec![decision(2, t(2_500), "aborted")],
        events: vec![event(2, t(2_100))],
        ..Commit::default()
    })
    .unwrap();
    s.commit(Commit {
        rollouts_started: vec![rollout(3, "v2", "v4", t(8_000))],
        rollouts_ended: vec![(3, t(9_000), "promoted".into())],
        decisions: vec![decision(3, t(9_000), "promoted")],
        events: vec![event(3, t(8_000)), event(3, t(8_500))],
        commits: vec![commit_info(3)],
        ..Commit::default()
    })
    .unwrap();
    // Serving changes for `report`: down at 2 000, up at 3 000 (the state at the cutoff), a
    // planned stop at 9 000.
    for (at, serving, planned) in [
        (100, true, false),
        (2_000, false, false),
        (3_000, true, false),
        (9_000, false, true),
    ] {
        s.record_serving(&cutover_store::ServingRecord {
            service: "api".into(),
            at: t(at),
            serving,
            planned,
        })
        .unwrap();
    }
    // Ended rollouts' recordings are packed when they end.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE rollout_id IN (1, 3)"
        ),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM event_blocks WHERE rollout_id IN (1, 3)"
        ),
        2
    );
    let head_lines = |db: &Path| -> Vec<i64> {
        std::fs::read_to_string(db.with_file_name("audit.head"))
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    assert!(head_lines(&db).len() >= 5);
    let before = cutover_store::export_db(&db).unwrap();
    let first_of_4 = before.iter().find(|r| r.rollout_id == Some(4)).unwrap().seq;

    let keep = cutover_store::InUse {
        rollouts: vec![2, 4],
        digests: vec!["d-v2".into()],
    };
    let pruned = s.prune(t(5_000), t(10_000), &keep).unwrap();
    // Only rollout 1 ended before the cutoff and is not in use; d-v0 is old and unused; d-v1
    // is referenced by no remaining rollout... but it was created at 1 000 < 5 000: pruned too.
    assert_eq!(pruned.rollouts, 1, "{pruned:?}");
    assert_eq!(pruned.events, 2, "rollout 1's, packed in a block");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM event_blocks WHERE rollout_id = 1"
        ),
        0
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM rollout_commits"),
        1,
        "rollout 1's commit goes with it; 3's stays"
    );
    // The serving changes before the cutoff go, but the last one (up at 3 000).
    assert_eq!(pruned.serving, 2, "{pruned:?}");
    let facts: Vec<i64> = s
        .serving_facts(i64::MAX)
        .unwrap()
        .iter()
        .map(|f| f.at)
        .collect();
    assert_eq!(facts, [t(3_000), t(9_000)]);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM rollouts"),
        3,
        "rollouts 2 (in use), 3 (recent) and 4 (running) stay"
    );
    assert!(s.rollout(1).unwrap().is_none());
    assert_eq!(s.events(4).unwrap().len(), 1);
    assert_eq!(s.events(3).unwrap().len(), 2);
    assert_eq!(s.events(2).unwrap().len(), 1);
    assert!(s.release("d-v0").unwrap().is_none());
    assert!(s.release("d-v2").unwrap().is_some(), "in use");
    // d-v3 .. d-v5 were never recorded as releases here; d-v1 is gone with rollout 1.
    assert_eq!(pruned.releases, 2, "{pruned:?}");
    // The chain was cut at the first record of the running rollout 4, not later.
    assert_eq!(pruned.first_seq, Some(first_of_4));
    // `audit.head` keeps the anchors from the chain's first record on, and the new head.
    let lines = head_lines(&db);
    assert!(pruned.head_lines > 0, "{pruned:?}");
    assert!(lines.iter().all(|&seq| seq >= first_of_4), "{lines:?}");
    assert_eq!(
        *lines.last().unwrap(),
        cutover_store::export_db(&db).unwrap().last().unwrap().seq
    );
    let after = cutover_store::export_db(&db).unwrap();
    assert_eq!(after[0].seq, first_of_4);
    assert!(after.iter().all(|r| r.seq >= first_of_4));
    // Everything from the boundary on is untouched.
    for r in before.iter().filter(|r| r.seq >= first_of_4) {
        assert!(after.contains(r), "{r:?} changed");
    }
    assert!(after.iter().any(|r| r.kind == kinds::CHECKPOINT));
    let r = verify_both(&db);
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.pruned_before, Some(first_of_4));
    // Decisions of the kept rollouts are all still there.
    assert_eq!(s.decisions(Some(4), 10).unwrap().len(), 1);
    assert_eq!(s.decisions(Some(2), 10).unwrap().len(), 1);

    // Pruning again with nothing older changes nothing but stays verifiable.
    let again = s.prune(t(5_000), t(10_001), &keep).unwrap();
    assert_eq!((again.rollouts, again.records), (0, 0), "{again:?}");
    assert!(verify_both(&db).ok);

    // Deleting more of the oldest records than the checkpoint says is detected.
    sql(
        &db,
        &format!("DELETE FROM decisions WHERE seq = {first_of_4}"),
    );
    assert_bad(
        &verify_both(&db),
        first_of_4 + 1,
        "oldest records were deleted",
    );
}
