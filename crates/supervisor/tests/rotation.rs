//! Instance logs rotated by size (`app.log_max_size`, `app.log_keep`): a running instance that
//! keeps writing fills its log, which rotates to `v1-0.1.log`, `v1-0.2.log` and no further,
//! while the instance runs on undisturbed (it appends to the file itself, which cutover copies
//! and truncates) and its output keeps arriving in the current file.

mod common;

use common::{Kit, DEADLINE};
use cutover_supervisor::Supervisor;

/// The kit's app, plus a 1000-byte line on stdout at every readiness probe.
fn chatty() -> String {
    common::APP.replace(
        "        if self.path == \"/ready\":\n",
        "        if self.path == \"/ready\":\n            print(\"x\" * 999, flush=True)\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_instance_log_rotates_and_keeps_n_files() {
    let kit = Kit::new();
    let app_text = chatty();
    assert_ne!(app_text, common::APP, "the probe handler was found");
    kit.write_app(&app_text);
    let mut app = kit.app(&[]);
    app.log_max_size = 4096;
    app.log_keep = 2;
    app.readiness.interval = cutover_core::Dur::from_millis(10);
    let release = kit.release("v1", &app);
    let (sup, _rx) = Supervisor::new(app, kit.logs());
    sup.start(release).unwrap();
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    let pid = sup.fleet()["v1"].instances[0].pid;

    let logs = kit.logs();
    let (current, first, second, third) = (
        logs.join("v1-0.log"),
        logs.join("v1-0.1.log"),
        logs.join("v1-0.2.log"),
        logs.join("v1-0.3.log"),
    );
    // Two rotations past the point where .2 exists: .2 has been replaced at least once.
    let mut seen_second = Vec::new();
    cutover_testkit::eventually(DEADLINE, "v1-0.2.log replaced by a newer one", || {
        let second = second.clone();
        let seen = std::fs::read(&second).ok();
        if let Some(s) = &seen {
            if !seen_second.is_empty() && seen_second.last() != Some(s) {
                return std::future::ready(Ok(()));
            }
            if seen_second.is_empty() {
                seen_second.push(s.clone());
            }
        }
        std::future::ready(Err(format!(
            "{:?}",
            std::fs::read_dir(&logs).map(|d| d.count())
        )))
    })
    .await;
    assert!(!third.exists(), "log_keep = 2 keeps two rotated files");
    for p in [&first, &second] {
        let len = std::fs::metadata(p).unwrap().len();
        // Rotated once it passed the size (checked from outside, so by at most what the
        // instance wrote in one check).
        assert!(len > 4096, "{} is {len} bytes", p.display());
    }
    // The instance ran on: same process, never restarted; its output still arrives.
    let i = &sup.fleet()["v1"].instances[0];
    assert_eq!((i.pid, i.starts, i.restarts), (pid, 1, 0));
    let before = std::fs::metadata(&current).map(|m| m.len()).unwrap_or(0);
    let first_before = std::fs::read(&first).unwrap();
    cutover_testkit::eventually(DEADLINE, "more output after the rotations", || {
        let grew = std::fs::metadata(&current).map(|m| m.len()).unwrap_or(0) != before
            || std::fs::read(&first).unwrap_or_default() != first_before;
        std::future::ready(if grew { Ok(()) } else { Err("no new output") })
    })
    .await;
    kit.finish(&sup).await;
}
