//! The socket writer of one media stream: engine output (frames, marks, clears) onto the
//! WebSocket in batches, a deadline on a peer that stops reading, the wire lateness of each
//! frame, and, once the call is over, its end stored before the close frame goes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use handset_engine::agent::{CallInfo, HangupReason};
use handset_engine::driver::{Outbound, OutboundSink, SinkError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::marks::{MarkName, MarkWatch};
use super::report::Report;
use super::{STORE_WRITE_TIMEOUT, WsStream, record_end};
use crate::media_stream::{CloseReason, Writer};
use crate::state::AppState;

/// Most messages one writer wake-up sends before flushing (what is already queued, never
/// waited for).
const WRITE_BATCH: usize = 16;
/// Socket bytes a writer gathers before tungstenite writes them; a batch is flushed at once
/// anyway, so this only lets the messages of one batch share a write.
pub(super) const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// How much longer than `WS_WRITE_TIMEOUT` a peer that echoes marks may leave the marks sent
/// to it unechoed before it counts as stalled (Twilio echoes a mark when the audio before it
/// has played, and Handset sends audio in real time, so a healthy echo takes a round trip
/// plus Twilio's ~100 ms of buffered audio).
const MARK_ECHO_GRACE: Duration = Duration::from_secs(5);
/// How often the writer logs a `MEDIA_TX` summary while sending.
const MEDIA_TX_EVERY: Duration = Duration::from_secs(5);

/// What the engine sends the socket: only what goes on the wire, and the agent's hang-up
/// that ends it (after the audio queued before it).
#[derive(Debug)]
pub(super) enum Wire {
    /// A 20 ms frame and its pacer deadline.
    Media {
        frame: handset_engine::MulawFrame,
        due: Instant,
    },
    /// A `mark`.
    Mark(handset_engine::MarkId),
    /// A `clear`.
    Clear,
    /// The agent ended the call: close the stream.
    Hangup(HangupReason),
}

/// A message for the socket writer, with the instant the engine queued it: the writer closes
/// the stream when a message waits
/// [`Config::ws_write_timeout`](crate::config::Config::ws_write_timeout) for the socket.
pub(super) type Queued = (Instant, Wire);

/// The engine's handle on a stream: what goes on the wire to the writer's queue, the reports
/// (events, timeline, final counters) to the reader's ([`Report`]). Each wire message is
/// stamped with the instant the engine emitted it (the worker's own time: no clock read, lock
/// or allocation here).
pub(super) struct ChannelSink {
    pub(super) wire: mpsc::Sender<Queued>,
    pub(super) reports: mpsc::Sender<Report>,
}

impl OutboundSink for ChannelSink {
    fn try_send(&mut self, now: Instant, msg: Outbound) -> Result<(), SinkError> {
        let wire = match msg {
            Outbound::Media { frame, due } => Wire::Media { frame, due },
            Outbound::Mark(mark) => Wire::Mark(mark),
            Outbound::Clear => Wire::Clear,
            Outbound::Hangup(reason) => Wire::Hangup(reason),
            Outbound::Event(event) => return refused(self.reports.try_send(Report::Event(event))),
            Outbound::Trace(trace) => return refused(self.reports.try_send(Report::Trace(trace))),
            Outbound::Ended(stats) => return refused(self.reports.try_send(Report::Ended(stats))),
        };
        refused(self.wire.try_send((now, wire)))
    }
}

fn refused<T>(sent: Result<(), mpsc::error::TrySendError<T>>) -> Result<(), SinkError> {
    sent.map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => SinkError::Full,
        mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
    })
}

/// The call a socket writer serves.
pub(super) struct WriterCall {
    /// What the write pump needs.
    pub(super) pump: PumpCall,
    /// The store write of the call's start; its end is written after it.
    pub(super) recorded: tokio::task::JoinHandle<()>,
    /// The remote agent's shared state (the transfer it asked for), if a remote agent runs.
    pub(super) control: Option<Arc<crate::agent::remote::Shared>>,
}

/// What the writer does with one engine message.
enum Step {
    /// Queue this text frame on the socket.
    Send(Utf8Bytes),
    /// Nothing to send (a message that is not UTF-8, which the writer never writes).
    Skip,
    /// The call is over: close the stream.
    Stop,
}

/// The writer's per-call state apart from the socket.
struct WriterState {
    writer: Writer,
    info: CallInfo,
    id: u64,
    close_reason: Option<CloseReason>,
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
    /// Turns one message into what goes on the wire.
    fn step(&mut self, msg: Wire) -> Step {
        let bytes = match msg {
            Wire::Media { frame, due } => {
                self.frames_total += 1;
                self.frames_window += 1;
                if let Some(slot) = self.batch_dues.get_mut(self.batch_media) {
                    *slot = due;
                    self.batch_media += 1;
                }
                self.writer.media(&frame)
            }
            Wire::Mark(mark) => {
                self.marks.wrote(self.batch_at);
                self.writer.mark(MarkName::of(mark).as_str())
            }
            Wire::Clear => self.writer.clear(),
            Wire::Hangup(reason) => {
                tracing::info!(id = self.id, call_sid = %self.info.call_sid, ?reason, "HANGUP");
                // A reason already decided (the peer stalled, the caller's `stop`) stands.
                self.close_reason.get_or_insert(match reason {
                    HangupReason::AgentFailed => CloseReason::AgentFailed,
                    HangupReason::Completed => CloseReason::AgentHangup,
                    HangupReason::Transfer => CloseReason::Transfer,
                });
                return Step::Stop;
            }
        };
        // The writer only emits ASCII JSON.
        Utf8Bytes::try_from(bytes).map_or(Step::Skip, Step::Send)
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
/// ([`MEDIA_SEND_BUFFER_BYTES`](super::MEDIA_SEND_BUFFER_BYTES), about 4 s of audio), so a peer that stops reading shows
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
pub(super) async fn write_loop(
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
pub(super) struct PumpCall {
    /// Who the call is.
    pub(super) info: CallInfo,
    /// The stream's request id, for the logs.
    pub(super) id: u64,
    /// Tells the reader that the writer closes the stream itself, so it stops the call.
    pub(super) closing: tokio::sync::oneshot::Sender<()>,
    /// Mark echoes the reader has seen.
    pub(super) echoes: Arc<AtomicU64>,
    /// `WS_WRITE_TIMEOUT`.
    pub(super) write_timeout: Duration,
    /// The shell's counters.
    pub(super) metrics: Arc<crate::metrics::ShellMetrics>,
}

/// What the write pump hands back when the stream is to close.
struct Pumped {
    sink: futures_util::stream::SplitSink<WsStream, Message>,
    close: mpsc::Receiver<CloseReason>,
    ws: WriterState,
}

/// Moves engine output onto the socket until the call ends or a close is asked for (see
/// [`write_loop`]).
async fn pump(
    mut sink: futures_util::stream::SplitSink<WsStream, Message>,
    mut out: mpsc::Receiver<Queued>,
    mut close: mpsc::Receiver<CloseReason>,
    call: PumpCall,
) -> Pumped {
    let PumpCall {
        info,
        id,
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
        close_reason: None,
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
    let mut engine_done = false;
    loop {
        tokio::select! {
            msg = out.recv() => {
                let Some((queued_at, msg)) = msg else {
                    // The engine let go of the stream: the call is over.
                    engine_done = true;
                    break;
                };
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
    if !engine_done {
        // The writer ends the stream itself (a hang-up, a stalled peer, a failed write): the
        // reader stops the call (and takes its final counters).
        let _ = closing.send(());
    }
    Pumped { sink, close, ws }
}

#[cfg(test)]
mod tests {
    use handset_engine::call::{CallEvent, CallStats};
    use handset_engine::{MarkId, MulawFrame, SampleTime};

    use super::*;

    /// What goes on the wire reaches the writer's queue, in order; the reports reach the
    /// reader's, and still do when the writer's queue is full (a peer that stopped reading).
    #[test]
    fn the_wire_and_the_reports_travel_apart() {
        let (wire_tx, mut wire) = mpsc::channel(4);
        let (reports_tx, mut reports) = mpsc::channel(4);
        let mut sink = ChannelSink {
            wire: wire_tx,
            reports: reports_tx,
        };
        let now = crate::clock::now();
        let sent = [
            Outbound::Media {
                frame: MulawFrame::SILENCE,
                due: now,
            },
            Outbound::Event(CallEvent::SpeechStarted {
                at: SampleTime::ZERO,
            }),
            Outbound::Mark(MarkId(3)),
            Outbound::Clear,
            Outbound::Hangup(HangupReason::Completed),
        ];
        for msg in sent {
            assert_eq!(sink.try_send(now, msg), Ok(()));
        }
        // The writer's queue is full now.
        assert_eq!(sink.try_send(now, Outbound::Clear), Err(SinkError::Full));
        let stats = CallStats {
            frames_out: 7,
            ..CallStats::default()
        };
        assert_eq!(sink.try_send(now, Outbound::Ended(Box::new(stats))), Ok(()));

        let mut on_wire = Vec::new();
        while let Ok((_, msg)) = wire.try_recv() {
            on_wire.push(format!("{msg:?}"));
        }
        assert_eq!(on_wire.len(), 4, "{on_wire:?}");
        assert!(on_wire[0].starts_with("Media"), "{on_wire:?}");
        assert_eq!(
            on_wire[1..],
            ["Mark(MarkId(3))", "Clear", "Hangup(Completed)"]
        );
        assert!(matches!(
            reports.try_recv(),
            Ok(Report::Event(CallEvent::SpeechStarted { .. }))
        ));
        assert!(matches!(reports.try_recv(), Ok(Report::Ended(s)) if s.frames_out == 7));

        // The reader gone: reports are refused as closed, as the wire is once the writer is.
        drop(reports);
        assert_eq!(
            sink.try_send(
                now,
                Outbound::Event(CallEvent::SpeechEnded {
                    at: SampleTime::ZERO
                })
            ),
            Err(SinkError::Closed)
        );
    }
}
