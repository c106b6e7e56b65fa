//! The admin API off loopback (issue 14 item 4): a non-loopback `admin.listen` needs
//! `[admin.tls]` or `allow_plaintext_remote = true`; with `[admin.tls]` the API speaks https,
//! to curl (a client we did not write) and to the `cutover` CLI.

mod common;

use common::Harness;
use std::path::Path;
use std::process::Command;

fn cutover(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a self-signed certificate for `127.0.0.1` and `localhost` as `<name>-cert.pem` and
/// `<name>-key.pem`.
fn write_cert(dir: &Path, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

/// `cutover validate` refuses a remote admin address without TLS, naming the field and the
/// fixes; accepts it with `[admin.tls]` or with the explicit plaintext opt-in.
#[test]
fn a_remote_admin_listener_needs_tls_or_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    let base = common::config().admin_listen("0.0.0.0:0");
    std::fs::write(&cfg, base.to_toml()).unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 64, "{err}");
    for part in [
        "admin.listen",
        "0.0.0.0:0",
        "[admin.tls]",
        "allow_plaintext_remote",
        "127.0.0.1",
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }

    std::fs::write(
        &cfg,
        base.clone()
            .merge("[admin]\nallow_plaintext_remote = true\n")
            .to_toml(),
    )
    .unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");

    write_cert(dir.path(), "admin");
    std::fs::write(
        &cfg,
        base.merge("[admin.tls]\ncert = \"admin-cert.pem\"\nkey = \"admin-key.pem\"\n")
            .to_toml(),
    )
    .unwrap();
    let (code, _, err) = cutover(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
}

/// With `[admin.tls]` the admin API answers curl over https (verified with `--cacert`) and
/// not plain HTTP; the CLI speaks https with the config's certificate as its CA, and refuses a
/// server its `--admin-ca` does not vouch for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_tls_answers_curl_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "admin");
    write_cert(dir.path(), "other");
    let config =
        common::config().merge("[admin.tls]\ncert = \"admin-cert.pem\"\nkey = \"admin-key.pem\"\n");
    let h = Harness::start_in(dir, config).await;
    let addr = h.running().admin_addr;
    let token = h.running().token.clone();
    let dir = h.dir.path().to_path_buf();
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl").args(&args).output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let ca = dir.join("admin-cert.pem").display().to_string();
    let (code, out, err) = curl(vec![
        "-sS".into(),
        "--fail".into(),
        "--cacert".into(),
        ca.clone(),
        "-H".into(),
        format!("authorization: Bearer {token}"),
        format!("https://{addr}/v1/status"),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["service"], "e2e", "{out}");
    // Verified, not merely encrypted: another certificate as the CA fails the handshake.
    let (code, _, _) = curl(vec![
        "-sS".into(),
        "--cacert".into(),
        dir.join("other-cert.pem").display().to_string(),
        format!("https://{addr}/healthz"),
    ])
    .await
    .unwrap();
    assert_eq!(code, 60, "curl: peer certificate cannot be authenticated");
    // Plain HTTP gets no answer from the TLS listener.
    let (code, out, _) = curl(vec![
        "-sS".into(),
        "--max-time".into(),
        "5".into(),
        format!("http://{addr}/healthz"),
    ])
    .await
    .unwrap();
    assert_ne!(code, 0, "plain HTTP was answered: {out}");

    // The CLI, with a config that names the address the runtime listens on.
    let cli_cfg = dir.join("cli.toml");
    std::fs::write(
        &cli_cfg,
        common::ConfigBuilder::parse(&h.text)
            .admin_listen(addr)
            .to_toml(),
    )
    .unwrap();
    let cli = |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cutover(&args, &dir)
        })
    };
    let c = cli_cfg.display().to_string();
    let (code, out, err) = cli(vec![
        "-c".into(),
        c.clone(),
        "status".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"e2e\""), "{out}");
    let (code, _, err) = cli(vec![
        "-c".into(),
        c,
        "--admin-ca".into(),
        dir.join("other-cert.pem").display().to_string(),
        "status".into(),
    ])
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("TLS") && err.contains("--admin-ca"), "{err}");
    h.shutdown().await;
}
