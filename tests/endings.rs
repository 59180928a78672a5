//! How calls end, end to end over loopback: a real server, the Twilio call simulator, and
//! agents written here that speak docs/agent-protocol.md. After each stream Twilio requests the
//! `<Connect action>`; the test sends it (signed) and reads the TwiML, as Twilio would:
//! an agent that hangs up → `<Hangup/>`; one that transfers → `<Dial>` to its number (and the
//! `<Dial action>` outcome is stored); a transfer outside `TRANSFER_ALLOW` is refused back to the
//! agent and the call goes on; a caller who hangs up → `<Hangup/>`; an agent that is down → the
//! apology and `<Record>`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use handset_sim::run_call;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Reply, TOKEN, TestServer, call_sid, post_form, twilio_sign, voice_params};

/// What the agent does once the call starts.
#[derive(Clone, Copy)]
enum Script {
    /// Some audio, then `hangup`.
    Hangup,
    /// Some audio, then `transfer` to `to`; on `transfer_refused`, `hangup`.
    Transfer { to: &'static str },
}

/// Starts an agent on a loopback port; returns its URL and every text message it received.
async fn agent(script: Script) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let event: Value = serde_json::from_str(&text).unwrap();
                    log.lock().unwrap().push(event.clone());
                    let replies: Vec<String> = match (script, event["type"].as_str()) {
                        (_, Some("start")) => {
                            let tone: Vec<u8> = (0..4_800u32)
                                .flat_map(|i| (((i % 40) as i16 - 20) * 300).to_le_bytes())
                                .collect();
                            if ws.send(Message::binary(tone)).await.is_err() {
                                return;
                            }
                            match script {
                                Script::Hangup => vec![r#"{"type":"hangup"}"#.to_owned()],
                                Script::Transfer { to } => vec![
                                    serde_json::json!({"type": "transfer", "to": to,
                                        "caller_id": "+15550001111", "timeout_s": 20})
                                    .to_string(),
                                ],
                            }
                        }
                        (_, Some("transfer_refused")) => vec![r#"{"type":"hangup"}"#.to_owned()],
                        _ => Vec::new(),
                    };
                    for reply in replies {
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Twilio's signed `<Connect action>` (or `<Dial action>`) request for call `n`.
async fn action(server: &TestServer, n: u32, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut params = voice_params(n);
    params.retain(|(k, _)| *k != "CallStatus");
    let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(extra);
    let sig = twilio_sign(TOKEN, &server.url(path), &pairs);
    let reply = post_form(
        server,
        path,
        &pairs,
        &[("X-Twilio-Signature", sig.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply
}

/// The `<Connect action>` for call `n`, still in progress.
async fn stream_ended(server: &TestServer, n: u32) -> Reply {
    action(
        server,
        n,
        "/webhook/stream_ended",
        &[("CallStatus", "in-progress")],
    )
    .await
}

async fn call(server: &TestServer, n: u32) -> handset_sim::CallOutcome {
    let mut plan = server.plan(n);
    plan.duration = Duration::from_secs(10);
    run_call(plan).await.expect("the call runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_hangs_up_ends_the_call_without_voicemail() {
    let (url, _) = agent(Script::Hangup).await;
    let server = TestServer::start(&[("AGENT_URL", url.as_str())]).await;
    let outcome = call(&server, 1).await;
    assert_eq!(
        outcome.close,
        Some((1000, "call ended by agent".to_owned()))
    );
    let next = stream_ended(&server, 1).await;
    assert!(next.body.contains("<Hangup />"), "{}", next.body);
    assert!(!next.body.contains("<Record"), "{}", next.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_transfers_gets_the_caller_dialled_and_the_outcome_is_kept() {
    let (url, _) = agent(Script::Transfer { to: "+15557654321" }).await;
    let server = TestServer::start(&[
        ("AGENT_URL", url.as_str()),
        ("TRANSFER_ALLOW", "+1555, pbx.example.com"),
    ])
    .await;
    let outcome = call(&server, 2).await;
    assert_eq!(
        outcome.close,
        Some((1000, "call transferred by agent".to_owned()))
    );
    let next = stream_ended(&server, 2).await;
    assert!(
        next.body.contains(&format!(
            r#"<Dial action="{}" callerId="+15550001111" method="POST" timeout="20"><Number>+15557654321</Number></Dial>"#,
            server.url("/webhook/dial_ended")
        )),
        "{}",
        next.body
    );
    // Nobody answered: the caller may leave a message, and the outcome is stored.
    let after = action(
        &server,
        2,
        "/webhook/dial_ended",
        &[
            ("CallStatus", "in-progress"),
            ("DialCallStatus", "no-answer"),
        ],
    )
    .await;
    assert!(after.body.contains("<Record"), "{}", after.body);
    let record = server
        .state
        .store
        .call(&call_sid(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.end_reason.as_deref(), Some("transfer"));
    assert_eq!(record.transfer_status.as_deref(), Some("no-answer"));
    // Answered and over: the call ends.
    let after = action(
        &server,
        2,
        "/webhook/dial_ended",
        &[
            ("CallStatus", "in-progress"),
            ("DialCallStatus", "completed"),
        ],
    )
    .await;
    assert!(after.body.contains("<Hangup />"), "{}", after.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_outside_the_allow_list_is_refused_back_to_the_agent() {
    let (url, seen) = agent(Script::Transfer { to: "+19005550100" }).await;
    let server =
        TestServer::start(&[("AGENT_URL", url.as_str()), ("TRANSFER_ALLOW", "+1555")]).await;
    let outcome = call(&server, 3).await;
    // The agent was told, and hung up instead.
    let refused: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "transfer_refused")
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["to"], "+19005550100");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("TRANSFER_ALLOW"),
        "{refused:?}"
    );
    assert_eq!(
        outcome.close,
        Some((1000, "call ended by agent".to_owned()))
    );
    let next = stream_ended(&server, 3).await;
    assert!(!next.body.contains("<Dial"), "{}", next.body);
    assert!(next.body.contains("<Hangup />"), "{}", next.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_hears_nothing_more_and_a_dead_agent_leads_to_voicemail() {
    // The echo agent; the simulated caller hangs up (Twilio's `stop`) after two seconds.
    let server = TestServer::start(&[]).await;
    let mut plan = server.plan(4);
    plan.duration = Duration::from_secs(2);
    let outcome = run_call(plan).await.unwrap();
    assert_eq!(outcome.close.map(|c| c.0), Some(1000));
    let record = server
        .state
        .store
        .call(&call_sid(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.end_reason.as_deref(), Some("completed"));
    for status in ["completed", "in-progress"] {
        let next = action(
            &server,
            4,
            "/webhook/stream_ended",
            &[("CallStatus", status)],
        )
        .await;
        assert!(next.body.contains("<Hangup />"), "{status}: {}", next.body);
        assert!(!next.body.contains("<Say"), "{status}: {}", next.body);
    }
    server.stop().await;

    // An agent nobody answers for: the apology, then a recorded message.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("ws://{}/", l.local_addr().unwrap())
    };
    let server = TestServer::start(&[("AGENT_URL", closed.as_str())]).await;
    let outcome = call(&server, 5).await;
    assert_eq!(outcome.close, Some((1000, "agent failed".to_owned())));
    let next = stream_ended(&server, 5).await;
    assert!(next.body.contains("<Record"), "{}", next.body);
    server.stop().await;
}
