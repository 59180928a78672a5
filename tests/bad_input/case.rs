//! What every family of cases shares: one [`Case`] of the matrix, the hostile or broken
//! [`Input`] it sends, its defined outcome ([`Expect`]), what was seen on the wire
//! ([`Observed`]), and the checks that compare them ([`Expect::check`], and
//! [`check_counted`] for the counters a call logs); with [`http`], the raw HTTP exchange
//! behind the [`crate::http`] and [`crate::ws_upgrade`] cases.

use crate::support::{Ending, Logs, TestServer, header_of, raw_exchange, status_of};
use crate::{PATIENCE, greeting_frames};

/// One hostile or broken input.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input {
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
    /// [`ws_frame`](crate::ws::connection::ws_frame).
    RawFrames(fn(&str) -> Vec<u8>),
}

/// The defined outcome of one input.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
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
pub(crate) type Counted = &'static [(&'static str, &'static str, u64, u64)];

/// `field` of the call's `WS input dropped` line is exactly `n`.
macro_rules! dropped {
    ($($field:literal = $n:expr),+) => {
        &[$(("WS input dropped", $field, $n, $n)),+]
    };
}
pub(crate) use dropped;

/// What a case saw on the wire.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// HTTP status (0: none).
    pub(crate) status: u16,
    /// `Allow` header.
    pub(crate) allow: Option<String>,
    /// The raw answer was empty and the connection closed.
    pub(crate) closed_without_answer: bool,
    /// The WebSocket ending.
    pub(crate) ending: Option<Ending>,
    /// A ping sent after the bad input was answered.
    pub(crate) pong_after_input: bool,
    /// The server logged that the peer stopped reading.
    pub(crate) stall_logged: bool,
    /// The server's media calls went back to at most the healthy one after the case.
    pub(crate) call_released: bool,
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) input: Input,
    pub(crate) expect: Expect,
}

pub(crate) const fn case(name: &'static str, input: Input, expect: Expect) -> Case {
    Case {
        name,
        input,
        expect,
    }
}

impl Expect {
    /// What is wrong with `seen` for this expectation (empty: as defined).
    pub(crate) fn check(self, seen: &Observed) -> Vec<String> {
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

pub(crate) async fn http(server: &TestServer, request: &[u8]) -> Observed {
    let raw = raw_exchange(server.addr, request, PATIENCE).await;
    Observed {
        status: status_of(&raw),
        allow: header_of(&raw, "allow").map(str::to_owned),
        closed_without_answer: raw.is_empty(),
        ..Observed::default()
    }
}

/// What is wrong with the counters a call logged, against `counted`. Counters of the call's
/// `WS input dropped` line that are not listed must be zero.
pub(crate) async fn check_counted(logs: &Logs, call_sid: &str, counted: Counted) -> Vec<String> {
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
