//! Rolling deploys over loopback: what a draining instance does. `/readyz` turns 503 at once
//! while `/healthz` stays 200; a stream that opens on it is refused and its call redirected to
//! the voice webhook (through the load balancer, to a ready instance) instead of the voicemail
//! fallback; live calls go on to their normal end, after which the server stops; calls still
//! live at `DRAIN_TIMEOUT` are closed with 1001 and redirected too, a bounded number of times.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{
    Options, Reply, TOKEN, TestServer, call_sid, media, open_call, post_form, read_media,
    read_to_end, send, silence_payload, stream_sid, twilio_sign, voice_params,
};

async fn get(server: &TestServer, path: &str) -> Reply {
    send(
        http::Request::get(server.url(path))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The signed `<Connect action>` request Twilio sends when call `n`'s stream has ended.
async fn stream_ended(server: &TestServer, n: u32, query: &str) -> Reply {
    let params = voice_params(n);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let path = format!("/webhook/stream_ended{query}");
    let sig = twilio_sign(TOKEN, &server.url(&path), &pairs);
    post_form(
        server,
        &path,
        &pairs,
        &[("X-Twilio-Signature", sig.as_str())],
    )
    .await
}

/// The signed voice webhook for call `n` at `path` (with its query).
async fn incoming(server: &TestServer, n: u32, path: &str) -> Reply {
    let params = voice_params(n);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sig = twilio_sign(TOKEN, &server.url(path), &pairs);
    post_form(
        server,
        path,
        &pairs,
        &[("X-Twilio-Signature", sig.as_str())],
    )
    .await
}

async fn end_reason(server: &TestServer, n: u32) -> Option<String> {
    server
        .state
        .store
        .call(&call_sid(n))
        .await
        .unwrap()
        .and_then(|c| c.end_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_is_not_ready_refuses_new_streams_and_lets_live_calls_finish() {
    let mut server = TestServer::start(&[("DRAIN_TIMEOUT", "60")]).await;
    let ready = get(&server, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains(r#""status":"ready""#), "{}", ready.body);

    let mut live = open_call(&server, 1).await;
    assert!(
        read_media(&mut live, 5, Duration::from_secs(5)).await,
        "greeting plays"
    );

    server.drain();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let not_ready = loop {
        let reply = get(&server, "/readyz").await;
        if reply.status == 503 || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.body.contains("draining"), "{}", not_ready.body);
    let health = get(&server, "/healthz").await;
    assert_eq!(health.status, 200, "alive while draining");
    assert!(
        health.body.contains(r#""draining":true"#),
        "{}",
        health.body
    );

    // A new call whose stream lands here is refused with 1001 and redirected.
    let mut refused = open_call(&server, 2).await;
    let ending = read_to_end(&mut refused, Duration::from_secs(5)).await;
    assert_eq!(ending.close, Some(1001), "{ending:?}");
    assert_eq!(ending.media, 0);
    assert_eq!(end_reason(&server, 2).await.as_deref(), Some("draining"));
    let next = stream_ended(&server, 2, "").await;
    assert_eq!(next.status, 200);
    assert!(
        next.body.contains(&format!(
            r#"<Redirect method="POST">{}</Redirect>"#,
            server.url("/webhook/incoming_call?hop=1")
        )),
        "{}",
        next.body
    );
    assert!(!next.body.contains("<Record"), "not sent to voicemail");

    // The live call goes on: caller audio in, agent audio out, then a normal stop.
    for chunk in 0..25 {
        live.send(media(&stream_sid(1), chunk, &silence_payload()))
            .await
            .unwrap();
    }
    assert!(
        read_media(&mut live, 10, Duration::from_secs(5)).await,
        "still served"
    );
    assert!(
        !server.stopped_within(Duration::from_millis(200)).await,
        "waits for the call"
    );
    live.send(Message::text(format!(
        r#"{{"event":"stop","sequenceNumber":"99","streamSid":"{}"}}"#,
        stream_sid(1)
    )))
    .await
    .unwrap();
    let ending = read_to_end(&mut live, Duration::from_secs(5)).await;
    assert_eq!(ending.close, Some(1000), "{ending:?}");
    assert_eq!(end_reason(&server, 1).await.as_deref(), Some("completed"));
    assert!(
        server.stopped_within(Duration::from_secs(10)).await,
        "the server stops once its last call has ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_live_at_the_drain_deadline_are_redirected_a_bounded_number_of_times() {
    let mut server =
        TestServer::start(&[("DRAIN_TIMEOUT", "1"), ("GREETING_TEXT", "Welcome")]).await;

    // A redirected call is not greeted again, and its next `<Connect action>` counts the hop.
    let first = incoming(&server, 3, "/webhook/incoming_call").await;
    assert!(first.body.contains("<Say"), "{}", first.body);
    let hopped = incoming(&server, 3, "/webhook/incoming_call?hop=1").await;
    assert_eq!(hopped.status, 200);
    assert!(!hopped.body.contains("<Say"), "{}", hopped.body);
    assert!(
        hopped
            .body
            .contains(&server.url("/webhook/stream_ended?hop=1")),
        "{}",
        hopped.body
    );

    let mut live = open_call(&server, 4).await;
    assert!(read_media(&mut live, 3, Duration::from_secs(5)).await);
    server.drain();
    let ending = read_to_end(&mut live, Duration::from_secs(10)).await;
    assert_eq!(ending.close, Some(1001), "{ending:?}");
    assert_eq!(end_reason(&server, 4).await.as_deref(), Some("going_away"));
    // Its last call closed, the draining instance exits; the `<Connect action>` lands on
    // another instance sharing the store.
    assert!(server.stopped_within(Duration::from_secs(10)).await);
    let other =
        TestServer::start_with(Options::default().in_dir(server.data_dir.clone()), &[]).await;
    let next = stream_ended(&other, 4, "").await;
    assert!(
        next.body
            .contains(&other.url("/webhook/incoming_call?hop=1")),
        "{}",
        next.body
    );
    let next = stream_ended(&other, 4, "?hop=2").await;
    assert!(
        next.body
            .contains(&other.url("/webhook/incoming_call?hop=3")),
        "{}",
        next.body
    );
    // After the last hop the call takes the fallback rather than bouncing for ever.
    let last = stream_ended(&other, 4, "?hop=3").await;
    assert!(last.body.contains("<Record"), "{}", last.body);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_for_any_other_reason_still_takes_the_fallback() {
    let server = TestServer::start(&[]).await;
    // No record of the call at all (another deployment, or the store was reset).
    let unknown = stream_ended(&server, 7, "").await;
    assert!(unknown.body.contains("<Record"), "{}", unknown.body);
    server.stop().await;
}
