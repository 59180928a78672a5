//! Voice activity detection at 8 kHz on 20 ms frames: speech started / speech ended, robust to
//! hold music and noise.
//!
//! The call layer uses [`VadTransition::SpeechStarted`] for barge-in and
//! [`VadTransition::SpeechEnded`] to close an utterance. Everything is counted in frames (media
//! time), never wall time; [`Vad::new`] preallocates and [`Vad::push`] does not allocate.
//!
//! # Design
//!
//! 1. **Front end** (`features.rs`): a 256-point real FFT over a Hann window of the current 160
//!    samples plus the previous 96, summed into 11 roughly critical-band-spaced bands from
//!    219 Hz to 3.4 kHz; the frame's mean power in dBFS; and pitch strength (peak of the
//!    normalised autocorrelation over 80–400 Hz, from a 128-point inverse FFT of the 0–2 kHz
//!    magnitude spectrum, refined by a parabola). Logarithms use a short polynomial.
//! 2. **Noise floor per band** (`extract.rs`), the maximum of three estimates: minimum
//!    statistics over 240 frames plus 2.8 dB, a mean level adapted on frames a fixed band-SNR
//!    test calls quiet, and a dB quantile tracker that follows music whatever the decision says.
//! 3. **Features** (`extract.rs`, [`FEATURE_COUNT`] of them, listed at [`Vad::features`]): level,
//!    band SNRs against the floor, cepstrum of the band levels, spectral flux, and context over
//!    the last 160 ms to 1 s: syllabic-rate energy modulation (level and band-group standard
//!    deviations over 320 ms), low-energy-frame ratio, level against its 1 s range, and pitch
//!    strength with pitch continuity (speech glides, music holds notes); and, for fast onsets,
//!    the last two frames' SNRs and the SNR's rise over its recent minimum. None depends on the
//!    classifier's output, so the classifier is trained offline on precomputed features.
//! 4. **Classifiers** (`model.rs`, `weights.rs`): a small perceptron (one ReLU hidden layer,
//!    logistic output) gives the probability that the frame is speech, from the features of the
//!    last `SPEECH_CONTEXT` frames (`weights.rs`); a second, smaller one,
//!    used only in silence, gives the probability that an utterance starts on this frame, from
//!    the last three frames' features (it was trained on the first frames of utterances against
//!    noise, music and gaps only, so it answers earlier than the first one). Their weights are
//!    trained on the training sources of the evaluation corpus (speakers, synthetic voices and
//!    soundtracks that are never evaluated on) by `cargo bench --bench vad_eval -- --train`
//!    (seeded, reproducible) and baked in as constants.
//! 5. **Gate** ([`SpeechGate`] with hysteresis): in silence a frame counts as speech when the
//!    speech probability reaches [`VadConfig::start_probability`] or the onset probability
//!    reaches [`VadConfig::onset_probability`], and `attack_frames` consecutive ones
//!    start speech, dated at the first frame of the run of frames at or above the sustain
//!    probability that led to it (the classifier is sure only a few frames into an
//!    utterance; at most 500 ms back); in speech a frame counts when it reaches the lower
//!    [`VadConfig::sustain_probability`], and after `hangover_frames` frames below it speech
//!    ends, dated at the end of the last speech frame.
//!
//! Adaptation: after a step up to a new steady noise floor, the floor trackers hold only the
//! new noise within 240 frames plus one 30-frame sub-window; a step down adapts at once.
//!
//! Limits (measured in `docs/vad-eval.md`): trained on four recorded voices, 27 synthetic ones
//! and four soundtracks, with synthetic mixing; evaluated on other speakers, languages and
//! soundtracks, where it keeps music and babble from starting speech but loses recall under
//! loud music.

mod extract;
mod features;
mod gate;
mod model;
mod weights;

use crate::frame::PcmFrame;
use crate::time::SampleTime;

pub use gate::SpeechGate;

/// Number of values in [`Vad::features`].
pub const FEATURE_COUNT: usize = extract::FEATURES;

/// Tuning of [`Vad`]. [`VadConfig::default`] holds the values chosen on the validation sources
/// of the evaluation in `docs/vad-eval.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct VadConfig {
    /// Consecutive speech frames (20 ms each) needed before [`VadTransition::SpeechStarted`];
    /// 1..=50. Higher rejects more clicks and music transients but delays the decision by
    /// `attack_frames - 1` frames.
    pub attack_frames: u32,
    /// Non-speech frames (20 ms each) still reported as speech after the last speech frame;
    /// 0..=500. Higher bridges pauses inside an utterance but ends utterances later.
    pub hangover_frames: u32,
    /// Classifier probability (0.0..=1.0) at or above which a frame counts towards starting
    /// speech. Higher rejects more music and noise but misses more quiet onsets.
    pub start_probability: f32,
    /// Classifier probability (0.0..=`start_probability`) at or above which a frame keeps
    /// speech going once started. Lower keeps quiet word endings and pauses inside speech.
    pub sustain_probability: f32,
    /// Onset-classifier probability (0.0..=1.0) at or above which a frame also counts towards
    /// starting speech (in silence only, on frames whose speech probability is at least 0.1;
    /// see [`Vad::onset_probability`]). `None` starts on
    /// [`VadConfig::start_probability`] alone. Lower decides onsets sooner in noise and music
    /// but starts more often on music.
    pub onset_probability: Option<f32>,
    /// Frames quieter than this (mean power in dBFS) are never speech; -100.0..=0.0.
    pub min_level_dbfs: f32,
}

impl Default for VadConfig {
    /// Chosen with the classifiers on the validation sources of `benches/vad_eval` (see
    /// `docs/vad-eval.md`).
    fn default() -> Self {
        Self {
            attack_frames: weights::TUNED_ATTACK_FRAMES,
            hangover_frames: weights::TUNED_HANGOVER_FRAMES,
            start_probability: weights::TUNED_START_PROBABILITY,
            sustain_probability: weights::TUNED_SUSTAIN_PROBABILITY,
            onset_probability: weights::TUNED_ONSET_PROBABILITY,
            min_level_dbfs: -56.0,
        }
    }
}

/// Why a [`VadConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum VadConfigError {
    /// `attack_frames` out of range.
    #[error("attack_frames is {0}, expected 1..=50")]
    AttackFrames(u32),
    /// `hangover_frames` out of range.
    #[error("hangover_frames is {0}, expected 0..=500")]
    HangoverFrames(u32),
    /// `start_probability` out of range or not finite.
    #[error("start_probability is {0}, expected 0.0..=1.0")]
    StartProbability(f32),
    /// `sustain_probability` out of range, above `start_probability`, or not finite.
    #[error("sustain_probability is {sustain}, expected 0.0..={start} (start_probability)")]
    SustainProbability {
        /// The rejected sustain probability.
        sustain: f32,
        /// The configured start probability, its upper bound.
        start: f32,
    },
    /// `onset_probability` out of range or not finite.
    #[error("onset_probability is {0}, expected 0.0..=1.0")]
    OnsetProbability(f32),
    /// `min_level_dbfs` out of range or not finite.
    #[error("min_level_dbfs is {0}, expected -100.0..=0.0")]
    MinLevelDbfs(f32),
}

impl VadConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), VadConfigError> {
        if !(1..=50).contains(&self.attack_frames) {
            return Err(VadConfigError::AttackFrames(self.attack_frames));
        }
        if self.hangover_frames > 500 {
            return Err(VadConfigError::HangoverFrames(self.hangover_frames));
        }
        if !(0.0..=1.0).contains(&self.start_probability) {
            return Err(VadConfigError::StartProbability(self.start_probability));
        }
        if !(0.0..=self.start_probability).contains(&self.sustain_probability) {
            return Err(VadConfigError::SustainProbability {
                sustain: self.sustain_probability,
                start: self.start_probability,
            });
        }
        if let Some(p) = self.onset_probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(VadConfigError::OnsetProbability(p));
        }
        if !(-100.0..=0.0).contains(&self.min_level_dbfs) {
            return Err(VadConfigError::MinLevelDbfs(self.min_level_dbfs));
        }
        Ok(())
    }
}

/// A change of the smoothed speech decision.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum VadTransition {
    /// Speech ended. `at` is the end of the last speech frame before the hangover ran out.
    SpeechEnded {
        /// Sample position (8 kHz, counted since `new`/`reset`) just after the last speech frame.
        at: SampleTime,
    },
    /// Speech started. `at` is the start of the first frame of the run that led to the decision
    /// (see [`Vad::push`]; for [`SpeechGate`], the run that met the attack).
    SpeechStarted {
        /// Sample position (8 kHz, counted since `new`/`reset`) of the run's first sample.
        at: SampleTime,
    },
}

/// The voice activity detector. Sans-IO: feed it frames with [`Vad::push`].
#[derive(Debug)]
pub struct Vad {
    config: VadConfig,
    extractor: extract::Extractor,
    gate: SpeechGate,
    /// Standardised features of the last [`model::ONSET_CONTEXT`] frames, newest first.
    context: [[f32; FEATURE_COUNT]; model::ONSET_CONTEXT],
    probability: f32,
    /// The onset classifier's output on the last frame (0 when it was not evaluated).
    onset: f32,
    raw: bool,
    /// Consecutive frames up to the last one whose probability reached `sustain_probability`
    /// (and that were loud enough), capped at [`ONSET_LOOKBACK_FRAMES`].
    sustain_run: u32,
}

/// The onset classifier is evaluated only on frames whose speech probability is at least this.
const ONSET_MIN_SPEECH_PROBABILITY: f32 = 0.1;

/// How far back (frames, 20 ms each) a start is dated before the run that met the attack:
/// 500 ms.
const ONSET_LOOKBACK_FRAMES: u32 = 25;

impl Vad {
    /// A detector with the given tuning, or why the tuning is invalid.
    pub fn new(config: &VadConfig) -> Result<Self, VadConfigError> {
        config.validate()?;
        Ok(Self {
            extractor: extract::Extractor::new(),
            gate: SpeechGate::new(config.attack_frames, config.hangover_frames),
            context: [[0.0; FEATURE_COUNT]; model::ONSET_CONTEXT],
            probability: 0.0,
            onset: 0.0,
            raw: false,
            sustain_run: 0,
            config: config.clone(),
        })
    }

    /// The tuning this detector runs with.
    pub fn config(&self) -> &VadConfig {
        &self.config
    }

    /// Feeds one 20 ms frame of 8 kHz PCM. Returns a transition when the smoothed decision
    /// changes on this frame.
    ///
    /// `SpeechStarted.at` is the start of the run of frames, ending on this one, whose
    /// probability reached [`VadConfig::sustain_probability`] (at most 25 frames, 500 ms, back),
    /// or of the run that met the attack if that is earlier; `SpeechEnded.at` is the end of the last speech frame before the hangover ran out. Both
    /// count every frame pushed since [`Vad::new`] or [`Vad::reset`], 160 samples each.
    pub fn push(&mut self, frame: &PcmFrame) -> Option<VadTransition> {
        self.extractor.push(&frame.0);
        let first = self.gate.frames() == 0;
        self.context.rotate_right(1);
        model::standardise(self.extractor.features(), &mut self.context[0]);
        if first {
            // Before any history the older context slots repeat this frame, as in training.
            let z = self.context[0];
            self.context.fill(z);
        }
        self.probability = model::speech_probability(&self.context);
        let c = &self.config;
        let speaking = self.gate.is_speech();
        let loud = self.extractor.level_dbfs() >= c.min_level_dbfs;
        // The onset classifier only serves the start decision: skip it in speech, on frames too
        // quiet to start speech, and on frames the speech classifier finds clearly not speech
        // (most silence and noise; it changed no validation onset).
        self.onset = match c.onset_probability {
            Some(_) if !speaking && loud && self.probability >= ONSET_MIN_SPEECH_PROBABILITY => {
                model::onset_probability(&self.context)
            }
            _ => 0.0,
        };
        self.raw = loud
            && if speaking {
                self.probability >= c.sustain_probability
            } else {
                self.probability >= c.start_probability
                    || c.onset_probability.is_some_and(|t| self.onset >= t)
            };
        self.sustain_run = if loud && self.probability >= c.sustain_probability {
            (self.sustain_run + 1).min(ONSET_LOOKBACK_FRAMES)
        } else {
            0
        };
        match self.gate.push(self.raw) {
            Some(VadTransition::SpeechStarted { at }) => {
                // The classifier is sure only a few frames into an utterance; date the start at
                // the beginning of the run of likely-speech frames that led to it.
                // `sustain_run` counts frames already pushed, so this cannot underflow.
                let run_start = self.gate.frames() - u64::from(self.sustain_run);
                let at = at.min(SampleTime::from_frames(run_start));
                Some(VadTransition::SpeechStarted { at })
            }
            other => other,
        }
    }

    /// The current smoothed decision (after attack and hangover).
    pub fn is_speech(&self) -> bool {
        self.gate.is_speech()
    }

    /// The raw decision on the last frame pushed, before attack and hangover: the probability
    /// reached [`VadConfig::start_probability`] or the onset probability reached
    /// [`VadConfig::onset_probability`] (in silence), or the probability reached
    /// [`VadConfig::sustain_probability`] (in speech); and the frame was louder than
    /// [`VadConfig::min_level_dbfs`].
    pub fn frame_is_speech(&self) -> bool {
        self.raw
    }

    /// The classifier's speech probability for the last frame pushed, 0.0..=1.0.
    pub fn speech_probability(&self) -> f32 {
        self.probability
    }

    /// The onset classifier's probability that an utterance starts on the last frame pushed,
    /// 0.0..=1.0; evaluated only in silence, with [`VadConfig::onset_probability`] set, on
    /// frames whose [`Vad::speech_probability`] is at least 0.1 (0.0 otherwise).
    pub fn onset_probability(&self) -> f32 {
        self.onset
    }

    /// The last frame's mean band SNR in dB above the tracked noise floor (generalised mean
    /// over the 11 bands, exponent 3.5); for diagnostics.
    pub fn snr_db(&self) -> f32 {
        self.extractor.snr_db()
    }

    /// The classifier's input for the last frame pushed, for offline training and diagnostics.
    ///
    /// In order: 0 frame level (dBFS); 1–11 band SNRs (dB above the floor, 0–40, bands from
    /// 219 Hz up); 12 generalised-mean band SNR (dB); 13–18 cepstral coefficients c1–c6 of the
    /// band levels (dB); 19 spectral flux (mean absolute band-level change from the previous
    /// frame, dB); 20 and 21 level change over 1 and 3 frames (dB); 22 level standard deviation
    /// over 16 frames (dB); 23 mean flux over 16 frames (dB); 24 fraction of the last 50 frames
    /// more than 6 dB below their mean level; 25 and 26 level minus the maximum and the minimum
    /// over 50 frames (dB); 27 pitch strength (0–1); 28 its mean over 8 frames; 29 its maximum
    /// over 3 frames; 30 pitch change from the previous frame (octaves, 0–1, 1 when either
    /// frame is unpitched); 31 fraction of the last 16 frames holding the previous frame's
    /// pitch lag within one sample; 32–35 level standard deviation over 16 frames in four band
    /// groups (dB); 36 mean of feature 12 over 8 frames; 37 mean noise floor over the bands (dB);
    /// 38 and 39 feature 12 one and two frames back (dB); 40 and 41 the largest band SNR on this
    /// and on the previous frame (dB); 42 feature 12 minus its minimum over the previous 8
    /// frames (dB); 43 mean band SNR over the six bands from 219 Hz to 1.53 kHz (dB).
    pub fn features(&self) -> &[f32; FEATURE_COUNT] {
        self.extractor.features()
    }

    /// Forgets all history: noise floor, context, decision and the media clock restart from
    /// zero.
    pub fn reset(&mut self) {
        self.extractor.reset();
        self.gate.reset();
        self.context = [[0.0; FEATURE_COUNT]; model::ONSET_CONTEXT];
        self.probability = 0.0;
        self.onset = 0.0;
        self.raw = false;
        self.sustain_run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::f32::consts::TAU;

    use crate::time::FRAME_SAMPLES;

    /// A frame of uniform white noise with the given RMS level in dBFS.
    fn noise_frame(rng: &mut ChaCha8Rng, dbfs: f32) -> PcmFrame {
        // Uniform on ±a has RMS a/√3.
        let a = 32768.0 * 10f32.powf(dbfs / 20.0) * 3f32.sqrt();
        PcmFrame(std::array::from_fn(|_| rng.gen_range(-a..a) as i16))
    }

    /// A speech-like test signal: syllables of 140–260 ms whose pitch glides between 160 and
    /// 260 Hz, harmonics shaped by two formants that move from syllable to syllable, a
    /// half-sine envelope, and 40–120 ms pauses; about −22 dBFS while voiced.
    struct Talker {
        rng: ChaCha8Rng,
        phase: f32,
        /// Samples into the current syllable, or into the pause when negative.
        pos: i64,
        len: i64,
        f0: (f32, f32),
        formants: (f32, f32),
    }

    impl Talker {
        fn new(seed: u64) -> Self {
            let mut t = Self {
                rng: ChaCha8Rng::seed_from_u64(seed),
                phase: 0.0,
                pos: 0,
                len: 0,
                f0: (0.0, 0.0),
                formants: (0.0, 0.0),
            };
            t.next_syllable();
            t
        }

        fn next_syllable(&mut self) {
            let r = &mut self.rng;
            self.len = r.gen_range(1120..2080);
            self.pos = -r.gen_range(320..960);
            self.f0 = (r.gen_range(160.0..260.0), r.gen_range(160.0..260.0));
            self.formants = (r.gen_range(400.0..900.0), r.gen_range(1100.0..2400.0));
        }

        fn sample(&mut self) -> f32 {
            self.pos += 1;
            if self.pos >= self.len {
                self.next_syllable();
            }
            if self.pos < 0 {
                return 0.0;
            }
            let x = self.pos as f32 / self.len as f32;
            let f0 = self.f0.0 + (self.f0.1 - self.f0.0) * x;
            self.phase = (self.phase + f0 / 8000.0).fract();
            let (f1, f2) = self.formants;
            let mut y = 0.0;
            let mut h = 1.0;
            while h * f0 < 3400.0 {
                let f = h * f0;
                let g = 1.0 / (1.0 + ((f - f1) / 150.0).powi(2))
                    + 0.5 / (1.0 + ((f - f2) / 200.0).powi(2))
                    + 0.03;
                y += g * (TAU * h * self.phase).sin();
                h += 1.0;
            }
            y * (std::f32::consts::PI * x).sin() * 3000.0
        }

        fn frame(&mut self) -> PcmFrame {
            PcmFrame(std::array::from_fn(|_| self.sample() as i16))
        }
    }

    /// A held chord (220, 277 and 330 Hz, three harmonics each) at a steady level, as in hold
    /// music; continuous across frames via the absolute sample index.
    fn chord_frame(index: u64) -> PcmFrame {
        PcmFrame(std::array::from_fn(|i| {
            let t = (index * FRAME_SAMPLES as u64 + i as u64) as f32 / 8000.0;
            let mut x = 0.0;
            for f in [220.0, 277.2, 329.6] {
                for h in 1..=3 {
                    x += (TAU * f * h as f32 * t).sin() / h as f32;
                }
            }
            (x * 1500.0) as i16
        }))
    }

    fn vad() -> Vad {
        Vad::new(&VadConfig::default()).unwrap()
    }

    #[test]
    fn default_config_is_valid_and_attack_is_within_60_ms() {
        let c = VadConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.attack_frames <= 3);
        assert!(c.sustain_probability <= c.start_probability);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_value() {
        let bad = |f: fn(&mut VadConfig)| {
            let mut c = VadConfig::default();
            f(&mut c);
            Vad::new(&c).err()
        };
        assert_eq!(
            bad(|c| c.attack_frames = 0),
            Some(VadConfigError::AttackFrames(0))
        );
        assert_eq!(
            bad(|c| c.hangover_frames = 501),
            Some(VadConfigError::HangoverFrames(501))
        );
        assert!(matches!(
            bad(|c| c.start_probability = f32::NAN),
            Some(VadConfigError::StartProbability(_))
        ));
        assert_eq!(
            bad(|c| {
                c.start_probability = 0.5;
                c.sustain_probability = 0.6;
            }),
            Some(VadConfigError::SustainProbability {
                sustain: 0.6,
                start: 0.5
            })
        );
        assert_eq!(
            bad(|c| c.onset_probability = Some(1.5)),
            Some(VadConfigError::OnsetProbability(1.5))
        );
        assert_eq!(
            bad(|c| c.min_level_dbfs = 3.0),
            Some(VadConfigError::MinLevelDbfs(3.0))
        );
    }

    #[test]
    fn digital_silence_and_quiet_noise_never_trigger() {
        let mut v = vad();
        for _ in 0..500 {
            assert_eq!(v.push(&PcmFrame::SILENCE), None);
            assert!(!v.frame_is_speech() && !v.is_speech());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v = vad();
        for _ in 0..1000 {
            assert_eq!(v.push(&noise_frame(&mut rng, -65.0)), None);
        }
    }

    #[test]
    fn speech_like_signal_is_detected_and_a_held_chord_is_not() {
        let mut v = vad();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..100 {
            v.push(&noise_frame(&mut rng, -60.0));
        }
        let mut talker = Talker::new(7);
        let mut on = 0;
        for _ in 0..250 {
            v.push(&talker.frame());
            on += usize::from(v.is_speech());
        }
        assert!(
            on > 150,
            "speech-like signal judged speech on {on} of 250 frames"
        );

        let mut v = vad();
        let mut on = 0;
        for i in 0..500 {
            v.push(&chord_frame(i));
            on += usize::from(i >= 50 && v.is_speech());
        }
        assert!(on < 45, "held chord judged speech on {on} of 450 frames");
    }

    #[test]
    fn transitions_follow_the_raw_decisions_with_hysteresis() {
        for (attack, hangover) in [(1, 0), (2, 3), (3, 6), (3, 15)] {
            let config = VadConfig {
                attack_frames: attack,
                hangover_frames: hangover,
                ..VadConfig::default()
            };
            let mut v = Vad::new(&config).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut talker = Talker::new(u64::from(attack));
            let mut raw = Vec::new();
            let mut likely = Vec::new();
            let mut starts = 0;
            for i in 0..600u64 {
                let f = if (i / 100) % 2 == 1 {
                    talker.frame()
                } else {
                    noise_frame(&mut rng, -50.0)
                };
                let speaking = v.is_speech();
                let out = v.push(&f);
                let p = v.speech_probability();
                let likely_start = p >= config.start_probability
                    || config
                        .onset_probability
                        .is_some_and(|t| v.onset_probability() >= t);
                let loud = v.features()[0] >= config.min_level_dbfs;
                assert_eq!(
                    v.frame_is_speech(),
                    loud && if speaking {
                        p >= config.sustain_probability
                    } else {
                        likely_start
                    }
                );
                raw.push(v.frame_is_speech());
                likely.push(loud && v.speech_probability() >= config.sustain_probability);
                let expected = reference_gate(&raw, attack as usize, hangover as usize);
                assert_eq!(v.is_speech(), expected[i as usize]);
                match out {
                    Some(VadTransition::SpeechStarted { at }) => {
                        starts += 1;
                        let attack_start = i + 1 - u64::from(attack);
                        let likely = likely.iter().rev().take_while(|&&l| l).count() as u64;
                        let run_start = i + 1 - likely.min(25);
                        assert_eq!(at, SampleTime::from_frames(attack_start.min(run_start)));
                    }
                    Some(VadTransition::SpeechEnded { at }) => {
                        assert_eq!(at, SampleTime::from_frames(i - u64::from(hangover)));
                    }
                    None => {}
                }
            }
            assert!(starts > 0, "the talker starts speech");
        }
    }

    #[test]
    fn onset_classifier_only_adds_starts_and_never_delays_the_first_one() {
        // The same input with the onset rule off, at the default, and at a low threshold: the
        // first start can only come earlier as the rule gets looser, and with the rule off the
        // onset classifier is not evaluated at all.
        let first_start = |onset: Option<f32>| {
            let config = VadConfig {
                onset_probability: onset,
                ..VadConfig::default()
            };
            let mut v = Vad::new(&config).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(6);
            let mut talker = Talker::new(6);
            for i in 0..400u64 {
                let f = if i < 150 {
                    noise_frame(&mut rng, -45.0)
                } else {
                    let mut t = talker.frame();
                    let n = noise_frame(&mut rng, -45.0);
                    for (s, &n) in t.0.iter_mut().zip(&n.0) {
                        *s = s.saturating_add(n);
                    }
                    t
                };
                let out = v.push(&f);
                if onset.is_none() {
                    assert_eq!(v.onset_probability(), 0.0);
                }
                if let Some(VadTransition::SpeechStarted { .. }) = out {
                    return Some(i);
                }
            }
            None
        };
        let off = first_start(None).expect("the talker starts speech without the onset rule");
        let default = VadConfig::default().onset_probability;
        let tuned = first_start(default.or(Some(0.5))).expect("and with it");
        let loose = first_start(Some(0.0)).expect("and with any onset probability");
        assert!(
            tuned <= off,
            "tuned onset rule started at {tuned}, off at {off}"
        );
        assert!(
            loose <= tuned,
            "loose onset rule started at {loose}, tuned at {tuned}"
        );
    }

    #[test]
    fn steady_noise_after_a_step_up_stops_being_speech_within_the_noise_window() {
        let config = VadConfig::default();
        let mut v = Vad::new(&config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            v.push(&noise_frame(&mut rng, -60.0));
        }
        // A 35 dB step up to steady noise. The floor trackers hold only the new noise within
        // their window plus one sub-window; add the hangover and a 10-frame margin.
        let w = u64::from(extract::NOISE_WINDOW_FRAMES);
        let bound = w + w / 8 + u64::from(config.hangover_frames) + 10;
        for k in 0..bound + 500 {
            v.push(&noise_frame(&mut rng, -25.0));
            if k >= bound {
                assert!(!v.is_speech(), "still speech {k} frames after the step");
            }
        }
    }

    #[test]
    fn reset_behaves_like_a_new_detector() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut talker = Talker::new(5);
        let frames: Vec<PcmFrame> = (0..300)
            .map(|i| {
                if (i / 60) % 2 == 1 {
                    talker.frame()
                } else {
                    noise_frame(&mut rng, -50.0)
                }
            })
            .collect();
        let mut used = vad();
        for f in frames.iter().rev() {
            used.push(f);
        }
        used.reset();
        assert!(!used.is_speech());
        let mut fresh = vad();
        for f in &frames {
            assert_eq!(used.push(f), fresh.push(f));
            assert_eq!(used.speech_probability(), fresh.speech_probability());
            assert_eq!(used.features(), fresh.features());
        }
    }

    /// Reference model of the gate: the smoothed decision of frame `i` computed from the whole
    /// raw sequence up to `i`.
    fn reference_gate(raw: &[bool], attack: usize, hangover: usize) -> Vec<bool> {
        let mut out = Vec::with_capacity(raw.len());
        let mut speaking = false;
        for i in 0..raw.len() {
            if speaking {
                let quiet = raw[..=i].iter().rev().take_while(|&&r| !r).count();
                speaking = quiet <= hangover;
            } else {
                let run = raw[..=i].iter().rev().take_while(|&&r| r).count();
                speaking = run >= attack;
            }
            out.push(speaking);
        }
        out
    }

    proptest! {
        #[test]
        fn gate_matches_reference_and_dates_transitions(
            raw in proptest::collection::vec(any::<bool>(), 0..300),
            attack in 1u32..5,
            hangover in 0u32..8,
        ) {
            let expected = reference_gate(&raw, attack as usize, hangover as usize);
            let mut gate = SpeechGate::new(attack, hangover);
            for (i, (&r, &e)) in raw.iter().zip(&expected).enumerate() {
                let out = gate.push(r);
                prop_assert_eq!(gate.is_speech(), e);
                let i = i as u64;
                match out {
                    Some(VadTransition::SpeechStarted { at }) => {
                        prop_assert_eq!(at, SampleTime::from_frames(i + 1 - u64::from(attack)));
                    }
                    Some(VadTransition::SpeechEnded { at }) => {
                        prop_assert_eq!(at, SampleTime::from_frames(i - u64::from(hangover)));
                    }
                    None => {}
                }
            }
        }

        #[test]
        fn any_input_gives_finite_features_and_a_probability(
            samples in proptest::collection::vec(any::<i16>(), FRAME_SAMPLES * 8),
        ) {
            let mut v = vad();
            for chunk in samples.chunks_exact(FRAME_SAMPLES) {
                let frame = PcmFrame(chunk.try_into().unwrap());
                v.push(&frame);
                prop_assert!(v.snr_db().is_finite());
                prop_assert!(v.features().iter().all(|x| x.is_finite()));
                prop_assert!((0.0..=1.0).contains(&v.speech_probability()));
            }
        }
    }
}
