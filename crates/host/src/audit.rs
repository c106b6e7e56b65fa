//! `cutover history --verify` and `cutover history --export`: the audit chain read straight from
//! a state database (an auditor's copy will do), with no running cutover. docs/audit.md has the
//! format, its guarantees and what it cannot detect.

use crate::commands::{emit, emitln, CommandError};
use crate::config;
use cutover_store::{AuditKey, AuditPaths, ChainReport, Head};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the chain to read is, and what to check it with.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The state directory (its `cutover.db`, `audit.key`, `audit.head`).
    pub state_dir: Option<PathBuf>,
    /// A database file (overrides `state_dir`'s).
    pub db: Option<PathBuf>,
    /// The key file (default: `audit.key` beside the database).
    pub key_file: Option<PathBuf>,
    /// The head file (default: `audit.head` beside the database).
    pub head_file: Option<PathBuf>,
    /// With `--verify`: verify this export instead of a database.
    pub export_file: Option<PathBuf>,
}

fn usage(msg: String) -> CommandError {
    CommandError::Usage(msg)
}

impl Source {
    /// The database: `--db`, else `--state-dir`'s, else the config's state dir's.
    fn db(&self, config_path: &Path) -> Result<PathBuf, CommandError> {
        let db = match (&self.db, &self.state_dir) {
            (Some(db), _) => db.clone(),
            (None, Some(dir)) => dir.join("cutover.db"),
            (None, None) => config::load(config_path)?.state_dir().join("cutover.db"),
        };
        if !db.is_file() {
            return Err(usage(format!(
                "no state database at {} (fix: pass --db PATH or --state-dir DIR, or the config \
                 of a cutover that has run)",
                db.display()
            )));
        }
        Ok(db)
    }

    fn key(&self, beside: &Path) -> Result<AuditKey, CommandError> {
        let path = self
            .key_file
            .clone()
            .unwrap_or_else(|| AuditPaths::beside(beside).key_file);
        AuditKey::load(&path).map_err(|e| {
            usage(format!(
                "{e} (the audit key: pass --key-file PATH or set CUTOVER_AUDIT_KEY_FILE)"
            ))
        })
    }
}

/// `cutover history --verify`: exit 0 when the chain holds, [`CommandError::Tampered`]
/// (exit 65) naming the first bad record when it does not.
pub fn verify(config_path: &Path, src: &Source, as_json: bool) -> Result<(), CommandError> {
    let (report, head_note) = match &src.export_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| usage(format!("cannot read the export {}: {e}", file.display())))?;
            let key = src.key_file.as_ref().ok_or_else(|| {
                usage("--export-file needs --key-file: an export is verified with the key".into())
            })?;
            let key = AuditKey::load(key).map_err(|e| usage(e.to_string()))?;
            let head = match &src.head_file {
                Some(h) => Some(read_head(h)?),
                None => None,
            };
            let note = head.is_none().then(|| {
                "head not checked (no --head-file): deletion of the newest records cannot be \
                 detected"
                    .to_string()
            });
            let report = cutover_store::verify_export(&text, &key, head.as_ref())
                .map_err(|e| usage(e.to_string()))?;
            (report, note)
        }
        None => {
            let db = src.db(config_path)?;
            let key = src.key(&db)?;
            let head_file = src
                .head_file
                .clone()
                .unwrap_or_else(|| AuditPaths::beside(&db).head_file);
            // A missing head file beside the store is a finding (it is written at every
            // commit); one named explicitly must exist.
            if src.head_file.is_some() && !head_file.is_file() {
                return Err(usage(format!(
                    "no head file at {} (fix: pass the audit.head kept with this store)",
                    head_file.display()
                )));
            }
            let present = head_file.is_file();
            let mut report =
                cutover_store::verify_db(&db, &key, present.then_some(head_file.as_path()))
                    .map_err(|e| CommandError::Other(e.into()))?;
            if !present {
                report = cutover_store::chain::with_problem(
                    report,
                    cutover_store::Problem {
                        seq: None,
                        what: format!(
                        "the head file {} is missing: deletion of the newest records cannot be \
                         ruled out (fix: pass --head-file with the copy kept elsewhere)",
                        head_file.display()
                    ),
                    },
                );
            }
            (report, None)
        }
    };
    if as_json {
        emitln(&serde_json::to_string_pretty(&report).unwrap_or_default())?;
    } else {
        emit(&render(&report, head_note.as_deref()))?;
    }
    if report.ok {
        Ok(())
    } else {
        Err(CommandError::Tampered(format!(
            "the audit chain failed verification: {}",
            report.summary().trim_start_matches("TAMPERED: ")
        )))
    }
}

fn read_head(path: &Path) -> Result<Head, CommandError> {
    cutover_store::chain::read_head(path)
        .map_err(|e| usage(e.to_string()))?
        .ok_or_else(|| usage(format!("the head file {} holds no head", path.display())))
}

/// The report for a human.
pub fn render(r: &ChainReport, head_note: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if r.ok {
        let _ = write!(o, "audit chain: OK ({} records, keyed chain intact", r.rows);
        if let Some(h) = &r.head {
            let _ = write!(o, "; newest record #{} matches the anchored head", h.seq);
        }
        if let Some(p) = r.pruned_before {
            let _ = write!(
                o,
                "; records before #{p} pruned, vouched for by a checkpoint"
            );
        }
        if !r.acceptances.is_empty() {
            let at: Vec<String> = r.acceptances.iter().map(|s| format!("#{s}")).collect();
            let _ = write!(
                o,
                "; tampering accepted by `run --accept-tampered` at record {} ({} bad record(s) \
                 kept as found)",
                at.join(", "),
                r.accepted
            );
        }
        let _ = writeln!(o, ")");
    } else {
        let first = r
            .first_bad_seq
            .map_or_else(String::new, |s| format!(" at record #{s}"));
        let _ = writeln!(
            o,
            "audit chain: TAMPERED{first} ({} problem(s) in {} records)",
            r.problems.len(),
            r.rows
        );
        for p in &r.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    if let Some(n) = head_note {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

/// `cutover history --export`: every record of the chain as a JSON line (seq, rollout_id, at,
/// kind, reason, numbers_json, prev, mac) to `out`.
pub fn export(config_path: &Path, src: &Source, out: Option<&Path>) -> Result<(), CommandError> {
    let db = src.db(config_path)?;
    let rows = cutover_store::export_db(&db).map_err(|e| CommandError::Other(e.into()))?;
    let mut text = String::new();
    for r in &rows {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    match out {
        None => emit(&text),
        Some(path) => std::fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| usage(format!("cannot write {}: {e}", path.display()))),
    }
}
