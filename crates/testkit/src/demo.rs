use std::path::PathBuf;

/// The demo-app binary, built by `cargo test --workspace` (or `cargo build --workspace`) into
/// the same target directory as the test binary calling this.
///
/// Panics with the command to run when it is missing: a test of a real child process must not
/// quietly skip.
pub fn demo_app() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/demo-app
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let p = profile.join("demo-app");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}
