use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use handset_engine::MarkId;

use super::*;
use crate::config::OpenAiConfig;

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
