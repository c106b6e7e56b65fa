//! Instances outlive cutover: what identifies a running instance, written where a restarted
//! cutover finds it, and how it tells whether the process it finds is still the same one.
//!
//! DESIGN.md invariant 8: a restarted cutover re-adopts its instances instead of restarting
//! them. The supervisor keeps a ledger (`<state>/instances.json`) of every instance process
//! it runs: version, release digest, index, port, pid and the process's start time (field 22
//! of `/proc/<pid>/stat`, in clock ticks since boot). A pid alone is not an identity (pids
//! are reused); a pid with the same start time is the same process. The ledger is rewritten
//! (temporary file + rename, so it is never half-written) whenever the set of processes
//! changes.
//!
//! The parsing is pure ([`parse_stat`]); reading `/proc` is the only IO here.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One instance process as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub version: String,
    /// The [`crate::Release::digest`] it runs.
    pub digest: String,
    pub index: usize,
    /// The port on 127.0.0.1 it listens on.
    pub port: u16,
    /// Its pid, which is also its process group and session id (each instance is spawned with
    /// `setsid`).
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 when it was recorded.
    pub start_time: u64,
}

impl InstanceRecord {
    /// `<version>-<index>`, the instance id.
    pub fn id(&self) -> String {
        format!("{}-{}", self.version, self.index)
    }

    /// True when the recorded process still runs: the pid exists, is not a zombie, and
    /// started when the record says (so it is not another process that got the pid).
    pub fn is_alive(&self) -> bool {
        is_alive(self.pid, self.start_time)
    }
}

/// What a process's `/proc/<pid>/stat` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie: exited, not yet reaped), ...
    pub state: char,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so the fields are counted from its *last* `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// The stat of a running process, `None` when there is no such process.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The start time of a process that runs (not a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.start_time)
}

/// True when `pid` runs and started at `start_time`.
pub fn is_alive(pid: u32, start_time_ticks: u64) -> bool {
    start_time(pid) == Some(start_time_ticks)
}

/// The instances a restarted cutover found in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Still running, same process: to be re-adopted (or stopped if no longer wanted).
    pub alive: Vec<InstanceRecord>,
    /// Gone (or the pid now belongs to another process): to be replaced.
    pub dead: Vec<InstanceRecord>,
}

impl Survey {
    /// Sorts the records by whether their process still runs.
    pub fn of(records: Vec<InstanceRecord>) -> Survey {
        let (alive, dead) = records.into_iter().partition(InstanceRecord::is_alive);
        Survey { alive, dead }
    }
}

/// The ledger file.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(path: impl Into<PathBuf>) -> Ledger {
        Ledger { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records; none when the file does not exist. A file that cannot be parsed is an
    /// error naming it (the caller decides; cutover refuses to start rather than start a
    /// second copy of every instance).
    pub fn load(&self) -> Result<Vec<InstanceRecord>, LedgerError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(LedgerError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| LedgerError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the records, atomically (a crash leaves the old file or the new one).
    pub fn save(&self, records: &[InstanceRecord]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
        // Owner-only, like everything in the state dir (docs/security.md).
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &text)?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

/// Why the ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot read the instance ledger {} ({source}) (fix: check the state directory's permissions)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the instance ledger {} is not valid ({source}) (fix: stop any instance processes still running from this state directory, then delete the file)", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (x) Z 1 2"), None, "too short");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_with_its_own_start_time_only() {
        let pid = std::process::id();
        let t = start_time(pid).expect("this process has a stat");
        assert!(is_alive(pid, t));
        assert!(
            !is_alive(pid, t + 1),
            "another start time is another process"
        );
    }

    #[test]
    fn the_ledger_round_trips_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path().join("instances.json"));
        assert_eq!(ledger.load().unwrap(), Vec::new());
        let rec = InstanceRecord {
            version: "v1".into(),
            digest: "sha256:ab".into(),
            index: 1,
            port: 4000,
            pid: 7,
            start_time: 9,
        };
        ledger.save(std::slice::from_ref(&rec)).unwrap();
        assert_eq!(ledger.load().unwrap(), vec![rec]);
        std::fs::write(ledger.path(), "{").unwrap();
        let e = ledger.load().unwrap_err().to_string();
        assert!(e.contains("instances.json") && e.contains("fix:"), "{e}");
    }
}
