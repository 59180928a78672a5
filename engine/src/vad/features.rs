//! The VAD's per-frame front end: band energies and pitch strength from a short FFT, and a
//! per-band noise floor.
//!
//! Everything here is preallocated in `new`; `analyse` does no allocation. The FFT runs on a
//! 256-sample Hann window (the current 160 samples plus the last 96 of the previous frame), which
//! gives 31.25 Hz bins over the telephone band. Pitch strength is the peak of the normalised
//! autocorrelation over lags 20..=100 (400 Hz down to 80 Hz), computed as a 128-point inverse FFT
//! of the magnitude spectrum's 0–2 kHz half (a "generalised" autocorrelation, compressed so that
//! one loud partial does not dominate, sampled every 2 lags and refined by a parabola). The
//! autocorrelation is circular over 256 samples; the Hann taper keeps the aliased lags
//! (156..236) small, which is good enough for a classifier feature. Logarithms use a short
//! polynomial ([`log2`], 3e-5 error) instead of libm: the classifier was trained on it.

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
        *floor = self.current;
        for h in &self.history[..used] {
            for (f, &x) in floor.iter_mut().zip(h) {
                *f = f.min(x);
            }
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

/// Shortest pitch lag searched, in samples at 8 kHz (400 Hz).
const MIN_LAG: usize = 20;
/// Longest pitch lag searched, in samples at 8 kHz (80 Hz).
const MAX_LAG: usize = 100;
/// Length of the inverse FFT for the pitch autocorrelation: half the forward length, so its
/// lags are 2 samples at 8 kHz (the autocorrelation of the 0–2 kHz band sampled at 4 kHz).
const PITCH_FFT_LEN: usize = FFT_LEN / 2;
/// Bins used for the pitch autocorrelation: 62.5 Hz to 2 kHz (hum and the inverse FFT's
/// Nyquist bin excluded). Voiced speech has its strongest harmonics there.
const PITCH_BINS: std::ops::Range<usize> = 2..PITCH_FFT_LEN / 2;
/// Bins whose power is needed: the pitch bins and the bands.
const POWER_BINS: usize = BAND_EDGES[BANDS];

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
    /// Power per bin (|X|²) up to the top band edge.
    power: [f32; POWER_BINS],
    /// Magnitude spectrum fed to the inverse FFT (its length is `PITCH_FFT_LEN / 2 + 1`).
    magnitude: Vec<Complex<f32>>,
    /// Autocorrelation out of the inverse FFT (`PITCH_FFT_LEN` lags of 2 samples, circular).
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
    /// The lag of that peak, in samples at 8 kHz (20..=100, interpolated; 8000 / lag is the
    /// pitch in Hz).
    pub(super) pitch_lag: f32,
}

impl FrontEnd {
    pub(super) fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(FFT_LEN);
        let ifft = planner.plan_fft_inverse(PITCH_FFT_LEN);
        let mut window = [0.0; FFT_LEN];
        for (i, w) in window.iter_mut().enumerate() {
            let x = std::f32::consts::TAU * (i as f32 + 0.5) / FFT_LEN as f32;
            *w = 0.5 - 0.5 * x.cos();
        }
        Self {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            power: [0.0; POWER_BINS],
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
        let mut lanes = [0.0f32; 8];
        for (h, s) in self.history[FFT_LEN - FRAME_SAMPLES..]
            .chunks_exact_mut(8)
            .zip(frame.chunks_exact(8))
        {
            for ((h, &s), e) in h.iter_mut().zip(s).zip(&mut lanes) {
                let x = f32::from(s) * SCALE;
                *e += x * x;
                *h = x;
            }
        }
        let energy: f32 = lanes.iter().sum();
        for ((i, &h), &w) in self.input.iter_mut().zip(&self.history).zip(&self.window) {
            *i = h * w;
        }
        // The buffers were made by this plan, so the lengths always match and this cannot fail.
        let _ =
            self.fft
                .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch);
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
        for (b, out) in bands.iter_mut().enumerate() {
            let mut p = POWER_FLOOR;
            for &x in &self.power[BAND_EDGES[b]..BAND_EDGES[b + 1]] {
                p += x;
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

    /// Pitch strength and lag from the spectrum of the last `analyse`: the peak of the
    /// autocorrelation of the compressed (magnitude) 0–2 kHz spectrum, sampled at 4 kHz and
    /// refined by a parabola through the peak and its neighbours.
    fn pitch(&mut self) -> (f32, f32) {
        for m in self.magnitude.iter_mut() {
            *m = Complex::new(0.0, 0.0);
        }
        for (m, &p) in self.magnitude[PITCH_BINS]
            .iter_mut()
            .zip(&self.power[PITCH_BINS])
        {
            m.re = p.sqrt();
        }
        // As above: buffers made by this plan, and the first and last bins are real (zero).
        let _ = self.ifft.process_with_scratch(
            &mut self.magnitude,
            &mut self.autocorr,
            &mut self.inverse_scratch,
        );
        let r = &self.autocorr;
        let r0 = r[0];
        if r0 <= 1e-9 {
            return (0.0, MIN_LAG as f32);
        }
        let (lo, hi) = (MIN_LAG / 2, MAX_LAG / 2);
        let mut best = f32::MIN;
        let mut at = lo;
        for (l, &v) in r[lo..=hi].iter().enumerate() {
            if v > best {
                best = v;
                at = l + lo;
            }
        }
        // `lo >= 1` and `hi + 1 < PITCH_FFT_LEN`, so both neighbours exist.
        let (y0, y1, y2) = (r[at - 1], best, r[at + 1]);
        let curve = y0 - 2.0 * y1 + y2;
        let offset = if curve < 0.0 {
            (0.5 * (y0 - y2) / curve).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let peak = y1 - 0.25 * (y0 - y2) * offset;
        let lag = (2.0 * (at as f32 + offset)).clamp(MIN_LAG as f32, MAX_LAG as f32);
        ((peak / r0).clamp(0.0, 1.0), lag)
    }
}

/// `10·log10(p)`, floored so digital silence stays finite; within 0.001 dB (see [`log2`]).
pub(super) fn power_db(p: f32) -> f32 {
    // 10·log10(2)
    const DB_PER_OCTAVE: f32 = 3.010_3;
    DB_PER_OCTAVE * log2(p.max(1e-13))
}

/// `log2(x)` for finite positive normal `x`, to within about 1e-4 (absolute): the exponent from
/// the bits and a polynomial for the mantissa in [0.75, 1.5). Cheaper than `f32::log2` and
/// branch-free, so loops over it vectorise.
pub(super) fn log2(x: f32) -> f32 {
    let bits = x.to_bits();
    // Re-centre the mantissa to [0.75, 1.5) so the polynomial works on a small interval
    // around 1: subtract the bits of 0.75 before splitting off the exponent.
    let offset = bits.wrapping_sub(0x3f40_0000);
    let exponent = (offset as i32 >> 23) as f32;
    let m = f32::from_bits((offset & 0x007f_ffff) + 0x3f40_0000) - 1.0;
    // log2(1 + m) for m in [-0.25, 0.5): a degree-5 least-squares fit, error below 3.1e-5.
    let p = m * (LOG2_C[0] + m * (LOG2_C[1] + m * (LOG2_C[2] + m * (LOG2_C[3] + m * LOG2_C[4]))));
    exponent + p
}

/// Coefficients of the `log2` mantissa polynomial (m¹ first).
const LOG2_C: [f32; 5] = [
    1.442_542,
    -0.721_636_5,
    0.489_788_2,
    -0.367_027_4,
    0.186_939_5,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;

    #[test]
    fn fast_log2_is_within_1e_4_of_libm_over_the_whole_range_used() {
        let mut x = 1e-13f32;
        while x < 1e6 {
            let err = (log2(x) - x.log2()).abs();
            assert!(err < 1e-4, "log2({x}) off by {err}");
            x *= 1.0137;
        }
        for p in [1.0f32, 2.0, 0.5, 0.75, 1.5, 1024.0] {
            assert!((log2(p) - p.log2()).abs() < 1e-4, "log2({p})");
        }
    }

    #[test]
    fn pitch_of_a_harmonic_tone_is_its_period_and_noise_is_weakly_pitched() {
        let mut fe = FrontEnd::new();
        let mut bands = [0.0; BANDS];
        let mut n = 0usize;
        let mut tone = |f0: f32| {
            std::array::from_fn(|_| {
                n += 1;
                let t = n as f32 / 8000.0;
                let x: f32 = (1..=8)
                    .map(|h| (TAU * f0 * h as f32 * t).sin() / h as f32)
                    .sum();
                (x * 6000.0) as i16
            })
        };
        let mut strengths = Vec::new();
        for f0 in [100.0f32, 160.0, 250.0, 380.0] {
            let mut a = FrameAnalysis::default();
            for _ in 0..3 {
                a = fe.analyse(&tone(f0), &mut bands);
            }
            let period = 8000.0 / f0;
            // The peak may sit at a multiple of the period (an octave error), never elsewhere.
            let periods = (a.pitch_lag / period).round().max(1.0);
            assert!(
                (a.pitch_lag - periods * period).abs() <= 0.05 * period,
                "{f0} Hz: lag {} for period {period}",
                a.pitch_lag
            );
            strengths.push(a.pitch_strength);
        }
        // A deterministic pseudo-random sequence (xorshift) as white noise.
        let mut s = 0x1234_5678u32;
        let mut noise = || {
            std::array::from_fn(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 16) as i16 / 4
            })
        };
        let mut worst = 0.0f32;
        for _ in 0..20 {
            worst = worst.max(fe.analyse(&noise(), &mut bands).pitch_strength);
        }
        // Low voices have harmonics closer than the window's main lobe, so they score lower
        // than high ones, but every tone scores above noise.
        let weakest = strengths.iter().copied().fold(1.0, f32::min);
        assert!(
            weakest > 1.5 * worst,
            "tones {strengths:?}, noise up to {worst}"
        );
        assert!(
            strengths[1..].iter().all(|&s| s > 0.6),
            "tones {strengths:?}"
        );
    }
}
