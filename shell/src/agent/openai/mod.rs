//! The built-in OpenAI Realtime adapter: the call's agent client task when `OPENAI_API_KEY` is
//! set, in place of [`super::client::run`] (same queues, same engine-side [`super::RemoteAgent`],
//! same fallback when the connection fails).
//!
//! It speaks the Realtime API's documented WebSocket events (GA shape):
//!
//! - on connect: `session.update` with `audio/pcmu` (G.711 µ-law, 8 kHz) in and out, server VAD
//!   turn detection, voice, instructions and optional input transcription; then, unless
//!   `OPENAI_GREETING=off`, a `response.create` with the greeting instructions, so the assistant
//!   speaks first as a person answering the phone would;
//! - caller audio: the engine's 16 kHz frames are resampled to 8 kHz with the engine's
//!   [`Resampler`], µ-law encoded and sent as `input_audio_buffer.append` (one per 20 ms);
//! - assistant audio: `response.output_audio.delta` (or the beta `response.audio.delta`) is
//!   base64 µ-law, decoded to 8 kHz PCM and pushed into the engine's ring (whose 8 kHz path to
//!   Twilio is a passthrough, so µ-law goes out as it came in), with a mark after each delta;
//! - barge-in: `input_audio_buffer.speech_started` → Handset `clear` (and `response.cancel` if a
//!   response is in progress); the engine then reports what the caller heard and the adapter
//!   sends `conversation.item.truncate` with `audio_end_ms` = the heard part of the assistant
//!   item. The engine's own VAD barge-in truncates the same way.
//! - phone keys (DTMF), unless `OPENAI_DTMF=off`: collected until the caller pauses
//!   ([`KEYS_SETTLE`]) or presses `#`, then sent as one user message
//!   (`conversation.item.create`, text "[The caller pressed these phone keys: 1 2 #]") and a
//!   `response.create`, or, while a response is in progress, answered once it is done. The keys
//!   themselves are never logged (they may be a PIN or a card number), only their count.
//! - transcripts (`conversation.item.input_audio_transcription.completed`,
//!   `response.output_audio_transcript.done`) are logged (`STT_FINAL`, `AGENT_SAID`); `error`
//!   events are logged (first few) and otherwise ignored, as the API recommends.
//!
//! Why µ-law at 8 kHz rather than pcm16 at 24 kHz: the call is µ-law 8 kHz end to end, so this
//! sends a third of the bytes, needs no 24 kHz resampling on the way out, and adds no
//! resampler delay on the way back (the only conversion is 16 k → 8 k of the caller's audio).
//!
//! Which item was heard, and how much: [`Playout`] follows the engine's notion of a playback (a
//! run of agent audio from an empty queue until it is empty again): a playback starts at the
//! first audio pushed while every earlier mark had played, and the engine's `heard` counts from
//! there. The heard position is that origin plus `heard`, never behind the last mark confirmed
//! played, and the item's `audio_end_ms` is the heard position minus the item's start, clamped
//! to the audio it had. Deltas of a truncated item that arrive later are dropped.
//!
//! The API key is sent as `Authorization: Bearer …` and never logged; the URL is not logged.

use std::collections::VecDeque;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use handset_engine::agent::{CallInfo, HangupReason};
use handset_engine::call::{CallEvent, Interruption};
use handset_engine::resample::Resampler;
use handset_engine::{SampleRate, codec};
use ringbuf::traits::{Observer, Producer};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::client::{
    AgentSocket as Socket, ClientEnds, Failure, RETRY, WRITE_TIMEOUT, connect_or_fail, drain, fail,
    finish,
};
use super::remote::{Downlink, FailReason, Uplink};
use crate::config::AgentConfig;

mod events;
mod playout;
#[cfg(test)]
mod tests;

pub use events::{
    END_CALL, EventError, ServerEvent, TRANSFER_CALL, append, cancel, function_output,
    greeting_response, keys_item, parse_event, respond, session_update, truncate_item,
};
pub use playout::Playout;

/// Longest text kept from a transcript for the log.
const MAX_LOGGED_TEXT: usize = 1_000;
/// Phone keys are sent once the caller has pressed none for this long (or pressed `#`).
pub const KEYS_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys collected at most per message; more are dropped (and counted in the log).
const MAX_KEYS: usize = 32;

/// Runs the OpenAI Realtime connection of one call until the call ends.
pub async fn run(config: AgentConfig, info: CallInfo, mut ends: ClientEnds, id: u64) {
    let call_sid = info.call_sid.clone();
    let Some(openai) = config.openai.clone() else {
        fail(
            &ends,
            FailReason::Unreachable,
            id,
            &call_sid,
            "not configured",
        );
        drain(&mut ends.uplink).await;
        return;
    };
    let started = crate::clock::now();
    let Some(socket) = connect_or_fail(&config, &mut ends, id, &call_sid).await else {
        return;
    };
    let (mut tx, mut rx) = socket.split();
    if let Err(reason) = send(&mut tx, session_update(&openai)).await {
        fail(&ends, reason, id, &call_sid, "cannot send session.update");
        drain(&mut ends.uplink).await;
        return;
    }
    if let Some(greeting) = &openai.greeting
        && let Err(reason) = send(&mut tx, greeting_response(greeting)).await
    {
        fail(
            &ends,
            reason,
            id,
            &call_sid,
            "cannot send the greeting response.create",
        );
        drain(&mut ends.uplink).await;
        return;
    }
    tracing::info!(
        id,
        call_sid = %call_sid,
        connect_ms = started.elapsed().as_millis() as u64,
        "AGENT_CONNECTED: openai realtime"
    );
    let resampler = match Resampler::new(SampleRate::WIDEBAND, SampleRate::NARROWBAND) {
        Ok(r) => r,
        Err(e) => {
            fail(&ends, FailReason::Dropped, id, &call_sid, &e.to_string());
            drain(&mut ends.uplink).await;
            return;
        }
    };
    let mut session = Session {
        ends,
        playout: Playout::new(),
        resampler,
        narrow: vec![0; 640],
        ulaw: vec![0; 640],
        samples: Vec::with_capacity(8_192),
        offset: 0,
        commands: VecDeque::new(),
        rate_sent: false,
        responding: false,
        dtmf: openai.dtmf,
        keys: String::new(),
        keys_due: None,
        respond_when_done: false,
        counters: Counters::default(),
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
        samples_down = c.samples_down,
        truncations = c.truncations,
        keys_sent = c.keys_sent,
        keys_dropped = c.keys_dropped,
        errors = c.errors,
        uplink_dropped = session.ends.shared.uplink_dropped(),
        "AGENT_STOP"
    );
}

async fn send(tx: &mut SplitSink<Socket, Message>, text: String) -> Result<(), FailReason> {
    match tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(FailReason::Dropped),
        Err(_) => Err(FailReason::Stalled),
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    frames_up: u64,
    samples_down: u64,
    truncations: u64,
    /// Phone keys sent to the assistant.
    keys_sent: u64,
    /// Phone keys dropped beyond [`MAX_KEYS`] per message.
    keys_dropped: u64,
    errors: u64,
    malformed: u64,
}

struct Session {
    ends: ClientEnds,
    playout: Playout,
    resampler: Resampler,
    narrow: Vec<i16>,
    ulaw: Vec<u8>,
    /// Decoded assistant audio not yet in the ring (from `offset`).
    samples: Vec<i16>,
    offset: usize,
    /// Commands to push after `samples`, in order.
    commands: VecDeque<Downlink>,
    rate_sent: bool,
    /// A response is in progress (between `response.created` or our `response.create`, and
    /// `response.done`).
    responding: bool,
    /// Forward phone keys (`OPENAI_DTMF`).
    dtmf: bool,
    /// Keys pressed and not yet sent.
    keys: String,
    /// When `keys` go out if no other key comes first.
    keys_due: Option<tokio::time::Instant>,
    /// Keys went out during a response: ask for another when it is done.
    respond_when_done: bool,
    counters: Counters,
    id: u64,
    call_sid: String,
    /// `TRANSFER_ALLOW`: what `transfer_call` may dial.
    transfer_allow: Vec<String>,
}

impl Session {
    fn waiting(&self) -> bool {
        self.offset < self.samples.len() || !self.commands.is_empty()
    }

    async fn pump(
        &mut self,
        tx: &mut SplitSink<Socket, Message>,
        rx: &mut SplitStream<Socket>,
    ) -> Result<(), Failure> {
        let write_failed = |r| (r, "write failed".to_owned());
        loop {
            let waiting = self.waiting();
            tokio::select! {
                msg = self.ends.uplink.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg {
                        Uplink::Stop => return Ok(()),
                        Uplink::Failed(reason) => return Err((reason, "engine gave up".to_owned())),
                        other => {
                            for text in self.uplink(other) {
                                send(tx, text).await.map_err(write_failed)?;
                            }
                        }
                    }
                }
                msg = rx.next(), if !waiting => match msg {
                    Some(Ok(Message::Text(text))) => {
                        for out in self.server_event(&text) {
                            send(tx, out).await.map_err(write_failed)?;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(String::new, |f| format!(" ({} {})", u16::from(f.code), f.reason));
                        return Err((FailReason::Dropped, format!("realtime server closed the connection{why}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err((FailReason::Dropped, e.to_string())),
                    None => return Err((FailReason::Dropped, "connection ended".to_owned())),
                },
                () = tokio::time::sleep(RETRY), if waiting => self.flush(),
                () = async {
                    match self.keys_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                } => {
                    for text in self.send_keys() {
                        send(tx, text).await.map_err(write_failed)?;
                    }
                }
            }
        }
    }

    /// What to send the server for one engine message.
    fn uplink(&mut self, msg: Uplink) -> Vec<String> {
        match msg {
            Uplink::Audio(frame) => {
                self.counters.frames_up += 1;
                // 320 samples in, 160 out: the FIFO never fills when popped after each push.
                let _ = self.resampler.push(&frame.0);
                let n = self.resampler.pop_into(&mut self.narrow);
                if n == 0 {
                    return Vec::new();
                }
                let m = codec::encode_into(&self.narrow[..n], &mut self.ulaw);
                vec![append(&self.ulaw[..m])]
            }
            Uplink::Interrupted { interruption, .. } => self.interrupted(&interruption),
            Uplink::Event(CallEvent::MarkPlayed(mark)) => {
                self.playout.mark_played(mark);
                Vec::new()
            }
            Uplink::Event(CallEvent::MarkCleared(mark)) | Uplink::MarkDropped(mark) => {
                self.playout.mark_cleared(mark);
                Vec::new()
            }
            Uplink::Event(CallEvent::Dtmf(key)) if self.dtmf => {
                if self.keys.len() < MAX_KEYS {
                    self.keys.push(key);
                } else {
                    self.counters.keys_dropped += 1;
                }
                if key == '#' {
                    return self.send_keys();
                }
                self.keys_due =
                    Some(tokio::time::Instant::from_std(crate::clock::now()) + KEYS_SETTLE);
                Vec::new()
            }
            // Turn-taking is the server VAD's; engine speech events are not forwarded.
            Uplink::Event(_) | Uplink::Stop | Uplink::Failed(_) => Vec::new(),
        }
    }

    /// The keys pressed so far as a user message, and a response to them unless one is in
    /// progress (then once it is done).
    fn send_keys(&mut self) -> Vec<String> {
        self.keys_due = None;
        if self.keys.is_empty() {
            return Vec::new();
        }
        let keys = std::mem::take(&mut self.keys);
        self.counters.keys_sent += keys.len() as u64;
        tracing::info!(id = self.id, call_sid = %self.call_sid, keys = keys.len(), "AGENT_DTMF");
        let mut out = vec![keys_item(&keys)];
        self.respond_after(&mut out);
        out
    }

    /// Asks for a response after `out`: now, or once the response in progress is done.
    fn respond_after(&mut self, out: &mut Vec<String>) {
        if self.responding {
            self.respond_when_done = true;
        } else {
            self.responding = true;
            out.push(respond());
        }
    }

    /// Playback was cut (caller barge-in or the clear sent on `speech_started`): truncate the
    /// item at what was heard and cancel the response.
    fn interrupted(&mut self, interruption: &Interruption) -> Vec<String> {
        // Audio of the cut item still waiting for ring space must not play.
        self.samples.clear();
        self.offset = 0;
        self.commands.retain(|c| !matches!(c, Downlink::Mark(_)));
        let mut out = Vec::new();
        if let Some((item_id, audio_end_ms)) = self.playout.interrupted(interruption) {
            self.counters.truncations += 1;
            tracing::info!(
                id = self.id,
                call_sid = %self.call_sid,
                audio_end_ms,
                heard_ms = interruption.heard.as_millis() as u64,
                "AGENT_TRUNCATE"
            );
            out.push(truncate_item(&item_id, audio_end_ms));
        }
        if self.responding && interruption.onset.is_some() {
            self.responding = false;
            self.respond_when_done = false;
            out.push(cancel());
        }
        out
    }

    /// Applies one server event; returns what to send back.
    /// Carries out a tool call: `end_call` and an accepted `transfer_call` end the call once
    /// the audio before them has played (like an agent's `hangup`/`transfer`); a refused
    /// transfer is answered with the reason and a new response, so the assistant can say so.
    fn function_call(&mut self, call_id: &str, name: &str, arguments: &str) -> Vec<String> {
        let args: serde_json::Value = serde_json::from_str(arguments).unwrap_or_default();
        let result = match name {
            END_CALL => {
                tracing::info!(id = self.id, call_sid = %self.call_sid, "HANGUP requested by the assistant");
                Ok(HangupReason::Completed)
            }
            TRANSFER_CALL => {
                let to = args["to"].as_str().unwrap_or_default();
                match crate::ending::check_transfer(to, None, None, &self.transfer_allow) {
                    Ok(transfer) => {
                        tracing::info!(id = self.id, call_sid = %self.call_sid, target = %crate::ending::masked(transfer.to.as_str()), "TRANSFER requested by the assistant");
                        self.ends.shared.set_transfer(transfer);
                        Ok(HangupReason::Transfer)
                    }
                    Err(refused) => {
                        tracing::warn!(id = self.id, call_sid = %self.call_sid, reason = %refused, "TRANSFER refused");
                        Err(refused.to_string())
                    }
                }
            }
            _ => Err(format!(
                "unknown function {}",
                &name[..name.floor_char_boundary(64)]
            )),
        };
        match result {
            Ok(reason) => {
                self.commands.push_back(Downlink::Hangup(reason));
                self.flush();
                vec![function_output(call_id, &json!({"ok": true}))]
            }
            Err(error) => {
                let mut out = vec![function_output(
                    call_id,
                    &json!({"ok": false, "error": error}),
                )];
                self.respond_after(&mut out);
                out
            }
        }
    }

    fn server_event(&mut self, text: &str) -> Vec<String> {
        let event = match parse_event(text) {
            Ok(event) => event,
            Err(e) => {
                self.counters.malformed += 1;
                if self.counters.malformed <= 3 {
                    tracing::warn!(id = self.id, call_sid = %self.call_sid, error = %e, "realtime event ignored");
                }
                return Vec::new();
            }
        };
        match event {
            ServerEvent::AudioDelta { item_id, ulaw } => {
                if ulaw.is_empty() || !self.playout.accepts(&item_id) {
                    return Vec::new();
                }
                if !self.rate_sent {
                    self.rate_sent = true;
                    self.commands
                        .push_back(Downlink::Rate(SampleRate::NARROWBAND));
                    self.flush();
                }
                self.playout.audio(&item_id, ulaw.len() as u64);
                self.samples.clear();
                self.samples.resize(ulaw.len(), 0);
                codec::decode_into(&ulaw, &mut self.samples);
                self.offset = 0;
                if let Some(mark) = self.playout.mark() {
                    self.commands.push_back(Downlink::Mark(mark));
                }
                self.flush();
                Vec::new()
            }
            ServerEvent::SpeechStarted => {
                let mut out = Vec::new();
                if self.playout.playing() {
                    // The engine cuts playback and reports what was heard (→ truncate).
                    self.playout.cut_current();
                    self.samples.clear();
                    self.offset = 0;
                    self.commands.retain(|c| !matches!(c, Downlink::Mark(_)));
                    self.commands.push_back(Downlink::Clear);
                    self.flush();
                }
                if self.responding {
                    self.responding = false;
                    out.push(cancel());
                }
                // The caller is speaking: the server VAD answers them (and sees any keys).
                self.respond_when_done = false;
                out
            }
            ServerEvent::ResponseCreated => {
                self.responding = true;
                Vec::new()
            }
            ServerEvent::FunctionCall {
                call_id,
                name,
                arguments,
            } => self.function_call(&call_id, &name, &arguments),
            ServerEvent::ResponseDone => {
                self.responding = false;
                if std::mem::take(&mut self.respond_when_done) {
                    self.responding = true;
                    return vec![respond()];
                }
                Vec::new()
            }
            ServerEvent::CallerTranscript(text) => {
                let text = &text[..text.floor_char_boundary(MAX_LOGGED_TEXT)];
                tracing::info!(id = self.id, call_sid = %self.call_sid, text = %text, "STT_FINAL");
                Vec::new()
            }
            ServerEvent::AssistantTranscript(text) => {
                let text = &text[..text.floor_char_boundary(MAX_LOGGED_TEXT)];
                tracing::info!(id = self.id, call_sid = %self.call_sid, text = %text, "AGENT_SAID");
                Vec::new()
            }
            ServerEvent::Error(message) => {
                self.counters.errors += 1;
                if self.counters.errors <= 5 {
                    let message = &message[..message.floor_char_boundary(200)];
                    tracing::warn!(id = self.id, call_sid = %self.call_sid, message = %message, "realtime error event");
                }
                Vec::new()
            }
            ServerEvent::Other => Vec::new(),
        }
    }

    /// Pushes pending audio, then pending commands, as far as the rings have room.
    fn flush(&mut self) {
        if self.offset < self.samples.len() {
            let n = self.ends.audio.push_slice(&self.samples[self.offset..]);
            self.offset += n;
            self.counters.samples_down += n as u64;
            if self.offset < self.samples.len() {
                return;
            }
        }
        while let Some(&command) = self.commands.front() {
            if self.ends.commands.is_full() {
                return;
            }
            let pos = self.counters.samples_down;
            if self.ends.commands.try_push((pos, command)).is_err() {
                return;
            }
            if command == Downlink::Clear {
                self.ends.shared.clear_pushed();
            }
            self.commands.pop_front();
        }
    }
}
