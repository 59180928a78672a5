//! The bad-input matrix: every hostile or broken input the server can meet on its HTTP routes
//! and its Media Streams WebSocket, each sent over a real TCP socket to a real server started
//! in-process, each with its defined outcome (a status, a close code, or "the call goes on and
//! the input is dropped"), while a healthy Twilio-emulating call runs alongside the whole time
//! and must hear exactly what an undisturbed call hears, with zero malformed messages, nothing
//! dropped and its server-side pacer never starved.
//!
//! Each case is a test of its own (`harness = false`, libtest-mimic; see [`main`]), and so is
//! the healthy call: `cargo test --test bad_input` runs them all in about 40 s, a filter runs
//! some (`cargo test --test bad_input ws::`), `-- --list` lists them.
//!
//! The table [`CASES`] is the specification; [`run_case`] knows how to send each [`Input`] and
//! returns what was observed on the wire; [`Expect::check`] compares. A new case is a row in
//! the table, with a new [`Input`] variant and its arm in [`run_case`] unless an existing one
//! fits: [`Input::RawFrames`] writes hand-made WebSocket frames ([`ws_frame`]) under a running
//! call. Each case uses its own call number (`100 +` its index), so cases run side by side.
//! Short limits come from the server's configuration variables (`WS_START_TIMEOUT`,
//! `WS_IDLE_TIMEOUT`, `WS_WRITE_TIMEOUT`, `HEADER_READ_TIMEOUT`), so the whole matrix runs in
//! seconds. Nothing is timed: waits are bounded only so a broken server fails instead of
//! hanging.

mod support;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use handset_engine::agent::echo::GREETING;
use handset_shell::sim::CallOutcome;
use libtest_mimic::{Arguments, Failed, Trial};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use support::{
    Ending, Logs, TOKEN, TestServer, Ws, call_sid, header_of, media, open_call, open_call_over,
    raw_exchange, read_raw, read_to_end, silence_payload, status_of, stream_sid, stream_target,
    twilio_sign, ws_connect,
};

/// Server limits for the run (seconds, except the message size in bytes).
const LIMITS: &[(&str, &str)] = &[
    ("WS_START_TIMEOUT", "1"),
    ("WS_IDLE_TIMEOUT", "3"),
    ("WS_WRITE_TIMEOUT", "1"),
    ("WS_MAX_MESSAGE_BYTES", "65536"),
    ("HEADER_READ_TIMEOUT", "1"),
];

/// A well-formed StreamSid that belongs to no call of the run.
const WRONG_STREAM: &str = "MZ0000000000000000000000000000dead";
/// A well-formed CallSid that belongs to no call of the run.
const OTHER_CALL: &str = "CA0000000000000000000000000000dead";

/// Upper bound on any single wait, so a server that never answers fails the test.
const PATIENCE: Duration = Duration::from_secs(15);

/// Server `media` messages in the greeting: the agent's last partial frame is padded.
fn greeting_frames() -> u64 {
    GREETING.len().div_ceil(160) as u64
}

/// One hostile or broken input.
#[derive(Clone, Copy, Debug)]
enum Input {
    // --- HTTP ---
    /// A webhook POST declaring a 70,000-byte body.
    BodyOverLimitByLength,
    /// A webhook POST streaming 70,000 bytes chunked (no length up front).
    BodyOverLimitChunked,
    /// A form body that does not decode to UTF-8.
    FormNotUtf8,
    /// A `text/plain` body.
    WrongContentType,
    /// A JSON body without the `bodySHA256` query parameter.
    JsonWithoutBodyHash,
    /// `Content-Length: abc`.
    BadContentLength,
    /// A well-formed webhook without `X-Twilio-Signature`.
    MissingSignature,
    /// A well-formed webhook with a signature made with another key.
    ForgedSignature,
    /// A signature valid for the body but over another URL.
    SignatureForOtherUrl,
    /// `DELETE /webhook/incoming_call`.
    WrongMethodIncomingCall,
    /// `GET /webhook/handle_recording`.
    WrongMethodRecording,
    /// `POST /ws/twilio-media`.
    WrongMethodMediaStream,
    /// `GET /nowhere`.
    UnknownPath,
    /// A signed voice webhook sent again verbatim after it was answered (a replay).
    ReplayedVoiceWebhook,
    /// A signed voice webhook whose `CallSid` carries a newline and a forged log line.
    CallSidNotTwilios,
    /// One 1 MiB header.
    HugeHeader,
    /// 500 small headers.
    TooManyHeaders,
    /// A request line that is not HTTP.
    GarbageRequestLine,
    /// Request line and headers dribbled one byte every 100 ms, never finished.
    SlowHeaders,
    // --- WebSocket handshake ---
    /// A WebSocket upgrade without `X-Twilio-Signature`.
    UpgradeUnsigned,
    /// A WebSocket upgrade with a forged signature.
    UpgradeForged,
    /// `GET /ws/twilio-media` without the upgrade headers.
    PlainGetOnMediaPath,
    // --- WebSocket messages ---
    /// Connected, then nothing: no `start`.
    NoStart,
    /// 60 media messages before any `start`.
    ChatterBeforeStart,
    /// 60 binary frames before any `start`.
    BinaryBeforeStart,
    /// 5 media messages before `start`, then a valid `start`.
    MediaBeforeStart,
    /// `start` with a single-use token that is wrong.
    InvalidToken,
    /// `start` with 16 kHz linear PCM.
    UnsupportedFormat,
    /// `start` whose `callSid` carries a newline and a forged log line.
    StartCallSidNotTwilios,
    /// Text that is not JSON.
    NonJson,
    /// JSON missing required fields.
    MissingFields,
    /// Binary frames.
    Binary,
    /// An event nobody defined.
    UnknownEvent,
    /// A payload of 100 bytes instead of 160.
    WrongPayloadLength,
    /// A payload that is not base64.
    BadBase64,
    /// `chunk` and `timestamp` that are not numbers.
    NonNumericChunk,
    /// Chunks 0–9, then 9 back down to 0 again (`chunk` and `timestamp` going backwards).
    BackwardsChunk,
    /// Media, mark and stop for another streamSid.
    WrongStreamSid,
    /// A second `start`.
    SecondStart,
    /// A mark echo with a name the server never sent.
    UnknownMark,
    /// 3,000 media messages as fast as the socket takes them.
    MediaFlood,
    /// 3,000 pings as fast as the socket takes them.
    PingStorm,
    /// A text message of 70,000 bytes (over the 64 KiB limit).
    OversizeMessage,
    /// A single 1 MiB binary frame.
    HugeFrame,
    /// A frame header announcing 2^62 bytes, then nothing.
    AbsurdFrameLength,
    /// After `start`, the client sends nothing more and never closes.
    HalfOpen,
    /// After `start`, the client resets the TCP connection.
    AbruptReset,
    /// After `start`, the client keeps talking but never reads again.
    StopsReading,
    /// Bytes written straight onto the TCP socket of a running call (after `connected`,
    /// `start` and the first server `media`), then the socket read to its end: for frames a
    /// WebSocket client library refuses to send (unknown opcodes, RSV bits, invalid UTF-8,
    /// unmasked frames). The function gets the call's streamSid; build frames with
    /// [`ws_frame`].
    RawFrames(fn(&str) -> Vec<u8>),
}

/// The defined outcome of one input.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This HTTP status.
    Status(u16),
    /// 405 with this `Allow` header.
    NotAllowed(&'static str),
    /// The connection is closed without any answer.
    ClosedWithoutAnswer,
    /// The stream is closed with this code.
    Close(u16),
    /// The call goes on: every message after the bad input is still read (a ping sent after
    /// it is answered), the whole greeting is delivered, and `stop` ends the call with 1000;
    /// the drop is counted: each `(log line, counter, min, max)` is found in the call's log.
    CallContinues(Counted),
    /// The server ends the call and drops the connection.
    CallDropped,
    /// The server finds its writes blocked past `WS_WRITE_TIMEOUT`, ends the call and drops
    /// the connection.
    PeerStalled,
}

/// Counters a case expects in its call's log lines: `(message, field, min, max)`.
type Counted = &'static [(&'static str, &'static str, u64, u64)];

/// `field` of the call's `WS input dropped` line is exactly `n`.
macro_rules! dropped {
    ($($field:literal = $n:expr),+) => {
        &[$(("WS input dropped", $field, $n, $n)),+]
    };
}

/// What a case saw on the wire.
#[derive(Debug, Default)]
struct Observed {
    /// HTTP status (0: none).
    status: u16,
    /// `Allow` header.
    allow: Option<String>,
    /// The raw answer was empty and the connection closed.
    closed_without_answer: bool,
    /// The WebSocket ending.
    ending: Option<Ending>,
    /// A ping sent after the bad input was answered.
    pong_after_input: bool,
    /// The server logged that the peer stopped reading.
    stall_logged: bool,
    /// The server's media calls went back to at most the healthy one after the case.
    call_released: bool,
}

struct Case {
    name: &'static str,
    input: Input,
    expect: Expect,
}

const fn case(name: &'static str, input: Input, expect: Expect) -> Case {
    Case {
        name,
        input,
        expect,
    }
}

/// The matrix.
static CASES: &[Case] = &[
    case(
        "http::body_over_64_kib_by_content_length",
        Input::BodyOverLimitByLength,
        Expect::Status(413),
    ),
    case(
        "http::body_over_64_kib_chunked",
        Input::BodyOverLimitChunked,
        Expect::Status(413),
    ),
    case(
        "http::form_body_not_utf8",
        Input::FormNotUtf8,
        Expect::Status(400),
    ),
    case(
        "http::text_plain_body",
        Input::WrongContentType,
        Expect::Status(415),
    ),
    case(
        "http::json_body_without_body_sha256",
        Input::JsonWithoutBodyHash,
        Expect::Status(415),
    ),
    case(
        "http::non_numeric_content_length",
        Input::BadContentLength,
        Expect::Status(400),
    ),
    case(
        "http::missing_signature",
        Input::MissingSignature,
        Expect::Status(403),
    ),
    case(
        "http::forged_signature",
        Input::ForgedSignature,
        Expect::Status(403),
    ),
    case(
        "http::signature_over_another_url",
        Input::SignatureForOtherUrl,
        Expect::Status(403),
    ),
    case(
        "http::delete_incoming_call",
        Input::WrongMethodIncomingCall,
        Expect::NotAllowed("GET, POST"),
    ),
    case(
        "http::get_handle_recording",
        Input::WrongMethodRecording,
        Expect::NotAllowed("POST"),
    ),
    case(
        "http::post_media_stream_path",
        Input::WrongMethodMediaStream,
        Expect::NotAllowed("GET"),
    ),
    case(
        "http::unknown_path",
        Input::UnknownPath,
        Expect::Status(404),
    ),
    case(
        "http::replayed_voice_webhook",
        Input::ReplayedVoiceWebhook,
        Expect::Status(409),
    ),
    case(
        "http::call_sid_that_is_not_twilios",
        Input::CallSidNotTwilios,
        Expect::Status(400),
    ),
    case(
        "http::one_mib_header",
        Input::HugeHeader,
        Expect::Status(431),
    ),
    case(
        "http::five_hundred_headers",
        Input::TooManyHeaders,
        Expect::Status(431),
    ),
    case(
        "http::garbage_request_line",
        Input::GarbageRequestLine,
        Expect::Status(400),
    ),
    case(
        "http::headers_dribbled_past_header_read_timeout",
        Input::SlowHeaders,
        Expect::ClosedWithoutAnswer,
    ),
    case(
        "ws_upgrade::without_signature",
        Input::UpgradeUnsigned,
        Expect::Status(403),
    ),
    case(
        "ws_upgrade::forged_signature",
        Input::UpgradeForged,
        Expect::Status(403),
    ),
    case(
        "ws_upgrade::plain_get_on_the_media_path",
        Input::PlainGetOnMediaPath,
        Expect::Status(400),
    ),
    case(
        "ws::no_start_within_ws_start_timeout",
        Input::NoStart,
        Expect::Close(1008),
    ),
    case(
        "ws::sixty_messages_before_start",
        Input::ChatterBeforeStart,
        Expect::Close(1008),
    ),
    case(
        "ws::sixty_binary_frames_before_start",
        Input::BinaryBeforeStart,
        Expect::Close(1008),
    ),
    case(
        "ws::media_before_start_then_start",
        Input::MediaBeforeStart,
        Expect::CallContinues(dropped!("before_start" = 5)),
    ),
    case(
        "ws::start_with_a_wrong_stream_token",
        Input::InvalidToken,
        Expect::Close(1008),
    ),
    case(
        "ws::start_with_16_khz_pcm",
        Input::UnsupportedFormat,
        Expect::Close(1003),
    ),
    case(
        "ws::start_with_a_call_sid_that_is_not_twilios",
        Input::StartCallSidNotTwilios,
        Expect::Close(1008),
    ),
    case(
        "ws::non_json_text",
        Input::NonJson,
        Expect::CallContinues(dropped!("malformed" = 2)),
    ),
    case(
        "ws::json_missing_fields",
        Input::MissingFields,
        Expect::CallContinues(dropped!("malformed" = 3)),
    ),
    case(
        "ws::binary_frames",
        Input::Binary,
        Expect::CallContinues(dropped!("binary" = 2)),
    ),
    case(
        "ws::unknown_event",
        Input::UnknownEvent,
        Expect::CallContinues(dropped!("unknown_events" = 1)),
    ),
    case(
        "ws::payload_of_100_bytes",
        Input::WrongPayloadLength,
        Expect::CallContinues(dropped!("bad_media" = 3)),
    ),
    case(
        "ws::payload_not_base64",
        Input::BadBase64,
        Expect::CallContinues(dropped!("bad_media" = 2)),
    ),
    case(
        "ws::non_numeric_chunk_and_timestamp",
        Input::NonNumericChunk,
        Expect::CallContinues(dropped!("bad_media" = 1)),
    ),
    case(
        "ws::chunk_and_timestamp_going_backwards",
        Input::BackwardsChunk,
        Expect::CallContinues(&[("WS stop", "late+duplicate", 10, 10)]),
    ),
    case(
        "ws::messages_for_another_stream_sid",
        Input::WrongStreamSid,
        Expect::CallContinues(dropped!("wrong_stream" = 3)),
    ),
    case(
        "ws::a_second_start",
        Input::SecondStart,
        Expect::CallContinues(dropped!("extra_start" = 1)),
    ),
    case(
        "ws::mark_echo_never_sent",
        Input::UnknownMark,
        Expect::CallContinues(dropped!("unknown_marks" = 1)),
    ),
    case(
        "ws::media_flood_of_3000_messages",
        Input::MediaFlood,
        Expect::CallContinues(&[("WS input dropped", "ring_full", 1, 3000)]),
    ),
    case(
        "ws::ping_storm_of_3000_pings",
        Input::PingStorm,
        Expect::CallContinues(&[]),
    ),
    case(
        "ws::message_of_70000_bytes",
        Input::OversizeMessage,
        Expect::Close(1009),
    ),
    case("ws::frame_of_1_mib", Input::HugeFrame, Expect::Close(1009)),
    case(
        "ws::frame_header_claiming_2_pow_62_bytes",
        Input::AbsurdFrameLength,
        Expect::Close(1009),
    ),
    case(
        "ws::half_open_silent_past_ws_idle_timeout",
        Input::HalfOpen,
        Expect::Close(1001),
    ),
    case(
        "ws::abrupt_tcp_reset_mid_call",
        Input::AbruptReset,
        Expect::CallDropped,
    ),
    case(
        "ws::close_frame_instead_of_stop",
        Input::RawFrames(|_| ws_frame(0x88, &1000u16.to_be_bytes(), true)),
        Expect::Close(1000),
    ),
    case(
        "ws::reserved_opcode",
        Input::RawFrames(|_| ws_frame(0x83, b"x", true)),
        Expect::Close(1002),
    ),
    case(
        "ws::rsv1_bit_set",
        Input::RawFrames(|_| ws_frame(0xC1, br#"{"event":"mark"}"#, true)),
        Expect::Close(1002),
    ),
    case(
        "ws::unmasked_client_frame",
        Input::RawFrames(|_| ws_frame(0x81, br#"{"event":"x"}"#, false)),
        Expect::Close(1002),
    ),
    case(
        "ws::text_frame_not_utf8",
        Input::RawFrames(|_| ws_frame(0x81, &[0xFF, 0xFE, 0x80], true)),
        Expect::Close(1007),
    ),
    case(
        "ws::peer_stops_reading",
        Input::StopsReading,
        Expect::PeerStalled,
    ),
];

impl Expect {
    /// What is wrong with `seen` for this expectation (empty: as defined).
    fn check(self, seen: &Observed) -> Vec<String> {
        let mut wrong = Vec::new();
        let mut want = |ok: bool, what: &str| {
            if !ok {
                wrong.push(what.to_owned());
            }
        };
        let ending = seen.ending.as_ref();
        match self {
            Self::Status(code) => want(seen.status == code, &format!("status {code}")),
            Self::NotAllowed(allow) => {
                want(seen.status == 405, "status 405");
                want(
                    seen.allow.as_deref() == Some(allow),
                    &format!("Allow: {allow}"),
                );
            }
            Self::ClosedWithoutAnswer => want(seen.closed_without_answer, "closed, no answer"),
            Self::Close(code) => {
                want(
                    ending.and_then(|e| e.close) == Some(code),
                    &format!("close {code}"),
                );
                want(seen.call_released, "call released");
            }
            Self::CallContinues(_) => {
                want(seen.pong_after_input, "later input read (ping answered)");
                want(
                    ending.map(|e| e.media) == Some(greeting_frames()),
                    "the whole greeting delivered",
                );
                want(
                    ending.and_then(|e| e.close) == Some(1000),
                    "stop ends it with 1000",
                );
                want(seen.call_released, "call released");
            }
            Self::PeerStalled => {
                want(seen.stall_logged, "stall detected (logged)");
                want(
                    ending.is_some_and(|e| !e.timed_out),
                    "socket dropped by the server",
                );
                want(seen.call_released, "call released");
            }
            Self::CallDropped => {
                want(
                    ending.is_some_and(|e| !e.timed_out),
                    "socket dropped by the server",
                );
                want(seen.call_released, "call released");
            }
        }
        wrong
    }
}

/// A signed form POST to the voice webhook, as raw bytes, with `body` and `content_type`.
fn raw_post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
    sig: &str,
) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Twilio-Signature: {sig}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// `params` as a form body, and its signature over `url` with `key`.
fn signed_form(params: &[(&'static str, String)], url: &str, key: &str) -> (String, String) {
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().copied())
        .finish();
    let sig = twilio_sign(key, url, &pairs);
    (body, sig)
}

/// The voice webhook's form body (call 99) and its signature over `url` with `key`.
fn signed_voice(url: &str, key: &str) -> (String, String) {
    signed_form(&support::voice_params(99), url, key)
}

/// The voice webhook POST of `params`, signed over `url` with the server's key, as raw bytes.
fn signed_voice_post(
    server: &TestServer,
    url: &str,
    params: Vec<(&'static str, String)>,
) -> Vec<u8> {
    let (body, sig) = signed_form(&params, url, TOKEN);
    raw_post(
        server,
        "/webhook/incoming_call",
        "application/x-www-form-urlencoded",
        body.as_bytes(),
        &sig,
    )
}

async fn http(server: &TestServer, request: &[u8]) -> Observed {
    let raw = raw_exchange(server.addr, request, PATIENCE).await;
    Observed {
        status: status_of(&raw),
        allow: header_of(&raw, "allow").map(str::to_owned),
        closed_without_answer: raw.is_empty(),
        ..Observed::default()
    }
}

/// A body-less request: `method path`, `Host`, the `headers` given (each ending in CRLF) and
/// `Connection: close`.
async fn bare(server: &TestServer, method: &str, path: &str, headers: &str) -> Observed {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        server.addr
    );
    http(server, req.as_bytes()).await
}

/// What is wrong with the counters a call logged, against `counted`. Counters of the call's
/// `WS input dropped` line that are not listed must be zero.
async fn check_counted(logs: &Logs, call_sid: &str, counted: Counted) -> Vec<String> {
    let mut wrong = Vec::new();
    // `WS stop` comes last; everything about the call is logged by then.
    logs.wait_for("WS stop", call_sid, PATIENCE).await;
    let dropped = logs.find("WS input dropped", call_sid);
    for (message, field, min, max) in counted {
        let lines = logs.find(message, call_sid);
        // `a+b` sums fields.
        let value = lines
            .first()
            .and_then(|l| field.split('+').map(|f| l[f].as_u64()).sum::<Option<u64>>());
        if !value.is_some_and(|v| (*min..=*max).contains(&v)) {
            wrong.push(format!(
                "{message} {field} in {min}..={max} (got {value:?})"
            ));
        }
    }
    if let Some(line) = dropped.first() {
        for (field, value) in line.as_object().into_iter().flatten() {
            let listed = counted
                .iter()
                .any(|(m, f, _, _)| *m == "WS input dropped" && f == field);
            if field != "id" && !listed && value.as_u64().is_some_and(|v| v > 0) {
                wrong.push(format!("WS input dropped {field} = 0 (got {value})"));
            }
        }
    }
    wrong
}

/// Sends a ping and reads until its pong (true) or the stream ends.
async fn ping_through(ws: &mut Ws, media: &mut u64) -> bool {
    if ws
        .send(Message::Ping(b"after".to_vec().into()))
        .await
        .is_err()
    {
        return false;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"after" => return true,
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""event":"media""#) {
                    *media += 1;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// After the bad input: ping through, wait for the whole greeting, `stop`, read to the end.
async fn finish_continuing(mut ws: Ws, n: u32) -> Observed {
    let mut media_before = 0;
    let pong = ping_through(&mut ws, &mut media_before).await;
    let mut media_after = 0;
    while media_before + media_after < greeting_frames() {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""event":"media""#) {
                    media_after += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let sid = stream_sid(n);
    let _ = ws
        .send(Message::text(format!(
            r#"{{"event":"stop","streamSid":"{sid}"}}"#
        )))
        .await;
    let mut ending = read_to_end(&mut ws, PATIENCE).await;
    ending.media += media_before + media_after;
    Observed {
        ending: Some(ending),
        pong_after_input: pong,
        call_released: released(n).await,
        ..Observed::default()
    }
}

/// Reads to the end; `call` is the call started on the socket, if any (`None`: the server
/// refused before any call existed, so there is nothing to release).
async fn finish_closed(mut ws: Ws, call: Option<u32>) -> Observed {
    let ending = read_to_end(&mut ws, PATIENCE).await;
    Observed {
        ending: Some(ending),
        call_released: match call {
            Some(n) => released(n).await,
            None => true,
        },
        ..Observed::default()
    }
}

/// Whether the server finished with call `n` (its `WS closed` line, the last thing it logs
/// for a call, after the engine call and the socket are gone).
async fn released(n: u32) -> bool {
    !Logs::capture()
        .wait_for("WS closed", &call_sid(n), PATIENCE)
        .await
        .is_empty()
}

/// Opens a call and waits for its first server media (the call is running).
async fn running_call(server: &TestServer, n: u32) -> Ws {
    let mut ws = open_call(server, n).await;
    assert!(
        support::read_media(&mut ws, 1, PATIENCE).await,
        "call {n} started"
    );
    ws
}

/// A raw WebSocket handshake (signed) on a fresh connection; returns the socket after the 101.
async fn raw_upgrade(server: &TestServer) -> TcpStream {
    let sig = twilio_sign(TOKEN, &server.stream_url(), &[]);
    let req = format!(
        "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Twilio-Signature: {sig}\r\n\r\n",
        server.addr
    );
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_raw(&mut tcp, PATIENCE).await;
    assert_eq!(status_of(&head), 101, "{head}");
    tcp
}

/// One WebSocket frame from the client, whatever its first byte says (FIN, the RSV bits and the
/// opcode: `0x81` a final text frame, `0x83` the reserved opcode 3, `0xC1` a text frame with
/// RSV1 set, `0x88` a close), masked as a client must unless `masked` is false.
fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = frame_head(first, if masked { 0x80 } else { 0 }, payload.len());
    if masked {
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// The first byte, then the mask bit and the payload length (7 bits, or 126 and 16 bits, or
/// 127 and 64 bits).
fn frame_head(first: u8, mask_bit: u8, len: usize) -> Vec<u8> {
    let mut head = vec![first];
    match u16::try_from(len) {
        Ok(short) if short < 126 => head.push(mask_bit | short as u8),
        Ok(medium) => {
            head.push(mask_bit | 126);
            head.extend_from_slice(&medium.to_be_bytes());
        }
        Err(_) => {
            head.push(mask_bit | 127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    head
}

/// The close code in the first server close frame found in `bytes` (unmasked server frames).
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0F;
        let (len, header) = match bytes[i + 1] & 0x7F {
            126 if i + 4 <= bytes.len() => (
                usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]])),
                4,
            ),
            127 => return None,
            n => (usize::from(n), 2),
        };
        let body = i + header;
        if opcode == 0x8 && len >= 2 && body + 2 <= bytes.len() {
            return Some(u16::from_be_bytes([bytes[body], bytes[body + 1]]));
        }
        i = body + len;
    }
    None
}

async fn run_case(server: &TestServer, input: Input, n: u32) -> Observed {
    let voice = server.url("/webhook/incoming_call");
    match input {
        Input::BodyOverLimitByLength => {
            let mut req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 70000\r\n\r\n",
                server.addr
            )
            .into_bytes();
            req.extend_from_slice(&[b'a'; 1000]);
            http(server, &req).await
        }
        Input::BodyOverLimitChunked => {
            let mut req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
                server.addr
            )
            .into_bytes();
            for _ in 0..70 {
                req.extend_from_slice(b"3e8\r\n");
                req.extend_from_slice(&[b'a'; 1000]);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
            http(server, &req).await
        }
        Input::FormNotUtf8 => {
            let body = b"CallSid=%FF%FE%FD&From=%C3%28";
            let sig = twilio_sign(TOKEN, &voice, &[]);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body,
                &sig,
            );
            http(server, &req).await
        }
        Input::WrongContentType => {
            let (body, sig) = signed_voice(&voice, TOKEN);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "text/plain",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::JsonWithoutBodyHash => {
            let body = br#"{"CallSid":"CA1"}"#;
            let sig = twilio_sign(TOKEN, &voice, &[]);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/json",
                body,
                &sig,
            );
            http(server, &req).await
        }
        Input::BadContentLength => {
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: abc\r\n\r\nCallSid=CA1",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        Input::MissingSignature => {
            let (body, _) = signed_voice(&voice, TOKEN);
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                server.addr,
                body.len()
            );
            http(server, req.as_bytes()).await
        }
        Input::ForgedSignature => {
            let (body, sig) = signed_voice(&voice, "not-the-token");
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::SignatureForOtherUrl => {
            let other = server.url("/webhook/call_status");
            let (body, sig) = signed_voice(&other, TOKEN);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::WrongMethodIncomingCall => {
            bare(server, "DELETE", "/webhook/incoming_call", "").await
        }
        Input::WrongMethodRecording => bare(server, "GET", "/webhook/handle_recording", "").await,
        Input::WrongMethodMediaStream => {
            bare(server, "POST", "/ws/twilio-media", "Content-Length: 0\r\n").await
        }
        Input::UnknownPath => bare(server, "GET", "/nowhere", "").await,
        Input::HugeHeader => {
            let req = format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
                server.addr,
                "a".repeat(1 << 20)
            );
            http(server, req.as_bytes()).await
        }
        Input::TooManyHeaders => {
            let mut req = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", server.addr);
            for i in 0..500 {
                req.push_str(&format!("X-H{i}: v\r\n"));
            }
            req.push_str("\r\n");
            http(server, req.as_bytes()).await
        }
        Input::GarbageRequestLine => http(server, b"\x16\x03\x01 hello there\r\n\r\n").await,
        Input::SlowHeaders => {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nX-Slow: ",
                server.addr
            );
            let mut seen = Observed::default();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            // Keep dribbling until the server gives up on us (a write fails or it closes).
            for &b in req.as_bytes().iter().chain(std::iter::repeat(&b'x')) {
                if tokio::time::Instant::now() > deadline {
                    return seen;
                }
                if tcp.write_all(&[b]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(100), tcp.peek(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => break,
                    Err(_) => {}
                }
            }
            let raw = read_raw(&mut tcp, PATIENCE).await;
            seen.status = status_of(&raw);
            seen.closed_without_answer = raw.is_empty();
            seen
        }
        Input::UpgradeUnsigned | Input::UpgradeForged => {
            let sig_header = match input {
                Input::UpgradeForged => format!(
                    "X-Twilio-Signature: {}\r\n",
                    twilio_sign("not-the-token", &server.stream_url(), &[])
                ),
                _ => String::new(),
            };
            let req = format!(
                "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{sig_header}\r\n",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        Input::PlainGetOnMediaPath => {
            let sig = twilio_sign(TOKEN, &server.stream_url(), &[]);
            let req = format!(
                "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nX-Twilio-Signature: {sig}\r\nConnection: close\r\n\r\n",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        Input::NoStart => {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            ws.send(Message::text(
                r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
            ))
            .await
            .unwrap();
            finish_closed(ws, None).await
        }
        Input::ChatterBeforeStart => {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            let sid = stream_sid(n);
            for chunk in 0..60 {
                if ws
                    .send(media(&sid, chunk, &silence_payload()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            finish_closed(ws, None).await
        }
        Input::BinaryBeforeStart => {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            for _ in 0..60 {
                if ws.send(Message::binary(vec![0u8; 160])).await.is_err() {
                    break;
                }
            }
            finish_closed(ws, None).await
        }
        Input::MediaBeforeStart => {
            let target = stream_target(server, n).await;
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            let sid = stream_sid(n);
            for chunk in 0..5 {
                ws.send(media(&sid, chunk, &silence_payload()))
                    .await
                    .unwrap();
            }
            ws.send(support::start_message(n, &target)).await.unwrap();
            finish_continuing(ws, n).await
        }
        Input::ReplayedVoiceWebhook => {
            let req = signed_voice_post(server, &voice, support::voice_params(n));
            let genuine = http(server, &req).await;
            assert_eq!(genuine.status, 200, "the genuine webhook is answered");
            http(server, &req).await
        }
        Input::CallSidNotTwilios => {
            let mut params = support::voice_params(n);
            for (k, v) in &mut params {
                if *k == "CallSid" {
                    v.push_str("\n1999-01-01T00:00:00Z  INFO forged");
                }
            }
            http(server, &signed_voice_post(server, &voice, params)).await
        }
        Input::StartCallSidNotTwilios => {
            let target = stream_target(server, n).await;
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            let Message::Text(start) = support::start_message(n, &target) else {
                unreachable!()
            };
            let forged = format!("{}\\n1999-01-01T00:00:00Z  INFO forged", call_sid(n));
            let start = start.replace(
                &format!("\"callSid\":\"{}\"", call_sid(n)),
                &format!("\"callSid\":\"{forged}\""),
            );
            assert!(start.contains("forged"));
            ws.send(Message::text(start)).await.unwrap();
            finish_closed(ws, None).await
        }
        Input::InvalidToken | Input::UnsupportedFormat => {
            let target = stream_target(server, n).await;
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut ws = ws_connect(server, tcp).await;
            let Message::Text(start) = support::start_message(n, &target) else {
                unreachable!()
            };
            let start = match input {
                Input::InvalidToken => {
                    let token = target
                        .parameters
                        .iter()
                        .find(|(k, _)| k == "streamToken")
                        .map(|(_, v)| v.clone())
                        .expect("TwiML carries a stream token");
                    start.replace(&token, "0000000000000000")
                }
                _ => start
                    .replace("audio/x-mulaw", "audio/l16")
                    .replace("8000", "16000"),
            };
            ws.send(Message::text(start)).await.unwrap();
            finish_closed(ws, None).await
        }
        Input::NonJson
        | Input::MissingFields
        | Input::Binary
        | Input::UnknownEvent
        | Input::WrongPayloadLength
        | Input::BadBase64
        | Input::NonNumericChunk
        | Input::BackwardsChunk
        | Input::WrongStreamSid
        | Input::SecondStart
        | Input::UnknownMark
        | Input::MediaFlood
        | Input::PingStorm => {
            let mut ws = open_call(server, n).await;
            for m in bad_messages(input, n) {
                ws.send(m).await.unwrap();
            }
            finish_continuing(ws, n).await
        }
        Input::OversizeMessage => {
            let mut ws = running_call(server, n).await;
            let big = format!(r#"{{"event":"media","x":"{}"}}"#, "A".repeat(70_000));
            let _ = ws.send(Message::text(big)).await;
            finish_closed(ws, Some(n)).await
        }
        Input::HugeFrame => {
            let mut ws = running_call(server, n).await;
            let _ = ws.send(Message::binary(vec![0u8; 1 << 20])).await;
            finish_closed(ws, Some(n)).await
        }
        Input::AbsurdFrameLength => {
            let mut tcp = raw_upgrade(server).await;
            // Text frame, masked, 64-bit length 2^62, mask key, no payload.
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            tcp.write_all(&frame).await.unwrap();
            let mut bytes = Vec::new();
            let mut buf = [0u8; 256];
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while let Ok(Ok(k)) =
                tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
                    .await
            {
                if k == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..k]);
            }
            Observed {
                ending: Some(Ending {
                    close: close_code_in(&bytes),
                    ..Ending::default()
                }),
                call_released: true,
                ..Observed::default()
            }
        }
        Input::HalfOpen => {
            let ws = running_call(server, n).await;
            finish_closed(ws, Some(n)).await
        }
        Input::AbruptReset => {
            let mut ws = open_call(server, n).await;
            assert!(support::read_media(&mut ws, 1, PATIENCE).await);
            // SO_LINGER 0: closing sends RST instead of FIN.
            let tcp = ws.into_inner();
            tcp.set_zero_linger().unwrap();
            drop(tcp);
            Observed {
                ending: Some(Ending::default()),
                call_released: released(n).await,
                ..Observed::default()
            }
        }
        Input::StopsReading => stops_reading(server, n).await,
        Input::RawFrames(frames) => {
            let mut ws = running_call(server, n).await;
            // Under tungstenite, which has flushed everything it was given.
            let _ = ws.get_mut().write_all(&frames(&stream_sid(n))).await;
            finish_closed(ws, Some(n)).await
        }
    }
}

/// The messages a "call continues" case sends right after `start`.
fn bad_messages(input: Input, n: u32) -> Vec<Message> {
    use base64::Engine as _;
    let sid = stream_sid(n);
    let good = silence_payload();
    match input {
        Input::NonJson => vec![
            Message::text("not json at all"),
            Message::text("{\"event\":"),
        ],
        Input::MissingFields => vec![
            Message::text(r#"{"event":"media"}"#),
            Message::text(r#"{"no_event":true}"#),
            Message::text(format!(
                r#"{{"event":"media","streamSid":"{sid}","media":{{}}}}"#
            )),
        ],
        Input::Binary => vec![
            Message::binary(vec![1u8, 2, 3]),
            Message::binary(vec![0u8; 400]),
        ],
        Input::UnknownEvent => vec![Message::text(format!(
            r#"{{"event":"hologram","streamSid":"{sid}"}}"#
        ))],
        Input::WrongPayloadLength => {
            let short = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 100]);
            let long = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 320]);
            vec![
                media(&sid, 1, &short),
                media(&sid, 2, &long),
                media(&sid, 3, ""),
            ]
        }
        Input::BadBase64 => vec![media(&sid, 1, "!!!not base64!!!"), media(&sid, 2, "QUJD=")],
        Input::NonNumericChunk => vec![Message::text(format!(
            r#"{{"event":"media","sequenceNumber":"x","streamSid":"{sid}","media":{{"track":"inbound","chunk":"one","timestamp":"-20ms","payload":"{good}"}}}}"#
        ))],
        Input::BackwardsChunk => (0..10)
            .chain((0..10).rev())
            .map(|c| media(&sid, c, &good))
            .collect(),
        Input::WrongStreamSid => vec![
            media(WRONG_STREAM, 1, &good),
            Message::text(format!(
                r#"{{"event":"mark","streamSid":"{WRONG_STREAM}","mark":{{"name":"p0"}}}}"#
            )),
            Message::text(format!(
                r#"{{"event":"stop","streamSid":"{WRONG_STREAM}"}}"#
            )),
        ],
        Input::SecondStart => vec![Message::text(format!(
            r#"{{"event":"start","start":{{"streamSid":"{WRONG_STREAM}","callSid":"{OTHER_CALL}","customParameters":{{}},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}},"streamSid":"{WRONG_STREAM}"}}"#
        ))],
        Input::UnknownMark => vec![Message::text(format!(
            r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"never-sent"}}}}"#
        ))],
        Input::MediaFlood => (0..3000).map(|c| media(&sid, c, &good)).collect(),
        Input::PingStorm => (0..3000u32)
            .map(|i| Message::Ping(i.to_be_bytes().to_vec().into()))
            .collect(),
        _ => Vec::new(),
    }
}

/// A caller that completes `start` then never reads again while it keeps sending speech (so
/// the server has echoes to send). Its receive buffer is tiny, so the server's writes block.
async fn stops_reading(server: &TestServer, n: u32) -> Observed {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    // A small MSS keeps the server's send buffer small (Linux sizes it from the MSS; loopback's
    // 64 KiB MSS would let it absorb minutes of audio before a write blocks).
    let mss: libc::c_int = 536;
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of!(mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG");
    let tcp = socket.connect(server.addr).await.unwrap();
    let ws = open_call_over(server, n, tcp).await;
    let (mut sink, _unread) = ws.split();
    let sid = stream_sid(n);
    let speech = speech_payloads();
    let mut sent_until_error = true;
    let deadline = tokio::time::Instant::now() + 4 * PATIENCE;
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    let mut chunk = 0u64;
    // Talk in real time for about 10 s (the longest utterance the echo agent records), then
    // pause for 12 s while the echo plays, and again: one ~10 s echo is usually more than the
    // socket buffers hold, but how much the kernel buffers (send-buffer autotuning) and how
    // the VAD splits the talk vary, so the caller keeps the echoes coming until the server's
    // writes block. Marks are never echoed either, since nothing is read.
    let talk = speech.len() * 7;
    let cycle = talk + 600;
    loop {
        interval.tick().await;
        if tokio::time::Instant::now() > deadline {
            sent_until_error = false;
            break;
        }
        let i = chunk as usize % cycle;
        let payload = if i < talk {
            speech[i % speech.len()].clone()
        } else {
            silence_payload()
        };
        if sink.send(media(&sid, chunk, &payload)).await.is_err() {
            break;
        }
        chunk += 1;
    }
    let stall_logged = !Logs::capture()
        .find("WS peer stopped reading: closing", &call_sid(n))
        .is_empty();
    Observed {
        stall_logged,
        ending: Some(Ending {
            timed_out: !sent_until_error,
            dropped: sent_until_error,
            ..Ending::default()
        }),
        call_released: released(n).await,
        ..Observed::default()
    }
}

fn speech_payloads() -> Vec<String> {
    use base64::Engine as _;
    include_bytes!("data/hello-world.ulaw")
        .chunks(160)
        .filter(|c| c.len() == 160)
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect()
}

/// The healthy caller: 2 s of silence (the greeting plays), "hello world", then silence while
/// the echo plays.
fn healthy_audio() -> Arc<Vec<i16>> {
    support::after_silence(Duration::from_secs(2), &support::speech())
}

const HEALTHY_LENGTH: Duration = Duration::from_secs(6);

/// What every healthy call must hear: the whole greeting verbatim and then the echo, with no
/// clear and only documented message shapes. When the frames arrived is not judged here: the
/// server's own account of its pacing is (see [`Matrix::check_outcomes`]).
fn assert_healthy(outcome: &CallOutcome, what: &str) {
    assert!(
        outcome.malformed.is_empty(),
        "{what}: malformed {:?}",
        outcome.malformed
    );
    assert_eq!(
        outcome.playback.clears, 0,
        "{what}: nothing cut: {:?}",
        outcome.playback
    );
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{what}: {:?}",
        outcome.close
    );
    let first: Vec<u8> = outcome
        .played
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .take(GREETING.len())
        .collect();
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    assert!(
        first.len() == GREETING.len()
            && first
                .iter()
                .zip(GREETING)
                .all(|(a, b)| norm(*a) == norm(*b)),
        "{what}: the whole greeting, verbatim"
    );
    // The echo of the 1.4 s clip, trimmed by the VAD at both ends.
    assert!(
        outcome.playback.media_messages >= greeting_frames() + 50,
        "{what}: greeting {} frames + an echo: {:?}",
        greeting_frames(),
        outcome.playback
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a1"),
        "{what}: greeting mark"
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a2"),
        "{what}: echo mark"
    );
    assert_eq!(
        outcome.playback.marks_played, outcome.playback.marks_received,
        "{what}"
    );
}

/// The healthy call's trial: listed after every case, so it runs last (see [`main`]).
const HEALTHY: &str = "healthy_call_beside_every_case";

/// Longest the healthy trial waits for the cases (each is bounded by a few [`PATIENCE`]s).
const CASES_PATIENCE: Duration = Duration::from_secs(600);

/// One reported test per case, and the healthy call's: `cargo test --test bad_input` runs them
/// all, `cargo test --test bad_input ws::` only the WebSocket cases (without the healthy call),
/// `cargo test --test bad_input -- --list` lists them.
///
/// The server runs on a tokio runtime of its own, as `handset` does; each case's client runs
/// on its own single-threaded runtime on a test thread, and the healthy caller on a thread and
/// runtime of its own, so neither the attacking clients nor the healthy caller can delay the
/// server's tasks by sharing its runtime (the machine's cores they do share, as a real server
/// shares them with its own hostile traffic).
///
/// The healthy trial is last in the list and libtest-mimic hands trials to its test threads in
/// list order, so it starts only once every case has started (with `--test-threads 1`: once
/// every case has finished); it then waits for the cases still running, stops the healthy
/// caller after its current call and checks every call it made.
fn main() -> ExitCode {
    let args = Arguments::from_args();
    let names: Vec<&'static str> = CASES.iter().map(|c| c.name).chain([HEALTHY]).collect();
    let runs = |name: &'static str| {
        let probe = Trial::test(name, || Ok(()));
        !args.list && !args.is_filtered_out(&probe) && !args.is_ignored(&probe)
    };
    let cases_selected = CASES.iter().filter(|c| runs(c.name)).count();
    let healthy_selected = runs(HEALTHY);
    let matrix = (cases_selected > 0 || healthy_selected).then(|| {
        Arc::new(Matrix::start(
            cases_selected,
            healthy_selected,
            args.nocapture,
        ))
    });
    let trials = names
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let matrix = matrix.clone();
            Trial::test(name, move || {
                let matrix = matrix.as_deref().expect("started when any trial runs");
                match CASES.get(i) {
                    Some(case) => matrix.run_case(case, i),
                    None => matrix.check_healthy(),
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(matrix) = matrix {
        let Ok(matrix) = Arc::try_unwrap(matrix) else {
            panic!("the matrix is still shared after the run")
        };
        matrix.stop();
    }
    conclusion.exit_code()
}

/// The server, the healthy caller and the count of cases still to finish.
struct Matrix {
    /// The server's own runtime.
    runtime: tokio::runtime::Runtime,
    server: Arc<TestServer>,
    logs: Logs,
    /// The healthy caller's thread (`None` when its trial is filtered out, or once joined).
    healthy: Mutex<Option<std::thread::JoinHandle<Vec<CallOutcome>>>>,
    /// Asks the healthy caller to stop after its current call.
    stop_healthy: Arc<AtomicBool>,
    /// Print the healthy calls' timing (`--nocapture`).
    report_timing: bool,
    /// Selected cases not finished yet.
    cases_left: Mutex<usize>,
    case_finished: Condvar,
}

impl Matrix {
    /// Starts the server on its own runtime and, when its trial is selected, the healthy
    /// caller: calls back to back, each 6 s, until [`Matrix::check_healthy`] stops it.
    fn start(cases: usize, healthy: bool, report_timing: bool) -> Self {
        let logs = Logs::capture();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("server")
            .build()
            .expect("the server's runtime");
        let server = Arc::new(runtime.block_on(TestServer::start(LIMITS)));
        let stop_healthy = Arc::new(AtomicBool::new(false));
        let healthy = healthy.then(|| {
            let (server, stop) = (server.clone(), stop_healthy.clone());
            #[allow(clippy::disallowed_methods)] // the healthy caller's own thread
            std::thread::spawn(move || {
                client_runtime().block_on(async move {
                    let mut outcomes = Vec::new();
                    let mut n = 2;
                    while !stop.load(Ordering::Relaxed) {
                        outcomes.push(
                            support::twilio_call(&server, n, healthy_audio(), HEALTHY_LENGTH).await,
                        );
                        n += 1;
                    }
                    outcomes
                })
            })
        });
        Self {
            runtime,
            server,
            logs,
            healthy: Mutex::new(healthy),
            stop_healthy,
            report_timing,
            cases_left: Mutex::new(cases),
            case_finished: Condvar::new(),
        }
    }

    /// One case's trial: its input sent and its outcome checked, on a runtime of its own.
    fn run_case(&self, case: &Case, i: usize) -> Result<(), Failed> {
        // Counted as finished however it ends (a panic is the trial's failure).
        let _finished = CaseFinished(self);
        let n = 100 + i as u32;
        let (seen, wrong) = client_runtime().block_on(async {
            let seen = run_case(&self.server, case.input, n).await;
            let mut wrong = case.expect.check(&seen);
            if let Expect::CallContinues(counted) = case.expect {
                wrong.extend(check_counted(&self.logs, &call_sid(n), counted).await);
            }
            (seen, wrong)
        });
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "expected {:?}: not {}; saw {seen:?}",
            case.expect,
            wrong.join(", ")
        )
        .into())
    }

    /// The healthy trial: waits for the cases, stops the healthy caller after its current
    /// call, and checks every call it made.
    fn check_healthy(&self) -> Result<(), Failed> {
        let left = self
            .case_finished
            .wait_timeout_while(
                self.cases_left
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
                CASES_PATIENCE,
                |left| *left > 0,
            )
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *left > 0 {
            return Err(format!("{} cases still running after {CASES_PATIENCE:?}", *left).into());
        }
        drop(left);
        self.stop_healthy.store(true, Ordering::Relaxed);
        let caller = self
            .healthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the healthy caller runs when its trial is selected");
        let outcomes = caller
            .join()
            .map_err(|_| "the healthy caller panicked (see its message above)")?;
        client_runtime().block_on(self.check_outcomes(&outcomes));
        Ok(())
    }

    /// Every healthy call heard exactly what an undisturbed call hears, and the server's pacer
    /// always had its next frame ready when it was due.
    ///
    /// The caller's receive times are not judged: on a loaded 2-core machine (a debug build,
    /// other builds beside it) every thread of this process, a bare sleeping one included, is
    /// sometimes held up for 50–130 ms, the server's engine threads, its socket writers and
    /// the healthy caller alike, and the pacer's 60 ms lead does not cover that. With
    /// `--nocapture` the caller-side gaps and the pacer's late wake-ups are printed.
    async fn check_outcomes(&self, outcomes: &[CallOutcome]) {
        assert!(!outcomes.is_empty(), "a healthy call ran");
        for (i, outcome) in outcomes.iter().enumerate() {
            let what = format!("healthy call {i}");
            let sid = call_sid(2 + i as u32);
            assert_healthy(outcome, &what);
            // Exact counts: every frame the server sent was received, every frame the caller
            // sent reached the engine.
            let stop = self.logs.wait_for("WS stop", &sid, PATIENCE).await;
            assert_eq!(stop.len(), 1, "{what}: one WS stop line");
            if self.report_timing {
                eprintln!(
                    "{HEALTHY}: call {i}: {} frames; caller-side gaps {} ({:?}); pacer late wake-ups {}",
                    outcome.playback.media_messages,
                    outcome.playback.underruns,
                    outcome.playback.underrun_time,
                    stop[0]["late_wakeups"]
                );
            }
            // The server's pacer never found the call's queue empty when a frame was due
            // (an underrun is a re-anchor caused by a starved queue, not a late wake-up).
            assert_eq!(
                stop[0]["underruns"].as_u64(),
                Some(0),
                "{what}: the pacer never starved: {}",
                stop[0]
            );
            assert_eq!(
                stop[0]["frames_out"].as_u64(),
                Some(outcome.playback.media_messages),
                "{what}: frames the server sent = frames the caller received: {}",
                stop[0]
            );
            // Frames that arrive after their playout time (a stalled machine) are counted as
            // late.
            let taken =
                stop[0]["media_in"].as_u64().unwrap_or(0) + stop[0]["late"].as_u64().unwrap_or(0);
            assert_eq!(
                taken, outcome.frames_sent,
                "{what}: frames the caller sent = frames the engine took in or counted late: {}",
                stop[0]
            );
            assert!(
                self.logs.find("WS input dropped", &sid).is_empty(),
                "{what}: nothing dropped"
            );
        }
        assert_eq!(self.server.wait_idle(PATIENCE).await, 0, "every call ended");
    }

    /// Stops the healthy caller if its trial did not, then the server.
    fn stop(self) {
        self.stop_healthy.store(true, Ordering::Relaxed);
        if let Some(caller) = self
            .healthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = caller.join();
        }
        let Ok(server) = Arc::try_unwrap(self.server) else {
            panic!("the server is still shared")
        };
        self.runtime.block_on(server.stop());
    }
}

/// Counts a case as finished when dropped.
struct CaseFinished<'a>(&'a Matrix);

impl Drop for CaseFinished<'_> {
    fn drop(&mut self) {
        *self
            .0
            .cases_left
            .lock()
            .unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.case_finished.notify_all();
    }
}

/// A client's runtime: one thread, the caller's own.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}
