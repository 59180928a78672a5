//! The Realtime API's messages: what the adapter sends (`session.update` with its tools,
//! `response.create`, audio appends, `conversation.item.truncate`, …) and the server events it
//! reads, parsed into [`ServerEvent`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;

use crate::config::OpenAiConfig;

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
