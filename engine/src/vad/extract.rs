//! Per-frame feature vector for the speech classifier: level, band SNRs against an adaptive
//! noise floor, spectral shape, and a few hundred milliseconds of context that tell speech from
//! music and noise (syllabic-rate energy modulation, spectral flux, low-energy-frame ratio, pitch
//! strength and pitch continuity), plus the last frames' SNRs so onsets are seen rising.
//!
//! The features depend on the input only, never on the classifier's decisions, so the classifier
//! can be trained offline on features computed once (`cargo bench --bench vad_eval -- --train`). The noise
//! floor's mean tracker adapts on frames that a fixed band-SNR test calls quiet, not on the
//! classifier's output, for the same reason. Everything lives in fixed-size arrays: `push` does
//! not allocate.

use super::features::{BANDS, FrontEnd, NOISE_SUBWINDOWS, NoiseTracker, log2, power_db};
use crate::time::FRAME_SAMPLES;

/// Number of features in [`Extractor::features`].
pub(super) const FEATURES: usize = 44;

/// Noise-floor memory in frames (4.8 s): the minimum tracker follows a step up in noise within
/// this many frames plus one sub-window.
pub(super) const NOISE_WINDOW_FRAMES: u32 = 240;
/// Added to the tracked band minima to estimate the mean noise level: 2.8 dB, as a power
/// ratio (10^0.28).
const NOISE_BIAS: f32 = 1.905_460_7;
/// Smoothing factor of the band powers fed to the minimum tracker, per frame.
const NOISE_SMOOTHING: f32 = 0.3;
/// Adaptation rate of the mean noise level on quiet frames, per frame.
const FLOOR_RISE: f32 = 0.02;
/// Adaptation rate of the mean noise level when a band is below it, per frame.
const FLOOR_FALL: f32 = 0.5;
/// Exponent of the generalised mean over band SNRs (near a soft maximum); the sum uses
/// `x³·√x`, so changing it means changing `push` too.
const SNR_EXPONENT: f32 = 3.5;
/// Upward and downward steps of the per-band quantile tracker, dB per frame: it settles where
/// 1/11 of frames are above it.
const QUANTILE_UP_DB: f32 = 0.02;
const QUANTILE_DOWN_DB: f32 = 0.2;
/// The fixed test that decides which frames feed the mean noise tracker: a mean band SNR above
/// this many dB...
const QUIET_SNR_DB: f32 = 3.4;
/// ...on a frame louder than this (dBFS) is not quiet.
const QUIET_LEVEL_DBFS: f32 = -56.0;
/// Pitch strength above which a frame counts as pitched for the continuity features.
const PITCHED: f32 = 0.5;
/// Number of cepstral coefficients (c1..) of the log band energies.
const CEPSTRA: usize = 6;
/// Bands averaged for the low-band SNR feature (219 Hz to 1.53 kHz, where voiced speech is
/// strongest).
const LOW_BANDS: usize = 6;
/// Band groups for the per-group modulation features (band index ranges).
const GROUPS: [(usize, usize); 4] = [(0, 3), (3, 6), (6, 9), (9, BANDS)];

/// The last `N` values of a per-frame series; before `N` frames only those seen.
#[derive(Clone, Debug)]
struct Ring<const N: usize> {
    buf: [f32; N],
    next: usize,
    len: usize,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Self {
        Self {
            buf: [0.0; N],
            next: 0,
            len: 0,
        }
    }

    fn push(&mut self, x: f32) {
        self.buf[self.next] = x;
        self.next = (self.next + 1) % N;
        self.len = (self.len + 1).min(N);
    }

    /// The values held, in no particular order (never empty after one `push`).
    fn values(&self) -> &[f32] {
        &self.buf[..self.len]
    }

    /// The value `k` frames before the newest (0 = newest); the oldest held if fewer.
    fn ago(&self, k: usize) -> f32 {
        let k = k.min(self.len.saturating_sub(1));
        self.buf[(self.next + N - 1 - k) % N]
    }

    /// Sum of all `N` slots; the slots not yet written hold 0.
    fn sum(&self) -> f32 {
        lane_sum(&self.buf)
    }

    fn mean(&self) -> f32 {
        self.sum() / self.len.max(1) as f32
    }

    fn std(&self) -> f32 {
        let m = self.mean();
        let mut lanes = [0.0f32; 8];
        let chunks = self.buf.chunks_exact(8);
        let mut rest = 0.0;
        for &x in chunks.remainder() {
            rest += (x - m) * (x - m);
        }
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += (x - m) * (x - m);
            }
        }
        // The unwritten slots hold 0 and each added m²; take them out again.
        let unwritten = (N - self.len) as f32;
        let sq = lanes.iter().sum::<f32>() + rest - unwritten * m * m;
        (sq.max(0.0) / self.len.max(1) as f32).sqrt()
    }

    fn max(&self) -> f32 {
        let v = self.values();
        let mut lanes = [f32::MIN; 8];
        let chunks = v.chunks_exact(8);
        let mut m = chunks.remainder().iter().copied().fold(f32::MIN, f32::max);
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l = l.max(x);
            }
        }
        for l in lanes {
            m = m.max(l);
        }
        m
    }

    fn min(&self) -> f32 {
        let v = self.values();
        let mut lanes = [f32::MAX; 8];
        let chunks = v.chunks_exact(8);
        let mut m = chunks.remainder().iter().copied().fold(f32::MAX, f32::min);
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l = l.min(x);
            }
        }
        for l in lanes {
            m = m.min(l);
        }
        m
    }

    /// Fraction of the values held that are below `t`.
    fn fraction_below(&self, t: f32) -> f32 {
        let v = self.values();
        let mut lanes = [0.0f32; 8];
        let chunks = v.chunks_exact(8);
        let mut n = chunks.remainder().iter().filter(|&&x| x < t).count() as f32;
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += if x < t { 1.0 } else { 0.0 };
            }
        }
        n += lanes.iter().sum::<f32>();
        n / v.len().max(1) as f32
    }
}

/// Sum of `v` in eight independent lanes (so the loop vectorises), then the lanes.
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Front end, noise floor and context: turns frames into feature vectors.
#[derive(Debug)]
pub(super) struct Extractor {
    front: FrontEnd,
    noise: NoiseTracker,
    bands: [f32; BANDS],
    smoothed: [f32; BANDS],
    floor: [f32; BANDS],
    /// Mean noise level per band (linear), adapted on quiet frames.
    mean_noise: [f32; BANDS],
    /// Quantile tracker per band, in dB.
    quantile_db: [f32; BANDS],
    /// Band levels of the previous frame, in dB.
    prev_db: [f32; BANDS],
    /// DCT-II basis for the cepstrum over the bands.
    dct: [[f32; BANDS]; CEPSTRA],
    level16: Ring<16>,
    level50: Ring<50>,
    flux16: Ring<16>,
    pitch8: Ring<8>,
    held16: Ring<16>,
    snr8: Ring<8>,
    groups16: [Ring<16>; GROUPS.len()],
    prev_lag: f32,
    prev_strength: f32,
    /// The previous frame's largest band SNR, in dB.
    snr_max_prev: f32,
    started: bool,
    level_dbfs: f32,
    snr_db: f32,
    features: [f32; FEATURES],
}

impl Extractor {
    pub(super) fn new() -> Self {
        let mut dct = [[0.0; BANDS]; CEPSTRA];
        for (k, row) in dct.iter_mut().enumerate() {
            for (b, d) in row.iter_mut().enumerate() {
                *d = (std::f32::consts::PI * (k + 1) as f32 * (b as f32 + 0.5) / BANDS as f32)
                    .cos()
                    / BANDS as f32;
            }
        }
        Self {
            front: FrontEnd::new(),
            noise: NoiseTracker::new(NOISE_WINDOW_FRAMES / NOISE_SUBWINDOWS as u32),
            bands: [0.0; BANDS],
            smoothed: [0.0; BANDS],
            floor: [0.0; BANDS],
            mean_noise: [0.0; BANDS],
            quantile_db: [0.0; BANDS],
            prev_db: [0.0; BANDS],
            dct,
            level16: Ring::new(),
            level50: Ring::new(),
            flux16: Ring::new(),
            pitch8: Ring::new(),
            held16: Ring::new(),
            snr8: Ring::new(),
            groups16: [Ring::new(), Ring::new(), Ring::new(), Ring::new()],
            prev_lag: 0.0,
            prev_strength: 0.0,
            snr_max_prev: 0.0,
            started: false,
            level_dbfs: -130.0,
            snr_db: 0.0,
            features: [0.0; FEATURES],
        }
    }

    /// Forgets all history (the FFT plans and tables are kept).
    pub(super) fn reset(&mut self) {
        self.front.reset();
        self.noise.reset();
        self.bands = [0.0; BANDS];
        self.smoothed = [0.0; BANDS];
        self.floor = [0.0; BANDS];
        self.mean_noise = [0.0; BANDS];
        self.quantile_db = [0.0; BANDS];
        self.prev_db = [0.0; BANDS];
        self.level16 = Ring::new();
        self.level50 = Ring::new();
        self.flux16 = Ring::new();
        self.pitch8 = Ring::new();
        self.held16 = Ring::new();
        self.snr8 = Ring::new();
        self.groups16 = [Ring::new(), Ring::new(), Ring::new(), Ring::new()];
        self.prev_lag = 0.0;
        self.prev_strength = 0.0;
        self.snr_max_prev = 0.0;
        self.started = false;
        self.level_dbfs = -130.0;
        self.snr_db = 0.0;
        self.features = [0.0; FEATURES];
    }

    /// The feature vector of the last frame pushed.
    pub(super) fn features(&self) -> &[f32; FEATURES] {
        &self.features
    }

    /// The last frame's mean power in dBFS.
    pub(super) fn level_dbfs(&self) -> f32 {
        self.level_dbfs
    }

    /// The last frame's generalised-mean band SNR in dB.
    pub(super) fn snr_db(&self) -> f32 {
        self.snr_db
    }

    /// Analyses one frame and updates [`Extractor::features`].
    pub(super) fn push(&mut self, frame: &[i16; FRAME_SAMPLES]) {
        let analysis = self.front.analyse(frame, &mut self.bands);
        let first = !self.started;
        if first {
            self.smoothed = self.bands;
            self.mean_noise = self.bands;
            for (q, &p) in self.quantile_db.iter_mut().zip(&self.bands) {
                *q = power_db(p);
            }
            self.started = true;
        } else {
            let a = NOISE_SMOOTHING;
            for (s, &p) in self.smoothed.iter_mut().zip(&self.bands) {
                *s = a * *s + (1.0 - a) * p;
            }
        }
        self.noise.update(&self.smoothed, &mut self.floor);

        let level = analysis.level_dbfs;
        let mut band_db = [0.0; BANDS];
        let mut noise_db = [0.0; BANDS];
        for b in 0..BANDS {
            band_db[b] = power_db(self.bands[b]);
            // The larger of the biased minimum and the mean level (one log: `power_db` is
            // monotonic); the quantile is applied below.
            noise_db[b] = power_db((self.floor[b] * NOISE_BIAS).max(self.mean_noise[b]));
        }
        let f = &mut self.features;
        let mut acc = 0.0;
        let mut floor_sum = 0.0;
        let mut flux = 0.0;
        let mut snr_max = 0.0f32;
        let mut snr_low = 0.0;
        for b in 0..BANDS {
            let p_db = band_db[b];
            let q = &mut self.quantile_db[b];
            let n_db = noise_db[b].max(*q);
            *q += if p_db > *q {
                QUANTILE_UP_DB
            } else {
                -QUANTILE_DOWN_DB
            };
            floor_sum += n_db;
            let snr = (p_db - n_db).clamp(0.0, 40.0);
            f[1 + b] = snr;
            snr_max = snr_max.max(snr);
            if b < LOW_BANDS {
                snr_low += snr;
            }
            let x = snr / 40.0;
            acc += x * x * x * x.sqrt(); // x^SNR_EXPONENT, with SNR_EXPONENT = 3.5
            flux += (p_db - if first { p_db } else { self.prev_db[b] }).abs();
        }
        let snr_db = 40.0 * (acc / BANDS as f32).powf(1.0 / SNR_EXPONENT);
        let quiet = level < QUIET_LEVEL_DBFS || snr_db < QUIET_SNR_DB;
        for (t, &p) in self.mean_noise.iter_mut().zip(&self.bands) {
            if p < *t {
                *t += FLOOR_FALL * (p - *t);
            } else if quiet {
                *t += FLOOR_RISE * (p - *t);
            }
        }
        flux /= BANDS as f32;
        self.prev_db = band_db;

        // Spectral shape: cepstrum of the band levels (the mean level is feature 0).
        for (k, row) in self.dct.iter().enumerate() {
            f[13 + k] = row.iter().zip(&band_db).map(|(d, x)| d * x).sum();
        }

        // Energy dynamics.
        let prev1 = if first { level } else { self.level16.ago(0) };
        let prev3 = if first { level } else { self.level16.ago(2) };
        let snr_prev1 = if first { snr_db } else { self.snr8.ago(0) };
        let snr_prev2 = if first { snr_db } else { self.snr8.ago(1) };
        let snr_min8 = if first { snr_db } else { self.snr8.min() };
        let max_prev = if first { snr_max } else { self.snr_max_prev };
        self.level16.push(level);
        self.level50.push(level);
        self.flux16.push(flux);
        self.snr8.push(snr_db);
        for (ring, &(lo, hi)) in self.groups16.iter_mut().zip(&GROUPS) {
            let p: f32 = self.bands[lo..hi].iter().sum();
            ring.push(power_db(p));
        }
        let low = self.level50.fraction_below(self.level50.mean() - 6.0);

        // Pitch strength and continuity.
        let strength = analysis.pitch_strength;
        let lag = analysis.pitch_lag;
        let both = strength > PITCHED && self.prev_strength > PITCHED;
        let change = if both {
            log2(lag / self.prev_lag).abs().min(1.0)
        } else {
            1.0
        };
        let held = both && (lag - self.prev_lag).abs() <= 1.0;
        self.prev_lag = lag;
        self.prev_strength = strength;
        self.pitch8.push(strength);
        self.held16.push(if held { 1.0 } else { 0.0 });

        f[0] = level;
        f[12] = snr_db;
        f[19] = flux;
        f[20] = level - prev1;
        f[21] = level - prev3;
        f[22] = self.level16.std();
        f[23] = self.flux16.mean();
        f[24] = low;
        f[25] = level - self.level50.max();
        f[26] = level - self.level50.min();
        f[27] = strength;
        f[28] = self.pitch8.mean();
        f[29] = self
            .pitch8
            .ago(0)
            .max(self.pitch8.ago(1))
            .max(self.pitch8.ago(2));
        f[30] = change;
        f[31] = self.held16.mean();
        for (k, ring) in self.groups16.iter().enumerate() {
            f[32 + k] = ring.std();
        }
        f[36] = self.snr8.mean();
        f[37] = floor_sum / BANDS as f32;
        // Onset: the last frames' SNRs, so the classifier sees the rise.
        f[38] = snr_prev1;
        f[39] = snr_prev2;
        f[40] = snr_max;
        f[41] = max_prev;
        f[42] = snr_db - snr_min8;
        f[43] = snr_low / LOW_BANDS as f32;
        self.snr_max_prev = snr_max;
        self.level_dbfs = level;
        self.snr_db = snr_db;
    }
}
