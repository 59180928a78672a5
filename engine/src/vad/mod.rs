//! Voice activity detection at 8 kHz on 20 ms frames: speech started / speech ended.
//!
//! The call layer uses [`VadTransition::SpeechStarted`] for barge-in and
//! [`VadTransition::SpeechEnded`] to close an utterance. Everything is counted in frames (media
//! time), never wall time; [`Vad::new`] preallocates and [`Vad::push`] does not allocate.
//!
//! # Design
//!
//! 1. **Front end** (`features.rs`): a 256-point real FFT over a Hann window of the current 160
//!    samples plus the previous 96, summed into 11 roughly critical-band-spaced bands from
//!    219 Hz to 3.4 kHz; plus the frame's mean power in dBFS.
//! 2. **Noise floor per band**, the maximum of three estimates, each covering a weakness of the
//!    others:
//!    - minimum statistics (the minimum of the smoothed band power over `noise_window_frames`,
//!      kept as 8 sub-window minima) plus `noise_bias_db`: follows any step up in noise within
//!      `noise_window_frames` frames whatever the decision says, and a step down at once;
//!    - a mean level adapted only on frames judged non-speech (`floor_rise`, `floor_fall`):
//!      sits at the noise mean rather than its minimum, which matters for fluctuating noise;
//!    - a quantile tracker in dB (`quantile_up_db`, `quantile_down_db`) that moves on every
//!      frame, so it also follows music that the decision mistakes for speech.
//! 3. **Feature**: the band SNRs (dB above the floor, clipped to 0..40) combined by a
//!    generalised mean with exponent `snr_exponent` (3.5 by default, close to a soft maximum),
//!    so a few bands carrying voiced harmonics well above white noise decide even when the
//!    upper bands are buried. A frame is raw speech if this exceeds `threshold_db` and the
//!    frame is louder than `min_level_dbfs`.
//! 4. **Gate** ([`SpeechGate`]): `attack_frames` consecutive raw speech frames start speech,
//!    dated at the first of them; `hangover_frames` raw non-speech frames are bridged, and the
//!    next one ends speech, dated at the end of the last speech frame.
//!
//! Adaptation: after a step up to a new steady noise floor, the decision returns to non-speech
//! once the minimum tracker holds only the new noise: within `noise_window_frames` plus one
//! sub-window (`noise_window_frames / 8`) plus `hangover_frames`, with a few frames for the
//! mean trackers to settle. With the defaults that is about 276 frames (5.5 s); a 35 dB step
//! measured 272 frames, and a unit test checks the bound. A step down adapts at once.
//!
//! Limits (measured in `docs/vad-eval.md`): the features are level and spectral-shape SNRs,
//! so hold music under speech is separated only by level; the detector beats WebRTC mode 3
//! clearly in white noise but not in music or clean speech. Closing that gap needs a feature
//! that tells speech from music (pitch continuity, syllabic-rate modulation) or a learned model.

mod features;
mod gate;

use crate::frame::PcmFrame;
use crate::time::SampleTime;

use features::{BANDS, FrontEnd, NOISE_SUBWINDOWS, NoiseTracker, power_db};
pub use gate::SpeechGate;

/// Tuning of [`Vad`]. [`VadConfig::default`] holds the values tuned on the evaluation in
/// `docs/vad-eval.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct VadConfig {
    /// Consecutive speech frames (20 ms each) needed before [`VadTransition::SpeechStarted`];
    /// 1..=50. Higher rejects more clicks and music transients but delays the decision by
    /// `attack_frames - 1` frames.
    pub attack_frames: u32,
    /// Non-speech frames (20 ms each) still reported as speech after the last speech frame;
    /// 0..=500. Higher bridges pauses inside an utterance but ends utterances later.
    pub hangover_frames: u32,
    /// Mean band SNR (dB above the tracked noise floor, averaged over 11 bands from 219 Hz to
    /// 3.4 kHz) above which a frame is speech; 0.0..=40.0. Lower finds quieter speech but
    /// fires more on noise and music.
    pub threshold_db: f32,
    /// Frames quieter than this (mean power in dBFS) are never speech; -100.0..=0.0.
    pub min_level_dbfs: f32,
    /// Length of the noise-floor memory in frames (20 ms each); a multiple of 8 in 16..=4000.
    /// The floor follows a step up in noise within this many frames, and a step down at once.
    /// Longer survives longer unbroken speech without mistaking it for noise.
    pub noise_window_frames: u32,
    /// Added to the tracked band minima to estimate the mean noise level, in dB; 0.0..=20.0.
    /// Minimum statistics underestimate the mean by a few dB.
    pub noise_bias_db: f32,
    /// Smoothing factor of the band powers fed to the noise tracker (per frame); 0.0..1.0.
    pub noise_smoothing: f32,
    /// Per-frame adaptation rate of the mean noise level on frames judged non-speech; 0.0..=1.0
    /// (0 disables it and leaves only the minimum tracker). Higher follows music and
    /// fluctuating noise faster.
    pub floor_rise: f32,
    /// Per-frame adaptation rate of the mean noise level when a frame is quieter than it;
    /// 0.0..=1.0. Higher recovers faster after the noise drops.
    pub floor_fall: f32,
    /// Exponent of the generalised mean over band SNRs; 1.0..=8.0. 1 is the plain mean; higher
    /// lets a few strong bands (voiced harmonics under white noise) decide.
    pub snr_exponent: f32,
    /// Upward step of the per-band quantile tracker, in dB per frame above it; 0.0..=3.0
    /// (0 disables it). With `quantile_down_db` this sets which quantile of the band level the
    /// floor settles on: the fraction of frames above it is `down / (up + down)`. It follows
    /// the running level of music and babble whatever the decision says.
    pub quantile_up_db: f32,
    /// Downward step of the per-band quantile tracker, in dB per frame below it; 0.0..=10.0.
    pub quantile_down_db: f32,
}

impl Default for VadConfig {
    /// Tuned by random search on the tuning split of `benches/vad_eval.rs` (see
    /// `docs/vad-eval.md`), maximising the worst-case F1 margin over WebRTC mode 3 with a penalty
    /// on false starts in hold music.
    fn default() -> Self {
        Self {
            attack_frames: 3,
            hangover_frames: 6,
            threshold_db: 3.4,
            min_level_dbfs: -56.0,
            noise_window_frames: 240,
            noise_bias_db: 2.8,
            noise_smoothing: 0.3,
            floor_rise: 0.02,
            floor_fall: 0.5,
            snr_exponent: 3.5,
            quantile_up_db: 0.02,
            quantile_down_db: 0.2,
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
    /// `threshold_db` out of range or not finite.
    #[error("threshold_db is {0}, expected 0.0..=40.0")]
    ThresholdDb(f32),
    /// `min_level_dbfs` out of range or not finite.
    #[error("min_level_dbfs is {0}, expected -100.0..=0.0")]
    MinLevelDbfs(f32),
    /// `noise_window_frames` out of range or not a multiple of 8.
    #[error("noise_window_frames is {0}, expected a multiple of 8 in 16..=4000")]
    NoiseWindowFrames(u32),
    /// `noise_bias_db` out of range or not finite.
    #[error("noise_bias_db is {0}, expected 0.0..=20.0")]
    NoiseBiasDb(f32),
    /// `noise_smoothing` out of range or not finite.
    #[error("noise_smoothing is {0}, expected 0.0..1.0")]
    NoiseSmoothing(f32),
    /// `floor_rise` out of range or not finite.
    #[error("floor_rise is {0}, expected 0.0..=1.0")]
    FloorRise(f32),
    /// `floor_fall` out of range or not finite.
    #[error("floor_fall is {0}, expected 0.0..=1.0")]
    FloorFall(f32),
    /// `snr_exponent` out of range or not finite.
    #[error("snr_exponent is {0}, expected 1.0..=8.0")]
    SnrExponent(f32),
    /// `quantile_up_db` out of range or not finite.
    #[error("quantile_up_db is {0}, expected 0.0..=3.0")]
    QuantileUpDb(f32),
    /// `quantile_down_db` out of range or not finite.
    #[error("quantile_down_db is {0}, expected 0.0..=10.0")]
    QuantileDownDb(f32),
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
        if !(0.0..=40.0).contains(&self.threshold_db) {
            return Err(VadConfigError::ThresholdDb(self.threshold_db));
        }
        if !(-100.0..=0.0).contains(&self.min_level_dbfs) {
            return Err(VadConfigError::MinLevelDbfs(self.min_level_dbfs));
        }
        let w = self.noise_window_frames;
        if !(16..=4000).contains(&w) || !w.is_multiple_of(NOISE_SUBWINDOWS as u32) {
            return Err(VadConfigError::NoiseWindowFrames(w));
        }
        if !(0.0..=20.0).contains(&self.noise_bias_db) {
            return Err(VadConfigError::NoiseBiasDb(self.noise_bias_db));
        }
        if !(0.0..1.0).contains(&self.noise_smoothing) {
            return Err(VadConfigError::NoiseSmoothing(self.noise_smoothing));
        }
        if !(0.0..=1.0).contains(&self.floor_rise) {
            return Err(VadConfigError::FloorRise(self.floor_rise));
        }
        if !(0.0..=1.0).contains(&self.floor_fall) {
            return Err(VadConfigError::FloorFall(self.floor_fall));
        }
        if !(1.0..=8.0).contains(&self.snr_exponent) {
            return Err(VadConfigError::SnrExponent(self.snr_exponent));
        }
        if !(0.0..=3.0).contains(&self.quantile_up_db) {
            return Err(VadConfigError::QuantileUpDb(self.quantile_up_db));
        }
        if !(0.0..=10.0).contains(&self.quantile_down_db) {
            return Err(VadConfigError::QuantileDownDb(self.quantile_down_db));
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
    /// Speech started. `at` is the start of the first frame of the run that met the attack.
    SpeechStarted {
        /// Sample position (8 kHz, counted since `new`/`reset`) of the run's first sample.
        at: SampleTime,
    },
}

/// The voice activity detector. Sans-IO: feed it frames with [`Vad::push`].
#[derive(Debug)]
pub struct Vad {
    config: VadConfig,
    front: FrontEnd,
    noise: NoiseTracker,
    gate: SpeechGate,
    bands: [f32; BANDS],
    smoothed: [f32; BANDS],
    floor: [f32; BANDS],
    /// Mean noise level per band, adapted on non-speech frames.
    mean_noise: [f32; BANDS],
    /// Quantile tracker per band, in dB.
    quantile_db: [f32; BANDS],
    started: bool,
    raw: bool,
    snr_db: f32,
}

impl Vad {
    /// A detector with the given tuning, or why the tuning is invalid.
    pub fn new(config: &VadConfig) -> Result<Self, VadConfigError> {
        config.validate()?;
        Ok(Self {
            front: FrontEnd::new(),
            noise: NoiseTracker::new(config.noise_window_frames / NOISE_SUBWINDOWS as u32),
            gate: SpeechGate::new(config.attack_frames, config.hangover_frames),
            bands: [0.0; BANDS],
            smoothed: [0.0; BANDS],
            floor: [0.0; BANDS],
            mean_noise: [0.0; BANDS],
            quantile_db: [0.0; BANDS],
            started: false,
            raw: false,
            snr_db: 0.0,
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
    /// `SpeechStarted.at` is the start of the first frame of the speech run that met the attack;
    /// `SpeechEnded.at` is the end of the last speech frame before the hangover ran out. Both
    /// count every frame pushed since [`Vad::new`] or [`Vad::reset`], 160 samples each.
    pub fn push(&mut self, frame: &PcmFrame) -> Option<VadTransition> {
        let analysis = self.front.analyse(&frame.0, &mut self.bands);
        let c = &self.config;
        let a = c.noise_smoothing;
        if self.started {
            for (s, &p) in self.smoothed.iter_mut().zip(&self.bands) {
                *s = a * *s + (1.0 - a) * p;
            }
        } else {
            self.smoothed = self.bands;
            self.mean_noise = self.bands;
            for (q, &p) in self.quantile_db.iter_mut().zip(&self.bands) {
                *q = power_db(p);
            }
            self.started = true;
        }
        self.noise.update(&self.smoothed, &mut self.floor);
        let mut acc = 0.0;
        let use_mean = c.floor_rise > 0.0;
        let use_quantile = c.quantile_up_db > 0.0;
        for (b, &p) in self.bands.iter().enumerate() {
            let p_db = power_db(p);
            let mut n_db = power_db(self.floor[b]) + c.noise_bias_db;
            if use_mean {
                n_db = n_db.max(power_db(self.mean_noise[b]));
            }
            let q = &mut self.quantile_db[b];
            if use_quantile {
                n_db = n_db.max(*q);
                *q += if p_db > *q {
                    c.quantile_up_db
                } else {
                    -c.quantile_down_db
                };
            }
            let snr = (p_db - n_db).clamp(0.0, 40.0) / 40.0;
            acc += snr.powf(c.snr_exponent);
        }
        self.snr_db = 40.0 * (acc / BANDS as f32).powf(1.0 / c.snr_exponent);
        self.raw = analysis.level_dbfs >= c.min_level_dbfs && self.snr_db >= c.threshold_db;
        for (t, &p) in self.mean_noise.iter_mut().zip(&self.bands) {
            if p < *t {
                *t += c.floor_fall * (p - *t);
            } else if !self.raw {
                *t += c.floor_rise * (p - *t);
            }
        }
        self.gate.push(self.raw)
    }

    /// The current smoothed decision (after attack and hangover).
    pub fn is_speech(&self) -> bool {
        self.gate.is_speech()
    }

    /// The raw decision on the last frame pushed, before attack and hangover.
    pub fn frame_is_speech(&self) -> bool {
        self.raw
    }

    /// The last frame's mean band SNR in dB (the quantity compared with
    /// [`VadConfig::threshold_db`]); for diagnostics.
    pub fn snr_db(&self) -> f32 {
        self.snr_db
    }

    /// Forgets all history: noise floor, decision and the media clock restart from zero.
    pub fn reset(&mut self) {
        self.front.reset();
        self.noise.reset();
        self.gate.reset();
        self.started = false;
        self.raw = false;
        self.snr_db = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::time::FRAME_SAMPLES;

    /// A frame of uniform white noise with the given RMS level in dBFS.
    fn noise_frame(rng: &mut ChaCha8Rng, dbfs: f32) -> PcmFrame {
        // Uniform on ±a has RMS a/√3.
        let a = 32768.0 * 10f32.powf(dbfs / 20.0) * 3f32.sqrt();
        PcmFrame(std::array::from_fn(|_| rng.gen_range(-a..a) as i16))
    }

    /// A synthetic voiced frame: 150 Hz with 12 harmonics falling 3 dB each, about −20 dBFS,
    /// continuous across frames via the absolute sample index.
    fn voiced_frame(index: u64) -> PcmFrame {
        PcmFrame(std::array::from_fn(|i| {
            let t = (index * FRAME_SAMPLES as u64 + i as u64) as f32 / 8000.0;
            let mut x = 0.0;
            for h in 1..=12 {
                let amp = 10f32.powf(-3.0 * (h - 1) as f32 / 20.0);
                x += amp * (std::f32::consts::TAU * 150.0 * h as f32 * t).sin();
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
            bad(|c| c.threshold_db = f32::NAN),
            Some(VadConfigError::ThresholdDb(_))
        ));
        assert_eq!(
            bad(|c| c.noise_window_frames = 100),
            Some(VadConfigError::NoiseWindowFrames(100))
        );
        assert_eq!(
            bad(|c| c.snr_exponent = 0.5),
            Some(VadConfigError::SnrExponent(0.5))
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
    fn voiced_burst_starts_speech_after_exactly_attack_frames() {
        for attack in 1..=3 {
            let config = VadConfig {
                attack_frames: attack,
                ..VadConfig::default()
            };
            let mut v = Vad::new(&config).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            for _ in 0..100 {
                assert_eq!(v.push(&noise_frame(&mut rng, -60.0)), None);
            }
            for k in 0..u64::from(attack) {
                let out = v.push(&voiced_frame(100 + k));
                assert!(v.frame_is_speech(), "voiced frame {k} must be raw speech");
                if k + 1 < u64::from(attack) {
                    assert_eq!(out, None);
                    assert!(!v.is_speech());
                } else {
                    assert_eq!(
                        out,
                        Some(VadTransition::SpeechStarted {
                            at: SampleTime::from_frames(100)
                        })
                    );
                    assert!(v.is_speech());
                }
            }
        }
    }

    #[test]
    fn speech_ends_exactly_hangover_frames_after_the_last_speech_frame() {
        for hangover in [0, 3, 6, 15] {
            let config = VadConfig {
                hangover_frames: hangover,
                ..VadConfig::default()
            };
            let mut v = Vad::new(&config).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut last_raw = None;
            let mut ended = None;
            for i in 0..300u64 {
                let f = if (100..130).contains(&i) {
                    voiced_frame(i)
                } else {
                    noise_frame(&mut rng, -60.0)
                };
                let out = v.push(&f);
                if v.frame_is_speech() {
                    last_raw = Some(i);
                }
                if let Some(VadTransition::SpeechEnded { at }) = out {
                    ended = Some((i, at));
                    break;
                }
            }
            let last = last_raw.expect("the burst is raw speech");
            assert!(last >= 129, "raw speech lasts at least through the burst");
            let (ended_on, at) = ended.expect("speech ends after the burst");
            assert_eq!(ended_on, last + u64::from(hangover) + 1);
            assert_eq!(at, SampleTime::from_frames(last + 1));
        }
    }

    #[test]
    fn steady_noise_after_a_step_up_stops_being_speech_within_the_noise_window() {
        let config = VadConfig::default();
        let mut v = Vad::new(&config).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            v.push(&noise_frame(&mut rng, -60.0));
        }
        // A 35 dB step up to steady noise: at first it looks like speech.
        let mut first_frames_speech = false;
        // The documented adaptation bound: the minimum tracker's window plus one sub-window,
        // plus the hangover, plus a 10-frame margin for the mean trackers to settle.
        let w = config.noise_window_frames;
        let bound = u64::from(w + w / 8 + config.hangover_frames) + 10;
        let mut last_start = None;
        for k in 0..bound + 500 {
            let out = v.push(&noise_frame(&mut rng, -25.0));
            if k < 5 && v.frame_is_speech() {
                first_frames_speech = true;
            }
            if let Some(VadTransition::SpeechStarted { .. }) = out {
                last_start = Some(k);
            }
            if k >= bound {
                assert!(!v.is_speech(), "still speech {k} frames after the step");
            }
        }
        assert!(
            first_frames_speech,
            "the step itself is detected before the floor adapts"
        );
        assert!(last_start.is_none_or(|k| k < bound));
    }

    #[test]
    fn reset_restarts_the_media_clock() {
        let mut v = vad();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for i in 0..50 {
            v.push(&noise_frame(&mut rng, -60.0));
            v.push(&voiced_frame(i));
        }
        v.reset();
        assert!(!v.is_speech());
        for _ in 0..20 {
            assert_eq!(v.push(&noise_frame(&mut rng, -60.0)), None);
        }
        let mut started = None;
        for i in 20..30 {
            if let Some(t) = v.push(&voiced_frame(i)) {
                started = Some(t);
                break;
            }
        }
        assert_eq!(
            started,
            Some(VadTransition::SpeechStarted {
                at: SampleTime::from_frames(20)
            })
        );
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
        fn any_input_gives_finite_features_and_no_panic(
            samples in proptest::collection::vec(any::<i16>(), FRAME_SAMPLES * 8),
        ) {
            let mut v = vad();
            for chunk in samples.chunks_exact(FRAME_SAMPLES) {
                let frame = PcmFrame(chunk.try_into().unwrap());
                v.push(&frame);
                prop_assert!(v.snr_db().is_finite());
            }
        }
    }
}
