//! The WebSocket family of messages on a running call (`ws::`): malformed, unknown, out of
//! order, for another stream, or in floods; each dropped and counted while the call goes on.

use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use super::finish_continuing;
use crate::case::{Case, Expect, Input, Observed, case, dropped};
use crate::support::{TestServer, media, open_call, silence_payload, stream_sid};

/// A well-formed StreamSid that belongs to no call of the run.
const WRONG_STREAM: &str = "MZ0000000000000000000000000000dead";
/// A well-formed CallSid that belongs to no call of the run.
const OTHER_CALL: &str = "CA0000000000000000000000000000dead";

/// The family's rows of the matrix.
pub(crate) static CASES: &[Case] = &[
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
];

/// Sends the bad messages of `input` on call `n` and returns what was observed.
pub(crate) async fn run_case(server: &TestServer, input: Input, n: u32) -> Observed {
    match input {
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
        other => unreachable!("not a message on a running call: {other:?}"),
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
