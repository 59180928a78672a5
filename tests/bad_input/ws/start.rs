//! The WebSocket family before and at `start` (`ws::`): no `start` in time, chatter or media
//! before it, and a `start` with a wrong stream token, an unsupported format or a `callSid`
//! that is not Twilio's.

use futures_util::SinkExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{finish_closed, finish_continuing};
use crate::case::{Case, Expect, Input, Observed, case, dropped};
use crate::support::{
    self, TestServer, call_sid, media, silence_payload, stream_sid, stream_target, ws_connect,
};

/// The family's rows of the matrix.
pub(crate) static CASES: &[Case] = &[
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
];

/// Sends a WebSocket `input` around `start` as call `n` and returns what was observed.
pub(crate) async fn run_case(server: &TestServer, input: Input, n: u32) -> Observed {
    match input {
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
        other => unreachable!("not an input around start: {other:?}"),
    }
}
