//! Instance logs rotated by size (`app.log_max_size`, `app.log_keep`; docs/config.md).
//!
//! An instance appends its stdout and stderr to its log itself (`O_APPEND`), so it keeps
//! logging when cutover is gone and a restarted cutover re-adopts it with its log (issue 12:
//! instances outlive cutover; a pipe to cutover would break, or kill, the instance with it).
//! Cutover therefore rotates from outside, as logrotate's `copytruncate` does: while the
//! instance runs, its log is checked at most every second, and once past `max_size` its
//! content is copied to `v1-0.1.log` (an existing `v1-0.1.log` becomes `v1-0.2.log`, ..., the
//! one past `keep` is deleted) and the file is truncated; the instance's next append lands at
//! the start of the emptied file. Two limits, stated in docs/config.md: a file may pass
//! `max_size` by what the instance writes in one check, and a line written between the copy
//! and the truncation is lost. Rotated files are never written again, so the retention prune
//! (by age) can take them.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `dir/v1-0.log` → `dir/v1-0.<n>.log`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{n}.log"))
}

/// Rotates `path` if it holds more than `max_size` bytes; returns whether it did. A missing
/// file is nothing to rotate.
pub fn rotate_if_over(path: &Path, max_size: u64, keep: u32) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_size {
        return Ok(false);
    }
    if keep > 0 {
        match fs::remove_file(rotated_path(path, keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            let from = rotated_path(path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(path, n + 1))?;
            }
        }
        // Copied beside it, then renamed into place: a reader (`cutover logs`, an operator's
        // `tail`) never sees a half-copied `.1`. Owner-only, like the log itself: an
        // instance's output may hold anything it prints.
        let first = rotated_path(path, 1);
        let mut partial = first.clone().into_os_string();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let mut to = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        io::copy(&mut fs::File::open(path)?, &mut to)?;
        fs::rename(&partial, &first)?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// How often a running instance's log is checked against `max_size`.
pub fn check_interval(probe_interval: Duration) -> Duration {
    probe_interval.clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Checks `path` every `every` and rotates it when it passes `max_size`, for as long as the
/// instance runs (the task is aborted with its supervision). A log that cannot be rotated is
/// reported once; the instance runs on and its file keeps growing.
pub async fn watch(path: PathBuf, max_size: u64, keep: u32, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tick.tick().await;
        let p = path.clone();
        let rotated = tokio::task::spawn_blocking(move || rotate_if_over(&p, max_size, keep)).await;
        match rotated {
            Ok(Err(e)) if !reported => {
                tracing::error!(path = %path.display(), error = %e, "cannot rotate the instance log; it keeps growing");
                reported = true;
            }
            Ok(Ok(true)) => reported = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_keeping_n_files_while_the_writer_appends_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-0.log");
        // The instance's own handle, appending, as spawn opens it.
        let mut w = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        let mut write = |s: &str| w.write_all(s.as_bytes()).unwrap();
        write("aaaa\n");
        assert!(!rotate_if_over(&p, 10, 2).unwrap(), "under the size: kept");
        for (line, expect_rotation) in [
            ("bbbb\n", false),
            ("cccc\n", true),
            ("dddd\n", false),
            ("eeee\n", false),
            ("ffff\n", true),
            ("gggg\n", false),
            ("hhhh\n", false),
            ("iiii\n", true),
        ] {
            write(line);
            assert_eq!(
                rotate_if_over(&p, 10, 2).unwrap(),
                expect_rotation,
                "{line}"
            );
        }
        // Each rotated file holds what the file held when it passed 10 bytes.
        assert_eq!(read(&p), "");
        assert_eq!(read(&rotated_path(&p, 1)), "gggg\nhhhh\niiii\n");
        assert_eq!(read(&rotated_path(&p, 2)), "dddd\neeee\nffff\n");
        assert!(!rotated_path(&p, 3).exists());
        // The writer's next append lands at the start of the emptied file, not past a hole.
        write("jjjj\n");
        assert_eq!(read(&p), "jjjj\n");
        // keep = 0: the file just starts over.
        write("kkkkkkkk\n");
        assert!(rotate_if_over(&p, 10, 0).unwrap());
        assert_eq!(read(&p), "");
        assert_eq!(
            read(&rotated_path(&p, 1)),
            "gggg\nhhhh\niiii\n",
            "untouched"
        );
        // A missing log is nothing to rotate.
        assert!(!rotate_if_over(&dir.path().join("none.log"), 10, 2).unwrap());
        // Owner-only.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(rotated_path(&p, 1))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
