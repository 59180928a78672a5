//! The reader of one media stream: Twilio's messages off the WebSocket into the engine call
//! (media into its ring, marks, DTMF and `stop` over its control channel), admission once
//! `start` arrives, the stream's counters, and the drain deadline's handover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use handset_engine::agent::CallInfo;
use handset_engine::call::CallConfig;
use handset_engine::driver::{CallHandle, CallSpec, Control};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::report::{REPORT_QUEUE, Report, Reports};
use super::writer::{ChannelSink, PumpCall, Queued, WriterCall, write_loop};
use super::{OUTBOUND_QUEUE, WsStream, parse_mark_name, record_end};
use crate::media_stream::{self, CloseReason, Inbound, ProtocolError};
use crate::metrics::StreamCounters;
use crate::state::AppState;
use crate::store::CallRecord;

/// Events a traced call can record (about 10 minutes at ~250 events per second).
const TRACE_EVENTS: usize = 150_000;
/// Messages ignored before `start` before the socket is closed.
const MAX_BEFORE_START: u32 = 50;
/// A stream's counters are added to the shell's metrics every this many messages (about 5 s
/// of media) and when it ends.
const PUBLISH_EVERY_MESSAGES: u64 = 256;

/// Once the stream has ended, how long the reader waits for the engine's final counters (its
/// `WS stop` line) after the call was told to stop.
const ENDED_WAIT: Duration = Duration::from_secs(1);

/// After asking Twilio to move a call at the drain deadline, how long to wait for its `stop`
/// before closing the stream from this side.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// Runs one media stream to its end.
pub(super) async fn run(state: Arc<AppState>, ws: WsStream, id: u64) {
    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = mpsc::channel::<CloseReason>(4);
    let (out_tx, out_rx) = mpsc::channel::<Queued>(OUTBOUND_QUEUE);
    let (reports_tx, mut reports_rx) = mpsc::channel::<Report>(REPORT_QUEUE);
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
        sink: Box::new(ChannelSink {
            wire: out_tx,
            reports: reports_tx,
        }),
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
    let mut reports = Reports::new(id, info.clone(), trace_dir);
    let mut reports_open = true;
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
                    // The writer closes the stream: stop the call now, and read on only for
                    // the peer's close reply.
                    handle.send(Control::Stop(crate::clock::now()));
                    linger_deadline.get_or_insert(tokio::time::Instant::now() + state.config.ws_write_timeout);
                }
            }
            report = reports_rx.recv(), if reports_open => match report {
                Some(report) => reports.take(report),
                None => reports_open = false,
            },
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
    // The engine's last reports (the timeline, the final counters) follow the stop; it lets go
    // of the queue once the call is removed.
    let ended_by = tokio::time::Instant::now() + ENDED_WAIT;
    while reports_open && !reports.ended() {
        match tokio::time::timeout_at(ended_by, reports_rx.recv()).await {
            Ok(Some(report)) => reports.take(report),
            Ok(None) | Err(_) => break,
        }
    }
    state.metrics.publish_stream(&counters, &mut published);
    log_counters(id, &info, &counters);
    reports.log_stop();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
