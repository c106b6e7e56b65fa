//! Spawns the real `demo-app` binary and checks it over real HTTP and WebSocket connections.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(20);

struct App {
    child: Child,
    addr: SocketAddr,
    // Kept open so the app never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl App {
    /// Starts the binary on an OS-chosen port and waits for its startup line.
    async fn spawn(args: &[&str]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-app"))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn demo-app");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
            .await
            .expect("startup line within deadline")
            .expect("read stdout");
        let addr = line
            .trim()
            .rsplit_once(" listening on ")
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .1
            .parse()
            .expect("address in startup line");
        assert!(line.starts_with("demo-app "), "{line:?}");
        App {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("process exits within deadline")
            .expect("wait")
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, client.request(req))
            .await
            .expect("response within deadline")
            .expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.request(Method::GET, path, "").await
    }

    async fn metric(&self, line_prefix: &str) -> Option<f64> {
        let (_, _, body) = self.get("/metrics").await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .map(|v| v.trim().parse().unwrap())
    }
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).expect("json body")
}

#[tokio::test]
async fn endpoints_answer() {
    let app = App::spawn(&["--version", "v7"]).await;

    let (status, headers, body) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-app-version"], "v7");
    let v = json(&body);
    assert_eq!(v["version"], "v7");
    assert_eq!(v["instance"], app.child.id().unwrap().to_string());

    let (status, headers, body) = app.get("/api/orders/42").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-app-version"], "v7");
    assert_eq!(json(&body)["version"], "v7");

    let (status, _, body) = app.get("/ready").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready"[..]));
    let (status, _, _) = app.get("/live").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = app.request(Method::POST, "/echo", "hello, echo").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello, echo"[..]));

    let (status, headers, body) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("# TYPE demo_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE demo_in_flight gauge"), "{text}");
    // `/`, `/api`, `/ready`, `/live`, `/echo` so far.
    assert_eq!(
        app.metric("demo_requests_total{version=\"v7\",code=\"200\"} ")
            .await,
        Some(6.0),
        "{text}"
    );

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .expect("ws connect");
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["version"], "v7");
    ws.send(Message::text("ping 1")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.to_text().unwrap(), "ping 1");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().to_vec(), vec![1u8, 2, 3]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn body_size_pads_root() {
    let app = App::spawn(&["--body-size", "4096"]).await;
    let (status, _, body) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 4096);
    assert_eq!(json(&body)["version"], "v1");
}

#[tokio::test]
async fn error_rate_one_answers_500() {
    let app = App::spawn(&["--error-rate", "1.0", "--version", "bad"]).await;
    for _ in 0..5 {
        let (status, headers, _) = app.get("/").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["x-app-version"], "bad");
    }
    // Probes are not affected.
    assert_eq!(app.get("/ready").await.0, StatusCode::OK);
    assert_eq!(
        app.metric("demo_requests_total{version=\"bad\",code=\"500\"} ")
            .await,
        Some(5.0)
    );
}

#[tokio::test]
async fn latency_is_injected() {
    let app = App::spawn(&["--latency", "200ms", "--latency-jitter", "50ms"]).await;
    for path in ["/", "/api/x"] {
        let t = Instant::now();
        let (status, _, _) = app.get(path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{path}: {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test]
async fn ready_delay_is_honoured() {
    let delay = Duration::from_secs(2);
    let spawned = Instant::now();
    let app = App::spawn(&["--ready-delay", "2s"]).await;
    let (status, _, _) = app.get("/ready").await;
    if spawned.elapsed() < delay {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Liveness is independent of readiness.
    assert_eq!(app.get("/live").await.0, StatusCode::OK);
    cutover_testkit::eventually(DEADLINE, "ready", || async {
        let (status, _, _) = app.get("/ready").await;
        if status == StatusCode::OK {
            return Ok(());
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        Err(status)
    })
    .await;
    assert!(spawned.elapsed() >= delay);
}

#[tokio::test]
async fn fail_after_exits_non_zero() {
    let mut app = App::spawn(&["--fail-after", "300ms"]).await;
    let status = app.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_then_exits_zero() {
    let mut app = App::spawn(&["--latency", "1500ms"]).await;
    let addr = app.addr;
    let slow = tokio::spawn(async move {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .request(
                Request::get(format!("http://{addr}/api/slow"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await?;
        let status = resp.status();
        let version = resp.headers()["x-app-version"].clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Ok::<_, hyper_util::client::legacy::Error>((status, version, body))
    });
    // Wait until the slow request is in flight (the scrape itself counts as one).
    cutover_testkit::eventually(DEADLINE, "the slow request in flight", || async {
        let n = app.metric("demo_in_flight ").await.unwrap();
        if n >= 2.0 {
            Ok(())
        } else {
            Err(format!("demo_in_flight {n}"))
        }
    })
    .await;
    kill(app.pid(), Signal::SIGTERM).unwrap();
    let slow = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    let (status, version, body) = match slow {
        Ok(answer) => answer,
        // How the process ended tells a kill by the signal itself from a failed drain.
        Err(e) => panic!("slow request: {e:?}; demo-app {:?}", app.wait_exit().await),
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, "v1");
    assert_eq!(json(&body)["version"], "v1");
    let exit = app.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

/// The startup line promises that SIGTERM drains rather than kills: a supervisor may signal
/// the process the moment it has read that line, before any request has been served.
#[tokio::test]
async fn sigterm_right_after_startup_line_exits_zero() {
    let mut app = App::spawn(&[]).await;
    kill(app.pid(), Signal::SIGTERM).unwrap();
    let exit = app.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1012() {
    let mut app = App::spawn(&["--version", "v2"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .expect("ws connect");
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.to_text().unwrap().contains("v2"));
    kill(app.pid(), Signal::SIGINT).unwrap();
    let msg = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match msg {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1012),
        other => panic!("expected close 1012, got {other:?}"),
    }
    let exit = app.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[tokio::test]
async fn bad_flags_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo-app"))
        .args(["--port", "0", "--error-rate", "2"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error-rate"), "{err}");
}
