//! The supervisor with real child processes: the Python test app from `common`.

mod common;

use common::{http_status, poll_until, state, touch, wait_v1, Kit, DEADLINE};
use cutover_core::Dur;
use cutover_supervisor::{
    DrainOutcome, InFlight, InstanceState, StopExit, Supervisor, SupervisorError,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_instances_with_placeholders_and_per_instance_logs() {
    let kit = Kit::new();
    let mut app = kit.app(&["--tag", "{version}/{instance}"]);
    app.instances = 3;
    app.env
        .insert("GREETING".into(), "hi {version} {instance} {port}".into());
    let release = kit.release("v1", &app);
    let digest = release.digest.clone();
    let (sup, _rx) = Supervisor::new(app, kit.logs());
    sup.start(release).unwrap();
    sup.wait_ready("v1", DEADLINE).await.unwrap();

    let v = sup.fleet()["v1"].clone();
    assert_eq!(v.digest, digest);
    assert_eq!(v.instances.len(), 3);
    let ports: BTreeSet<_> = v.instances.iter().map(|i| i.addr.port()).collect();
    let pids: BTreeSet<_> = v.instances.iter().map(|i| i.pid.unwrap()).collect();
    assert_eq!(ports.len(), 3, "distinct ports");
    assert_eq!(pids.len(), 3, "distinct pids");
    for (n, i) in v.instances.iter().enumerate() {
        assert_eq!(i.id, format!("v1-{n}"));
        assert_eq!(i.index, n);
        assert!(i.addr.ip().is_loopback());
        assert_eq!(
            (i.state, i.starts, i.restarts),
            (InstanceState::Ready, 1, 0)
        );
        assert_eq!(http_status(i.addr, "/ready").await, Some(200));
        let port = i.addr.port();
        let log = kit.log(&i.id);
        assert!(log.contains(&format!("'--port', '{port}'")), "{log}");
        assert!(log.contains(&format!("'--tag', 'v1/{n}'")), "{log}");
        assert!(log.contains(&format!("GREETING=hi v1 {n} {port}")), "{log}");
        assert!(log.contains("hello on stderr"), "{log}");
    }
    assert!(serde_json::to_string(&v).unwrap().contains("\"ready\""));

    let err = sup.start(kit.release("v1", &kit.app(&[]))).unwrap_err();
    assert!(matches!(err, SupervisorError::AlreadyRunning(_)), "{err}");
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_the_readiness_probe_passes() {
    let kit = Kit::new();
    let flag = kit.path("ready-flag");
    let (sup, mut rx) = kit.start(kit.app(&["--ready-file", flag.to_str().unwrap()]));

    // The app is up and has refused readiness several times: the instance must still be
    // Starting, at every fleet change observed on the way.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while kit.log("v1-0").matches("ready 503").count() < 3 {
        let s = state(&rx.borrow_and_update()["v1"]);
        assert_eq!(s, InstanceState::Starting);
        assert!(tokio::time::Instant::now() < deadline, "app never probed");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), rx.changed()).await;
    }
    assert_eq!(state(&sup.fleet()["v1"]), InstanceState::Starting);

    touch(&flag);
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_failure_takes_out_liveness_failure_restarts() {
    let kit = Kit::new();
    let unready = kit.path("unready");
    let live_fail = kit.path("live-fail");
    let (sup, mut rx) = kit.start(kit.app(&[
        "--unready-file",
        unready.to_str().unwrap(),
        "--live-fail-file",
        live_fail.to_str().unwrap(),
    ]));
    let first = wait_v1(&mut rx, "ready", |v| state(v) == InstanceState::Ready).await;
    let first = first.instances[0].clone();

    // Readiness fails: NotReady, same process.
    touch(&unready);
    let v = wait_v1(&mut rx, "not ready", |v| {
        state(v) == InstanceState::NotReady
    })
    .await;
    let i = &v.instances[0];
    assert_eq!((i.pid, i.starts, i.restarts), (first.pid, 1, 0));
    std::fs::remove_file(&unready).unwrap();
    let v = wait_v1(&mut rx, "ready again", |v| state(v) == InstanceState::Ready).await;
    assert_eq!((v.instances[0].pid, v.instances[0].starts), (first.pid, 1));

    // Liveness fails: a new process on the same port (the app removes the file at startup,
    // so the new one is healthy).
    touch(&live_fail);
    let v = wait_v1(&mut rx, "restarted and ready", |v| {
        v.instances[0].starts == 2 && state(v) == InstanceState::Ready
    })
    .await;
    let i = &v.instances[0];
    assert_eq!(i.addr, first.addr, "same port");
    assert_ne!(i.pid, first.pid);
    assert_eq!(i.restarts, 1);
    let last = i.last_exit.as_deref().unwrap();
    assert!(last.contains("liveness failed 3 times"), "{last}");
    assert!(v.crash_loop.is_none());
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exited_process_is_restarted_on_the_same_port() {
    let kit = Kit::new();
    let (sup, mut rx) = kit.start(kit.app(&[]));
    let v = wait_v1(&mut rx, "ready", |v| state(v) == InstanceState::Ready).await;
    let first = v.instances[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let v = wait_v1(&mut rx, "restarted", |v| {
        v.instances[0].starts == 2 && state(v) == InstanceState::Ready
    })
    .await;
    let i = &v.instances[0];
    assert_eq!((i.addr, i.restarts), (first.addr, 1));
    assert_eq!(i.last_exit.as_deref(), Some("killed by SIGKILL"));
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_is_reported_and_restarts_go_on() {
    let kit = Kit::new();
    let mut app = kit.app(&["--exit-now"]);
    app.restart.backoff_initial = Dur::from_millis(10);
    app.restart.backoff_max = Dur::from_millis(40);
    let (sup, mut rx) = kit.start(app);

    let err = sup.wait_ready("v1", DEADLINE).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SupervisorError::CrashLoop { .. }), "{msg}");
    assert!(
        msg.contains("v1-0") && msg.contains("exited with code 3"),
        "{msg}"
    );

    let v = sup.fleet()["v1"].clone();
    let cl = v.crash_loop.clone().unwrap();
    assert_eq!(cl.instance, "v1-0");
    assert!(cl.restarts >= 3, "{cl:?}");
    assert_eq!(cl.last_exit.as_deref(), Some("exited with code 3"));
    assert!(v.instances[0].restarts >= 3);
    assert_ne!(state(&v), InstanceState::Ready);

    // It keeps trying (a stable version must).
    let starts = v.instances[0].starts;
    wait_v1(&mut rx, "more restarts", |v| {
        v.instances[0].starts > starts + 1
    })
    .await;
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_in_flight_before_signalling() {
    let kit = Kit::new();
    let (sup, mut rx) = kit.start(kit.app(&[]));
    let v = wait_v1(&mut rx, "ready", |v| state(v) == InstanceState::Ready).await;
    let addr = v.instances[0].addr;

    let busy = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let in_flight: InFlight = {
        let (busy, asked) = (busy.clone(), asked.clone());
        Arc::new(move |a| {
            assert_eq!(a, addr);
            asked.fetch_add(1, Ordering::SeqCst);
            usize::from(busy.load(Ordering::SeqCst))
        })
    };
    let stop = sup.stop("v1", in_flight);
    wait_v1(&mut rx, "draining", |v| state(v) == InstanceState::Draining).await;
    // Asked many times and still in flight: the process must still be serving.
    poll_until("drain polls", || asked.load(Ordering::SeqCst) >= 20).await;
    assert_eq!(http_status(addr, "/live").await, Some(200));
    assert_eq!(state(&sup.fleet()["v1"]), InstanceState::Draining);

    busy.store(false, Ordering::SeqCst);
    let report = stop.await;
    assert_eq!(report.version, "v1");
    assert_eq!(report.instances.len(), 1);
    let r = &report.instances[0];
    assert!(matches!(r.drain, DrainOutcome::Drained { .. }), "{r:?}");
    assert_eq!(
        r.exit,
        StopExit::Exited {
            status: "killed by SIGTERM".into()
        }
    );
    assert!(!sup.fleet().contains_key("v1"), "removed after stop");
    assert!(kit.processes().is_empty());
    // The name is free again.
    sup.start(kit.release("v1", &kit.app(&[]))).unwrap();
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_then_sigkill_after_grace_for_an_app_ignoring_sigterm() {
    let kit = Kit::new();
    let mut app = kit.app(&["--ignore-term"]);
    app.stop.drain_timeout = Dur::from_millis(100);
    app.stop.grace = Dur::from_millis(300);
    let (sup, _rx) = kit.start(app);
    sup.wait_ready("v1", DEADLINE).await.unwrap();

    let report = sup.stop("v1", Arc::new(|_| 2)).await;
    let r = &report.instances[0];
    assert_eq!(r.drain, DrainOutcome::TimedOut { in_flight: 2 });
    assert_eq!(
        r.exit,
        StopExit::Killed {
            status: "killed by SIGKILL".into()
        }
    );
    assert!(kit.processes().is_empty());
    kit.finish(&sup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_version() {
    let kit = Kit::new();
    let (sup, _rx) = Supervisor::new(kit.app(&[]), kit.logs());
    let err = sup.wait_ready("nope", DEADLINE).await.unwrap_err();
    assert!(matches!(err, SupervisorError::UnknownVersion(_)), "{err}");
    assert!(sup.stop("nope", Arc::new(|_| 0)).await.instances.is_empty());
}

/// The drain protocol: when an instance leaves rotation it is asked to drain (a signal, or a
/// `POST` to a path) — an app that knows its protocol then closes its own long-lived
/// connections, which is what the in-flight count sees here (it drops once the app drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_is_asked_to_drain_by_signal_or_post() {
    use cutover_core::spec::StopSignal;
    for by_signal in [true, false] {
        let kit = Kit::new();
        let flag = kit.path("drained");
        let mut app = kit.app(&["--drain-file", flag.to_str().unwrap()]);
        if by_signal {
            app.stop.drain_signal = Some(StopSignal::Usr1);
        } else {
            app.stop.drain_path = Some("/drain".into());
        }
        let (sup, _rx) = kit.start(app);
        sup.wait_ready("v1", DEADLINE).await.unwrap();
        let f = flag.clone();
        // "Connections" stay open until the app was told to drain.
        let in_flight: InFlight = Arc::new(move |_| usize::from(!f.exists()));
        let report = sup.stop("v1", in_flight).await;
        let r = &report.instances[0];
        assert!(
            matches!(r.drain, DrainOutcome::Drained { .. }),
            "by_signal={by_signal}: {r:?}"
        );
        assert!(flag.exists());
        assert!(kit.processes().is_empty());
        kit.finish(&sup).await;
    }
}

/// What is still open when the drain window ends is handed to the closer (the proxy's 1012
/// close of WebSockets) before the stop signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closer_runs_when_the_drain_window_ends_with_connections_open() {
    let kit = Kit::new();
    let mut app = kit.app(&[]);
    app.stop.drain_timeout = Dur::from_millis(100);
    let (sup, _rx) = kit.start(app);
    sup.wait_ready("v1", DEADLINE).await.unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let in_flight: InFlight = {
        let closed = closed.clone();
        Arc::new(move |_| usize::from(!closed.load(Ordering::SeqCst)))
    };
    let closer: cutover_supervisor::Closer = {
        let closed = closed.clone();
        Arc::new(move |_| {
            let closed = closed.clone();
            Box::pin(async move { closed.store(true, Ordering::SeqCst) })
        })
    };
    let report = sup.stop_with("v1", in_flight, Some(closer)).await;
    let r = &report.instances[0];
    assert!(closed.load(Ordering::SeqCst));
    assert!(matches!(r.drain, DrainOutcome::Drained { .. }), "{r:?}");
    assert!(matches!(r.exit, StopExit::Exited { .. }), "{r:?}");
    kit.finish(&sup).await;
}

/// The facts a failure message quotes: each instance's last readiness probe result (the
/// status it answered while not ready, then `passed`), the log path and its tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_readiness_probe_and_the_log_tail_are_kept() {
    let kit = Kit::new();
    let ready = kit.path("ready");
    let app = kit.app(&["--ready-file", ready.to_str().unwrap()]);
    let (sup, mut rx) = kit.start(app);
    // Before the app listens the probe cannot connect; then it answers 503 (no ready file).
    let v = wait_v1(&mut rx, "a failed readiness probe", |v| {
        v.instances[0].last_probe.is_some()
    })
    .await;
    let first = v.instances[0].last_probe.clone().unwrap();
    let refused = format!(
        "GET /ready → connect {}: Connection refused",
        v.instances[0].addr
    );
    assert!(
        first.starts_with(&refused) || first == "GET /ready → answered 503 Service Unavailable",
        "{first}"
    );
    wait_v1(&mut rx, "a 503 from /ready", |v| {
        v.instances[0].last_probe.as_deref()
            == Some("GET /ready → answered 503 Service Unavailable")
    })
    .await;
    let err = sup
        .wait_ready("v1", std::time::Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("last readiness probe: GET /ready → answered 503"),
        "{err}"
    );
    let log = sup.log_path("v1-0");
    assert_eq!(log, kit.logs().join("v1-0.log"));
    // stdout and stderr both land in the log; the tail is its last lines (the app prints
    // "ready 503" on each refused probe).
    poll_until("the app's output in its log", || {
        let all = cutover_supervisor::logs::tail(&log, 10_000).unwrap();
        all.iter().any(|l| l == "hello on stderr")
            && cutover_supervisor::logs::tail(&log, 2).unwrap() == ["ready 503", "ready 503"]
    })
    .await;
    touch(&ready);
    let v = wait_v1(&mut rx, "ready", |v| state(v) == InstanceState::Ready).await;
    assert_eq!(
        v.instances[0].last_probe.as_deref(),
        Some("GET /ready → passed")
    );
    kit.finish(&sup).await;
}
