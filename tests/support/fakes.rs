//! Fakes of what Handset reaches out to on the recording path, over loopback: Twilio's media
//! server (the `RecordingUrl.wav` downloads, with Basic auth) and an agent that transcribes
//! recordings (`docs/agent-protocol.md`). Used by tests/recording_fetch.rs (workers in this
//! process), tests/fleet/ (workers in real `handset` processes) and tests/twilio_rest.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A 16-bit mono 8 kHz WAV of `samples` samples (a sawtooth), as Twilio serves recordings.
pub fn wav(samples: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..samples {
        writer.write_sample((i % 200) as i16 * 50).unwrap();
    }
    writer.finalize().unwrap();
    out.into_inner()
}

/// Milliseconds since the Unix epoch (the clock the store's lease times use).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| d.as_millis() as u64)
}

/// One request the media server received.
#[derive(Clone, Debug)]
pub struct Download {
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub auth: Option<String>,
    /// When its head had arrived, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// What to do with the next requests for a path.
#[derive(Debug, Default)]
struct Rule {
    /// Answer 503 this many more times.
    fail: usize,
    /// Never answer the next request: hold it open until the client goes away.
    hold: bool,
}

/// A plain-HTTP stand-in for Twilio's media server: every path serves the same WAV, unless a
/// rule says to fail or hold the request.
#[derive(Clone)]
pub struct MediaServer {
    /// `http://127.0.0.1:port`: prefix of every `RecordingUrl`.
    pub base: String,
    downloads: Arc<Mutex<Vec<Download>>>,
    rules: Arc<Mutex<HashMap<String, Rule>>>,
}

/// Longest a held request is kept open (the client normally goes away much sooner).
const HOLD_LIMIT: Duration = Duration::from_secs(120);

impl MediaServer {
    /// Starts serving `body` on a loopback port.
    pub async fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            base: format!("http://{}", listener.local_addr().unwrap()),
            downloads: Arc::default(),
            rules: Arc::default(),
        };
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(shared.clone().answer(tcp, body.clone()));
            }
        });
        server
    }

    /// The next `times` requests for `path` are answered 503.
    pub fn fail(&self, path: &str, times: usize) {
        self.rules
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .fail = times;
    }

    /// The next request for `path` is never answered: it is held open until the client goes
    /// away (a downloader killed mid-download).
    pub fn hold_next(&self, path: &str) {
        self.rules
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .hold = true;
    }

    /// Every request received so far, in arrival order.
    pub fn downloads(&self) -> Vec<Download> {
        self.downloads.lock().unwrap().clone()
    }

    /// The requests received for `path`.
    pub fn downloads_of(&self, path: &str) -> Vec<Download> {
        self.downloads()
            .into_iter()
            .filter(|d| d.path == path)
            .collect()
    }

    async fn answer(self, mut tcp: tokio::net::TcpStream, body: Vec<u8>) {
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
        self.downloads.lock().unwrap().push(Download {
            path: path.clone(),
            auth,
            at_unix_ms: unix_ms(),
        });
        let (fail, hold) = {
            let mut rules = self.rules.lock().unwrap();
            match rules.get_mut(&path) {
                Some(rule) if rule.hold => {
                    rule.hold = false;
                    (false, true)
                }
                Some(rule) if rule.fail > 0 => {
                    rule.fail -= 1;
                    (true, false)
                }
                _ => (false, false),
            }
        };
        if hold {
            // Read until the client closes (or the limit passes); answer nothing.
            let _ = tokio::time::timeout(HOLD_LIMIT, async {
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            return;
        }
        let response = if fail {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec()
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
    }
}

/// What the transcription agent received: each `recording` message and the audio bytes that
/// followed it, in the order transcribed.
pub type Offers = Arc<Mutex<Vec<(Value, usize)>>>;

/// An agent that answers each offered recording with the final transcript
/// `message <RecordingSid> of <bytes> bytes`. Returns its `ws://` URL.
pub async fn transcriber() -> (String, Offers) {
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

/// A loopback listener that counts the connections it gets and answers none: proof that
/// nothing was sent to a host that must not be contacted. Returns its `http://` base.
pub async fn watcher() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<usize>> = Arc::default();
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            *shared.lock().unwrap() += 1;
            drop(tcp);
        }
    });
    (base, seen)
}
