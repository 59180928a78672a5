//! The agent protocol's JSON messages: pure building and parsing, no I/O.
//!
//! Handset → agent text messages are built by [`start`] and [`event`]; agent → Handset text
//! messages are parsed by [`parse`]. Binary messages carry PCM16LE audio both ways and need no
//! code here beyond [`pcm_from_le`]. The full contract, with examples, is in
//! `docs/agent-protocol.md`.
//!
//! Assumptions: the agent is untrusted input. Parsing never panics, caps every string it keeps
//! ([`MAX_MARK_NAME`], [`MAX_TRANSCRIPT`]), and sorts anything it does not know into
//! [`FromAgent::Unknown`] or [`ParseError`], which the client counts and skips.

use std::collections::HashMap;

use handset_engine::SampleRate;
use handset_engine::agent::CallInfo;
use serde::Deserialize;
use serde_json::json;

/// Longest mark name accepted, in bytes.
pub const MAX_MARK_NAME: usize = 128;
/// Longest transcript text kept, in bytes (longer text is cut at a character boundary).
pub const MAX_TRANSCRIPT: usize = 1_000;

/// A message from the agent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum FromAgent {
    /// Binary audio from now on is PCM16LE mono at this rate.
    AudioFormat(SampleRate),
    /// Stop playback now: drop everything queued.
    Clear,
    /// End the call once the audio sent before it has played.
    Hangup,
    /// Report `name` back (`mark_played`) once the audio sent before it has played.
    Mark(String),
    /// Speech recognised so far (`partial`) or for a whole utterance (`final`).
    Transcript {
        /// `true` for `final`, `false` for `partial`.
        is_final: bool,
        /// The text, capped at [`MAX_TRANSCRIPT`] bytes.
        text: String,
    },
    /// Hand the caller to `to` once the audio sent before it has played.
    Transfer {
        /// An E.164 number or a `sip:` URI (checked by [`crate::ending::check_transfer`]).
        to: String,
        /// Caller ID shown to the target (E.164).
        caller_id: Option<String>,
        /// Seconds to ring the target.
        timeout_s: Option<u64>,
    },
    /// A `type` this version does not know; ignored.
    Unknown,
}

/// Why an agent text message was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// Not a JSON object with a string `type`.
    #[error("agent message is not a json object with a string type")]
    Malformed,
    /// `audio_format` with an encoding, rate or channel count Handset cannot play.
    #[error(
        "agent audio format {encoding:?} at {sample_rate} hz with {channels} channels is not supported"
    )]
    Format {
        /// `encoding` as given.
        encoding: String,
        /// `sample_rate` as given.
        sample_rate: u64,
        /// `channels` as given.
        channels: u64,
    },
    /// `mark` without a name, or a name longer than [`MAX_MARK_NAME`].
    #[error("agent mark name missing, empty or longer than {MAX_MARK_NAME} bytes")]
    MarkName,
    /// `transcript` with a `kind` other than `partial`/`final`, or without `text`.
    #[error("agent transcript needs kind partial or final and a text")]
    Transcript,
    /// `transfer` without a string `to`.
    #[error("agent transfer needs a target in to")]
    Transfer,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    encoding: Option<String>,
    sample_rate: Option<u64>,
    channels: Option<u64>,
    name: Option<String>,
    text: Option<String>,
    #[serde(rename = "kind")]
    transcript_kind: Option<String>,
    to: Option<String>,
    caller_id: Option<String>,
    timeout_s: Option<u64>,
}

/// Parses one agent text message.
pub fn parse(text: &str) -> Result<FromAgent, ParseError> {
    let raw: Raw = serde_json::from_str(text).map_err(|_| ParseError::Malformed)?;
    Ok(match raw.kind.as_str() {
        "audio_format" => {
            let encoding = raw.encoding.unwrap_or_else(|| "pcm16le".to_owned());
            let sample_rate = raw.sample_rate.unwrap_or(0);
            let channels = raw.channels.unwrap_or(1);
            let rate = u32::try_from(sample_rate)
                .ok()
                .and_then(SampleRate::supported)
                .filter(|_| encoding == "pcm16le" && channels == 1);
            match rate {
                Some(rate) => FromAgent::AudioFormat(rate),
                None => {
                    return Err(ParseError::Format {
                        encoding: encoding[..encoding.floor_char_boundary(32)].to_owned(),
                        sample_rate,
                        channels,
                    });
                }
            }
        }
        "clear" => FromAgent::Clear,
        "hangup" => FromAgent::Hangup,
        "transfer" => FromAgent::Transfer {
            to: raw.to.ok_or(ParseError::Transfer)?,
            caller_id: raw.caller_id,
            timeout_s: raw.timeout_s,
        },
        "mark" => match raw.name {
            Some(name) if !name.is_empty() && name.len() <= MAX_MARK_NAME => FromAgent::Mark(name),
            _ => return Err(ParseError::MarkName),
        },
        "transcript" => {
            let is_final = match raw.transcript_kind.as_deref() {
                Some("final") => true,
                Some("partial") => false,
                _ => return Err(ParseError::Transcript),
            };
            let text = raw.text.ok_or(ParseError::Transcript)?;
            FromAgent::Transcript {
                is_final,
                text: text[..text.floor_char_boundary(MAX_TRANSCRIPT)].to_owned(),
            }
        }
        _ => FromAgent::Unknown,
    })
}

/// The `start` message: who the call is with, which way it goes (Twilio's `Direction`,
/// carried by the `direction` parameter; `null` when the voice webhook had none) and the
/// caller audio format.
pub fn start(info: &CallInfo, custom_parameters: &HashMap<String, String>) -> String {
    json!({
        "type": "start",
        "callSid": info.call_sid,
        "streamSid": info.stream_sid,
        "from": info.from,
        "to": info.to,
        "direction": custom_parameters.get("direction"),
        "resumed": custom_parameters.contains_key("hop"),
        "customParameters": custom_parameters,
        "audio": {"encoding": "pcm16le", "sample_rate": 16_000, "channels": 1, "frame_ms": 20},
    })
    .to_string()
}

/// The `recording` message that opens a transcription connection: a recorded message of
/// `duration_s` seconds follows as PCM16LE mono at `sample_rate`, then [`RECORDING_END`].
pub fn recording(call_sid: &str, recording_sid: &str, duration_s: u64, sample_rate: u32) -> String {
    json!({
        "type": "recording",
        "callSid": call_sid,
        "recordingSid": recording_sid,
        "duration_s": duration_s,
        "audio": {"encoding": "pcm16le", "sample_rate": sample_rate, "channels": 1},
    })
    .to_string()
}

/// Ends the audio of a `recording`: the agent answers with a final `transcript`.
pub const RECORDING_END: &str = r#"{"type":"recording_end"}"#;

/// A Handset → agent event, ready to serialise with [`event`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ToAgent<'a> {
    /// The caller started speaking at `at_ms` on the caller timeline.
    SpeechStarted {
        /// Onset, ms since the stream started.
        at_ms: u64,
    },
    /// The caller stopped speaking at `at_ms`; `dismissed`: the utterance was not speech after
    /// all (the second-stage check never confirmed it), so there is nothing to answer.
    SpeechEnded {
        /// End of speech, ms since the stream started.
        at_ms: u64,
        /// Not speech (music, noise).
        dismissed: bool,
    },
    /// A DTMF key.
    Dtmf(char),
    /// The caller spoke over agent audio: playback was cut.
    BargeIn {
        /// Onset of the caller's speech, ms on the caller timeline.
        at_ms: Option<u64>,
        /// Agent audio of the interrupted playback the caller heard, ms.
        heard_ms: u64,
        /// Agent audio of that playback sent to Twilio, ms.
        sent_ms: u64,
        /// The last mark that played in that playback.
        last_played_mark: Option<&'a str>,
        /// The first mark that did not play: it ends the interrupted audio.
        interrupted_mark: Option<&'a str>,
    },
    /// The agent's `clear` was carried out.
    PlaybackCleared {
        /// Agent audio of the cut playback the caller heard, ms.
        heard_ms: u64,
        /// The first mark that did not play.
        interrupted_mark: Option<&'a str>,
    },
    /// A mark's audio has played.
    MarkPlayed(&'a str),
    /// A mark's audio was dropped (barge-in or clear): it will never play.
    MarkCleared(&'a str),
    /// The call ended; `reason` is `handover` when the call moves to another instance.
    Stop {
        /// Why, when it is not the plain end of the call.
        reason: Option<&'a str>,
    },
    /// A `transfer` was refused; the call goes on.
    TransferRefused {
        /// The target as the agent sent it (cut to 256 bytes).
        to: &'a str,
        /// Why.
        reason: &'a str,
    },
}

/// The JSON text of `event`.
pub fn event(event: &ToAgent<'_>) -> String {
    match *event {
        ToAgent::SpeechStarted { at_ms } => json!({"type": "speech_started", "at_ms": at_ms}),
        ToAgent::SpeechEnded { at_ms, dismissed } => {
            json!({"type": "speech_ended", "at_ms": at_ms, "dismissed": dismissed})
        }
        ToAgent::Dtmf(digit) => json!({"type": "dtmf", "digit": digit.to_string()}),
        ToAgent::BargeIn {
            at_ms,
            heard_ms,
            sent_ms,
            last_played_mark,
            interrupted_mark,
        } => json!({
            "type": "barge_in",
            "at_ms": at_ms,
            "heard_ms": heard_ms,
            "sent_ms": sent_ms,
            "last_played_mark": last_played_mark,
            "interrupted_mark": interrupted_mark,
        }),
        ToAgent::PlaybackCleared {
            heard_ms,
            interrupted_mark,
        } => json!({
            "type": "playback_cleared",
            "heard_ms": heard_ms,
            "interrupted_mark": interrupted_mark,
        }),
        ToAgent::MarkPlayed(name) => json!({"type": "mark_played", "name": name}),
        ToAgent::MarkCleared(name) => json!({"type": "mark_cleared", "name": name}),
        ToAgent::Stop { reason: None } => json!({"type": "stop"}),
        ToAgent::Stop {
            reason: Some(reason),
        } => json!({"type": "stop", "reason": reason}),
        ToAgent::TransferRefused { to, reason } => json!({
            "type": "transfer_refused",
            "to": &to[..to.floor_char_boundary(crate::ending::MAX_TARGET)],
            "reason": reason,
        }),
    }
    .to_string()
}

/// Appends the PCM16LE samples in `bytes` to `out`. An odd trailing byte is returned, to be
/// prefixed to the next message (`carry` holds one left from the previous message).
pub fn pcm_from_le(carry: Option<u8>, bytes: &[u8], out: &mut Vec<i16>) -> Option<u8> {
    let mut rest = bytes;
    if let Some(low) = carry {
        let Some((&high, tail)) = rest.split_first() else {
            return Some(low);
        };
        out.push(i16::from_le_bytes([low, high]));
        rest = tail;
    }
    let pairs = rest.chunks_exact(2);
    let odd = pairs.remainder().first().copied();
    out.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
    odd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_types_are_ignored() {
        assert_eq!(
            parse(
                r#"{"type":"audio_format","encoding":"pcm16le","sample_rate":24000,"channels":1}"#
            ),
            Ok(FromAgent::AudioFormat(SampleRate::HZ_24000))
        );
        assert_eq!(parse(r#"{"type":"clear"}"#), Ok(FromAgent::Clear));
        assert_eq!(parse(r#"{"type":"hangup"}"#), Ok(FromAgent::Hangup));
        assert_eq!(
            parse(
                r#"{"type":"transfer","to":"+15557654321","caller_id":"+15550001111","timeout_s":20}"#
            ),
            Ok(FromAgent::Transfer {
                to: "+15557654321".into(),
                caller_id: Some("+15550001111".into()),
                timeout_s: Some(20),
            })
        );
        assert_eq!(parse(r#"{"type":"transfer"}"#), Err(ParseError::Transfer));
        assert_eq!(
            parse(r#"{"type":"mark","name":"answer-1"}"#),
            Ok(FromAgent::Mark("answer-1".into()))
        );
        assert_eq!(
            parse(r#"{"type":"transcript","kind":"final","text":"hello"}"#),
            Ok(FromAgent::Transcript {
                is_final: true,
                text: "hello".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"future_thing","x":1}"#),
            Ok(FromAgent::Unknown)
        );
    }

    #[test]
    fn hostile_messages_are_refused_without_panicking() {
        assert_eq!(parse("nope"), Err(ParseError::Malformed));
        assert_eq!(parse(r#"{"type":5}"#), Err(ParseError::Malformed));
        assert_eq!(parse("[]"), Err(ParseError::Malformed));
        assert!(matches!(
            parse(r#"{"type":"audio_format","sample_rate":11025}"#),
            Err(ParseError::Format {
                sample_rate: 11025,
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"type":"audio_format","sample_rate":99999999999999}"#),
            Err(ParseError::Format { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"audio_format","encoding":"mulaw","sample_rate":8000}"#),
            Err(ParseError::Format { .. })
        ));
        let long = format!(
            r#"{{"type":"mark","name":"{}"}}"#,
            "m".repeat(MAX_MARK_NAME + 1)
        );
        assert_eq!(parse(&long), Err(ParseError::MarkName));
        assert_eq!(
            parse(r#"{"type":"mark","name":""}"#),
            Err(ParseError::MarkName)
        );
        assert_eq!(
            parse(r#"{"type":"transcript","kind":"maybe","text":"x"}"#),
            Err(ParseError::Transcript)
        );
    }

    #[test]
    fn transcripts_are_capped_at_a_character_boundary() {
        let text = "é".repeat(MAX_TRANSCRIPT);
        let msg = json!({"type": "transcript", "kind": "partial", "text": text}).to_string();
        let Ok(FromAgent::Transcript { text, is_final }) = parse(&msg) else {
            panic!("transcript parses");
        };
        assert!(!is_final);
        assert!(text.len() <= MAX_TRANSCRIPT && text.len() >= MAX_TRANSCRIPT - 1);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn odd_byte_counts_carry_over_between_messages() {
        let samples: Vec<i16> = vec![1, -2, 300, -32768, 32767];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        let mut carry = None;
        for chunk in [&bytes[..3], &bytes[3..4], &bytes[4..4], &bytes[4..]] {
            carry = pcm_from_le(carry, chunk, &mut out);
        }
        assert_eq!(carry, None);
        assert_eq!(out, samples);
    }

    #[test]
    fn events_have_the_documented_shapes() {
        let info = CallInfo {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            from: "+1".into(),
            to: "+2".into(),
        };
        let params = HashMap::from([("k".to_owned(), "v".to_owned())]);
        let v: serde_json::Value = serde_json::from_str(&start(&info, &params)).unwrap();
        assert_eq!(v["type"], "start");
        assert_eq!(v["callSid"], "CA1");
        assert_eq!(v["direction"], serde_json::Value::Null);
        let outbound = HashMap::from([("direction".to_owned(), "outbound-api".to_owned())]);
        let out: serde_json::Value = serde_json::from_str(&start(&info, &outbound)).unwrap();
        assert_eq!(out["direction"], "outbound-api");
        assert_eq!(v["customParameters"]["k"], "v");
        assert_eq!(v["audio"]["sample_rate"], 16_000);
        let b = event(&ToAgent::BargeIn {
            at_ms: Some(2_000),
            heard_ms: 740,
            sent_ms: 900,
            last_played_mark: None,
            interrupted_mark: Some("r1"),
        });
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["type"], "barge_in");
        assert_eq!(v["heard_ms"], 740);
        assert_eq!(v["interrupted_mark"], "r1");
        assert!(v["last_played_mark"].is_null());
        for dismissed in [false, true] {
            let e = event(&ToAgent::SpeechEnded {
                at_ms: 3_140,
                dismissed,
            });
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"type": "speech_ended", "at_ms": 3_140, "dismissed": dismissed})
            );
        }
        let r: serde_json::Value =
            serde_json::from_str(&recording("CA1", "RE1", 14, 8_000)).unwrap();
        assert_eq!(r["type"], "recording");
        assert_eq!(
            (r["callSid"].as_str(), r["recordingSid"].as_str()),
            (Some("CA1"), Some("RE1"))
        );
        assert_eq!(r["duration_s"], 14);
        assert_eq!(r["audio"]["sample_rate"], 8_000);
        let end: serde_json::Value = serde_json::from_str(RECORDING_END).unwrap();
        assert_eq!(end["type"], "recording_end");
        assert_eq!(
            event(&ToAgent::Dtmf('#')),
            r##"{"digit":"#","type":"dtmf"}"##
        );
    }
}
