//! The built-in echo agent: what Handset does with no configuration.
//!
//! When the stream starts it plays a short greeting ("Hello" and a beep). After each caller
//! utterance ends (VAD), it plays the utterance back through the full path: the 16 kHz agent
//! feed it recorded goes back in as 16 kHz agent audio and is resampled to 8 kHz by the call.
//! Caller speech during playback barges in: the call flushes and sends `clear`; the echo agent
//! drops the rest of what it was playing and records the new utterance.
//!
//! Memory: the 16 kHz feed is the caller's 8 kHz audio upsampled, so it carries nothing above
//! 4 kHz, and the agent stores it at 8 kHz: every other sample, as µ-law (8 KB per second).
//! Playback rebuilds 16 kHz with a 16-tap half-band interpolator (`HALF_BAND`: within 0.1 dB
//! to 3 kHz, −0.3 dB at 3.4 kHz), so what goes back into the call is 16 kHz audio as before. An
//! utterance is held in a buffer allocated when the caller starts speaking, grown by half its
//! size at a time (a handful of allocations per utterance, never one per frame) up to
//! [`EchoConfig::max_utterance`], and freed once it has been played back or abandoned. A call
//! that is not echoing holds only the 200 ms pre-roll (1.7 KB inside the agent).

use std::time::{Duration, Instant};

use super::{Agent, AgentOutput, CallInfo};
use crate::call::CallEvent;
use crate::codec;
use crate::frame::{MarkId, WidebandFrame};
use crate::time::{FRAME_SAMPLES, SampleRate, SampleTime};

/// The greeting: "Hello" and a beep, 8 kHz µ-law (see `engine/assets/NOTICE`).
pub const GREETING: &[u8] = include_bytes!("../../assets/greeting.ulaw");

/// Frames of caller audio kept before speech onset, so the echo includes the first syllable
/// that the VAD needed to hear before deciding.
const PRE_ROLL_FRAMES: usize = 10;

/// Stored (8 kHz) samples per second.
const STORED_PER_SECOND: usize = 8_000;

/// First allocation of an utterance buffer: half a second of 8 kHz µ-law.
const FIRST_RESERVE: usize = STORED_PER_SECOND / 2;

/// Half-band interpolator taps: the 16 kHz sample between stored samples `j` and `j + 1` is
/// `Σ HALF_BAND[k] · (x[j − k] + x[j + 1 + k])`; the samples on the stored ones are copied.
/// A Hann-windowed sinc at half-sample offsets, normalised so a constant passes unchanged.
/// Response: ±0.05 dB to 3 kHz, −0.33 dB at 3.4 kHz, −2 dB at 3.7 kHz; the images above
/// 4 kHz are then removed by the call's 16 → 8 kHz resampler.
const HALF_BAND: [f32; 8] = [
    0.631_18, -0.196_31, 0.102_02, -0.057_91, 0.032_10, -0.016_04, 0.006_39, -0.001_43,
];

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
    /// The last [`PRE_ROLL_FRAMES`] agent-feed frames at 8 kHz µ-law, with their caller times.
    pre_roll: [(SampleTime, [u8; FRAME_SAMPLES]); PRE_ROLL_FRAMES],
    /// Frames held in `pre_roll`, and the next slot to write.
    pre_roll_len: usize,
    pre_roll_next: usize,
    /// Whether the caller is speaking (between SpeechStarted and SpeechEnded).
    recording: bool,
    /// Caller time of the first recorded sample.
    recording_at: SampleTime,
    /// The utterance being recorded or played, 8 kHz µ-law.
    utterance: Vec<u8>,
    /// Stored samples of `utterance` to play (the recording trimmed at the end of speech).
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
            pre_roll: [(SampleTime::ZERO, [0; FRAME_SAMPLES]); PRE_ROLL_FRAMES],
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
        (self.config.max_utterance.as_millis() as usize) * (STORED_PER_SECOND / 1000)
    }

    fn append(&mut self, frame: &[u8; FRAME_SAMPLES]) {
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
            if at.0 + FRAME_SAMPLES as u64 > onset.0 {
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
        let keep = end.0.saturating_sub(self.recording_at.0) + FRAME_SAMPLES as u64;
        self.utterance_len = self.utterance.len().min(keep as usize);
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
        let mut mulaw = [0u8; FRAME_SAMPLES];
        for (code, &sample) in mulaw.iter_mut().zip(frame.0.iter().step_by(2)) {
            *code = codec::encode_sample(sample);
        }
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
                let n = ((want.as_millis() as usize) * 8).min(self.utterance_len - pos);
                let utterance = &self.utterance[..self.utterance_len];
                out.play_with(2 * n, SampleRate::WIDEBAND, |buf| {
                    interpolate(utterance, pos, buf)
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

/// Writes 16 kHz samples for `stored[start..]` into `out` (two per stored sample, as many as
/// fit); returns the count. Samples outside `stored` count as silence, so every chunk of a
/// playback is computed exactly as if the whole utterance were interpolated at once.
fn interpolate(stored: &[u8], start: usize, out: &mut [i16]) -> usize {
    let at = |i: usize| {
        stored
            .get(i)
            .map_or(0.0, |&c| f32::from(codec::decode_sample(c)))
    };
    let mut written = 0;
    for (j, pair) in (start..stored.len()).zip(out.chunks_exact_mut(2)) {
        let mut between = 0.0;
        for (k, &tap) in HALF_BAND.iter().enumerate() {
            let before = j.checked_sub(k).map_or(0.0, at);
            between += tap * (before + at(j + 1 + k));
        }
        pair[0] = codec::decode_sample(stored[j]);
        // Saturating float-to-int cast after rounding: ringing near full scale clips.
        pair[1] = between.round() as i16;
        written += 2;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::WIDEBAND_FRAME_SAMPLES;

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
        // Away from the two steps (the interpolator reaches 8 stored samples = 16 output
        // samples either way), the level is the caller's.
        assert!(
            audio[16..50 * WIDEBAND_FRAME_SAMPLES - 16]
                .iter()
                .all(|&s| (s - 8000).abs() < 300)
        );
        assert_eq!(marks, vec![MarkId(2)]);
    }

    /// Feeds `frames` frames of speech from frame `first` on and ends the utterance.
    fn record(agent: &mut EchoAgent, first: u64, frames: u64) {
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
        agent.on_event(
            now(),
            &CallEvent::SpeechEnded {
                at: SampleTime::from_frames(first + frames),
            },
            &mut out,
        );
    }

    #[test]
    fn utterance_buffer_is_freed_once_played_back() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            ..EchoConfig::default()
        });
        assert_eq!(agent.utterance.capacity(), 0, "nothing held before speech");
        record(&mut agent, 0, 100);
        // Stored at 8 kHz: one byte per 8 kHz sample.
        assert!(agent.utterance.capacity() >= 100 * FRAME_SAMPLES);
        assert!(agent.utterance.capacity() < 100 * WIDEBAND_FRAME_SAMPLES);
        let (audio, marks) = pull_all(&mut agent);
        assert_eq!(audio.len(), 100 * WIDEBAND_FRAME_SAMPLES);
        assert_eq!(marks, vec![MarkId(2)]);
        assert_eq!(agent.utterance.capacity(), 0, "freed after playback");
        // The next utterance records and plays as well.
        record(&mut agent, 200, 20);
        assert_eq!(pull_all(&mut agent).0.len(), 20 * WIDEBAND_FRAME_SAMPLES);
    }

    #[test]
    fn utterance_buffer_never_exceeds_the_maximum_utterance() {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            max_utterance: Duration::from_millis(1_300),
        });
        record(&mut agent, 0, 200);
        // 1.3 s of 8 kHz µ-law, however long the caller spoke, played back as 1.3 s at 16 kHz.
        assert!(agent.utterance.capacity() <= 10_400);
        assert_eq!(pull_all(&mut agent).0.len(), 20_800);
    }

    /// Records `signal` (16 kHz, whole frames) as one utterance and returns what is played back.
    fn echo_of(signal: &[i16]) -> Vec<i16> {
        let mut agent = EchoAgent::new(EchoConfig {
            greeting: false,
            ..EchoConfig::default()
        });
        let mut out = AgentOutput::default();
        let frames = (signal.len() / WIDEBAND_FRAME_SAMPLES) as u64;
        agent.on_event(
            now(),
            &CallEvent::SpeechStarted { at: SampleTime(0) },
            &mut out,
        );
        for (f, chunk) in signal.chunks_exact(WIDEBAND_FRAME_SAMPLES).enumerate() {
            let mut frame = WidebandFrame([0; WIDEBAND_FRAME_SAMPLES]);
            frame.0.copy_from_slice(chunk);
            agent.on_caller_audio(SampleTime::from_frames(f as u64), &frame, &mut out);
        }
        agent.on_event(
            now(),
            &CallEvent::SpeechEnded {
                at: SampleTime::from_frames(frames),
            },
            &mut out,
        );
        pull_all(&mut agent).0
    }

    #[test]
    fn echo_reproduces_telephone_band_tones_at_16_khz() {
        for hz in [300.0f32, 1_000.0, 2_500.0, 3_300.0] {
            let signal: Vec<i16> = (0..50 * WIDEBAND_FRAME_SAMPLES)
                .map(|n| {
                    let phase = 2.0 * std::f32::consts::PI * hz * n as f32 / 16_000.0;
                    (phase.sin() * 10_000.0) as i16
                })
                .collect();
            let echo = echo_of(&signal);
            assert_eq!(echo.len(), signal.len(), "{hz} Hz");
            // Interior only: the edges of a recording meet silence.
            let (mut error, mut power) = (0.0f64, 0.0f64);
            for (&e, &s) in echo[320..signal.len() - 320]
                .iter()
                .zip(&signal[320..signal.len() - 320])
            {
                error += (f64::from(e) - f64::from(s)).powi(2);
                power += f64::from(s).powi(2);
            }
            let snr_db = 10.0 * (power / error).log10();
            // µ-law alone allows ~38 dB; the half-band rebuild keeps it near that across the
            // band.
            assert!(snr_db > 30.0, "{hz} Hz: {snr_db:.1} dB");
        }
    }

    #[test]
    fn playback_in_chunks_matches_one_pass() {
        let stored: Vec<u8> = (0..1_000u32)
            .map(|n| codec::encode_sample(((n * 7919) % 20_000) as i16 - 10_000))
            .collect();
        let mut whole = vec![0i16; 2 * stored.len()];
        assert_eq!(interpolate(&stored, 0, &mut whole), 2_000);
        let mut pieces = Vec::new();
        for start in (0..stored.len()).step_by(137) {
            let mut buf = vec![0i16; 2 * 137];
            let n = interpolate(&stored, start, &mut buf);
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(pieces, whole);
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
