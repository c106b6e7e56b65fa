//! One cutover per state directory (issue 12 item 5): an exclusive `flock` on
//! `<state>/lock`, held for as long as the process lives, with the holder's pid written in
//! the file so that a second `cutover run` can say who holds it.
//!
//! Two cutovers on one state dir would supervise two copies of every instance and write
//! contradictory decisions into one rollout (split brain). `flock` is released by the kernel
//! when the holder dies however it dies (`kill -9` included), so a crashed cutover never
//! leaves a stale lock behind; the pid in the file is informational only.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held while cutover runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cutover (pid {pid}) is running on the state directory {} (it holds {}); fix: stop it first, or give this one another service.state_dir", dir.display(), path.display())]
    Held {
        pid: String,
        dir: PathBuf,
        path: PathBuf,
    },
    #[error("cannot lock {} ({source}) (fix: check the state directory's permissions)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the lock of `state_dir` without waiting, and writes this process's pid into it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Owner-only, like everything in the state dir (docs/security.md).
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_string()
                    },
                    dir: state_dir.to_path_buf(),
                    path,
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts like another process would.
        let e = StateLock::acquire(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("fix:"), "{msg}");
        drop(first);
        StateLock::acquire(dir.path()).expect("released with its holder");
    }
}
