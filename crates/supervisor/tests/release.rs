//! `Release::resolve`: digests and errors.

mod common;

use common::Kit;
use cutover_supervisor::{Release, SupervisorError};
use std::collections::BTreeMap;

fn resolve(kit: &Kit, name: &str, env: &[(&str, &str)], extra: &[&str]) -> Release {
    let app = kit.app(&[]);
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let extra = extra.iter().map(|s| s.to_string()).collect();
    Release::resolve(name, &app, kit.dir.path(), env, extra).unwrap()
}

#[test]
fn digest_identifies_what_would_run() {
    let kit = Kit::new();
    let base = resolve(&kit, "v1", &[], &[]);
    assert_eq!(base.exe, kit.path("app.py"));
    assert_eq!(base.digest.len(), 64);
    assert_eq!(
        base.digest,
        resolve(&kit, "v1", &[], &[]).digest,
        "deterministic"
    );

    let digests = [
        resolve(&kit, "v2", &[], &[]).digest,
        resolve(&kit, "v1", &[("A", "1")], &[]).digest,
        resolve(&kit, "v1", &[("A", "2")], &[]).digest,
        resolve(&kit, "v1", &[], &["--x"]).digest,
    ];
    for d in &digests {
        assert_ne!(*d, base.digest);
    }
    assert_ne!(digests[1], digests[2], "different override values");

    // A rebuilt executable under the same version name is a different release.
    kit.write_app(&format!("{}\n# rebuilt\n", common::APP));
    let rebuilt = resolve(&kit, "v1", &[], &[]);
    assert_ne!(rebuilt.exe_sha256, base.exe_sha256);
    assert_ne!(rebuilt.digest, base.digest);

    let json = serde_json::to_string(&rebuilt).unwrap();
    assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), rebuilt);
}

#[test]
fn overrides_win_over_app_env_and_templates_stay() {
    let kit = Kit::new();
    let mut app = kit.app(&[]);
    app.env.insert("A".into(), "from-app {port}".into());
    app.env.insert("B".into(), "kept".into());
    let over = BTreeMap::from([("A".to_string(), "override".to_string())]);
    let r = Release::resolve("v1", &app, kit.dir.path(), over, vec![]).unwrap();
    assert_eq!(r.env["A"], "override");
    assert_eq!(r.env["B"], "kept");
    assert_eq!(r.argv, app.command, "placeholders stay in the template");
}

fn resolve_err(kit: &Kit, command: &[&str]) -> String {
    let mut app = kit.app(&[]);
    app.command = command.iter().map(|s| s.to_string()).collect();
    Release::resolve("v1", &app, kit.dir.path(), BTreeMap::new(), vec![])
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_the_field_and_the_path_tried() {
    let kit = Kit::new();

    let e = resolve_err(&kit, &["./bin/app-{version}", "--port", "{port}"]);
    assert!(e.contains("app.command[0]"), "{e}");
    assert!(
        e.contains(&kit.path("./bin/app-v1").display().to_string()),
        "{e}"
    );
    assert!(e.contains("does not exist"), "{e}");

    std::fs::write(kit.path("plain.sh"), "#!/bin/sh\n").unwrap();
    let e = resolve_err(&kit, &["./plain.sh"]);
    assert!(
        e.contains("app.command[0]") && e.contains("not executable"),
        "{e}"
    );

    let e = resolve_err(&kit, &["./"]);
    assert!(
        e.contains("app.command[0]") && e.contains("not a regular file"),
        "{e}"
    );

    let e = resolve_err(&kit, &["no-such-program-cutover-test"]);
    assert!(e.contains("app.command[0]") && e.contains("PATH"), "{e}");

    let e = resolve_err(&kit, &[]);
    assert!(e.contains("app.command is empty"), "{e}");

    // Found in PATH.
    let mut app = kit.app(&[]);
    app.command = vec!["python3".into()];
    let r = Release::resolve("v1", &app, kit.dir.path(), BTreeMap::new(), vec![]).unwrap();
    assert!(
        r.exe.is_absolute() && r.exe.ends_with("python3"),
        "{:?}",
        r.exe
    );

    let mut app = kit.app(&[]);
    app.workdir = Some("nope".into());
    let e = Release::resolve("v1", &app, kit.dir.path(), BTreeMap::new(), vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("app.workdir"), "{e}");

    let err = Release::resolve(
        "../x",
        &kit.app(&[]),
        kit.dir.path(),
        BTreeMap::new(),
        vec![],
    )
    .unwrap_err();
    assert!(
        matches!(err, SupervisorError::BadVersionName { .. }),
        "{err}"
    );
}
