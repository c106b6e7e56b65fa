//! Instance logs rotated by size (`app.log_max_size`, `app.log_keep`; docs/config.md).
//!
//! An instance's stdout and stderr are pipes that cutover drains into its log file, so the only
//! writer of the file is cutover: rotation renames the full file away and starts a new one
//! between two writes, and no process is ever left writing into a renamed or deleted file.
//! `v1-0.log` becomes `v1-0.1.log`, an existing `v1-0.1.log` becomes `v1-0.2.log`, ... and the
//! one past `keep` is deleted. Rotated files are never written again, so the retention prune
//! (by age) can take them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A log file that rotates itself when a write would take it past `max_size`.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

/// `dir/v1-0.log` → `dir/v1-0.<n>.log`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{n}.log"))
}

fn open(path: &Path) -> io::Result<File> {
    // Owner-only: an instance's output may hold anything it prints (docs/security.md).
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    /// Opens (appending) `path`.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<RotatingLog> {
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            file,
            size,
            max_size,
            keep,
        })
    }

    /// Appends `buf`, rotating whenever the file would pass `max_size`. A file is cut after
    /// the last whole line that fits; only a line longer than `max_size` is split.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let room = self.max_size.saturating_sub(self.size) as usize;
            if buf.len() <= room {
                return self.append(buf);
            }
            let cut = buf[..room].iter().rposition(|b| *b == b'\n').map(|i| i + 1);
            match cut {
                Some(n) => {
                    self.append(&buf[..n])?;
                    buf = &buf[n..];
                }
                None if self.size == 0 => {
                    self.append(&buf[..room])?;
                    buf = &buf[room..];
                }
                None => {}
            }
            self.rotate()?;
        }
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(rotated_path(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, rotated_path(&self.path, 1))?;
        }
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Copies what an instance writes to one of its pipes into its log until the pipe closes (the
/// process and every child holding the pipe exited). A log that cannot be written is reported
/// once and the output is dropped from then on: the instance must never block on a full pipe
/// because its log is broken.
pub async fn pump(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut broken = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if broken {
            continue;
        }
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = log.write(&buf[..n]) {
            tracing::error!(path = %log.path.display(), error = %e, "cannot write the instance log; dropping its output");
            broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-0.log");
        let mut log = RotatingLog::open(&p, 10, 2).unwrap();
        for chunk in [
            "aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n", "ffff\n", "gggg\n",
        ] {
            log.write(chunk.as_bytes()).unwrap();
        }
        // 10 bytes per file: [gggg], [eeee ffff], [cccc dddd]; aaaa bbbb went with the oldest.
        assert_eq!(read(&p), "gggg\n");
        assert_eq!(read(&rotated_path(&p, 1)), "eeee\nffff\n");
        assert_eq!(read(&rotated_path(&p, 2)), "cccc\ndddd\n");
        assert!(!rotated_path(&p, 3).exists());
        assert!(rotated_path(&p, 1).ends_with("v1-0.1.log"));
        // An existing file is appended to, its size counted.
        drop(log);
        let mut log = RotatingLog::open(&p, 10, 0).unwrap();
        log.write(b"hhhh\n").unwrap();
        assert_eq!(read(&p), "gggg\nhhhh\n");
        // keep = 0: rotation just starts over.
        log.write(b"i\n").unwrap();
        assert_eq!(read(&p), "i\n");
        // A chunk of several lines is cut after the last whole line that fits; a line longer
        // than a file is split.
        let mut log = RotatingLog::open(&dir.path().join("v2-0.log"), 10, 3).unwrap();
        log.write(b"123\n456\n789\n0123456789abc\n").unwrap();
        let q = dir.path().join("v2-0.log");
        assert_eq!(read(&rotated_path(&q, 3)), "123\n456\n");
        assert_eq!(read(&rotated_path(&q, 2)), "789\n");
        assert_eq!(read(&rotated_path(&q, 1)), "0123456789");
        assert_eq!(read(&q), "abc\n");
        assert_eq!(read(&rotated_path(&p, 1)), "eeee\nffff\n", "untouched");
        // Owner-only.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
