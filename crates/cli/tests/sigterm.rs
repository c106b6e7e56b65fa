//! SIGTERM serves what already arrived: `cutover run` (the real binary, a real demo-app
//! instance) is sent SIGTERM while clients hold idle keep-alive connections; requests they send
//! after the listener closed are still answered, with `connection: close`, and each connection
//! then ends cleanly. (Issue 12 measured 48 of 48 such requests dropped.)

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response read off a raw connection: status, headers (lower-cased names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_response(rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<Raw, String> {
    let mut line = String::new();
    if rd.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
        return Err("connection closed before a response".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        rd.read_line(&mut h).await.map_err(|e| e.to_string())?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("no content-length")?;
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(Raw { status, headers })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_requests_arriving_on_idle_keep_alive_connections() {
    const CONNS: usize = 48;
    let _g = common::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    std::fs::write(&cfg, common::config().log_level("info").to_toml()).unwrap();
    let log_path = dir.path().join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let running = common::eventually(Duration::from_secs(30), "cutover running", || async {
        let l = log();
        if l.contains("cutover is running") {
            Ok(l)
        } else {
            Err(l)
        }
    })
    .await;
    let field = |name: &str| -> SocketAddr {
        running
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {running}"))
    };
    let (proxy, admin) = (field("proxy_addr"), field("admin_addr"));
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let client = cutover_admin::AdminClient::new(admin, token.trim().to_string());
    client
        .post("/v1/deploy", &serde_json::json!({ "version": "v1" }))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(30), "v1 stable", || async {
        let s = client.get("/v1/status").await.map_err(|e| e.to_string())?;
        if s["rollout"]["phase"]["phase"] == "done" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    let mut conns = Vec::new();
    for i in 0..CONNS {
        let (rd, mut wr) = TcpStream::connect(proxy).await.unwrap().into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(format!("GET /api/a{i} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let first = read_response(&mut rd).await.unwrap();
        assert_eq!(first.status, 200, "before SIGTERM");
        assert_eq!(
            first.header("connection"),
            None,
            "keep-alive before SIGTERM"
        );
        conns.push((rd, wr));
    }

    assert!(Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Shutdown has begun once the listener refuses new connections.
    common::eventually(Duration::from_secs(10), "the listener closed", || async {
        match TcpStream::connect(proxy).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Not a wait for a condition: this places the requests inside the proxy's second of grace,
    // after every connection has seen the shutdown (without the grace, they are closed by then;
    // sent at once, some would race the close and pass either way).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every request written first, then every answer read.
    let mut sent = Vec::new();
    for (i, (_, wr)) in conns.iter_mut().enumerate() {
        sent.push(
            wr.write_all(format!("GET /api/b{i} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes())
                .await,
        );
    }
    let mut lost = Vec::new();
    for (i, ((mut rd, wr), sent)) in conns.into_iter().zip(sent).enumerate() {
        let _keep_open = wr;
        let answer = match sent {
            Ok(()) => read_response(&mut rd).await,
            Err(e) => Err(format!("write failed: {e}")),
        };
        match answer {
            Ok(r) if r.status == 200 && r.header("connection") == Some("close") => {
                let mut rest = Vec::new();
                let end = rd.read_to_end(&mut rest).await;
                if !matches!(end, Ok(0)) {
                    lost.push(format!(
                        "{i}: not a clean close after the response: {end:?}"
                    ));
                }
            }
            Ok(r) => lost.push(format!(
                "{i}: {} connection={:?}",
                r.status,
                r.header("connection")
            )),
            Err(e) => lost.push(format!("{i}: {e}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {CONNS} requests on open connections after SIGTERM failed: {lost:?}\n{}",
        lost.len(),
        log()
    );
    let status = tokio::task::spawn_blocking(move || run.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", log());
}
