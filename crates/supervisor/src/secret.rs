//! Secret environment values (`app.secret_env`, `deploy --secret-env`; docs/security.md): the
//! instances get them in their environment, but no file cutover writes ever holds one. A
//! [`crate::Release`] keeps only each secret's name, where its value comes from, and the value's
//! SHA-256 (which the release digest covers); the value itself lives in memory
//! ([`SecretValues`], never serialised, redacted in `Debug`) and is read again from cutover's
//! environment or from its file when a stored release is started after a restart.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a secret's value comes from when cutover (re)starts a stored release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum SecretSource {
    /// cutover's own environment variable of the same name (`app.secret_env`,
    /// `--secret-env NAME`; also where a value given at deploy is looked for after a restart).
    Env,
    /// A file on cutover's host, read at every start (`--secret-env NAME=@FILE`); one trailing
    /// newline is dropped.
    File { path: PathBuf },
    /// Given with the deploy (`--secret-env NAME=VALUE`); after a restart of cutover it comes
    /// from cutover's environment, as [`SecretSource::Env`].
    Given,
}

/// A secret as a release keeps it: no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub source: SecretSource,
    /// Hex SHA-256 of the value.
    pub sha256: String,
}

/// The values, in memory only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.0.keys().map(|k| format!("{k}=<redacted>")))
            .finish()
    }
}

/// Why a secret's value cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name} is not set in cutover's environment (fix: start `cutover run` with {name} in its environment, or deploy with --secret-env {name}=@FILE)")]
    NotInEnv { name: String },
    #[error("secret {name}: cannot read {path}: {problem} (fix: make the file readable by cutover, or deploy with another --secret-env {name}=@FILE)")]
    File {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("secret {name} is not the value this release was deployed with (SHA-256 {found}, the release has {expected}) (fix: restore the value, or deploy again to roll the new one out)")]
    Changed {
        name: String,
        expected: String,
        found: String,
    },
    #[error("secret {name} is also set in app.env or --env: a name is either secret or not (fix: remove it from one of them)")]
    AlsoPlain { name: String },
}

/// Hex SHA-256 of a secret's value, salted with its name (so that equal values under two names
/// do not show as equal, and a table of common passwords' plain SHA-256 does not apply).
pub fn sha256(name: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"cutover secret\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

/// Reads a secret's value from where `source` says (a [`SecretSource::Given`] value after a
/// restart is looked for in the environment).
pub fn read(name: &str, source: &SecretSource) -> Result<String, SecretError> {
    match source {
        SecretSource::Env | SecretSource::Given => {
            std::env::var(name).map_err(|_| SecretError::NotInEnv { name: name.into() })
        }
        SecretSource::File { path } => {
            let mut v = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                name: name.into(),
                path: path.clone(),
                problem: e.to_string(),
            })?;
            if v.ends_with('\n') {
                v.pop();
            }
            Ok(v)
        }
    }
}
