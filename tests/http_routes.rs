//! End-to-end: every route of the HTTP shell over real TCP, on servers started bare: signature
//! checks off and no `PUBLIC_URL` unless stated.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use support::{
    Options, TestServer, post_form, raw_exchange, send, status_of, twiml_attr, twiml_parameter,
};

const PUBLIC: &str = "https://voice.example.com";

fn call_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallSid", "CA00000000000000000000000000000001"),
        ("CallStatus", "ringing"),
        ("From", "+15550000001"),
        ("To", "+15550000002"),
    ]
}

#[tokio::test]
async fn incoming_call_answers_connect_stream_with_a_redeemable_token() {
    let server = TestServer::start_with(Options::bare(), &[("PUBLIC_URL", PUBLIC)]).await;
    let reply = post_form(&server, "/webhook/incoming_call", &call_params(), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let xml = &reply.body;
    assert!(
        xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect "#),
        "{xml}"
    );
    assert_eq!(
        twiml_attr(xml, "Connect", "action"),
        Some("https://voice.example.com/webhook/stream_ended")
    );
    assert_eq!(
        twiml_attr(xml, "Stream", "url"),
        Some("wss://voice.example.com/ws/twilio-media")
    );
    assert_eq!(
        twiml_attr(xml, "Stream", "statusCallback"),
        Some("https://voice.example.com/webhook/stream_status")
    );
    assert!(!twiml_attr(xml, "Stream", "url").unwrap().contains('?'));
    assert_eq!(
        twiml_parameter(xml, "callSid"),
        Some("CA00000000000000000000000000000001")
    );
    assert_eq!(twiml_parameter(xml, "from"), Some("+15550000001"));
    let token = twiml_parameter(xml, "streamToken").unwrap().to_owned();
    assert!(token.len() >= 22, "128-bit token, got {token:?}");

    let tokens = &server.state.tokens;
    assert!(tokens.redeem(&token, "CA_other").await.unwrap().is_err());
    let identity = tokens
        .redeem(&token, "CA00000000000000000000000000000001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(identity.to, "+15550000002");
    assert!(
        tokens
            .redeem(&token, "CA00000000000000000000000000000001")
            .await
            .unwrap()
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn incoming_call_by_get_reads_query_parameters() {
    let server = TestServer::start_with(Options::bare(), &[("PUBLIC_URL", PUBLIC)]).await;
    let sid = "CA00000000000000000000000000000009";
    let req = Request::get(server.url(&format!(
        "/webhook/incoming_call?CallSid={sid}&From=%2B1555"
    )))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(twiml_parameter(&reply.body, "callSid"), Some(sid));
    assert_eq!(twiml_parameter(&reply.body, "from"), Some("+1555"));
    server.stop().await;
}

#[tokio::test]
async fn incoming_call_without_call_sid_is_a_clear_400() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let reply = post_form(&server, "/webhook/incoming_call", &[("From", "+1")], &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("missing CallSid"), "{}", reply.body);
    server.stop().await;
}

#[tokio::test]
async fn greeting_is_escaped_and_spoken_before_connect_in_english_by_default() {
    let server = TestServer::start_with(
        Options::bare(),
        &[
            ("PUBLIC_URL", PUBLIC),
            ("GREETING_TEXT", "Hi <there> & 'welcome'"),
        ],
    )
    .await;
    let reply = post_form(&server, "/webhook/incoming_call", &call_params(), &[]).await;
    assert!(
        reply.body.contains(
            r#"<Response><Say language="en-US">Hi &lt;there&gt; &amp; &apos;welcome&apos;</Say><Connect "#
        ),
        "{}",
        reply.body
    );
    server.stop().await;
}

#[tokio::test]
async fn without_public_url_twiml_urls_follow_forwarded_headers() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let reply = post_form(
        &server,
        "/webhook/incoming_call",
        &call_params(),
        &[
            ("x-forwarded-proto", "https,http"),
            ("x-forwarded-host", "edge.example.org, internal"),
        ],
    )
    .await;
    assert_eq!(
        twiml_attr(&reply.body, "Stream", "url"),
        Some("wss://edge.example.org/ws/twilio-media")
    );
    // Plain Host: http origin, ws stream URL (another call: the same one again is a replay).
    let mut other = call_params();
    other[1].1 = "CA00000000000000000000000000000002";
    let reply = post_form(&server, "/webhook/incoming_call", &other, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let expected = format!("ws://{}/ws/twilio-media", server.addr);
    assert_eq!(
        twiml_attr(&reply.body, "Stream", "url"),
        Some(expected.as_str())
    );
    server.stop().await;
}

#[tokio::test]
async fn stream_ended_answers_prompt_and_record() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("PUBLIC_URL", PUBLIC), ("RECORD_MAX_LENGTH", "45")],
    )
    .await;
    let reply = post_form(&server, "/webhook/stream_ended", &call_params(), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body.contains("<Say language=\"en-US\">"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.ends_with(
            r#"<Record action="https://voice.example.com/webhook/handle_recording" maxLength="45" method="POST" /></Response>"#
        ),
        "{}",
        reply.body
    );
    server.stop().await;
}

#[tokio::test]
async fn recording_is_acknowledged_handed_on_and_survives_restart() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let mut params = call_params();
    params.extend([
        (
            "RecordingUrl",
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1",
        ),
        ("RecordingSid", "RE00000000000000000000000000000001"),
        ("RecordingDuration", "12"),
    ]);
    let reply = post_form(&server, "/webhook/handle_recording", &params, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("<Hangup />"));
    let stored = server
        .state
        .store
        .recording("RE00000000000000000000000000000001")
        .await
        .unwrap()
        .expect("the job is stored before the 200");
    assert_eq!(stored.event.duration_secs, Some(12));
    // A retried callback is the same job.
    let again = post_form(&server, "/webhook/handle_recording", &params, &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(server.state.store.counts().await.unwrap().recordings, 1);

    // A callback whose RecordingSid is not Twilio's shape is refused, not stored.
    let mut bad = params.clone();
    bad.retain(|(k, _)| *k != "RecordingSid");
    bad.push(("RecordingSid", "RE1"));
    let reply = post_form(&server, "/webhook/handle_recording", &bad, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.state.store.counts().await.unwrap().recordings, 1);

    let dir = server.shutdown().await;
    let (state, startup) = handset_shell::AppState::new(
        handset_shell::Config::from_vars([("DATA_DIR", dir.display().to_string())]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(startup.counts.recordings, 1, "the job survives the restart");
    assert_eq!(startup.counts.recordings_pending, 1);
    let job = state
        .store
        .recording("RE00000000000000000000000000000001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.event.call_sid, "CA00000000000000000000000000000001");
    drop(state);
    let server = TestServer::start_with(Options::bare().in_dir(dir), &[]).await;
    server.stop().await;
}

#[tokio::test]
async fn call_status_is_stored_and_stream_status_is_204() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let mut params = call_params();
    params.retain(|(k, _)| *k != "CallStatus");
    params.extend([
        ("CallStatus", "completed"),
        ("SequenceNumber", "3"),
        ("CallDuration", "30"),
    ]);
    let reply = post_form(&server, "/webhook/call_status", &params, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let stored = server
        .state
        .store
        .call_statuses("CA00000000000000000000000000000001")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].call_status, "completed");
    assert_eq!(stored[0].sequence_number, Some(3));
    assert_eq!(stored[0].duration_secs, Some(30));
    // Twilio retries a callback it got no answer to: stored once.
    let reply = post_form(&server, "/webhook/call_status", &params, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        server
            .state
            .store
            .call_statuses("CA00000000000000000000000000000001")
            .await
            .unwrap()
            .len(),
        1
    );

    let reply = post_form(
        &server,
        "/webhook/stream_status",
        &[
            ("StreamEvent", "stream-started"),
            ("StreamSid", "MZ00000000000000000000000000000001"),
            ("CallSid", "CA00000000000000000000000000000001"),
        ],
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        server
            .state
            .store
            .stream_statuses("CA00000000000000000000000000000001")
            .await
            .unwrap(),
        vec!["stream-started".to_owned()]
    );
    server.stop().await;
}

#[tokio::test]
async fn healthz_reports_calls_and_that_checks_are_off() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let _guard = server.state.active_calls.enter();
    let reply = send(
        Request::get(server.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["active_calls"], 1);
    assert_eq!(json["signature_checks"], false);
    assert!(
        json["warning"]
            .as_str()
            .unwrap()
            .contains("signature checks are off")
    );
    server.stop().await;

    let server =
        TestServer::start_with(Options::bare(), &[("TWILIO_AUTH_TOKEN", "secret-token")]).await;
    let reply = send(
        Request::get(server.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["signature_checks"], true);
    assert_eq!(json["active_calls"], 0);
    assert!(!reply.body.contains("secret-token"));
    server.stop().await;
}

#[tokio::test]
async fn version_reports_deploy_id_and_package_version() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("DEPLOY_ID", "green-42"), ("BUILD_COMMIT", "abc123")],
    )
    .await;
    let reply = send(
        Request::get(server.url("/version"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["deploy_id"], "green-42");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["commit"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let reply = send(
        Request::get(server.url("/nope"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        Request::get(server.url("/webhook/call_status"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    let reply = send(
        Request::post(server.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_by_length_and_when_streamed() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let big = "a=".to_owned() + &"x".repeat(64 * 1024);
    let req = Request::post(server.url("/webhook/call_status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, no Content-Length: the cap applies while streaming.
    let chunk = "x".repeat(16 * 1024);
    let mut raw = format!(
        "POST /webhook/call_status HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    );
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let answer = raw_exchange(server.addr, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&answer), 413);

    // Exactly at the limit is accepted.
    let at_limit = "a=".to_owned() + &"x".repeat(64 * 1024 - 2);
    let req = Request::post(server.url("/webhook/call_status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(at_limit)))
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn undecodable_form_is_400_and_unknown_content_type_is_415() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let req = Request::post(server.url("/webhook/call_status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"CallSid=CA1&From=%FF%FE")))
        .unwrap();
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("not valid utf-8"), "{}", reply.body);

    let req = Request::post(server.url("/webhook/call_status"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_returns_after_in_flight_requests() {
    let server = TestServer::start_with(Options::bare(), &[]).await;
    let addr = server.addr;
    let reply = send(
        Request::get(server.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
