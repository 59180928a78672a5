//! Target `media_stream`: `handset_shell::media_stream::parse` on arbitrary UTF-8.
//!
//! Invariants checked:
//! - parsing never panics, whatever the text;
//! - a parsed `media` message carries exactly one 160-byte frame, and its numbers and payload
//!   round-trip: a canonical message rebuilt from the parsed values parses to the same values;
//! - a parsed `media` message's base64 payload decodes to the parsed frame;
//! - the outbound [`Writer`] produces valid JSON carrying the same `streamSid`, mark name and
//!   payload for any stream id or mark name taken from a parsed message (escaping is exact).
//!
//! Non-UTF-8 input is skipped: the WebSocket layer only hands text frames (valid UTF-8) to
//! `parse`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use handset_engine::time::FRAME_SAMPLES;
use handset_shell::media_stream::{Inbound, Writer, parse};
use serde_json::Value;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(message) = parse(text) else {
        return;
    };
    match message {
        Inbound::Media { stream_sid, media } => {
            assert_eq!(media.payload.as_bytes().len(), FRAME_SAMPLES);
            check_payload_matches_wire(text, media.payload.as_bytes());
            let rebuilt = serde_json::json!({
                "event": "media",
                "streamSid": stream_sid.as_ref(),
                "media": {
                    "track": "inbound",
                    "chunk": media.chunk.to_string(),
                    "timestamp": media.timestamp_ms.to_string(),
                    "payload": STANDARD.encode(media.payload.as_bytes()),
                },
            })
            .to_string();
            match parse(&rebuilt) {
                Ok(Inbound::Media {
                    stream_sid: sid2,
                    media: media2,
                }) => {
                    assert_eq!(sid2, stream_sid, "streamSid does not round-trip");
                    assert_eq!(media2, media, "media does not round-trip");
                }
                other => panic!("canonical media message did not parse back: {other:?}"),
            }
            check_writer(&stream_sid, None);
            let mut writer = Writer::new(&stream_sid);
            let out = writer.media(&media.payload);
            let value: Value = serde_json::from_slice(&out).expect("writer media is JSON");
            let payload = value["media"]["payload"].as_str().expect("payload string");
            let decoded = STANDARD.decode(payload).expect("writer payload is base64");
            assert_eq!(decoded.as_slice(), media.payload.as_bytes().as_slice());
        }
        Inbound::Mark { stream_sid, name } => check_writer(&stream_sid, Some(&name)),
        Inbound::Stop { stream_sid } | Inbound::Dtmf { stream_sid, .. } => {
            check_writer(&stream_sid, None);
        }
        Inbound::Start(meta) => {
            assert!(!meta.stream_sid.is_empty(), "start without a stream id");
            check_writer(&meta.stream_sid, None);
        }
        Inbound::Connected { .. } | Inbound::Unknown => {}
    }
}

/// The payload field as written on the wire decodes (standard base64) to the parsed frame.
fn check_payload_matches_wire(text: &str, frame: &[u8; FRAME_SAMPLES]) {
    // The typed parser rejects duplicate fields, so the generic reading sees the same payload.
    // It may still refuse what the typed one skipped (an out-of-range number in an ignored
    // field): then there is nothing to compare.
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let payload = value["media"]["payload"]
        .as_str()
        .expect("a parsed media message has a payload string");
    let bytes = STANDARD
        .decode(payload)
        .expect("a parsed media payload is base64");
    assert_eq!(
        bytes.as_slice(),
        frame.as_slice(),
        "payload differs from the wire"
    );
}

/// The writer's messages are valid JSON that carry `stream_sid` (and `mark`) unchanged.
fn check_writer(stream_sid: &str, mark: Option<&str>) {
    let mut writer = Writer::new(stream_sid);
    let clear: Value = serde_json::from_slice(&writer.clear()).expect("writer clear is JSON");
    assert_eq!(clear["event"], "clear");
    assert_eq!(clear["streamSid"].as_str(), Some(stream_sid));
    if let Some(name) = mark {
        let out: Value = serde_json::from_slice(&writer.mark(name)).expect("writer mark is JSON");
        assert_eq!(out["event"], "mark");
        assert_eq!(out["streamSid"].as_str(), Some(stream_sid));
        assert_eq!(out["mark"]["name"].as_str(), Some(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_media_message_passes_every_check() {
        let payload = STANDARD.encode([0x7Fu8; 160]);
        let text = format!(
            r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"2","timestamp":"5","payload":"{payload}"}},"streamSid":"MZ\"1\u00e9"}}"#
        );
        assert!(matches!(parse(&text), Ok(Inbound::Media { .. })));
        run(text.as_bytes());
    }

    #[test]
    fn mark_names_with_escapes_survive_the_writer() {
        run(br#"{"event":"mark","streamSid":"MZ1","mark":{"name":"a\"b\\c\n\u0001\ud83d\ude00"}}"#);
    }
}
