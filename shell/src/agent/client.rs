//! The tokio half of a remote agent: one client WebSocket per call to `AGENT_URL`.
//!
//! It connects (with the configured auth header, within the connect timeout; `wss` through
//! rustls), sends `start`, then moves caller audio and events from the engine to the agent and
//! the agent's audio and commands back into the engine's rings. When the audio ring is full it
//! stops reading the socket and retries every [`RETRY`]: TCP flow control then slows the agent
//! down, so nothing is dropped and memory stays bounded. Commands are pushed with the sample
//! position they apply at.
//!
//! It logs `AGENT_CONNECTED`, `AGENT_FAILED` (with the reason), `STT_PARTIAL`/`STT_FINAL` for
//! transcripts (text capped), and a summary when the call ends. It never logs the URL (it may
//! carry a token) or the auth header.
//!
//! Reconnect policy: none. A failure at start or mid-call is final for the call; the engine side
//! plays the fallback sound and the stream closes so Twilio records a message
//! (`docs/agent-protocol.md` explains why).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use handset_engine::MarkId;
use handset_engine::agent::{CallInfo, HangupReason};
use handset_engine::call::CallEvent;
use ringbuf::traits::{Observer, Producer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::protocol::{self, FromAgent, ToAgent};
use super::remote::{Downlink, FailReason, Shared, Uplink};
use crate::config::AgentConfig;

/// How often a full ring is retried (the engine drains it every 20 ms of playback).
pub const RETRY: Duration = Duration::from_millis(5);
/// Longest a single write to the agent may take before it is considered stalled.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest message accepted from the agent (about 10 s of 48 kHz audio).
pub const MAX_AGENT_MESSAGE: usize = 1 << 20;
/// Agent marks not yet played or cleared; more are refused (and counted).
pub const MAX_OUTSTANDING_MARKS: usize = 1_024;

pub(super) type AgentSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The client's end of the queues.
pub struct ClientEnds {
    /// Caller frames and events from the engine.
    pub uplink: mpsc::Receiver<Uplink>,
    /// Agent audio to the engine.
    pub audio: ringbuf::HeapProd<i16>,
    /// Agent commands to the engine, with their sample positions.
    pub commands: ringbuf::HeapProd<(u64, Downlink)>,
    /// Failure flags and counters.
    pub shared: Arc<Shared>,
}

/// What one call's client counted.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    frames_up: u64,
    events_up: u64,
    samples_down: u64,
    malformed: u64,
    marks_refused: u64,
}

/// A push waiting for room in a ring.
enum Pending {
    Audio { offset: usize },
    Command(Downlink),
}

/// Mark names by id, in the order sent.
#[derive(Default)]
struct Marks {
    next: u64,
    outstanding: VecDeque<(u64, String)>,
    /// Recently cleared, so an interruption report that follows can still name them.
    recent: VecDeque<(u64, String)>,
    last_played: Option<(u64, String)>,
}

impl Marks {
    fn add(&mut self, name: String) -> Option<MarkId> {
        if self.outstanding.len() >= MAX_OUTSTANDING_MARKS {
            return None;
        }
        self.next += 1;
        self.outstanding.push_back((self.next, name));
        Some(MarkId(self.next))
    }

    fn take(&mut self, id: MarkId) -> Option<(u64, String)> {
        let i = self.outstanding.iter().position(|(m, _)| *m == id.0)?;
        self.outstanding.remove(i)
    }

    fn played(&mut self, id: MarkId) -> Option<&str> {
        let entry = self.take(id)?;
        self.last_played = Some(entry);
        self.last_played.as_ref().map(|(_, n)| n.as_str())
    }

    fn cleared(&mut self, id: MarkId) -> Option<&str> {
        let entry = self.take(id)?;
        if self.recent.len() == 32 {
            self.recent.pop_front();
        }
        self.recent.push_back(entry);
        self.recent.back().map(|(_, n)| n.as_str())
    }

    fn name(&self, id: MarkId) -> Option<&str> {
        self.outstanding
            .iter()
            .chain(self.recent.iter())
            .chain(self.last_played.iter())
            .find(|(m, _)| *m == id.0)
            .map(|(_, n)| n.as_str())
    }
}

/// Runs the agent connection of one call until the call ends.
pub async fn run(
    config: AgentConfig,
    info: CallInfo,
    custom_parameters: HashMap<String, String>,
    mut ends: ClientEnds,
    id: u64,
) {
    let call_sid = info.call_sid.clone();
    let started = crate::clock::now();
    let Some(socket) = connect_or_fail(&config, &mut ends, id, &call_sid).await else {
        return;
    };
    let (mut tx, mut rx) = socket.split();
    let start = protocol::start(&info, &custom_parameters);
    if let Err(reason) = send(&mut tx, Message::text(start)).await {
        fail(&ends, reason, id, &call_sid, "cannot send start");
        drain(&mut ends.uplink).await;
        return;
    }
    tracing::info!(
        id,
        call_sid = %call_sid,
        connect_ms = started.elapsed().as_millis() as u64,
        "AGENT_CONNECTED"
    );
    let mut session = Session {
        ends,
        counters: Counters::default(),
        marks: Marks::default(),
        samples: Vec::with_capacity(8_192),
        carry: None,
        pushed: 0,
        pending: None,
        id,
        call_sid,
        transfer_allow: config.transfer_allow.clone(),
    };
    let outcome = session.pump(&mut tx, &mut rx).await;
    finish(&mut session.ends, &mut tx, outcome, id, &session.call_sid).await;
    let c = session.counters;
    tracing::info!(
        id,
        call_sid = %session.call_sid,
        frames_up = c.frames_up,
        events_up = c.events_up,
        samples_down = c.samples_down,
        uplink_dropped = session.ends.shared.uplink_dropped(),
        malformed = c.malformed,
        marks_refused = c.marks_refused,
        "AGENT_STOP"
    );
}

/// Opens the agent WebSocket (rustls for `wss`), with the configured auth header. Shared by the
/// generic client and the OpenAI adapter.
pub(super) async fn connect(config: &AgentConfig) -> Result<AgentSocket, String> {
    let mut request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad request: {e}"))?;
    if let Some((name, value)) = &config.auth {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "bad auth header name")?;
        let mut value =
            HeaderValue::from_str(value.expose()).map_err(|_| "bad auth header value")?;
        value.set_sensitive(true);
        request.headers_mut().insert(name, value);
    }
    // 16 KiB read buffer instead of tungstenite's 128 KiB default: it is per call.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_AGENT_MESSAGE))
        .max_frame_size(Some(MAX_AGENT_MESSAGE));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
            .await
            .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Connects within `config.connect_timeout`; on failure records `Unreachable`, waits for the
/// call to end and returns `None`. Shared by the generic client and the OpenAI adapter.
pub(super) async fn connect_or_fail(
    config: &AgentConfig,
    ends: &mut ClientEnds,
    id: u64,
    call_sid: &str,
) -> Option<AgentSocket> {
    let error = match tokio::time::timeout(config.connect_timeout, connect(config)).await {
        Ok(Ok(socket)) => return Some(socket),
        Ok(Err(error)) => error,
        Err(_) => format!(
            "no connection within {} ms",
            config.connect_timeout.as_millis()
        ),
    };
    fail(ends, FailReason::Unreachable, id, call_sid, &error);
    drain(&mut ends.uplink).await;
    None
}

/// Records the failure (the first reason wins) and logs it.
pub(super) fn fail(ends: &ClientEnds, reason: FailReason, id: u64, call_sid: &str, error: &str) {
    // The engine side may have failed first (no reply in time); it logged nothing, so log here.
    let reason = if ends.shared.fail(reason) {
        reason
    } else {
        ends.shared.failure().unwrap_or(reason)
    };
    tracing::warn!(id, call_sid, %reason, error, "AGENT_FAILED: playing the fallback, then recording");
}

/// Ends an agent session, whichever adapter ran it: a failure is recorded and logged (the
/// caller hears the fallback), the socket is closed (bounded by [`WRITE_TIMEOUT`]), and after a
/// failure what the engine still sends is discarded until the call ends.
pub(super) async fn finish(
    ends: &mut ClientEnds,
    tx: &mut SplitSink<AgentSocket, Message>,
    outcome: Result<(), Failure>,
    id: u64,
    call_sid: &str,
) {
    if let Err((reason, error)) = &outcome {
        fail(ends, *reason, id, call_sid, error);
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, tx.close()).await;
    if outcome.is_err() {
        drain(&mut ends.uplink).await;
    }
}

/// Waits for the call to end, discarding what the engine sends.
pub(super) async fn drain(uplink: &mut mpsc::Receiver<Uplink>) {
    while let Some(msg) = uplink.recv().await {
        if matches!(msg, Uplink::Stop) {
            return;
        }
    }
}

async fn send(tx: &mut SplitSink<AgentSocket, Message>, msg: Message) -> Result<(), FailReason> {
    match tokio::time::timeout(WRITE_TIMEOUT, tx.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(FailReason::Dropped),
        Err(_) => Err(FailReason::Stalled),
    }
}

struct Session {
    ends: ClientEnds,
    counters: Counters,
    marks: Marks,
    /// Decoded agent audio not yet in the ring (from `pending`'s offset).
    samples: Vec<i16>,
    carry: Option<u8>,
    /// Samples pushed into the audio ring so far.
    pushed: u64,
    pending: Option<Pending>,
    id: u64,
    call_sid: String,
    /// `TRANSFER_ALLOW`: what a `transfer` may dial.
    transfer_allow: Vec<String>,
}

/// Why a session ended early, and the error to log.
pub(super) type Failure = (FailReason, String);

impl Session {
    /// Moves messages both ways until the call ends (`Ok`) or the agent fails.
    async fn pump(
        &mut self,
        tx: &mut SplitSink<AgentSocket, Message>,
        rx: &mut SplitStream<AgentSocket>,
    ) -> Result<(), Failure> {
        loop {
            let waiting = self.pending.is_some();
            tokio::select! {
                msg = self.ends.uplink.recv() => {
                    let Some(msg) = msg else {
                        let _ = send(tx, Message::text(protocol::event(&ToAgent::Stop {
                            reason: self.ends.shared.stop_reason(),
                        }))).await;
                        return Ok(());
                    };
                    match self.uplink(msg) {
                        Some(Ok(out)) => send(tx, out).await.map_err(|r| (r, "write failed".to_owned()))?,
                        Some(Err(stop)) => {
                            if let Some(reason) = stop {
                                return Err((reason, "engine gave up".to_owned()));
                            }
                            let _ = send(tx, Message::text(protocol::event(&ToAgent::Stop {
                            reason: self.ends.shared.stop_reason(),
                        }))).await;
                            return Ok(());
                        }
                        None => {}
                    }
                }
                msg = rx.next(), if !waiting => match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        self.samples.clear();
                        self.carry = protocol::pcm_from_le(self.carry, &bytes, &mut self.samples);
                        self.pending = Some(Pending::Audio { offset: 0 });
                        self.flush();
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = self.command(&text) {
                            send(tx, Message::text(reply)).await.map_err(|r| (r, "write failed".to_owned()))?;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(String::new, |f| format!(" ({} {})", u16::from(f.code), f.reason));
                        return Err((FailReason::Dropped, format!("agent closed the connection{why}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err((FailReason::Dropped, e.to_string())),
                    None => return Err((FailReason::Dropped, "connection ended".to_owned())),
                },
                () = tokio::time::sleep(RETRY), if waiting => self.flush(),
            }
        }
    }

    /// The message to send for one uplink item; `Err(None)` = call over, `Err(Some)` = the
    /// engine gave up.
    #[allow(clippy::type_complexity)]
    fn uplink(&mut self, msg: Uplink) -> Option<Result<Message, Option<FailReason>>> {
        let text = match msg {
            Uplink::Audio(frame) => {
                self.counters.frames_up += 1;
                let bytes: Vec<u8> = frame.0.iter().flat_map(|s| s.to_le_bytes()).collect();
                return Some(Ok(Message::binary(bytes)));
            }
            Uplink::Stop => return Some(Err(None)),
            Uplink::Failed(reason) => return Some(Err(Some(reason))),
            Uplink::MarkDropped(mark) => {
                let name = self.marks.cleared(mark)?;
                protocol::event(&ToAgent::MarkCleared(name))
            }
            Uplink::Interrupted {
                interruption,
                first_cleared,
            } => {
                let interrupted_mark = first_cleared.and_then(|m| self.marks.name(m));
                let heard_ms = interruption.heard.as_millis() as u64;
                match interruption.onset {
                    Some(onset) => protocol::event(&ToAgent::BargeIn {
                        at_ms: Some(onset.as_millis()),
                        heard_ms,
                        sent_ms: interruption.sent.as_millis() as u64,
                        last_played_mark: interruption
                            .last_played_mark
                            .and_then(|m| self.marks.name(m)),
                        interrupted_mark,
                    }),
                    None => protocol::event(&ToAgent::PlaybackCleared {
                        heard_ms,
                        interrupted_mark,
                    }),
                }
            }
            Uplink::Event(event) => match event {
                CallEvent::SpeechStarted { at } => protocol::event(&ToAgent::SpeechStarted {
                    at_ms: at.as_millis(),
                }),
                CallEvent::SpeechEnded { at } => protocol::event(&ToAgent::SpeechEnded {
                    at_ms: at.as_millis(),
                    dismissed: false,
                }),
                CallEvent::SpeechDismissed { at } => protocol::event(&ToAgent::SpeechEnded {
                    at_ms: at.as_millis(),
                    dismissed: true,
                }),
                CallEvent::Dtmf(digit) => protocol::event(&ToAgent::Dtmf(digit)),
                CallEvent::MarkPlayed(mark) => {
                    protocol::event(&ToAgent::MarkPlayed(self.marks.played(mark)?))
                }
                CallEvent::MarkCleared(mark) => {
                    protocol::event(&ToAgent::MarkCleared(self.marks.cleared(mark)?))
                }
                _ => return None,
            },
        };
        self.counters.events_up += 1;
        Some(Ok(Message::text(text)))
    }

    /// Applies one agent text message; returns the answer to send the agent, if any.
    fn command(&mut self, text: &str) -> Option<String> {
        let command = match protocol::parse(text) {
            Ok(FromAgent::AudioFormat(rate)) => Downlink::Rate(rate),
            Ok(FromAgent::Clear) => Downlink::Clear,
            Ok(FromAgent::Hangup) => Downlink::Hangup(HangupReason::Completed),
            Ok(FromAgent::Transfer {
                to,
                caller_id,
                timeout_s,
            }) => {
                match crate::ending::check_transfer(
                    &to,
                    caller_id.as_deref(),
                    timeout_s,
                    &self.transfer_allow,
                ) {
                    Ok(transfer) => {
                        tracing::info!(id = self.id, call_sid = %self.call_sid, target = %crate::ending::masked(transfer.to.as_str()), "TRANSFER requested");
                        self.ends.shared.set_transfer(transfer);
                        Downlink::Hangup(HangupReason::Transfer)
                    }
                    Err(refused) => {
                        tracing::warn!(id = self.id, call_sid = %self.call_sid, reason = %refused, "TRANSFER refused");
                        let reason = refused.to_string();
                        return Some(protocol::event(&ToAgent::TransferRefused {
                            to: &to,
                            reason: &reason,
                        }));
                    }
                }
            }
            Ok(FromAgent::Mark(name)) => match self.marks.add(name) {
                Some(mark) => Downlink::Mark(mark),
                None => {
                    self.counters.marks_refused += 1;
                    return None;
                }
            },
            Ok(FromAgent::Transcript { is_final, text }) => {
                if is_final {
                    tracing::info!(id = self.id, call_sid = %self.call_sid, text = %text, "STT_FINAL");
                } else {
                    tracing::info!(id = self.id, call_sid = %self.call_sid, text = %text, "STT_PARTIAL");
                }
                return None;
            }
            Ok(FromAgent::Unknown) => return None,
            Err(e) => {
                self.counters.malformed += 1;
                if self.counters.malformed <= 3 {
                    tracing::warn!(id = self.id, call_sid = %self.call_sid, error = %e, "agent message ignored");
                }
                return None;
            }
        };
        self.pending = Some(Pending::Command(command));
        self.flush();
        None
    }

    /// Pushes what is pending as far as the rings have room.
    fn flush(&mut self) {
        match self.pending {
            Some(Pending::Audio { offset }) => {
                let n = self.ends.audio.push_slice(&self.samples[offset..]);
                self.pushed += n as u64;
                self.counters.samples_down += n as u64;
                self.pending = if offset + n < self.samples.len() {
                    Some(Pending::Audio { offset: offset + n })
                } else {
                    None
                };
            }
            Some(Pending::Command(command)) => {
                if self.ends.commands.is_full() {
                    return;
                }
                if self.ends.commands.try_push((self.pushed, command)).is_ok() {
                    if command == Downlink::Clear {
                        self.ends.shared.clear_pushed();
                    }
                    self.pending = None;
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_their_names_until_reported() {
        let mut marks = Marks::default();
        let a = marks.add("a".into()).unwrap();
        let b = marks.add("b".into()).unwrap();
        assert_ne!(a, b);
        assert_eq!(marks.played(a), Some("a"));
        assert_eq!(marks.played(a), None, "reported once");
        assert_eq!(marks.cleared(b), Some("b"));
        assert_eq!(
            marks.name(b),
            Some("b"),
            "still named for the barge-in report"
        );
        assert_eq!(marks.name(a), Some("a"), "the last played mark is named");
        for i in 0..MAX_OUTSTANDING_MARKS {
            assert!(marks.add(format!("m{i}")).is_some());
        }
        assert!(marks.add("over".into()).is_none(), "bounded");
    }
}
