//! The speech classifier: a one-hidden-layer perceptron (ReLU) over the standardised feature
//! vector, with a logistic output, evaluated with the constants in `weights.rs`.
//!
//! The weights are trained offline on the tuning half of the evaluation corpus by
//! `cargo bench --bench vad_eval -- --train` (seeded, deterministic) and written to `weights.rs`;
//! the trainer's forward pass is the same arithmetic. No allocation, no branches on the input
//! except the clamp, so the cost per frame is fixed (about `FEATURES × HIDDEN` multiply-adds).

use super::extract::FEATURES;
use super::weights::{B1, B2, FEATURE_MEAN, FEATURE_SCALE, HIDDEN, W1, W2};

/// Standardised inputs are clamped to this many standard deviations, so out-of-range input
/// (digital silence, clipping) cannot drive the network far outside what it was trained on.
pub(super) const INPUT_CLAMP: f32 = 5.0;

// The generated weights must match the feature extractor.
const _: () = assert!(FEATURE_MEAN.len() == FEATURES && W1.len() == HIDDEN);

/// Probability (0..=1) that the frame whose features are `x` is speech.
pub(super) fn speech_probability(x: &[f32; FEATURES]) -> f32 {
    let mut z = [0.0f32; FEATURES];
    for (((z, &x), &m), &s) in z.iter_mut().zip(x).zip(&FEATURE_MEAN).zip(&FEATURE_SCALE) {
        *z = ((x - m) * s).clamp(-INPUT_CLAMP, INPUT_CLAMP);
    }
    let mut out = B2;
    for ((row, &b), &w) in W1.iter().zip(&B1).zip(&W2) {
        let a: f32 = b + row.iter().zip(&z).map(|(w, z)| w * z).sum::<f32>();
        out += w * a.max(0.0);
    }
    1.0 / (1.0 + (-out).exp())
}
