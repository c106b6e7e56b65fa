//! A rollout's recording kept compact: packed into deflated blocks as it grows and when it
//! ends, read back exactly as written, from a store written before blocks existed too; and
//! actually smaller, on a fixed recording of a real rollout.

use cutover_store::{recording::BLOCK, Commit, EventRecord, RolloutRecord, Store};
use rusqlite::Connection;
use std::path::Path;

/// The first 200 events of a real rollout, as a cutover from before blocks stored them (one
/// `EventRecord` per line, each event's JSON text as it was in its row): `bench/state-growth.sh
/// 250ms` (demo-app v1 → v2 under 200 requests/s, `interval = "250ms"`, `window = "5s"`), the
/// run behind the figures in docs/audit.md. The first is the deploy, with the state before it.
/// Gzipped: 200 KB of JSON otherwise.
const FIXTURE: &[u8] = include_bytes!("fixtures/recording-250ms.jsonl.gz");

fn fixture() -> Vec<EventRecord> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(FIXTURE), &mut text).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rollout(id: i64, at: i64) -> RolloutRecord {
    RolloutRecord {
        id,
        service: "shop".into(),
        from_version: Some("v1".into()),
        from_digest: Some("d-v1".into()),
        to_version: "v2".into(),
        to_digest: "d-v2".into(),
        started_at: at,
        ended_at: None,
        outcome: None,
    }
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Writes `events` as the driver does: the rollout with its first event, then one commit per
/// evaluation.
fn record(s: &mut Store, id: i64, events: &[EventRecord]) {
    let mut events = events.iter().cloned().map(|mut e| {
        e.rollout_id = id;
        e
    });
    let first = events.next().unwrap();
    s.commit(Commit {
        rollouts_started: vec![rollout(id, first.at)],
        events: vec![first],
        ..Commit::default()
    })
    .unwrap();
    for e in events {
        s.commit(Commit {
            events: vec![e],
            ..Commit::default()
        })
        .unwrap();
    }
}

fn with_id(events: &[EventRecord], id: i64) -> Vec<EventRecord> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.rollout_id = id;
            e
        })
        .collect()
}

#[test]
fn a_recording_is_packed_as_it_grows_and_when_it_ends_and_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    let events = fixture();
    assert_eq!(events.len(), 200);
    assert!(
        events[0].state_before.is_some(),
        "the deploy keeps the state before it"
    );

    // Part way: whole blocks are packed, the rest are rows; the reader joins them in order.
    record(&mut s, 1, &events[..100]);
    let blocks = 100 / BLOCK;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM event_blocks"), blocks);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events"),
        100 - blocks * BLOCK
    );
    assert_eq!(s.events(1).unwrap(), with_id(&events[..100], 1));
    // Another rollout's recording interleaved with it stays apart.
    record(&mut s, 2, &events[100..110]);
    assert_eq!(s.events(2).unwrap(), with_id(&events[100..110], 2));

    for e in &events[100..] {
        s.commit(Commit {
            events: vec![EventRecord {
                rollout_id: 1,
                ..e.clone()
            }],
            ..Commit::default()
        })
        .unwrap();
    }
    // The end of the rollout packs what is left of it, in the same transaction.
    s.commit(Commit {
        rollouts_ended: vec![(1, events[199].at, "promoted".into())],
        ..Commit::default()
    })
    .unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events WHERE rollout_id = 1"),
        0
    );
    assert_eq!(s.events(1).unwrap(), with_id(&events, 1));
    assert_eq!(s.events(2).unwrap().len(), 10);
    // The same text, not merely equal values: what `cutover export` writes is unchanged.
    for (got, want) in s.events(1).unwrap().iter().zip(&events) {
        assert_eq!(
            serde_json::to_string(&got.event).unwrap(),
            serde_json::to_string(&want.event).unwrap()
        );
    }
}

/// The bound the docs' growth figures rest on, on the fixed recording (not a timing): an event
/// of it is about 970 bytes of JSON (its deploy carries the engine state); packed, 129.
#[test]
fn packed_measurements_are_several_times_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    let events = fixture();
    record(&mut s, 1, &events);
    s.commit(Commit {
        rollouts_ended: vec![(1, events[199].at, "promoted".into())],
        ..Commit::default()
    })
    .unwrap();
    let measured: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.event["event"] == "measured")
        .collect();
    assert!(measured.len() > 190, "{}", measured.len());
    let full: usize = events
        .iter()
        .map(|e| serde_json::to_string(&e.event).unwrap().len())
        .sum();
    let full_state: usize = events
        .iter()
        .filter_map(|e| e.state_before.as_ref())
        .map(|b| serde_json::to_string(b).unwrap().len())
        .sum();
    let packed = count(&db, "SELECT SUM(length(data)) FROM event_blocks") as usize;
    let per_event = packed / events.len();
    let full_per_event = (full + full_state) / events.len();
    println!("full JSON {full_per_event} B/event, packed {per_event} B/event");
    assert!(full_per_event > 600, "the fixture is a real recording");
    assert!(per_event < 150, "{per_event} bytes per event packed");
    assert!(per_event * 6 < full_per_event);
}

/// A store written before blocks (schema 4: every event a full JSON row) opens, replays the
/// same, and its ended rollouts are packed at the first prune, still replaying the same.
#[test]
fn an_old_format_store_with_full_events_still_replays_and_is_packed_at_a_prune() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let events = fixture();
    {
        let mut s = Store::open(&db).unwrap();
        s.commit(Commit {
            rollouts_started: vec![RolloutRecord {
                ended_at: Some(events[199].at),
                outcome: Some("promoted".into()),
                ..rollout(1, events[0].at)
            }],
            ..Commit::default()
        })
        .unwrap();
    }
    // What a cutover of schema 4 left: no blocks table, one full row per event.
    let c = Connection::open(&db).unwrap();
    c.execute_batch("DROP TABLE event_blocks; PRAGMA user_version = 4;")
        .unwrap();
    for e in &events {
        c.execute(
            "INSERT INTO events (rollout_id, at, event_json, state_before) VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![
                e.at,
                serde_json::to_string(&e.event).unwrap(),
                e.state_before
                    .as_ref()
                    .map(|b| serde_json::to_string(b).unwrap())
            ],
        )
        .unwrap();
    }
    drop(c);

    // `cutover export` reads it read-only, unmigrated: rows only.
    let ro = Store::open_read_only(&db).unwrap();
    assert_eq!(ro.events(1).unwrap(), with_id(&events, 1));
    drop(ro);
    assert_eq!(count(&db, "PRAGMA user_version"), 4);

    let mut s = Store::open(&db).unwrap();
    assert_eq!(
        count(&db, "PRAGMA user_version"),
        cutover_store::SCHEMA_VERSION
    );
    assert_eq!(s.events(1).unwrap(), with_id(&events, 1));
    // A cutoff before the rollout ended: nothing is pruned, its rows are packed.
    let p = s
        .prune(events[0].at, events[199].at, &Default::default())
        .unwrap();
    assert_eq!((p.rollouts, p.events, p.packed), (0, 0, 200), "{p:?}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events"), 0);
    assert_eq!(s.events(1).unwrap(), with_id(&events, 1));
    assert!(s.verify_chain().unwrap().ok);
    // And once past the retention, the packed recording goes with its rollout.
    let p = s
        .prune(events[199].at + 1, events[199].at + 2, &Default::default())
        .unwrap();
    assert_eq!((p.rollouts, p.events), (1, 200), "{p:?}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM event_blocks"), 0);
    assert!(s.events(1).unwrap().is_empty());
}

/// A damaged block is an error naming the rollout and where, not a panic or a silent gap.
#[test]
fn a_damaged_block_is_reported_with_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let mut s = Store::open(&db).unwrap();
    record(&mut s, 7, &fixture()[..BLOCK as usize]);
    let c = Connection::open(&db).unwrap();
    c.execute("UPDATE event_blocks SET data = x'00112233'", [])
        .unwrap();
    let err = s.events(7).unwrap_err().to_string();
    assert!(
        err.contains("rollout 7's recorded events") && err.contains("cannot inflate"),
        "{err}"
    );
}
