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

fn resolve_app(kit: &Kit, command: &[&str], digest_paths: &[&str]) -> Result<Release, String> {
    let mut app = kit.app(&[]);
    app.command = command.iter().map(|s| s.to_string()).collect();
    app.digest_paths = digest_paths.iter().map(|s| s.to_string()).collect();
    Release::resolve("v1", &app, kit.dir.path(), BTreeMap::new(), vec![]).map_err(|e| e.to_string())
}

fn write(kit: &Kit, rel: &str, text: &str) {
    let path = kit.path(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_interpreted_app_is_identified_by_its_script_not_only_the_interpreter() {
    let kit = Kit::new();
    write(&kit, "conf.toml", "a = 1\n");
    let cmd = [
        "python3",
        "app.py",
        "--port",
        "{port}",
        "--config=conf.toml",
        "missing.py",
    ];
    let base = resolve_app(&kit, &cmd, &[]).unwrap();
    assert!(base.exe.ends_with("python3"), "{:?}", base.exe);
    assert_eq!(
        base.files.keys().collect::<Vec<_>>(),
        ["app.py", "conf.toml"],
        "argv elements naming files (and --flag=value values) are covered; the rest is not"
    );
    assert_eq!(
        base.workdir.as_deref(),
        Some(kit.dir.path()),
        "instances run in the config dir"
    );

    // The same interpreter, an edited script: another release.
    kit.write_app(&format!("{}\n# edited\n", common::APP));
    let edited = resolve_app(&kit, &cmd, &[]).unwrap();
    assert_eq!(edited.exe_sha256, base.exe_sha256);
    assert_ne!(edited.digest, base.digest);
    // So is an edited file passed as --flag=value.
    write(&kit, "conf.toml", "a = 2\n");
    assert_ne!(resolve_app(&kit, &cmd, &[]).unwrap().digest, edited.digest);

    // Files are looked up relative to app.workdir when it is set.
    write(&kit, "sub/app.py", "print('other')\n");
    let mut app = kit.app(&[]);
    app.command = vec!["python3".into(), "app.py".into(), "{port}".into()];
    app.workdir = Some("sub".into());
    let in_sub = Release::resolve("v1", &app, kit.dir.path(), BTreeMap::new(), vec![]).unwrap();
    assert_eq!(
        in_sub.files.get("app.py"),
        Some(&sha256_hex(b"print('other')\n"))
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn digest_paths_cover_files_directories_and_globs() {
    let kit = Kit::new();
    write(&kit, "lib/a.py", "A\n");
    write(&kit, "lib/pkg/b.py", "B\n");
    write(&kit, "templates/index.html", "<p>\n");
    write(&kit, "templates/notes.txt", "ignored by the glob\n");
    write(&kit, "settings-v1.json", "{}\n");
    let cmd = ["./app.py", "--port", "{port}"];
    let paths = ["lib", "templates/*.html", "settings-{version}.json"];
    let base = resolve_app(&kit, &cmd, &paths).unwrap();
    assert_eq!(
        base.files.keys().collect::<Vec<_>>(),
        [
            "lib/a.py",
            "lib/pkg/b.py",
            "settings-v1.json",
            "templates/index.html"
        ]
    );
    assert_eq!(base.digest, resolve_app(&kit, &cmd, &paths).unwrap().digest);

    let mut seen = vec![base.digest.clone()];
    let mut changed = |what: &str| {
        let d = resolve_app(&kit, &cmd, &paths).unwrap().digest;
        assert!(!seen.contains(&d), "{what} did not change the digest");
        seen.push(d);
    };
    write(&kit, "lib/pkg/b.py", "B2\n");
    changed("a nested file's content");
    std::fs::rename(kit.path("lib/pkg/b.py"), kit.path("lib/pkg/c.py")).unwrap();
    changed("a rename with the same bytes");
    write(&kit, "lib/new.py", "\n");
    changed("a new file in a directory");
    write(&kit, "templates/other.html", "\n");
    changed("a new glob match");
    write(&kit, "settings-v1.json", "{\"x\":1}\n");
    changed("a {version}-substituted file");
    // Outside what the digest covers: no change.
    let before = resolve_app(&kit, &cmd, &paths).unwrap().digest;
    write(&kit, "templates/notes.txt", "still ignored\n");
    assert_eq!(resolve_app(&kit, &cmd, &paths).unwrap().digest, before);
}

#[test]
fn a_missing_digest_path_is_an_error_naming_the_field() {
    let kit = Kit::new();
    write(&kit, "lib/a.py", "A\n");
    let cmd = ["./app.py", "--port", "{port}"];
    let e = resolve_app(&kit, &cmd, &["lib", "nope.py"]).unwrap_err();
    assert!(
        e.contains("app.digest_paths[1]") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        e.contains(&kit.path("nope.py").display().to_string()),
        "{e}"
    );
    let e = resolve_app(&kit, &cmd, &["lib/*.rb"]).unwrap_err();
    assert!(
        e.contains("app.digest_paths[0]") && e.contains("matches no file"),
        "{e}"
    );
    let e = resolve_app(&kit, &cmd, &["lib/[.py"]).unwrap_err();
    assert!(
        e.contains("app.digest_paths[0]") && e.contains("not a valid glob"),
        "{e}"
    );
}
