//! Attack and hangover: turns raw per-frame speech decisions into started/ended transitions.
//!
//! Counted in frames only, so the behaviour is exact and deterministic. Any raw per-frame
//! detector can be smoothed with it (the evaluation applies it to WebRTC's VAD too).

use super::VadTransition;
use crate::time::SampleTime;

/// Attack/hangover state machine over raw per-frame decisions (20 ms frames, 160 samples).
///
/// - In silence, `attack_frames` consecutive speech frames start speech; the transition is
///   returned on the last of them and is dated at the first.
/// - In speech, each non-speech frame counts down the hangover; the `hangover_frames + 1`-th
///   consecutive non-speech frame ends speech, dated at the end of the last speech frame.
#[derive(Clone, Debug)]
pub struct SpeechGate {
    attack_frames: u32,
    hangover_frames: u32,
    /// Frames pushed since new/reset.
    frames: u64,
    speaking: bool,
    /// In silence: length of the current run of speech frames.
    run: u32,
    /// In speech: consecutive non-speech frames since the last speech frame.
    quiet: u32,
}

impl SpeechGate {
    /// A gate in silence. `attack_frames` below 1 is treated as 1.
    pub fn new(attack_frames: u32, hangover_frames: u32) -> Self {
        Self {
            attack_frames: attack_frames.max(1),
            hangover_frames,
            frames: 0,
            speaking: false,
            run: 0,
            quiet: 0,
        }
    }

    /// Feeds the raw decision for the next frame.
    pub fn push(&mut self, raw_speech: bool) -> Option<VadTransition> {
        let index = self.frames;
        self.frames += 1;
        if self.speaking {
            if raw_speech {
                self.quiet = 0;
                return None;
            }
            self.quiet += 1;
            if self.quiet > self.hangover_frames {
                self.speaking = false;
                self.run = 0;
                // The last speech frame was `quiet` frames before this one.
                let end = index + 1 - u64::from(self.quiet);
                return Some(VadTransition::SpeechEnded {
                    at: SampleTime::from_frames(end),
                });
            }
            return None;
        }
        if !raw_speech {
            self.run = 0;
            return None;
        }
        self.run += 1;
        if self.run < self.attack_frames {
            return None;
        }
        self.speaking = true;
        self.quiet = 0;
        let first = index + 1 - u64::from(self.run);
        Some(VadTransition::SpeechStarted {
            at: SampleTime::from_frames(first),
        })
    }

    /// The current smoothed decision.
    pub fn is_speech(&self) -> bool {
        self.speaking
    }

    /// Frames pushed since new/reset.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Back to silence at frame zero.
    pub fn reset(&mut self) {
        *self = Self::new(self.attack_frames, self.hangover_frames);
    }
}
