//! The Media Streams WebSocket: the upgrade, and the per-call bridge between the socket and an
//! engine call.
//!
//! The upgrade is checked before anything is accepted: it must be a WebSocket handshake, and
//! when an auth token is configured its `X-Twilio-Signature` must match the `wss://` URL as
//! written in the TwiML (no parameters); otherwise 400/403 and no upgrade. The subprotocol
//! `audio.twilio.com` is echoed exactly when the client offers it.
//!
//! Whether the call is taken once its `start` arrives (drain, token, capacity, agent) is
//! decided in `session`; the bridge stores the reason with the call when it is refused.
//!
//! After the upgrade, a reader task (`reader.rs`) parses each text message
//! ([`media_stream::parse`](crate::media_stream::parse)), decodes base64 into a fixed 160-byte
//! frame and pushes it into the call's lock-free ring with the instant it was read; marks, DTMF and stop go over the call's control channel. A writer task
//! (`writer.rs`) turns the engine's [`Outbound`](handset_engine::driver::Outbound) messages
//! into the three JSON shapes Twilio accepts, with each mark's wire name from `marks.rs`.
//! Neither ever blocks an engine thread: the engine hands messages over with `try_send` into a
//! bounded queue, and a socket that stops reading fills only its own queue.
//!
//! The stream limits (largest message, start, idle and write timeouts) come from [`Config`](crate::config::Config)
//! (`WS_*` variables), read once per stream.
//!
//! Bad input never ends the process or touches another call: each case either continues the
//! call with a counted drop or closes it with a specific close code and a log line
//! (see [`CloseReason`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

mod marks;
mod reader;
mod report;
mod writer;

use crate::media_stream::CloseReason;
use crate::state::AppState;
pub use marks::{MarkName, parse_mark_name};
use writer::WRITE_BUFFER_BYTES;

/// The subprotocol some Twilio clients offer; echoed only when offered.
pub const TWILIO_SUBPROTOCOL: &str = "audio.twilio.com";
/// Socket read buffer per stream: 2 KiB reads about five `media` messages (~400 bytes each)
/// per syscall, more than one 20 ms frame brings, and keeps the per-call buffer small (it is
/// held for the whole call). A larger message grows the frame buffer, not this one.
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// Most unsent bytes held for a stream whose peer is not reading.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// The kernel send buffer asked for a media-stream socket. Linux doubles it for its own
/// bookkeeping: 64 KiB, about 4 s of outbound audio (a `media` message is ~310 bytes on the
/// wire, 50 a second, plus marks: ~16 KB/s). Setting it turns off send-buffer autotuning for
/// this socket, which would otherwise let the kernel absorb up to `tcp_wmem`'s 4 MiB (minutes
/// of audio) before a write blocks, so a peer that stops reading was seen only that late. Four
/// seconds is still 13 times what a 300 ms round trip keeps in flight (~5 KB) and rides out a
/// few seconds of loss recovery before a write waits at all; [`Config::ws_write_timeout`]
/// then bounds the wait (see `writer.rs`).
///
/// [`Config::ws_write_timeout`]: crate::config::Config::ws_write_timeout
const MEDIA_SEND_BUFFER_BYTES: usize = 32 * 1024;
/// Outbound messages queued per call between the engine and the socket (about 8 s of audio).
pub const OUTBOUND_QUEUE: usize = 512;

/// Handles `GET /ws/twilio-media`: validates and upgrades, or refuses with a status.
pub fn upgrade(
    state: Arc<AppState>,
    req: Request<Incoming>,
    ws_url: &str,
    id: u64,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let Some(key) = websocket_key(headers) else {
        return plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if let Some(verifier) = &state.verifier {
        let header = headers
            .get(crate::signature::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Err(reason) = verifier.verify(ws_url, &[], header) {
            state
                .metrics
                .signature_failure(crate::metrics::SignatureTransport::WebSocket);
            tracing::warn!(id, url = ws_url, %reason, "WS handshake refused: signature check failed");
            return plain(StatusCode::FORBIDDEN, "forbidden\n");
        }
    }
    let offered = offers_twilio_protocol(headers);
    let accept = derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if offered {
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(TWILIO_SUBPROTOCOL),
        );
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                // The server serves plain TCP, each connection counted (`server::serve`); the
                // socket itself is needed to bound its send buffer. The counted stream moves
                // into the WebSocket, so the connection stays counted until its socket closes.
                // Bytes hyper read past the handshake go first.
                let Ok(parts) = upgraded.downcast::<TokioIo<crate::conn::CountedStream>>() else {
                    tracing::error!(id, "WS upgrade: the connection is not a counted TCP stream");
                    return;
                };
                let tcp = parts.io.into_inner();
                if let Err(e) =
                    socket2::SockRef::from(tcp.tcp()).set_send_buffer_size(MEDIA_SEND_BUFFER_BYTES)
                {
                    tracing::warn!(id, error = %e, "WS send buffer not bounded");
                }
                // Small buffers: a media message is ~400 bytes, and tungstenite's 128 KiB
                // defaults would be most of a call's memory. The writer feeds what is queued
                // and flushes once per batch (the out buffer grows only to one batch); the
                // write buffer is capped so a stalled peer is bounded.
                let config = WebSocketConfig::default()
                    .read_buffer_size(READ_BUFFER_BYTES)
                    .write_buffer_size(WRITE_BUFFER_BYTES)
                    .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
                    .max_message_size(Some(state.config.ws_max_message_bytes))
                    .max_frame_size(Some(state.config.ws_max_message_bytes));
                let ws = WebSocketStream::from_partially_read(
                    tcp,
                    parts.read_buf.to_vec(),
                    Role::Server,
                    Some(config),
                )
                .await;
                tracing::info!(id, subprotocol = offered, "WS connected");
                reader::run(state, ws, id).await;
            }
            Err(e) => tracing::warn!(id, error = %e, "WS upgrade failed"),
        }
    });
    resp
}

fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return None;
    }
    if headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return None;
    }
    headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether the client listed `audio.twilio.com` among its subprotocols.
pub fn offers_twilio_protocol(headers: &HeaderMap) -> bool {
    headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|p| p.trim() == TWILIO_SUBPROTOCOL))
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

type WsStream = WebSocketStream<crate::conn::CountedStream>;

/// Longest a stream's end waits for the store before its close frame goes out anyway.
const STORE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Stores why `call_sid`'s stream ended (bounded by [`STORE_WRITE_TIMEOUT`]; a failure is
/// logged, and the `<Connect action>` then finds no reason and takes the fallback).
async fn record_end(
    state: &AppState,
    call_sid: &str,
    stream_sid: &str,
    reason: CloseReason,
    transfer: Option<&crate::ending::Transfer>,
    id: u64,
) {
    let write = state.store.call_ended(
        call_sid,
        stream_sid,
        &state.config.instance_id,
        crate::clock::unix_ms(),
        reason.label(),
        transfer,
    );
    match tokio::time::timeout(STORE_WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(id, call_sid, error = %e, "call end not stored");
        }
        Err(_) => tracing::error!(
            id,
            call_sid,
            "call end not stored: the store did not answer in time"
        ),
    }
}

/// A stream's drain signal source, owned by [`AppState`].
pub type Draining = watch::Sender<bool>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_is_echoed_only_when_offered() {
        let mut h = HeaderMap::new();
        assert!(!offers_twilio_protocol(&h));
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, audio.twilio.com"),
        );
        assert!(offers_twilio_protocol(&h));
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("audio.twilio.com.evil"),
        );
        assert!(!offers_twilio_protocol(&h));
    }
}
