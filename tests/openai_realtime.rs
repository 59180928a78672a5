//! End to end over loopback: the real server with the built-in OpenAI Realtime adapter
//! (`OPENAI_API_KEY`, `OPENAI_REALTIME_URL` pointing at a fake Realtime server written here),
//! driven by the Twilio call simulator. The fake server speaks the API's documented events: it
//! takes `session.update`, collects `input_audio_buffer.append`, answers with a burst of
//! `response.output_audio.delta`, and later reports `input_audio_buffer.speech_started`. The
//! tests check µ-law both ways, that the assistant's audio is what the caller hears, and that
//! the `conversation.item.truncate` cuts the item at what the simulated Twilio actually played
//! (within one 20 ms frame), for the server's VAD and for Handset's own barge-in.

#![allow(clippy::disallowed_methods)] // an end-to-end test timestamps what it sees

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use handset_engine::codec;
use handset_sim::{CallOutcome, CallPlan, ReceivedKind, run_call};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{TestServer, played_bytes, speech};

const API_KEY: &str = "sk-test-realtime-key";
/// Appends (20 ms each) the fake server waits for before it answers.
const APPENDS_BEFORE_ANSWER: usize = 25;
/// The answer: this many deltas of this many ms of µ-law.
const DELTAS: usize = 28;
const DELTA_MS: usize = 100;
const ITEM: &str = "item_answer_1";

/// A server whose calls go to the OpenAI adapter at `realtime_url`.
async fn start(realtime_url: &str) -> TestServer {
    start_with(realtime_url, &[]).await
}

/// [`start`] with `extra` variables.
async fn start_with(realtime_url: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut vars = vec![
        ("ENGINE_WORKERS", "1"),
        ("OPENAI_API_KEY", API_KEY),
        ("OPENAI_REALTIME_URL", realtime_url),
        ("OPENAI_VOICE", "verse"),
    ];
    vars.extend_from_slice(extra);
    TestServer::start(&vars).await
}

/// Call `n` against `server`, `duration` long.
fn plan(server: &TestServer, n: u32, duration: Duration) -> CallPlan {
    let mut plan = server.plan(n);
    plan.duration = duration;
    plan
}

/// What the fake Realtime server saw.
#[derive(Default)]
struct Seen {
    authorization: Option<String>,
    events: Vec<(Instant, Value)>,
}

type Log = Arc<Mutex<Seen>>;

/// The assistant's answer: a 440 Hz tone, µ-law.
fn answer() -> Vec<u8> {
    let n = DELTAS * DELTA_MS * 8;
    (0..n)
        .map(|i| {
            let phase = i as f32 * 440.0 / 8_000.0 * std::f32::consts::TAU;
            codec::encode_sample((phase.sin() * 8_000.0) as i16)
        })
        .collect()
}

/// Starts the fake Realtime server; `speech_after` = when (after the burst) its VAD reports
/// the caller speaking, or never.
async fn fake_realtime(speech_after: Option<Duration>) -> (String, Log) {
    fake_realtime_calling(speech_after, None).await
}

/// [`fake_realtime`] whose answer ends with a call of function tool `tool` (name, arguments).
async fn fake_realtime_calling(
    speech_after: Option<Duration>,
    tool: Option<(&'static str, &'static str)>,
) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/realtime?model=gpt-realtime",
        listener.local_addr().unwrap()
    );
    let log: Log = Arc::default();
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_realtime(tcp, speech_after, tool, Arc::clone(&shared)));
        }
    });
    (url, log)
}

async fn serve_realtime(
    tcp: tokio::net::TcpStream,
    speech_after: Option<Duration>,
    tool: Option<(&'static str, &'static str)>,
    log: Log,
) {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let _ = tcp.set_nodelay(true);
    let mut authorization = None;
    #[allow(clippy::result_large_err)] // the handshake callback type is tungstenite's
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    log.lock().unwrap().authorization = authorization;
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::text(v.to_string());
    if tx
        .send(send(json!({"type": "session.created", "event_id": "e0"})))
        .await
        .is_err()
    {
        return;
    }
    let mut appends = 0;
    let mut speech_at: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            msg = rx.next() => msg,
            () = async {
                match speech_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                speech_at = None;
                let ev = json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 2_000, "item_id": "item_caller_2"});
                if tx.send(send(ev)).await.is_err() { return; }
                continue;
            }
        };
        let Some(Ok(Message::Text(text))) = msg else {
            match msg {
                Some(Ok(_)) => continue,
                _ => return,
            }
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        log.lock()
            .unwrap()
            .events
            .push((Instant::now(), event.clone()));
        let mut out = Vec::new();
        match event["type"].as_str().unwrap_or("") {
            "session.update" => {
                out.push(json!({"type": "session.updated", "session": event["session"]}))
            }
            "input_audio_buffer.append" => {
                appends += 1;
                if appends == APPENDS_BEFORE_ANSWER {
                    out.push(json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}));
                    for chunk in answer().chunks(DELTA_MS * 8) {
                        out.push(json!({
                            "type": "response.output_audio.delta", "response_id": "resp_1",
                            "item_id": ITEM, "output_index": 0, "content_index": 0,
                            "delta": BASE64.encode(chunk),
                        }));
                    }
                    speech_at = speech_after.map(|d| tokio::time::Instant::now() + d);
                    if let Some((name, arguments)) = tool {
                        out.push(json!({
                            "type": "response.function_call_arguments.done", "response_id": "resp_1",
                            "item_id": "item_call_1", "output_index": 1, "call_id": "call_1",
                            "name": name, "arguments": arguments,
                        }));
                        out.push(json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}));
                    }
                }
            }
            "conversation.item.truncate" => {
                // Audio generated before the cancel took effect: must not play.
                for _ in 0..3 {
                    out.push(json!({
                        "type": "response.output_audio.delta", "response_id": "resp_1",
                        "item_id": ITEM, "output_index": 0, "content_index": 0,
                        "delta": BASE64.encode([0x00u8; 800]),
                    }));
                }
                out.push(
                    json!({"type": "conversation.item.truncated", "item_id": ITEM,
                    "content_index": 0, "audio_end_ms": event["audio_end_ms"]}),
                );
            }
            "response.cancel" => {
                out.push(json!({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}));
            }
            _ => {}
        }
        for m in out {
            if tx.send(send(m)).await.is_err() {
                return;
            }
        }
    }
}

fn events(log: &Log, kind: &str) -> Vec<Value> {
    log.lock()
        .unwrap()
        .events
        .iter()
        .filter(|(_, v)| v["type"] == kind)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Checks what both tests share: auth, session, µ-law appends, the played answer and the
/// truncate against what was played. Returns `audio_end_ms`.
fn check_truncation(log: &Log, outcome: &CallOutcome) -> u64 {
    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    assert_eq!(
        log.lock().unwrap().authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    let update = &events(log, "session.update")[0]["session"];
    assert_eq!(update["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(update["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(
        update["audio"]["input"]["turn_detection"]["type"],
        "server_vad"
    );
    assert_eq!(update["audio"]["output"]["voice"], "verse");
    // The assistant is asked to speak first, right after the session is set up.
    let types: Vec<String> = log
        .lock()
        .unwrap()
        .events
        .iter()
        .take(2)
        .map(|(_, v)| v["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(types, ["session.update", "response.create"]);
    let greeting = &events(log, "response.create")[0]["response"]["instructions"];
    assert_eq!(
        greeting.as_str(),
        Some(handset_shell::config::DEFAULT_OPENAI_GREETING)
    );
    let appends = events(log, "input_audio_buffer.append");
    assert!(appends.len() >= APPENDS_BEFORE_ANSWER, "{}", appends.len());
    // The first append is short by the resampler's delay; then 20 ms of 8 kHz µ-law each.
    for a in &appends[1..] {
        let bytes = BASE64.decode(a["audio"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 160, "20 ms of 8 kHz µ-law per append");
    }

    // The caller heard the answer as sent (µ-law passes through), and only that.
    let played = played_bytes(outcome);
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    let sent: Vec<u8> = answer().into_iter().map(norm).collect();
    assert!(!played.is_empty(), "the answer played");
    assert!(played.len() < sent.len(), "the answer was cut");
    assert_eq!(
        played[..],
        sent[..played.len()],
        "played audio is the answer's"
    );
    assert!(
        outcome
            .received
            .iter()
            .any(|r| r.kind == ReceivedKind::Clear),
        "Twilio was told to clear"
    );

    let truncates = events(log, "conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    let t = &truncates[0];
    assert_eq!(t["item_id"], ITEM);
    assert_eq!(t["content_index"], 0);
    let end_ms = t["audio_end_ms"].as_u64().unwrap();
    let played_ms = played.len() as u64 / 8;
    println!("truncate: audio_end_ms {end_ms}, simulated Twilio played {played_ms} ms");
    assert!(
        end_ms.abs_diff(played_ms) <= 20,
        "audio_end_ms {end_ms} vs played {played_ms}"
    );
    end_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_vad_speech_started_clears_and_truncates_at_what_the_caller_heard() {
    let (url, log) = fake_realtime(Some(Duration::from_millis(1_300))).await;
    let server = start(&url).await;
    let plan = plan(&server, 1, Duration::from_millis(4_000));
    let outcome = run_call(plan).await.expect("call runs");
    server.stop().await;

    let end_ms = check_truncation(&log, &outcome);
    assert!(
        (1_000..2_500).contains(&end_ms),
        "cut about 1.3 s into the answer: {end_ms}"
    );
    assert_eq!(
        events(&log, "response.cancel").len(),
        1,
        "response cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handset_barge_in_truncates_the_item_at_what_the_caller_heard() {
    let (url, log) = fake_realtime(None).await;
    let server = start(&url).await;
    let mut plan = plan(&server, 2, Duration::from_millis(4_500));
    // Silence, then the caller speaks over the answer (which starts about 0.5 s in).
    let clip = speech();
    let mut audio = vec![0i16; 16_000];
    audio.extend_from_slice(&clip);
    plan.audio = Arc::new(audio);
    let outcome = run_call(plan).await.expect("call runs");
    server.stop().await;

    let end_ms = check_truncation(&log, &outcome);
    assert!(end_ms >= 1_000, "the caller spoke at 2 s: {end_ms}");
    assert_eq!(
        events(&log, "response.cancel").len(),
        1,
        "the response in progress is cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_keys_reach_the_assistant_as_one_message_and_are_answered() {
    let ms = Duration::from_millis;
    let (url, log) = fake_realtime(None).await;
    let server = start(&url).await;
    let mut plan = plan(&server, 3, ms(4_000));
    // 4, 2, # before the assistant's answer (it comes after 25 appends, ~0.5 s): `#` sends
    // them at once, with a response. Then 9 while that answer is in progress (the fake never
    // finishes it): sent once the caller has pressed nothing for KEYS_SETTLE, without asking
    // for another response over the one in progress.
    plan.dtmf = vec![
        (ms(100), '4'),
        (ms(200), '2'),
        (ms(300), '#'),
        (ms(1_500), '9'),
    ];
    let outcome = run_call(plan).await.expect("call runs");
    server.stop().await;
    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);

    let sent: Vec<Value> = log
        .lock()
        .unwrap()
        .events
        .iter()
        .map(|(_, v)| v.clone())
        .filter(|v| v["type"] != "input_audio_buffer.append")
        .collect();
    let types: Vec<&str> = sent.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "session.update",
            "response.create",
            "conversation.item.create",
            "response.create",
            "conversation.item.create",
        ]
    );
    let text = |v: &Value| {
        assert_eq!(v["item"]["type"], "message");
        assert_eq!(v["item"]["role"], "user");
        assert_eq!(v["item"]["content"][0]["type"], "input_text");
        v["item"]["content"][0]["text"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        text(&sent[2]),
        "[The caller pressed these phone keys: 4 2 #]"
    );
    assert_eq!(text(&sent[4]), "[The caller pressed these phone keys: 9]");
    // The key answer is a plain response (the session's instructions), not the greeting.
    assert!(sent[3]["response"].is_null(), "{}", sent[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assistant_ends_or_transfers_the_call_with_its_tools_after_its_answer_played() {
    let (end_url, end_log) = fake_realtime_calling(None, Some(("end_call", "{}"))).await;
    let (transfer_url, _) =
        fake_realtime_calling(None, Some(("transfer_call", r#"{"to":"+15557654321"}"#))).await;
    let (refused_url, refused_log) =
        fake_realtime_calling(None, Some(("transfer_call", r#"{"to":"+19005550100"}"#))).await;
    let allow = [("TRANSFER_ALLOW", "+1555")];
    let ending = start_with(&end_url, &allow).await;
    let transferring = start_with(&transfer_url, &allow).await;
    let refusing = start_with(&refused_url, &allow).await;
    let (a, b, c) = tokio::join!(
        run_call(plan(&ending, 40, Duration::from_secs(8))),
        run_call(plan(&transferring, 41, Duration::from_secs(8))),
        run_call(plan(&refusing, 42, Duration::from_secs(8))),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let answer_bytes = DELTAS * DELTA_MS * 8;
    for (name, outcome, close) in [
        ("end_call", &a, "call ended by agent"),
        ("transfer_call", &b, "call transferred by agent"),
    ] {
        assert_eq!(outcome.close, Some((1000, close.to_owned())), "{name}");
        // The whole answer played before the call ended.
        assert!(
            played_bytes(outcome).len() >= answer_bytes,
            "{name}: {} of {answer_bytes} bytes played",
            played_bytes(outcome).len()
        );
    }
    let outputs = events(&end_log, "conversation.item.create");
    assert!(
        outputs.iter().any(
            |e| e["item"]["type"] == "function_call_output" && e["item"]["call_id"] == "call_1"
        ),
        "{outputs:?}"
    );
    let record = transferring
        .state
        .store
        .call(&support::call_sid(41))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.end_reason.as_deref(), Some("transfer"));
    assert_eq!(
        record.transfer.map(|t| t.to.as_str().to_owned()).as_deref(),
        Some("+15557654321")
    );
    // Outside TRANSFER_ALLOW: the assistant is told why and asked to go on; the call goes on.
    assert_eq!(c.close.as_ref().map(|c| c.0), Some(1000));
    assert_ne!(
        c.close.as_ref().map(|c| c.1.as_str()),
        Some("call transferred by agent")
    );
    let refused: Vec<Value> = events(&refused_log, "conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let output: Value =
        serde_json::from_str(refused[0]["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["ok"], false);
    assert!(
        output["error"].as_str().unwrap().contains("TRANSFER_ALLOW"),
        "{output}"
    );
    assert!(!events(&refused_log, "response.create").is_empty());
    ending.stop().await;
    transferring.stop().await;
    refusing.stop().await;
}
