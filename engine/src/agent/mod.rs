//! The agent seam: what answers the caller.
//!
//! An [`Agent`] is driven by the engine thread that owns its call, with time as an argument
//! (sans-IO, like everything in this crate). It receives the caller's audio as 16 kHz PCM in
//! 20 ms frames and the call's events (speech started/ended, DTMF, barge-in with heard time,
//! marks played, stop), and answers through an [`AgentOutput`]: audio at any supported rate,
//! marks, clear and hang-up.
//!
//! Audio is *pulled*: [`Agent::poll_audio`] is called whenever the call's local playback queue
//! falls below the low watermark, so an agent holding a long answer hands it over a little at a
//! time. That keeps per-call memory small and makes barge-in drop little locally.
//!
//! The built-in [`echo::EchoAgent`] plays a greeting, then plays back each caller utterance.
//! Remote agents are bridged by the shell through the same trait.

use std::time::{Duration, Instant};

use crate::call::CallEvent;
use crate::frame::{MarkId, WidebandFrame};
use crate::time::{SampleRate, SampleTime};

pub mod echo;

/// Who the call is with, from Twilio's `start` message.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct CallInfo {
    /// Twilio's CallSid (`CA…`).
    pub call_sid: String,
    /// Twilio's StreamSid (`MZ…`).
    pub stream_sid: String,
    /// The caller's number, when known.
    pub from: String,
    /// The called number, when known.
    pub to: String,
}

/// Why an agent asks to end the call.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum HangupReason {
    /// The conversation is over.
    Completed,
    /// The agent failed and cannot continue; the shell falls back (recording).
    AgentFailed,
    /// The agent hands the caller to someone else; the shell knows where to.
    Transfer,
}

/// One command from an agent, applied to the call in order.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum AgentCommand {
    /// Play `len` samples at `rate`, starting at `offset` in the output's audio buffer.
    Audio {
        /// Start in [`AgentOutput::audio`].
        offset: usize,
        /// Sample count.
        len: usize,
        /// Their rate.
        rate: SampleRate,
    },
    /// Stop playback now.
    Clear,
    /// End the call.
    Hangup(HangupReason),
    /// A mark after the audio so far; its echo comes back as [`CallEvent::MarkPlayed`].
    Mark(MarkId),
}

/// What an agent wants done, gathered during one callback. Buffers are reused between
/// callbacks, so a steady agent does not allocate.
#[derive(Debug, Default)]
pub struct AgentOutput {
    audio: Vec<i16>,
    commands: Vec<AgentCommand>,
}

impl AgentOutput {
    /// An empty output with room for `audio_capacity` samples.
    pub fn with_capacity(audio_capacity: usize) -> Self {
        Self {
            audio: Vec::with_capacity(audio_capacity),
            commands: Vec::with_capacity(8),
        }
    }

    /// Plays `pcm` at `rate` after everything already queued.
    pub fn play(&mut self, pcm: &[i16], rate: SampleRate) {
        let offset = self.audio.len();
        self.audio.extend_from_slice(pcm);
        self.commands.push(AgentCommand::Audio {
            offset,
            len: pcm.len(),
            rate,
        });
    }

    /// Plays samples produced by `fill` (which writes into the slice it is given and returns
    /// how many it wrote), without an intermediate buffer.
    pub fn play_with(
        &mut self,
        max: usize,
        rate: SampleRate,
        fill: impl FnOnce(&mut [i16]) -> usize,
    ) {
        let offset = self.audio.len();
        self.audio.resize(offset + max, 0);
        let written = fill(&mut self.audio[offset..]).min(max);
        self.audio.truncate(offset + written);
        if written > 0 {
            self.commands.push(AgentCommand::Audio {
                offset,
                len: written,
                rate,
            });
        }
    }

    /// Queues a mark after the audio so far.
    pub fn mark(&mut self, mark: MarkId) {
        self.commands.push(AgentCommand::Mark(mark));
    }

    /// Stops playback (flush and Twilio `clear`).
    pub fn clear(&mut self) {
        self.commands.push(AgentCommand::Clear);
    }

    /// Ends the call.
    pub fn hangup(&mut self, reason: HangupReason) {
        self.commands.push(AgentCommand::Hangup(reason));
    }

    /// Whether nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The commands gathered, in order.
    pub fn commands(&self) -> &[AgentCommand] {
        &self.commands
    }

    /// The audio buffer that [`AgentCommand::Audio`] ranges point into.
    pub fn audio(&self) -> &[i16] {
        &self.audio
    }

    /// Takes `spare` as the audio buffer when this output holds no audio and `spare` is the
    /// larger: the driver lends each call its worker's pull-sized buffer for one service
    /// instead of keeping one per call.
    pub(crate) fn borrow_audio(&mut self, spare: &mut Vec<i16>) {
        if self.audio.is_empty() && spare.capacity() > self.audio.capacity() {
            std::mem::swap(&mut self.audio, spare);
        }
    }

    /// Hands the audio buffer back into `spare` when this output holds no audio and its buffer
    /// is the larger (the inverse of [`AgentOutput::borrow_audio`]).
    pub(crate) fn return_audio(&mut self, spare: &mut Vec<i16>) {
        if self.audio.is_empty() && self.audio.capacity() > spare.capacity() {
            std::mem::swap(&mut self.audio, spare);
        }
    }

    /// Forgets everything, keeping the buffers.
    pub fn reset(&mut self) {
        self.audio.clear();
        self.commands.clear();
    }
}

/// A per-call voice agent, driven by the engine. Every method has a default that does nothing.
pub trait Agent: Send {
    /// The stream started.
    fn on_start(&mut self, _now: Instant, _info: &CallInfo, _out: &mut AgentOutput) {}

    /// 20 ms of caller audio at 16 kHz, at caller time `at`.
    fn on_caller_audio(&mut self, _at: SampleTime, _frame: &WidebandFrame, _out: &mut AgentOutput) {
    }

    /// A call event (speech, DTMF, barge-in, marks, stop).
    fn on_event(&mut self, _now: Instant, _event: &CallEvent, _out: &mut AgentOutput) {}

    /// The call's local playback queue holds only `queued`: hand over more audio if any is
    /// waiting (up to about `want`).
    fn poll_audio(
        &mut self,
        _now: Instant,
        _queued: Duration,
        _want: Duration,
        _out: &mut AgentOutput,
    ) {
    }

    /// The agent's own deadline, if it has one (for example a reply timeout).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The deadline from [`Agent::poll_timeout`] passed.
    fn on_timeout(&mut self, _now: Instant, _out: &mut AgentOutput) {}
}

/// An agent that never says anything: for tests and for calls that only listen.
#[derive(Clone, Copy, Debug, Default)]
pub struct SilentAgent;

impl Agent for SilentAgent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_audio_buffer_is_used_for_one_pull_and_handed_back() {
        let mut spare = Vec::with_capacity(3_200);
        let mut out = AgentOutput::with_capacity(0);
        out.borrow_audio(&mut spare);
        assert_eq!(spare.capacity(), 0, "the output took the buffer");
        out.play(&[7; 3_000], SampleRate::WIDEBAND);
        assert!(out.audio().len() == 3_000 && out.audio.capacity() == 3_200);
        // Not handed back while it holds audio that is still to be applied.
        out.return_audio(&mut spare);
        assert_eq!(spare.capacity(), 0);
        out.reset();
        out.return_audio(&mut spare);
        assert_eq!((spare.capacity(), out.audio.capacity()), (3_200, 0));
    }

    #[test]
    fn an_output_holding_audio_keeps_its_buffer_when_offered_another() {
        let mut spare = Vec::with_capacity(3_200);
        let mut out = AgentOutput::with_capacity(0);
        out.play(&[1, 2, 3], SampleRate::NARROWBAND);
        out.borrow_audio(&mut spare);
        assert_eq!(out.audio(), &[1, 2, 3]);
        assert_eq!(spare.capacity(), 3_200);
    }
}
