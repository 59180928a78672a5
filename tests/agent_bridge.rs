//! End to end over loopback: the real server bridged to a remote agent (`AGENT_URL`), driven by
//! the Twilio call simulator. The agents are written here and speak the protocol in
//! `docs/agent-protocol.md`: audio flows both ways, burst agent audio is paced at 20 ms, barge-in
//! reaches the agent with the time the caller heard, an agent that is down at start or drops
//! mid-call gives the apology and a close that lets Twilio fall back, and the reference agent
//! example works. The latency the bridge adds is measured and printed, not asserted.

#![allow(clippy::disallowed_methods)] // an end-to-end test timestamps what it sees

#[path = "../examples/reference_agent.rs"]
#[allow(dead_code)]
mod reference_agent;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handset_shell::agent::APOLOGY;
use handset_sim::{CallOutcome, CallPlan, ReceivedKind, run_call};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Logs, TestServer, pacer_underruns, played_bytes, speech};

const AGENT_SECRET: &str = "agent-bearer-secret";

/// A server whose calls go to `agent_url` (or the echo agent), with extra variables.
async fn start(agent_url: Option<&str>, extra: &[(&str, &str)]) -> TestServer {
    let mut vars = vec![("ENGINE_WORKERS", "1")];
    if let Some(url) = agent_url {
        vars.push(("AGENT_URL", url));
        vars.push(("AGENT_TOKEN", AGENT_SECRET));
    }
    vars.extend_from_slice(extra);
    TestServer::start(&vars).await
}

/// Call `n` against `server`, `duration` long.
fn plan(server: &TestServer, n: u32, duration: Duration) -> CallPlan {
    let mut plan = server.plan(n);
    plan.duration = duration;
    plan
}

/// Something the test agent saw, with when.
#[derive(Clone, Debug)]
enum Seen {
    Handshake {
        authorization: Option<String>,
    },
    Text(Value),
    Audio(usize),
    /// The agent finished writing its answer to the message before.
    Replied,
}

type Log = Arc<Mutex<Vec<(Instant, Seen)>>>;

/// What a scripted agent does.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// On start: declare `rate`, send `ms` of tone in one message, a mark, transcripts.
    Burst { rate: u32, ms: u32 },
    /// On each speech_ended: send 500 ms of tone at once, with a mark.
    Reply,
    /// On start: send `ms` of tone, then close the connection after `drop_after`.
    DropAfter { ms: u32, drop_after: Duration },
    /// On start: 2.8 s of tone and a mark (all of it fits Handset's ring); on barge-in: send
    /// `clear` (like a real agent stopping its answer).
    ClearOnBargeIn,
}

fn tone(rate: u32, ms: u32) -> Vec<u8> {
    let n = (rate * ms / 1000) as usize;
    (0..n)
        .flat_map(|i| {
            let phase = i as f32 * 440.0 / rate as f32 * std::f32::consts::TAU;
            ((phase.sin() * 8_000.0) as i16).to_le_bytes()
        })
        .collect()
}

/// Starts a scripted agent on a loopback port; returns its ws URL and its log.
async fn agent(script: Script) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = Arc::clone(&shared);
            tokio::spawn(run_agent(tcp, script, log));
        }
    });
    (url, log)
}

async fn run_agent(tcp: tokio::net::TcpStream, script: Script, log: Log) {
    let _ = tcp.set_nodelay(true);
    let record = |seen: Seen| log.lock().unwrap().push((Instant::now(), seen));
    let mut authorization = None;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
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
    record(Seen::Handshake { authorization });
    let (mut tx, mut rx) = ws.split();
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            msg = rx.next() => msg,
            () = async {
                match drop_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => return, // dropping both halves closes the TCP connection without a close frame
        };
        let Some(Ok(msg)) = msg else { return };
        let event: Value = match msg {
            Message::Binary(b) => {
                record(Seen::Audio(b.len()));
                continue;
            }
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            _ => continue,
        };
        record(Seen::Text(event.clone()));
        let mut out: Vec<Message> = Vec::new();
        match (script, event["type"].as_str().unwrap()) {
            (Script::Burst { rate, ms }, "start") => {
                out.push(Message::text(
                    json!({"type": "audio_format", "encoding": "pcm16le", "sample_rate": rate})
                        .to_string(),
                ));
                out.push(Message::binary(tone(rate, ms)));
                out.push(Message::text(r#"{"type":"mark","name":"m1"}"#));
                out.push(Message::text(
                    r#"{"type":"transcript","kind":"partial","text":"hel"}"#,
                ));
                out.push(Message::text(
                    r#"{"type":"transcript","kind":"final","text":"hello"}"#,
                ));
            }
            (Script::Reply, "speech_ended") => {
                out.push(Message::binary(tone(16_000, 500)));
                out.push(Message::text(r#"{"type":"mark","name":"reply"}"#));
            }
            (Script::DropAfter { ms, drop_after }, "start") => {
                out.push(Message::binary(tone(16_000, ms)));
                drop_at = Some(tokio::time::Instant::now() + drop_after);
            }
            (Script::ClearOnBargeIn, "start") => {
                out.push(Message::binary(tone(16_000, 2_800)));
                out.push(Message::text(r#"{"type":"mark","name":"long"}"#));
            }
            (Script::ClearOnBargeIn, "barge_in") => {
                out.push(Message::text(r#"{"type":"clear"}"#));
            }
            _ => {}
        }
        let replied = !out.is_empty();
        for m in out {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        if replied {
            record(Seen::Replied);
        }
    }
}

fn texts(log: &Log, kind: &str) -> Vec<(Instant, Value)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(t, s)| match s {
            Seen::Text(v) if v["type"] == kind => Some((*t, v.clone())),
            _ => None,
        })
        .collect()
}

fn media_times(outcome: &CallOutcome) -> Vec<Duration> {
    outcome
        .received
        .iter()
        .filter(|r| matches!(r.kind, ReceivedKind::Media(_)))
        .map(|r| r.at)
        .collect()
}

/// `lead` of silence, then `clip`, each `at` in turn.
fn caller_audio(clip: &[i16], starts: &[Duration]) -> Arc<Vec<i16>> {
    let end = starts.last().map_or(0, |s| (s.as_millis() * 8) as usize) + clip.len();
    let mut audio = vec![0i16; end];
    for s in starts {
        let at = (s.as_millis() * 8) as usize;
        audio[at..at + clip.len()].copy_from_slice(clip);
    }
    Arc::new(audio)
}

/// True when `played` ends with the apology (µ-law 0x7F/0xFF normalised).
fn ends_with_apology(played: &[u8]) -> bool {
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    let apology: Vec<u8> = APOLOGY.iter().copied().map(norm).collect();
    // Partial frames are padded with silence after the clip.
    let trimmed = {
        let mut end = played.len();
        while end > 0 && played[end - 1] == 0xFF {
            end -= 1;
        }
        &played[..end]
    };
    let apology_trimmed = {
        let mut end = apology.len();
        while end > 0 && apology[end - 1] == 0xFF {
            end -= 1;
        }
        &apology[..end]
    };
    trimmed.ends_with(apology_trimmed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_flows_both_ways_and_burst_agent_audio_is_paced_at_20_ms() {
    let (url, log) = agent(Script::Burst {
        rate: 24_000,
        ms: 2_000,
    })
    .await;
    let logs = Logs::capture();
    let server = start(Some(&url), &[]).await;
    let plan = plan(&server, 1, Duration::from_secs(4));
    let call_sid = plan.call_sid.clone();
    let outcome = run_call(plan).await.expect("call runs");
    server.stop().await;
    let underruns = pacer_underruns(&logs, &call_sid).await;

    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    assert_eq!(outcome.close.as_ref().map(|c| c.0), Some(1000));

    // Handset → agent: authenticated, `start` first, then 16 kHz 20 ms frames.
    let seen = log.lock().unwrap().clone();
    assert!(matches!(
        &seen[0].1,
        Seen::Handshake { authorization: Some(a) } if *a == format!("Bearer {AGENT_SECRET}")
    ));
    let Seen::Text(start) = &seen[1].1 else {
        panic!("start first: {:?}", seen[1]);
    };
    assert_eq!(start["type"], "start");
    assert_eq!(start["callSid"], call_sid);
    assert_eq!(start["from"], "+15550001111");
    assert_eq!(start["audio"]["sample_rate"], 16_000);
    assert_eq!(start["audio"]["encoding"], "pcm16le");
    assert!(start["customParameters"].get("streamToken").is_none());
    let frames: Vec<usize> = seen
        .iter()
        .filter_map(|(_, s)| match s {
            Seen::Audio(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert!(frames.iter().all(|&n| n == 640), "20 ms at 16 kHz PCM16");
    assert!(
        frames.len() as u64 >= outcome.frames_sent * 3 / 4,
        "{} of {} caller frames reached the agent",
        frames.len(),
        outcome.frames_sent
    );
    assert_eq!(texts(&log, "stop").len(), 1, "stop at the end");

    // Agent → Handset: 2 s sent in one message at 24 kHz reach Twilio as 100 frames, and no frame
    // leaves before its slot: frame n goes at anchor + (n − 3)·20 ms (three frames of lead).
    let times = media_times(&outcome);
    assert!(
        (100..=101).contains(&times.len()),
        "{} frames for 2 s of agent audio",
        times.len()
    );
    // The schedule's anchor, estimated robustly: the median over frames of arrival − slot.
    let slot = |n: usize| Duration::from_millis(20 * (n as u64).saturating_sub(3));
    let mut anchors: Vec<Duration> = times
        .iter()
        .enumerate()
        .map(|(n, t)| t.saturating_sub(slot(n)))
        .collect();
    anchors.sort();
    let anchor = anchors[anchors.len() / 2];
    let mut worst_early = Duration::ZERO;
    let mut worst_late = Duration::ZERO;
    for (n, t) in times.iter().enumerate() {
        let due = anchor + slot(n);
        worst_early = worst_early.max(due.saturating_sub(*t));
        worst_late = worst_late.max(t.saturating_sub(due));
    }
    let span = times[times.len() - 1] - times[0];
    println!(
        "pacing of a 2 s burst: {} frames over {span:?}; earliest {worst_early:?} before its slot, latest {worst_late:?} after",
        times.len(),
    );
    // A released burst would put frames up to 1.9 s early; socket noise is a few ms.
    assert!(
        worst_early <= Duration::from_millis(10),
        "a frame left {worst_early:?} before its 20 ms slot"
    );
    assert!(
        span + Duration::from_millis(10) >= slot(times.len() - 1),
        "{} frames in {span:?}",
        times.len()
    );
    // The mark after the audio comes back once it has played.
    let played = texts(&log, "mark_played");
    assert_eq!(played.len(), 1);
    assert_eq!(played[0].1["name"], "m1");
    assert_eq!(underruns, 0, "the pacer never starved the call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_reaches_the_agent_with_the_time_the_caller_heard() {
    let (url, log) = agent(Script::ClearOnBargeIn).await;
    let server = start(Some(&url), &[]).await;
    let mut plan = plan(&server, 2, Duration::from_millis(4_500));
    plan.audio = caller_audio(&speech(), &[Duration::from_secs(2)]);
    let outcome = run_call(plan).await.expect("call runs");
    server.stop().await;

    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    let barge = texts(&log, "barge_in");
    assert_eq!(barge.len(), 1, "one barge-in");
    let b = &barge[0].1;
    // Everything played was agent audio; the clear cut it.
    let clear_at = outcome
        .received
        .iter()
        .find(|r| r.kind == ReceivedKind::Clear)
        .expect("clear sent")
        .at;
    let played_ms = played_bytes(&outcome).len() as u64 / 8;
    let heard_ms = b["heard_ms"].as_u64().unwrap();
    println!(
        "barge-in: heard_ms {heard_ms}, simulated Twilio played {played_ms} ms before the clear at {clear_at:?}"
    );
    assert!(
        heard_ms.abs_diff(played_ms) <= 20,
        "heard_ms {heard_ms} vs played {played_ms}"
    );
    assert_eq!(b["interrupted_mark"], "long");
    assert!(b["last_played_mark"].is_null());
    assert!(b["at_ms"].as_u64().unwrap() >= 1_900);
    let cleared = texts(&log, "mark_cleared");
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].1["name"], "long");
    assert!(texts(&log, "mark_played").is_empty());
    assert!(
        texts(&log, "speech_started")[0].0 <= barge[0].0,
        "speech_started is reported too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_at_start_gives_the_apology_then_a_close_for_the_fallback() {
    // Nothing listens on a port just freed; and a listener that never answers the handshake.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/", silent.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let refused_url = format!("ws://{closed}/");
    let refused = start(Some(&refused_url), &[]).await;
    let hanging = start(Some(&silent_url), &[("AGENT_CONNECT_TIMEOUT_MS", "300")]).await;
    let (a, b) = tokio::join!(
        run_call(plan(&refused, 3, Duration::from_secs(8))),
        run_call(plan(&hanging, 4, Duration::from_secs(8)))
    );
    refused.stop().await;
    hanging.stop().await;
    for (name, outcome) in [("refused", a.unwrap()), ("timed out", b.unwrap())] {
        assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
        let played = played_bytes(&outcome);
        assert!(
            ends_with_apology(&played),
            "{name}: the caller heard the apology ({} bytes played)",
            played.len()
        );
        assert!(
            played.len() < APOLOGY.len() + 1_600,
            "{name}: and little else"
        );
        assert_eq!(
            outcome.close,
            Some((1000, "agent failed".to_owned())),
            "{name}"
        );
        // The server closed the stream itself, well before the caller would have hung up.
        assert!(
            outcome.frames_sent < 8_000 / 20,
            "{name}: closed by the server after {} frames",
            outcome.frames_sent
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_dropping_mid_call_gives_the_apology_then_a_close_for_the_fallback() {
    let (url, log) = agent(Script::DropAfter {
        ms: 600,
        drop_after: Duration::from_millis(1_500),
    })
    .await;
    let server = start(Some(&url), &[]).await;
    let outcome = run_call(plan(&server, 5, Duration::from_secs(10)))
        .await
        .unwrap();
    server.stop().await;
    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    let played = played_bytes(&outcome);
    assert!(
        played.len() >= 500 * 8 + APOLOGY.len(),
        "the agent's audio, then the apology: {} bytes",
        played.len()
    );
    assert!(ends_with_apology(&played), "apology heard last");
    assert_eq!(outcome.close, Some((1000, "agent failed".to_owned())));
    assert!(outcome.frames_sent < 10_000 / 20, "closed by the server");
    assert!(texts(&log, "start").len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_from_speech_end_to_agent_audio_is_measured() {
    // The same caller audio against the in-process echo agent (answers in the same engine
    // service as the end of speech) and against a remote agent that answers at once. The
    // difference, less the agent's own time, is what the bridge adds: two sockets hops, the
    // client task and the engine's pick-up of the ring.
    let clip = speech();
    let starts = [Duration::from_secs(3), Duration::from_millis(7_000)];
    let audio = caller_audio(&clip, &starts);
    let (url, log) = agent(Script::Reply).await;
    let echo = start(None, &[]).await;
    let remote = start(Some(&url), &[]).await;
    let mut plan_e = plan(&echo, 6, Duration::from_millis(10_000));
    plan_e.audio = Arc::clone(&audio);
    let mut plan_r = plan(&remote, 7, Duration::from_millis(10_000));
    plan_r.audio = audio;
    let (e, r) = tokio::join!(run_call(plan_e), run_call(plan_r));
    echo.stop().await;
    remote.stop().await;
    let (e, r) = (e.unwrap(), r.unwrap());

    // The agent's own time: from reading speech_ended to having written its reply.
    let seen = log.lock().unwrap().clone();
    let mut own = Vec::new();
    let mut heard_end = None;
    for (t, s) in &seen {
        match s {
            Seen::Text(v) if v["type"] == "speech_ended" => heard_end = Some(*t),
            Seen::Replied => {
                if let Some(h) = heard_end.take() {
                    own.push(t.saturating_duration_since(h));
                }
            }
            _ => {}
        }
    }
    let clip_len = Duration::from_millis(clip.len() as u64 / 8);
    let first_after = |outcome: &CallOutcome, from: Duration| {
        media_times(outcome).into_iter().find(|t| *t > from)
    };
    let mut added = Vec::new();
    for s in starts {
        let end = s + clip_len;
        let (Some(te), Some(tr)) = (first_after(&e, end), first_after(&r, end)) else {
            panic!("both agents answered the utterance at {s:?}");
        };
        println!(
            "speech end at {end:?}: echo audio on the wire after {:?}, remote agent after {:?}",
            te - end,
            tr - end
        );
        added.push(tr.as_secs_f64() * 1e3 - te.as_secs_f64() * 1e3);
    }
    assert_eq!(texts(&log, "speech_ended").len(), starts.len());
    assert_eq!(
        own.len(),
        starts.len(),
        "the agent answered every utterance"
    );
    let report: Vec<String> = added
        .iter()
        .zip(&own)
        .map(|(a, o)| {
            let o = o.as_secs_f64() * 1e3;
            format!("{:.1} ms (agent's own time {o:.2} ms)", a - o)
        })
        .collect();
    println!(
        "bridge latency added from speech end to agent audio on the wire, per utterance: {report:?} (target ≤ 5 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_agent_greets_answers_and_hears_the_caller() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let session = reference_agent::handle(tcp, Some(AGENT_SECRET)).await;
            let _ = done_tx.send(session).await;
        }
    });
    let url = format!("ws://{addr}");
    let server = start(Some(&url), &[]).await;
    let clip = speech();
    let mut plan = plan(&server, 8, Duration::from_secs(6));
    plan.audio = caller_audio(&clip, &[Duration::from_millis(1_500)]);
    let outcome = run_call(plan).await.unwrap();
    server.stop().await;
    let session = done_rx.recv().await.unwrap().expect("reference agent ran");

    assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    assert_eq!(session.answers, 1, "one utterance, one answer");
    assert!(session.frames > 200, "heard the caller: {}", session.frames);
    assert_eq!(session.marks_played, vec!["greeting", "answer-1"]);
    // Greeting (two beeps) plus one answer beep, each 250 ms at 24 kHz → 8 kHz on the wire.
    let expected_ms = 2 * 250 + 250;
    let played_ms = played_bytes(&outcome).len() as u64 / 8;
    assert!(
        played_ms.abs_diff(expected_ms) <= 40,
        "played {played_ms} ms, expected about {expected_ms} ms"
    );
    let start = session.start.unwrap();
    assert_eq!(start["callSid"], format!("CA{:032x}", 8));
    assert_eq!(reference_agent::answer(3).len(), 3 * 6_000);
}
