//! A call's timeline ([`Trace`], the engine's plain records) as Chrome trace event JSON, which
//! Perfetto and `chrome://tracing` open and `handset trace FILE` ([`crate::trace_svg`]) renders.
//!
//! One lane (`tid`) per kind of activity; speech is an interval (`"ph":"X"`), everything else
//! an instant (`"ph":"i"`). Written once per traced call when it ends, off the runtime's
//! threads, so the events are built as values and handed to serde.

use handset_engine::call::{Trace, TraceKind};
use handset_engine::jitter::PlayoutKind;
use serde::Serialize;
use serde_json::{Value, json};

/// The lanes, by `tid`.
const LANES: [(u32, &str); 6] = [
    (1, "caller media in"),
    (2, "caller playout"),
    (3, "caller speech (VAD)"),
    (4, "agent"),
    (5, "to Twilio"),
    (6, "marks"),
];

/// The whole file.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChromeTrace<'a> {
    display_time_unit: &'static str,
    trace_events: Vec<Event<'a>>,
    other_data: OtherData,
}

#[derive(Serialize)]
struct OtherData {
    /// Events the call did not record because its buffer was full.
    dropped_events: u64,
}

/// One trace event.
#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    /// Phase: `M` metadata, `i` instant, `X` complete (an interval).
    ph: &'static str,
    /// An instant's scope (`t`: its thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    pid: u32,
    tid: u32,
    /// Microseconds since the call started.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    /// An interval's length, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<u64>,
    #[serde(skip_serializing_if = "Value::is_null")]
    args: Value,
}

impl<'a> Event<'a> {
    fn metadata(name: &'a str, tid: u32, label: &str) -> Self {
        Self {
            name,
            ph: "M",
            s: None,
            pid: 1,
            tid,
            ts: None,
            dur: None,
            args: json!({ "name": label }),
        }
    }

    fn instant(name: &'a str, tid: u32, ts: u64, args: Value) -> Self {
        Self {
            name,
            ph: "i",
            s: Some("t"),
            pid: 1,
            tid,
            ts: Some(ts),
            dur: None,
            args,
        }
    }
}

/// The lane, name and arguments of one recorded event.
fn describe(kind: TraceKind) -> (u32, &'static str, Value) {
    match kind {
        TraceKind::AgentAudio { samples, hz } => {
            (4, "agent audio", json!({ "samples": samples, "hz": hz }))
        }
        TraceKind::AgentClear => (4, "agent clear", json!({})),
        TraceKind::AgentMark(m) => (4, "agent mark", json!({ "mark": m.0 })),
        TraceKind::BargeIn { onset, heard } => (
            3,
            "BARGE_IN",
            json!({ "onset_ms": onset.as_millis(), "heard_ms": heard.as_millis() as u64 }),
        ),
        TraceKind::CallerFrame { at, kind } => (
            2,
            match kind {
                PlayoutKind::Received => "frame",
                PlayoutKind::Concealed => "concealed",
            },
            json!({ "at_ms": at.as_millis() }),
        ),
        TraceKind::Clear => (5, "clear", json!({})),
        TraceKind::Dtmf(d) => (3, "dtmf", json!({ "digit": d.to_string() })),
        TraceKind::MarkOut(m) => (6, "mark sent", json!({ "mark": m.0 })),
        TraceKind::MarkEcho(m) => (6, "mark echo", json!({ "mark": m.0 })),
        TraceKind::MediaIn { chunk, admission } => (
            1,
            "media",
            json!({ "chunk": chunk, "admission": format!("{admission:?}") }),
        ),
        TraceKind::OnsetHeld(at) => (3, "onset held", json!({ "onset_ms": at.as_millis() })),
        TraceKind::OnsetRejected => (3, "onset rejected", json!({})),
        TraceKind::PlaybackPaused => (5, "playback paused", json!({})),
        TraceKind::PlaybackResumed => (5, "playback resumed", json!({})),
        TraceKind::SpeechStarted(at) => {
            (3, "speech started", json!({ "onset_ms": at.as_millis() }))
        }
        TraceKind::SpeechEnded(at) => (3, "speech ended", json!({ "end_ms": at.as_millis() })),
        TraceKind::SpeechDismissed(at) => {
            (3, "speech dismissed", json!({ "end_ms": at.as_millis() }))
        }
        TraceKind::Stop => (1, "stop", json!({})),
        TraceKind::Transmit => (5, "frame", json!({})),
    }
}

/// `trace` as Chrome trace JSON; `name` (the CallSid) labels the process.
pub fn to_json(trace: &Trace, name: &str) -> String {
    let mut events = Vec::with_capacity(trace.events().len() + LANES.len() + 8);
    events.push(Event::metadata("process_name", 0, name));
    for (tid, lane) in LANES {
        events.push(Event::metadata("thread_name", tid, lane));
    }
    let mut speech_start = None;
    for &(t, kind) in trace.events() {
        let ts = t.as_micros() as u64;
        match kind {
            TraceKind::SpeechStarted(_) => speech_start = Some(ts),
            TraceKind::SpeechEnded(_) => {
                if let Some(start) = speech_start.take() {
                    events.push(Event {
                        name: "speech",
                        ph: "X",
                        s: None,
                        pid: 1,
                        tid: 3,
                        ts: Some(start),
                        dur: Some(ts.saturating_sub(start)),
                        args: Value::Null,
                    });
                }
            }
            TraceKind::SpeechDismissed(_) => speech_start = None,
            _ => {}
        }
        let (tid, name, args) = describe(kind);
        events.push(Event::instant(name, tid, ts, args));
    }
    let file = ChromeTrace {
        display_time_unit: "ms",
        trace_events: events,
        other_data: OtherData {
            dropped_events: trace.dropped(),
        },
    };
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_string(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use handset_engine::jitter::Admission;
    use handset_engine::{MarkId, SampleTime};

    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[test]
    fn every_event_has_its_lane_and_speech_is_an_interval() {
        let start = t0();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut trace = Trace::new(start, 32);
        trace.record(at(0), TraceKind::SpeechStarted(SampleTime(0)));
        trace.record(
            at(5),
            TraceKind::MediaIn {
                chunk: 7,
                admission: Admission::Late,
            },
        );
        trace.record(at(500), TraceKind::SpeechEnded(SampleTime(4000)));
        trace.record(at(510), TraceKind::Dtmf('"'));
        trace.record(at(520), TraceKind::MarkOut(MarkId(3)));
        trace.record(at(530), TraceKind::OnsetHeld(SampleTime(80)));
        trace.record(at(540), TraceKind::SpeechDismissed(SampleTime(90)));
        let json = to_json(&trace, "CA\"1");
        let value: Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["displayTimeUnit"], "ms");
        assert_eq!(value["otherData"]["dropped_events"], 0);
        let events = value["traceEvents"].as_array().unwrap();
        let named = |n: &str| -> Vec<&Value> { events.iter().filter(|e| e["name"] == n).collect() };
        assert_eq!(named("process_name")[0]["args"]["name"], "CA\"1");
        assert_eq!(named("thread_name").len(), LANES.len());
        let speech = named("speech");
        assert_eq!(speech.len(), 1);
        assert_eq!(speech[0]["ph"], "X");
        assert_eq!(speech[0]["ts"], 0);
        assert_eq!(speech[0]["dur"], 500_000);
        assert!(speech[0].get("args").is_none());
        let media = named("media")[0];
        assert_eq!(
            (media["tid"].as_u64(), media["ts"].as_u64()),
            (Some(1), Some(5_000))
        );
        assert_eq!(media["args"]["admission"], "Late");
        assert_eq!(media["args"]["chunk"], 7);
        assert_eq!(named("dtmf")[0]["args"]["digit"], "\"");
        assert_eq!(named("mark sent")[0]["args"]["mark"], 3);
        assert_eq!(named("onset held")[0]["args"]["onset_ms"], 10);
        assert_eq!(named("speech dismissed")[0]["tid"], 3);
        assert!(
            events
                .iter()
                .filter(|e| e["ph"] == "i")
                .all(|e| e["s"] == "t" && e["pid"] == 1 && e["args"].is_object())
        );
    }

    #[test]
    fn a_full_buffer_reports_its_dropped_events() {
        let start = t0();
        let mut trace = Trace::new(start, 1);
        trace.record(start, TraceKind::Transmit);
        trace.record(start, TraceKind::Clear);
        let value: Value = serde_json::from_str(&to_json(&trace, "CA1")).unwrap();
        assert_eq!(value["otherData"]["dropped_events"], 1);
        assert_eq!(
            value["traceEvents"].as_array().unwrap().len(),
            1 + LANES.len() + 1
        );
    }
}
