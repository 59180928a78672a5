//! One simulated Twilio call against any Media Streams server, over real sockets.
//!
//! It does what Twilio does: a signed POST to the voice webhook; the TwiML parsed for the
//! `<Stream>` URL and `<Parameter>`s; the WebSocket opened with `audio.twilio.com` offered and
//! the handshake signed over the `wss://` URL as written; `connected`, `start`, then the
//! caller's audio as 20 ms µ-law `media` messages on a real-time schedule with realistic
//! `sequenceNumber`/`chunk`/`timestamp`, optionally impaired (bursts, jitter, skipped chunks).
//! Outbound audio goes into a model of Twilio's playback buffer
//! ([`crate::playback::PlaybackModel`], inside [`CallObserver`]) that plays at real time,
//! echoes marks when played and flushes on `clear`; the observer measures what the caller heard.
//!
//! Cost per call is kept small so one process can drive a thousand calls: one tokio task per
//! call, caller payloads encoded once per script ([`CallerFrames`]), outgoing messages written
//! by the shell's [`TwilioWriter`] into one reused buffer (no JSON trees), server messages read
//! by [`parse_to_twilio`] into borrowed values with unknown fields refused, base64 decoded into
//! a reused buffer, and frames sent on
//! absolute deadlines (a late wake-up sends everything due, so lateness never accumulates).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use handset_engine::codec;
use handset_shell::media_stream::{ToTwilio, ToTwilioError, TwilioWriter, parse_to_twilio};
use handset_shell::signature;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::observer::{CallMetrics, CallObserver};
pub use super::script::Impairments;
use super::script::{CallerFrames, LineEcho, SendSchedule, Utterance};
use crate::playback::{PlaybackModel, PlaybackStats};

/// The WebSocket read buffer per call. tungstenite zero-fills the free part of its read buffer
/// before every socket read, so its 128 KiB default cost a 128 KiB memset per read (a quarter
/// of the simulator's CPU at 200 calls); a server message is at most a few hundred bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Malformed messages kept verbatim per call (all are counted).
const MALFORMED_KEPT: usize = 20;

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
    /// Keep every received message in [`CallOutcome::received`] and mark names in
    /// [`CallOutcome::mark_names`] (off for load runs).
    pub keep_log: bool,
    /// Keep the call's timeline in its metrics (for the picture).
    pub keep_timeline: bool,
    /// `audio` already encoded (shared between calls); `None` encodes `audio` at call start.
    pub frames: Option<Arc<CallerFrames>>,
    /// Caller speech spans in `audio`, for the latency measurements.
    pub utterances: Vec<Utterance>,
    /// The caller's line returns what it plays (a speakerphone): `audio` is mixed with it and
    /// encoded frame by frame (so `frames` is not used); playback is recorded.
    pub echo: Option<LineEcho>,
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
            keep_log: true,
            keep_timeline: false,
            frames: None,
            utterances: Vec::new(),
            echo: None,
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
    /// Messages that were not exactly one of the three documented shapes (the first 20;
    /// [`CallMetrics::malformed`] counts all).
    pub malformed: Vec<String>,
    /// The subprotocol the server answered with.
    pub subprotocol: Option<String>,
    /// The server's close frame, if it closed the socket.
    pub close: Option<(u16, String)>,
    /// Media frames sent.
    pub frames_sent: u64,
    /// Everything measured (see [`super::observer`] for the definitions).
    pub metrics: CallMetrics,
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

/// Per-call state for handling server messages.
struct Inbox {
    observer: CallObserver,
    t0: Instant,
    stream_sid: String,
    /// Names of marks awaiting their echo, in order (echoes come back in order).
    pending_marks: VecDeque<String>,
    /// Decoded payload, reused.
    decoded: Vec<u8>,
    malformed: u64,
    keep_log: bool,
}

impl Inbox {
    fn malformed(&mut self, outcome: &mut CallOutcome, what: &str, text: &str) {
        self.malformed += 1;
        if outcome.malformed.len() < MALFORMED_KEPT {
            outcome.malformed.push(format!("{what}: {text}"));
        }
    }

    /// Checks one server message is exactly a documented shape and applies it.
    fn handle(&mut self, text: &str, now: Instant, outcome: &mut CallOutcome) {
        let event = match check_server_message(text, &self.stream_sid, &mut self.decoded) {
            Ok(event) => event,
            Err(what) => {
                self.malformed(outcome, what, text);
                return;
            }
        };
        let at = now - self.t0;
        let std_now = now.into_std();
        match event {
            ServerEvent::Media => {
                self.observer.on_media(std_now, &self.decoded);
                if self.keep_log {
                    outcome.received.push(Received {
                        at,
                        kind: ReceivedKind::Media(self.decoded.len()),
                    });
                }
            }
            ServerEvent::Mark(name) => {
                self.observer.on_mark(std_now);
                if self.keep_log {
                    outcome.mark_names.push(name.to_string());
                    outcome.received.push(Received {
                        at,
                        kind: ReceivedKind::Mark(outcome.mark_names.len() - 1),
                    });
                }
                self.pending_marks.push_back(name.into_owned());
            }
            ServerEvent::Clear => {
                self.observer.on_clear(std_now);
                if self.keep_log {
                    outcome.received.push(Received {
                        at,
                        kind: ReceivedKind::Clear,
                    });
                }
            }
        }
    }
}

/// A server message that is exactly one of the documented shapes.
#[derive(Debug, Eq, PartialEq)]
pub(crate) enum ServerEvent<'a> {
    /// `media`; its payload is in the `decoded` buffer given to [`check_server_message`].
    Media,
    /// `mark` with its name.
    Mark(Cow<'a, str>),
    /// `clear`.
    Clear,
}

/// Checks that `text` is exactly one of the documented server messages for `stream_sid`; a
/// `media` payload is decoded into `decoded`. The error says what is wrong. The simulator's
/// reader and the wire capture ([`super::wire`]) both judge messages with this.
pub(crate) fn check_server_message<'a>(
    text: &'a str,
    stream_sid: &str,
    decoded: &mut Vec<u8>,
) -> Result<ServerEvent<'a>, &'static str> {
    let msg = parse_to_twilio(text).map_err(|e| match e {
        ToTwilioError::Shape => "not a documented shape",
        ToTwilioError::Unknown => "unknown message",
    })?;
    if msg.stream_sid() != stream_sid {
        return Err("wrong streamSid");
    }
    match msg {
        ToTwilio::Media { payload, .. } => {
            decoded.clear();
            if STANDARD.decode_vec(payload.as_bytes(), decoded).is_err() || decoded.is_empty() {
                return Err("bad media payload");
            }
            Ok(ServerEvent::Media)
        }
        ToTwilio::Mark { name, .. } => Ok(ServerEvent::Mark(name)),
        ToTwilio::Clear { .. } => Ok(ServerEvent::Clear),
    }
}

/// The `streamSid` of a server message, if it is one of the documented shapes.
pub(crate) fn stream_sid_of(text: &str) -> Option<String> {
    parse_to_twilio(text)
        .ok()
        .map(|msg| msg.stream_sid().to_owned())
}

/// Runs the Media Stream of a call whose TwiML was already fetched.
pub async fn run_stream(plan: &CallPlan, target: &StreamTarget) -> Result<CallOutcome, SimError> {
    let uri: hyper::Uri = target
        .url
        .parse()
        .map_err(|e| SimError::Twiml(format!("bad stream url {:?}: {e}", target.url)))?;
    let tcp = connect(plan.connect_to, &uri).await?;
    let _ = tcp.set_nodelay(true);
    // The wire capture finds this call's TCP stream by the client's port.
    let local_port = tcp.local_addr().ok().map(|a| a.port());
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
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
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
    let frames = match &plan.frames {
        Some(f) => Arc::clone(f),
        None => Arc::new(CallerFrames::from_pcm(&plan.audio)),
    };
    let (mut tx, mut rx) = ws.split();
    let stream_sid = format!("MZ{:032x}", rand::random::<u128>());
    let mut twilio = TwilioWriter::new(&stream_sid, "AC00000000000000000000000000000000");
    let _ = tx.send(Message::text(twilio.connected())).await;
    let params = plan
        .override_parameters
        .as_ref()
        .unwrap_or(&target.parameters);
    let start = twilio.start(
        &plan.call_sid,
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let t0 = Instant::now();
    let _ = tx.send(Message::text(start)).await;

    let mut inbox = Inbox {
        observer: CallObserver::new(
            t0.into_std(),
            plan.record_playback || plan.echo.is_some(),
            plan.keep_timeline,
        ),
        t0,
        stream_sid: stream_sid.clone(),
        pending_marks: VecDeque::new(),
        decoded: Vec::with_capacity(1024),
        malformed: 0,
        keep_log: plan.keep_log,
    };
    if plan.keep_timeline {
        inbox.observer.keep_intervals();
    }
    let mut schedule = SendSchedule::new(&plan.impair);
    let total_frames = (plan.duration.as_millis() / 20) as u64;
    let mut frame_index: u64 = 0;
    let mut next = (frame_index < total_frames).then(|| schedule.next(0));
    let mut dtmf = plan.dtmf.clone();
    dtmf.sort_by_key(|(t, _)| *t);
    let dtmf_times: Vec<Duration> = dtmf.iter().map(|(t, _)| *t).collect();
    let mut dtmf = dtmf.into_iter().peekable();
    let mut closed = false;
    let mut skipped = 0u64;
    let mut send_errors = 0u64;
    let end_at = t0 + Duration::from_millis(20 * total_frames);

    loop {
        let echo_at = inbox
            .observer
            .poll_timeout()
            .map(|t| t0 + t.saturating_duration_since(t0.into_std()));
        let send_at = next.map_or(end_at, |f| t0 + f.at);
        let wake = echo_at.map_or(send_at, |e| e.min(send_at));
        tokio::select! {
            msg = rx.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => inbox.handle(text.as_str(), now, &mut outcome),
                    Some(Ok(Message::Binary(_))) => inbox.malformed(&mut outcome, "binary frame", ""),
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
                let std_now = now.into_std();
                let mut wrote = false;
                while inbox.observer.poll_echo(std_now).is_some() {
                    let name = inbox.pending_marks.pop_front().unwrap_or_default();
                    wrote = true;
                    if tx.feed(Message::text(twilio.mark(&name))).await.is_err() {
                        closed = true;
                    }
                }
                // Every caller frame due (several after a late wake-up or in a burst).
                let mut first = true;
                while let Some(frame) = next.filter(|f| t0 + f.at <= now) {
                    if first {
                        inbox.observer.on_send_lateness(now.saturating_duration_since(t0 + frame.at));
                        first = false;
                    }
                    if frame.skipped {
                        skipped += 1;
                    } else {
                        let payload = match plan.echo {
                            None => Cow::Borrowed(frames.payload(frame_index)),
                            Some(echo) => Cow::Owned(with_echo(
                                &plan.audio,
                                frame_index,
                                t0.into_std(),
                                echo,
                                inbox.observer.model(),
                            )),
                        };
                        let media = twilio.media(frame_index + 1, frame_index * 20, &payload);
                        wrote = true;
                        if tx.feed(Message::text(media)).await.is_err() {
                            send_errors += 1;
                            closed = true;
                        } else {
                            outcome.frames_sent += 1;
                        }
                    }
                    frame_index += 1;
                    // DTMF due by the end of this frame's capture.
                    while let Some((at, digit)) = dtmf.peek().copied() {
                        if Duration::from_millis(frame_index * 20) < at {
                            break;
                        }
                        dtmf.next();
                        if tx.feed(Message::text(twilio.dtmf(digit))).await.is_err() {
                            closed = true;
                        }
                    }
                    next = (frame_index < total_frames).then(|| schedule.next(frame_index));
                }
                if wrote && tx.flush().await.is_err() {
                    closed = true;
                }
                if next.is_none() && now >= end_at && now >= send_at {
                    break;
                }
            }
        }
        if closed {
            break;
        }
    }
    if !closed {
        let _ = tx.send(Message::text(twilio.stop(&plan.call_sid))).await;
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
    // The loop only ends early when the server closed or the socket failed.
    let ended_early = closed;
    let observer = &inbox.observer;
    outcome.playback = observer.playback();
    outcome.played = observer
        .model()
        .played()
        .iter()
        .map(|p| {
            (
                p.start.saturating_duration_since(t0.into_std()),
                p.bytes.clone(),
            )
        })
        .collect();
    let mut metrics = observer.finish(&plan.utterances, &dtmf_times, plan.keep_timeline);
    metrics.call_sid.clone_from(&plan.call_sid);
    metrics.local_port = local_port;
    metrics.stream_sid = stream_sid;
    metrics.frames_sent = outcome.frames_sent;
    metrics.frames_skipped = skipped;
    metrics.send_errors = send_errors;
    metrics.malformed = inbox.malformed;
    metrics.close_code = outcome.close.as_ref().map(|c| c.0);
    if ended_early {
        metrics.failure = Some(format!(
            "the stream ended early after {} of {} frames (close {:?})",
            frame_index, total_frames, metrics.close_code
        ));
    }
    outcome.metrics = metrics;
    Ok(outcome)
}

/// Caller frame `k` of `audio` with the line's echo of what played mixed in, as a base64
/// µ-law payload. Sample `n` was captured `n / 8000` s after `t0`; its echo is what played
/// `echo.delay` before that.
fn with_echo(
    audio: &[i16],
    k: u64,
    t0: std::time::Instant,
    echo: LineEcho,
    played: &PlaybackModel,
) -> String {
    let mut pcm = [0i16; 160];
    let first = usize::try_from(k).unwrap_or(usize::MAX).saturating_mul(160);
    for (i, sample) in pcm.iter_mut().enumerate() {
        let n = first.saturating_add(i);
        let own = audio.get(n).copied().unwrap_or(0);
        let captured = t0 + Duration::from_nanos(n as u64 * 125_000);
        let back = captured
            .checked_sub(echo.delay)
            .and_then(|t| played.played_at(t))
            .map_or(0, codec::decode_sample);
        *sample = own.saturating_add((f32::from(back) * echo.gain) as i16);
    }
    let mut mulaw = [0u8; 160];
    codec::encode_into(&pcm, &mut mulaw);
    STANDARD.encode(mulaw)
}

fn close_info(frame: Option<CloseFrame>) -> (u16, String) {
    frame.map_or((1005, String::new()), |f| {
        (u16::from(f.code), f.reason.to_string())
    })
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

    fn inbox(t0: Instant) -> Inbox {
        Inbox {
            observer: CallObserver::new(t0.into_std(), true, false),
            t0,
            stream_sid: "MZ1".to_owned(),
            pending_marks: VecDeque::new(),
            decoded: Vec::new(),
            malformed: 0,
            keep_log: true,
        }
    }

    #[test]
    fn server_messages_must_have_exact_shapes() {
        let now = Instant::now();
        let mut inbox = inbox(now);
        let mut outcome = CallOutcome::default();
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
            inbox.handle(&text, now, &mut outcome);
            assert_eq!(outcome.malformed.len() == before, ok, "{text}");
        }
        assert_eq!(outcome.received.len(), 3);
        assert_eq!(inbox.malformed, 4);
    }

    #[test]
    fn more_shapes_are_refused_and_marks_are_named_in_order() {
        let now = Instant::now();
        let mut inbox = inbox(now);
        let mut outcome = CallOutcome::default();
        for bad in [
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":""}}"#,
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"@@@"}}"#,
            r#"{"event":"media","streamSid":"MZ1","mark":{"name":"x"}}"#,
            r#"{"event":"clear","streamSid":"MZ1","streamSid":"MZ1"}"#,
            r#"{"event":"clear"}"#,
            r#"[1,2]"#,
        ] {
            inbox.handle(bad, now, &mut outcome);
        }
        assert_eq!(inbox.malformed, 6, "{:?}", outcome.malformed);
        inbox.handle(
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"p\"1"}}"#,
            now,
            &mut outcome,
        );
        inbox.handle(
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"a2"}}"#,
            now,
            &mut outcome,
        );
        assert_eq!(inbox.pending_marks, ["p\"1", "a2"]);
        assert_eq!(outcome.mark_names, ["p\"1", "a2"]);
    }
}
