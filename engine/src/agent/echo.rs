//! The built-in echo agent: what Handset does with no configuration.
//!
//! When the stream starts it plays a short greeting ("Hello" and a beep). After each caller
//! utterance ends (VAD; a dismissed one, not speech, is dropped), it plays the utterance back through the full path: the 16 kHz agent
//! feed it recorded goes back in as 16 kHz agent audio and is resampled to 8 kHz by the call.
//! Caller speech during playback barges in: the call flushes and sends `clear`; the echo agent
//! drops the rest of what it was playing and records the new utterance.
//!
//! Memory: an utterance is held as 16 kHz µ-law (16 KB per second) in a buffer allocated when
//! the caller starts speaking, grown by half its size at a time (a handful of allocations per
//! utterance, never one per frame) up to [`EchoConfig::max_utterance`], and freed once it has
//! been played back or abandoned. A call that is not echoing holds only the 200 ms pre-roll
//! (3.3 KB inside the agent).

use std::time::{Duration, Instant};

use super::{Agent, AgentOutput, CallInfo};
use crate::call::CallEvent;
use crate::codec;
use crate::frame::{MarkId, WidebandFrame};
use crate::time::{SampleRate, SampleTime, WIDEBAND_FRAME_SAMPLES};

/// The greeting: "Hello" and a beep, 8 kHz µ-law (see `engine/assets/NOTICE`).
pub const GREETING: &[u8] = include_bytes!("../../assets/greeting.ulaw");

/// Frames of caller audio kept before speech onset, so the echo includes the first syllable
/// that the VAD needed to hear before deciding.
const PRE_ROLL_FRAMES: usize = 10;

/// 16 kHz samples per second.
const WIDEBAND_PER_SECOND: usize = 16_000;

/// First allocation of an utterance buffer: half a second of 16 kHz µ-law.
const FIRST_RESERVE: usize = WIDEBAND_PER_SECOND / 2;

/// Echo agent settings.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// Play the greeting when the stream starts (default true).
    pub greeting: bool,
    /// Longest utterance recorded; speech beyond it is not echoed (default 10 s).
    pub max_utterance: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            greeting: true,
            max_utterance: Duration::from_secs(10),
        }
    }
}

/// Mark ids the echo agent puts after each thing it plays.
pub const GREETING_MARK: MarkId = MarkId(1);

/// What is being played.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Source {
    Greeting { pos: usize },
    Idle,
    Utterance { pos: usize },
}

/// Echoes each caller utterance back.
#[derive(Debug)]
pub struct EchoAgent {
    config: EchoConfig,
    /// The last [`PRE_ROLL_FRAMES`] agent-feed frames as µ-law, with their caller times.
    pre_roll: [(SampleTime, [u8; WIDEBAND_FRAME_SAMPLES]); PRE_ROLL_FRAMES],
    /// Frames held in `pre_roll`, and the next slot to write.
    pre_roll_len: usize,
    pre_roll_next: usize,
    /// Whether the caller is speaking (between SpeechStarted and SpeechEnded).
    recording: bool,
    /// Caller time of the first recorded sample.
    recording_at: SampleTime,
    /// The utterance being recorded or played, 16 kHz µ-law.
    utterance: Vec<u8>,
    /// Samples of `utterance` to play (the recording trimmed at the end of speech).
    utterance_len: usize,
    /// What `poll_audio` hands out next.
    source: Source,
    /// Marks put after each utterance, counting up from 2.
    next_mark: u64,
}

impl EchoAgent {
    /// A new echo agent.
    pub fn new(config: EchoConfig) -> Self {
        Self {
            config,
            pre_roll: [(SampleTime::ZERO, [0; WIDEBAND_FRAME_SAMPLES]); PRE_ROLL_FRAMES],
            pre_roll_len: 0,
            pre_roll_next: 0,
            recording: false,
            recording_at: SampleTime::ZERO,
            utterance: Vec::new(),
            utterance_len: 0,
            source: Source::Idle,
            next_mark: 2,
        }
    }

    fn max_samples(&self) -> usize {
        (self.config.max_utterance.as_millis() as usize) * (WIDEBAND_PER_SECOND / 1000)
    }

    fn append(&mut self, frame: &[u8; WIDEBAND_FRAME_SAMPLES]) {
        if self.utterance.len() + frame.len() > self.max_samples() {
            return;
        }
        if self.utterance.capacity() < self.utterance.len() + frame.len() {
            // Grow by half (at least half a second), never past the maximum: 0.5 s, 0.75 s,
            // 1.1 s, … so a 10 s utterance takes 8 allocations, and the slack is at most a third.
            let grow = (self.utterance.capacity() / 2).max(FIRST_RESERVE);
            let room = self.max_samples() - self.utterance.len();
            self.utterance.reserve_exact(grow.min(room));
        }
        self.utterance.extend_from_slice(frame);
    }

    fn start_recording(&mut self, onset: SampleTime) {
        self.recording = true;
        self.utterance.clear();
        self.utterance_len = 0;
        self.recording_at = onset;
        // Replay the pre-roll from the onset on, oldest first.
        let start = (self.pre_roll_next + PRE_ROLL_FRAMES - self.pre_roll_len) % PRE_ROLL_FRAMES;
        let mut first = None;
        for i in 0..self.pre_roll_len {
            let (at, frame) = self.pre_roll[(start + i) % PRE_ROLL_FRAMES];
            if at.0 + (WIDEBAND_FRAME_SAMPLES as u64 / 2) > onset.0 {
                first.get_or_insert(at);
                self.append(&frame);
            }
        }
        if let Some(at) = first {
            self.recording_at = at;
        }
    }

    fn stop_recording(&mut self, end: SampleTime) {
        self.recording = false;
        // Keep speech up to its end plus one frame; drop the hangover's silence.
        let keep_8k = end.0.saturating_sub(self.recording_at.0) + 160;
        self.utterance_len = self.utterance.len().min(keep_8k as usize * 2);
        if self.utterance_len > 0 {
            self.source = Source::Utterance { pos: 0 };
        } else {
            self.release_memory();
        }
    }

    /// Frees the utterance buffer (the next utterance allocates its own).
    fn release_memory(&mut self) {
        self.utterance = Vec::new();
        self.utterance_len = 0;
    }
}

impl Default for EchoAgent {
    fn default() -> Self {
        Self::new(EchoConfig::default())
    }
}

impl Agent for EchoAgent {
    fn on_start(&mut self, _now: Instant, _info: &CallInfo, _out: &mut AgentOutput) {
        if self.config.greeting {
            self.source = Source::Greeting { pos: 0 };
        }
    }

    fn on_caller_audio(&mut self, at: SampleTime, frame: &WidebandFrame, _out: &mut AgentOutput) {
        let mut mulaw = [0u8; WIDEBAND_FRAME_SAMPLES];
        codec::encode_into(&frame.0, &mut mulaw);
        if self.recording {
            self.append(&mulaw);
        }
        self.pre_roll[self.pre_roll_next] = (at, mulaw);
        self.pre_roll_next = (self.pre_roll_next + 1) % PRE_ROLL_FRAMES;
        self.pre_roll_len = (self.pre_roll_len + 1).min(PRE_ROLL_FRAMES);
    }

    fn on_event(&mut self, _now: Instant, event: &CallEvent, _out: &mut AgentOutput) {
        match *event {
            CallEvent::SpeechStarted { at } => {
                // The recording reuses the utterance buffer: a playing echo stops (with barge-in
                // on, the call flushes it anyway).
                if matches!(self.source, Source::Utterance { .. }) {
                    self.source = Source::Idle;
                }
                self.start_recording(at);
            }
            CallEvent::SpeechEnded { at } if self.recording => self.stop_recording(at),
            // Not speech (music, noise): nothing to echo.
            CallEvent::SpeechDismissed { .. } if self.recording => {
                self.recording = false;
                self.release_memory();
            }
            CallEvent::BargeIn(_) | CallEvent::PlaybackCleared(_) => {
                self.source = Source::Idle;
                if !self.recording {
                    self.release_memory();
                }
            }
            CallEvent::Stopped => {
                self.source = Source::Idle;
                self.recording = false;
                self.release_memory();
            }
            _ => {}
        }
    }

    fn poll_audio(
        &mut self,
        _now: Instant,
        _queued: Duration,
        want: Duration,
        out: &mut AgentOutput,
    ) {
        match self.source {
            Source::Idle => {}
            Source::Greeting { pos } => {
                let n = ((want.as_millis() as usize) * 8).min(GREETING.len() - pos);
                out.play_with(n, SampleRate::NARROWBAND, |buf| {
                    codec::decode_into(&GREETING[pos..pos + n], buf)
                });
                if pos + n >= GREETING.len() {
                    out.mark(GREETING_MARK);
                    self.source = Source::Idle;
                } else {
                    self.source = Source::Greeting { pos: pos + n };
                }
            }
            Source::Utterance { pos } => {
                let n = ((want.as_millis() as usize) * 16).min(self.utterance_len - pos);
                let utterance = &self.utterance[pos..pos + n];
                out.play_with(n, SampleRate::WIDEBAND, |buf| {
                    codec::decode_into(utterance, buf)
                });
                if pos + n >= self.utterance_len {
                    out.mark(MarkId(self.next_mark));
                    self.next_mark += 1;
                    self.source = Source::Idle;
                    if !self.recording {
                        self.release_memory();
                    }
                } else {
                    self.source = Source::Utterance { pos: pos + n };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: i16) -> WidebandFrame {
        WidebandFrame([value; WIDEBAND_FRAME_SAMPLES])
    }

    #[allow(clippy::disallowed_methods)]
    fn now() -> Instant {
        Instant::now()
    }

    fn pull_all(agent: &mut EchoAgent) -> (Vec<i16>, Vec<MarkId>) {
        let mut audio = Vec::new();
        let mut marks = Vec::new();
        for _ in 0..1000 {
            let mut out = AgentOutput::default();
            agent.poll_audio(now(), Duration::ZERO, Duration::from_millis(200), &mut out);
            if out.is_empty() {
                break;
            }
            for c in out.commands() {
                match *c {
                    super::super::AgentCommand::Audio { offset, len, .. } => {
                        audio.extend_from_slice(&out.audio()[offset..offset + len]);
                    }
                    super::super::AgentCommand::Mark(m) => marks.push(m),
                    _ => {}
                }
            }
        }
        (audio, marks)
    }

    #[test]
    fn greets_then_marks_the_greeting() {
        let mut agent = EchoAgent::default();
        agent.on_start(now(), &CallInfo::default(), &mut AgentOutput::default());
        let (audio, marks) = pull_all(&mut agent);
        assert_eq!(audio.len(), GREETING.len());
        assert_eq!(marks, vec![GREETING_MARK]);
    }

    #[test]
    fn echoes_the_utterance_from_onset_to_end_of_speech() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            ..EchoConfig::default()
        });
        let mut out = AgentOutput::default();
        // 5 quiet frames, then speech from frame 5 to frame 54, then 20 hangover frames.
        for f in 0..75u64 {
            let value = if (5..55).contains(&f) { 8000 } else { 0 };
            if f == 8 {
                agent.on_event(
                    now(),
                    &CallEvent::SpeechStarted {
                        at: SampleTime::from_frames(5),
                    },
                    &mut out,
                );
            }
            agent.on_caller_audio(SampleTime::from_frames(f), &frame(value), &mut out);
        }
        agent.on_event(
            now(),
            &CallEvent::SpeechEnded {
                at: SampleTime::from_frames(55),
            },
            &mut out,
        );
        let (audio, marks) = pull_all(&mut agent);
        // 50 speech frames plus one frame of margin, at 16 kHz.
        assert_eq!(audio.len(), 51 * WIDEBAND_FRAME_SAMPLES);
        assert!(
            audio[..50 * WIDEBAND_FRAME_SAMPLES]
                .iter()
                .all(|&s| (s - 8000).abs() < 300)
        );
        assert_eq!(marks, vec![MarkId(2)]);
    }

    /// Feeds `frames` frames of speech from frame `first` on and ends the utterance.
    fn record(agent: &mut EchoAgent, first: u64, frames: u64) {
        let at = speak(agent, first, frames);
        agent.on_event(
            now(),
            &CallEvent::SpeechEnded { at },
            &mut AgentOutput::default(),
        );
    }

    /// Starts an utterance at frame `first` and feeds `frames` frames of it; returns its end.
    fn speak(agent: &mut EchoAgent, first: u64, frames: u64) -> SampleTime {
        let mut out = AgentOutput::default();
        agent.on_event(
            now(),
            &CallEvent::SpeechStarted {
                at: SampleTime::from_frames(first),
            },
            &mut out,
        );
        for f in first..first + frames {
            agent.on_caller_audio(SampleTime::from_frames(f), &frame(6000), &mut out);
        }
        SampleTime::from_frames(first + frames)
    }

    #[test]
    fn utterance_buffer_is_freed_once_played_back() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            ..EchoConfig::default()
        });
        assert_eq!(agent.utterance.capacity(), 0, "nothing held before speech");
        record(&mut agent, 0, 100);
        assert!(agent.utterance.capacity() >= 100 * WIDEBAND_FRAME_SAMPLES);
        let (audio, marks) = pull_all(&mut agent);
        assert_eq!(audio.len(), 100 * WIDEBAND_FRAME_SAMPLES);
        assert_eq!(marks, vec![MarkId(2)]);
        assert_eq!(agent.utterance.capacity(), 0, "freed after playback");
        // The next utterance records and plays as well.
        record(&mut agent, 200, 20);
        assert_eq!(pull_all(&mut agent).0.len(), 20 * WIDEBAND_FRAME_SAMPLES);
    }

    #[test]
    fn a_dismissed_utterance_is_not_echoed() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            ..EchoConfig::default()
        });
        let at = speak(&mut agent, 0, 50);
        agent.on_event(
            now(),
            &CallEvent::SpeechDismissed { at },
            &mut AgentOutput::default(),
        );
        assert_eq!(pull_all(&mut agent).0.len(), 0, "music is not echoed");
        assert_eq!(agent.utterance.capacity(), 0, "and its recording is freed");
        // The next utterance is echoed as usual.
        record(&mut agent, 100, 20);
        assert_eq!(pull_all(&mut agent).0.len(), 20 * WIDEBAND_FRAME_SAMPLES);
    }

    #[test]
    fn utterance_buffer_never_exceeds_the_maximum_utterance() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            max_utterance: Duration::from_millis(1_300),
        });
        record(&mut agent, 0, 200);
        // 1.3 s of 16 kHz µ-law, however long the caller spoke.
        assert!(agent.utterance.capacity() <= 20_800);
        assert_eq!(pull_all(&mut agent).0.len(), 20_800);
    }

    #[test]
    fn barge_in_stops_playback() {
        let mut agent = EchoAgent::new(EchoConfig::default());
        let mut out = AgentOutput::default();
        agent.on_start(now(), &CallInfo::default(), &mut out);
        agent.poll_audio(now(), Duration::ZERO, Duration::from_millis(100), &mut out);
        assert!(!out.is_empty());
        agent.on_event(
            now(),
            &CallEvent::SpeechStarted { at: SampleTime(0) },
            &mut out,
        );
        let interruption = crate::call::Interruption {
            onset: Some(SampleTime(0)),
            heard: Duration::ZERO,
            sent: Duration::ZERO,
            dropped: Duration::ZERO,
            last_played_mark: None,
        };
        agent.on_event(now(), &CallEvent::BargeIn(interruption), &mut out);
        let (audio, _) = pull_all(&mut agent);
        assert!(audio.is_empty(), "greeting dropped once the caller speaks");
    }
}
