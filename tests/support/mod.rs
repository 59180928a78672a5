//! Shared helpers for end-to-end tests over real sockets: start the real server in-process on
//! `127.0.0.1:0`, sign like Twilio with a signer written here independently of the server's,
//! fetch TwiML, open Media Streams WebSockets (raw, or as a whole Twilio-emulating call through
//! the simulator's client and `handset_engine::sim::PlaybackModel`), and speak raw HTTP.
//!
//! Assumptions: loopback only; every server gets a fresh temporary `DATA_DIR` (with `TRACE_DIR`
//! inside it), `PUBLIC_URL` set to its own address and [`TOKEN`] as its auth token, so
//! signatures are always checked.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use handset_shell::sim::{CallOutcome, CallPlan, StreamTarget};

pub mod fakes;

// The independent Twilio signer, checked against Twilio's official vectors in
// tests/http_signatures.rs: one copy for every end-to-end test.
#[path = "../http_common/mod.rs"]
mod http_common;
use handset_shell::{AppState, Config};
pub use http_common::twilio_sign;

/// The auth token every test server is configured with.
pub const TOKEN: &str = "support-auth-token";

/// A raw client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// A server running in-process on a loopback port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state (tokens, active calls, configuration).
    pub state: Arc<AppState>,
    /// The data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handset-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

impl TestServer {
    /// Starts a server with signature checks on, two engine workers and `extra` variables
    /// (which win over these defaults).
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_in(temp_dir("support"), extra).await
    }

    /// [`Self::start`] on `data_dir`: a second server on another's directory shares its
    /// embedded store, as a second instance of a fleet shares the database.
    pub async fn start_in(data_dir: PathBuf, extra: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = data_dir.display().to_string();
        let traces = data_dir.join("traces").display().to_string();
        let public = format!("http://{addr}");
        let mut vars: Vec<(&str, &str)> = vec![
            ("DATA_DIR", dir.as_str()),
            ("PUBLIC_URL", public.as_str()),
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("ENGINE_WORKERS", "2"),
            ("TRACE_DIR", traces.as_str()),
            ("DRAIN_TIMEOUT", "10"),
        ];
        vars.extend_from_slice(extra);
        let config = Config::from_vars(vars).expect("test config is valid");
        let (state, _startup) = AppState::new(config).await.expect("server state builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(handset_shell::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            data_dir,
            stop: Some(stop),
            task,
        }
    }

    /// `http://127.0.0.1:port` + `path` (also the public URL signatures are checked against).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Where calls opted in with `?trace=1` leave their timelines.
    pub fn trace_dir(&self) -> PathBuf {
        self.data_dir.join("traces")
    }

    /// A simulator plan for call `n` (CallSid [`call_sid`]) against this server's voice
    /// webhook, signed with [`TOKEN`].
    pub fn plan(&self, n: u32) -> CallPlan {
        let mut plan = CallPlan::new(self.url("/webhook/incoming_call"));
        plan.auth_token = Some(TOKEN.to_owned());
        plan.call_sid = call_sid(n);
        plan
    }

    /// The `<Stream url>` the server writes into its TwiML.
    pub fn stream_url(&self) -> String {
        format!("ws://{}/ws/twilio-media", self.addr)
    }

    /// Signals shutdown, waits for `serve` to return and removes the data directory.
    pub async fn stop(mut self) {
        self.drain();
        self.task.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// Signals shutdown (what SIGTERM does) without waiting: the server starts draining.
    pub fn drain(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether `serve` has returned within `limit` (after [`Self::drain`]).
    pub async fn stopped_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }

    /// Waits (bounded by `limit`) until no media call is active; returns the count left.
    /// Callers assert it is 0.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        while self.state.active_calls.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.active_calls.count()
    }
}

/// The AccountSid of every test call.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// A CallSid for test call number `n`.
pub fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

/// A StreamSid for test call number `n`.
pub fn stream_sid(n: u32) -> String {
    format!("MZ{n:032x}")
}

/// The voice webhook's form parameters for call `n`, as Twilio sends them.
pub fn voice_params(n: u32) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", ACCOUNT_SID.to_owned()),
        ("CallSid", call_sid(n)),
        ("CallStatus", "ringing".to_owned()),
        ("From", "+15550001111".to_owned()),
        ("To", "+15550002222".to_owned()),
    ]
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

/// POSTs a form to `path` with `headers`, over a fresh connection with hyper's client.
pub async fn post_form(
    server: &TestServer,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().copied())
        .finish();
    let mut req = http::Request::post(server.url(path))
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

/// Sends one request with hyper's client over TCP and reads the whole answer.
pub async fn send(req: http::Request<Full<Bytes>>) -> Reply {
    try_send(req).await.expect("request completes")
}

/// [`send`], with a failure to connect or to read the answer as an error.
pub async fn try_send(req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// POSTs the signed voice webhook for call `n` and returns the stream target from its TwiML.
pub async fn stream_target(server: &TestServer, n: u32) -> StreamTarget {
    let params = voice_params(n);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = server.url("/webhook/incoming_call");
    let sig = twilio_sign(TOKEN, &url, &pairs);
    let reply = post_form(
        server,
        "/webhook/incoming_call",
        &pairs,
        &[("X-Twilio-Signature", sig.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200, "voice webhook: {}", reply.body);
    handset_shell::sim::parse_twiml(&reply.body).expect("TwiML with <Connect><Stream>")
}

/// A whole Twilio-emulating call `n` (the simulator's client: real-time caller audio, every
/// server message checked for its exact shape and played through the playback model), with
/// the webhook and the handshake signed by [`twilio_sign`].
pub async fn twilio_call(
    server: &TestServer,
    n: u32,
    audio: Arc<Vec<i16>>,
    duration: Duration,
) -> CallOutcome {
    let target = stream_target(server, n).await;
    let mut plan = server.plan(n);
    plan.forge_signature = Some(twilio_sign(TOKEN, &target.url, &[]));
    plan.audio = audio;
    plan.duration = duration;
    handset_shell::sim::run_stream(&plan, &target)
        .await
        .expect("stream runs")
}

/// Opens a signed WebSocket to the media path over `tcp` (no subprotocol offered).
pub async fn ws_connect(server: &TestServer, tcp: TcpStream) -> Ws {
    let mut req = server.stream_url().into_client_request().unwrap();
    let sig = twilio_sign(TOKEN, &server.stream_url(), &[]);
    req.headers_mut()
        .insert("X-Twilio-Signature", HeaderValue::from_str(&sig).unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("signed handshake accepted");
    assert!(
        resp.headers().get("Sec-WebSocket-Protocol").is_none(),
        "no subprotocol when none offered"
    );
    ws
}

/// The `start` message for call `n` with the TwiML's parameters.
pub fn start_message(n: u32, target: &StreamTarget) -> Message {
    let params: serde_json::Map<String, serde_json::Value> = target
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let sid = stream_sid(n);
    let start = serde_json::json!({"event":"start","sequenceNumber":"1","streamSid":sid,
        "start":{"accountSid":ACCOUNT_SID,"streamSid":sid,"callSid":call_sid(n),"tracks":["inbound"],
        "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
        "customParameters":params}});
    Message::text(start.to_string())
}

/// Webhook, signed WebSocket over `tcp`, `connected` and `start` for call `n`.
pub async fn open_call_over(server: &TestServer, n: u32, tcp: TcpStream) -> Ws {
    let target = stream_target(server, n).await;
    let mut ws = ws_connect(server, tcp).await;
    ws.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .unwrap();
    ws.send(start_message(n, &target)).await.unwrap();
    ws
}

/// [`open_call_over`] on a fresh connection.
pub async fn open_call(server: &TestServer, n: u32) -> Ws {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    open_call_over(server, n, tcp).await
}

/// "Hello world", recorded: 8 kHz telephone speech (tests/data/hello-world.ulaw).
pub fn speech() -> Vec<i16> {
    let bytes = include_bytes!("../data/hello-world.ulaw");
    let mut pcm = vec![0i16; bytes.len()];
    handset_engine::codec::decode_into(bytes, &mut pcm);
    pcm
}

/// A drum: a decaying 120 Hz burst twice a second, loud, for `len` (8 kHz). Not speech, but
/// Handset's small VAD starts speech on it within 60 ms of silence and holds it, while Silero
/// VAD, started on it as the onset check starts it, never gets above 0.3: the sound the onset
/// check exists for.
pub fn drum(len: Duration) -> Vec<i16> {
    (0..len.as_millis() as usize * 8)
        .map(|i| {
            let t = (i % 4_000) as f64 / 8_000.0;
            ((-t * 30.0).exp() * (std::f64::consts::TAU * 120.0 * t).sin() * 20_000.0) as i16
        })
        .collect()
}

/// The µ-law the simulated Twilio played, in order, with 0x7F normalised to 0xFF (both are
/// zero).
pub fn played_bytes(outcome: &CallOutcome) -> Vec<u8> {
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    outcome
        .played
        .iter()
        .flat_map(|(_, b)| b.iter().copied().map(norm))
        .collect()
}

/// The PCM the simulated caller heard between `from` and `to` (stream time).
pub fn heard_between(outcome: &CallOutcome, from: Duration, to: Duration) -> Vec<i16> {
    let mut pcm = Vec::new();
    for (start, bytes) in &outcome.played {
        for (i, b) in bytes.iter().enumerate() {
            let t = *start + Duration::from_micros(i as u64 * 125);
            if t >= from && t < to {
                pcm.push(handset_engine::codec::decode_sample(*b));
            }
        }
    }
    pcm
}

/// Best normalised cross-correlation between `a` and `b` over lags of either sign up to
/// `max_lag` samples (overlaps shorter than half a second are ignored).
pub fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    let energy = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>().sqrt();
    let mut best = 0.0f64;
    for shift in -(max_lag as i64)..=(max_lag as i64) {
        let (a0, b0) = if shift >= 0 {
            (0, shift as usize)
        } else {
            ((-shift) as usize, 0)
        };
        if a0 >= a.len() || b0 >= b.len() {
            continue;
        }
        let n = (a.len() - a0).min(b.len() - b0);
        if n < 4000 {
            continue;
        }
        let (x, y) = (&a[a0..a0 + n], &b[b0..b0 + n]);
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        let denom = energy(x) * energy(y);
        if denom > 0.0 {
            best = best.max(dot / denom);
        }
    }
    best
}

/// `lead` of silence, then `clip` (8 kHz), as a simulator plan's caller audio.
pub fn after_silence(lead: Duration, clip: &[i16]) -> Arc<Vec<i16>> {
    let mut audio = vec![0i16; (lead.as_millis() * 8) as usize];
    audio.extend_from_slice(clip);
    Arc::new(audio)
}

/// A `media` message for stream `sid` with this chunk number (timestamp = 20 ms per chunk).
pub fn media(sid: &str, chunk: u64, payload: &str) -> Message {
    Message::text(format!(
        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}}}}"#,
        chunk + 1,
        chunk * 20
    ))
}

/// Base64 of one 20 ms frame of µ-law silence.
pub fn silence_payload() -> String {
    base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160])
}

/// What a client saw while reading a socket until it ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// Server `media` messages read.
    pub media: u64,
    /// Pongs read.
    pub pongs: u64,
    /// The close frame's code, if one came.
    pub close: Option<u16>,
    /// The close frame's reason.
    pub reason: String,
    /// The read failed (reset) or the stream ended without a close frame.
    pub dropped: bool,
    /// `limit` passed with the socket still open.
    pub timed_out: bool,
}

/// Reads until the server closes (or `limit` passes), counting media and pongs.
pub async fn read_to_end(ws: &mut Ws, limit: Duration) -> Ending {
    let mut seen = Ending::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                seen.timed_out = true;
                return seen;
            }
            Ok(None) | Ok(Some(Err(_))) => {
                seen.dropped = seen.close.is_none();
                return seen;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                if let Some(f) = frame {
                    seen.close = Some(u16::from(f.code));
                    seen.reason = f.reason.to_string();
                } else {
                    seen.close = Some(1005);
                }
            }
            Ok(Some(Ok(Message::Pong(_)))) => seen.pongs += 1,
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""event":"media""#) {
                    seen.media += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until `n` server media messages arrived (true) or `limit` passed / the socket ended.
pub async fn read_media(ws: &mut Ws, n: u64, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = 0;
    while got < n {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""event":"media""#) => got += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    true
}

/// Writes `request` on a fresh connection and reads the answer until the server closes or
/// `limit` passes; returns the raw text (empty when the server closed without answering).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(request).await;
    read_raw(&mut stream, limit).await
}

/// Reads from `stream` until EOF, a reset, or `limit`; a complete response without a body
/// length is read to EOF.
pub async fn read_raw(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_and_body_complete(&buf) {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn head_and_body_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    buf.len() >= end + 4 + length
}

/// The status code of a raw HTTP answer (0 when there was none).
pub fn status_of(raw: &str) -> u16 {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A header's value in a raw HTTP answer.
pub fn header_of<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = &raw[..raw.find("\r\n\r\n").unwrap_or(raw.len())];
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Server log lines captured in memory (JSON, one object per line) for counters that are only
/// logged, such as the per-call `WS stop` and `WS input dropped` lines.
#[derive(Clone)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs the capturing subscriber for this test process (once) and returns it.
    pub fn capture() -> Self {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Self(Arc::default());
            let sink = logs.0.clone();
            tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
                .with_writer(move || LogWriter(sink.clone()))
                .init();
            logs
        })
        .clone()
    }

    /// The fields of every line logged with `message` for `call_sid`.
    pub fn find(&self, message: &str, call_sid: &str) -> Vec<serde_json::Value> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("fields").cloned())
            .filter(|f| f["message"] == message && f["call_sid"] == call_sid)
            .collect()
    }

    /// [`Logs::find`], waiting (bounded by `limit`) for at least one line.
    pub async fn wait_for(
        &self,
        message: &str,
        call_sid: &str,
        limit: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let found = self.find(message, call_sid);
            if !found.is_empty() || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Times the server's pacer found call `call_sid`'s queue empty when a frame was due (its `WS
/// stop` line; `logs` must have been captured before the call ended). This, not the simulated
/// caller's own underruns, is what says a call was played without a gap: on a loaded machine
/// the caller's receive times carry the scheduler's delays of the test process itself.
pub async fn pacer_underruns(logs: &Logs, call_sid: &str) -> u64 {
    let stop = logs
        .wait_for("WS stop", call_sid, Duration::from_secs(10))
        .await;
    assert_eq!(stop.len(), 1, "one WS stop line for {call_sid}: {stop:?}");
    stop[0]["underruns"]
        .as_u64()
        .unwrap_or_else(|| panic!("WS stop carries underruns: {}", stop[0]))
}

/// When (stream time) each `clear` reached the simulated caller.
pub fn clears_at(outcome: &CallOutcome) -> Vec<Duration> {
    outcome
        .received
        .iter()
        .filter(|r| r.kind == handset_shell::sim::ReceivedKind::Clear)
        .map(|r| r.at)
        .collect()
}
