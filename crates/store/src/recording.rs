//! A rollout's recording (the events `cutover simulate` replays), kept compact.
//!
//! Every evaluation records a `measured` event: the window's per-version counts and latency
//! histogram, about 700 bytes of JSON. Consecutive windows overlap almost entirely and share
//! their keys and most of their histogram runs, so a block of them compresses far better than
//! each alone. Each event is first written as a row of `events` (in the commit that applied it,
//! as before); once a rollout has [`BLOCK`] such rows, the same transaction packs them into one
//! row of `event_blocks`: the events as JSON lines, zlib-deflated. A rollout's remaining rows
//! are packed when it ends, and [`crate::Store::prune`] packs what an older store left unpacked.
//!
//! Packing is exact: a block holds each row's stored JSON text unchanged, so reading it back
//! gives the very events that were written (`cutover export` and `simulate` cannot tell a
//! packed rollout from an unpacked one).
//!
//! Why blocks, measured on a real recording (demo-app under 200 requests/s, 250 ms interval,
//! 5 s window; the fixture of `tests/recording.rs`), in bytes per `measured` event: full JSON
//! 978; each event deflated alone 336; blocks of 16, 32, 64 events 130, 121, 116; the whole
//! rollout in one 111. A delta of each window against the one before (bucket counts' changes)
//! is 422, and 77 in blocks of 32 — but only where windows overlap (at the default 5 s interval
//! over a 30 s window less so; a 5 s window at 5 s shares nothing with the one before, and the
//! delta is no smaller than the window), it needs the engine's types where a block needs none,
//! and every row would depend on the one before. 32 keeps the unpacked tail of a rollout in
//! progress short (8 s at 250 ms, under 3 minutes at 5 s) for most of the gain.

use crate::{EventRecord, StoreError};
use flate2::{read::ZlibDecoder, write::ZlibEncoder, Compression};
use rusqlite::{params, Connection};
use std::io::{Read, Write};

/// Events per block: a rollout's rows are packed once it has this many unpacked.
pub const BLOCK: i64 = 32;

/// The only block format so far: JSON lines, zlib.
pub(crate) const CODEC: &str = "deflate-jsonl";

/// A block never inflates to more than this: a block in a damaged or hostile file cannot make
/// a reader allocate without bound. 32 events of a few KB each are far below it.
const MAX_INFLATED: u64 = 256 << 20;

/// Packs `rollout_id`'s unpacked rows into one block when there are at least `min` of them.
/// Returns how many events were packed.
pub(crate) fn pack(conn: &Connection, rollout_id: i64, min: i64) -> Result<u64, StoreError> {
    let unpacked: i64 = conn.query_row(
        "SELECT COUNT(*) FROM events WHERE rollout_id = ?1",
        [rollout_id],
        |r| r.get(0),
    )?;
    if unpacked == 0 || unpacked < min {
        return Ok(0);
    }
    let rows = unpacked_rows(conn, rollout_id)?;
    let mut text = String::new();
    let (mut first, mut last, mut n) = (i64::MAX, i64::MIN, 0u64);
    for (seq, at, event, before) in rows {
        // Each line is `[seq, at, event]` or `[seq, at, event, state_before]`: the stored JSON
        // texts unchanged, so what is read back is what was written.
        match before {
            Some(b) => text.push_str(&format!("[{seq},{at},{event},{b}]\n")),
            None => text.push_str(&format!("[{seq},{at},{event}]\n")),
        }
        first = first.min(seq);
        last = last.max(seq);
        n += 1;
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    let data = z
        .write_all(text.as_bytes())
        .and_then(|()| z.finish())
        .map_err(|e| StoreError::Recording {
            rollout_id,
            first_seq: first,
            detail: format!("cannot deflate: {e}"),
        })?;
    conn.execute(
        "INSERT INTO event_blocks (rollout_id, first_seq, last_seq, events, codec, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![rollout_id, first, last, n as i64, CODEC, data],
    )?;
    conn.execute(
        "DELETE FROM events WHERE rollout_id = ?1 AND seq BETWEEN ?2 AND ?3",
        params![rollout_id, first, last],
    )?;
    Ok(n)
}

/// One unpacked row of `events`: seq, at, the event's JSON, the state before it (if kept).
type Row = (i64, i64, String, Option<String>);

/// `rollout_id`'s rows not packed yet, in the order they were written.
fn unpacked_rows(conn: &Connection, rollout_id: i64) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, event_json, state_before FROM events WHERE rollout_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([rollout_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A rollout's events, packed and unpacked, in the order they were written.
pub(crate) fn read(conn: &Connection, rollout_id: i64) -> Result<Vec<EventRecord>, StoreError> {
    let mut out: Vec<(i64, EventRecord)> = Vec::new();
    // A store of schema 4 opened read-only (`cutover export` is not migrating it) has no
    // blocks, only rows.
    let blocks: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_blocks')",
        [],
        |r| r.get(0),
    )?;
    if blocks {
        read_blocks(conn, rollout_id, &mut out)?;
    }
    let rows = unpacked_rows(conn, rollout_id)?;
    for (seq, at, event, before) in rows {
        out.push((
            seq,
            EventRecord {
                rollout_id,
                at,
                event: serde_json::from_str(&event)?,
                state_before: before.map(|b| serde_json::from_str(&b)).transpose()?,
            },
        ));
    }
    // Blocks hold the oldest rows of their rollout, so this is already in order but for an
    // event written after its rollout was packed at its end; the sort is stable either way.
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// Appends the events of `rollout_id`'s blocks to `out`, with their seqs.
fn read_blocks(
    conn: &Connection,
    rollout_id: i64,
    out: &mut Vec<(i64, EventRecord)>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT first_seq, events, codec, data FROM event_blocks WHERE rollout_id = ?1
         ORDER BY first_seq",
    )?;
    let blocks = stmt.query_map([rollout_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    for block in blocks {
        let (first_seq, events, codec, data) = block?;
        let bad = |detail: String| StoreError::Recording {
            rollout_id,
            first_seq,
            detail,
        };
        if codec != CODEC {
            return Err(bad(format!(
                "its codec is {codec:?}; this cutover reads {CODEC:?} (written by a newer cutover?)"
            )));
        }
        let mut text = String::new();
        ZlibDecoder::new(&data[..])
            .take(MAX_INFLATED)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("cannot inflate: {e}")))?;
        let before = out.len();
        for (i, line) in text.lines().enumerate() {
            let (seq, record) =
                parse_line(rollout_id, line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
            out.push((seq, record));
        }
        if (out.len() - before) as i64 != events {
            return Err(bad(format!(
                "it holds {} events where its row says {events}",
                out.len() - before
            )));
        }
    }
    Ok(())
}

fn parse_line(rollout_id: i64, line: &str) -> Result<(i64, EventRecord), String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let int = |i: usize, what: &str| {
        v.get(i)
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| format!("its {what} is not an integer"))
    };
    let (seq, at) = (int(0, "seq")?, int(1, "time")?);
    let mut v = v.into_iter().skip(2);
    let event = v.next().ok_or("it has no event")?;
    let state_before = v.next();
    if v.next().is_some() {
        return Err("it has more than 4 fields".into());
    }
    Ok((
        seq,
        EventRecord {
            rollout_id,
            at,
            event,
            state_before,
        },
    ))
}

/// How many events `rollout_id`'s blocks and rows hold.
pub(crate) fn count(conn: &Connection, rollout_id: i64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM events WHERE rollout_id = ?1)
              + (SELECT COALESCE(SUM(events), 0) FROM event_blocks WHERE rollout_id = ?1)",
        [rollout_id],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
