//! The second stage on barge-in: a stronger speech check, run only on the onsets that would cut
//! the agent off.
//!
//! The per-frame VAD is small and fast, and a speech start it decides during playback flushes
//! the agent at once. Music on hold and other sounds it was never trained on still start speech
//! now and then, and during playback each such start is a false barge-in. With an
//! [`OnsetCheck`] the call holds such an onset instead: it hands the check the
//! [`ONSET_PRE_ROLL`] frames up to the onset and then every frame the VAD reads, and barges in
//! (with the onset's own time) only once the check confirms speech. An utterance that ends
//! unconfirmed was not speech: no barge-in, no `SpeechStarted`.
//!
//! Outside playback nothing is held: a speech start is an agent's turn and must not wait. The
//! check still follows the utterance, and one it never confirms ends as a dismissal instead of
//! a speech end, so an agent need not answer music.
//!
//! The check runs elsewhere (the shell's runs Silero VAD on a thread of its own); the call only
//! hands over frames and polls for the verdict, so nothing here waits. A check that cannot take
//! a candidate or a frame (its queue is full) says so, and the onset then barges in unchecked:
//! overload never costs a real barge-in.

use crate::frame::MulawFrame;
use crate::time::SampleTime;
use std::time::Instant;

/// Frames before (and including) the onset frame handed to the check with each candidate, so it
/// starts from the audio leading into the onset (160 ms).
pub const ONSET_PRE_ROLL: usize = 8;

/// A stronger speech check on candidate barge-in onsets. One per call; it sees one candidate at a
/// time.
pub trait OnsetCheck: Send {
    /// A new candidate onset; its frames follow through [`OnsetCheck::push`]. `false`: the
    /// check cannot take one now, and the onset barges in unchecked.
    fn begin(&mut self) -> bool;
    /// The candidate's next frame, oldest first: the pre-roll, then every frame the VAD reads
    /// until the candidate ends. `false`: the frame could not be queued, and the onset barges in
    /// unchecked.
    fn push(&mut self, frame: &MulawFrame) -> bool;
    /// Whether the check has confirmed the current candidate as speech by now.
    fn confirmed(&mut self) -> bool;
    /// The current candidate is over (confirmed, or its utterance ended): forget it.
    fn end(&mut self);
}

/// What the call keeps for its [`OnsetCheck`]: the recent frames and the held candidate.
pub(super) struct OnsetGate {
    check: Box<dyn OnsetCheck>,
    /// The last [`ONSET_PRE_ROLL`] frames the VAD read, at `read % ONSET_PRE_ROLL`.
    recent: Box<[MulawFrame; ONSET_PRE_ROLL]>,
    /// Frames recorded into `recent`.
    read: u64,
    /// The onset being checked.
    held: Option<Held>,
}

/// An onset waiting for the check's verdict.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    /// The onset on the caller timeline.
    pub at: SampleTime,
    /// When its audio arrived.
    pub arrival: Option<Instant>,
    /// Outside playback: the utterance was reported at once, and the check only decides
    /// whether it ends as speech or is dismissed.
    pub watch: bool,
}

/// What became of a held onset after a frame.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Verdict {
    /// Still waiting.
    Waiting,
    /// Confirmed as speech: barge in now.
    Speech,
    /// The check could not take the frame: barge in now, unchecked.
    Unchecked,
}

impl OnsetGate {
    pub(super) fn new(check: Box<dyn OnsetCheck>) -> Self {
        Self {
            check,
            recent: Box::new([MulawFrame::SILENCE; ONSET_PRE_ROLL]),
            read: 0,
            held: None,
        }
    }

    /// Remembers a frame the VAD read (before the VAD decides on it).
    pub(super) fn record(&mut self, frame: &MulawFrame) {
        self.recent[(self.read % ONSET_PRE_ROLL as u64) as usize] = *frame;
        self.read += 1;
    }

    /// Whether an onset is held (or an utterance watched).
    pub(super) fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Whether an utterance outside playback is being watched.
    pub(super) fn watching(&self) -> bool {
        self.held.is_some_and(|held| held.watch)
    }

    /// Holds `onset` and hands the check its pre-roll. `false`: the check could not take it.
    pub(super) fn hold(&mut self, onset: Held) -> bool {
        self.release();
        if !self.check.begin() {
            return false;
        }
        let n = self.read.min(ONSET_PRE_ROLL as u64);
        for i in self.read - n..self.read {
            let frame = self.recent[(i % ONSET_PRE_ROLL as u64) as usize];
            if !self.check.push(&frame) {
                self.check.end();
                return false;
            }
        }
        self.held = Some(onset);
        true
    }

    /// The held onset's next frame (the newest recorded), and the verdict so far.
    pub(super) fn next(&mut self) -> Verdict {
        if self.held.is_none() {
            return Verdict::Waiting;
        }
        let frame = self.recent[((self.read.max(1) - 1) % ONSET_PRE_ROLL as u64) as usize];
        if !self.check.push(&frame) {
            Verdict::Unchecked
        } else if self.check.confirmed() {
            Verdict::Speech
        } else {
            Verdict::Waiting
        }
    }

    /// Whether the check has confirmed the held onset by now (no new frame).
    pub(super) fn poll(&mut self) -> bool {
        self.held.is_some() && self.check.confirmed()
    }

    /// Ends the held candidate, if any, and returns it.
    pub(super) fn release(&mut self) -> Option<Held> {
        let held = self.held.take();
        if held.is_some() {
            self.check.end();
        }
        held
    }
}
