//! Twilio Media Streams messages: parsing what Twilio sends and writing exactly the three shapes
//! it accepts back. Pure: no I/O, no clock. Twilio's side of the same messages (written as
//! Twilio writes them, read as strictly as Twilio reads them) is [`twilio_side`], for the call
//! simulator and the tests, so the protocol lives in one place.
//!
//! Parsing borrows from the message text (no allocation for a `media` message unless a string
//! contains JSON escapes). Unknown fields are ignored and unknown events are reported as
//! [`Inbound::Unknown`], as Twilio may add both. Outbound messages are written into a reusable
//! buffer with the stream's `streamSid` pre-escaped once, so a 20 ms frame costs one base64
//! encode and a few copies.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, BytesMut};
use handset_engine::frame::MediaError;
use handset_engine::{InboundMedia, MulawFrame};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub mod twilio_side;

pub use twilio_side::{ToTwilio, ToTwilioError, TwilioWriter, parse_to_twilio};

/// The path Twilio's Media Streams WebSocket connects to (the TwiML's `<Stream url>`).
pub const MEDIA_STREAM_PATH: &str = "/ws/twilio-media";

/// Largest base64 payload accepted in one inbound `media` message (20 ms = 216 characters).
const MAX_PAYLOAD_BASE64: usize = 1024;

/// Bytes of the outbound writer's reusable block: three `media` messages (~300 bytes each).
/// Every call holds one, so it is kept small.
const WRITER_BLOCK: usize = 1024;

/// Why a text message from Twilio was not understood.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed message: {0}")]
    Json(String),
    /// A required field is missing.
    #[error("{event} message without {field}")]
    Missing {
        /// The event.
        event: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// `media.payload` is not valid base64.
    #[error("media payload is not valid base64")]
    Base64,
    /// A `media` field failed validation.
    #[error("{0}")]
    Media(#[from] MediaError),
    /// A Twilio identifier in `start` is not its prefix and 32 hex digits (the value is not
    /// kept: it is not Twilio's, and not safe to log).
    #[error("start message with an invalid {field}: expected {prefix} and 32 hex digits")]
    Sid {
        /// The field.
        field: &'static str,
        /// The prefix it must have.
        prefix: &'static str,
    },
    /// `start.mediaFormat` is not 8 kHz mono µ-law.
    #[error("unsupported media format: {encoding} at {sample_rate} Hz, {channels} channel(s)")]
    Format {
        /// Encoding named.
        encoding: String,
        /// Rate named.
        sample_rate: u32,
        /// Channels named.
        channels: u32,
    },
}

/// The `start` message's metadata.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct StartMeta {
    /// `start.accountSid`.
    pub account_sid: String,
    /// `start.callSid`.
    pub call_sid: String,
    /// `start.streamSid` (or the top-level `streamSid`).
    pub stream_sid: String,
    /// `start.tracks`.
    pub tracks: Vec<String>,
    /// `start.customParameters`, from the TwiML `<Parameter>`s.
    pub custom_parameters: HashMap<String, String>,
}

/// One message from Twilio.
#[derive(Debug, Eq, PartialEq)]
pub enum Inbound<'a> {
    /// `connected`: the first message.
    Connected {
        /// `protocol`, e.g. `Call`.
        protocol: Cow<'a, str>,
    },
    /// A DTMF key.
    Dtmf {
        /// The stream it belongs to.
        stream_sid: Cow<'a, str>,
        /// The key.
        digit: char,
    },
    /// The echo of a mark we sent.
    Mark {
        /// The stream it belongs to.
        stream_sid: Cow<'a, str>,
        /// The mark's name.
        name: Cow<'a, str>,
    },
    /// 20 ms of caller audio.
    Media {
        /// The stream it belongs to.
        stream_sid: Cow<'a, str>,
        /// The validated frame.
        media: InboundMedia,
    },
    /// `start`: the stream's identity.
    Start(Box<StartMeta>),
    /// `stop`: the stream ended.
    Stop {
        /// The stream it belongs to.
        stream_sid: Cow<'a, str>,
    },
    /// An event this version does not know; ignored and counted.
    Unknown,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default, rename = "streamSid")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    media: Option<RawMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<RawMark<'a>>,
    #[serde(borrow, default)]
    dtmf: Option<RawDtmf<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(borrow, default)]
    protocol: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow, default)]
    track: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    chunk: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMark<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDtmf<'a> {
    #[serde(borrow, default)]
    digit: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStart {
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    call_sid: String,
    #[serde(default)]
    stream_sid: String,
    #[serde(default)]
    tracks: Vec<String>,
    #[serde(default)]
    custom_parameters: HashMap<String, String>,
    #[serde(default)]
    media_format: Option<RawFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFormat {
    #[serde(default)]
    encoding: String,
    #[serde(default)]
    sample_rate: u32,
    #[serde(default)]
    channels: u32,
}

/// Parses one text message from Twilio.
pub fn parse(text: &str) -> Result<Inbound<'_>, ProtocolError> {
    let raw: Raw<'_> =
        serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    fn sid<'a>(
        event: &'static str,
        sid: Option<Cow<'a, str>>,
    ) -> Result<Cow<'a, str>, ProtocolError> {
        sid.ok_or(ProtocolError::Missing {
            event,
            field: "streamSid",
        })
    }
    match raw.event.as_ref() {
        "media" => {
            let stream_sid = sid("media", raw.stream_sid)?;
            let media = raw.media.ok_or(ProtocolError::Missing {
                event: "media",
                field: "media",
            })?;
            if media.track.as_deref().is_some_and(|t| t != "inbound") {
                // Only the caller's track is used (bidirectional streams carry only it).
                return Ok(Inbound::Unknown);
            }
            let missing = |field| ProtocolError::Missing {
                event: "media",
                field,
            };
            let chunk = media.chunk.ok_or_else(|| missing("media.chunk"))?;
            let timestamp = media.timestamp.ok_or_else(|| missing("media.timestamp"))?;
            let payload = media.payload.ok_or_else(|| missing("media.payload"))?;
            let mut buf = [0u8; 768];
            if payload.len() > MAX_PAYLOAD_BASE64 {
                return Err(MediaError::PayloadLength {
                    got: payload.len() / 4 * 3,
                }
                .into());
            }
            let n = STANDARD
                .decode_slice(payload.as_bytes(), &mut buf)
                .map_err(|_| ProtocolError::Base64)?;
            let media = InboundMedia::parse(&chunk, &timestamp, &buf[..n])?;
            Ok(Inbound::Media { stream_sid, media })
        }
        "mark" => {
            let stream_sid = sid("mark", raw.stream_sid)?;
            let name = raw
                .mark
                .and_then(|m| m.name)
                .ok_or(ProtocolError::Missing {
                    event: "mark",
                    field: "mark.name",
                })?;
            Ok(Inbound::Mark { stream_sid, name })
        }
        "dtmf" => {
            let stream_sid = sid("dtmf", raw.stream_sid)?;
            let digit = raw
                .dtmf
                .and_then(|d| d.digit)
                .and_then(|d| {
                    let mut chars = d.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) if c.is_ascii_digit() || "*#ABCD".contains(c) => Some(c),
                        _ => None,
                    }
                })
                .ok_or(ProtocolError::Missing {
                    event: "dtmf",
                    field: "dtmf.digit",
                })?;
            Ok(Inbound::Dtmf { stream_sid, digit })
        }
        "start" => {
            let start = raw.start.ok_or(ProtocolError::Missing {
                event: "start",
                field: "start",
            })?;
            if let Some(f) = &start.media_format
                && (f.encoding != "audio/x-mulaw" || f.sample_rate != 8000 || f.channels != 1)
            {
                return Err(ProtocolError::Format {
                    encoding: f.encoding.clone(),
                    sample_rate: f.sample_rate,
                    channels: f.channels,
                });
            }
            let stream_sid = if start.stream_sid.is_empty() {
                raw.stream_sid.map(Cow::into_owned).unwrap_or_default()
            } else {
                start.stream_sid
            };
            if stream_sid.is_empty() {
                return Err(ProtocolError::Missing {
                    event: "start",
                    field: "streamSid",
                });
            }
            for (field, prefix, value, required) in [
                ("streamSid", "MZ", &stream_sid, true),
                ("callSid", "CA", &start.call_sid, true),
                ("accountSid", "AC", &start.account_sid, false),
            ] {
                if (required || !value.is_empty()) && !crate::ids::is_sid(value, prefix) {
                    return Err(ProtocolError::Sid { field, prefix });
                }
            }
            Ok(Inbound::Start(Box::new(StartMeta {
                account_sid: start.account_sid,
                call_sid: start.call_sid,
                stream_sid,
                tracks: start.tracks,
                custom_parameters: start.custom_parameters,
            })))
        }
        "stop" => Ok(Inbound::Stop {
            stream_sid: sid("stop", raw.stream_sid)?,
        }),
        "connected" => Ok(Inbound::Connected {
            protocol: raw.protocol.unwrap_or(Cow::Borrowed("")),
        }),
        _ => Ok(Inbound::Unknown),
    }
}

/// Writes the three messages Twilio accepts on a bidirectional stream, exactly:
/// `{"event":"media","streamSid":…,"media":{"payload":…}}`, `{"event":"mark","streamSid":…,
/// "mark":{"name":…}}` and `{"event":"clear","streamSid":…}`.
#[derive(Debug)]
pub struct Writer {
    /// `"streamSid":"<sid>"`, JSON-escaped once.
    sid_field: String,
    buf: BytesMut,
}

impl Writer {
    /// A writer for the stream `stream_sid`.
    pub fn new(stream_sid: &str) -> Self {
        let sid = serde_json::to_string(stream_sid).unwrap_or_else(|_| "\"\"".to_owned());
        Self {
            sid_field: format!("\"streamSid\":{sid}"),
            // One message at a time (a media message is ~300 bytes); `split` hands it out and
            // `reserve` reclaims the space once the socket writer has dropped it.
            buf: BytesMut::with_capacity(WRITER_BLOCK),
        }
    }

    /// A `media` message carrying one frame.
    pub fn media(&mut self, frame: &MulawFrame) -> BytesMut {
        self.reserve(300);
        self.buf.put_slice(b"{\"event\":\"media\",");
        self.buf.put_slice(self.sid_field.as_bytes());
        self.buf.put_slice(b",\"media\":{\"payload\":\"");
        let start = self.buf.len();
        let encoded = 216;
        self.buf.resize(start + encoded, 0);
        let n = STANDARD
            .encode_slice(frame.as_bytes(), &mut self.buf[start..])
            .unwrap_or(0);
        self.buf.truncate(start + n);
        self.buf.put_slice(b"\"}}");
        self.buf.split()
    }

    /// A `mark` message. A name of ASCII letters, digits, `-` and `_` (all of Handset's own) is
    /// copied as is; any other is escaped as a JSON string, which allocates.
    pub fn mark(&mut self, name: &str) -> BytesMut {
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let escaped;
        let quoted: &[u8] = if plain {
            name.as_bytes()
        } else {
            escaped = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".to_owned());
            escaped.as_bytes()
        };
        self.reserve(64 + quoted.len());
        self.buf.put_slice(b"{\"event\":\"mark\",");
        self.buf.put_slice(self.sid_field.as_bytes());
        self.buf.put_slice(b",\"mark\":{\"name\":");
        if plain {
            self.buf.put_u8(b'"');
            self.buf.put_slice(quoted);
            self.buf.put_u8(b'"');
        } else {
            self.buf.put_slice(quoted);
        }
        self.buf.put_slice(b"}}");
        self.buf.split()
    }

    /// A `clear` message.
    pub fn clear(&mut self) -> BytesMut {
        self.reserve(64);
        self.buf.put_slice(b"{\"event\":\"clear\",");
        self.buf.put_slice(self.sid_field.as_bytes());
        self.buf.put_slice(b"}");
        self.buf.split()
    }

    fn reserve(&mut self, n: usize) {
        // The socket writer copies each message into tungstenite's write buffer and drops it
        // before asking for the next, so the block is normally unique again here and `reserve`
        // reclaims it in place (no allocation). Asking for exactly one block keeps it at
        // WRITER_BLOCK bytes: a larger request would make `BytesMut` grow it for good (16 KiB
        // per call when this asked for 16 KiB). Only when an earlier message is still alive is
        // a fresh block allocated, about one per three messages while that lasts.
        let need = n + self.sid_field.len();
        if self.buf.capacity() < need {
            self.buf.reserve(WRITER_BLOCK.max(need));
        }
    }
}

/// Why the shell closed a media stream, with the close code sent.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum CloseReason {
    /// The agent hung up (1000).
    AgentHangup,
    /// The remote agent failed; Twilio goes on to the recording fallback (1000).
    AgentFailed,
    /// The stream ended normally after `stop` (1000).
    Completed,
    /// The server is shutting down (1001).
    GoingAway,
    /// Too many messages before `start`, or `start` never came (1008).
    NoStart,
    /// The peer stopped reading: a message waited [`Config::ws_write_timeout`](crate::config::Config::ws_write_timeout)
    /// for the socket (1011 when it can still be sent).
    Stalled,
    /// The instance is draining and takes no new stream (1001); the call is redirected.
    Draining,
    /// The engine refused the call (1011).
    EngineRefused,
    /// `MAX_CALLS` media calls are already running (1013).
    Busy,
    /// The agent transferred the call once its audio had played (1000); the
    /// `<Connect action>` dials the target.
    Transfer,
    /// Idle for [`Config::ws_idle_timeout`](crate::config::Config::ws_idle_timeout) (1001).
    Idle,
    /// `start` without a valid single-use token (1008).
    InvalidToken,
    /// `start` whose `streamSid`, `callSid` or `accountSid` is not a Twilio identifier (1008).
    InvalidStart,
    /// A message over [`Config::ws_max_message_bytes`](crate::config::Config::ws_max_message_bytes) (1009).
    TooBig,
    /// `start` with a media format other than 8 kHz mono µ-law (1003).
    UnsupportedFormat,
    /// The store could not be reached to redeem the stream token (1011).
    StoreUnavailable,
    /// A frame broke the WebSocket protocol: an unknown opcode, reserved bits set, an unmasked
    /// client frame, a bad control frame or fragmentation (1002).
    ProtocolError,
    /// A text message (or a close frame's reason) that is not UTF-8 (1007).
    InvalidUtf8,
}

impl CloseReason {
    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::AgentHangup => "agent_hangup",
            Self::AgentFailed => "agent_failed",
            Self::Completed => "completed",
            Self::GoingAway => "going_away",
            Self::NoStart => "no_start",
            Self::Stalled => "stalled",
            Self::Draining => "draining",
            Self::EngineRefused => "engine_refused",
            Self::Busy => "busy",
            Self::Transfer => "transfer",
            Self::Idle => "idle",
            Self::InvalidToken => "invalid_token",
            Self::InvalidStart => "invalid_start",
            Self::TooBig => "too_big",
            Self::UnsupportedFormat => "unsupported_format",
            Self::StoreUnavailable => "store_unavailable",
            Self::ProtocolError => "protocol_error",
            Self::InvalidUtf8 => "invalid_utf8",
        }
    }

    /// The close frame sent: its code and reason.
    pub fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Self::AgentHangup => (CloseCode::Normal, "call ended by agent"),
            Self::AgentFailed => (CloseCode::Normal, "agent failed"),
            Self::Completed => (CloseCode::Normal, "stream stopped"),
            Self::GoingAway => (CloseCode::Away, "server shutting down"),
            Self::NoStart => (CloseCode::Policy, "expected start message"),
            Self::Stalled => (CloseCode::Error, "peer stopped reading"),
            Self::Draining => (CloseCode::Away, "server draining, call redirected"),
            Self::EngineRefused => (CloseCode::Error, "cannot start call"),
            Self::Busy => (CloseCode::Again, "server at capacity, try again later"),
            Self::Transfer => (CloseCode::Normal, "call transferred by agent"),
            Self::Idle => (CloseCode::Away, "idle timeout"),
            Self::InvalidToken => (CloseCode::Policy, "invalid or missing stream token"),
            Self::InvalidStart => (CloseCode::Policy, "invalid identifier in start"),
            Self::TooBig => (CloseCode::Size, "message too big"),
            Self::UnsupportedFormat => (CloseCode::Unsupported, "unsupported media format"),
            Self::StoreUnavailable => (CloseCode::Error, "store unavailable"),
            Self::ProtocolError => (CloseCode::Protocol, "protocol error"),
            Self::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8"),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const SID: &str = "MZ00000000000000000000000000000001";
    pub(super) const CALL: &str = "CA0123456789abcdef0123456789abcdef";
    pub(super) const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

    /// Identifiers in `start` are checked at the edge: anything but the prefix and 32 hex
    /// digits (a newline and a forged log line, say) is refused, naming the field only.
    #[test]
    fn start_with_a_malformed_identifier_is_refused() {
        let start = |stream: &str, call: &str, account: &str| {
            serde_json::json!({"event": "start", "start": {"streamSid": stream, "callSid": call,
                "accountSid": account, "tracks": ["inbound"]}})
            .to_string()
        };
        assert!(matches!(
            parse(&start(SID, CALL, ACCOUNT)),
            Ok(Inbound::Start(_))
        ));
        // accountSid may be absent; callSid and streamSid may not.
        assert!(matches!(
            parse(&start(SID, CALL, "")),
            Ok(Inbound::Start(_))
        ));
        let forged = format!("{CALL}\n2026-12-07T00:00:00Z  INFO forged");
        for (text, field) in [
            (start(SID, &forged, ACCOUNT), "callSid"),
            (start(SID, "", ACCOUNT), "callSid"),
            (start(SID, "CA1", ACCOUNT), "callSid"),
            (start(SID, &CALL.replace("CA", "MZ"), ACCOUNT), "callSid"),
            (start("MZ1", CALL, ACCOUNT), "streamSid"),
            (start(&format!("{SID}\r"), CALL, ACCOUNT), "streamSid"),
            (
                start(SID, CALL, "AC0123456789abcdef0123456789abcdeg"),
                "accountSid",
            ),
        ] {
            match parse(&text) {
                Err(ProtocolError::Sid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    fn media_json(chunk: &str, ts: &str, payload: &str) -> String {
        format!(
            r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{SID}"}}"#
        )
    }

    #[test]
    fn parses_every_documented_message() {
        let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
        assert_eq!(
            parse(connected).unwrap(),
            Inbound::Connected {
                protocol: "Call".into()
            }
        );
        let start = format!(
            r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"{ACCOUNT}","streamSid":"{SID}","callSid":"{CALL}","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"token":"abc"}}}},"streamSid":"{SID}"}}"#
        );
        let Inbound::Start(meta) = parse(&start).unwrap() else {
            panic!("start")
        };
        assert_eq!(meta.call_sid, CALL);
        assert_eq!(meta.stream_sid, SID);
        assert_eq!(meta.custom_parameters["token"], "abc");
        let payload = STANDARD.encode([0x7Fu8; 160]);
        let text = media_json("2", "5", &payload);
        let Inbound::Media { stream_sid, media } = parse(&text).unwrap() else {
            panic!("media")
        };
        assert_eq!(
            (stream_sid.as_ref(), media.chunk, media.timestamp_ms),
            (SID, 2, 5)
        );
        let dtmf = format!(
            r#"{{"event":"dtmf","streamSid":"{SID}","sequenceNumber":"5","dtmf":{{"track":"inbound_track","digit":"1"}}}}"#
        );
        assert!(matches!(
            parse(&dtmf).unwrap(),
            Inbound::Dtmf { digit: '1', .. }
        ));
        let mark = format!(
            r#"{{"event":"mark","sequenceNumber":"4","streamSid":"{SID}","mark":{{"name":"my label"}}}}"#
        );
        assert!(matches!(parse(&mark).unwrap(), Inbound::Mark { name, .. } if name == "my label"));
        let stop = format!(
            r#"{{"event":"stop","sequenceNumber":"5","stop":{{"accountSid":"{ACCOUNT}","callSid":"{CALL}"}},"streamSid":"{SID}"}}"#
        );
        assert!(matches!(parse(&stop).unwrap(), Inbound::Stop { .. }));
        assert_eq!(
            parse(r#"{"event":"hologram","x":1}"#).unwrap(),
            Inbound::Unknown
        );
    }

    #[test]
    fn rejects_broken_messages_with_specific_errors() {
        assert!(matches!(parse("not json"), Err(ProtocolError::Json(_))));
        assert!(matches!(
            parse(r#"{"noevent":1}"#),
            Err(ProtocolError::Json(_))
        ));
        assert_eq!(
            parse(&media_json("1", "0", "!!!notbase64")),
            Err(ProtocolError::Base64)
        );
        assert_eq!(
            parse(&media_json("1", "0", &STANDARD.encode([0u8; 100]))),
            Err(ProtocolError::Media(MediaError::PayloadLength { got: 100 }))
        );
        assert_eq!(
            parse(&media_json("x", "0", &STANDARD.encode([0u8; 160]))),
            Err(ProtocolError::Media(MediaError::BadChunk))
        );
        assert!(matches!(
            parse(&media_json("1", "0", &"A".repeat(5000))),
            Err(ProtocolError::Media(MediaError::PayloadLength { .. }))
        ));
        assert_eq!(
            parse(r#"{"event":"mark","streamSid":"MZ1","mark":{}}"#),
            Err(ProtocolError::Missing {
                event: "mark",
                field: "mark.name"
            })
        );
        assert!(matches!(
            parse(
                r#"{"event":"start","start":{"streamSid":"MZ1","mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#
            ),
            Err(ProtocolError::Format { .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"media","media":{}}"#),
            Err(ProtocolError::Missing { .. })
        ));
    }

    #[test]
    fn writes_exactly_the_documented_shapes() {
        let mut w = Writer::new(SID);
        let frame = MulawFrame([0xFF; 160]);
        let media: serde_json::Value = serde_json::from_slice(&w.media(&frame)).unwrap();
        assert_eq!(
            media,
            serde_json::json!({"event":"media","streamSid":SID,"media":{"payload":STANDARD.encode([0xFFu8;160])}})
        );
        assert_eq!(
            &w.mark("p12")[..],
            format!(r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":"p12"}}}}"#).as_bytes()
        );
        let mark: serde_json::Value = serde_json::from_slice(&w.mark("p\"1")).unwrap();
        assert_eq!(
            mark,
            serde_json::json!({"event":"mark","streamSid":SID,"mark":{"name":"p\"1"}})
        );
        let clear: serde_json::Value = serde_json::from_slice(&w.clear()).unwrap();
        assert_eq!(clear, serde_json::json!({"event":"clear","streamSid":SID}));
    }

    #[test]
    fn writer_reuses_one_small_block_when_each_message_is_dropped_before_the_next() {
        let mut w = Writer::new(SID);
        let frame = MulawFrame([0x55; 160]);
        for i in 0..500 {
            let msg = if i % 7 == 0 {
                w.mark("p1")
            } else {
                w.media(&frame)
            };
            assert!(msg.len() > 20);
            drop(msg);
            assert!(
                w.buf.capacity() <= WRITER_BLOCK,
                "block grew to {} bytes after {i} messages",
                w.buf.capacity()
            );
        }
    }

    #[test]
    fn writer_messages_stay_intact_while_earlier_ones_are_still_held() {
        let mut w = Writer::new(SID);
        let held: Vec<BytesMut> = (0..40u8).map(|i| w.media(&MulawFrame([i; 160]))).collect();
        for (i, msg) in held.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_slice(msg).unwrap();
            assert_eq!(
                v["media"]["payload"],
                serde_json::json!(STANDARD.encode([i as u8; 160]))
            );
        }
        assert!(w.buf.capacity() <= 2 * WRITER_BLOCK);
    }
}
