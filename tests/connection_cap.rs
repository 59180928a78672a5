//! `MAX_CONNECTIONS` end to end over loopback: the real server with a cap of 8 holds 8 idle
//! TCP connections, refuses the 9th with a bare 503 and closes it, still serves the 8 it
//! holds, and counts the refusal in `/metrics`; once the idle connections go, a whole call runs.
//! The open-connection count is released on every way a connection ends (the client closes,
//! a bad request, the header timeout, a media stream upgraded from it ends).

mod support;

use std::time::Duration;

use futures_util::SinkExt as _;
use handset_sim::run_call;
use support::{
    TestServer, after_silence, read_raw, send, speech, start_message, status_of, stream_sid,
    stream_target, ws_connect,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long anything here may take before the test fails (never reached when it passes).
const LIMIT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`LIMIT`]) until the server counts `n` open connections; returns the
/// count it last saw.
async fn open_connections_reach(server: &TestServer, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let open = server.state.metrics.open_connections();
        if open == n || tokio::time::Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Reads until the server closes the connection; true on a clean end of stream or a reset,
/// false if bytes arrive or nothing happens within [`LIMIT`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(LIMIT, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_connection_gets_503_and_is_counted_and_calls_still_work() {
    // A long header timeout: the idle connections must stay open for the whole test.
    let server =
        TestServer::start(&[("MAX_CONNECTIONS", "8"), ("HEADER_READ_TIMEOUT", "300")]).await;
    assert_eq!(server.state.config.max_connections, 8);

    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    assert_eq!(open_connections_reach(&server, 8).await, 8);

    // The 9th is accepted, answered 503 and closed, whatever it sends afterwards.
    let mut ninth = TcpStream::connect(server.addr).await.unwrap();
    let raw = read_raw(&mut ninth, LIMIT).await;
    assert_eq!(status_of(&raw), 503, "{raw:?}");
    let head = raw.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{raw:?}");
    assert!(head.contains("\r\ncontent-length: 0\r\n"), "{raw:?}");
    assert!(head.contains("\r\nx-handset-instance: "), "{raw:?}");
    assert!(
        closed_by_server(&mut ninth).await,
        "the refused connection is closed"
    );
    assert_eq!(server.state.metrics.open_connections(), 8);

    // The connections it holds are served.
    idle[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let healthz = read_raw(&mut idle[0], LIMIT).await;
    assert_eq!(status_of(&healthz), 200, "{healthz:?}");

    // The flood ends: every slot comes back, and the scrape (itself a connection) shows the
    // refusal.
    drop(idle);
    assert_eq!(open_connections_reach(&server, 0).await, 0);
    let scrape = send(
        http::Request::get(server.url("/metrics"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(scrape.status, 200);
    assert_eq!(
        sample(&scrape.body, "handset_connections_refused_total"),
        Some(1.0),
        "{}",
        scrape.body
    );
    assert_eq!(
        sample(&scrape.body, "handset_open_connections"),
        Some(1.0),
        "only the scrape's own connection"
    );
    assert_eq!(
        sample(&scrape.body, "handset_accept_errors_total"),
        Some(0.0)
    );

    // A healthy call after the flood: webhook, media stream, echo, hang-up.
    let mut plan = server.plan(1);
    plan.audio = after_silence(Duration::from_millis(500), &speech());
    plan.duration = Duration::from_secs(3);
    let outcome = run_call(plan).await.expect("the call runs");
    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{:?}",
        outcome.close
    );
    assert!(!outcome.played.is_empty(), "the caller heard the server");
    assert_eq!(server.wait_idle(LIMIT).await, 0);
    assert_eq!(open_connections_reach(&server, 0).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_connection_ends_releases_its_slot() {
    let server = TestServer::start(&[("MAX_CONNECTIONS", "4"), ("HEADER_READ_TIMEOUT", "1")]).await;

    // The client closes an idle connection.
    drop(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(open_connections_reach(&server, 0).await, 0);

    // A request hyper cannot parse: 400, closed.
    let mut bad = TcpStream::connect(server.addr).await.unwrap();
    bad.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
    let raw = read_raw(&mut bad, LIMIT).await;
    assert_eq!(status_of(&raw), 400, "{raw:?}");
    drop(bad);
    assert_eq!(open_connections_reach(&server, 0).await, 0);

    // Silence past HEADER_READ_TIMEOUT (1 s): the server closes it.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(open_connections_reach(&server, 1).await, 1);
    assert!(
        closed_by_server(&mut silent).await,
        "an idle connection is cut"
    );
    assert_eq!(open_connections_reach(&server, 0).await, 0);
    // A request head started but never finished: cut as well.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert!(
        closed_by_server(&mut slow).await,
        "a slow request head is cut"
    );
    assert_eq!(open_connections_reach(&server, 0).await, 0);

    // A media stream counts as long as its socket is open, after hyper has handed it over:
    // once the call has started, hyper's part of the connection is over.
    let target = stream_target(&server, 1).await;
    assert_eq!(
        open_connections_reach(&server, 0).await,
        0,
        "the webhook's connection closed"
    );
    let mut ws = ws_connect(&server, TcpStream::connect(server.addr).await.unwrap()).await;
    ws.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .unwrap();
    ws.send(start_message(1, &target)).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while server.state.active_calls.count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state.active_calls.count(), 1, "the call started");
    assert_eq!(
        server.state.metrics.open_connections(),
        1,
        "the media stream is counted"
    );
    let stop = format!(
        r#"{{"event":"stop","sequenceNumber":"2","streamSid":"{}","stop":{{}}}}"#,
        stream_sid(1)
    );
    ws.send(Message::text(stop)).await.unwrap();
    drop(ws);
    assert_eq!(server.wait_idle(LIMIT).await, 0);
    assert_eq!(open_connections_reach(&server, 0).await, 0);
    server.stop().await;
}

/// The health listener (`HEALTH_PORT`) answers probes while the main port is held at its cap,
/// and only probes: a webhook sent to it is 404, so it is no way around `MAX_CONNECTIONS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_answers_probes_while_the_main_port_is_at_its_cap() {
    let server =
        TestServer::start(&[("MAX_CONNECTIONS", "8"), ("HEADER_READ_TIMEOUT", "300")]).await;
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap();
    tokio::spawn(handset_shell::server::serve_health(
        health,
        server.state.clone(),
    ));
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    assert_eq!(open_connections_reach(&server, 8).await, 8);
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(status_of(&read_raw(&mut refused, LIMIT).await), 503);

    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {health_addr}\r\nConnection: close\r\n\r\n")
    };
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/webhook/incoming_call", 404),
        ("/ws/twilio-media", 404),
    ] {
        let raw = support::raw_exchange(health_addr, get(path).as_bytes(), LIMIT).await;
        assert_eq!(status_of(&raw), status, "{path}: {raw:?}");
    }
    // The probes were not counted against the main port's cap.
    assert_eq!(server.state.metrics.open_connections(), 8);
    drop(idle);
    server.stop().await;
}
