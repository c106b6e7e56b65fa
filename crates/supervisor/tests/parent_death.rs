//! What happens to instances when cutover dies without a chance to stop them (SIGKILL: no
//! destructor runs).
//!
//! This file used to assert the opposite: that the kernel killed every instance with cutover
//! (`PR_SET_PDEATHSIG`). That made cutover's own crash the biggest outage on its host (issue
//! 12: every app cold-started, 811 failed requests). Instances now outlive cutover: they run
//! in a session of their own, the ledger records what identifies them, and a restarted
//! cutover re-adopts them — same pid, same process start time — instead of restarting them.
//! "Nothing left behind" still holds, at the next stop: the re-adopted instance's whole
//! process group is stopped, a wrapper script's server included.
//!
//! The tests re-run this test binary as a stand-in for cutover, SIGKILL it, and check what is
//! left.

mod common;

use common::{poll_until, Kit, DEADLINE};
use cutover_supervisor::{InstanceState, Ledger, Release, Supervisor, Survey};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HELPER_DIR: &str = "CUTOVER_SUPERVISOR_TEST_HELPER_DIR";
const HELPER_WRAPPED: &str = "CUTOVER_SUPERVISOR_TEST_HELPER_WRAPPED";

/// A wrapper script that starts the app *without* `exec`: the shell stays the instance's
/// process (the group leader) and the server is its child.
const WRAPPER: &str = "#!/bin/sh\n./app.py \"$@\"\necho \"app exited with $?\"\n";

fn app_spec(kit: &Kit, wrapped: bool) -> cutover_core::spec::AppSpec {
    let mut app = kit.app(&[]);
    app.instances = 2;
    if wrapped {
        let path = kit.path("wrapper.sh");
        std::fs::write(&path, WRAPPER).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        app.command[0] = "./wrapper.sh".into();
    }
    app
}

fn release(dir: &Path, app: &cutover_core::spec::AppSpec) -> Release {
    Release::resolve("v1", app, dir, BTreeMap::new(), vec![]).unwrap()
}

fn ledger(dir: &Path) -> Ledger {
    Ledger::new(dir.join("instances.json"))
}

/// The stand-in for cutover: runs two instances with a ledger, says when they are ready,
/// then waits to be killed. Does nothing unless started by a test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for the tests in this file"]
async fn helper_supervisor() {
    let Some(dir) = std::env::var_os(HELPER_DIR).map(PathBuf::from) else {
        return;
    };
    let kit_app = {
        let kit = Kit {
            dir: tempfile::tempdir().unwrap(),
        };
        let mut a = kit.app(&[]);
        a.instances = 2;
        if std::env::var_os(HELPER_WRAPPED).is_some() {
            a.command[0] = "./wrapper.sh".into();
        }
        a
    };
    let release = release(&dir, &kit_app);
    let (sup, _rx) = Supervisor::with_ledger(kit_app, dir.join("logs"), ledger(&dir), vec![]);
    sup.start(release).unwrap();
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    // Ready, and recorded: the ledger holds both processes.
    let mut rx = sup.subscribe();
    cutover_testkit::eventually(DEADLINE, "both instances in the ledger", || {
        let n = ledger(&dir).load().unwrap_or_default().len();
        rx.borrow_and_update();
        std::future::ready(if n == 2 { Ok(()) } else { Err(n) })
    })
    .await;
    std::fs::write(dir.join("ready.tmp"), b"").unwrap();
    std::fs::rename(dir.join("ready.tmp"), dir.join("ready")).unwrap();
    std::future::pending::<()>().await;
}

/// Every process whose process group is `pgid` (the instance and whatever it started).
fn group(pgid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Field 5 (pgrp), counted after the command name's last ')'; zombies are gone.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[0] != "Z" && f[2] == pgid.to_string() {
            found.push(format!("{name}: {}", f[0]));
        }
    }
    found
}

/// Runs the helper until its instances are ready, SIGKILLs it, and returns the ledger's
/// records (every one still alive: the crash took no instance with it).
async fn crash_helper(kit: &Kit, wrapped: bool) -> Vec<cutover_supervisor::InstanceRecord> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["helper_supervisor", "--exact", "--ignored", "--nocapture"])
        .env(HELPER_DIR, kit.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if wrapped {
        cmd.env(HELPER_WRAPPED, "1");
    }
    let mut helper = cmd.spawn().unwrap();
    let ready = kit.path("ready");
    poll_until("the helper's instances to be ready", || ready.exists()).await;

    helper.kill().unwrap(); // SIGKILL: no destructor, no kill_on_drop
    helper.wait().unwrap();
    let records = ledger(kit.dir.path()).load().unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let survey = Survey::of(records.clone());
    assert_eq!(
        survey.alive, records,
        "every instance outlived its supervisor"
    );
    for r in &records {
        let members = group(r.pid);
        // The python server, plus the shell when wrapped.
        assert_eq!(members.len(), 1 + usize::from(wrapped), "{members:?}");
        assert_eq!(
            common::http_status(([127, 0, 0, 1], r.port).into(), "/ready").await,
            Some(200),
            "{} still serves after the crash",
            r.id()
        );
    }
    records
}

async fn readopt_then_stop(wrapped: bool) {
    let kit = Kit::new();
    let app = app_spec(&kit, wrapped);
    let records = crash_helper(&kit, wrapped).await;

    // The restarted cutover: the same release is re-adopted, nothing is spawned.
    let (sup, mut rx) = Supervisor::with_ledger(
        app.clone(),
        kit.logs(),
        ledger(kit.dir.path()),
        Survey::of(ledger(kit.dir.path()).load().unwrap()).alive,
    );
    // Both pass their readiness probe now: re-adopted `Ready`, back in rotation at once.
    assert_eq!(sup.probe_adoptable().await, 2);
    sup.start(release(kit.dir.path(), &app)).unwrap();
    assert!(sup.fleet()["v1"].all_ready(), "{:?}", sup.fleet());
    let v = common::wait_v1(&mut rx, "the re-adopted instances to be ready", |v| {
        v.all_ready()
    })
    .await;
    for (i, r) in v.instances.iter().zip(&records) {
        assert_eq!(i.pid, Some(r.pid), "same process");
        assert_eq!(i.addr.port(), r.port, "same port");
        assert!(i.adopted, "{i:?}");
        assert_eq!((i.starts, i.state), (0, InstanceState::Ready), "{i:?}");
    }
    assert!(sup.stop_unclaimed().is_empty());

    // A deliberate stop ends every process of each group: no orphaned server.
    kit.finish(&sup).await;
    for r in &records {
        let left = group(r.pid);
        assert!(left.is_empty(), "left in {}'s group: {left:?}", r.id());
    }
    assert!(ledger(kit.dir.path()).load().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outlive_a_killed_cutover_and_are_readopted() {
    readopt_then_stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_script_without_exec_leaves_no_orphan_after_a_crash_and_a_stop() {
    readopt_then_stop(true).await;
}

/// An instance that died while cutover was down is replaced; one whose release is no longer
/// wanted is stopped, whole group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_replaced_and_an_unwanted_one_stopped() {
    let kit = Kit::new();
    let app = app_spec(&kit, true);
    let records = crash_helper(&kit, true).await;
    // v1-1's server dies while cutover is down (the shell reports it and exits too).
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(records[1].pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    poll_until("v1-1's group to be gone", || {
        group(records[1].pid).is_empty()
    })
    .await;
    let survey = Survey::of(ledger(kit.dir.path()).load().unwrap());
    assert_eq!(survey.alive, vec![records[0].clone()]);
    assert_eq!(survey.dead, vec![records[1].clone()]);

    let (sup, mut rx) = Supervisor::with_ledger(
        app.clone(),
        kit.logs(),
        ledger(kit.dir.path()),
        survey.alive,
    );
    sup.start(release(kit.dir.path(), &app)).unwrap();
    let v = common::wait_v1(&mut rx, "v1 ready", |v| v.all_ready()).await;
    assert_eq!(v.instances[0].pid, Some(records[0].pid));
    assert!(v.instances[0].adopted);
    assert_ne!(v.instances[1].pid, Some(records[1].pid));
    assert_eq!((v.instances[1].starts, v.instances[1].adopted), (1, false));
    kit.finish(&sup).await;

    // Nothing claims a survivor: it is stopped.
    let kit = Kit::new();
    let app = app_spec(&kit, true);
    let records = crash_helper(&kit, true).await;
    let (sup, _rx) = Supervisor::with_ledger(
        app,
        kit.logs(),
        ledger(kit.dir.path()),
        Survey::of(records.clone()).alive,
    );
    let mut stopped = sup.stop_unclaimed();
    stopped.sort();
    assert_eq!(stopped, vec!["v1-0".to_string(), "v1-1".to_string()]);
    for r in &records {
        poll_until("the unwanted group to be gone", || group(r.pid).is_empty()).await;
    }
    kit.finish(&sup).await;
}
