//! Compressed WebSockets through rollouts, with clients we did not write (DESIGN.md invariant
//! 12, issue 10 item 1): the app is an order service written with Python's `websockets`
//! (`tests/apps/ws_orders.py`: it negotiates permessage-deflate and the `orders.v1` subprotocol), the
//! clients are Python `websockets` clients with their defaults (`tests/apps/ws_orders_client.py`) and
//! a headless Chromium page (`tests/browser/ws_orders.mjs`), all of which offer
//! permessage-deflate. Across a rollout, an abort and a promotion, every order is acked exactly
//! once, executed == acked, compression is negotiated end to end on every session, and no
//! session ends with 1006.

mod common;

use common::{serial, Harness};
use cutover_core::engine::Phase;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn apps() -> PathBuf {
    repo().join("tests/apps")
}

/// What one client process reported on stdout.
#[derive(Debug, Default)]
struct Seen {
    /// `open` lines: the extensions and subprotocol each session got.
    opens: Vec<String>,
    /// Order id → the version that acked it first.
    acked: BTreeMap<String, String>,
    duplicate_acks: u32,
    closes: BTreeMap<String, u32>,
    /// The final `done` line's JSON.
    done: Option<serde_json::Value>,
    /// Anything else (failed connection attempts), the last few.
    other: Vec<String>,
}

impl Seen {
    fn summary(&self) -> String {
        let mut by_version = BTreeMap::<&str, usize>::new();
        for v in self.acked.values() {
            *by_version.entry(v).or_insert(0) += 1;
        }
        format!(
            "acked {by_version:?}, duplicate acks {}, closes {:?}, sessions {:?}, other {:?}",
            self.duplicate_acks,
            self.closes,
            self.opens.iter().take(3).collect::<Vec<_>>(),
            self.other
        )
    }

    fn acked_by(&self, version: &str) -> usize {
        self.acked.values().filter(|v| *v == version).count()
    }
}

/// A client process (Python or Chromium), killed if the test ends early.
struct ClientProcess {
    what: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Seen>>,
}

impl ClientProcess {
    fn spawn(what: &'static str, mut cmd: Command) -> ClientProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {what} client ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = s.lock().unwrap();
                let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
                match kind {
                    "open" => s.opens.push(rest.to_owned()),
                    "ack" => {
                        let (id, version) = rest.split_once(' ').unwrap();
                        s.acked.insert(id.to_owned(), version.to_owned());
                    }
                    "dup" => s.duplicate_acks += 1,
                    "close" => *s.closes.entry(rest.to_owned()).or_insert(0) += 1,
                    "done" => s.done = Some(serde_json::from_str(rest).unwrap()),
                    _ => {
                        if s.other.len() >= 5 {
                            s.other.remove(0);
                        }
                        s.other.push(line.clone());
                    }
                }
            }
        });
        ClientProcess {
            what,
            child,
            stdin,
            seen,
        }
    }

    fn python(proxy: std::net::SocketAddr, name: &str) -> ClientProcess {
        let mut cmd = Command::new("python3");
        cmd.arg(apps().join("ws_orders_client.py"))
            .arg(format!("ws://{proxy}/orders?client={{name}}"))
            .arg(name)
            .args(["--rate", "20"]);
        ClientProcess::spawn("python", cmd)
    }

    fn chromium(proxy: std::net::SocketAddr, names: &[String]) -> ClientProcess {
        let dir = repo().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "{}/node_modules is missing: run `npm ci` there (scripts/test does)",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("ws_orders.mjs")
            .arg(format!("ws://{proxy}/orders?client={{name}}"))
            .arg(names.join(","))
            .arg("20");
        ClientProcess::spawn("chromium", cmd)
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    /// Tells the client to stop placing orders; it then resends until all are acked.
    fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
    }

    async fn wait_done(&mut self, deadline: Duration) {
        let what = format!("the {} client to finish", self.what);
        common::eventually(deadline, &what, || {
            std::future::ready(if self.seen(|s| s.done.is_none()) {
                Err(self.seen(|s| format!("closes so far: {:?}", s.closes)))
            } else {
                Ok(())
            })
        })
        .await;
        let _ = self.child.wait();
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if self.seen(|s| s.done.is_none()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits until `pred` holds for the clients, failing with what each client saw.
async fn wait_clients(
    what: &str,
    clients: &[ClientProcess],
    pred: impl Fn(&[ClientProcess]) -> bool,
) {
    common::eventually(LONG, what, || {
        std::future::ready(if pred(clients) {
            Ok(())
        } else {
            let seen: Vec<String> = clients
                .iter()
                .map(|c| format!("{}: {}", c.what, c.seen(Seen::summary)))
                .collect();
            Err(format!("clients:\n{}", seen.join("\n")))
        })
    })
    .await;
}

fn config(dir: &Path) -> common::ConfigBuilder {
    let script = apps().join("ws_orders.py").display().to_string();
    let state = format!("{}/{{version}}-{{instance}}", dir.join("exec").display());
    common::config()
        .program(&["python3", &script])
        .env(&[("ORDERS_STATE_DIR", &state)])
        .quiet_period("300ms")
        .drain_timeout("500ms")
        .initial_weight(50.0)
        .step_interval("60s")
        .hold_previous("1s")
        // Clients stick by name, so that some land on the canary at 50 %.
        .merge("[sticky]\nquery = \"client\"\n")
}

/// Lines of every instance's `<name>` file under `exec/`.
fn instance_lines(dir: &Path, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("exec"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path().join(name)) {
            out.extend(text.lines().map(str::to_owned));
        }
    }
    out
}

/// Orders acked by `version` to the clients of one kind.
fn acked_by(clients: &[ClientProcess], what: &str, version: &str) -> usize {
    clients
        .iter()
        .filter(|c| c.what == what)
        .map(|c| c.seen(|s| s.acked_by(version)))
        .sum()
}

/// The version a plain GET with `?client=key` reaches (what a WebSocket with that sticky
/// key will reach too).
fn version_for(proxy: std::net::SocketAddr, key: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    write!(
        s,
        "GET /version?client={key} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// `n` client names `<prefix>-<i>` on each version: the sticky split is a hash, so names are
/// picked by asking the proxy where each one lands, not guessed.
fn names_on_both(proxy: std::net::SocketAddr, prefix: &str, n: usize) -> Vec<String> {
    let (mut stable, mut canary) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let name = format!("{prefix}-{i}");
        match version_for(proxy, &name).as_str() {
            "v1" if stable.len() < n => stable.push(name),
            "v2" if canary.len() < n => canary.push(name),
            _ => {}
        }
        if stable.len() == n && canary.len() == n {
            return [stable, canary].concat();
        }
    }
    panic!("200 names did not give {n} on each version at 50 %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_orders_from_chromium_and_python_survive_rollout_abort_and_promotion() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path());
    let h = Harness::start_in(dir, text).await;
    h.first_release("v1").await;
    h.deploy("v2", json!({})).await.unwrap();
    h.wait_for("v2 at 50%", LONG, |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        )
    })
    .await;

    let proxy = h.running().proxy_addr;
    let mut clients: Vec<ClientProcess> = names_on_both(proxy, "py", 2)
        .iter()
        .map(|n| ClientProcess::python(proxy, n))
        .collect();
    let browser = names_on_both(proxy, "web", 2);
    clients.push(ClientProcess::chromium(proxy, &browser));

    // Both kinds of client have sessions on both versions.
    wait_clients(
        "orders acked by v1 and v2 for both clients",
        &clients,
        |c| {
            ["python", "chromium"]
                .iter()
                .all(|what| acked_by(c, what, "v1") > 20 && acked_by(c, what, "v2") > 20)
        },
    )
    .await;
    // The abort drains v2's compressed sessions: 1012, reconnect to v1, resend.
    h.verb("abort").await.unwrap();
    h.wait_for("v2 stopped", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v1")
    })
    .await;
    for what in ["python", "chromium"] {
        let before = acked_by(&clients, what, "v1");
        wait_clients(
            &format!("{what} orders acked by v1 after the abort"),
            &clients,
            |c| acked_by(c, what, "v1") > before + 20,
        )
        .await;
    }

    // A promotion, then hold_previous ends: v1's sessions are drained and move to v3.
    h.deploy("v3", json!({})).await.unwrap();
    h.wait_for("v3 progressing", LONG, |s| {
        matches!(
            s.rollout.as_ref().map(|r| &r.phase),
            Some(Phase::Progressing { .. })
        )
    })
    .await;
    h.verb("promote").await.unwrap();
    h.wait_for("v1 stopped after hold_previous", LONG, |s| {
        s.instances.iter().all(|i| i.version == "v3")
    })
    .await;
    wait_clients("orders acked by v3 for both clients", &clients, |c| {
        ["python", "chromium"]
            .iter()
            .all(|what| acked_by(c, what, "v3") > 20)
    })
    .await;

    for c in &mut clients {
        c.stop();
    }
    for c in &mut clients {
        c.wait_done(LONG).await;
    }

    let mut all_acked = BTreeSet::new();
    for c in &clients {
        c.seen(|s| {
            let what = c.what;
            let done = s.done.as_ref().unwrap();
            assert_eq!(done["unacked"], json!([]), "{what}: orders never acked");
            let sent = done["sent"].as_u64().unwrap() as usize;
            assert!(sent > 50, "{what}: only {sent} orders");
            assert_eq!(s.acked.len(), sent, "{what}: every order acked");
            assert_eq!(s.duplicate_acks, 0, "{what}: an order acked twice");
            assert!(
                s.closes.keys().all(|code| code == "1000" || code == "1012"),
                "{what}: closes {:?} (1006 is a session cut without a close frame)",
                s.closes
            );
            assert!(
                s.closes.get("1012").copied().unwrap_or(0) > 0,
                "{what}: never drained: {:?}",
                s.closes
            );
            assert!(!s.opens.is_empty());
            for open in &s.opens {
                assert!(
                    open.starts_with("permessage-deflate") && open.ends_with("| orders.v1"),
                    "{what}: a session without compression or subprotocol: {open}"
                );
            }
            for id in s.acked.keys() {
                assert!(all_acked.insert(id.clone()), "{id} acked by two clients");
            }
        });
    }
    for what in ["python", "chromium"] {
        for v in ["v1", "v2", "v3"] {
            assert!(
                acked_by(&clients, what, v) > 0,
                "{what}: nothing acked by {v}"
            );
        }
    }

    // The app saw compression negotiated on every session it served, through cutover.
    let sessions = instance_lines(h.dir.path(), "sessions.log");
    assert!(sessions.len() >= clients.len(), "{sessions:?}");
    for s in &sessions {
        assert!(
            s.starts_with("permessage-deflate") && s.ends_with("| orders.v1"),
            "{s}"
        );
    }
    // Executed == acked, each order exactly once.
    let mut executed = BTreeMap::<String, u32>::new();
    for line in instance_lines(h.dir.path(), "executed.log") {
        let id = line.split_whitespace().next().unwrap().to_owned();
        *executed.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = executed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    let executed: BTreeSet<String> = executed.into_keys().collect();
    let ghosts: Vec<_> = executed.difference(&all_acked).collect();
    assert!(ghosts.is_empty(), "executed, ack never arrived: {ghosts:?}");
    let lost: Vec<_> = all_acked.difference(&executed).collect();
    assert!(lost.is_empty(), "acked, never executed: {lost:?}");
    h.shutdown().await;
}
