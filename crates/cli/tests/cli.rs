//! The `cutover` binary itself: exit codes and messages for bad configs and arguments.

mod common;

use std::process::Command;

fn cutover(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_example_and_summarises_it() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cutover.toml");
    let (code, out, err) = cutover(&["validate", "-c", example], std::path::Path::new("."));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2% → 4% → 8% → 16% → 32% → 64% → 100%"),
        "{out}"
    );
    // The traffic a verdict needs, from the defaults the example spells out.
    assert!(
        out.contains("traffic: needs ≥ 83.4 req/s at 2 % to decide on one 30s window (min_samples 50), ≥ 8.4 req/s with the look-back (5m)"),
        "{out}"
    );
}

#[test]
fn invalid_config_exits_64_naming_every_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = common::config_text()
        .replace("initial_weight = 5.0", "initial_weight = 0")
        .replace(
            "min_samples = 10",
            "min_samples = 10\nstep_intervall = \"1s\"",
        );
    std::fs::write(dir.path().join("cutover.toml"), &bad).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("rollout") && err.contains("step_intervall") && err.contains("fix:"),
        "{err}"
    );

    let semantic = common::config_text().replace("initial_weight = 5.0", "initial_weight = 0");
    std::fs::write(dir.path().join("cutover.toml"), &semantic).unwrap();
    let (code, _, err) = cutover(&["run"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("rollout.initial_weight"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not create state"
    );
}

#[test]
fn missing_config_and_unreachable_runtime_have_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = cutover(&["status"], dir.path());
    assert_eq!(code, 64);
    assert!(
        err.contains("cannot read config") && err.contains("-c"),
        "{err}"
    );

    std::fs::write(dir.path().join("cutover.toml"), common::config_text()).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/admin.token"), "t").unwrap();
    // admin.listen is port 0 in this config: nothing can be listening there.
    let (code, _, err) = cutover(&["status"], dir.path());
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("cutover run"), "{err}");
}

#[test]
fn bad_arguments_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cutover.toml"), common::config_text()).unwrap();
    let (code, _, err) = cutover(&["deploy", "v2", "--env", "NOEQUALS"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");
    let (code, _, _) = cutover(&["frobnicate"], dir.path());
    assert_eq!(code, 64, "usage errors are EX_USAGE");
}

#[test]
fn unsupported_promql_is_refused_at_load_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "[[rollout.aborts]]\nname = \"trend\"\nmetric = \"promql\"\nquery = \"predict_linear(x[5m], 60) > 0\"\n\n[[rollout.aborts]]\nname = \"typo\"\nmetric = \"promql\"\nquery = \"rate(x[1m]) > {{trak}}\"\n";
    let text = common::config_text().replace("[log]", &format!("{rule}\n[log]"));
    std::fs::write(dir.path().join("cutover.toml"), text).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("rollout.aborts[2].query") && err.contains("predict_linear"),
        "{err}"
    );
    assert!(
        err.contains("rollout.aborts[3].query") && err.contains("trak"),
        "{err}"
    );
}
