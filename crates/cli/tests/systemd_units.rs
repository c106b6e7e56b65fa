//! The systemd units in `deploy/systemd/` are valid as systemd reads them: Debian's
//! `systemd-analyze verify` (no running systemd needed) on a copy whose `ExecStart=` names the
//! cutover binary under test (the units name `/usr/local/bin/cutover`, which does not exist
//! here). It reports unknown keys, keys in the wrong section, invalid values (it caught a
//! `FileDescriptorName=public:admin`, which systemd ignores) and a missing executable.

use std::path::Path;
use std::process::Command;

#[test]
fn the_deploy_systemd_units_verify_cleanly() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    for name in ["cutover.socket", "cutover.service"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        let text = text.replace("/usr/local/bin/cutover", env!("CARGO_BIN_EXE_cutover"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "./cutover.socket", "./cutover.service"])
        .current_dir(dir.path())
        // Not the machine's units: only these two, and no user manager.
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed by scripts/test");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(said.trim(), "", "systemd-analyze verify complained");
}
