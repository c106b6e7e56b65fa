//! The `cutover` binary itself: exit codes and messages for bad configs and arguments.

mod common;

use std::process::Command;
use std::time::Duration;

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

/// A copy of the example in a directory of its own. The example runs the release build of
/// demo-app, and validate checks that the program exists, so the copy points at the demo-app
/// this test run built.
fn example_copy() -> tempfile::TempDir {
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
    dir
}

#[test]
fn validate_accepts_the_example_and_summarises_it() {
    let dir = example_copy();
    let (code, out, err) = cutover(&["validate"], dir.path());
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
    let bad = common::config()
        .set("rollout.initial_weight", 0)
        .insert("rollout.step_intervall", "1s");
    std::fs::write(dir.path().join("cutover.toml"), bad.to_toml()).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("rollout") && err.contains("step_intervall") && err.contains("fix:"),
        "{err}"
    );

    let semantic = common::config().set("rollout.initial_weight", 0);
    std::fs::write(dir.path().join("cutover.toml"), semantic.to_toml()).unwrap();
    let (code, _, err) = cutover(&["run"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("rollout.initial_weight"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not create state"
    );
}

/// `strategy = "handoff"`: validate says what applies (the handoff call and its bounds) and
/// what does not; a singleton with two instances exits 64 naming `app.instances` and the fix.
#[test]
fn validate_summarises_a_handoff_and_refuses_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let singleton = common::config().insert("rollout.strategy", "handoff");
    std::fs::write(dir.path().join("cutover.toml"), singleton.to_toml()).unwrap();
    let (code, out, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("strategy: handoff")
            && out.contains("POST /cutover/handoff on the new instance within 5s")
            && out.contains("schedule, gates, abort rules and hold_previous do not apply"),
        "{out}"
    );

    let two = singleton.set("app.instances", 2);
    std::fs::write(dir.path().join("cutover.toml"), two.to_toml()).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("app.instances: is 2 but rollout.strategy is \"handoff\"")
            && err.contains("fix: set app.instances = 1"),
        "{err}"
    );
}

/// Issue 10 item 7: `validate` checks that `app.command[0]` can run, in the same list as every
/// other problem.
#[test]
fn validate_checks_the_program_and_workdir_with_every_other_problem() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |program: &str, extra: &str| {
        let text = common::config()
            .program(&[program])
            .merge(&format!("[app]\n{extra}"))
            .to_toml();
        assert!(text.contains(&format!("command = [{program:?}")), "{text}");
        std::fs::write(dir.path().join("cutover.toml"), text).unwrap();
    };

    write("./bin/app", "workdir = \"run\"");
    let path = dir.path().join("cutover.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = common::ConfigBuilder::parse(&text).set("app.instances", "two");
    std::fs::write(&path, text.to_toml()).unwrap();
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

    std::fs::write(dir.path().join("cutover.toml"), common::config().to_toml()).unwrap();
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
    std::fs::write(dir.path().join("cutover.toml"), common::config().to_toml()).unwrap();
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
    let text = common::config().merge(rule);
    std::fs::write(dir.path().join("cutover.toml"), text.to_toml()).unwrap();
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

/// A config for the `cutover` CLI next to the harness's: same state directory (and so the same
/// admin token), with the admin address the harness's cutover actually listens on.
fn cli_config(h: &common::Harness) -> std::path::PathBuf {
    let text = common::ConfigBuilder::parse(&h.text)
        .admin_listen(h.client.addr())
        .to_toml();
    assert_ne!(
        text, h.text,
        "the harness config's admin.listen is already that address"
    );
    let path = h.dir.path().join("cli.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cutover -c <cli config> args...` on a blocking thread, so the runtime keeps serving it.
async fn cli(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-c".to_string(), cfg.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let dir = cfg.parent().unwrap().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        cutover(&args, &dir)
    })
    .await
    .unwrap()
}

/// Ctrl-C (a real SIGINT to the real process) during `deploy --wait` stops the following, not
/// the rollout: the CLI says so and how to follow or abort it, exits 130, and the rollout is
/// still running afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_interrupted_says_the_rollout_goes_on() {
    use std::io::BufRead;
    let _g = common::serial().await;
    let h = common::Harness::start().await;
    h.first_release("v1").await;
    let cfg = cli_config(&h);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(&cfg)
        .args(["deploy", "v2", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Its first line is the deploy's answer, printed once Ctrl-C is being watched for.
    let (first, stdout) = tokio::task::spawn_blocking(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (line, r)
    })
    .await
    .unwrap();
    assert!(first.contains("v2"), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            // Keep reading what it prints until it exits: a reader that went away would turn
            // a last progress line into EPIPE (exit 141) rather than the interruption.
            let rest = std::thread::spawn(move || {
                let mut stdout = stdout;
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
                rest
            });
            let out = child.wait_with_output().unwrap();
            let _ = rest.join();
            out
        }),
    )
    .await
    .expect("deploy --wait did not end after Ctrl-C")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("rollout 2 of v2 goes on")
            && err.contains("cutover status --watch")
            && err.contains("cutover abort")
            && !err.contains("error"),
        "{err}"
    );
    let s = h.status().await;
    let r = s.rollout.as_ref().unwrap();
    assert_eq!(r.id, 2);
    assert!(r.phase.is_active(), "{:?}", r.phase);
    h.shutdown().await;
}

/// The same missing rollout gives the same exit code (66) whichever verb asks for it; and the
/// history's times are RFC 3339 in its text and its JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rollout_exits_66_in_every_verb_and_history_reads_well() {
    let _g = common::serial().await;
    let h = common::Harness::start().await;
    let cfg = cli_config(&h);
    // Nothing deployed yet: no rollout to export at all.
    let (code, _, err) = cli(&cfg, &["export"]).await;
    assert_eq!(code, 66, "{err}");
    h.first_release("v1").await;
    for args in [
        &["history", "--rollout", "9"][..],
        &["history", "--rollout", "9", "--json"],
        &["export", "--rollout", "9"],
    ] {
        let (code, _, err) = cli(&cfg, args).await;
        assert_eq!(code, 66, "{args:?}: {err}");
        assert!(err.contains("no rollout 9"), "{args:?}: {err}");
    }
    let (code, text, err) = cli(&cfg, &["history"]).await;
    assert_eq!(code, 0, "{err}");
    let head = text.lines().next().unwrap();
    assert!(
        head.starts_with("rollout 1: (none) → v1  started 20")
            && head.contains("Z; first release, live at 20"),
        "{text}"
    );
    let (code, json, err) = cli(&cfg, &["history", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let r = &doc["rollouts"][0];
    for t in [&r["started_at"], &r["ended_at"], &r["decisions"][0]["at"]] {
        let t = t.as_str().unwrap_or_default();
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "not RFC 3339 with milliseconds: {t:?} in {json}"
        );
    }
    h.shutdown().await;
}

/// `cutover run` logging to a file (as under systemd or `2> run.log`) writes plain text: no
/// ANSI colour codes, and no Rust `Debug` renderings (`Some(..)`, `Report { .. }`) of what it
/// reports — through a first release, a canary aborted and stopped, and a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_to_a_file_in_plain_text() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    let text = common::config().log_level("info");
    std::fs::write(&cfg, text.to_toml()).unwrap();
    let log_path = dir.path().join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(&cfg)
        .arg("run")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_log = |what: &str| {
        cutover_testkit::eventually_blocking(Duration::from_secs(30), what, || {
            let l = log();
            if l.contains(what) {
                Ok(l)
            } else {
                Err(format!("not in the log yet:\n{l}"))
            }
        })
    };
    let running = tokio::task::block_in_place(|| wait_log("cutover is running"));
    let addr: std::net::SocketAddr = running
        .split("admin_addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no admin_addr in {running}"));
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let client = cutover_admin::AdminClient::new(addr, token.trim().to_string());
    let deploy = |v: &'static str| {
        let client = client.clone();
        async move {
            client
                .post("/v1/deploy", &serde_json::json!({ "version": v }))
                .await
                .unwrap()
        }
    };
    deploy("v1").await;
    tokio::task::block_in_place(|| wait_log("kind=\"promoted\""));
    common::eventually(Duration::from_secs(20), "v1 stable", || async {
        let phase = client.get("/v1/status").await.unwrap()["rollout"]["phase"].clone();
        if phase["phase"] == "done" {
            Ok(())
        } else {
            Err(phase)
        }
    })
    .await;
    deploy("v2").await;
    tokio::task::block_in_place(|| wait_log("canary v2"));
    client
        .post("/v1/abort", &serde_json::json!({ "reason": "log test" }))
        .await
        .unwrap();
    tokio::task::block_in_place(|| wait_log("stopped: "));
    let term = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || run.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let l = log();
    assert!(l.contains("proxy stopped"), "{l}");
    assert!(!l.contains('\x1b'), "ANSI escape codes in a log file:\n{l}");
    for debug in [
        "Some(",
        "None",
        "Report {",
        " { id:",
        "Drained {",
        "TimedOut",
    ] {
        assert!(
            !l.contains(debug),
            "a Debug rendering ({debug:?}) in the log:\n{l}"
        );
    }
}

/// `cutover ... | head`: a reader that went away ends the command quietly (141, as a shell
/// reports SIGPIPE), not with a panic and its backtrace.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = example_copy();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("validate")
        .arg("-c")
        .arg(dir.path().join("cutover.toml"))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// `cutover crd` needs no config and prints the CRD that deploy/kubernetes/ ships; the
/// Kubernetes verbs without a cluster say how to reach one (no API server runs here).
#[test]
fn crd_prints_the_shipped_crd_and_k8s_verbs_without_a_cluster_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cutover(&["crd"], dir.path());
    assert_eq!(code, 0, "{err}");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/crd.yaml"),
    )
    .unwrap();
    assert_eq!(out, shipped);

    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["k8s", "status", "web", "-n", "shop"])
        .current_dir(dir.path())
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no Kubernetes client") && err.contains("KUBECONFIG"),
        "{err}"
    );

    let (code, _, err) = cutover(
        &["controller", "--lease-duration", "5", "--lease-grace", "5"],
        dir.path(),
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--lease-grace"), "{err}");
}
