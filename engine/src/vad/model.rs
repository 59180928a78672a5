//! The speech classifier: a one-hidden-layer perceptron (ReLU) over the standardised feature
//! vector, with a logistic output, evaluated with the constants in `weights.rs`.
//!
//! The weights are trained offline on the tuning half of the evaluation corpus by
//! `cargo bench --bench vad_eval -- --train` (seeded, deterministic) and written to `weights.rs`;
//! the trainer's forward pass is the same arithmetic (up to the order of the additions). No
//! allocation, no branches on the input except the clamp, so the cost per frame is fixed
//! (`FEATURES × HIDDEN` multiply-adds). The hidden layer is evaluated input by input over a
//! transposed weight matrix (built at compile time), so the inner loop runs over the hidden
//! units with no dependency between them and vectorises.

use super::extract::FEATURES;
use super::weights::{B1, B2, FEATURE_MEAN, FEATURE_SCALE, HIDDEN, W1, W2};

/// Standardised inputs are clamped to this many standard deviations, so out-of-range input
/// (digital silence, clipping) cannot drive the network far outside what it was trained on.
pub(super) const INPUT_CLAMP: f32 = 5.0;

// The generated weights must match the feature extractor.
const _: () = assert!(FEATURE_MEAN.len() == FEATURES && W1.len() == HIDDEN);

/// `W1` transposed: one row of `HIDDEN` weights per input.
const W1_T: [[f32; HIDDEN]; FEATURES] = {
    let mut t = [[0.0; HIDDEN]; FEATURES];
    let mut j = 0;
    while j < HIDDEN {
        let mut i = 0;
        while i < FEATURES {
            t[i][j] = W1[j][i];
            i += 1;
        }
        j += 1;
    }
    t
};

/// Probability (0..=1) that the frame whose features are `x` is speech.
pub(super) fn speech_probability(x: &[f32; FEATURES]) -> f32 {
    let mut hidden = B1;
    for (((&x, &m), &s), row) in x.iter().zip(&FEATURE_MEAN).zip(&FEATURE_SCALE).zip(&W1_T) {
        let z = ((x - m) * s).clamp(-INPUT_CLAMP, INPUT_CLAMP);
        for (h, &w) in hidden.iter_mut().zip(row) {
            *h += w * z;
        }
    }
    let mut lanes = [0.0f32; 8];
    for (h, w) in hidden.chunks_exact(8).zip(W2.chunks_exact(8)) {
        for ((l, &h), &w) in lanes.iter_mut().zip(h).zip(w) {
            *l += w * h.max(0.0);
        }
    }
    let mut out = B2;
    for (h, &w) in hidden
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(W2.chunks_exact(8).remainder())
    {
        out += w * h.max(0.0);
    }
    out += lanes.iter().sum::<f32>();
    1.0 / (1.0 + (-out).exp())
}
