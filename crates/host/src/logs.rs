//! `cutover logs`: slices of an instance's log file (`<state_dir>/logs/<version>-<n>.log`,
//! written by the supervisor, pruned `[state] retention` (72 h by default) after it was last
//! written), served on `GET /v1/logs/{version}` and followed by the CLI from offset to offset.

use cutover_admin::{ApiError, LogsChunk, LogsQuery, LOGS_CHUNK};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Reads the slice `query` asks for from `version`'s instance log in `dir`. `version` was
/// checked to be a version name (no `/`, no leading `.`) before it gets here.
pub fn read_chunk(
    dir: &Path,
    version: &str,
    query: &LogsQuery,
    running: bool,
) -> Result<LogsChunk, ApiError> {
    let id = format!("{version}-{}", query.instance);
    let path = dir.join(format!("{id}.log"));
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(dir, version, query.instance))
        }
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let io = |e: std::io::Error| ApiError::internal(format!("cannot read {}: {e}", path.display()));
    let len = file.metadata().map_err(io)?.len();
    let (mut from, tail) = match query.offset {
        Some(o) if o <= len => (o, false),
        // The file is shorter than the follower's offset: it was replaced; start over.
        Some(_) => (0, false),
        None => (len.saturating_sub(LOGS_CHUNK), true),
    };
    let to = len.min(from + LOGS_CHUNK);
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut bytes = vec![0; (to - from) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    if tail && from > 0 {
        // Started in the middle of a line: begin at the next one.
        if let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            bytes.drain(..=nl);
            from += nl as u64 + 1;
        }
    }
    // Never split a UTF-8 sequence that is still being written: leave it for the next ask.
    if let Err(e) = std::str::from_utf8(&bytes) {
        if e.error_len().is_none() {
            bytes.truncate(e.valid_up_to());
        }
    }
    let offset = from + bytes.len() as u64;
    Ok(LogsChunk {
        instance: id,
        path: path.display().to_string(),
        from,
        offset,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        running,
    })
}

/// The instance indexes of `version` that have a log file in `dir`, sorted.
fn instances(dir: &Path, version: &str) -> Vec<u32> {
    let prefix = format!("{version}-");
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
            n.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| n.parse().ok())
                .flatten()
        })
        .collect();
    found.sort_unstable();
    found
}

fn not_found(dir: &Path, version: &str, instance: u32) -> ApiError {
    let have = instances(dir, version);
    if have.is_empty() {
        ApiError::not_found(format!(
            "no instance of version {version} has run here (or its logs were pruned, `[state] retention` after they were last written); `cutover status` shows the versions running"
        ))
    } else {
        let list: Vec<String> = have.iter().map(u32::to_string).collect();
        ApiError::not_found(format!(
            "version {version} has no instance {instance}; its instances are {}: pass --instance {}",
            list.join(", "),
            have[0]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(instance: u32, offset: Option<u64>) -> LogsQuery {
        LogsQuery { instance, offset }
    }

    #[test]
    fn chunks_follow_offsets_and_missing_things_are_404_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("v2-0.log"), "one\ntwo\n").unwrap();
        std::fs::write(d.join("v2-1-0.log"), "another version\n").unwrap();
        let c = read_chunk(d, "v2", &q(0, None), true).unwrap();
        assert_eq!((c.instance.as_str(), c.from, c.offset), ("v2-0", 0, 8));
        assert_eq!(c.text, "one\ntwo\n");
        // Follow: nothing new, then an appended line, with a multi-byte character half written.
        let c = read_chunk(d, "v2", &q(0, Some(8)), true).unwrap();
        assert_eq!((c.text.as_str(), c.offset), ("", 8));
        let mut bytes = b"one\ntwo\nthr\xc3".to_vec();
        std::fs::write(d.join("v2-0.log"), &bytes).unwrap();
        let c = read_chunk(d, "v2", &q(0, Some(8)), true).unwrap();
        assert_eq!((c.text.as_str(), c.offset), ("thr", 11));
        bytes.extend_from_slice(b"\xa9e\n");
        std::fs::write(d.join("v2-0.log"), &bytes).unwrap();
        let c = read_chunk(d, "v2", &q(0, Some(11)), false).unwrap();
        assert_eq!(c.text, "ée\n");
        // A file shorter than the offset was replaced: from the start.
        let c = read_chunk(d, "v2", &q(0, Some(10_000)), false).unwrap();
        assert_eq!(c.from, 0);

        let e = read_chunk(d, "v2", &q(3, None), true).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(
            e.message.contains("instances are 0: pass --instance 0"),
            "{}",
            e.message
        );
        let e = read_chunk(d, "v9", &q(0, None), true).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(
            e.message.contains("no instance of version v9"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_tail_of_a_big_log_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(dir.path().join("v1-0.log"), &text).unwrap();
        let c = read_chunk(dir.path(), "v1", &q(0, None), true).unwrap();
        assert!(c.text.starts_with("line "), "{}", &c.text[..20]);
        assert!(c.text.ends_with("line 39999\n"));
        assert_eq!(c.offset, text.len() as u64);
        assert!(c.offset - c.from <= LOGS_CHUNK);
    }
}
