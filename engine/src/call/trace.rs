//! Per-call timelines for engineers profiling barge-in and pacing.
//!
//! When [`CallConfig::trace_events`](super::CallConfig::trace_events) is non-zero the call
//! records every frame in and out, every jitter playout slot, VAD transitions, marks, clears,
//! barge-ins and agent inputs, each with the instant it happened, into a buffer allocated once
//! at construction (nothing is allocated per frame; when the buffer is full, further events are
//! counted and dropped). The records are plain data: the shell writes them as Chrome trace JSON
//! (Perfetto, `chrome://tracing`) when the call ends, and `handset trace FILE` renders that as
//! an SVG timeline.

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
}
