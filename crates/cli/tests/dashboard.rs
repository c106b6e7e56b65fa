//! The dashboard end to end (issue 15), in headless Chromium (Debian's `/usr/bin/chromium`,
//! driven by playwright-core: `tests/browser/dashboard.mjs`) against a real cutover running
//! demo-app under load. The page logs in (after a wrong token is refused), is refused a state
//! change without its CSRF token, deploys v2 and follows it to 100 % (chart and step indicator
//! moving), shows a slow canary's abort with its reason, pauses (with the keyboard) and promotes
//! v4, shows a refusal as the CLI prints it, lists the history and replays a rollout, fits a
//! phone, and never sends a request anywhere but cutover's admin listener. Every effect the
//! page claims is checked here through the `cutover` binary (`status --json`, and the verb
//! whose refusal the page showed). Screenshots of the main views go to `docs/img/`.

mod common;

use common::{config, serial, ConfigBuilder, Harness};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cutover -c <config> <args>`: exit code, stdout, stderr.
fn cutover(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `cutover status --json` says: the rollout's phase (`{"phase": ...}`) and version.
fn cli_status(cfg: &Path) -> (String, String, Value) {
    let (code, out, err) = cutover(cfg, &["status", "--json"]);
    assert_eq!(code, 0, "cutover status: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = &v["rollout"];
    (
        r["phase"]["phase"].as_str().unwrap_or_default().to_owned(),
        r["to"]["version"].as_str().unwrap_or_default().to_owned(),
        v,
    )
}

/// The page's claim `check`, verified through the CLI; `Err` says why not.
fn verify(cfg: &Path, check: &Value) -> Result<(), String> {
    let what = check["check"].as_str().unwrap_or_default();
    let want_version = check["version"].as_str().unwrap_or_default();
    let (phase, version, doc) = cli_status(cfg);
    let expect = |phases: &[&str]| {
        if phases.contains(&phase.as_str()) && version == want_version {
            Ok(())
        } else {
            Err(format!(
                "the CLI says {version} is {phase}, the page said {what} {want_version}: {doc}"
            ))
        }
    };
    match what {
        "nothing changed" => expect(&["done"]),
        "promoted" => expect(&["promoted", "done"]),
        "paused" => {
            expect(&["paused"])?;
            match doc["rollout"]["phase"]["manual"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(format!("paused, but not by an operator: {doc}")),
            }
        }
        "aborted" => {
            expect(&["aborted"])?;
            let reason = doc["rollout"]["phase"]["reason"]
                .as_str()
                .unwrap_or_default();
            let shown = check["reason"].as_str().unwrap_or_default();
            if shown.contains(reason) {
                Ok(())
            } else {
                Err(format!("the page shows {shown:?}, the CLI {reason:?}"))
            }
        }
        "refusal" => {
            let verb = check["verb"].as_str().unwrap_or_default();
            let (code, _, err) = cutover(cfg, &[verb]);
            let shown = check["text"].as_str().unwrap_or_default();
            if code != 0 && err.trim() == shown.trim() {
                Ok(())
            } else {
                Err(format!(
                    "`cutover {verb}` exited {code} saying {err:?}; the page said {shown:?}"
                ))
            }
        }
        other => Err(format!("unknown check {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_watches_and_steers_real_rollouts_in_chromium() {
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test does)",
        browser_dir.display()
    );
    let _g = serial().await;
    // Steps long enough for a page to see each one, and to pause a rollout in the middle.
    let h = Harness::start_with(config().set("rollout.step_interval", "1500ms")).await;
    h.first_release("v1").await;
    let load = h.load(200, Duration::from_secs(1));
    h.wait_for("load flowing", Duration::from_secs(30), |_| {
        load.snapshot().ok > 50
    })
    .await;

    // The CLI's config: the harness's, with the admin address it actually bound.
    let admin = h.running().admin_addr;
    let cfg = h.dir.path().join("cli.toml");
    let text = ConfigBuilder::parse(&h.text)
        .set("admin.listen", admin.to_string())
        .to_toml();
    std::fs::write(&cfg, text).unwrap();

    let shots = std::env::var_os("CUTOVER_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("docs/img"));
    let mut child = Command::new("node")
        .current_dir(&browser_dir)
        .arg("dashboard.mjs")
        .arg(format!("http://{admin}"))
        .arg(&h.running().token)
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });

    // The page's lines, answered as they come (on a blocking thread: the CLI is a process).
    let cfg2 = cfg.clone();
    let conversation = tokio::task::spawn_blocking(move || {
        let mut done = None;
        let mut checks = Vec::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("browser: {line}");
                continue;
            };
            if let Some(msg) = v.get("log") {
                eprintln!("browser: {}", msg.as_str().unwrap_or_default());
            } else if v.get("check").is_some() {
                let answer = match verify(&cfg2, &v) {
                    Ok(()) => "ok".to_owned(),
                    Err(why) => format!("fail {why}"),
                };
                eprintln!("check {v} → {answer}");
                checks.push((
                    v["check"].as_str().unwrap_or_default().to_owned(),
                    answer.clone(),
                ));
                let _ = writeln!(stdin, "{}", answer.replace('\n', " "));
            } else if let Some(d) = v.get("done") {
                done = Some(d.clone());
            }
        }
        (done, checks)
    });
    let (done, checks) = tokio::time::timeout(Duration::from_secs(600), conversation)
        .await
        .expect("the browser script finished within 10 minutes")
        .unwrap();
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap();
    let report = load.stop().await;

    assert!(
        status.success(),
        "dashboard.mjs failed: {errors}\nchecks: {checks:?}"
    );
    let done = done.unwrap_or_else(|| panic!("no `done` line: {errors}"));
    assert_eq!(done["outside"], serde_json::json!([]), "{done}");
    assert!(done["requests"].as_u64().unwrap() > 10, "{done}");
    let names: Vec<&str> = checks.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "nothing changed",
            "promoted",
            "aborted",
            "paused",
            "promoted",
            "refusal"
        ]
    );
    assert!(checks.iter().all(|(_, a)| a == "ok"), "{checks:?}");
    for shot in [
        "dashboard-login.png",
        "dashboard-live.png",
        "dashboard-abort.png",
        "dashboard-history.png",
        "dashboard-replay.png",
        "dashboard-phone.png",
    ] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 1000, "{shot} was not saved in {}", shots.display());
    }
    // The healthy releases failed nothing (only the slow canary's own clients timed out).
    for v in ["v1", "v2", "v4"] {
        let failed = report.by_version.get(v).map_or(0, |c| c.failed);
        assert_eq!(failed, 0, "{v} failed {failed} requests");
    }
    h.shutdown().await;
}
