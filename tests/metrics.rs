//! `/metrics` end to end over loopback: the real server runs real calls from a Twilio-emulating
//! client, then a scrape is parsed (a small parser for the text format, below) and the counters
//! are checked against what the test did: frames in and out, every released frame timed, HTTP
//! requests by route pattern and status, a forged signature on a webhook and on a WebSocket
//! upgrade, bad WebSocket input, a barge-in, calls started and ended. Also: `METRICS_TOKEN`
//! refuses scrapes without the bearer token, and `WS_MAX_MESSAGE_BYTES` closes a stream with
//! 1009 on a message just over it while one at the limit is accepted.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use handset_sim::{SimError, run_call};
use http::{Method, Request};
use http_body_util::Full;
use support::{
    Reply, TestServer, after_silence, media, open_call, post_form, send, speech, stream_sid,
};
use tokio_tungstenite::tungstenite::Message;

/// One scrape: `name{labels}` (labels as written) → value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Parses the text format: `# ...` lines are metadata, every other line is
    /// `name[{labels}] value`.
    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().expect("sample value is a number");
            assert!(
                samples.insert(key.to_owned(), value).is_none(),
                "duplicate sample {key}"
            );
        }
        Self(samples)
    }

    /// The sample `key`, or 0 when it is absent (an unlabelled counter is always present).
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// The sample `key`, which must be present.
    fn must(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#?}", self.0))
    }

    /// Sum over every sample of the metric `name` with any labels.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    }
}

fn get(server: &TestServer, path: &str, authorization: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(server.url(path));
    if let Some(a) = authorization {
        builder = builder.header("authorization", a);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

async fn scrape(server: &TestServer, authorization: Option<&str>) -> (Reply, Scrape) {
    let reply = send(get(server, "/metrics", authorization)).await;
    let parsed = if reply.status == 200 {
        Scrape::parse(&reply.body)
    } else {
        Scrape(BTreeMap::new())
    };
    (reply, parsed)
}

/// Reads until the server's close frame; its code, or `None` if the socket ended without one.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Option<u16> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Message::Close(frame)) = msg {
            return frame.map(|f| u16::from(f.code));
        }
    }
    None
}

/// Waits until no media call is running.
async fn calls_drained(server: &TestServer) {
    assert_eq!(
        server.wait_idle(Duration::from_secs(5)).await,
        0,
        "every call ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_real_calls_shows_what_happened() {
    let server = TestServer::start(&[("ENGINE_WORKERS", "1")]).await;

    // A call whose caller talks over the greeting: media both ways, VAD, a barge-in.
    let mut talker = server.plan(1);
    talker.audio = after_silence(Duration::from_millis(300), &speech());
    talker.duration = Duration::from_millis(3_000);
    let talker = tokio::spawn(run_call(talker));

    // A webhook with a forged signature, and a WebSocket upgrade with one.
    let forged = post_form(
        &server,
        "/webhook/incoming_call",
        &[("CallSid", "CAforged")],
        &[("x-twilio-signature", "bm90IHRoZSBzaWduYXR1cmU=")],
    )
    .await;
    assert_eq!(forged.status, 403);
    let mut forged_ws = server.plan(2);
    forged_ws.forge_signature = Some("bm90IHRoZSBzaWduYXR1cmU=".into());
    match run_call(forged_ws).await {
        Err(SimError::Handshake(e)) => assert!(e.contains("403"), "{e}"),
        other => panic!("a forged handshake must be refused, got {other:?}"),
    }

    // Bad input on a live stream: two malformed messages, one binary frame and two media
    // messages whose payload is not a frame (not base64; 3 bytes), then `stop`.
    let mut ws = open_call(&server, 3).await;
    let sid = stream_sid(3);
    ws.send(Message::text("not json at all")).await.unwrap();
    ws.send(media(&sid, 0, "%%%")).await.unwrap();
    ws.send(media(&sid, 1, "AQID")).await.unwrap();
    ws.send(Message::text(r#"{"event":"media"}"#))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::text(
        serde_json::json!({"event":"stop","streamSid":sid}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1000));

    // Plain routes: one known, one unknown path (label "other", never the raw path).
    assert_eq!(send(get(&server, "/healthz", None)).await.status, 200);
    assert_eq!(
        send(get(&server, "/no/such/path-7f3a", None)).await.status,
        404
    );

    let outcome = talker.await.unwrap().expect("the talking call runs");
    assert!(!outcome.played.is_empty(), "the caller heard the greeting");
    calls_drained(&server).await;

    let (reply, m) = scrape(&server, None).await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(reply.body.ends_with("# EOF\n"));
    assert!(
        !reply.body.contains("path-7f3a"),
        "raw paths never become labels"
    );

    // Media: frames moved both ways, and every released frame was timed.
    let frames_in = m.must("handset_frames_in_total");
    let frames_out = m.must("handset_frames_out_total");
    assert!(frames_in > 50.0, "{frames_in}");
    assert!(frames_out > 50.0, "{frames_out}");
    assert_eq!(
        m.must("handset_outbound_lateness_seconds_count"),
        frames_out
    );
    assert_eq!(
        m.must("handset_outbound_lateness_seconds_bucket{le=\"+Inf\"}"),
        frames_out
    );
    assert!(m.must("handset_outbound_lateness_seconds_sum") >= 0.0);
    // Every frame that reached the socket was timed again when its write returned (a frame
    // still queued when the call closed is dropped, never written).
    let written = m.must("handset_outbound_write_lateness_seconds_count");
    assert!(
        written > 50.0 && written <= frames_out,
        "{written} of {frames_out}"
    );
    assert_eq!(
        m.must("handset_outbound_write_lateness_seconds_bucket{le=\"+Inf\"}"),
        written
    );
    if written == frames_out {
        // The same frames, each timed later than at its release.
        assert!(
            m.must("handset_outbound_write_lateness_seconds_sum")
                >= m.must("handset_outbound_lateness_seconds_sum")
        );
    }

    // Every wake-up's work was timed.
    assert!(m.must("handset_engine_wakeup_busy_seconds_count") >= 1.0);
    assert!(
        m.must("handset_engine_wakeup_busy_seconds_count")
            <= m.must("handset_engine_wakeups_total") + 1.0
    );

    // The caller's speech was detected and cut the greeting: one barge-in, timed.
    assert!(m.must("handset_vad_transitions_total{transition=\"speech_started\"}") >= 1.0);
    let barge_ins = m.must("handset_barge_ins_total");
    assert!(barge_ins >= 1.0, "{barge_ins}");
    assert_eq!(m.must("handset_barge_in_latency_seconds_count"), barge_ins);
    let latency = m.must("handset_barge_in_latency_seconds_sum") / barge_ins;
    assert!(latency > 0.0 && latency < 3.0, "{latency}");
    // The onset was held for the second-stage check (on by default) and confirmed by Silero.
    let checks = |o: &str| m.must(&format!("handset_onset_checks_total{{outcome=\"{o}\"}}"));
    assert_eq!(checks("confirmed"), barge_ins);
    assert!(checks("held") >= barge_ins);
    assert_eq!(checks("unchecked"), 0.0);
    assert!(m.must("handset_onset_check_model_runs_total") >= 1.0);
    assert_eq!(m.must("handset_onset_check_errors_total"), 0.0);

    // HTTP by route pattern and status.
    let http = |route: &str, status: u16| {
        m.get(&format!(
            "handset_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(
        http("/webhook/incoming_call", 200),
        3.0,
        "three calls asked"
    );
    assert_eq!(http("/webhook/incoming_call", 403), 1.0);
    assert_eq!(http("/ws/twilio-media", 101), 2.0);
    assert_eq!(http("/ws/twilio-media", 403), 1.0);
    assert_eq!(http("/healthz", 200), 1.0);
    assert_eq!(http("other", 404), 1.0);

    // Signature failures: one webhook, one upgrade.
    assert_eq!(
        m.must("handset_signature_failures_total{transport=\"http\"}"),
        1.0
    );
    assert_eq!(
        m.must("handset_signature_failures_total{transport=\"ws\"}"),
        1.0
    );

    // WebSocket traffic and bad input.
    assert_eq!(m.must("handset_ws_errors_total{kind=\"malformed\"}"), 2.0);
    assert_eq!(m.must("handset_ws_errors_total{kind=\"binary\"}"), 1.0);
    // Rejected media is counted once, by the shell that read it, and shown in both places.
    assert_eq!(m.must("handset_ws_errors_total{kind=\"bad_media\"}"), 2.0);
    assert_eq!(
        m.must("handset_frames_dropped_total{stage=\"invalid_media\"}"),
        2.0
    );
    assert!(m.must("handset_ws_messages_total{direction=\"in\"}") > frames_in * 0.9);
    assert!(m.must("handset_ws_messages_total{direction=\"out\"}") > 0.0);

    // Calls: two bridged, both ended, none active.
    assert_eq!(m.must("handset_calls_started_total"), 2.0);
    assert_eq!(m.sum("handset_calls_ended_total"), 2.0);
    assert_eq!(
        m.must("handset_calls_ended_total{reason=\"completed\"}"),
        2.0
    );
    assert_eq!(m.must("handset_active_calls"), 0.0);
    assert!(m.must("handset_engine_wakeups_total") > 0.0);

    // The scrape itself is counted.
    let (_, again) = scrape(&server, None).await;
    assert_eq!(
        again.get("handset_http_requests_total{route=\"/metrics\",status=\"200\"}"),
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_token_a_scrape_needs_the_bearer_token() {
    let server =
        TestServer::start(&[("METRICS_TOKEN", "scrape-secret"), ("ENGINE_WORKERS", "1")]).await;
    let (none, _) = scrape(&server, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert!(!none.body.contains("handset_"));
    for wrong in [
        "Bearer scrape-secre",
        "Bearer scrape-secret2",
        "Basic scrape-secret",
    ] {
        let (reply, _) = scrape(&server, Some(wrong)).await;
        assert_eq!(reply.status, 401, "{wrong}");
    }
    let (ok, m) = scrape(&server, Some("Bearer scrape-secret")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        m.must("handset_http_requests_total{route=\"/metrics\",status=\"401\"}"),
        4.0
    );
    let post = Request::builder()
        .method(Method::POST)
        .uri(server.url("/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(post).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_just_over_ws_max_message_bytes_closes_the_stream_with_1009() {
    const LIMIT: usize = 2_048;
    let server =
        TestServer::start(&[("ENGINE_WORKERS", "1"), ("WS_MAX_MESSAGE_BYTES", "2048")]).await;
    let mut ws = open_call(&server, 1).await;
    // Exactly at the limit: accepted (and dropped as malformed JSON); the call goes on.
    let at_limit = format!(r#"{{"event":"x","pad":"{}"}}"#, "A".repeat(LIMIT - 22));
    assert_eq!(at_limit.len(), LIMIT);
    ws.send(Message::text(at_limit)).await.unwrap();
    let mut alive = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline && !alive {
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => alive = t.contains(r#""event":"media""#),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed at the limit: {f:?}"),
            _ => {}
        }
    }
    assert!(alive, "a message at the limit does not end the call");
    // One byte over: 1009.
    let over = format!(r#"{{"event":"x","pad":"{}"}}"#, "A".repeat(LIMIT - 21));
    assert_eq!(over.len(), LIMIT + 1);
    ws.send(Message::text(over)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    calls_drained(&server).await;
    let (_, m) = scrape(&server, None).await;
    assert_eq!(m.must("handset_ws_closes_total{reason=\"too_big\"}"), 1.0);
    assert_eq!(m.must("handset_calls_ended_total{reason=\"too_big\"}"), 1.0);
    assert_eq!(
        m.must("handset_ws_errors_total{kind=\"unknown_event\"}"),
        1.0
    );
    server.stop().await;
}
