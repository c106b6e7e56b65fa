//! Readiness flips to 503 as soon as shutdown begins (checked in-process, since a real
//! process stops accepting new connections at the same moment).

use std::sync::Arc;

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::Empty;
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn ready_is_503_once_shutting_down() {
    let cfg = demo_app::Config::parse_from(["demo-app", "--port", "0"]);
    let (state, _ws_done) = demo_app::AppState::new(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = demo_app::router(Arc::clone(&state));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}/ready").parse().unwrap();
    assert_eq!(
        client.get(uri.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    state.begin_shutdown();
    assert_eq!(
        client.get(uri).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.abort();
}
