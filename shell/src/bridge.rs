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
//! After the upgrade, a reader task parses each text message ([`media_stream::parse`]), decodes
//! base64 into a fixed 160-byte frame and pushes it into the call's lock-free ring with the
//! instant it was read; marks, DTMF and stop go over the call's control channel. A writer task
//! turns the engine's [`Outbound`] messages into the three JSON shapes Twilio accepts. Neither
//! ever blocks an engine thread: the engine hands messages over with `try_send` into a bounded
//! queue, and a socket that stops reading fills only its own queue.
//!
//! The stream limits (largest message, start, idle and write timeouts) come from [`Config`](crate::config::Config)
//! (`WS_*` variables), read once per stream.
//!
//! Bad input never ends the process or touches another call: each case either continues the
//! call with a counted drop or closes it with a specific close code and a log line
//! (see [`CloseReason`]).

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use handset_engine::MarkId;
use handset_engine::agent::{CallInfo, HangupReason};
use handset_engine::call::{CallConfig, CallEvent, PROGRESS_MARK_BASE};
use handset_engine::driver::{CallHandle, CallSpec, Control, Outbound, OutboundSink, SinkError};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::media_stream::{self, CloseReason, Inbound, ProtocolError, Writer};
use crate::metrics::StreamCounters;
use crate::state::AppState;
use crate::store::CallRecord;

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
/// then bounds the wait (see [`write_loop`]).
///
/// [`Config::ws_write_timeout`]: crate::config::Config::ws_write_timeout
const MEDIA_SEND_BUFFER_BYTES: usize = 32 * 1024;
/// Once the writer closes a stream itself (a hang-up, a stalled peer), how long it waits for
/// the engine's final counters (its `WS stop` line) after the call is told to stop.
const ENDED_WAIT: Duration = Duration::from_secs(1);
/// Events a traced call can record (about 10 minutes at ~250 events per second).
const TRACE_EVENTS: usize = 150_000;
/// Outbound messages queued per call between the engine and the socket (about 8 s of audio).
pub const OUTBOUND_QUEUE: usize = 512;
/// Messages ignored before `start` before the socket is closed.
const MAX_BEFORE_START: u32 = 50;
/// A stream's counters are added to the shell's metrics every this many messages (about 5 s
/// of media) and when it ends.
const PUBLISH_EVERY_MESSAGES: u64 = 256;
/// Most messages one writer wake-up sends before flushing (what is already queued, never
/// waited for).
const WRITE_BATCH: usize = 16;
/// Socket bytes a writer gathers before tungstenite writes them; a batch is flushed at once
/// anyway, so this only lets the messages of one batch share a write.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// How much longer than `WS_WRITE_TIMEOUT` a peer that echoes marks may leave the marks sent
/// to it unechoed before it counts as stalled (Twilio echoes a mark when the audio before it
/// has played, and Handset sends audio in real time, so a healthy echo takes a round trip
/// plus Twilio's ~100 ms of buffered audio).
const MARK_ECHO_GRACE: Duration = Duration::from_secs(5);
/// How often the writer logs a `MEDIA_TX` summary while sending.
const MEDIA_TX_EVERY: Duration = Duration::from_secs(5);

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
                run(state, ws, id).await;
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

/// An engine message for the socket writer, with the instant it was queued: the writer
/// closes the stream when a message waits [`Config::ws_write_timeout`](crate::config::Config::ws_write_timeout)
/// for the socket.
type Queued = (Instant, Outbound);

/// The engine's handle on the socket writer's queue. Each message is stamped with the instant
/// the engine emitted it (the worker's own time: no clock read, lock or allocation here).
struct ChannelSink(mpsc::Sender<Queued>);

impl OutboundSink for ChannelSink {
    fn try_send(&mut self, now: Instant, msg: Outbound) -> Result<(), SinkError> {
        self.0.try_send((now, msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SinkError::Full,
            mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
        })
    }
}

/// Wire name of a mark id, held on the stack: `p<n>` for the call's progress marks, `a<n>` for
/// agent marks. The socket writer copies it straight into the `mark` message.
#[derive(Clone, Copy)]
pub struct MarkName {
    /// `p` or `a`, then up to 20 digits (`u64::MAX` has 20).
    bytes: [u8; 21],
    len: u8,
}

impl MarkName {
    /// The wire name of `id`.
    pub fn of(id: MarkId) -> Self {
        let (kind, n) = if id.0 >= PROGRESS_MARK_BASE {
            (b'p', id.0 - PROGRESS_MARK_BASE)
        } else {
            (b'a', id.0)
        };
        let mut bytes = [0u8; 21];
        bytes[0] = kind;
        let mut digits = &mut bytes[1..];
        // 20 bytes hold every u64, so the write cannot fail.
        let _ = write!(digits, "{n}");
        let len = 21 - digits.len() as u8;
        Self { bytes, len }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters and digits are ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for MarkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mark id of a wire name written by [`MarkName`].
pub fn parse_mark_name(name: &str) -> Option<MarkId> {
    let (kind, digits) = name.split_at_checked(1)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match kind {
        "p" => Some(MarkId(PROGRESS_MARK_BASE + n)),
        "a" if n < PROGRESS_MARK_BASE => Some(MarkId(n)),
        _ => None,
    }
}

type WsStream = WebSocketStream<crate::conn::CountedStream>;

/// Runs one media stream to its end.
async fn run(state: Arc<AppState>, ws: WsStream, id: u64) {
    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = mpsc::channel::<CloseReason>(4);
    let (out_tx, out_rx) = mpsc::channel::<Queued>(OUTBOUND_QUEUE);
    // The writer's word that it is closing the stream itself (a hang-up, a stalled peer).
    let (closing_tx, mut closing_rx) = tokio::sync::oneshot::channel::<()>();
    let mut counters = StreamCounters::default();
    let mut draining = state.draining.subscribe();

    // Phase 1: until a valid `start`.
    let started = tokio::time::timeout(state.config.ws_start_timeout, async {
        loop {
            let msg = stream.next().await;
            match msg {
                Some(Ok(Message::Text(text))) => {
                    counters.messages += 1;
                    match media_stream::parse(&text) {
                        Ok(Inbound::Connected { .. }) => {}
                        Ok(Inbound::Start(meta)) => return Ok(meta),
                        Ok(Inbound::Unknown) => counters.unknown_events += 1,
                        Ok(_) => counters.before_start += 1,
                        Err(ProtocolError::Format { .. }) => {
                            return Err(Some(CloseReason::UnsupportedFormat));
                        }
                        Err(ProtocolError::Sid { field, .. }) => {
                            tracing::warn!(id, field, "WS start refused: not a Twilio identifier");
                            return Err(Some(CloseReason::InvalidStart));
                        }
                        Err(_) => counters.malformed += 1,
                    }
                }
                // Ignored like any other message before `start`, and counted toward the cap.
                Some(Ok(Message::Binary(_))) => counters.binary += 1,
                Some(Ok(Message::Close(_))) | None => return Err(None),
                // Ping and pong (tungstenite answers pings itself).
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    let (reason, what) = read_error(&e);
                    log_read_error(id, None, reason, what);
                    return Err(Some(reason));
                }
            }
            if counters.before_start
                + counters.malformed
                + counters.unknown_events
                + counters.binary
                > u64::from(MAX_BEFORE_START)
            {
                return Err(Some(CloseReason::NoStart));
            }
        }
    })
    .await;
    let meta = match started {
        Ok(Ok(meta)) => meta,
        Ok(Err(reason)) => {
            finish_without_call(&state, sink, reason, id, &counters).await;
            return;
        }
        Err(_) => {
            finish_without_call(&state, sink, Some(CloseReason::NoStart), id, &counters).await;
            return;
        }
    };
    let refused = |reason| Refusal {
        reason,
        call_sid: &meta.call_sid,
        stream_sid: &meta.stream_sid,
    };
    let draining_now = *draining.borrow();
    let admitted = match crate::session::admit(&state, &meta, draining_now, id).await {
        Ok(admitted) => admitted,
        Err(reason) => {
            finish_refused(&state, sink, refused(reason), id, &counters).await;
            return;
        }
    };
    let crate::session::Admitted {
        info,
        account_sid,
        agent,
        control,
        traced,
    } = admitted;
    let spec = CallSpec {
        config: {
            let mut config = CallConfig {
                trace_events: if traced { TRACE_EVENTS } else { 0 },
                ..CallConfig::default()
            };
            config.echo.enabled = state.config.echo_check;
            config.onset_pause = state.config.onset_pause;
            // OpenAI Realtime takes turns from its own server VAD: dismissals would go unused.
            config.dismiss_unconfirmed = state
                .config
                .agent
                .as_ref()
                .is_none_or(|agent| agent.openai.is_none());
            config
        },
        info: info.clone(),
        agent,
        sink: Box::new(ChannelSink(out_tx)),
        onset_check: state
            .onset_check
            .as_ref()
            .map(|c| Box::new(c.handle()) as Box<dyn handset_engine::call::OnsetCheck>),
    };
    let mut handle = match state.engine.open_call(spec, crate::clock::now()) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(id, call_sid = %info.call_sid, error = %e, "WS start refused: engine");
            finish_refused(
                &state,
                sink,
                refused(CloseReason::EngineRefused),
                id,
                &counters,
            )
            .await;
            return;
        }
    };
    let _active = state.active_calls.enter();
    state.metrics.call_started();
    // Where and when the call runs, for whichever instance answers its `<Connect action>`.
    // Off the media path: the stream does not wait for it; the end is written after it.
    let record = CallRecord {
        call_sid: info.call_sid.clone(),
        account_sid,
        stream_sid: info.stream_sid.clone(),
        instance: state.config.instance_id.clone(),
        started_unix_ms: crate::clock::unix_ms(),
        ..CallRecord::default()
    };
    let recorded = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            if let Err(e) = state.store.call_started(&record).await {
                tracing::error!(id, call_sid = %record.call_sid, error = %e, "call record not stored");
            }
        }
    });
    tracing::info!(id, call_sid = %info.call_sid, stream_sid = %info.stream_sid, from = %state.config.loggable_number(&info.from), to = %state.config.loggable_number(&info.to), "WS start");

    let trace_dir = state.config.trace_dir.clone().filter(|_| traced);
    // What this stream's counters have added to the shell's metrics so far.
    let mut published = StreamCounters::default();
    let stop_reason = control.clone();
    // Mark echoes the reader has seen: the writer's sign that the peer still reads.
    let echoes = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        close_rx,
        WriterCall {
            pump: PumpCall {
                info: info.clone(),
                id,
                trace_dir,
                closing: closing_tx,
                echoes: Arc::clone(&echoes),
                write_timeout: state.config.ws_write_timeout,
                metrics: Arc::clone(&state.metrics),
            },
            recorded,
            control,
        },
        Arc::clone(&state),
    ));

    // Phase 2: stream until stop, close, error, idle or shutdown.
    let mut reason = None;
    // Set at the drain deadline when Twilio was asked to move the call (REST redirect).
    let mut handing_over = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // The writer ends first when the peer stopped reading or the agent hung up. The reader then
    // goes on only long enough to take the peer's close reply (at most `WS_WRITE_TIMEOUT`), so a
    // peer that stopped reading but keeps sending cannot hold the socket open.
    let mut writer_done = false;
    let mut closing_seen = false;
    let mut linger_deadline: Option<tokio::time::Instant> = None;
    loop {
        let idle = tokio::time::sleep(state.config.ws_idle_timeout);
        let drain = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let linger = async {
            match linger_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = stream.next() => {
                let now = crate::clock::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        counters.messages += 1;
                        if (counters.messages + counters.binary) % PUBLISH_EVERY_MESSAGES == 0 {
                            state.metrics.publish_stream(&counters, &mut published);
                        }
                        if on_text(&text, now, &meta.stream_sid, &mut handle, &mut counters, &echoes) {
                            // Twilio's `stop`: the call ended, or moved on (our handover).
                            reason = Some(if handing_over {
                                CloseReason::GoingAway
                            } else {
                                CloseReason::Completed
                            });
                            break;
                        }
                    }
                    // Twilio sends only text: ignored and counted.
                    Some(Ok(Message::Binary(_))) => {
                        counters.binary += 1;
                        if (counters.messages + counters.binary) % PUBLISH_EVERY_MESSAGES == 0 {
                            state.metrics.publish_stream(&counters, &mut published);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let (r, what) = read_error(&e);
                        log_read_error(id, Some(&info.call_sid), r, what);
                        reason = Some(r);
                        break;
                    }
                }
            }
            () = idle => {
                reason = Some(CloseReason::Idle);
                break;
            }
            changed = draining.changed(), if drain_deadline.is_none() => {
                if changed.is_err() || *draining.borrow() {
                    drain_deadline = Some(tokio::time::Instant::now() + state.config.drain_timeout);
                }
            }
            () = drain => {
                // The agent is told its call moves on, whichever way it goes.
                if let Some(control) = &stop_reason {
                    control.set_stop_reason("handover");
                }
                // With the Twilio REST API: Twilio is asked to fetch the voice webhook again
                // (through the load balancer, to a ready instance) and stops this stream
                // itself; a little later this side closes anyway. Without it: close with 1001,
                // and the `<Connect action>` redirects the call.
                if !handing_over && crate::session::hand_over(&state, &meta, id) {
                    handing_over = true;
                    drain_deadline = Some(tokio::time::Instant::now() + HANDOVER_WAIT);
                    continue;
                }
                reason = Some(CloseReason::GoingAway);
                break;
            }
            closing = &mut closing_rx, if !closing_seen => {
                closing_seen = true;
                if closing.is_ok() {
                    // The writer closes the stream: stop the call now, so the engine's final
                    // counters reach the writer (its `WS stop` line), and read on only for the
                    // peer's close reply.
                    handle.send(Control::Stop(crate::clock::now()));
                    linger_deadline.get_or_insert(tokio::time::Instant::now() + state.config.ws_write_timeout);
                }
            }
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                linger_deadline.get_or_insert(tokio::time::Instant::now() + state.config.ws_write_timeout);
            }
            () = linger => break,
        }
    }
    handle.send(Control::Stop(crate::clock::now()));
    if let Some(reason) = reason {
        let _ = close_tx.try_send(reason);
    }
    drop(close_tx);
    drop(handle);
    if !writer_done {
        let _ = writer.await;
    }
    state.metrics.publish_stream(&counters, &mut published);
    log_counters(id, &info, &counters);
    tracing::info!(id, call_sid = %info.call_sid, ?reason, "WS closed");
}

/// Applies one text message; returns true on `stop`.
fn on_text(
    text: &str,
    now: Instant,
    stream_sid: &str,
    handle: &mut CallHandle,
    counters: &mut StreamCounters,
    echoes: &AtomicU64,
) -> bool {
    match media_stream::parse(text) {
        Ok(Inbound::Media {
            stream_sid: sid,
            media,
        }) => {
            if sid != stream_sid {
                counters.wrong_stream += 1;
            } else if !handle.push_media(now, media) {
                counters.ring_full += 1;
            }
        }
        Ok(Inbound::Mark {
            stream_sid: sid,
            name,
        }) => {
            if sid != stream_sid {
                counters.wrong_stream += 1;
            } else if let Some(mark) = parse_mark_name(&name) {
                echoes.fetch_add(1, Ordering::Relaxed);
                handle.send(Control::MarkEcho(now, mark));
            } else {
                counters.unknown_marks += 1;
            }
        }
        Ok(Inbound::Dtmf {
            stream_sid: sid,
            digit,
        }) => {
            if sid != stream_sid {
                counters.wrong_stream += 1;
            } else {
                handle.send(Control::Dtmf(now, digit));
            }
        }
        Ok(Inbound::Stop { stream_sid: sid }) => {
            if sid == stream_sid {
                return true;
            }
            counters.wrong_stream += 1;
        }
        Ok(Inbound::Start(_)) => counters.extra_start += 1,
        Ok(Inbound::Connected { .. }) => {}
        Ok(Inbound::Unknown) => counters.unknown_events += 1,
        Err(ProtocolError::Base64 | ProtocolError::Media(_)) => counters.bad_media += 1,
        Err(_) => counters.malformed += 1,
    }
    false
}

/// Why a read failed: the close it calls for and a fixed description for the log line. Never
/// the error's own text: tungstenite's UTF-8 errors can carry the peer's bytes.
///
/// tungstenite reports a protocol violation without sending anything itself (the connection
/// stays open for writing), so the one close frame is the writer's, with this reason.
fn read_error(e: &tokio_tungstenite::tungstenite::Error) -> (CloseReason, &'static str) {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError as P;
    match e {
        Error::Capacity(_) => (CloseReason::TooBig, "message too big"),
        Error::Utf8(_) => (CloseReason::InvalidUtf8, "text that is not UTF-8"),
        Error::Protocol(P::ResetWithoutClosingHandshake) => (
            CloseReason::Completed,
            "connection closed without a close frame",
        ),
        Error::Protocol(p) => (
            CloseReason::ProtocolError,
            match p {
                P::NonZeroReservedBits => "reserved bits set",
                P::UnmaskedFrameFromClient => "unmasked client frame",
                P::UnknownDataFrameType(_)
                | P::UnknownControlFrameType(_)
                | P::InvalidOpcode(_) => "unknown opcode",
                P::FragmentedControlFrame | P::ControlFrameTooBig => "invalid control frame",
                P::UnexpectedContinueFrame | P::ExpectedFragment(_) => "invalid fragmentation",
                P::InvalidCloseSequence => "invalid close frame",
                P::ReceivedAfterClosing => "frame after close",
                _ => "protocol violation",
            },
        ),
        Error::AttackAttempt => (CloseReason::ProtocolError, "protocol violation"),
        Error::Io(_) => (CloseReason::Completed, "connection error"),
        _ => (CloseReason::Completed, "read failed"),
    }
}

/// The one log line of a failed read (`call_sid` once the call is known).
fn log_read_error(id: u64, call_sid: Option<&str>, reason: CloseReason, what: &'static str) {
    match reason {
        CloseReason::ProtocolError | CloseReason::InvalidUtf8 | CloseReason::TooBig => {
            tracing::warn!(
                id,
                call_sid,
                error = what,
                reason = reason.label(),
                "WS protocol error: closing"
            );
        }
        _ => tracing::info!(id, call_sid, error = what, "WS read ended"),
    }
}

async fn finish_without_call(
    state: &AppState,
    mut sink: futures_util::stream::SplitSink<WsStream, Message>,
    reason: Option<CloseReason>,
    id: u64,
    counters: &StreamCounters,
) {
    let write_timeout = state.config.ws_write_timeout;
    state
        .metrics
        .publish_stream(counters, &mut StreamCounters::default());
    if let Some(reason) = reason {
        state.metrics.ws_close(reason);
        tracing::info!(id, ?reason, "WS closing");
        let _ = tokio::time::timeout(
            write_timeout,
            sink.send(Message::Close(Some(reason.frame()))),
        )
        .await;
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
    tracing::info!(
        id,
        messages = counters.messages,
        malformed = counters.malformed,
        binary = counters.binary,
        before_start = counters.before_start,
        "WS stop (no call)"
    );
}

/// The call a socket writer serves.
struct WriterCall {
    /// What the write pump needs.
    pump: PumpCall,
    /// The store write of the call's start; its end is written after it.
    recorded: tokio::task::JoinHandle<()>,
    /// The remote agent's shared state (the transfer it asked for), if a remote agent runs.
    control: Option<Arc<crate::agent::remote::Shared>>,
}

/// The writer's view of the peer's mark echoes: whether marks it wrote have gone unechoed
/// for too long, from a peer that has shown it echoes them.
///
/// A peer that stops reading is seen by the server's socket only once every kernel buffer
/// between the two is full, and the peer's receive buffer is the peer's: a Linux receiver
/// that was reading fast has autotuned it to megabytes, minutes of audio. Twilio echoes every
/// mark once the audio before it has played, and the engine sends one every 100 ms of
/// playback, so echoes that stop while marks go out say the peer stopped reading, whatever
/// the buffers hold. A peer that never echoed a mark (a client that ignores marks) is judged
/// by the write deadline alone.
#[derive(Debug, Default)]
struct MarkWatch {
    /// Marks written.
    written: u64,
    /// Echoes seen, as of the last check.
    echoed: u64,
    /// Since when a written mark has waited with no echo arriving.
    since: Option<Instant>,
}

impl MarkWatch {
    /// A mark was written at `at`.
    fn wrote(&mut self, at: Instant) {
        if self.written <= self.echoed {
            self.since = Some(at);
        }
        self.written += 1;
    }

    /// Takes the reader's echo count at `now`; returns how long marks have waited unechoed
    /// when that is over `limit` from a peer that echoes marks.
    fn overdue(&mut self, echoed: u64, now: Instant, limit: Duration) -> Option<Duration> {
        if echoed != self.echoed {
            self.echoed = echoed;
            self.since = (self.written > echoed).then_some(now);
        }
        let waited = now.saturating_duration_since(self.since?);
        (self.echoed > 0 && waited > limit).then_some(waited)
    }
}

/// A stream refused after its `start`: the call it belongs to and why.
struct Refusal<'a> {
    reason: CloseReason,
    call_sid: &'a str,
    stream_sid: &'a str,
}

/// Closes a stream refused after `start`, with its reason stored for the `<Connect action>`.
async fn finish_refused(
    state: &AppState,
    sink: futures_util::stream::SplitSink<WsStream, Message>,
    refusal: Refusal<'_>,
    id: u64,
    counters: &StreamCounters,
) {
    record_end(
        state,
        refusal.call_sid,
        refusal.stream_sid,
        refusal.reason,
        None,
        id,
    )
    .await;
    finish_without_call(state, sink, Some(refusal.reason), id, counters).await;
}

/// After asking Twilio to move a call at the drain deadline, how long to wait for its `stop`
/// before closing the stream from this side.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

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

/// What the writer does with one engine message.
enum Step {
    /// Queue this text frame on the socket.
    Send(Utf8Bytes),
    /// Nothing to send (logged or handed elsewhere).
    Skip,
    /// The call is over: close the stream.
    Stop,
}

/// The writer's per-call state apart from the socket.
struct WriterState {
    writer: Writer,
    info: CallInfo,
    id: u64,
    trace_dir: Option<std::path::PathBuf>,
    close_reason: Option<CloseReason>,
    /// The engine's final counters arrived (and were logged as `WS stop`).
    ended: bool,
    frames_total: u64,
    frames_window: u64,
    /// Marks written and echoed.
    marks: MarkWatch,
    /// When the message that started the current batch was queued.
    batch_at: Instant,
    /// Pacer deadlines of the batch's media frames (the first `batch_media`), measured against
    /// the instant the batch's write returns.
    batch_dues: [Instant; WRITE_BATCH],
    batch_media: usize,
}

impl WriterState {
    /// Turns one engine message into what goes on the wire.
    fn step(&mut self, msg: Outbound) -> Step {
        let (id, info) = (self.id, &self.info);
        let bytes = match msg {
            Outbound::Media { frame, due } => {
                self.frames_total += 1;
                self.frames_window += 1;
                if let Some(slot) = self.batch_dues.get_mut(self.batch_media) {
                    *slot = due;
                    self.batch_media += 1;
                }
                self.writer.media(&frame)
            }
            Outbound::Mark(mark) => {
                self.marks.wrote(self.batch_at);
                self.writer.mark(MarkName::of(mark).as_str())
            }
            Outbound::Clear => self.writer.clear(),
            Outbound::Event(event) => {
                log_event(id, info, &event);
                return Step::Skip;
            }
            Outbound::Hangup(reason) => {
                tracing::info!(id, call_sid = %info.call_sid, ?reason, "HANGUP");
                // A reason already decided (the peer stalled, the caller's `stop`) stands.
                self.close_reason.get_or_insert(match reason {
                    HangupReason::AgentFailed => CloseReason::AgentFailed,
                    HangupReason::Completed => CloseReason::AgentHangup,
                    HangupReason::Transfer => CloseReason::Transfer,
                });
                return Step::Stop;
            }
            Outbound::Trace(trace) => {
                if let Some(dir) = self.trace_dir.clone() {
                    let call_sid = info.call_sid.clone();
                    tokio::task::spawn_blocking(move || write_trace(&dir, &call_sid, &trace, id));
                }
                return Step::Skip;
            }
            Outbound::Ended(stats) => {
                self.ended = true;
                tracing::info!(
                    id,
                    call_sid = %info.call_sid,
                    stream_sid = %info.stream_sid,
                    media_in = stats.media_in,
                    frames_out = stats.frames_out,
                    concealed = stats.jitter.concealed,
                    expanded = stats.jitter.expanded,
                    late = stats.jitter.late,
                    duplicate = stats.media_duplicate,
                    barge_ins = stats.barge_ins,
                    echo_onsets = stats.echo_onsets,
                    echo_breakthroughs = stats.echo_breakthroughs,
                    onsets_rejected = stats.onsets_rejected,
                    speech_dismissed = stats.speech_dismissed,
                    marks_played = stats.marks_played,
                    underruns = stats.pacer.underruns,
                    late_wakeups = stats.pacer.late_wakeups,
                    "WS stop"
                );
                return Step::Stop;
            }
        };
        // The writer only emits ASCII JSON.
        Utf8Bytes::try_from(bytes).map_or(Step::Skip, Step::Send)
    }

    /// Takes one engine message once the stream is closing: what would go on the wire is
    /// dropped, the rest (events, the timeline, the final counters) is handled as usual.
    fn settle(&mut self, msg: Outbound) {
        match msg {
            Outbound::Media { .. } | Outbound::Mark(_) | Outbound::Clear => {}
            other => {
                let _ = self.step(other);
            }
        }
    }
}

/// Moves engine output onto the socket until the call ends or a close is asked for.
///
/// One wake-up takes every message already queued (up to [`WRITE_BATCH`]): the engine hands
/// over what one service produced at the same instant (a frame and its progress mark, the
/// four frames that start a playback), so they go out in one socket write and one flush. No
/// message waits for another: a batch is only what is already there.
///
/// **A peer that stops reading.** Every message carries the instant the engine queued it.
/// Everything before a batch is on the socket already, so the batch's first message is the
/// oldest one waiting; the batch must be taken by the socket before that message has waited
/// [`Config::ws_write_timeout`](crate::config::Config::ws_write_timeout), or the stream is
/// closed as [`CloseReason::Stalled`]. This side's kernel share is bounded
/// ([`MEDIA_SEND_BUFFER_BYTES`], about 4 s of audio), so a peer that stops reading shows
/// after those seconds of audio, what its own kernel took in, and the timeout — not the
/// minutes an autotuned send buffer absorbed. (The peer's receive buffer is the peer's: a
/// Linux receiver that is not read can keep growing it; [`MarkWatch`] sees through that for a
/// peer that echoes marks.) A peer that keeps up
/// with real time never waits, whatever its round trip, and a pause in its reading is
/// forgiven up to the timeout on top of what the kernels hold. The deadline costs one timer per
/// batch here, which tokio registers only when the write has to wait (`timeout_at` polls the
/// write first); the stamp is the engine's own time.
///
/// **Wire lateness.** When a batch's flush returns, its bytes are with the kernel: one clock
/// read then gives each of its media frames' lateness against their pacer deadlines
/// (`handset_outbound_write_lateness`), the engine's release lateness plus the hand-off through
/// this task and the write.
///
/// **Where it runs.** The part that moves messages ([`pump`]) runs on the egress runtime
/// ([`crate::egress`]), a thread of its own that socket reads never occupy, so a burst of
/// inbound work cannot hold a frame; what follows the call's end (its store record, the close
/// frame) runs here, on the main runtime, beside the store's connections.
async fn write_loop(
    sink: futures_util::stream::SplitSink<WsStream, Message>,
    out: mpsc::Receiver<Queued>,
    close: mpsc::Receiver<CloseReason>,
    call: WriterCall,
    state: Arc<AppState>,
) {
    let WriterCall {
        pump: pump_call,
        recorded,
        control,
    } = call;
    let (id, write_timeout) = (pump_call.id, pump_call.write_timeout);
    let pumped = state.egress.spawn(pump(sink, out, close, pump_call));
    let Ok(Pumped {
        mut sink,
        mut close,
        ws,
    }) = pumped.await
    else {
        // The egress runtime is shutting down (the process is ending).
        return;
    };
    let metrics = &state.metrics;
    let WriterState {
        info,
        mut close_reason,
        frames_total,
        frames_window,
        ..
    } = ws;
    if frames_window > 0 {
        tracing::info!(id, call_sid = %info.call_sid, frames = frames_window, total = frames_total, "MEDIA_TX");
    }
    if close_reason.is_none() {
        close_reason = close.try_recv().ok();
    }
    let reason = close_reason.unwrap_or(CloseReason::Completed);
    metrics.ws_close(reason);
    metrics.call_ended(reason);
    // The end reason is stored before the close frame goes out: Twilio requests the
    // `<Connect action>` (on any instance) only after the stream has closed.
    let _ = tokio::time::timeout(STORE_WRITE_TIMEOUT, recorded).await;
    let transfer = match reason {
        CloseReason::Transfer => control.as_ref().and_then(|c| c.take_transfer()),
        _ => None,
    };
    record_end(
        &state,
        &info.call_sid,
        &info.stream_sid,
        reason,
        transfer.as_ref(),
        id,
    )
    .await;
    // One bound for the close frame and the flush behind it (a stalled peer takes neither).
    // When the peer closed first, tungstenite has queued its reply and refuses ours: the
    // flush in `close` is what sends the reply.
    let frame = reason.frame();
    let _ = tokio::time::timeout(write_timeout, async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        sink.close().await
    })
    .await;
}

/// What the write pump needs besides the socket and its queues.
struct PumpCall {
    /// Who the call is.
    info: CallInfo,
    /// The stream's request id, for the logs.
    id: u64,
    /// Where its timeline goes, when traced.
    trace_dir: Option<std::path::PathBuf>,
    /// Tells the reader that the writer closes the stream itself, so it stops the call.
    closing: tokio::sync::oneshot::Sender<()>,
    /// Mark echoes the reader has seen.
    echoes: Arc<AtomicU64>,
    /// `WS_WRITE_TIMEOUT`.
    write_timeout: Duration,
    /// The shell's counters.
    metrics: Arc<crate::metrics::ShellMetrics>,
}

/// What the write pump hands back when the stream is to close.
struct Pumped {
    sink: futures_util::stream::SplitSink<WsStream, Message>,
    close: mpsc::Receiver<CloseReason>,
    ws: WriterState,
}

/// Moves engine output onto the socket until the call ends or a close is asked for (see
/// [`write_loop`]), then takes the engine's final counters.
async fn pump(
    mut sink: futures_util::stream::SplitSink<WsStream, Message>,
    mut out: mpsc::Receiver<Queued>,
    mut close: mpsc::Receiver<CloseReason>,
    call: PumpCall,
) -> Pumped {
    let PumpCall {
        info,
        id,
        trace_dir,
        closing,
        echoes,
        write_timeout,
        metrics,
    } = call;
    let metrics = &*metrics;
    let mut ws = WriterState {
        writer: Writer::new(&info.stream_sid),
        info,
        id,
        trace_dir,
        close_reason: None,
        ended: false,
        frames_total: 0,
        frames_window: 0,
        marks: MarkWatch::default(),
        batch_at: crate::clock::now(),
        batch_dues: [crate::clock::now(); WRITE_BATCH],
        batch_media: 0,
    };
    let echo_limit = write_timeout + MARK_ECHO_GRACE;
    let mut summary = tokio::time::interval(MEDIA_TX_EVERY);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    summary.tick().await;
    let mut close_open = true;
    loop {
        tokio::select! {
            msg = out.recv() => {
                let Some((queued_at, msg)) = msg else { break };
                if let Some(waited) = ws.marks.overdue(echoes.load(Ordering::Relaxed), queued_at, echo_limit) {
                    tracing::warn!(id, call_sid = %ws.info.call_sid, waited_ms = waited.as_millis() as u64, unechoed = ws.marks.written - ws.marks.echoed, sign = "mark echoes stopped", "WS peer stopped reading: closing");
                    ws.close_reason = Some(CloseReason::Stalled);
                    break;
                }
                ws.batch_at = queued_at;
                ws.batch_media = 0;
                let deadline = tokio::time::Instant::from_std(queued_at) + write_timeout;
                let mut stop = false;
                let mut fed = 0;
                let mut next = Some(msg);
                let wrote = tokio::time::timeout_at(deadline, async {
                    while let Some(msg) = next.take() {
                        match ws.step(msg) {
                            Step::Send(text) => {
                                sink.feed(Message::Text(text)).await?;
                                fed += 1;
                            }
                            Step::Skip => {}
                            Step::Stop => {
                                stop = true;
                                break;
                            }
                        }
                        if fed < WRITE_BATCH {
                            next = out.try_recv().ok().map(|(_, msg)| msg);
                        }
                    }
                    if fed > 0 {
                        sink.flush().await?;
                    }
                    Ok::<(), tokio_tungstenite::tungstenite::Error>(())
                })
                .await;
                match wrote {
                    Ok(Ok(())) => {
                        for _ in 0..fed {
                            metrics.ws_message_out();
                        }
                        // The flush returned: the batch's bytes are with the kernel.
                        if ws.batch_media > 0 {
                            let written = crate::clock::now();
                            for due in &ws.batch_dues[..ws.batch_media] {
                                metrics.outbound_written(written.saturating_duration_since(*due));
                            }
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!(id, call_sid = %ws.info.call_sid, waited_ms = write_timeout.as_millis() as u64, sign = "write deadline", "WS peer stopped reading: closing");
                        ws.close_reason = Some(CloseReason::Stalled);
                        break;
                    }
                }
                if stop {
                    break;
                }
            }
            reason = close.recv(), if close_open => {
                match reason {
                    Some(reason) => ws.close_reason = Some(reason),
                    None => close_open = false,
                }
            }
            _ = summary.tick() => {
                if ws.frames_window > 0 {
                    tracing::info!(id, call_sid = %ws.info.call_sid, frames = ws.frames_window, total = ws.frames_total, "MEDIA_TX");
                    ws.frames_window = 0;
                }
            }
        }
    }
    if !ws.ended {
        // The writer ends the stream itself (a hang-up, a stalled peer, a failed write): make
        // room in the queue, have the reader stop the call, and take the engine's final
        // counters, so every call logs its `WS stop` line (and a traced call its timeline).
        while !ws.ended {
            let Ok((_, msg)) = out.try_recv() else { break };
            ws.settle(msg);
        }
        let _ = closing.send(());
        let _ = tokio::time::timeout(ENDED_WAIT, async {
            while !ws.ended {
                let Some((_, msg)) = out.recv().await else {
                    break;
                };
                ws.settle(msg);
            }
        })
        .await;
    }
    Pumped { sink, close, ws }
}

/// Writes a call's timeline as `<dir>/<CallSid>.json` (Chrome trace format).
fn write_trace(
    dir: &std::path::Path,
    call_sid: &str,
    trace: &handset_engine::call::Trace,
    id: u64,
) {
    // CallSids are `CA` + hex; anything else is reduced to a safe file name.
    let name: String = call_sid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    let path = dir.join(format!(
        "{}.json",
        if name.is_empty() { "call" } else { &name }
    ));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, trace.to_chrome_json(call_sid)));
    match result {
        Ok(()) => {
            tracing::info!(id, call_sid, path = %path.display(), events = trace.events().len(), dropped = trace.dropped(), "TRACE written")
        }
        Err(e) => tracing::warn!(id, call_sid, error = %e, "TRACE not written"),
    }
}

fn log_event(id: u64, info: &CallInfo, event: &CallEvent) {
    let call_sid = info.call_sid.as_str();
    match event {
        CallEvent::BargeIn(i) => tracing::info!(
            id,
            call_sid,
            onset_ms = i.onset.map(|o| o.as_millis()),
            heard_ms = i.heard.as_millis() as u64,
            sent_ms = i.sent.as_millis() as u64,
            dropped_ms = i.dropped.as_millis() as u64,
            "BARGE_IN"
        ),
        CallEvent::PlaybackCleared(i) => {
            tracing::info!(id, call_sid, heard_ms = i.heard.as_millis() as u64, "CLEAR")
        }
        CallEvent::MarkPlayed(m) => tracing::info!(id, call_sid, mark = %MarkName::of(*m), "MARK"),
        CallEvent::MarkCleared(m) => {
            tracing::info!(id, call_sid, mark = %MarkName::of(*m), "MARK cleared");
        }
        // Keys may be a PIN or a card number: the line says that one was pressed, never which.
        CallEvent::Dtmf(_) => tracing::info!(id, call_sid, "DTMF key"),
        CallEvent::SpeechStarted { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_STARTED");
        }
        CallEvent::SpeechEnded { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_ENDED");
        }
        CallEvent::SpeechDismissed { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_DISMISSED");
        }
        CallEvent::PlaybackFinished { played } => {
            tracing::debug!(
                id,
                call_sid,
                played_ms = played.as_millis() as u64,
                "playback finished"
            );
        }
        _ => {}
    }
}

fn log_counters(id: u64, info: &CallInfo, c: &StreamCounters) {
    let bad = c.malformed
        + c.bad_media
        + c.binary
        + c.unknown_events
        + c.wrong_stream
        + c.before_start
        + c.extra_start
        + c.ring_full
        + c.unknown_marks;
    if bad > 0 {
        tracing::warn!(
            id,
            call_sid = %info.call_sid,
            malformed = c.malformed,
            bad_media = c.bad_media,
            binary = c.binary,
            unknown_events = c.unknown_events,
            wrong_stream = c.wrong_stream,
            before_start = c.before_start,
            extra_start = c.extra_start,
            ring_full = c.ring_full,
            unknown_marks = c.unknown_marks,
            "WS input dropped"
        );
    }
}

/// A stream's drain signal source, owned by [`AppState`].
pub type Draining = watch::Sender<bool>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks unechoed past the limit are overdue only from a peer that has echoed before; an
    /// echo, or every mark echoed, resets the wait.
    #[test]
    fn mark_echoes_that_stop_make_the_peer_overdue() {
        let t0 = crate::clock::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let limit = Duration::from_secs(7);
        // A peer that never echoes is never judged by marks.
        let mut silent = MarkWatch::default();
        for i in 0..200 {
            silent.wrote(at(i * 100));
        }
        assert_eq!(silent.overdue(0, at(60_000), limit), None);
        // A peer that echoes: fine while echoes come, overdue once they stop.
        let mut watch = MarkWatch::default();
        watch.wrote(at(0));
        watch.wrote(at(100));
        assert_eq!(watch.overdue(1, at(150), limit), None);
        assert_eq!(watch.overdue(2, at(250), limit), None);
        // Nothing outstanding: no wait, however long the silence.
        assert_eq!(watch.overdue(2, at(60_000), limit), None);
        watch.wrote(at(60_000));
        watch.wrote(at(60_100));
        assert_eq!(watch.overdue(2, at(67_000), limit), None);
        assert_eq!(
            watch.overdue(2, at(67_001), limit),
            Some(Duration::from_millis(7_001))
        );
        // A late echo restarts the wait from when it was seen.
        assert_eq!(watch.overdue(3, at(67_100), limit), None);
        assert_eq!(watch.overdue(3, at(74_000), limit), None);
        assert!(watch.overdue(3, at(74_101), limit).is_some());
    }

    #[test]
    fn mark_names_are_the_kind_and_the_decimal_number() {
        assert_eq!(MarkName::of(MarkId(0)).as_str(), "a0");
        assert_eq!(MarkName::of(MarkId(7)).as_str(), "a7");
        assert_eq!(MarkName::of(MarkId(PROGRESS_MARK_BASE)).as_str(), "p0");
        assert_eq!(
            MarkName::of(MarkId(PROGRESS_MARK_BASE + 1_234_567)).to_string(),
            "p1234567"
        );
        assert_eq!(
            MarkName::of(MarkId(u64::MAX)).as_str(),
            format!("p{}", u64::MAX - PROGRESS_MARK_BASE)
        );
    }

    #[test]
    fn mark_names_round_trip() {
        for id in [
            MarkId(0),
            MarkId(7),
            MarkId(PROGRESS_MARK_BASE),
            MarkId(PROGRESS_MARK_BASE + 99),
        ] {
            assert_eq!(parse_mark_name(MarkName::of(id).as_str()), Some(id));
        }
        for bad in ["", "p", "x1", "p-1", "a99999999999999999999", "p1 ", "a1.5"] {
            assert_eq!(parse_mark_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn read_errors_map_to_specific_closes() {
        use tokio_tungstenite::tungstenite::Error;
        use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError as P};
        let cases = [
            (
                Error::Protocol(P::NonZeroReservedBits),
                CloseReason::ProtocolError,
            ),
            (
                Error::Protocol(P::UnmaskedFrameFromClient),
                CloseReason::ProtocolError,
            ),
            (
                Error::Protocol(P::UnknownDataFrameType(3)),
                CloseReason::ProtocolError,
            ),
            (
                Error::Protocol(P::UnknownControlFrameType(11)),
                CloseReason::ProtocolError,
            ),
            (
                Error::Protocol(P::UnexpectedContinueFrame),
                CloseReason::ProtocolError,
            ),
            (
                Error::Utf8("invalid utf-8 sequence".into()),
                CloseReason::InvalidUtf8,
            ),
            (
                Error::Capacity(CapacityError::MessageTooLong {
                    size: 70_000,
                    max_size: 65_536,
                }),
                CloseReason::TooBig,
            ),
            (
                Error::Protocol(P::ResetWithoutClosingHandshake),
                CloseReason::Completed,
            ),
            (
                Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                CloseReason::Completed,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(read_error(&error).0, want, "{error:?}");
        }
        let code = |r: CloseReason| u16::from(r.frame().code);
        assert_eq!(code(CloseReason::ProtocolError), 1002);
        assert_eq!(code(CloseReason::InvalidUtf8), 1007);
        assert_eq!(code(CloseReason::Stalled), 1011);
    }

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
