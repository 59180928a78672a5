//! End to end over loopback: the real server (hyper shell + engine threads) against a
//! Twilio-emulating client that signs the webhook and the WebSocket handshake, offers the
//! subprotocol, streams µ-law at real time and models Twilio's playback buffer (plays at real
//! time, echoes marks when played, `clear` flushes and echoes pending marks).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handset_engine::agent::echo::GREETING;
use handset_sim::{CallOutcome, ReceivedKind, SimError, run_call};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{
    Logs, TOKEN, TestServer, after_silence, best_correlation, call_sid, drum, heard_between, media,
    open_call, pacer_underruns, post_form, read_media, read_to_end, speech, start_message,
    stream_sid, twilio_sign, voice_params, ws_connect,
};

fn assert_exact_shapes(outcome: &CallOutcome) {
    assert!(
        outcome.malformed.is_empty(),
        "malformed messages: {:?}",
        outcome.malformed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_is_heard_and_real_speech_is_echoed_back() {
    let logs = Logs::capture();
    let server = TestServer::start(&[]).await;
    let clip = speech();
    let mut plan = server.plan(1);
    plan.audio = after_silence(Duration::from_secs(2), &clip);
    plan.duration = Duration::from_millis(7_500);
    let outcome = run_call(plan).await.expect("call runs");

    assert_eq!(outcome.subprotocol.as_deref(), Some("audio.twilio.com"));
    assert_exact_shapes(&outcome);
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{:?}",
        outcome.close
    );

    // The greeting, byte for byte (µ-law 0x7F and 0xFF are both zero and re-encode as 0xFF).
    let first: Vec<u8> = outcome
        .played
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .take(GREETING.len())
        .collect();
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    assert_eq!(first.len(), GREETING.len());
    assert!(
        first
            .iter()
            .zip(GREETING)
            .all(|(a, b)| norm(*a) == norm(*b)),
        "greeting played verbatim"
    );

    // The echo: after the caller stopped (2 s + 1.4 s), what played is the caller's speech.
    let spoken_end = Duration::from_secs(2) + Duration::from_millis(clip.len() as u64 / 8);
    let echo = heard_between(&outcome, spoken_end, Duration::from_millis(7_500));
    assert!(
        echo.len() >= clip.len() * 3 / 4,
        "echo of {} samples for a {}-sample utterance",
        echo.len(),
        clip.len()
    );
    let corr = best_correlation(&clip, &echo, 12_000);
    assert!(
        corr > 0.7,
        "echo correlates with the caller's speech: {corr:.3}"
    );

    // The echo started within the VAD hangover (500 ms) plus a little after the caller stopped.
    let first_echo = outcome
        .played
        .iter()
        .map(|(t, _)| *t)
        .find(|t| *t > spoken_end)
        .expect("echo played");
    assert!(
        first_echo < spoken_end + Duration::from_millis(900),
        "echo began at {first_echo:?}, speech ended {spoken_end:?}"
    );

    // Marks round-trip: the greeting's and the echo's agent marks, and progress marks.
    assert!(
        outcome.mark_names.iter().any(|m| m == "a1"),
        "{:?}",
        outcome.mark_names
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a2"),
        "{:?}",
        outcome.mark_names
    );
    assert!(outcome.mark_names.iter().any(|m| m.starts_with('p')));
    assert_eq!(
        outcome.playback.marks_played,
        outcome.playback.marks_received
    );
    assert_eq!(pacer_underruns(&logs, &call_sid(1)).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_over_the_greeting_clears_it() {
    let server = TestServer::start(&[]).await;
    let clip = speech();
    let mut plan = server.plan(2);
    let onset = Duration::from_millis(300);
    plan.audio = after_silence(onset, &clip);
    plan.duration = Duration::from_secs(5);
    let outcome = run_call(plan).await.expect("call runs");
    assert_exact_shapes(&outcome);

    let clears = support::clears_at(&outcome);
    assert_eq!(clears.len(), 1, "one clear: {:?}", outcome.received);
    let clear = clears[0];
    assert!(
        clear > onset && clear < onset + Duration::from_millis(400),
        "clear at {clear:?}"
    );
    // The greeting stopped when the onset was held, before the check confirmed it and the
    // clear went out (`ONSET_PAUSE_MS`): no agent audio in the last 60 ms before the clear
    // (the check needs about 200 ms of the caller's speech after the VAD's onset).
    let paused = outcome
        .received
        .iter()
        .filter(|r| {
            r.at + Duration::from_millis(60) > clear
                && r.at < clear
                && matches!(r.kind, ReceivedKind::Media(_))
        })
        .count();
    assert_eq!(paused, 0, "the greeting paused before the clear");
    // Nothing more was sent until the caller's utterance ended (the greeting was dropped).
    let spoken_end = onset + Duration::from_millis(clip.len() as u64 / 8);
    let stale = outcome
        .received
        .iter()
        .filter(|r| r.at > clear && r.at < spoken_end && matches!(r.kind, ReceivedKind::Media(_)))
        .count();
    assert_eq!(stale, 0, "no stale audio after the clear");
    // Less than the whole greeting was heard.
    let heard: usize = heard_between(&outcome, Duration::ZERO, spoken_end).len();
    assert!(
        heard < GREETING.len(),
        "heard {heard} of {} greeting samples",
        GREETING.len()
    );
    server.stop().await;
}

/// The call's `WS stop` line (its counters).
async fn stop_line(logs: &Logs, call_sid: &str) -> serde_json::Value {
    let stop = logs
        .wait_for("WS stop", call_sid, Duration::from_secs(10))
        .await;
    assert_eq!(stop.len(), 1, "{stop:?}");
    stop[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drum_over_the_greeting_pauses_it_and_the_whole_greeting_is_heard() {
    let logs = Logs::capture();
    let server = TestServer::start(&[]).await;
    let mut plan = server.plan(61);
    let sid = plan.call_sid.clone();
    plan.audio = after_silence(
        Duration::from_millis(300),
        &drum(Duration::from_millis(1_500)),
    );
    plan.duration = Duration::from_secs(5);
    let outcome = run_call(plan).await.expect("call runs");
    assert_exact_shapes(&outcome);
    assert!(
        support::clears_at(&outcome).is_empty(),
        "not speech: no barge-in"
    );
    // The greeting stopped while Silero listened, then went on where it stopped.
    let media: Vec<Duration> = outcome
        .received
        .iter()
        .filter(|r| matches!(r.kind, ReceivedKind::Media(_)))
        .map(|r| r.at)
        .collect();
    let longest_gap = media
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap >= Duration::from_millis(300),
        "paused: {longest_gap:?}"
    );
    // The whole greeting, byte for byte and in order (its last frame padded with silence).
    let played = support::played_bytes(&outcome);
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    assert_eq!(played.len(), GREETING.len().div_ceil(160) * 160);
    assert!(
        played.iter().zip(GREETING).all(|(a, b)| *a == norm(*b)),
        "the greeting resumed where it stopped"
    );
    let stop = stop_line(&logs, &sid).await;
    assert_eq!(stop["onsets_rejected"], 1, "{stop}");
    assert_eq!(stop["barge_ins"], 0, "{stop}");
    assert_eq!(stop["underruns"], 0, "a pause is not an underrun: {stop}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drum_after_the_greeting_is_dismissed_and_not_echoed() {
    let logs = Logs::capture();
    let server = TestServer::start(&[]).await;
    let mut plan = server.plan(62);
    let sid = plan.call_sid.clone();
    let drum_at = Duration::from_secs(2);
    plan.audio = after_silence(drum_at, &drum(Duration::from_millis(1_500)));
    plan.duration = Duration::from_secs(6);
    let outcome = run_call(plan).await.expect("call runs");
    assert_exact_shapes(&outcome);
    // The VAD took it for speech, at once; Silero never did.
    assert_eq!(
        logs.wait_for("SPEECH_STARTED", &sid, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert_eq!(logs.find("SPEECH_DISMISSED", &sid).len(), 1);
    assert!(logs.find("SPEECH_ENDED", &sid).is_empty());
    let echoed = outcome
        .received
        .iter()
        .filter(|r| r.at > drum_at && matches!(r.kind, ReceivedKind::Media(_)))
        .count();
    assert_eq!(echoed, 0, "the echo agent does not answer a drum");
    assert_eq!(stop_line(&logs, &sid).await["speech_dismissed"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_valid_token_or_signature_are_refused() {
    let server = TestServer::start(&[]).await;
    let mut no_token = server.plan(3);
    no_token.override_parameters = Some(vec![("callSid".into(), no_token.call_sid.clone())]);
    no_token.duration = Duration::from_secs(1);
    let outcome = run_call(no_token).await.expect("socket opens");
    let (code, reason) = outcome.close.expect("server closed the stream");
    assert_eq!(code, 1008);
    assert!(reason.contains("token"), "{reason}");
    assert!(
        outcome.received.is_empty(),
        "nothing was played: {:?}",
        outcome.received
    );

    let mut forged = server.plan(4);
    forged.forge_signature = Some("bm90IHRoZSBzaWduYXR1cmU=".into());
    match run_call(forged).await {
        Err(SimError::Handshake(e)) => assert!(e.contains("403"), "{e}"),
        other => panic!("forged handshake must be refused, got {other:?}"),
    }

    // A token is single use: replaying the same TwiML parameters fails the second time.
    let plan = server.plan(5);
    let twiml = handset_sim::post_webhook(&plan).await.unwrap();
    let target = handset_sim::parse_twiml(&twiml).unwrap();
    let mut short = plan.clone();
    short.duration = Duration::from_millis(300);
    let first = handset_sim::run_stream(&short, &target).await.unwrap();
    assert_ne!(first.close.as_ref().map(|c| c.0), Some(1008));
    let second = handset_sim::run_stream(&short, &target).await.unwrap();
    assert_eq!(second.close.map(|c| c.0), Some(1008));
    server.stop().await;
}

/// A captured signed voice webhook replayed verbatim (Twilio's signatures carry no timestamp):
/// before the genuine stream, during it and after it, the replay gets 409 and no token, and the
/// genuine stream is never displaced. A drain redirect (its signed URL carries `hop=1`) is the
/// one way a call gets a second token, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_voice_webhook_gets_no_token_and_never_displaces_the_stream() {
    let server = TestServer::start(&[]).await;
    let n = 21;
    let params = voice_params(n);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let webhook = |path: &'static str| {
        let url = server.url(path);
        let sig = twilio_sign(TOKEN, &url, &pairs);
        let server = &server;
        let pairs = &pairs;
        async move { post_form(server, path, pairs, &[("X-Twilio-Signature", sig.as_str())]).await }
    };
    let genuine = webhook("/webhook/incoming_call").await;
    assert_eq!(genuine.status, 200, "{}", genuine.body);
    let target = handset_sim::parse_twiml(&genuine.body).unwrap();

    // Replayed before the stream starts: refused, and the genuine token still works.
    let replay = webhook("/webhook/incoming_call").await;
    assert_eq!(replay.status, 409, "{}", replay.body);
    assert!(!replay.body.contains("streamToken"), "{}", replay.body);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut ws = ws_connect(&server, tcp).await;
    ws.send(start_message(n, &target)).await.unwrap();
    assert!(
        read_media(&mut ws, 5, Duration::from_secs(10)).await,
        "the genuine stream plays"
    );

    // Replayed while it runs: refused; the stream goes on.
    let replay = webhook("/webhook/incoming_call").await;
    assert_eq!(replay.status, 409, "{}", replay.body);
    assert!(
        read_media(&mut ws, 5, Duration::from_secs(10)).await,
        "the genuine stream still plays"
    );
    ws.send(Message::text(format!(
        r#"{{"event":"stop","sequenceNumber":"9","streamSid":"{}"}}"#,
        stream_sid(n)
    )))
    .await
    .unwrap();
    let ending = read_to_end(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(ending.close, Some(1000), "{ending:?}");

    // After the call: still refused.
    let replay = webhook("/webhook/incoming_call").await;
    assert_eq!(replay.status, 409, "{}", replay.body);

    // A drain redirect gets one new token; its replay gets none.
    let moved = webhook("/webhook/incoming_call?hop=1").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert!(moved.body.contains("streamToken"), "{}", moved.body);
    let replay = webhook("/webhook/incoming_call?hop=1").await;
    assert_eq!(replay.status, 409, "{}", replay.body);
    server.stop().await;
}

/// Twilio identifiers are checked where they come in: a webhook whose `CallSid` is not `CA` and
/// 32 hex digits gets 400 naming the field (before anything is stored), and a stream whose
/// `start` carries such a `callSid` is closed with 1008 before its token is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_that_are_not_twilios_are_refused_at_the_edge() {
    let server = TestServer::start(&[]).await;
    let forged = format!("{}\n1999-01-01T00:00:00Z  INFO forged", call_sid(22));
    for (name, value) in [
        ("CallSid", forged.as_str()),
        ("CallSid", "CA1"),
        ("AccountSid", "ACnothex000000000000000000000000000"),
    ] {
        let mut params = voice_params(22);
        for (k, v) in &mut params {
            if *k == name {
                *v = value.to_owned();
            }
        }
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = server.url("/webhook/incoming_call");
        let sig = twilio_sign(TOKEN, &url, &pairs);
        let reply = post_form(
            &server,
            "/webhook/incoming_call",
            &pairs,
            &[("X-Twilio-Signature", sig.as_str())],
        )
        .await;
        assert_eq!(reply.status, 400, "{name}={value:?}: {}", reply.body);
        assert!(
            reply.body.contains(&format!("invalid {name}")),
            "{}",
            reply.body
        );
        assert!(
            !reply.body.contains("forged"),
            "the value is not echoed: {}",
            reply.body
        );
    }
    assert_eq!(
        server
            .state
            .store
            .outstanding_tokens(u64::MAX / 2)
            .await
            .unwrap(),
        0
    );

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut ws = ws_connect(&server, tcp).await;
    let start = serde_json::json!({"event": "start", "streamSid": stream_sid(22), "start": {
        "streamSid": stream_sid(22), "callSid": forged, "tracks": ["inbound"],
        "customParameters": {"streamToken": "x"}}});
    ws.send(Message::text(start.to_string())).await.unwrap();
    let ending = read_to_end(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(ending.close, Some(1008), "{ending:?}");
    assert!(ending.reason.contains("invalid identifier"), "{ending:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dropped_or_closed_and_other_calls_never_notice() {
    use base64::Engine as _;
    let logs = Logs::capture();
    let server = TestServer::start(&[]).await;
    // A healthy call runs alongside everything below.
    let mut healthy = server.plan(10);
    healthy.duration = Duration::from_secs(4);
    let healthy = tokio::spawn(run_call(healthy));

    let mut ws = open_call(&server, 11).await;
    let sid = stream_sid(11);
    let good = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    let short = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 100]);
    let garbage = [
        Message::text("not json at all"),
        Message::text(r#"{"event":"media"}"#),
        Message::text(r#"{"no_event":true}"#),
        media(&sid, 1, "!!!not base64!!!"),
        media(&sid, 2, &short),
        media("MZwrong", 3, &good),
        Message::binary(vec![1u8, 2, 3]),
        Message::text(r#"{"event":"start","start":{"streamSid":"MZother","callSid":"CAx"}}"#),
        Message::text(r#"{"event":"hologram","streamSid":"x"}"#),
        Message::text(
            r#"{"event":"mark","streamSid":"SID","mark":{"name":"never-sent"}}"#
                .replace("SID", &sid),
        ),
    ];
    for m in garbage {
        ws.send(m).await.unwrap();
    }
    // Media faster than real time: a flood of 600 frames at once is absorbed or counted.
    for chunk in 4..604 {
        ws.send(media(&sid, chunk, &good)).await.unwrap();
    }
    // The call is still alive: it keeps sending the greeting.
    let mut got_media = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline && !got_media {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        {
            got_media = t.contains(r#""event":"media""#);
        }
    }
    assert!(got_media, "the call survived the garbage");
    // A message over 64 KiB closes the stream with 1009.
    ws.send(Message::text(format!(
        r#"{{"event":"media","x":"{}"}}"#,
        "A".repeat(70_000)
    )))
    .await
    .unwrap();
    let mut close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        if let Ok(Message::Close(frame)) = msg {
            close = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(1009), "oversized message closes with 1009");

    // An abrupt disconnect mid-call: the TCP connection just goes away.
    drop(open_call(&server, 12).await);

    let healthy = healthy.await.unwrap().expect("healthy call runs");
    assert_exact_shapes(&healthy);
    assert_eq!(pacer_underruns(&logs, &call_sid(10)).await, 0);
    let played: usize = healthy.played.iter().map(|(_, b)| b.len()).sum();
    assert!(
        played >= GREETING.len(),
        "the healthy call heard its whole greeting"
    );
    // Every call ends; the server is still serving.
    assert_eq!(server.wait_idle(Duration::from_secs(3)).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_opted_in_with_trace_1_leaves_a_timeline_that_renders() {
    let server = TestServer::start(&[]).await;
    let mut plan = server.plan(20);
    plan.webhook_url.push_str("?trace=1");
    plan.audio = after_silence(Duration::from_millis(300), &speech());
    plan.duration = Duration::from_secs(3);
    let outcome = run_call(plan.clone()).await.expect("call runs");
    assert_exact_shapes(&outcome);
    let dir = server
        .state
        .config
        .trace_dir
        .clone()
        .expect("TRACE_DIR set");
    let path = dir.join(format!("{}.json", plan.call_sid));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let json = std::fs::read_to_string(&path).expect("trace written");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let events = value["traceEvents"].as_array().expect("traceEvents");
    let named = |n: &str| events.iter().filter(|e| e["name"] == n).count();
    assert!(named("media") > 100, "caller frames in");
    assert!(named("frame") > 50, "frames out and playout slots");
    assert_eq!(named("BARGE_IN"), 1, "the caller talked over the greeting");
    let svg = handset_shell::trace_svg::render(&json).expect("renders");
    assert!(svg.contains("BARGE_IN"));
    // A call without the opt-in leaves no timeline (TRACE_SAMPLE is 0).
    let plain = server.plan(21);
    let mut short = plain.clone();
    short.duration = Duration::from_millis(500);
    run_call(short).await.expect("call runs");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!dir.join(format!("{}.json", plain.call_sid)).exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_calls_the_webhook_apologises_and_the_socket_says_try_later() {
    let server = TestServer::start(&[("MAX_CALLS", "1")]).await;
    // B gets its TwiML (and token) while the server is free.
    let b = server.plan(31);
    let b_twiml = handset_sim::post_webhook(&b).await.unwrap();
    let b_target = handset_sim::parse_twiml(&b_twiml).unwrap();
    // A takes the only slot.
    let mut a = server.plan(30);
    a.duration = Duration::from_secs(3);
    let a = tokio::spawn(run_call(a));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.state.active_calls.count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state.active_calls.count(), 1);
    // A third caller hears the busy prompt and is hung up on: no stream is offered.
    let c = server.plan(32);
    let twiml = handset_sim::post_webhook(&c).await.unwrap();
    assert!(twiml.contains("<Hangup"), "{twiml}");
    assert!(twiml.contains("lines are busy"), "{twiml}");
    assert!(!twiml.contains("<Stream"), "{twiml}");
    // B's stream arrives while A is running: closed with 1013.
    let mut short = b.clone();
    short.duration = Duration::from_millis(500);
    let outcome = handset_sim::run_stream(&short, &b_target).await.unwrap();
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1013),
        "{:?}",
        outcome.close
    );
    assert!(outcome.received.is_empty());
    let a = a.await.unwrap().expect("A runs to the end");
    assert_eq!(a.close.map(|c| c.0), Some(1000));
    server.stop().await;
}
