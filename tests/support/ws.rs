//! Media Streams WebSockets to a [`TestServer`], spoken message by message as Twilio would.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use handset_sim::StreamTarget;

use super::{ACCOUNT_SID, TOKEN, TestServer, call_sid, stream_sid, stream_target, twilio_sign};

/// A raw client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

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
