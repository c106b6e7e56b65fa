//! Secrets at rest (issue 14 item 3): secret environment reaches the instances, from
//! cutover's environment, a file, or the deploy, but no file under the state directory holds
//! one (database, WAL, logs), across restarts; a missing one is an error naming it.

mod common;

use cutover_admin::AdminClient;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// A `cutover run` child process with `env` added to its environment, logging to `log`.
struct Run {
    child: Child,
    log: PathBuf,
    client: AdminClient,
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_log(path: &Path, what: &str) -> String {
    cutover_testkit::eventually_blocking(LONG, what, || {
        let l = log_of(path);
        if l.contains(what) {
            Ok(l)
        } else {
            Err(format!("not in the log yet:\n{l}"))
        }
    })
}

fn start(dir: &Path, n: u32, env: &[(&str, &str)]) -> Run {
    let log = dir.join(format!("run-{n}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("-c")
        .arg(dir.join("cutover.toml"))
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("DB_PASSWORD")
        .env_remove("API_KEY")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let running = wait_log(&log, "cutover is running");
    let addr: std::net::SocketAddr = running
        .split("admin_addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no admin_addr in {running}"));
    let token = std::fs::read_to_string(dir.join("state/admin.token")).unwrap();
    Run {
        child,
        log,
        client: AdminClient::new(addr, token.trim().to_string()),
    }
}

impl Run {
    fn stop(mut self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        assert!(self.child.wait().unwrap().success());
    }

    /// The environment of the running instance of `version`, once it is ready.
    async fn instance_env(&self, version: &str) -> String {
        let pid = common::eventually(LONG, &format!("{version} ready"), || async {
            let s = self.client.get("/v1/status").await.unwrap();
            let pid = s["instances"].as_array().and_then(|all| {
                all.iter()
                    .find(|i| i["version"] == version && i["state"] == "ready")
                    .and_then(|i| i["pid"].as_u64())
            });
            pid.ok_or(s)
        })
        .await;
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', "\n")
    }
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
        // Anything else is `upgrade.sock` (the Unix socket `cutover upgrade` connects to): it
        // holds no bytes, and opening it to read fails with ENXIO.
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_instances_and_no_file_holds_them() {
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let text = common::config()
        .log_level("info")
        .merge("[app]\nsecret_env = [\"DB_PASSWORD\"]\n")
        .to_toml();
    std::fs::write(d.join("cutover.toml"), &text).unwrap();
    // Values no file could hold by chance.
    let db = format!("db-{:016x}", rand_u64());
    let api = format!("api-{:016x}", rand_u64());
    let from_file = format!("file-{:016x}", rand_u64());
    std::fs::write(d.join("file-secret"), format!("{from_file}\n")).unwrap();

    // 1. Deployed with all three kinds; the instance gets every value.
    let run = tokio::task::block_in_place(|| start(&d, 1, &[("DB_PASSWORD", &db)]));
    let cli_cfg = d.join("cli.toml");
    std::fs::write(
        &cli_cfg,
        common::ConfigBuilder::parse(&text)
            .admin_listen(run.client.addr())
            .to_toml(),
    )
    .unwrap();
    let cli = |args: Vec<String>| {
        let (cfg, d) = (cli_cfg.clone(), d.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
                .arg("-c")
                .arg(&cfg)
                .args(&args)
                .current_dir(&d)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, err) = cli(vec![
        "deploy".into(),
        "v1".into(),
        "--secret-env".into(),
        format!("API_KEY={api}"),
        "--secret-env".into(),
        "FILE_SECRET=@file-secret".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let env = run.instance_env("v1").await;
    for want in [
        format!("DB_PASSWORD={db}"),
        format!("API_KEY={api}"),
        format!("FILE_SECRET={from_file}"),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} not in the instance's environment"
        );
    }
    // A secret nobody has is refused at deploy, naming it, and changes nothing.
    let (code, err) = cli(vec![
        "deploy".into(),
        "v2".into(),
        "--secret-env".into(),
        "NOT_THERE".into(),
    ])
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("secret NOT_THERE is not set"), "{err}");
    tokio::task::block_in_place(|| run.stop());

    // 2. Restarted with the values in cutover's environment: the stored release (no values)
    //    starts again with them.
    let run =
        tokio::task::block_in_place(|| start(&d, 2, &[("DB_PASSWORD", &db), ("API_KEY", &api)]));
    let env = run.instance_env("v1").await;
    assert!(
        env.lines().any(|l| l == format!("API_KEY={api}")),
        "after a restart"
    );
    assert!(env.lines().any(|l| l == format!("FILE_SECRET={from_file}")));
    tokio::task::block_in_place(|| run.stop());

    // 3. Restarted without API_KEY: the start fails with an error naming it.
    let run = tokio::task::block_in_place(|| start(&d, 3, &[("DB_PASSWORD", &db)]));
    let l = tokio::task::block_in_place(|| wait_log(&run.log, "could not start"));
    assert!(
        l.contains("secret API_KEY is not set in cutover's environment"),
        "{l}"
    );
    tokio::task::block_in_place(|| run.stop());

    // No file under the state directory holds a value: database, WAL, logs, token.
    let mut all = Vec::new();
    files(&d.join("state"), &mut all);
    assert!(all.iter().any(|p| p.ends_with("cutover.db")), "{all:?}");
    assert!(
        all.iter()
            .any(|p| p.extension().is_some_and(|x| x == "log")),
        "{all:?}"
    );
    for p in &all {
        let bytes = std::fs::read(p).unwrap();
        for secret in [&db, &api, &from_file] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds {secret}",
                p.display()
            );
        }
    }
    // Nor cutover's own logs.
    for n in 1..=3 {
        let l = log_of(&d.join(format!("run-{n}.log")));
        for secret in [&db, &api, &from_file] {
            assert!(!l.contains(secret.as_str()), "run-{n}.log holds {secret}");
        }
    }
    // What the store keeps instead: the names and digests.
    let store = cutover_store::Store::open(&d.join("state/cutover.db")).unwrap();
    let spec: Value = store.releases().unwrap()[0].spec.clone();
    let names: Vec<&String> = spec["secrets"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD", "FILE_SECRET"]);
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
