//! A release: one version's resolved program plus its argv/env templates, and a digest that
//! identifies exactly what would run.

use crate::secret::{self, SecretError, SecretRef, SecretSource, SecretValues};
use crate::SupervisorError;
use cutover_core::spec::AppSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A version to run.
///
/// `argv`, `env` and `extra_args` are templates: `{port}`, `{version}` and `{instance}` are
/// substituted per instance at spawn time. `argv[0]` is kept as written; the program actually
/// executed is `exe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The version name (`v2`, `2024-06-01.3`, ...).
    pub name: String,
    /// Hex SHA-256 over the executable's content, the name, the argv template, the extra
    /// arguments, the environment, and the content and path of every file in
    /// [`Release::files`]: a rebuilt binary, an edited script or other overrides under the
    /// same version name is a different release (and a digest marked failed stays failed).
    pub digest: String,
    /// The resolved, executable program.
    pub exe: PathBuf,
    /// Hex SHA-256 of the program file.
    pub exe_sha256: String,
    /// `app.command`, placeholders still in.
    pub argv: Vec<String>,
    /// `app.env` with the overrides applied on top, placeholders still in.
    pub env: BTreeMap<String, String>,
    /// Appended to argv (placeholders substituted too).
    pub extra_args: Vec<String>,
    /// The instances' working directory: `app.workdir`, or the config file's directory.
    pub workdir: Option<PathBuf>,
    /// The files besides the executable that the digest covers, as `path → hex SHA-256`:
    /// every argv element (and `--flag=value` value) that names an existing regular file,
    /// relative to the working directory, and every file `app.digest_paths` names.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Environment whose values are secret (`app.secret_env`, `deploy --secret-env`): name →
    /// where the value comes from and its salted SHA-256, which the digest covers; never the
    /// value (docs/security.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// The secrets' values, in memory only: never serialised, redacted in `Debug`.
    #[serde(skip)]
    pub secret_values: SecretValues,
}

impl Release {
    /// Resolves `app.command[0]` (with `{version}` substituted) to an executable: relative to
    /// `config_dir` when it contains a `/`, searched in `PATH` otherwise. Fails with an error
    /// naming `app.command[0]` and the path tried when it is missing or not executable.
    pub fn resolve(
        name: &str,
        app: &AppSpec,
        config_dir: &Path,
        env_overrides: BTreeMap<String, String>,
        extra_args: Vec<String>,
    ) -> Result<Release, SupervisorError> {
        check_version_name(name)?;
        let template = app.command.first().ok_or(SupervisorError::EmptyCommand)?;
        let program = template.replace("{version}", name);
        let exe = if program.contains('/') {
            let path = config_dir.join(&program);
            check_executable(&path).map_err(|problem| SupervisorError::Executable {
                template: template.clone(),
                tried: path.display().to_string(),
                problem,
            })?;
            path
        } else {
            find_in_path(&program).ok_or_else(|| SupervisorError::Executable {
                template: template.clone(),
                tried: format!("{program:?} in PATH"),
                problem: "was not found as an executable file in any PATH directory".into(),
            })?
        };
        let exe_sha256 = sha256_file(&exe, "could not read the executable")?;

        // Instances run where docs/config.md says: app.workdir, else the config file's directory.
        let workdir = match &app.workdir {
            None => config_dir.to_path_buf(),
            Some(w) => {
                let path = config_dir.join(w.replace("{version}", name));
                if !path.is_dir() {
                    return Err(SupervisorError::Workdir {
                        template: w.clone(),
                        path,
                    });
                }
                path
            }
        };

        let mut files = BTreeMap::new();
        for arg in app.command.iter().skip(1).chain(&extra_args) {
            let arg = arg.replace("{version}", name);
            let value = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => value.to_string(),
                _ => arg,
            };
            if value.is_empty() || value.contains('{') {
                continue;
            }
            let path = workdir.join(&value);
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.insert(
                    value,
                    sha256_file(&path, "could not read a file app.command names")?,
                );
            }
        }
        for (i, template) in app.digest_paths.iter().enumerate() {
            collect_digest_path(i, template, name, config_dir, &mut files)?;
        }

        let mut env = app.env.clone();
        env.extend(env_overrides);
        let digest = digest(&exe_sha256, name, &app.command, &extra_args, &env, &files);
        Ok(Release {
            name: name.to_string(),
            digest,
            exe,
            exe_sha256,
            argv: app.command.clone(),
            env,
            extra_args,
            workdir: Some(workdir),
            files,
            secrets: BTreeMap::new(),
            secret_values: SecretValues::default(),
        })
    }

    /// Adds secret environment, `name → (source, value)`. The digest then also covers each
    /// secret's name and value (by its SHA-256); a release without secrets keeps its digest.
    pub fn with_secrets(
        mut self,
        secrets: BTreeMap<String, (SecretSource, String)>,
    ) -> Result<Release, SecretError> {
        if secrets.is_empty() {
            return Ok(self);
        }
        for (name, (source, value)) in secrets {
            if self.env.contains_key(&name) {
                return Err(SecretError::AlsoPlain { name });
            }
            let sha256 = secret::sha256(&name, &value);
            self.secrets
                .insert(name.clone(), SecretRef { source, sha256 });
            self.secret_values.0.insert(name, value);
        }
        let mut h = Sha256::new();
        h.update(b"secrets");
        h.update(self.digest.as_bytes());
        for (name, r) in &self.secrets {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(r.sha256.as_bytes());
        }
        self.digest = hex::encode(h.finalize());
        Ok(self)
    }

    /// Reads the secret values of a release loaded from the store (cutover restarted): each
    /// from where its [`SecretSource`] says, and each must be the value it was deployed with.
    pub fn load_secrets(&mut self) -> Result<(), SecretError> {
        for (name, r) in &self.secrets {
            if self.secret_values.0.contains_key(name) {
                continue;
            }
            let value = secret::read(name, &r.source)?;
            let found = secret::sha256(name, &value);
            if found != r.sha256 {
                return Err(SecretError::Changed {
                    name: name.clone(),
                    expected: r.sha256.clone(),
                    found,
                });
            }
            self.secret_values.0.insert(name.clone(), value);
        }
        Ok(())
    }
}

/// Substitutes the per-instance placeholders. Version names cannot contain `{`, so the
/// order of replacement cannot create new placeholders.
pub(crate) fn substitute(s: &str, port: u16, version: &str, instance: usize) -> String {
    s.replace("{port}", &port.to_string())
        .replace("{version}", version)
        .replace("{instance}", &instance.to_string())
}

fn check_version_name(name: &str) -> Result<(), SupervisorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SupervisorError::BadVersionName { name: name.into() })
    }
}

fn check_executable(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".into()),
        Err(e) => Err(format!("cannot be read ({e})")),
        Ok(m) if !m.is_file() => Err("is not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err("is not executable (chmod +x it)".into())
        }
        Ok(_) => Ok(()),
    }
}

/// Where `program` (an `app.command[0]` with `{version}` already substituted) would run from,
/// by the rules of [`Release::resolve`]: with a `/`, relative to `config_dir`; otherwise the
/// first executable file of that name in `PATH`. `cutover validate` calls it before any deploy.
/// The error is what was tried and what is wrong with it.
pub fn locate_program(program: &str, config_dir: &Path) -> Result<PathBuf, (String, String)> {
    if program.contains('/') {
        let path = config_dir.join(program);
        check_executable(&path).map_err(|problem| (path.display().to_string(), problem))?;
        Ok(path)
    } else {
        find_in_path(program).ok_or_else(|| {
            (
                format!("{program:?} in PATH"),
                "was not found as an executable file in any PATH directory".into(),
            )
        })
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| check_executable(p).is_ok())
}

/// Adds the files one `app.digest_paths` entry names: a file, a directory (every regular file
/// below it, recursively, in sorted order; symlinked directories are not followed) or a glob.
/// Keys are paths relative to `config_dir` when they are below it, so moving the whole
/// deployment elsewhere keeps the digest while a rename inside it changes it.
fn collect_digest_path(
    i: usize,
    template: &str,
    name: &str,
    config_dir: &Path,
    files: &mut BTreeMap<String, String>,
) -> Result<(), SupervisorError> {
    let field = format!("app.digest_paths[{i}]");
    let entry = template.replace("{version}", name);
    let bad = |path: &Path, problem: String| SupervisorError::DigestPath {
        field: field.clone(),
        template: template.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let full = config_dir.join(&entry);
    let mut found = Vec::new();
    if entry.contains(['*', '?', '[']) {
        let pattern = full.to_string_lossy().into_owned();
        let paths =
            glob::glob(&pattern).map_err(|e| bad(&full, format!("is not a valid glob ({e})")))?;
        for p in paths {
            let p = p.map_err(|e| bad(e.path(), format!("cannot be read ({})", e.error())))?;
            walk(&p, &mut found).map_err(|e| bad(&p, format!("cannot be read ({e})")))?;
        }
        if found.is_empty() {
            return Err(bad(&full, "matches no file".into()));
        }
    } else {
        match fs::metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(&full, "does not exist".into()))
            }
            Err(e) => return Err(bad(&full, format!("cannot be read ({e})"))),
            Ok(_) => {
                walk(&full, &mut found).map_err(|e| bad(&full, format!("cannot be read ({e})")))?
            }
        }
    }
    for p in found {
        let key = p
            .strip_prefix(config_dir)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let sum = sha256_file(&p, "could not read a file app.digest_paths names")?;
        files.insert(key, sum);
    }
    Ok(())
}

/// Regular files at or below `path`, sorted; symlinks to files count, symlinked directories
/// are skipped (no cycles).
fn walk(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut entries = fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
    } else if meta.is_file() || (meta.is_symlink() && fs::metadata(path)?.is_file()) {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn sha256_file(path: &Path, what: &'static str) -> Result<String, SupervisorError> {
    let io = |source| SupervisorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Each field is length-prefixed so that no two different inputs hash the same bytes
/// (`["ab","c"]` vs `["a","bc"]`).
fn digest(
    exe_sha256: &str,
    name: &str,
    argv: &[String],
    extra_args: &[String],
    env: &BTreeMap<String, String>,
    files: &BTreeMap<String, String>,
) -> String {
    let mut h = Sha256::new();
    let mut put = |tag: &[u8], s: &str| {
        h.update(tag);
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put(b"exe", exe_sha256);
    put(b"name", name);
    for a in argv {
        put(b"argv", a);
    }
    for a in extra_args {
        put(b"extra", a);
    }
    // BTreeMap iterates sorted, so the digest does not depend on insertion order.
    for (k, v) in env {
        put(b"envk", k);
        put(b"envv", v);
    }
    // The path too: a renamed module is a different release even with the same bytes.
    for (path, sum) in files {
        put(b"filep", path);
        put(b"filec", sum);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Release {
        Release {
            name: "v1".into(),
            digest: "d".repeat(64),
            exe: "/bin/true".into(),
            exe_sha256: "e".repeat(64),
            argv: vec!["/bin/true".into()],
            env: BTreeMap::from([("PLAIN".into(), "1".into())]),
            extra_args: vec![],
            workdir: None,
            files: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secret_values: SecretValues::default(),
        }
    }

    fn one(name: &str, value: &str) -> BTreeMap<String, (SecretSource, String)> {
        BTreeMap::from([(name.to_string(), (SecretSource::Given, value.to_string()))])
    }

    #[test]
    fn secrets_are_digested_never_serialised_nor_printed() {
        let none = plain().with_secrets(BTreeMap::new()).unwrap();
        assert_eq!(
            none.digest,
            plain().digest,
            "no secrets: the digest is unchanged"
        );
        let a = plain()
            .with_secrets(one("TOKEN_A", "hunter2-value"))
            .unwrap();
        let b = plain().with_secrets(one("TOKEN_A", "other-value")).unwrap();
        assert_ne!(a.digest, plain().digest);
        assert_ne!(a.digest, b.digest, "another value is another release");
        let json = serde_json::to_string(&a).unwrap();
        let debug = format!("{a:?}");
        for text in [&json, &debug] {
            assert!(!text.contains("hunter2-value"), "{text}");
            assert!(text.contains("TOKEN_A"), "{text}");
        }
        // Read back from the store: no value until loaded, and only the deployed one loads.
        let mut stored: Release = serde_json::from_str(&json).unwrap();
        assert!(stored.secret_values.0.is_empty());
        stored.secrets.get_mut("TOKEN_A").unwrap().source = SecretSource::File {
            path: "/nonexistent/secret".into(),
        };
        let e = stored.load_secrets().unwrap_err();
        assert!(e.to_string().contains("secret TOKEN_A: cannot read"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "changed\n").unwrap();
        stored.secrets.get_mut("TOKEN_A").unwrap().source =
            SecretSource::File { path: file.clone() };
        let e = stored.load_secrets().unwrap_err();
        assert!(matches!(e, SecretError::Changed { .. }), "{e}");
        std::fs::write(&file, "hunter2-value\n").unwrap();
        stored.load_secrets().unwrap();
        assert_eq!(stored.secret_values, a.secret_values);
        // A name is secret or plain, not both.
        let e = plain().with_secrets(one("PLAIN", "x")).unwrap_err();
        assert_eq!(
            e,
            SecretError::AlsoPlain {
                name: "PLAIN".into()
            }
        );
    }

    #[test]
    fn substitutes_every_placeholder() {
        assert_eq!(
            substitute("--port={port} {version}/{instance} {port}", 8081, "v2", 1),
            "--port=8081 v2/1 8081"
        );
    }

    #[test]
    fn digest_is_unambiguous() {
        let e = BTreeMap::new();
        let f = BTreeMap::new();
        let a = digest("x", "v1", &["ab".into(), "c".into()], &[], &e, &f);
        let b = digest("x", "v1", &["a".into(), "bc".into()], &[], &e, &f);
        let c = digest("x", "v1", &["ab".into()], &["c".into()], &e, &f);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn version_names() {
        assert!(check_version_name("v2.1-rc_3").is_ok());
        for bad in ["", ".hidden", "a/b", "x{port}", "a b"] {
            assert!(check_version_name(bad).is_err(), "{bad:?}");
        }
    }
}
