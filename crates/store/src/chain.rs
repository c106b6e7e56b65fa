//! The keyed audit chain (DESIGN.md, security defaults; docs/audit.md has the full format).
//!
//! Every state change is a row of the `decisions` table: the engine's decisions, and the records
//! the store writes itself for what lives in other tables (`audit.*` kinds: a rollout started or
//! ended, a release recorded or marked failed, a checkpoint after pruning, tampering an operator
//! accepted). The other tables are then *derived* state that verification checks against the
//! chain, so flipping an outcome or a failed mark in SQLite is caught like editing a decision.
//!
//! `mac = hex(HMAC-SHA256(key, prev || canonical))` where `canonical` is the compact JSON array
//! `[seq, rollout_id, at, kind, reason, numbers_json]`. `numbers_json` is covered as the exact
//! text stored, not re-serialised, so verification never depends on how a serde_json build
//! orders object keys. A JSON array (not string concatenation) keeps field boundaries
//! unambiguous. The key lives in a file, not in the database: a rewrite of the database cannot
//! recompute the chain without it.
//!
//! Rows written by a cutover from before the key (plain `sha256(prev || canonical)`) stay
//! verifiable: the first `audit.keyed` row ends them, and its MAC covers the plain head, so a
//! rewrite of the plain rows breaks the keyed part too.
//!
//! Deleting the newest rows leaves a valid chain, so the head (seq and MAC of the newest row) is
//! also appended to `audit.head`, a file beside the database, after every commit, and sent with
//! each notification.
//!
//! Everything here except the two file helpers is pure: rows in, a report out.

use crate::StoreError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `prev` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key file's default name, beside the database.
pub const KEY_FILE: &str = "audit.key";
/// The head file's default name, beside the database.
pub const HEAD_FILE: &str = "audit.head";

/// The kinds of the records the store writes itself. Engine decisions never start with `audit.`.
pub mod kinds {
    /// The chain is keyed from this row on; `numbers` holds the plain (unkeyed) head before it.
    pub const KEYED: &str = "audit.keyed";
    /// A rollout began: its `rollouts` row, as written.
    pub const ROLLOUT_STARTED: &str = "audit.rollout_started";
    /// A rollout ended (or its outcome changed, e.g. a rollback after a promotion).
    pub const ROLLOUT_ENDED: &str = "audit.rollout_ended";
    /// A release was recorded or its content changed: digests of its `releases` row.
    pub const RELEASE: &str = "audit.release";
    /// A release was marked failed.
    pub const RELEASE_FAILED: &str = "audit.release_failed";
    /// Rows before `first_seq` were pruned after the retention; `first_prev` is the oldest
    /// remaining row's `prev`.
    pub const CHECKPOINT: &str = "audit.checkpoint";
    /// An operator started cutover on a store that failed verification (`--accept-tampered`):
    /// the fingerprints of the bad rows, and what was wrong.
    pub const TAMPER_ACCEPTED: &str = "audit.tamper_accepted";
    /// The prefix shared by all of them.
    pub const PREFIX: &str = "audit.";
}

/// The secret the chain is keyed with: 32 random bytes, kept as hex in a file of mode 0600.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// A key from raw bytes (tests, or a key kept in a secret manager).
    pub fn from_bytes(bytes: [u8; 32]) -> AuditKey {
        AuditKey(bytes)
    }

    /// Reads a key file. A file that group or others may read is refused, not fixed: someone
    /// may already have read it, and with it they can rewrite the chain.
    pub fn load(path: &Path) -> Result<AuditKey, StoreError> {
        let io = |source| StoreError::KeyIo {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::KeyInsecure {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
        let Some(bytes) = bytes else {
            return Err(StoreError::KeyInvalid {
                path: path.to_owned(),
            });
        };
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(AuditKey(k))
    }

    /// Creates a new random key file (mode 0600 from the first byte; never overwrites).
    pub fn create(path: &Path) -> Result<AuditKey, StoreError> {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::KeyIo {
                path: path.to_owned(),
                source,
            })?;
        f.write_all(format!("{}\n", hex::encode(k)).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| StoreError::KeyIo {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditKey(k))
    }

    fn mac(&self, prev: &str, canonical: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        m.update(prev.as_bytes());
        m.update(canonical.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

/// Where the key and the head live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPaths {
    pub key_file: PathBuf,
    pub head_file: PathBuf,
}

impl AuditPaths {
    /// `audit.key` and `audit.head` in the database's directory.
    pub fn beside(db: &Path) -> AuditPaths {
        let dir = db.parent().unwrap_or(Path::new("."));
        AuditPaths {
            key_file: dir.join(KEY_FILE),
            head_file: dir.join(HEAD_FILE),
        }
    }
}

/// One row of the chain, exactly as stored; also one line of `cutover history --export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainRow {
    pub seq: i64,
    pub rollout_id: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub kind: String,
    pub reason: String,
    /// The exact text the MAC covers.
    pub numbers_json: String,
    pub prev: String,
    pub mac: String,
}

impl ChainRow {
    fn canonical(&self) -> String {
        canonical(
            self.seq,
            self.rollout_id,
            self.at,
            &self.kind,
            &self.reason,
            &self.numbers_json,
        )
    }

    /// Identifies this row as stored (content and links): what `--accept-tampered` accepts.
    pub fn fingerprint_hex(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.canonical().as_bytes());
        h.update(b"|");
        h.update(self.prev.as_bytes());
        h.update(b"|");
        h.update(self.mac.as_bytes());
        hex::encode(h.finalize())
    }

    fn numbers(&self) -> serde_json::Value {
        serde_json::from_str(&self.numbers_json).unwrap_or(serde_json::Value::Null)
    }
}

pub(crate) fn canonical(
    seq: i64,
    rollout_id: Option<i64>,
    at: i64,
    kind: &str,
    reason: &str,
    numbers_json: &str,
) -> String {
    serde_json::json!([seq, rollout_id, at, kind, reason, numbers_json]).to_string()
}

/// The unkeyed hash rows had before the key (still how those rows are checked).
pub(crate) fn plain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

pub(crate) fn mac(key: &AuditKey, prev: &str, canonical: &str) -> String {
    key.mac(prev, canonical)
}

/// The newest row of the chain: what `audit.head` and notifications anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub mac: String,
}

/// The last head line of `path`, `None` if the file does not exist.
pub fn read_head(path: &Path) -> Result<Option<Head>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::HeadIo {
                path: path.to_owned(),
                source,
            })
        }
    };
    // A crash mid-append can leave a partial last line; the last *complete* line counts.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let Some(line) = complete.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let head = match (parts.next().map(str::parse), parts.next(), parts.next()) {
        (Some(Ok(seq)), Some(mac), None) if mac.len() == 64 => Head {
            seq,
            mac: mac.to_owned(),
        },
        _ => {
            return Err(StoreError::HeadInvalid {
                path: path.to_owned(),
                line: line.to_owned(),
            })
        }
    };
    Ok(Some(head))
}

/// Appends `head` to `path` (created 0600) and syncs it.
pub fn append_head(path: &Path, head: &Head) -> Result<(), StoreError> {
    let io = |source| StoreError::HeadIo {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{} {}\n", head.seq, head.mac).as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io)
}

/// Removes the lines of `path` that anchor records before `first_seq` (pruned after the
/// retention), atomically: the kept lines go to a new file (0600, synced) that replaces the old
/// one by a rename, so a crash leaves one file or the other, never a mix. A partial last line
/// (a crash mid-append) is dropped with them. Returns how many lines were removed; the file is
/// left alone when there are none.
pub fn compact_head(path: &Path, first_seq: i64) -> Result<u64, StoreError> {
    let io = |source| StoreError::HeadIo {
        path: path.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut kept = String::new();
    let mut removed = 0;
    for line in complete.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_whitespace().next().map(str::parse::<i64>) {
            Some(Ok(seq)) if seq < first_seq => removed += 1,
            // Anything else (a line verification would call invalid) is left for it to report.
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    if removed == 0 {
        return Ok(0);
    }
    let tmp = path.with_extension("head.compacting");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(kept.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io)?;
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(removed)
}

/// One thing verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The record at fault, when there is one (a missing head names the seq it anchored).
    pub seq: Option<i64>,
    /// What is wrong, for a human.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "record #{s}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// How many rows were checked.
    pub rows: u64,
    pub ok: bool,
    /// The first record at fault (the lowest seq among the problems).
    pub first_bad_seq: Option<i64>,
    /// Everything found wrong, first bad record first.
    pub problems: Vec<Problem>,
    /// The head this was checked against (`None`: not checked, e.g. an export without one).
    pub head: Option<Head>,
    /// Bad rows an operator accepted earlier with `cutover run --accept-tampered`.
    pub accepted: u64,
    /// The records of those acceptances (each says what was found, and when).
    pub acceptances: Vec<i64>,
    /// Rows before this seq were pruned after the retention (a checkpoint vouches for them).
    pub pruned_before: Option<i64>,
}

impl ChainReport {
    /// One line for a human: `OK (...)` or the first problem.
    pub fn summary(&self) -> String {
        match self.problems.first() {
            None => format!("OK ({} records, keyed chain intact)", self.rows),
            Some(p) => format!("TAMPERED: {p}"),
        }
    }
}

/// Verifies rows (in seq order) against the key and, when given, the anchored head. Pure.
pub fn verify_rows(rows: &[ChainRow], key: &AuditKey, head: Option<&Head>) -> ChainReport {
    let mut problems = Vec::new();
    let mut accepted_rows = 0;
    let mut pruned_before = None;
    let mac_ok = |r: &ChainRow| key.mac(&r.prev, &r.canonical()) == r.mac;
    // Only rows whose own MAC holds are believed: nobody without the key can forge one.
    let accepted: HashSet<String> = rows
        .iter()
        .filter(|r| r.kind == kinds::TAMPER_ACCEPTED && mac_ok(r))
        .flat_map(|r| {
            r.numbers()["fingerprints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    let acceptances: Vec<i64> = rows
        .iter()
        .filter(|r| r.kind == kinds::TAMPER_ACCEPTED && mac_ok(r))
        .map(|r| r.seq)
        .collect();
    let checkpoint = rows
        .iter()
        .rev()
        .find(|r| r.kind == kinds::CHECKPOINT && mac_ok(r))
        .map(|r| {
            let n = r.numbers();
            (
                n["first_seq"].as_i64(),
                n["first_prev"].as_str().map(str::to_owned),
            )
        });
    let keyed_at = rows.iter().position(|r| r.kind == kinds::KEYED);
    if let Some(first) = rows.first() {
        let mut expected_prev = GENESIS_HASH.to_owned();
        if first.seq != 1 {
            pruned_before = Some(first.seq);
            let vouched = match &checkpoint {
                Some((Some(s), Some(p))) if *s == first.seq => Some(p.clone()),
                _ => None,
            };
            match (vouched, &checkpoint) {
                (Some(p), _) => expected_prev = p,
                (None, found) => {
                    let said = match found {
                        Some((Some(s), _)) => {
                            format!("its latest checkpoint says it starts at #{s}")
                        }
                        _ => "no checkpoint records a pruning".to_owned(),
                    };
                    problems.push(Problem {
                        seq: Some(first.seq),
                        what: format!(
                            "the chain starts at #{} and {said}: the oldest records were deleted",
                            first.seq
                        ),
                    });
                    // Reported once: the row's own link is not reported again below.
                    expected_prev.clone_from(&first.prev);
                }
            }
        } else if keyed_at.is_none() {
            problems.push(Problem {
                seq: Some(first.seq),
                what: "the chain is not keyed: rewritten without the key, or written by a \
                       cutover from before the keyed chain and not run since (if so, and the \
                       key file was provided beforehand, start once with --accept-tampered to \
                       key it)"
                    .into(),
            });
        }
        for (i, r) in rows.iter().enumerate() {
            // Before the first `audit.keyed` row, rows carry the old plain hash. With no such
            // row left, a pruned chain is keyed throughout (pruning only happens keyed).
            let keyed = match keyed_at {
                Some(k) => i >= k,
                None => first.seq != 1,
            };
            let link_ok = r.prev == expected_prev;
            let content_ok = if keyed {
                mac_ok(r)
            } else {
                plain_hash(&r.prev, &r.canonical()) == r.mac
            };
            if !(link_ok && content_ok) {
                if accepted.contains(&r.fingerprint_hex()) {
                    accepted_rows += 1;
                } else if !link_ok {
                    problems.push(Problem {
                        seq: Some(r.seq),
                        what: "its link to the record before it does not match: a record before \
                               it was deleted, inserted or swapped"
                            .into(),
                    });
                } else {
                    problems.push(Problem {
                        seq: Some(r.seq),
                        what: if keyed {
                            "its content does not match its MAC: edited, or rewritten without \
                             the key"
                        } else {
                            "its content does not match its hash: edited"
                        }
                        .into(),
                    });
                }
            }
            expected_prev.clone_from(&r.mac);
        }
    }
    if let Some(h) = head {
        match rows.iter().find(|r| r.seq == h.seq) {
            Some(r) if r.mac == h.mac => {}
            Some(_) => problems.push(Problem {
                seq: Some(h.seq),
                what: "it differs from the head anchored in audit.head: rewritten".into(),
            }),
            None => problems.push(Problem {
                seq: Some(h.seq),
                what: format!(
                    "it is the newest record anchored in audit.head, and it is missing (the \
                     chain ends at #{}): the newest records were deleted",
                    rows.last().map_or(0, |r| r.seq)
                ),
            }),
        }
    }
    let mut report = ChainReport {
        rows: rows.len() as u64,
        ok: true,
        first_bad_seq: None,
        problems,
        head: head.cloned(),
        accepted: accepted_rows,
        acceptances,
        pruned_before,
    };
    settle(&mut report);
    report
}

/// Orders the problems (first bad record first) and sets `ok` and `first_bad_seq` from them.
fn settle(r: &mut ChainReport) {
    r.problems.sort_by_key(|p| p.seq.unwrap_or(i64::MAX));
    r.ok = r.problems.is_empty();
    r.first_bad_seq = r.problems.first().and_then(|p| p.seq);
}

/// `report` with one more problem (e.g. a head file the caller expected and did not find).
pub fn with_problem(report: ChainReport, p: Problem) -> ChainReport {
    merge(report, vec![p])
}

/// Adds problems found by [`cross_check`] to a report.
pub(crate) fn merge(mut report: ChainReport, more: Vec<Problem>) -> ChainReport {
    report.problems.extend(more);
    settle(&mut report);
    report
}

/// The state of the other tables as the chain says it should be.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// Rollout id → (seq, the started record's numbers).
    pub started: BTreeMap<i64, (i64, serde_json::Value)>,
    /// Rollout id → (seq, `{ended_at, outcome}`), the latest.
    pub ended: BTreeMap<i64, (i64, serde_json::Value)>,
    /// Digest → (seq, `{name, exe_sha256, spec_sha256}`), the latest.
    pub releases: BTreeMap<String, (i64, serde_json::Value)>,
    /// Digest → (seq, `{failed_at, failed_reason}`), the latest.
    pub failed: BTreeMap<String, (i64, serde_json::Value)>,
}

pub(crate) fn derive(rows: &[ChainRow]) -> Derived {
    let mut d = Derived::default();
    for r in rows {
        let n = r.numbers();
        // `--accept-tampered` records a row deleted from a table as `removed`.
        let removed = n["removed"] == serde_json::Value::Bool(true);
        match r.kind.as_str() {
            kinds::ROLLOUT_STARTED if removed => {
                if let Some(id) = n["id"].as_i64() {
                    d.started.remove(&id);
                    d.ended.remove(&id);
                }
            }
            kinds::RELEASE if removed => {
                if let Some(digest) = n["digest"].as_str() {
                    d.releases.remove(digest);
                    d.failed.remove(digest);
                }
            }
            kinds::ROLLOUT_STARTED => {
                if let Some(id) = n["id"].as_i64() {
                    d.started.insert(id, (r.seq, n));
                }
            }
            kinds::ROLLOUT_ENDED => {
                if let Some(id) = n["id"].as_i64() {
                    d.ended.insert(id, (r.seq, n));
                }
            }
            kinds::RELEASE => {
                if let Some(digest) = n["digest"].as_str() {
                    d.releases.insert(digest.to_owned(), (r.seq, n));
                }
            }
            kinds::RELEASE_FAILED => {
                if let Some(digest) = n["digest"].as_str() {
                    d.failed.insert(digest.to_owned(), (r.seq, n));
                }
            }
            _ => {}
        }
    }
    d
}

/// `sha256_hex` of a text: how a release's spec is covered without copying it into the chain.
pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: the HMAC is HMAC-SHA256 and nothing home-made.
    #[test]
    fn hmac_matches_rfc_4231() {
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want ");
        m.update(b"for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A keyed chain of `n` records after the `audit.keyed` one, as the store writes it.
    fn chain(key: &AuditKey, n: usize) -> Vec<ChainRow> {
        let mut rows: Vec<ChainRow> = Vec::new();
        for i in 0..=n {
            let prev = rows
                .last()
                .map_or(GENESIS_HASH.to_owned(), |r| r.mac.clone());
            let mut r = ChainRow {
                seq: i as i64 + 1,
                rollout_id: (i > 0).then_some(1 + i as i64 / 3),
                at: 1_000 + i as i64,
                kind: if i == 0 {
                    kinds::KEYED.into()
                } else {
                    format!("step{}", i % 4)
                },
                reason: format!("reason {i}"),
                numbers_json: format!(r#"{{"w":{i}}}"#),
                prev,
                mac: String::new(),
            };
            r.mac = key.mac(&r.prev, &r.canonical());
            rows.push(r);
        }
        rows
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        Reason(usize),
        Numbers(usize),
        At(usize),
        Kind(usize),
        Rollout(usize),
        Delete(usize),
        Swap(usize, usize),
        Truncate(usize),
        RewriteWithoutKey(usize),
    }

    fn tamper() -> impl proptest::strategy::Strategy<Value = Tamper> {
        use proptest::prelude::*;
        prop_oneof![
            any::<usize>().prop_map(Tamper::Reason),
            any::<usize>().prop_map(Tamper::Numbers),
            any::<usize>().prop_map(Tamper::At),
            any::<usize>().prop_map(Tamper::Kind),
            any::<usize>().prop_map(Tamper::Rollout),
            any::<usize>().prop_map(Tamper::Delete),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tamper::Swap(a, b)),
            any::<usize>().prop_map(Tamper::Truncate),
            any::<usize>().prop_map(Tamper::RewriteWithoutKey),
        ]
    }

    proptest::proptest! {
        /// Whatever single change is made to a keyed chain without the key — an edited field,
        /// a deleted, swapped or truncated record, or every record from one on rewritten with
        /// another key — verification against the anchored head reports it; untouched, it
        /// passes.
        #[test]
        fn every_change_without_the_key_is_detected(n in 1usize..25, t in tamper()) {
            let key = AuditKey::from_bytes([9; 32]);
            let rows = chain(&key, n);
            let head = Head { seq: rows[n].seq, mac: rows[n].mac.clone() };
            proptest::prop_assert!(verify_rows(&rows, &key, Some(&head)).ok);
            let mut bad = rows.clone();
            let pick = |i: usize| i % bad.len();
            match t {
                Tamper::Reason(i) => { let i = pick(i); bad[i].reason.push('!') }
                Tamper::Numbers(i) => { let i = pick(i); bad[i].numbers_json = "{}".into() }
                Tamper::At(i) => { let i = pick(i); bad[i].at += 1 }
                Tamper::Kind(i) => { let i = pick(i); bad[i].kind = "promoted".into() }
                Tamper::Rollout(i) => {
                    let i = pick(i);
                    bad[i].rollout_id = Some(bad[i].rollout_id.unwrap_or(0) + 1)
                }
                Tamper::Delete(i) => { let i = pick(i); bad.remove(i); }
                Tamper::Swap(a, b) => {
                    let (a, b) = (pick(a), pick(b));
                    proptest::prop_assume!(a != b);
                    let (sa, sb) = (bad[a].seq, bad[b].seq);
                    bad.swap(a, b);
                    bad[a].seq = sa;
                    bad[b].seq = sb;
                }
                Tamper::Truncate(k) => { let keep = k % bad.len(); bad.truncate(keep.max(1)); }
                Tamper::RewriteWithoutKey(i) => {
                    let from = pick(i);
                    let other = AuditKey::from_bytes([7; 32]);
                    bad[from].reason.push('!');
                    for j in from..bad.len() {
                        if j > 0 { bad[j].prev = bad[j - 1].mac.clone(); }
                        bad[j].mac = other.mac(&bad[j].prev, &bad[j].canonical());
                    }
                }
            }
            // A truncation to the full length changes nothing: not a tampering.
            proptest::prop_assume!(bad != rows);
            // Checked against the head anchored before the change (audit.head, or a notice).
            let r = verify_rows(&bad, &key, Some(&head));
            proptest::prop_assert!(!r.ok, "{:?} not detected", t);
            proptest::prop_assert!(r.first_bad_seq.is_some());
        }
    }

    #[test]
    fn a_partial_last_head_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(HEAD_FILE);
        let a = Head {
            seq: 3,
            mac: "a".repeat(64),
        };
        append_head(&p, &a).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"4 bbbb")
            .unwrap();
        assert_eq!(read_head(&p).unwrap(), Some(a));
        assert_eq!(read_head(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn compacting_the_head_keeps_the_anchors_from_the_first_record_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(HEAD_FILE);
        let head = |seq| Head {
            seq,
            mac: format!("{seq:064}"),
        };
        for seq in [2, 5, 9, 12] {
            append_head(&p, &head(seq)).unwrap();
        }
        assert_eq!(compact_head(&p, 1).unwrap(), 0, "nothing before #1");
        assert_eq!(compact_head(&p, 9).unwrap(), 2);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("9 {}\n12 {}\n", head(9).mac, head(12).mac));
        assert_eq!(read_head(&p).unwrap(), Some(head(12)));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind, and a missing file is nothing to compact.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(compact_head(&dir.path().join("none"), 5).unwrap(), 0);
    }
}
