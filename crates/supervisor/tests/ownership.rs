//! The hand-over of `cutover upgrade` as the supervisor sees it ([`Ownership`]): while an
//! upgrade is under way the old supervisor neither restarts an instance nor rewrites the
//! ledger the new cutover reads; a failed upgrade gives the instances back (an instance that
//! died meanwhile is restarted then); a successful one ends the old supervisor's tasks
//! without touching a process.
//!
//! Real processes (the Python test app from `common`) and a real ledger file.

mod common;

use common::{poll_until, state, wait_v1, Kit};
use cutover_supervisor::{Fleet, InstanceState, Ledger, Ownership, Supervisor};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use tokio::sync::watch;

/// How long an absence is watched for: the test app restarts after `backoff_initial` (20 ms),
/// so a restart that should not happen would show up 50 times over in this window.
const QUIET: Duration = Duration::from_secs(1);

fn gone(pid: u32) -> bool {
    // Reaped by the supervisor (not even a zombie left).
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// One instance of the test app, ready and recorded in a real ledger file.
async fn started() -> (Kit, Supervisor, watch::Receiver<Fleet>, Ledger, u32) {
    let kit = Kit::new();
    let app = kit.app(&[]);
    let release = kit.release("v1", &app);
    let ledger = Ledger::new(kit.path("instances.json"));
    let (sup, mut rx) = Supervisor::with_ledger(app, kit.logs(), ledger.clone(), vec![]);
    sup.start(release).unwrap();
    let v = wait_v1(&mut rx, "ready", |v| state(v) == InstanceState::Ready).await;
    let pid = v.instances[0].pid.unwrap();
    poll_until("the instance in the ledger", || {
        ledger
            .load()
            .unwrap_or_default()
            .iter()
            .any(|r| r.pid == pid)
    })
    .await;
    (kit, sup, rx, ledger, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_nothing_is_restarted_nor_recorded_then_resumed_the_dead_instance_comes_back() {
    let (kit, sup, mut rx, ledger, pid) = started().await;
    let recorded = std::fs::read(kit.path("instances.json")).unwrap();

    sup.pause_ownership();
    assert_eq!(sup.ownership(), Ownership::Paused);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    poll_until("the killed instance reaped", || gone(pid)).await;
    tokio::time::sleep(QUIET).await;
    let v = sup.fleet()["v1"].clone();
    assert_eq!(
        (v.instances[0].starts, v.instances[0].restarts),
        (1, 0),
        "restarted while paused: {v:?}"
    );
    assert_eq!(
        std::fs::read(kit.path("instances.json")).unwrap(),
        recorded,
        "the ledger was rewritten while paused"
    );

    sup.resume_ownership();
    let v = wait_v1(&mut rx, "restarted after resume", |v| {
        v.instances[0].starts == 2 && state(v) == InstanceState::Ready
    })
    .await;
    let new_pid = v.instances[0].pid.unwrap();
    assert_ne!(new_pid, pid);
    poll_until("the restarted instance in the ledger", || {
        ledger
            .load()
            .unwrap_or_default()
            .iter()
            .any(|r| r.pid == new_pid)
    })
    .await;
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_the_processes_are_left_alone() {
    let (kit, sup, _rx, _ledger, pid) = started().await;

    sup.pause_ownership();
    sup.release_ownership();
    assert_eq!(sup.ownership(), Ownership::Released);
    // Released is final: a late resume (a failed upgrade's) does not take the processes back.
    sup.resume_ownership();
    assert_eq!(sup.ownership(), Ownership::Released);
    // The new owner's view: the process runs on, and when it dies this supervisor does not
    // restart it.
    tokio::time::sleep(QUIET).await;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "a released process was stopped"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    tokio::time::sleep(QUIET).await;
    let v = sup.fleet()["v1"].clone();
    assert_eq!(
        v.instances[0].starts, 1,
        "restarted after the release: {v:?}"
    );
    assert!(
        kit.processes().is_empty(),
        "a process was started after the release: {:?}",
        kit.processes()
    );
}
