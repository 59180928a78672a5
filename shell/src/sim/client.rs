//! One simulated Twilio call against any Media Streams server, over real sockets.
//!
//! It does what Twilio does: a signed POST to the voice webhook; the TwiML parsed for the
//! `<Stream>` URL and `<Parameter>`s; the WebSocket opened with `audio.twilio.com` offered and
//! the handshake signed over the `wss://` URL as written; `connected`, `start`, then the
//! caller's audio as 20 ms µ-law `media` messages on a real-time schedule with realistic
//! `sequenceNumber`/`chunk`/`timestamp`, optionally impaired (bursts, jitter, skipped chunks).
//! Outbound audio goes into a model of Twilio's playback buffer
//! ([`handset_engine::sim::PlaybackModel`]) that plays at real time, echoes marks when played
//! and flushes on `clear`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use handset_engine::codec;
use handset_engine::sim::{PlaybackModel, PlaybackStats, PlayedAudio};
use handset_engine::{MarkId, PcmFrame};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::signature;

/// How the simulated caller's media reaches the server.
#[derive(Clone, Debug, Default)]
pub struct Impairments {
    /// Send frames in bursts of this many (TCP head-of-line blocking); 0 or 1 = no bursts.
    pub burst: u32,
    /// Random extra delay per frame, up to this (order kept).
    pub jitter: Duration,
    /// Probability of skipping a chunk (timestamps and chunk numbers jump).
    pub skip: f64,
    /// Seed for the impairments.
    pub seed: u64,
}

/// One simulated call.
#[derive(Clone, Debug)]
pub struct CallPlan {
    /// The voice webhook, exactly as Twilio would request it (the URL that is signed).
    pub webhook_url: String,
    /// Connect here instead of resolving URLs (for loopback behind a public URL).
    pub connect_to: Option<SocketAddr>,
    /// Twilio auth token for signing; `None` sends no signatures.
    pub auth_token: Option<String>,
    /// Call identity sent in the webhook and `start`.
    pub call_sid: String,
    /// Caller number.
    pub from: String,
    /// Called number.
    pub to: String,
    /// Caller audio, 8 kHz PCM, played from the start of the stream; silence after it.
    pub audio: Arc<Vec<i16>>,
    /// Total stream length (media is sent until then, then `stop`).
    pub duration: Duration,
    /// DTMF keys to send, by time from stream start.
    pub dtmf: Vec<(Duration, char)>,
    /// Network impairments on caller media.
    pub impair: Impairments,
    /// Offer `Sec-WebSocket-Protocol: audio.twilio.com`.
    pub offer_subprotocol: bool,
    /// Keep every played byte (for content checks); costs memory on long calls.
    pub record_playback: bool,
    /// Replace the `<Parameter>`s from the TwiML (to test refusals); `None` uses them.
    pub override_parameters: Option<Vec<(String, String)>>,
    /// Sign the handshake with this signature instead of the right one (to test refusals).
    pub forge_signature: Option<String>,
}

impl CallPlan {
    /// A plan with defaults: 10 s of silence, no impairments, subprotocol offered.
    pub fn new(webhook_url: impl Into<String>) -> Self {
        Self {
            webhook_url: webhook_url.into(),
            connect_to: None,
            auth_token: None,
            call_sid: "CA00000000000000000000000000000001".to_owned(),
            from: "+15550001111".to_owned(),
            to: "+15550002222".to_owned(),
            audio: Arc::new(Vec::new()),
            duration: Duration::from_secs(10),
            dtmf: Vec::new(),
            impair: Impairments::default(),
            offer_subprotocol: true,
            record_playback: true,
            override_parameters: None,
            forge_signature: None,
        }
    }
}

/// What the simulated Twilio received.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ReceivedKind {
    /// `clear`.
    Clear,
    /// `mark` with this index into [`CallOutcome::mark_names`].
    Mark(usize),
    /// `media` with this many µ-law bytes.
    Media(usize),
}

/// A message from the server, with when it arrived (since stream start).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Received {
    /// Arrival time since the `start` message was sent.
    pub at: Duration,
    /// What it was.
    pub kind: ReceivedKind,
}

/// Everything observed on one simulated call.
#[derive(Debug, Default)]
pub struct CallOutcome {
    /// Messages from the server, in arrival order.
    pub received: Vec<Received>,
    /// Names of marks received, by index.
    pub mark_names: Vec<String>,
    /// Playback model counters.
    pub playback: PlaybackStats,
    /// Audio played, by time since stream start (when recording).
    pub played: Vec<(Duration, Vec<u8>)>,
    /// Messages that were not exactly one of the three documented shapes.
    pub malformed: Vec<String>,
    /// The subprotocol the server answered with.
    pub subprotocol: Option<String>,
    /// The server's close frame, if it closed the socket.
    pub close: Option<(u16, String)>,
    /// Media frames sent.
    pub frames_sent: u64,
    /// Caller audio sent from this time on was its recording; `start` was sent at zero.
    pub connected_after: Duration,
    /// The TwiML the webhook returned.
    pub twiml: String,
}

/// Why a simulated call could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The webhook request failed.
    #[error("webhook: {0}")]
    Webhook(String),
    /// The webhook answered with an error status.
    #[error("webhook answered {status}: {body}")]
    WebhookStatus {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
    /// The TwiML had no `<Connect><Stream url>`.
    #[error("twiml: {0}")]
    Twiml(String),
    /// The WebSocket handshake failed.
    #[error("websocket handshake: {0}")]
    Handshake(String),
}

/// The stream target found in TwiML.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct StreamTarget {
    /// `<Stream url>` as written.
    pub url: String,
    /// `<Parameter name value>` pairs, in order.
    pub parameters: Vec<(String, String)>,
}

/// Finds `<Connect><Stream url=…>` and its `<Parameter>`s in a TwiML document.
pub fn parse_twiml(twiml: &str) -> Result<StreamTarget, SimError> {
    let doc = roxmltree::Document::parse(twiml).map_err(|e| SimError::Twiml(e.to_string()))?;
    let stream = doc
        .descendants()
        .find(|n| n.has_tag_name("Stream") && n.parent().is_some_and(|p| p.has_tag_name("Connect")))
        .ok_or_else(|| SimError::Twiml("no <Connect><Stream> element".to_owned()))?;
    let url = stream
        .attribute("url")
        .ok_or_else(|| SimError::Twiml("<Stream> without url".to_owned()))?
        .to_owned();
    let parameters = stream
        .children()
        .filter(|n| n.has_tag_name("Parameter"))
        .filter_map(|n| {
            Some((
                n.attribute("name")?.to_owned(),
                n.attribute("value")?.to_owned(),
            ))
        })
        .collect();
    Ok(StreamTarget { url, parameters })
}

/// POSTs the voice webhook as Twilio would and returns the TwiML.
pub async fn post_webhook(plan: &CallPlan) -> Result<String, SimError> {
    let params: Vec<(String, String)> = vec![
        (
            "AccountSid".into(),
            "AC00000000000000000000000000000000".into(),
        ),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("CallSid".into(), plan.call_sid.clone()),
        ("CallStatus".into(), "ringing".into()),
        ("Direction".into(), "inbound".into()),
        ("From".into(), plan.from.clone()),
        ("To".into(), plan.to.clone()),
    ];
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let uri: hyper::Uri = plan
        .webhook_url
        .parse()
        .map_err(|e| SimError::Webhook(format!("bad webhook url: {e}")))?;
    let stream = connect(plan.connect_to, &uri).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| SimError::Webhook(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    if let Some(token) = &plan.auth_token {
        let sig = signature::compute(
            token.as_bytes(),
            &plan.webhook_url,
            &params,
            signature::Algorithm::HmacSha1,
        );
        req = req.header("X-Twilio-Signature", sig);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SimError::Webhook(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| SimError::Webhook(e.to_string()))?;
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| SimError::Webhook(e.to_string()))?
        .to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if status != 200 {
        return Err(SimError::WebhookStatus { status, body });
    }
    Ok(body)
}

async fn connect(over: Option<SocketAddr>, uri: &hyper::Uri) -> Result<TcpStream, SimError> {
    let addr = match over {
        Some(a) => a.to_string(),
        None => {
            let host = uri.host().unwrap_or("127.0.0.1");
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https" | "wss") => 443,
                _ => 80,
            });
            format!("{host}:{port}")
        }
    };
    TcpStream::connect(&addr)
        .await
        .map_err(|e| SimError::Webhook(format!("connect {addr}: {e}")))
}

/// Runs one whole call: webhook, TwiML, WebSocket, media, playback model.
pub async fn run_call(plan: CallPlan) -> Result<CallOutcome, SimError> {
    let twiml = post_webhook(&plan).await?;
    let target = parse_twiml(&twiml)?;
    let mut outcome = run_stream(&plan, &target).await?;
    outcome.twiml = twiml;
    Ok(outcome)
}

/// Runs the Media Stream of a call whose TwiML was already fetched.
pub async fn run_stream(plan: &CallPlan, target: &StreamTarget) -> Result<CallOutcome, SimError> {
    let uri: hyper::Uri = target
        .url
        .parse()
        .map_err(|e| SimError::Twiml(format!("bad stream url {:?}: {e}", target.url)))?;
    let tcp = connect(plan.connect_to, &uri).await?;
    let _ = tcp.set_nodelay(true);
    // The handshake goes to the same host and path; the scheme on the wire is plain ws here
    // (TLS, when used, is terminated in front of the server).
    let ws_url = format!(
        "ws://{}{}",
        uri.authority().map_or("127.0.0.1", |a| a.as_str()),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = ws_url
        .into_client_request()
        .map_err(|e| SimError::Handshake(e.to_string()))?;
    if plan.offer_subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("audio.twilio.com"),
        );
    }
    if let Some(token) = &plan.auth_token {
        let sig = plan.forge_signature.clone().unwrap_or_else(|| {
            signature::compute(
                token.as_bytes(),
                &target.url,
                &[],
                signature::Algorithm::HmacSha1,
            )
        });
        request.headers_mut().insert(
            "X-Twilio-Signature",
            HeaderValue::from_str(&sig).map_err(|e| SimError::Handshake(e.to_string()))?,
        );
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| SimError::Handshake(e.to_string()))?;
    let mut outcome = CallOutcome {
        subprotocol: response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..CallOutcome::default()
    };
    let (mut tx, mut rx) = ws.split();
    let stream_sid = format!("MZ{:032x}", rand::random::<u128>());
    let account = "AC00000000000000000000000000000000";
    let mut seq: u64 = 1;
    let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
    let _ = tx.send(Message::text(connected)).await;
    let params: HashMap<String, String> = plan
        .override_parameters
        .clone()
        .unwrap_or_else(|| target.parameters.clone())
        .into_iter()
        .collect();
    let start = serde_json::json!({
        "event": "start",
        "sequenceNumber": seq.to_string(),
        "start": {
            "accountSid": account,
            "streamSid": stream_sid,
            "callSid": plan.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        },
        "streamSid": stream_sid,
    });
    let t0 = Instant::now();
    let _ = tx.send(Message::text(start.to_string())).await;
    seq += 1;

    let mut playback = PlaybackModel::new(plan.record_playback);
    let std_t0 = crate::clock::now();
    let mut rng = ChaCha8Rng::seed_from_u64(plan.impair.seed);
    let total_frames = (plan.duration.as_millis() / 20) as u64;
    let mut frame_index: u64 = 0;
    let mut chunk: u64 = 1;
    let mut next_send = t0 + Duration::from_millis(20);
    let mut pending: Vec<String> = Vec::new();
    let mut dtmf = plan.dtmf.clone();
    dtmf.sort_by_key(|(t, _)| *t);
    let mut dtmf = dtmf.into_iter().peekable();
    let mut mark_ids: HashMap<String, usize> = HashMap::new();
    let mut closed = false;
    let burst = u64::from(plan.impair.burst.max(1));

    loop {
        let echo_at = playback
            .poll_timeout()
            .map(|t| t0 + t.saturating_duration_since(std_t0));
        let wake = match echo_at {
            Some(e) if e < next_send => e,
            _ => next_send,
        };
        tokio::select! {
            msg = rx.next() => {
                let now = Instant::now();
                let std_now = std_t0 + (now - t0);
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        handle_server_message(&text, std_now, now - t0, &mut playback, &mut outcome, &mut mark_ids, &stream_sid);
                    }
                    Some(Ok(Message::Binary(_))) => outcome.malformed.push("binary frame".to_owned()),
                    Some(Ok(Message::Close(frame))) => {
                        outcome.close = Some(close_info(frame));
                        closed = true;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => closed = true,
                }
            }
            () = sleep_until(wake) => {
                let now = Instant::now();
                let std_now = std_t0 + (now - t0);
                while let Some(echo) = playback.poll_echo(std_now) {
                    let name = outcome.mark_names.get(echo.mark.0 as usize).cloned().unwrap_or_default();
                    let msg = serde_json::json!({
                        "event": "mark", "sequenceNumber": seq.to_string(),
                        "streamSid": stream_sid, "mark": {"name": name},
                    });
                    seq += 1;
                    let _ = tx.send(Message::text(msg.to_string())).await;
                }
                if now >= next_send && frame_index < total_frames {
                    // Caller media for this 20 ms, then any DTMF due.
                    let mut pcm = PcmFrame::SILENCE;
                    let base = (frame_index * 160) as usize;
                    for (i, s) in pcm.0.iter_mut().enumerate() {
                        *s = plan.audio.get(base + i).copied().unwrap_or(0);
                    }
                    let payload = STANDARD.encode(codec::encode_frame(&pcm).as_bytes());
                    let skip = plan.impair.skip > 0.0 && rng.gen_bool(plan.impair.skip);
                    if !skip {
                        let msg = serde_json::json!({
                            "event": "media", "sequenceNumber": seq.to_string(),
                            "media": {"track": "inbound", "chunk": chunk.to_string(),
                                      "timestamp": (frame_index * 20).to_string(), "payload": payload},
                            "streamSid": stream_sid,
                        });
                        seq += 1;
                        pending.push(msg.to_string());
                        outcome.frames_sent += 1;
                    }
                    chunk += 1;
                    frame_index += 1;
                    while let Some((at, digit)) = dtmf.peek().copied() {
                        if Duration::from_millis(frame_index * 20) < at {
                            break;
                        }
                        dtmf.next();
                        let msg = serde_json::json!({
                            "event": "dtmf", "streamSid": stream_sid, "sequenceNumber": seq.to_string(),
                            "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
                        });
                        seq += 1;
                        pending.push(msg.to_string());
                    }
                    if frame_index.is_multiple_of(burst) || frame_index == total_frames {
                        if !plan.impair.jitter.is_zero() {
                            let extra = rng.gen_range(0..=plan.impair.jitter.as_micros() as u64);
                            tokio::time::sleep(Duration::from_micros(extra)).await;
                        }
                        for m in pending.drain(..) {
                            if tx.send(Message::text(m)).await.is_err() {
                                closed = true;
                                break;
                            }
                        }
                    }
                    next_send = t0 + Duration::from_millis(20 * (frame_index + 1));
                } else if frame_index >= total_frames && now >= next_send {
                    break;
                }
            }
        }
        if closed {
            break;
        }
    }
    if !closed {
        let stop = serde_json::json!({
            "event": "stop", "sequenceNumber": seq.to_string(),
            "stop": {"accountSid": account, "callSid": plan.call_sid},
            "streamSid": stream_sid,
        });
        let _ = tx.send(Message::text(stop.to_string())).await;
        let _ = tx.send(Message::Close(None)).await;
        // Drain until the server closes (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Close(frame) = m {
                    outcome.close = Some(close_info(frame));
                    break;
                }
            }
        })
        .await;
    }
    outcome.playback = playback.stats();
    outcome.played = playback
        .played()
        .iter()
        .map(|p: &PlayedAudio| (p.start.saturating_duration_since(std_t0), p.bytes.clone()))
        .collect();
    Ok(outcome)
}

fn close_info(frame: Option<CloseFrame>) -> (u16, String) {
    frame.map_or((1005, String::new()), |f| {
        (u16::from(f.code), f.reason.to_string())
    })
}

/// Checks one server message is exactly a documented shape and applies it to the playback.
fn handle_server_message(
    text: &str,
    now: std::time::Instant,
    at: Duration,
    playback: &mut PlaybackModel,
    outcome: &mut CallOutcome,
    mark_ids: &mut HashMap<String, usize>,
    stream_sid: &str,
) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        outcome.malformed.push(format!("not json: {text}"));
        return;
    };
    let Some(obj) = value.as_object() else {
        outcome.malformed.push(format!("not an object: {text}"));
        return;
    };
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = obj.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    };
    if obj.get("streamSid").and_then(|s| s.as_str()) != Some(stream_sid) {
        outcome.malformed.push(format!("wrong streamSid: {text}"));
        return;
    }
    match obj.get("event").and_then(|e| e.as_str()) {
        Some("media") => {
            let payload = obj
                .get("media")
                .and_then(|m| m.as_object())
                .filter(|m| m.len() == 1)
                .and_then(|m| m.get("payload"))
                .and_then(|p| p.as_str())
                .and_then(|p| STANDARD.decode(p).ok());
            match (keys.as_slice(), payload) {
                (["event", "media", "streamSid"], Some(bytes)) if !bytes.is_empty() => {
                    playback.handle_media(now, &bytes);
                    outcome.received.push(Received {
                        at,
                        kind: ReceivedKind::Media(bytes.len()),
                    });
                }
                _ => outcome.malformed.push(format!("bad media: {text}")),
            }
        }
        Some("mark") => {
            let name = obj
                .get("mark")
                .and_then(|m| m.as_object())
                .filter(|m| m.len() == 1)
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str());
            match (keys.as_slice(), name) {
                (["event", "mark", "streamSid"], Some(name)) => {
                    let index = *mark_ids.entry(name.to_owned()).or_insert_with(|| {
                        outcome.mark_names.push(name.to_owned());
                        outcome.mark_names.len() - 1
                    });
                    playback.handle_mark(now, MarkId(index as u64));
                    outcome.received.push(Received {
                        at,
                        kind: ReceivedKind::Mark(index),
                    });
                }
                _ => outcome.malformed.push(format!("bad mark: {text}")),
            }
        }
        Some("clear") if keys.as_slice() == ["event", "streamSid"] => {
            playback.handle_clear(now);
            outcome.received.push(Received {
                at,
                kind: ReceivedKind::Clear,
            });
        }
        _ => outcome.malformed.push(format!("unknown message: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stream_and_its_parameters_in_twiml() {
        let twiml = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi &amp; welcome</Say><Connect action="https://x/webhook/stream_ended"><Stream url="wss://x/ws/twilio-media" statusCallback="https://x/webhook/stream_status"><Parameter name="token" value="a&amp;b" /><Parameter name="from" value="+1555" /></Stream></Connect></Response>"#;
        let target = parse_twiml(twiml).unwrap();
        assert_eq!(target.url, "wss://x/ws/twilio-media");
        assert_eq!(
            target.parameters,
            vec![
                ("token".into(), "a&b".into()),
                ("from".into(), "+1555".into())
            ]
        );
        assert!(parse_twiml("<Response><Say>no stream</Say></Response>").is_err());
    }

    #[test]
    fn server_messages_must_have_exact_shapes() {
        let mut playback = PlaybackModel::new(false);
        let mut outcome = CallOutcome::default();
        let mut ids = HashMap::new();
        let now = crate::clock::now();
        let sid = "MZ1";
        let payload = STANDARD.encode([0xFFu8; 160]);
        for (text, ok) in [
            (
                format!(
                    r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}","track":"outbound"}}}}"#
                ),
                false,
            ),
            (
                r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"a"}}"#.to_owned(),
                true,
            ),
            (r#"{"event":"mark","streamSid":"MZ1"}"#.to_owned(), false),
            (r#"{"event":"clear","streamSid":"MZ1"}"#.to_owned(), true),
            (r#"{"event":"clear","streamSid":"MZ2"}"#.to_owned(), false),
            (
                r#"{"event":"clear","streamSid":"MZ1","extra":1}"#.to_owned(),
                false,
            ),
        ] {
            let before = outcome.malformed.len();
            handle_server_message(
                &text,
                now,
                Duration::ZERO,
                &mut playback,
                &mut outcome,
                &mut ids,
                sid,
            );
            assert_eq!(outcome.malformed.len() == before, ok, "{text}");
        }
        assert_eq!(outcome.received.len(), 3);
    }
}
