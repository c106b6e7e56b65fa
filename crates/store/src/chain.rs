//! The hash-chained decision log (DESIGN.md, security defaults: "the audit log is hash-chained so
//! tampering is detectable").
//!
//! `hash = sha256_hex(prev_hash || canonical)` where `canonical` is the compact JSON array
//! `[seq, rollout_id, at, kind, reason, numbers_json]`. `numbers_json` is hashed as the exact text
//! stored, not re-serialised, so verification never depends on how a serde_json build orders
//! object keys. A JSON array (not string concatenation) keeps field boundaries unambiguous.

use crate::{DecisionRecord, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The result of [`crate::Store::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// How many rows were checked.
    pub rows: u64,
    pub ok: bool,
    /// The first row whose content, hash or link to its predecessor does not match.
    pub first_bad_seq: Option<i64>,
}

fn row_hash(
    prev_hash: &str,
    seq: i64,
    rollout_id: Option<i64>,
    at: i64,
    kind: &str,
    reason: &str,
    numbers_json: &str,
) -> String {
    let canonical =
        serde_json::json!([seq, rollout_id, at, kind, reason, numbers_json]).to_string();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Appends one decision inside the caller's transaction.
pub(crate) fn append(tx: &Transaction<'_>, d: &DecisionRecord) -> Result<(), StoreError> {
    let prev: String = tx
        .query_row(
            "SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS_HASH.to_owned());
    let numbers_json = serde_json::to_string(&d.numbers)?;
    // The seq is part of the hash but only known once AUTOINCREMENT assigns it, so insert first
    // and fill the hash in; both happen inside the same transaction.
    tx.execute(
        "INSERT INTO decisions (rollout_id, at, kind, reason, numbers_json, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '')",
        params![d.rollout_id, d.at, d.kind, d.reason, numbers_json, prev],
    )?;
    let seq = tx.last_insert_rowid();
    let hash = row_hash(
        &prev,
        seq,
        d.rollout_id,
        d.at,
        &d.kind,
        &d.reason,
        &numbers_json,
    );
    tx.execute(
        "UPDATE decisions SET hash = ?2 WHERE seq = ?1",
        params![seq, hash],
    )?;
    Ok(())
}

pub(crate) fn verify(conn: &Connection) -> Result<ChainReport, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, rollout_id, at, kind, reason, numbers_json, prev_hash, hash
         FROM decisions ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut report = ChainReport {
        rows: 0,
        ok: true,
        first_bad_seq: None,
    };
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let prev_hash: String = r.get(6)?;
        let hash: String = r.get(7)?;
        let recomputed = row_hash(
            &prev_hash,
            seq,
            r.get(1)?,
            r.get(2)?,
            &r.get::<_, String>(3)?,
            &r.get::<_, String>(4)?,
            &r.get::<_, String>(5)?,
        );
        report.rows += 1;
        // A bad link catches a deleted or inserted row; a bad hash catches an edited one.
        if report.ok && (prev_hash != expected_prev || recomputed != hash) {
            report.ok = false;
            report.first_bad_seq = Some(seq);
        }
        expected_prev = hash;
    }
    Ok(report)
}
