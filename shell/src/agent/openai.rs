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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use handset_engine::agent::{CallInfo, HangupReason};
use handset_engine::call::{CallEvent, Interruption};
use handset_engine::resample::Resampler;
use handset_engine::{MarkId, SampleRate, codec};
use ringbuf::traits::{Observer, Producer};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::client::{
    AgentSocket as Socket, ClientEnds, RETRY, WRITE_TIMEOUT, connect_or_fail, drain, fail,
};
use super::remote::{Downlink, FailReason, INTERNAL_MARK_BASE, Uplink};
use crate::config::{AgentConfig, OpenAiConfig};

/// Samples per millisecond at the adapter's 8 kHz.
const SAMPLES_PER_MS: u64 = 8;
/// Own marks outstanding at most (one per delta); beyond this deltas go unmarked.
const MAX_MARKS: usize = 900;
/// Truncated items remembered, so their late deltas are dropped.
const CUT_ITEMS: usize = 16;
/// Longest text kept from a transcript for the log.
const MAX_LOGGED_TEXT: usize = 1_000;
/// Phone keys are sent once the caller has pressed none for this long (or pressed `#`).
pub const KEYS_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys collected at most per message; more are dropped (and counted in the log).
const MAX_KEYS: usize = 32;

/// The `session.update` the adapter sends first.
pub fn session_update(config: &OpenAiConfig) -> String {
    let mut input = json!({
        "format": {"type": "audio/pcmu"},
        "turn_detection": {"type": "server_vad"},
    });
    if let Some(model) = &config.transcribe_model {
        input["transcription"] = json!({ "model": model });
    }
    let mut update = json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": config.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": input,
                "output": {"format": {"type": "audio/pcmu"}, "voice": config.voice},
            },
        },
    });
    if config.tools {
        update["session"]["tools"] = tools();
        update["session"]["tool_choice"] = "auto".into();
    }
    update.to_string()
}

/// The function tools the assistant may call (`OPENAI_TOOLS`): end the call, transfer it.
fn tools() -> serde_json::Value {
    json!([
        {
            "type": "function",
            "name": END_CALL,
            "description": "End the phone call. Say goodbye first; the call ends once that has played.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
        {
            "type": "function",
            "name": TRANSFER_CALL,
            "description": "Transfer the caller to a person or another line. Tell the caller first; the transfer happens once that has played.",
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string", "description": "E.164 phone number such as +15557654321, or a sip: URI"},
                },
                "required": ["to"],
            },
        },
    ])
}

/// The `end_call` tool's name.
pub const END_CALL: &str = "end_call";
/// The `transfer_call` tool's name.
pub const TRANSFER_CALL: &str = "transfer_call";

/// `conversation.item.create` with a function call's result.
pub fn function_output(call_id: &str, output: &serde_json::Value) -> String {
    json!({
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output.to_string()},
    })
    .to_string()
}

/// `response.create` asking for the opening words, with `instructions` for this response only.
pub fn greeting_response(instructions: &str) -> String {
    json!({"type": "response.create", "response": {"instructions": instructions}}).to_string()
}

/// `response.create` with the session's instructions.
pub fn respond() -> String {
    json!({"type": "response.create"}).to_string()
}

/// `conversation.item.create`: a user message saying which phone keys the caller pressed.
pub fn keys_item(keys: &str) -> String {
    let mut spaced = String::with_capacity(keys.len() * 2);
    for (i, key) in keys.chars().enumerate() {
        if i > 0 {
            spaced.push(' ');
        }
        spaced.push(key);
    }
    json!({
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{
                "type": "input_text",
                "text": format!("[The caller pressed these phone keys: {spaced}]"),
            }],
        },
    })
    .to_string()
}

/// `input_audio_buffer.append` with µ-law bytes.
pub fn append(ulaw: &[u8]) -> String {
    json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(ulaw)}).to_string()
}

/// `conversation.item.truncate` at `audio_end_ms` of `item_id`'s audio.
pub fn truncate_item(item_id: &str, audio_end_ms: u64) -> String {
    json!({
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    })
    .to_string()
}

/// `response.cancel`.
pub fn cancel() -> String {
    json!({"type": "response.cancel"}).to_string()
}

/// A server event the adapter acts on.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ServerEvent {
    /// Assistant audio: µ-law bytes of `item_id`.
    AudioDelta {
        /// The assistant item the audio belongs to.
        item_id: String,
        /// Decoded µ-law bytes.
        ulaw: Vec<u8>,
    },
    /// Server VAD heard the caller start speaking.
    SpeechStarted,
    /// A response started.
    ResponseCreated,
    /// A response finished (completed, cancelled or failed).
    ResponseDone,
    /// What the caller said (input transcription).
    CallerTranscript(String),
    /// What the assistant said (output audio transcript).
    AssistantTranscript(String),
    /// An `error` event: its message.
    Error(String),
    /// The assistant called a function tool.
    FunctionCall {
        /// The call's id, echoed in the output.
        call_id: String,
        /// The tool.
        name: String,
        /// Its arguments, a JSON object as text.
        arguments: String,
    },
    /// Anything else (ignored).
    Other,
}

/// Why a server event could not be read.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum EventError {
    /// Not a JSON object with a string `type`.
    #[error("realtime event is not a json object with a string type")]
    Malformed,
    /// An audio delta without `item_id` or with `delta` that is not base64.
    #[error("realtime audio delta without item_id or with invalid base64")]
    BadDelta,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    item_id: Option<String>,
    delta: Option<String>,
    transcript: Option<String>,
    error: Option<RawError>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    message: Option<String>,
}

/// Parses one server event. Never panics on hostile input.
pub fn parse_event(text: &str) -> Result<ServerEvent, EventError> {
    let raw: RawEvent = serde_json::from_str(text).map_err(|_| EventError::Malformed)?;
    Ok(match raw.kind.as_str() {
        "response.output_audio.delta" | "response.audio.delta" => {
            let (Some(item_id), Some(delta)) = (raw.item_id, raw.delta) else {
                return Err(EventError::BadDelta);
            };
            let ulaw = BASE64.decode(delta).map_err(|_| EventError::BadDelta)?;
            ServerEvent::AudioDelta { item_id, ulaw }
        }
        "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted,
        "response.created" => ServerEvent::ResponseCreated,
        "response.done" => ServerEvent::ResponseDone,
        "conversation.item.input_audio_transcription.completed" => {
            ServerEvent::CallerTranscript(raw.transcript.unwrap_or_default())
        }
        "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
            ServerEvent::AssistantTranscript(raw.transcript.unwrap_or_default())
        }
        "response.function_call_arguments.done" => match (raw.call_id, raw.name) {
            (Some(call_id), Some(name)) => ServerEvent::FunctionCall {
                call_id,
                name,
                arguments: raw.arguments.unwrap_or_default(),
            },
            _ => return Err(EventError::Malformed),
        },
        "error" => ServerEvent::Error(
            raw.error
                .and_then(|e| e.message)
                .unwrap_or_else(|| "unknown error".to_owned()),
        ),
        _ => ServerEvent::Other,
    })
}

/// The assistant item being played.
#[derive(Clone, Debug, Eq, PartialEq)]
struct Item {
    id: String,
    /// Position of its first sample (8 kHz samples pushed before it).
    start: u64,
}

/// Tracks where the engine's playback began and which assistant item each sample belongs to,
/// so an interruption's `heard` can be turned into an item's `audio_end_ms`. Pure state.
#[derive(Debug)]
pub struct Playout {
    /// 8 kHz samples pushed into the engine's ring so far.
    pushed: u64,
    /// Position at which the engine's current playback began.
    origin: u64,
    /// Every pushed sample is known played (or cut): the next audio starts a playback.
    idle: bool,
    item: Option<Item>,
    /// Own marks not yet played or cleared: (id, position).
    marks: VecDeque<(u64, u64)>,
    /// The last own mark played: (id, position).
    last_played: Option<(u64, u64)>,
    next_mark: u64,
    /// Items truncated recently: their later deltas are dropped.
    cut: VecDeque<String>,
}

impl Default for Playout {
    fn default() -> Self {
        Self::new()
    }
}

impl Playout {
    /// Nothing pushed yet.
    pub fn new() -> Self {
        Self {
            pushed: 0,
            origin: 0,
            idle: true,
            item: None,
            marks: VecDeque::new(),
            last_played: None,
            next_mark: 0,
            cut: VecDeque::new(),
        }
    }

    /// Whether audio of `item_id` should play (false once the item was truncated).
    pub fn accepts(&self, item_id: &str) -> bool {
        !self.cut.iter().any(|c| c == item_id)
    }

    /// Records `samples` of `item_id` about to be pushed at the current position.
    pub fn audio(&mut self, item_id: &str, samples: u64) {
        if self.item.as_ref().is_none_or(|i| i.id != item_id) {
            self.item = Some(Item {
                id: item_id.to_owned(),
                start: self.pushed,
            });
        }
        if self.idle {
            self.origin = self.pushed;
            self.idle = false;
        }
        self.pushed += samples;
    }

    /// A mark to push after the audio recorded so far, or `None` if too many are outstanding.
    pub fn mark(&mut self) -> Option<MarkId> {
        if self.marks.len() >= MAX_MARKS {
            return None;
        }
        self.next_mark += 1;
        if self.next_mark >= INTERNAL_MARK_BASE {
            return None;
        }
        self.marks.push_back((self.next_mark, self.pushed));
        Some(MarkId(self.next_mark))
    }

    /// A mark's audio played. When it was the last audio pushed, the playback is over.
    pub fn mark_played(&mut self, mark: MarkId) {
        if let Some(i) = self.marks.iter().position(|(m, _)| *m == mark.0) {
            let (_, pos) = self.marks[i];
            self.marks.drain(..=i);
            self.last_played = Some((mark.0, pos));
            if pos == self.pushed {
                self.idle = true;
            }
        }
    }

    /// A mark was cut (it will never play).
    pub fn mark_cleared(&mut self, mark: MarkId) {
        if let Some(i) = self.marks.iter().position(|(m, _)| *m == mark.0) {
            self.marks.remove(i);
        }
    }

    /// Whether assistant audio may still be playing.
    pub fn playing(&self) -> bool {
        !self.idle
    }

    /// Playback was cut: the item to truncate and its `audio_end_ms`, unless nothing of an
    /// item was playing.
    pub fn interrupted(&mut self, interruption: &Interruption) -> Option<(String, u64)> {
        let was_idle = self.idle;
        self.idle = true;
        self.marks.clear();
        let item = self.item.take()?;
        if was_idle {
            return None;
        }
        let heard = interruption.heard.as_micros() as u64 * SAMPLES_PER_MS / 1_000;
        let confirmed = match (interruption.last_played_mark, self.last_played) {
            (Some(m), Some((id, pos))) if m.0 == id => pos,
            _ => 0,
        };
        let played = (self.origin + heard).max(confirmed).min(self.pushed);
        if self.cut.len() == CUT_ITEMS {
            self.cut.pop_front();
        }
        self.cut.push_back(item.id.clone());
        let end_ms = played.saturating_sub(item.start) / SAMPLES_PER_MS;
        Some((item.id, end_ms))
    }

    /// Stops tracking the current item (its audio is being cut); later deltas of it are dropped.
    pub fn cut_current(&mut self) -> Option<&str> {
        let item = self.item.as_ref()?;
        if !self.cut.contains(&item.id) {
            if self.cut.len() == CUT_ITEMS {
                self.cut.pop_front();
            }
            self.cut.push_back(item.id.clone());
        }
        Some(&item.id)
    }
}

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
    if let Err((reason, error)) = &outcome {
        fail(&session.ends, *reason, id, &session.call_sid, error);
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, tx.close()).await;
    if outcome.is_err() {
        drain(&mut session.ends.uplink).await;
    }
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

type Failure = (FailReason, String);

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cut(heard_ms: u64, last_played_mark: Option<MarkId>) -> Interruption {
        Interruption {
            onset: None,
            heard: Duration::from_millis(heard_ms),
            sent: Duration::from_millis(heard_ms),
            dropped: Duration::ZERO,
            last_played_mark,
        }
    }

    #[test]
    fn truncation_is_the_heard_part_of_the_item_that_started_the_playback() {
        let mut p = Playout::new();
        p.audio("a", 8_000);
        p.mark();
        p.audio("a", 8_000);
        p.mark();
        assert_eq!(p.interrupted(&cut(740, None)), Some(("a".into(), 740)));
        assert!(
            !p.accepts("a"),
            "late deltas of a truncated item are dropped"
        );
        assert!(p.accepts("b"));
    }

    #[test]
    fn a_second_item_in_the_same_playback_is_cut_relative_to_its_own_start() {
        let mut p = Playout::new();
        p.audio("a", 4_000); // 500 ms, still playing when b arrives
        p.mark();
        p.audio("b", 8_000);
        p.mark();
        assert_eq!(p.interrupted(&cut(900, None)), Some(("b".into(), 400)));
    }

    #[test]
    fn a_new_playback_starts_after_the_last_mark_played() {
        let mut p = Playout::new();
        p.audio("a", 4_000);
        let m = p.mark().unwrap();
        p.mark_played(m);
        assert!(!p.playing());
        p.audio("b", 8_000);
        p.mark();
        assert!(p.playing());
        // heard counts from b's start (a new engine playback).
        assert_eq!(p.interrupted(&cut(300, None)), Some(("b".into(), 300)));
    }

    #[test]
    fn heard_never_exceeds_the_item_nor_goes_behind_a_played_mark() {
        let mut p = Playout::new();
        p.audio("a", 1_600);
        p.mark();
        assert_eq!(p.interrupted(&cut(5_000, None)), Some(("a".into(), 200)));
        let mut p = Playout::new();
        p.audio("a", 1_600);
        let m1 = p.mark().unwrap();
        p.audio("a", 1_600);
        p.mark();
        p.mark_played(m1);
        assert_eq!(p.interrupted(&cut(100, Some(m1))), Some(("a".into(), 200)));
    }

    #[test]
    fn nothing_is_truncated_when_everything_had_played() {
        let mut p = Playout::new();
        p.audio("a", 800);
        let m = p.mark().unwrap();
        p.mark_played(m);
        assert_eq!(p.interrupted(&cut(100, None)), None);
        assert_eq!(p.interrupted(&cut(0, None)), None);
    }

    #[test]
    fn server_events_parse_in_both_shapes_and_hostile_ones_are_refused() {
        let delta = json!({"type": "response.output_audio.delta", "item_id": "i1",
            "response_id": "r1", "output_index": 0, "content_index": 0,
            "delta": BASE64.encode([0xFFu8, 0x7F, 0x00])})
        .to_string();
        assert_eq!(
            parse_event(&delta),
            Ok(ServerEvent::AudioDelta {
                item_id: "i1".into(),
                ulaw: vec![0xFF, 0x7F, 0x00]
            })
        );
        let beta = delta.replace("response.output_audio.delta", "response.audio.delta");
        assert!(matches!(
            parse_event(&beta),
            Ok(ServerEvent::AudioDelta { .. })
        ));
        assert_eq!(
            parse_event(r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":10}"#),
            Ok(ServerEvent::SpeechStarted)
        );
        assert_eq!(
            parse_event(
                r#"{"type":"conversation.item.input_audio_transcription.completed","transcript":"hi"}"#
            ),
            Ok(ServerEvent::CallerTranscript("hi".into()))
        );
        assert_eq!(
            parse_event(r#"{"type":"error","error":{"type":"x","message":"bad"}}"#),
            Ok(ServerEvent::Error("bad".into()))
        );
        assert_eq!(
            parse_event(r#"{"type":"rate_limits.updated"}"#),
            Ok(ServerEvent::Other)
        );
        assert_eq!(parse_event("[1]"), Err(EventError::Malformed));
        assert_eq!(
            parse_event(r#"{"type":"response.output_audio.delta","item_id":"i","delta":"@@"}"#),
            Err(EventError::BadDelta)
        );
        assert_eq!(
            parse_event(r#"{"type":"response.output_audio.delta","delta":"AA=="}"#),
            Err(EventError::BadDelta)
        );
    }

    #[test]
    fn session_update_asks_for_mulaw_both_ways_and_server_vad() {
        let config = OpenAiConfig {
            voice: "verse".into(),
            instructions: "be brief".into(),
            transcribe_model: None,
            greeting: None,
            dtmf: true,
            tools: false,
        };
        let v: serde_json::Value = serde_json::from_str(&session_update(&config)).unwrap();
        assert_eq!(v["type"], "session.update");
        let s = &v["session"];
        assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcmu");
        assert_eq!(s["audio"]["output"]["format"]["type"], "audio/pcmu");
        assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(s["audio"]["output"]["voice"], "verse");
        assert_eq!(s["instructions"], "be brief");
        assert!(s["audio"]["input"].get("transcription").is_none());
        let t: serde_json::Value = serde_json::from_str(&truncate_item("i9", 740)).unwrap();
        assert_eq!(t["type"], "conversation.item.truncate");
        assert_eq!(
            (t["item_id"].as_str(), t["audio_end_ms"].as_u64()),
            (Some("i9"), Some(740))
        );
        assert_eq!(t["content_index"], 0);
        assert!(s.get("tools").is_none(), "OPENAI_TOOLS=off declares none");
        let with_tools = OpenAiConfig {
            tools: true,
            ..config
        };
        let v: serde_json::Value = serde_json::from_str(&session_update(&with_tools)).unwrap();
        let names: Vec<&str> = v["session"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [END_CALL, TRANSFER_CALL]);
        assert_eq!(v["session"]["tool_choice"], "auto");
    }

    #[test]
    fn function_calls_parse_and_a_call_without_a_name_is_refused() {
        let call = json!({"type": "response.function_call_arguments.done", "response_id": "r",
            "item_id": "i", "output_index": 1, "call_id": "call_1", "name": "transfer_call",
            "arguments": "{\"to\":\"+15557654321\"}"})
        .to_string();
        assert_eq!(
            parse_event(&call),
            Ok(ServerEvent::FunctionCall {
                call_id: "call_1".into(),
                name: "transfer_call".into(),
                arguments: r#"{"to":"+15557654321"}"#.into(),
            })
        );
        let nameless = json!({"type": "response.function_call_arguments.done", "call_id": "c"});
        assert_eq!(
            parse_event(&nameless.to_string()),
            Err(EventError::Malformed)
        );
        let out: serde_json::Value =
            serde_json::from_str(&function_output("call_1", &json!({"ok": true}))).unwrap();
        assert_eq!(out["item"]["type"], "function_call_output");
        assert_eq!(out["item"]["call_id"], "call_1");
        assert_eq!(out["item"]["output"], r#"{"ok":true}"#);
    }
}
