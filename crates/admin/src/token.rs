//! The admin bearer token: generated on first run, kept in `<state dir>/admin.token`, mode 0600
//! (DESIGN.md, security defaults).

use rand::RngCore;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file's name inside the state directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Why the token could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot access the admin token file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the admin token file {path} is accessible by other users (mode {mode:o}): \
         run `chmod 600 {path}`",
        path = path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("the admin token file {path} is empty: delete it and cutover will generate a new one", path = path.display())]
    EmptyToken { path: PathBuf },
}

/// Returns the admin token, generating `state_dir/admin.token` (32 random bytes, hex, mode 0600)
/// if it does not exist yet. An existing file that group or others may access is refused rather
/// than silently fixed: someone else may already have read it.
pub fn ensure_token(state_dir: &Path) -> Result<String, AdminError> {
    let path = state_dir.join(TOKEN_FILE);
    let io_err = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err)?;

    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    // create_new + mode: the file never exists with wider permissions, not even for an instant,
    // and two cutovers starting at once cannot both write a token (the loser reads the winner's).
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(token.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => Err(io_err(e)),
    }
}

fn read_token(path: &Path) -> Result<String, AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(AdminError::InsecurePermissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let token = fs::read_to_string(path).map_err(io_err)?.trim().to_owned();
    if token.is_empty() {
        return Err(AdminError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token)
}
