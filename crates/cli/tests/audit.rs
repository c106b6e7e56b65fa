//! The audit chain an auditor can trust, through the real `cutover` binary: a history recorded
//! by a real cutover (v1 released, v2 aborted by an operator and marked failed), then tampered
//! with by editing the SQLite file directly, each way detected by `history --verify` (with no
//! cutover running) and refused by `cutover run` (exit 65, naming the first bad record).

mod common;

use common::{is_aborted, is_promoted, Harness};
use cutover_core::engine::Phase;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn cutover(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .env_remove("CUTOVER_AUDIT_KEY_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory with `cutover.toml` and the `state/` a real cutover left behind: v1 released,
/// v2 promoted then rolled back (marked failed), v3 aborted by the operator.
async fn recorded_history() -> tempfile::TempDir {
    let _g = common::serial().await;
    let h = Harness::start().await;
    let long = Duration::from_secs(20);
    h.first_release("v1").await;
    let active = |v: &'static str| {
        move |s: &cutover_host::status::StatusView| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.to.version == v && matches!(r.phase, Phase::Progressing { .. }))
        }
    };
    h.deploy("v2", serde_json::json!({})).await.unwrap();
    h.wait_for("v2 canary", long, active("v2")).await;
    h.verb("promote").await.unwrap();
    h.wait_for("v2 promoted", long, is_promoted).await;
    h.verb("rollback").await.unwrap();
    h.wait_for("v2 rolled back", long, |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| r.phase.name() == "rolled_back")
    })
    .await;
    h.deploy("v3", serde_json::json!({})).await.unwrap();
    h.wait_for("v3 canary", long, active("v3")).await;
    h.client
        .post("/v1/abort", &serde_json::json!({"reason": "audit test"}))
        .await
        .unwrap();
    h.wait_for("v3 aborted", long, is_aborted).await;
    let mut h = h;
    h.running.take().unwrap().shutdown().await;
    std::mem::replace(&mut h.dir, tempfile::tempdir().unwrap())
}

/// A copy of `from` (config and state, without instance logs) to tamper with.
fn copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::copy(from.join("cutover.toml"), to.path().join("cutover.toml")).unwrap();
    std::fs::create_dir(to.path().join("state")).unwrap();
    for e in std::fs::read_dir(from.join("state")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let dst = to.path().join("state").join(e.file_name());
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
    to
}

fn db(dir: &Path) -> PathBuf {
    dir.join("state/cutover.db")
}

fn query_i64(dir: &Path, sql: &str) -> i64 {
    Connection::open(db(dir))
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn exec(dir: &Path, sql: &str) {
    Connection::open(db(dir))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// What an attacker without the key can do after editing a row: recompute every hash after it
/// (as the unkeyed chain did, sha256 of prev and content) and rewrite the head file to match.
fn recompute_without_key(dir: &Path, from: i64) {
    let c = Connection::open(db(dir)).unwrap();
    let mut prev: String = c
        .query_row(
            "SELECT hash FROM decisions WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [from],
            |r| r.get(0),
        )
        .unwrap();
    let mut st = c
        .prepare(
            "SELECT seq, rollout_id, at, kind, reason, numbers_json FROM decisions
             WHERE seq >= ?1 ORDER BY seq",
        )
        .unwrap();
    let rows: Vec<(i64, Option<i64>, i64, String, String, String)> = st
        .query_map([from], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut last = 0;
    for (seq, rollout, at, kind, reason, numbers) in rows {
        let canonical = serde_json::json!([seq, rollout, at, kind, reason, numbers]).to_string();
        let hash = hex::encode(Sha256::digest(format!("{prev}{canonical}").as_bytes()));
        c.execute(
            "UPDATE decisions SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            rusqlite::params![seq, prev, hash],
        )
        .unwrap();
        prev = hash;
        last = seq;
    }
    std::fs::write(dir.join("state/audit.head"), format!("{last} {prev}\n")).unwrap();
}

/// `history --verify` and `run` on a tampered copy: both exit 65 and name record `seq`.
fn assert_detected(dir: &Path, seq: i64, case: &str) {
    let (code, out, err) = cutover(&["history", "--verify", "--state-dir", "state"], dir);
    assert_eq!(code, 65, "{case}: history --verify\n{out}\n{err}");
    assert!(
        out.contains(&format!("TAMPERED at record #{seq} ")),
        "{case}: history --verify must name record #{seq}:\n{out}"
    );
    assert!(err.contains(&format!("record #{seq}")), "{case}:\n{err}");
    let (code, out, err) = cutover(&["-c", "cutover.toml", "run"], dir);
    assert_eq!(code, 65, "{case}: run\n{out}\n{err}");
    assert!(
        err.contains("failed audit verification") && err.contains(&format!("record #{seq}")),
        "{case}: run must refuse naming record #{seq}:\n{err}"
    );
    assert!(err.contains("--accept-tampered"), "{case}:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_by_history_verify_and_refused_at_start() {
    let history = recorded_history().await;
    let pristine = history.path();
    let (code, out, err) = cutover(&["history", "--verify", "--state-dir", "state"], pristine);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("audit chain: OK ("), "{out}");

    let seq = |d: &Path, kind: &str| {
        query_i64(
            d,
            &format!("SELECT MIN(seq) FROM decisions WHERE kind = '{kind}'"),
        )
    };
    let last = query_i64(pristine, "SELECT MAX(seq) FROM decisions");

    // Edit: an operator's abort reworded.
    let d = copy(pristine);
    let s = seq(d.path(), "aborted");
    exec(
        d.path(),
        &format!("UPDATE decisions SET reason = 'all fine' WHERE seq = {s}"),
    );
    assert_detected(d.path(), s, "edit");

    // Delete: a decision in the middle (v1's first).
    let first = query_i64(
        pristine,
        "SELECT MIN(seq) FROM decisions WHERE kind NOT LIKE 'audit.%'",
    );
    assert!(first + 3 < last, "a middle record is needed");
    let d = copy(pristine);
    let s = first;
    exec(d.path(), &format!("DELETE FROM decisions WHERE seq = {s}"));
    assert_detected(d.path(), s + 1, "delete");

    // Swap: two records trade places, each intact.
    let d = copy(pristine);
    let (a, b) = (first, first + 1);
    exec(
        d.path(),
        &format!(
            "UPDATE decisions SET seq = -1 WHERE seq = {a};
             UPDATE decisions SET seq = {a} WHERE seq = {b};
             UPDATE decisions SET seq = {b} WHERE seq = -1;"
        ),
    );
    assert_detected(d.path(), a, "swap");

    // Delete the newest records: what remains is a valid chain; the anchored head tells.
    let d = copy(pristine);
    exec(
        d.path(),
        &format!("DELETE FROM decisions WHERE seq > {}", last - 2),
    );
    assert_detected(d.path(), last, "delete the newest");

    // Recompute the chain without the key, head file included.
    let d = copy(pristine);
    let s = seq(d.path(), "aborted");
    exec(
        d.path(),
        &format!("UPDATE decisions SET reason = 'all fine' WHERE seq = {s}"),
    );
    recompute_without_key(d.path(), s);
    assert_detected(d.path(), s, "recompute without the key");

    // Flip an outcome: the rollout table is checked against the chain's record of it.
    let d = copy(pristine);
    let ended = query_i64(
        d.path(),
        "SELECT MAX(seq) FROM decisions WHERE kind = 'audit.rollout_ended'
           AND numbers_json LIKE '%\"aborted\"%'",
    );
    exec(
        d.path(),
        "UPDATE rollouts SET outcome = 'promoted' WHERE outcome = 'aborted'",
    );
    assert_detected(d.path(), ended, "flip an outcome");

    // Flip a failed mark: v2 could then be deployed again without --force.
    let d = copy(pristine);
    let mark = seq(d.path(), "audit.release_failed");
    exec(
        d.path(),
        "UPDATE releases SET failed_at = NULL, failed_reason = NULL WHERE failed_at IS NOT NULL",
    );
    assert_detected(d.path(), mark, "flip a failed mark");

    // The failed mark the engine acts on lives in its snapshot (what a restart resumes from).
    let d2 = copy(pristine);
    exec(
        d2.path(),
        "UPDATE snapshot SET engine_json = json_set(engine_json, '$.failed', json('{}'))",
    );
    let (code, out, _) = cutover(&["history", "--verify", "--state-dir", "state"], d2.path());
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("the engine snapshot"), "{out}");
    let (code, _, err) = cutover(&["-c", "cutover.toml", "run"], d2.path());
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("the engine snapshot"), "{err}");

    // `--accept-tampered` starts on it, records that, and the chain verifies again.
    let log = tokio::task::block_in_place(|| run_until_started(d.path(), &["--accept-tampered"]));
    assert!(log.contains("as --accept-tampered asked"), "{log}");
    let (code, out, err) = cutover(&["history", "--verify", "--state-dir", "state"], d.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("tampering accepted by `run --accept-tampered`"),
        "{out}"
    );
    let accepted = query_i64(
        d.path(),
        "SELECT COUNT(*) FROM decisions WHERE kind = 'audit.tamper_accepted'",
    );
    assert_eq!(accepted, 1);
}

/// `cutover run ARGS` in `dir` until its log says it runs, then SIGTERM; it must exit 0.
/// Returns its log.
fn run_until_started(dir: &Path, args: &[&str]) -> String {
    let log_path = dir.join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["-c", "cutover.toml", "run"])
        .args(args)
        .current_dir(dir)
        // The e2e config logs warnings only; "cutover is running" is at info.
        .env("RUST_LOG", "info")
        .env_remove("CUTOVER_AUDIT_KEY_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    cutover_testkit::eventually_blocking(Duration::from_secs(30), "running", || {
        let l = log();
        if l.contains("cutover is running") {
            Ok(())
        } else if let Ok(Some(status)) = run.try_wait() {
            panic!("cutover run exited ({status}) before it ran:\n{l}");
        } else {
            Err(l)
        }
    });
    let term = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log());
    log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_on_its_own_and_an_auditor_copy_too() {
    let history = recorded_history().await;
    let d = history.path();
    let (code, out, err) = cutover(
        &[
            "history",
            "--export",
            "--state-dir",
            "state",
            "-o",
            "chain.jsonl",
        ],
        d,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let text = std::fs::read_to_string(d.join("chain.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 5, "{text}");
    for w in lines.windows(2) {
        assert_eq!(
            w[1]["prev"], w[0]["mac"],
            "each line links to the one before"
        );
        assert!(w[1]["seq"].as_i64() > w[0]["seq"].as_i64());
    }
    let verify_export = |file: &str, head: bool| {
        let mut args = vec![
            "history",
            "--verify",
            "--export-file",
            file,
            "--key-file",
            "state/audit.key",
        ];
        if head {
            args.extend(["--head-file", "state/audit.head"]);
        }
        cutover(&args, d)
    };
    let (code, out, err) = verify_export("chain.jsonl", true);
    assert_eq!(code, 0, "{out}\n{err}");
    // Without the head, it still verifies, and says what it could not check.
    let (code, out, _) = verify_export("chain.jsonl", false);
    assert_eq!(code, 0);
    assert!(out.contains("head not checked"), "{out}");
    // An export missing its newest line, or with a line edited, fails.
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(d.join("cut.jsonl"), cut[..cut.len() - 1].join("\n")).unwrap();
    let (code, out, _) = verify_export("cut.jsonl", true);
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("newest records were deleted"), "{out}");
    std::fs::write(
        d.join("edited.jsonl"),
        text.replacen("audit test", "nothing to see", 1),
    )
    .unwrap();
    assert!(
        text.contains("audit test"),
        "the operator's reason is in the chain"
    );
    let (code, out, _) = verify_export("edited.jsonl", true);
    assert_eq!(code, 65, "{out}");

    // An auditor's copy of the database, elsewhere, with the key and head given.
    let auditor = tempfile::tempdir().unwrap();
    std::fs::copy(db(d), auditor.path().join("copy.db")).unwrap();
    let key = d.join("state/audit.key");
    let head = d.join("state/audit.head");
    let (code, out, err) = cutover(
        &[
            "history",
            "--verify",
            "--db",
            "copy.db",
            "--key-file",
            key.to_str().unwrap(),
            "--head-file",
            head.to_str().unwrap(),
        ],
        auditor.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // Without a key there is nothing to verify with: a usage error saying how to give one.
    let (code, _, err) = cutover(&["history", "--verify", "--db", "copy.db"], auditor.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--key-file"), "{err}");
}

/// `[state] retention` prunes at start what ended before it and is not in use, and the kept
/// rollout's recording — packed into blocks when it ended — still exports identically and
/// simulates to the same verdicts; `audit.head` keeps only the anchors of what remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_is_in_use_and_simulate_still_reproduces_it() {
    let history = recorded_history().await;
    let d = history.path();
    let ids = |d: &Path| -> Vec<i64> {
        let c = Connection::open(db(d)).unwrap();
        let mut st = c.prepare("SELECT id FROM rollouts ORDER BY id").unwrap();
        let ids = st.query_map([], |r| r.get(0)).unwrap();
        ids.map(Result::unwrap).collect()
    };
    assert_eq!(ids(d), [1, 2, 3]);
    let run = |args: &[&str]| {
        let (code, out, err) = cutover(args, d);
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        out
    };
    // Every ended rollout's recording was packed when it ended: no full rows are left.
    assert_eq!(query_i64(d, "SELECT COUNT(*) FROM events"), 0);
    assert!(query_i64(d, "SELECT COUNT(*) FROM event_blocks WHERE rollout_id = 3") >= 1);
    // Made into what a cutover from before blocks left (schema 4, a full row per event): it
    // exports without a migration, and the restart below migrates it and packs it again.
    unpack_to_schema_4(d);
    run(&["export", "--rollout", "3", "-o", "before.json"]);
    let simulated = run(&["simulate", "before.json"]);
    let head_seqs = |d: &Path| -> Vec<i64> {
        std::fs::read_to_string(d.join("state/audit.head"))
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let lines_before = head_seqs(d).len();
    let failed_marks = |d: &Path| -> Vec<String> {
        let json: String = Connection::open(db(d))
            .unwrap()
            .query_row("SELECT engine_json FROM snapshot", [], |r| r.get(0))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["failed"].as_object().unwrap().keys().cloned().collect()
    };
    let marked = failed_marks(d);
    assert_eq!(marked.len(), 1, "v2, rolled back: {marked:?}");

    let mut text = std::fs::read_to_string(d.join("cutover.toml")).unwrap();
    assert!(!text.contains("[state]"));
    text.push_str("\n[state]\nretention = \"1ms\"\n");
    std::fs::write(d.join("cutover.toml"), text).unwrap();
    let log = tokio::task::block_in_place(|| run_until_started(d, &[]));
    assert!(log.contains("pruned the state store"), "{log}");

    // Rollouts 1 (v1's first release) and 2 (v2, rolled back) ended before the cutoff; 3 is
    // the engine's current one. v2's release is gone; v1 (stable) and v3 stay.
    assert_eq!(ids(d), [3]);
    assert_eq!(
        query_i64(d, "PRAGMA user_version"),
        cutover_store::SCHEMA_VERSION
    );
    assert_eq!(
        query_i64(d, "SELECT COUNT(*) FROM events"),
        0,
        "packed at the prune"
    );
    assert!(query_i64(d, "SELECT COUNT(*) FROM event_blocks WHERE rollout_id = 3") >= 1);
    let digests = query_i64(d, "SELECT COUNT(*) FROM releases");
    assert_eq!(digests, 2);
    let out = run(&["history", "--verify", "--state-dir", "state"]);
    assert!(out.contains("vouched for by a checkpoint"), "{out}");
    // v2's failure mark is older than the retention and v2 is not the last rollout's release:
    // it expired, on record.
    assert!(failed_marks(d).is_empty());
    let expired: String = Connection::open(db(d))
        .unwrap()
        .query_row(
            "SELECT numbers_json FROM decisions WHERE kind = 'failure_expired' AND rollout_id IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(expired.contains(&marked[0]), "{expired}");
    let first = query_i64(d, "SELECT MIN(seq) FROM decisions");
    let seqs = head_seqs(d);
    assert!(seqs.iter().all(|&s| s >= first), "{seqs:?} from #{first}");
    assert!(seqs.len() < lines_before, "{seqs:?}");

    run(&["export", "--rollout", "3", "-o", "after.json"]);
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("before.json")).unwrap()).unwrap();
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("after.json")).unwrap()).unwrap();
    // The recording is the same; the restart itself added a `recovered` decision to rollout 3.
    for part in ["events", "initial_state", "format", "rollout"] {
        assert_eq!(
            before[part], after[part],
            "the kept rollout's {part} changed"
        );
    }
    assert!(after["decisions"]
        .as_array()
        .unwrap()
        .starts_with(before["decisions"].as_array().unwrap()));
    // The same replay, the same verdicts (the comparison's note may count the `recovered`).
    let again = run(&["simulate", "after.json"]);
    let body = |t: &str| t.split("same decisions:").next().unwrap().to_owned();
    assert_eq!(body(&again), body(&simulated));
    assert!(
        again.contains("same decisions: the simulated decisions are the live ones"),
        "{again}"
    );
    let (code, _, err) = cutover(&["export", "--rollout", "1"], d);
    assert_eq!(code, 66, "a pruned rollout is gone: {err}");
}

/// Turns the state database into the schema 4 a cutover from before blocks wrote: each packed
/// event back into a full row of `events` (its JSON text as serde_json writes a value, which is
/// how it was stored), no `event_blocks` table.
fn unpack_to_schema_4(d: &Path) {
    use std::io::Read;
    let c = Connection::open(db(d)).unwrap();
    let blocks: Vec<(i64, Vec<u8>)> = {
        let mut st = c
            .prepare("SELECT rollout_id, data FROM event_blocks ORDER BY rollout_id, first_seq")
            .unwrap();
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.map(Result::unwrap).collect()
    };
    for (rollout, data) in blocks {
        let mut text = String::new();
        flate2::read::ZlibDecoder::new(&data[..])
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let v: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
            c.execute(
                "INSERT INTO events (seq, rollout_id, at, event_json, state_before)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    v[0].as_i64().unwrap(),
                    rollout,
                    v[1].as_i64().unwrap(),
                    v[2].to_string(),
                    v.get(3).map(|b| b.to_string())
                ],
            )
            .unwrap();
        }
    }
    c.execute_batch("DROP TABLE event_blocks; PRAGMA user_version = 4;")
        .unwrap();
}

/// Bad input to `history --verify/--export` gets a usage error (64) naming what to pass.
#[test]
fn bad_audit_arguments_are_usage_errors_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let (code, _, err) = cutover(&["history", "--verify", "--db", "nope.db"], p);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("no state database at nope.db") && err.contains("--db"),
        "{err}"
    );
    std::fs::write(p.join("chain.jsonl"), "").unwrap();
    let (code, _, err) = cutover(&["history", "--verify", "--export-file", "chain.jsonl"], p);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--export-file needs --key-file"), "{err}");
    std::fs::write(p.join("k"), "not hex\n").unwrap();
    std::fs::set_permissions(
        p.join("k"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (code, _, err) = cutover(
        &[
            "history",
            "--verify",
            "--export-file",
            "chain.jsonl",
            "--key-file",
            "k",
        ],
        p,
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("does not hold a key (64 hex digits)"), "{err}");
    let (code, _, err) = cutover(&["history", "--export-file", "chain.jsonl"], p);
    assert_eq!(code, 64, "--export-file without --verify: {err}");
    let (code, _, err) = cutover(&["history", "--verify", "--export"], p);
    assert_eq!(code, 64, "{err}");
}

/// Each notification carries its decision's place in the chain: a receiver holds anchors off the
/// host, each naming a record that exists with exactly that MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_the_chain_anchor_of_their_decision() {
    let _g = common::serial().await;
    let receiver = common::upstream()
        .otherwise(|_, _| common::Reply::new(200, ""))
        .spawn()
        .await;
    let sink = format!(
        "[[notify]]\nname = \"auditor\"\nurl = \"http://{}/hook\"\nformat = \"json\"\n",
        receiver.addr
    );
    let h = Harness::start_with(common::config().merge(&sink)).await;
    h.first_release("v1").await;
    let notices = common::eventually(Duration::from_secs(20), "promoted delivered", || {
        let seen: Vec<serde_json::Value> = receiver
            .seen()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap_or_default())
            .collect();
        std::future::ready(if seen.iter().any(|n| n["kind"] == "promoted") {
            Ok(seen)
        } else {
            Err(format!("{seen:?}"))
        })
    })
    .await;
    let d = h.dir.path().to_path_buf();
    let c = Connection::open(db(&d)).unwrap();
    for n in &notices {
        let seq = n["audit"]["seq"].as_i64().unwrap_or_else(|| panic!("{n}"));
        let (mac, rollout): (String, Option<i64>) = c
            .query_row(
                "SELECT hash, rollout_id FROM decisions WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n["audit"]["mac"], mac.as_str(), "{n}");
        assert_eq!(n["rollout"].as_i64(), rollout, "{n}");
    }
    h.shutdown().await;
}

/// `run --audit-key-file` keys the chain with a key kept outside the state dir, which then holds
/// no key; verifying needs that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_kept_outside_the_state_dir() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("cutover.toml"), common::config().to_toml()).unwrap();
    std::fs::create_dir(p.join("keys")).unwrap();
    tokio::task::block_in_place(|| {
        run_until_started(p, &["--audit-key-file", "keys/audit.key"]);
    });
    assert!(!p.join("state/audit.key").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.join("keys/audit.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (code, out, err) = cutover(
        &[
            "history",
            "--verify",
            "--state-dir",
            "state",
            "--key-file",
            "keys/audit.key",
        ],
        p,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = cutover(&["history", "--verify", "--state-dir", "state"], p);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--key-file"), "{err}");
    // And `run` without it refuses rather than make a new key for a keyed chain.
    let (code, _, err) = cutover(&["-c", "cutover.toml", "run"], p);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("is keyed but its key file"), "{err}");
}
