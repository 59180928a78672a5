//! What the logs keep of a caller, end to end: a call whose caller presses keys (a PIN) logs
//! that keys were pressed but never which, and its phone numbers masked (`+1555***1111`)
//! unless `LOG_PII=full`.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Logs, TestServer, call_sid, open_call, read_media, stream_sid};

async fn call_with_keys(server: &TestServer, n: u32, keys: &str) {
    let mut ws = open_call(server, n).await;
    assert!(read_media(&mut ws, 3, Duration::from_secs(5)).await);
    for (i, key) in keys.chars().enumerate() {
        let dtmf = serde_json::json!({"event": "dtmf", "streamSid": stream_sid(n),
            "sequenceNumber": (10 + i).to_string(),
            "dtmf": {"track": "inbound_track", "digit": key.to_string()}});
        ws.send(Message::text(dtmf.to_string())).await.unwrap();
    }
    ws.send(Message::text(format!(
        r#"{{"event":"stop","sequenceNumber":"99","streamSid":"{}"}}"#,
        stream_sid(n)
    )))
    .await
    .unwrap();
    let _ = support::read_to_end(&mut ws, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_never_logged_and_numbers_are_masked_unless_asked_for() {
    let logs = Logs::capture();
    let masked = TestServer::start(&[]).await;
    call_with_keys(&masked, 1, "4921#").await;
    let keys = logs
        .wait_for("DTMF key", &call_sid(1), Duration::from_secs(5))
        .await;
    assert_eq!(keys.len(), 5, "one line per key: {keys:?}");
    for line in &keys {
        let text = line.to_string();
        assert!(!text.contains("digit"), "{text}");
    }
    let start = logs
        .wait_for("WS start", &call_sid(1), Duration::from_secs(5))
        .await;
    assert_eq!(start[0]["from"], "+1555***1111", "{start:?}");
    assert_eq!(start[0]["to"], "+1555***2222", "{start:?}");
    masked.stop().await;

    let full = TestServer::start(&[("LOG_PII", "full")]).await;
    call_with_keys(&full, 2, "1").await;
    let start = logs
        .wait_for("WS start", &call_sid(2), Duration::from_secs(5))
        .await;
    assert_eq!(start[0]["from"], "+15550001111", "{start:?}");
    full.stop().await;
}
