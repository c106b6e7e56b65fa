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
    // The example runs the release build of demo-app; validate checks that the program exists,
    // so this copy points at the demo-app this test run built.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cutover.toml"
    ))
    .unwrap();
    let exe = common::demo_app().display().to_string();
    assert!(example.contains("\"../target/release/demo-app\""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        example.replace("../target/release/demo-app", &exe),
    )
    .unwrap();
    let (code, out, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2% → 4% → 8% → 16% → 32% → 64% → 100%"),
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

/// Issue 10 item 7: `validate` checks that `app.command[0]` can run, in the same list as every
/// other problem.
#[test]
fn validate_checks_the_program_and_workdir_with_every_other_problem() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = common::demo_app().display().to_string();
    let write = |program: &str, extra: &str| {
        let text = common::config_text()
            .replace(&format!("{exe:?}"), &format!("{program:?}"))
            .replace("[app]", &format!("[app]\n{extra}"));
        assert!(text.contains(&format!("command = [{program:?}")), "{text}");
        std::fs::write(dir.path().join("cutover.toml"), text).unwrap();
    };

    write("./bin/app", "workdir = \"run\"");
    let path = dir.path().join("cutover.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("instances = 1"));
    std::fs::write(&path, text.replace("instances = 1", "instances = \"two\"")).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("app.command[0]: \"./bin/app\" resolved to")
            && err.contains("which does not exist")
            && err.contains("fix: build or install the program"),
        "{err}"
    );
    assert!(err.contains("app.workdir: \"run\" resolved to"), "{err}");
    assert!(
        err.contains("app.instances: expected a whole number"),
        "{err}"
    );
    assert!(err.contains("(3 problems)"), "{err}");

    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    std::fs::write(dir.path().join("bin/app"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.path().join("bin/app"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    write("./bin/app", "workdir = \"run\"");
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("is not executable (chmod +x it)"), "{err}");

    std::fs::set_permissions(
        dir.path().join("bin/app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (code, out, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");

    write("cutover-no-such-program", "");
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("\"cutover-no-such-program\" in PATH, which was not found"),
        "{err}"
    );
    write("sh", "");
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "a program found in PATH: {err}");

    // With {version}, the program depends on the release: the directory before it is checked.
    write("./releases/{version}/app", "");
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("(the part before {version}) is not a directory"),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("releases")).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
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
