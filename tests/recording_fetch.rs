//! The recording path over loopback: a fake Twilio media server that fails twice before it
//! serves the WAV (checked for Basic auth with the account SID and auth token), a fake agent
//! that transcribes the `recording` message, and a restart between the download and the
//! transcription: the status log is read back, nothing is lost and nothing is fetched twice.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use handset_shell::Secret;
use handset_shell::recording::{
    self, RecordingConfig, Retry, STATUS_FILE, Status, StatusLog, backlog,
};
use handset_shell::store::RecordingEvent;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";

fn wav(samples: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..samples)
        .flat_map(|i| ((i % 200) as i16 * 50).to_le_bytes())
        .collect();
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    for field in [16u32.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec()] {
        v.extend_from_slice(&field);
    }
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&8_000u32.to_le_bytes());
    v.extend_from_slice(&16_000u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&data);
    v
}

/// Requests per path, with their Authorization header.
type Hits = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A plain-HTTP server: each path in `failures` answers 503 that many times, then the WAV.
async fn media_server(failures: HashMap<String, usize>, body: Vec<u8>) -> (String, Hits) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits: Hits = Arc::default();
    let shared = Arc::clone(&hits);
    let failures = Arc::new(Mutex::new(failures));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let hits = Arc::clone(&shared);
            let failures = Arc::clone(&failures);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .map(str::to_owned);
                hits.lock().unwrap().push((path.clone(), auth));
                let fail = {
                    let mut f = failures.lock().unwrap();
                    match f.get_mut(&path) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                let response = if fail {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                } else {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: audio/x-wav\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                };
                let _ = tcp.write_all(&response).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (base, hits)
}

/// What the transcription agent received: the `recording` message and the audio bytes.
type Offers = Arc<Mutex<Vec<(Value, usize)>>>;

async fn transcriber() -> (String, Offers) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    let offers: Offers = Arc::default();
    let shared = Arc::clone(&offers);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let offers = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut offer = Value::Null;
                let mut bytes = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let v: Value = serde_json::from_str(&t).unwrap();
                            if v["type"] == "recording" {
                                offer = v;
                            } else if v["type"] == "recording_end" {
                                let text = format!(
                                    "message {} of {bytes} bytes",
                                    offer["recordingSid"].as_str().unwrap_or("")
                                );
                                offers.lock().unwrap().push((offer.clone(), bytes));
                                let reply =
                                    json!({"type": "transcript", "kind": "final", "text": text});
                                let _ = ws.send(Message::text(reply.to_string())).await;
                            }
                        }
                        Message::Binary(b) => bytes += b.len(),
                        _ => {}
                    }
                }
            });
        }
    });
    (url, offers)
}

fn config(dir: &Path, agent: Option<String>) -> RecordingConfig {
    RecordingConfig {
        data_dir: dir.to_path_buf(),
        auth_token: Some(Secret::new(TOKEN)),
        agent: agent.map(|url| (url, None)),
        retry: Retry {
            attempts: 4,
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        allow_http: true,
        timeout: Duration::from_secs(5),
    }
}

fn event(base: &str, sid: &str) -> RecordingEvent {
    RecordingEvent {
        received_unix_ms: 1,
        call_sid: format!("CA{sid}"),
        account_sid: ACCOUNT.to_owned(),
        recording_sid: sid.to_owned(),
        recording_url: format!("{base}/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}"),
        duration_secs: Some(2),
        digits: None,
    }
}

async fn run_once(config: RecordingConfig, backlog: Vec<RecordingEvent>) {
    let (tx, rx) = mpsc::channel(4);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), recording::run(config, rx, backlog))
        .await
        .expect("recording task finishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_fetched_with_retries_once_and_transcribed_after_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "handset-recordings-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let body = wav(16_000);
    let path1 = format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE1.wav");
    let (base, hits) = media_server(HashMap::from([(path1.clone(), 2)]), body.clone()).await;
    let stored = vec![event(&base, "RE1"), event(&base, "RE2")];

    // First run: the agent is down, so both are fetched but not transcribed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("ws://{}/agent", dead.local_addr().unwrap());
    drop(dead);
    let log = StatusLog::new(&dir);
    let todo = backlog(&log, &stored);
    assert_eq!(todo.len(), 2);
    run_once(config(&dir, Some(dead_url)), todo).await;

    let requests = hits.lock().unwrap().clone();
    let count = |p: &str| requests.iter().filter(|(path, _)| path == p).count();
    assert_eq!(count(&path1), 3, "failed twice, then fetched");
    assert_eq!(count(&path1.replace("RE1", "RE2")), 1);
    let basic = format!("Basic {}", BASE64.encode(format!("{ACCOUNT}:{TOKEN}")));
    assert!(
        requests
            .iter()
            .all(|(_, a)| a.as_deref() == Some(basic.as_str())),
        "{requests:?}"
    );
    let latest = log.latest();
    assert_eq!(latest["RE1"].status, Status::Fetched);
    assert_eq!(latest["RE1"].attempts, 3);
    assert_eq!(latest["RE2"].status, Status::Fetched);
    let saved = std::fs::read(dir.join("recordings/RE1.wav")).unwrap();
    assert_eq!(saved, body, "saved as downloaded");

    // Restart: the log is read back; both still need transcribing, neither is fetched again.
    let (agent_url, offers) = transcriber().await;
    let log = StatusLog::new(&dir);
    let todo = backlog(&log, &stored);
    assert_eq!(todo.len(), 2, "nothing lost across the restart");
    run_once(config(&dir, Some(agent_url.clone())), todo).await;
    assert_eq!(hits.lock().unwrap().len(), 4, "nothing fetched twice");
    let offers = offers.lock().unwrap().clone();
    assert_eq!(offers.len(), 2);
    let (offer, bytes) = &offers[0];
    assert_eq!(offer["recordingSid"], "RE1");
    assert_eq!(offer["callSid"], "CARE1");
    assert_eq!(offer["duration_s"], 2);
    assert_eq!(offer["audio"]["sample_rate"], 8_000);
    assert_eq!(offer["audio"]["encoding"], "pcm16le");
    assert_eq!(*bytes, 32_000, "all the audio was offered");
    let latest = log.latest();
    assert_eq!(latest["RE1"].status, Status::Transcribed);
    assert_eq!(
        latest["RE1"].transcript.as_deref(),
        Some("message RE1 of 32000 bytes")
    );
    assert_eq!(latest["RE2"].status, Status::Transcribed);

    // A third start has nothing left to do.
    assert!(backlog(&StatusLog::new(&dir), &stored).is_empty());
    let lines = std::fs::read_to_string(dir.join(STATUS_FILE)).unwrap();
    assert_eq!(
        lines.lines().count(),
        4,
        "fetched ×2, transcribed ×2:\n{lines}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_never_downloads_is_marked_failed_after_bounded_retries() {
    let dir = std::env::temp_dir().join(format!(
        "handset-recordings-fail-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let path = format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE9.wav");
    let (base, hits) = media_server(HashMap::from([(path.clone(), 100)]), wav(800)).await;
    let stored = vec![event(&base, "RE9")];
    let log = StatusLog::new(&dir);
    run_once(config(&dir, None), backlog(&log, &stored)).await;
    assert_eq!(hits.lock().unwrap().len(), 4, "bounded: 4 attempts");
    let latest = log.latest();
    assert_eq!(latest["RE9"].status, Status::Failed);
    assert!(latest["RE9"].error.as_deref().unwrap().contains("503"));
    assert!(backlog(&log, &stored).is_empty(), "not retried forever");
    // A plain-http URL is refused unless allowed (production: https only).
    let mut https_only = config(&dir, None);
    https_only.allow_http = false;
    let other = event(&base, "RE10");
    assert_eq!(
        recording::process(&https_only, &log, &other).await,
        Some(Status::Failed)
    );
    assert_eq!(hits.lock().unwrap().len(), 4, "no request made");
    let _ = std::fs::remove_dir_all(&dir);
}
