//! A small reference voice agent that speaks Handset's agent protocol (`docs/agent-protocol.md`).
//!
//! It shows the whole contract without any speech service: it declares 24 kHz audio, greets with
//! two beeps, answers each caller utterance with one beep per utterance so far (sent in one burst,
//! much faster than real time: Handset paces it), puts a mark after every answer, reports a
//! stand-in transcript, stops talking on barge-in (`clear`), and hangs up on `#`.
//!
//! ```text
//! cargo run --example reference_agent -- 127.0.0.1:9100
//! AGENT_URL=ws://127.0.0.1:9100 cargo run -p handset-shell
//! ```
//!
//! Set `REFERENCE_AGENT_TOKEN` to require `Authorization: Bearer <token>` (pair it with
//! `AGENT_TOKEN` on the Handset side). Real agents replace [`answer`] with speech recognition, a
//! language model and speech synthesis, and keep the rest.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// The rate this agent declares for its audio.
pub const RATE: u32 = 24_000;

/// What one connection saw, returned when it ends (used by the tests).
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The `start` message.
    pub start: Option<Value>,
    /// Caller audio frames received (640 bytes each).
    pub frames: u64,
    /// Utterances answered.
    pub answers: u32,
    /// `heard_ms` of each barge-in.
    pub barge_ins: Vec<u64>,
    /// Marks reported played, in order.
    pub marks_played: Vec<String>,
}

/// `beeps` beeps of 150 ms at 660 Hz, 100 ms apart, at [`RATE`]: the canned answer.
pub fn answer(beeps: u32) -> Vec<i16> {
    let beep = (RATE as usize) * 150 / 1000;
    let gap = (RATE as usize) / 10;
    let mut pcm = Vec::with_capacity((beep + gap) * beeps as usize);
    for _ in 0..beeps {
        pcm.extend((0..beep).map(|i| {
            let phase = i as f32 * 660.0 / RATE as f32 * std::f32::consts::TAU;
            (phase.sin() * 6_000.0) as i16
        }));
        pcm.extend(std::iter::repeat_n(0, gap));
    }
    pcm
}

fn pcm_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Accepts connections until the listener fails; each call runs in its own task.
pub async fn serve(listener: TcpListener, token: Option<String>) {
    while let Ok((tcp, peer)) = listener.accept().await {
        let token = token.clone();
        tokio::spawn(async move {
            match handle(tcp, token.as_deref()).await {
                Ok(s) => eprintln!(
                    "{peer}: call ended: {} frames heard, {} answers, barge-ins {:?}",
                    s.frames, s.answers, s.barge_ins
                ),
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
}

/// Runs one call's connection to its end.
pub async fn handle(tcp: TcpStream, token: Option<&str>) -> Result<Session, String> {
    let _ = tcp.set_nodelay(true);
    #[allow(clippy::result_large_err)] // the handshake callback type is tungstenite's
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let Some(token) = token else { return Ok(resp) };
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given == Some(format!("Bearer {token}").as_str()) {
            Ok(resp)
        } else {
            let mut refuse = ErrorResponse::new(Some("unauthorized".into()));
            *refuse.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refuse)
        }
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, check)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    let mut session = Session::default();
    let send_json = |v: Value| Message::text(v.to_string());
    while let Some(msg) = rx.next().await {
        let msg = msg.map_err(|e| format!("read: {e}"))?;
        let text = match msg {
            Message::Binary(frame) => {
                // Caller audio: PCM16LE, 16 kHz, 20 ms. A real agent streams it to its STT.
                session.frames += u64::from(frame.len() == 640);
                continue;
            }
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let mut out = Vec::new();
        match event["type"].as_str().unwrap_or("") {
            "start" => {
                session.start = Some(event.clone());
                out.push(send_json(
                    json!({"type": "audio_format", "encoding": "pcm16le", "sample_rate": RATE}),
                ));
                out.push(Message::binary(pcm_bytes(&answer(2))));
                out.push(send_json(json!({"type": "mark", "name": "greeting"})));
            }
            // A dismissed utterance was not speech (music, noise): nothing to answer.
            "speech_ended" if event["dismissed"] == true => {}
            "speech_ended" => {
                session.answers += 1;
                let n = session.answers;
                let heard = format!("utterance {n} ended at {} ms", event["at_ms"]);
                out.push(send_json(
                    json!({"type": "transcript", "kind": "final", "text": heard}),
                ));
                out.push(Message::binary(pcm_bytes(&answer(n.min(5)))));
                out.push(send_json(
                    json!({"type": "mark", "name": format!("answer-{n}")}),
                ));
            }
            "barge_in" => {
                // Stop talking; drop anything still in flight to Handset.
                session
                    .barge_ins
                    .push(event["heard_ms"].as_u64().unwrap_or(0));
                out.push(send_json(json!({"type": "clear"})));
            }
            "mark_played" => {
                session
                    .marks_played
                    .push(event["name"].as_str().unwrap_or("").to_owned());
            }
            "dtmf" if event["digit"] == "#" => {
                out.push(Message::binary(pcm_bytes(&answer(1))));
                out.push(send_json(json!({"type": "hangup"})));
            }
            "stop" => break,
            _ => {}
        }
        for m in out {
            tx.send(m).await.map_err(|e| format!("write: {e}"))?;
        }
    }
    Ok(session)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".to_owned())
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("usage: reference_agent [ADDR:PORT]: {e}");
            std::process::exit(2);
        });
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let token = std::env::var("REFERENCE_AGENT_TOKEN").ok();
    eprintln!("reference agent listening on ws://{addr}");
    let serve = serve(listener, token);
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
