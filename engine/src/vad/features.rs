//! The VAD's per-frame front end: band energies and pitch strength from a short FFT, and a
//! per-band noise floor.
//!
//! Everything here is preallocated in `new`; `analyse` does no allocation. The FFT runs on a
//! 256-sample Hann window (the current 160 samples plus the last 96 of the previous frame), which
//! gives 31.25 Hz bins over the telephone band. Pitch strength is the peak of the normalised
//! autocorrelation over lags 20..=100 (400 Hz down to 80 Hz), computed as the inverse FFT of the
//! magnitude spectrum (a "generalised" autocorrelation, compressed so that one loud partial does
//! not dominate). The autocorrelation is circular over 256 samples; the Hann taper keeps the
//! aliased lags (156..236) small, which is good enough for a classifier feature.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::time::FRAME_SAMPLES;

/// FFT length in samples (32 ms at 8 kHz).
pub(super) const FFT_LEN: usize = 256;
/// Band edges in FFT bins (31.25 Hz each): 11 bands from 219 Hz to 3438 Hz, roughly
/// critical-band spaced.
const BAND_EDGES: [usize; 12] = [7, 13, 19, 26, 33, 41, 49, 58, 68, 80, 94, 110];
/// Number of analysis bands.
pub(super) const BANDS: usize = BAND_EDGES.len() - 1;
/// Number of sub-windows the minimum-statistics noise tracker keeps.
pub(super) const NOISE_SUBWINDOWS: usize = 8;
/// A power floor that keeps logarithms finite on digital silence (about −130 dBFS per band).
const POWER_FLOOR: f32 = 1e-6;

/// Per-band minimum statistics (Martin 2001, simplified): the minimum of the smoothed band
/// power over `NOISE_SUBWINDOWS` sub-windows of `sub_len` frames. After a step up in noise the
/// estimate follows within `NOISE_SUBWINDOWS * sub_len` frames; after a step down, at once.
#[derive(Clone, Debug)]
pub(super) struct NoiseTracker {
    sub_len: u32,
    /// Frames seen in the current sub-window.
    filled: u32,
    /// Sub-windows completed since reset (saturates at `NOISE_SUBWINDOWS`).
    completed: usize,
    /// Next slot of `history` to overwrite.
    slot: usize,
    /// Minimum of the current (unfinished) sub-window, per band.
    current: [f32; BANDS],
    /// Minima of the last completed sub-windows, per band.
    history: [[f32; BANDS]; NOISE_SUBWINDOWS],
}

impl NoiseTracker {
    pub(super) fn new(sub_len: u32) -> Self {
        Self {
            sub_len,
            filled: 0,
            completed: 0,
            slot: 0,
            current: [f32::MAX; BANDS],
            history: [[f32::MAX; BANDS]; NOISE_SUBWINDOWS],
        }
    }

    pub(super) fn reset(&mut self) {
        *self = Self::new(self.sub_len);
    }

    /// Adds one frame of smoothed band powers and writes the noise floor into `floor`.
    pub(super) fn update(&mut self, smoothed: &[f32; BANDS], floor: &mut [f32; BANDS]) {
        for (c, &s) in self.current.iter_mut().zip(smoothed) {
            *c = c.min(s);
        }
        let used = self.completed.min(NOISE_SUBWINDOWS);
        for (b, f) in floor.iter_mut().enumerate() {
            let mut m = self.current[b];
            for h in &self.history[..used] {
                m = m.min(h[b]);
            }
            *f = m;
        }
        self.filled += 1;
        if self.filled >= self.sub_len {
            self.history[self.slot] = self.current;
            self.slot = (self.slot + 1) % NOISE_SUBWINDOWS;
            self.completed = (self.completed + 1).min(NOISE_SUBWINDOWS);
            self.current = [f32::MAX; BANDS];
            self.filled = 0;
        }
    }
}

/// Shortest pitch lag searched, in samples (400 Hz at 8 kHz).
const MIN_LAG: usize = 20;
/// Longest pitch lag searched, in samples (80 Hz at 8 kHz).
const MAX_LAG: usize = 100;
/// Bins used for the pitch autocorrelation: 62.5 Hz to 3.4 kHz (hum and the band edge excluded).
const PITCH_BINS: std::ops::Range<usize> = 2..110;

/// Short-FFT band analysis with preallocated buffers.
pub(super) struct FrontEnd {
    fft: Arc<dyn RealToComplex<f32>>,
    ifft: Arc<dyn ComplexToReal<f32>>,
    window: [f32; FFT_LEN],
    /// The last `FFT_LEN` input samples, oldest first, scaled to ±1.
    history: [f32; FFT_LEN],
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    /// Magnitude spectrum fed to the inverse FFT (its length is `FFT_LEN / 2 + 1`).
    magnitude: Vec<Complex<f32>>,
    /// Autocorrelation out of the inverse FFT (`FFT_LEN` lags, circular).
    autocorr: Vec<f32>,
    inverse_scratch: Vec<Complex<f32>>,
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd")
            .field("fft_len", &FFT_LEN)
            .finish()
    }
}

/// What the front end measured on one frame.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FrameAnalysis {
    /// Mean power of the frame's 160 samples, in dBFS (full-scale square wave = 0 dBFS).
    pub(super) level_dbfs: f32,
    /// Peak of the normalised autocorrelation over lags 20..=100 samples; 0 (no periodicity)
    /// to 1 (perfectly periodic).
    pub(super) pitch_strength: f32,
    /// The lag of that peak, in samples (20..=100; 8000 / lag is the pitch in Hz).
    pub(super) pitch_lag: f32,
}

impl FrontEnd {
    pub(super) fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(FFT_LEN);
        let ifft = planner.plan_fft_inverse(FFT_LEN);
        let mut window = [0.0; FFT_LEN];
        for (i, w) in window.iter_mut().enumerate() {
            let x = std::f32::consts::TAU * (i as f32 + 0.5) / FFT_LEN as f32;
            *w = 0.5 - 0.5 * x.cos();
        }
        Self {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            magnitude: ifft.make_input_vec(),
            autocorr: ifft.make_output_vec(),
            inverse_scratch: ifft.make_scratch_vec(),
            fft,
            ifft,
            window,
            history: [0.0; FFT_LEN],
        }
    }

    pub(super) fn reset(&mut self) {
        self.history = [0.0; FFT_LEN];
    }

    /// Analyses one frame: writes the band powers (linear, arbitrary but fixed scale) into
    /// `bands` and returns the frame level.
    pub(super) fn analyse(
        &mut self,
        frame: &[i16; FRAME_SAMPLES],
        bands: &mut [f32; BANDS],
    ) -> FrameAnalysis {
        const SCALE: f32 = 1.0 / 32768.0;
        self.history.copy_within(FRAME_SAMPLES.., 0);
        let mut energy = 0.0f32;
        for (h, &s) in self.history[FFT_LEN - FRAME_SAMPLES..]
            .iter_mut()
            .zip(frame)
        {
            let x = f32::from(s) * SCALE;
            energy += x * x;
            *h = x;
        }
        for ((i, &h), &w) in self.input.iter_mut().zip(&self.history).zip(&self.window) {
            *i = h * w;
        }
        // The buffers were made by this plan, so the lengths always match and this cannot fail.
        let _ =
            self.fft
                .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch);
        for (b, out) in bands.iter_mut().enumerate() {
            let mut p = POWER_FLOOR;
            for c in &self.spectrum[BAND_EDGES[b]..BAND_EDGES[b + 1]] {
                p += c.norm_sqr();
            }
            *out = p;
        }
        let (pitch_strength, pitch_lag) = self.pitch();
        FrameAnalysis {
            level_dbfs: power_db(energy / FRAME_SAMPLES as f32),
            pitch_strength,
            pitch_lag,
        }
    }

    /// Pitch strength and lag from the spectrum of the last `analyse`.
    fn pitch(&mut self) -> (f32, f32) {
        for m in self.magnitude.iter_mut() {
            *m = Complex::new(0.0, 0.0);
        }
        for (m, c) in self.magnitude[PITCH_BINS]
            .iter_mut()
            .zip(&self.spectrum[PITCH_BINS])
        {
            m.re = c.norm_sqr().sqrt();
        }
        // As above: buffers made by this plan, and the first and last bins are real (zero).
        let _ = self.ifft.process_with_scratch(
            &mut self.magnitude,
            &mut self.autocorr,
            &mut self.inverse_scratch,
        );
        let r0 = self.autocorr[0];
        if r0 <= 1e-9 {
            return (0.0, MIN_LAG as f32);
        }
        let mut best = f32::MIN;
        let mut lag = MIN_LAG;
        for (l, &r) in self.autocorr[MIN_LAG..=MAX_LAG].iter().enumerate() {
            if r > best {
                best = r;
                lag = l + MIN_LAG;
            }
        }
        ((best / r0).clamp(0.0, 1.0), lag as f32)
    }
}

/// `10·log10(p)`, floored so digital silence stays finite.
pub(super) fn power_db(p: f32) -> f32 {
    10.0 * p.max(1e-13).log10()
}
