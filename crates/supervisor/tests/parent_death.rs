//! Instances must not outlive cutover, even when it is SIGKILLed (no destructors run): the
//! kernel sends them SIGTERM (`PR_SET_PDEATHSIG`). The test re-runs this test binary as a
//! stand-in for cutover, kills it, and checks that its instance goes away.

mod common;

use common::{poll_until, Kit, DEADLINE};
use cutover_supervisor::{Release, Supervisor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const HELPER_DIR: &str = "CUTOVER_SUPERVISOR_TEST_HELPER_DIR";

/// The stand-in for cutover: runs one instance, reports its pid, then waits to be killed.
/// Does nothing unless started by `instances_die_with_cutover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for instances_die_with_cutover"]
async fn helper_supervisor() {
    let Some(dir) = std::env::var_os(HELPER_DIR).map(PathBuf::from) else {
        return;
    };
    let app = Kit::new().app(&[]);
    let release = Release::resolve("v1", &app, &dir, BTreeMap::new(), vec![]).unwrap();
    let (sup, _rx) = Supervisor::new(app, dir.join("logs"));
    sup.start(release).unwrap();
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    let pid = sup.fleet()["v1"].instances[0].pid.unwrap();
    std::fs::write(dir.join("pid.tmp"), pid.to_string()).unwrap();
    std::fs::rename(dir.join("pid.tmp"), dir.join("pid")).unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_die_with_cutover() {
    let kit = Kit::new();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["helper_supervisor", "--exact", "--ignored", "--nocapture"])
        .env(HELPER_DIR, kit.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = kit.path("pid");
    poll_until("the helper's instance", || pid_file.exists()).await;
    assert_eq!(kit.processes().len(), 1, "{:?}", kit.processes());

    helper.kill().unwrap(); // SIGKILL: no destructor, no kill_on_drop
    helper.wait().unwrap();
    poll_until("the orphaned instance to exit", || {
        kit.processes().is_empty()
    })
    .await;
}
