//! Per-call timelines for engineers profiling barge-in and pacing.
//!
//! When [`CallConfig::trace_events`](super::CallConfig::trace_events) is non-zero the call
//! records every frame in and out, every jitter playout slot, VAD transitions, marks, clears,
//! barge-ins and agent inputs, each with the instant it happened, into a buffer allocated once
//! at construction (nothing is allocated per frame; when the buffer is full, further events are
//! counted and dropped). [`Trace::to_chrome_json`] writes the Chrome trace event format, which
//! Perfetto and `chrome://tracing` open; `handset trace FILE` renders it as an SVG timeline.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::frame::MarkId;
use crate::jitter::{Admission, PlayoutKind};
use crate::time::SampleTime;

/// One thing that happened on a call.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum TraceKind {
    /// Agent audio handed in: samples at a rate.
    AgentAudio {
        /// Sample count.
        samples: u32,
        /// Rate in Hz.
        hz: u32,
    },
    /// The agent cleared its playback.
    AgentClear,
    /// The agent marked the end of a segment.
    AgentMark(MarkId),
    /// Barge-in decided: the onset on the caller timeline and what the caller heard.
    BargeIn {
        /// Onset.
        onset: SampleTime,
        /// Heard agent audio.
        heard: Duration,
    },
    /// A caller frame played out of the jitter buffer.
    CallerFrame {
        /// Its slot on the caller timeline.
        at: SampleTime,
        /// Received or concealed.
        kind: PlayoutKind,
    },
    /// `clear` sent to Twilio.
    Clear,
    /// A DTMF digit.
    Dtmf(char),
    /// A mark sent to Twilio.
    MarkOut(MarkId),
    /// Twilio echoed a mark.
    MarkEcho(MarkId),
    /// A caller `media` message read off the socket (the instant is when it was read).
    MediaIn {
        /// Twilio's chunk number.
        chunk: u64,
        /// What the jitter buffer did with it.
        admission: Admission,
    },
    /// A speech onset during playback held for the second-stage check (onset on the caller
    /// timeline); a `SpeechStarted` with the same onset follows if the check confirms it.
    OnsetHeld(SampleTime),
    /// The held onset's utterance ended unconfirmed: no `SpeechStarted`, no barge-in.
    OnsetRejected,
    /// A held onset stopped the agent's audio until its verdict.
    PlaybackPaused,
    /// Paused agent audio continues: the held onset was rejected, or the pause ran out.
    PlaybackResumed,
    /// Speech ended (end of the last speech frame).
    SpeechEnded(SampleTime),
    /// An utterance outside playback ended unconfirmed by the second-stage check: dismissed.
    SpeechDismissed(SampleTime),
    /// Speech started (onset).
    SpeechStarted(SampleTime),
    /// The stream stopped.
    Stop,
    /// A frame sent to Twilio.
    Transmit,
}

/// A call's recorded timeline.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The call's start: event times are offsets from it.
    start: Instant,
    /// Events in the order they happened, with their offset from `start`.
    events: Vec<(Duration, TraceKind)>,
    /// Events not recorded because the buffer was full.
    dropped: u64,
}

impl Trace {
    /// An empty trace for a call started at `start`, with room for `capacity` events.
    pub fn new(start: Instant, capacity: usize) -> Self {
        Self {
            start,
            events: Vec::with_capacity(capacity),
            dropped: 0,
        }
    }

    /// Records `kind` at `at`; counts it as dropped when the buffer is full.
    pub fn record(&mut self, at: Instant, kind: TraceKind) {
        if self.events.len() == self.events.capacity() {
            self.dropped += 1;
            return;
        }
        self.events
            .push((at.saturating_duration_since(self.start), kind));
    }

    /// The recorded events.
    pub fn events(&self) -> &[(Duration, TraceKind)] {
        &self.events
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The Chrome trace event format (JSON), one lane (`tid`) per kind of activity; speech and
    /// agent playback are intervals, everything else instants. `name` labels the process.
    pub fn to_chrome_json(&self, name: &str) -> String {
        const LANES: [(u32, &str); 6] = [
            (1, "caller media in"),
            (2, "caller playout"),
            (3, "caller speech (VAD)"),
            (4, "agent"),
            (5, "to Twilio"),
            (6, "marks"),
        ];
        let mut out = String::with_capacity(64 + self.events.len() * 96);
        out.push_str("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[");
        let mut first = true;
        let mut push = |out: &mut String, s: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(s);
        };
        let name_json = json_string(name);
        push(
            &mut out,
            &format!(
                "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,\"args\":{{\"name\":{name_json}}}}}"
            ),
        );
        for (tid, lane) in LANES {
            push(
                &mut out,
                &format!(
                    "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":\"{lane}\"}}}}"
                ),
            );
        }
        let mut speech_start: Option<Duration> = None;
        for &(t, kind) in &self.events {
            let ts = t.as_micros();
            let (tid, name, args): (u32, &str, String) = match kind {
                TraceKind::AgentAudio { samples, hz } => (
                    4,
                    "agent audio",
                    format!("{{\"samples\":{samples},\"hz\":{hz}}}"),
                ),
                TraceKind::AgentClear => (4, "agent clear", "{}".into()),
                TraceKind::AgentMark(m) => (4, "agent mark", format!("{{\"mark\":{}}}", m.0)),
                TraceKind::BargeIn { onset, heard } => (
                    3,
                    "BARGE_IN",
                    format!(
                        "{{\"onset_ms\":{},\"heard_ms\":{}}}",
                        onset.as_millis(),
                        heard.as_millis()
                    ),
                ),
                TraceKind::CallerFrame { at, kind } => (
                    2,
                    match kind {
                        PlayoutKind::Received => "frame",
                        PlayoutKind::Concealed => "concealed",
                    },
                    format!("{{\"at_ms\":{}}}", at.as_millis()),
                ),
                TraceKind::Clear => (5, "clear", "{}".into()),
                TraceKind::Dtmf(d) => (
                    3,
                    "dtmf",
                    format!("{{\"digit\":{}}}", json_string(&d.to_string())),
                ),
                TraceKind::MarkOut(m) => (6, "mark sent", format!("{{\"mark\":{}}}", m.0)),
                TraceKind::MarkEcho(m) => (6, "mark echo", format!("{{\"mark\":{}}}", m.0)),
                TraceKind::MediaIn { chunk, admission } => (
                    1,
                    "media",
                    format!("{{\"chunk\":{chunk},\"admission\":\"{admission:?}\"}}"),
                ),
                TraceKind::OnsetHeld(at) => (
                    3,
                    "onset held",
                    format!("{{\"onset_ms\":{}}}", at.as_millis()),
                ),
                TraceKind::OnsetRejected => (3, "onset rejected", "{}".into()),
                TraceKind::PlaybackPaused => (5, "playback paused", "{}".into()),
                TraceKind::PlaybackResumed => (5, "playback resumed", "{}".into()),
                TraceKind::SpeechStarted(at) => {
                    speech_start = Some(t);
                    (
                        3,
                        "speech started",
                        format!("{{\"onset_ms\":{}}}", at.as_millis()),
                    )
                }
                TraceKind::SpeechEnded(at) => {
                    if let Some(s) = speech_start.take() {
                        push(
                            &mut out,
                            &format!(
                                "{{\"name\":\"speech\",\"ph\":\"X\",\"pid\":1,\"tid\":3,\"ts\":{},\"dur\":{}}}",
                                s.as_micros(),
                                t.saturating_sub(s).as_micros()
                            ),
                        );
                    }
                    (
                        3,
                        "speech ended",
                        format!("{{\"end_ms\":{}}}", at.as_millis()),
                    )
                }
                TraceKind::SpeechDismissed(at) => {
                    speech_start = None;
                    (
                        3,
                        "speech dismissed",
                        format!("{{\"end_ms\":{}}}", at.as_millis()),
                    )
                }
                TraceKind::Stop => (1, "stop", "{}".into()),
                TraceKind::Transmit => (5, "frame", "{}".into()),
            };
            let mut event = String::with_capacity(96);
            let _ = write!(
                event,
                "{{\"name\":\"{name}\",\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":{tid},\"ts\":{ts},\"args\":{args}}}"
            );
            push(&mut out, &event);
        }
        out.push_str("],\"otherData\":{\"dropped_events\":");
        let _ = write!(out, "{}", self.dropped);
        out.push_str("}}");
        out
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn records_until_full_then_counts_drops() {
        let start = t0();
        let mut trace = Trace::new(start, 2);
        trace.record(start, TraceKind::Transmit);
        trace.record(start + Duration::from_millis(20), TraceKind::Clear);
        trace.record(start + Duration::from_millis(40), TraceKind::Stop);
        assert_eq!(trace.events().len(), 2);
        assert_eq!(trace.dropped(), 1);
        assert_eq!(trace.events()[1].0, Duration::from_millis(20));
    }

    #[test]
    fn chrome_json_is_valid_and_has_speech_intervals() {
        let start = t0();
        let mut trace = Trace::new(start, 16);
        trace.record(start, TraceKind::SpeechStarted(SampleTime(0)));
        trace.record(
            start + Duration::from_millis(500),
            TraceKind::SpeechEnded(SampleTime(4000)),
        );
        trace.record(start + Duration::from_millis(510), TraceKind::Dtmf('"'));
        let json = trace.to_chrome_json("CA\"1");
        let count = |needle: &str| json.matches(needle).count();
        assert!(json.starts_with("{\"displayTimeUnit\""));
        assert_eq!(count("\"ph\":\"X\""), 1);
        assert!(json.contains("\"dur\":500000"));
        assert!(json.contains("\"digit\":\"\\\"\""));
        assert!(json.contains("\"name\":\"CA\\\"1\""));
        assert!(json.ends_with("\"dropped_events\":0}}"));
        // Balanced braces and brackets: a cheap structural check (the shell's tests parse it).
        assert_eq!(count("{"), count("}"));
        assert_eq!(count("["), count("]"));
    }
}
