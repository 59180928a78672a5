//! The classifiers: two one-hidden-layer perceptrons (ReLU) over the standardised feature
//! vector, each with a logistic output, evaluated with the constants in `weights.rs`.
//!
//! - The **speech classifier** ([`speech_probability`]) gives the probability that the current
//!   frame is speech, from the last [`SPEECH_CONTEXT`] frames' standardised features stacked; it
//!   sustains speech and, at a high threshold, starts it.
//! - The **onset classifier** ([`onset_probability`]) is used only to start speech from
//!   silence: it was trained on the first frames of utterances (after at least 200 ms without
//!   speech) against non-speech frames only (gaps, noise, music), and sees the last
//!   [`ONSET_CONTEXT`] frames' standardised features stacked, so it can answer on the first
//!   frames of a word, before the speech classifier is sure.
//!
//! The weights are trained offline on the evaluation corpus's training sources by
//! `cargo bench --bench vad_eval -- --train` (seeded, deterministic) and written to `weights.rs`;
//! the trainer's forward pass is the same arithmetic (up to the order of the additions). No
//! allocation, no branches on the input except the clamp, so the cost per frame is fixed
//! (`SPEECH_CONTEXT × FEATURES × HIDDEN` multiply-adds, plus `ONSET_CONTEXT × FEATURES ×
//! ONSET_HIDDEN` while in silence). Hidden layers are evaluated input by input over a transposed
//! weight matrix (built at compile time), so the inner loop runs over the hidden units with no
//! dependency between them and vectorises.

use super::extract::FEATURES;
use super::weights::{
    B1, B2, FEATURE_MEAN, FEATURE_SCALE, HIDDEN, ONSET_B1, ONSET_B2, ONSET_HIDDEN, ONSET_W1,
    ONSET_W2, SPEECH_CONTEXT, W1, W2,
};

/// Standardised inputs are clamped to this many standard deviations, so out-of-range input
/// (digital silence, clipping) cannot drive the network far outside what it was trained on.
pub(super) const INPUT_CLAMP: f32 = 5.0;

/// Frames of standardised features the onset classifier sees: this one and the two before.
pub(super) const ONSET_CONTEXT: usize = 3;

/// Inputs of the onset classifier: [`ONSET_CONTEXT`] feature vectors, newest first.
const ONSET_INPUTS: usize = ONSET_CONTEXT * FEATURES;
/// Inputs of the speech classifier: [`SPEECH_CONTEXT`] feature vectors, newest first.
const SPEECH_INPUTS: usize = SPEECH_CONTEXT * FEATURES;

// The generated weights must match the feature extractor and the context kept by `Vad`.
const _: () = assert!(FEATURE_MEAN.len() == FEATURES && W1.len() == HIDDEN);
const _: () = assert!(W1[0].len() == SPEECH_INPUTS && SPEECH_CONTEXT <= ONSET_CONTEXT);
const _: () = assert!(ONSET_W1.len() == ONSET_HIDDEN && ONSET_W1[0].len() == ONSET_INPUTS);

/// Whether no weight of an `H × N` matrix is subnormal (the trainer writes them as 0: on x86 a
/// multiply by a subnormal costs about a hundred normal ones).
const fn all_normal<const H: usize, const N: usize>(w: &[[f32; N]; H]) -> bool {
    let mut j = 0;
    while j < H {
        let mut i = 0;
        while i < N {
            if w[j][i].is_subnormal() {
                return false;
            }
            i += 1;
        }
        j += 1;
    }
    true
}
const _: () = assert!(all_normal(&W1) && all_normal(&ONSET_W1));

/// Transposes an `H × N` weight matrix at compile time: one row of `H` weights per input.
const fn transpose<const H: usize, const N: usize>(w: &[[f32; N]; H]) -> [[f32; H]; N] {
    let mut t = [[0.0; H]; N];
    let mut j = 0;
    while j < H {
        let mut i = 0;
        while i < N {
            t[i][j] = w[j][i];
            i += 1;
        }
        j += 1;
    }
    t
}

/// `W1` transposed: one row of `HIDDEN` weights per input.
const W1_T: [[f32; HIDDEN]; SPEECH_INPUTS] = transpose(&W1);
/// `ONSET_W1` transposed: one row of `ONSET_HIDDEN` weights per input.
const ONSET_W1_T: [[f32; ONSET_HIDDEN]; ONSET_INPUTS] = transpose(&ONSET_W1);

/// Standardises raw features into `z`: mean removed, scaled to unit deviation, clamped to
/// ±[`INPUT_CLAMP`].
pub(super) fn standardise(x: &[f32; FEATURES], z: &mut [f32; FEATURES]) {
    for (((z, &x), &m), &s) in z.iter_mut().zip(x).zip(&FEATURE_MEAN).zip(&FEATURE_SCALE) {
        *z = ((x - m) * s).clamp(-INPUT_CLAMP, INPUT_CLAMP);
    }
}

/// Hidden layer (input by input over the transposed weights), ReLU and logistic output.
fn perceptron<const H: usize>(
    inputs: impl Iterator<Item = f32>,
    w1_t: &[[f32; H]],
    b1: &[f32; H],
    w2: &[f32; H],
    b2: f32,
) -> f32 {
    let mut hidden = *b1;
    for (z, row) in inputs.zip(w1_t) {
        for (h, &w) in hidden.iter_mut().zip(row) {
            *h += w * z;
        }
    }
    let mut lanes = [0.0f32; 8];
    for (h, w) in hidden.chunks_exact(8).zip(w2.chunks_exact(8)) {
        for ((l, &h), &w) in lanes.iter_mut().zip(h).zip(w) {
            *l += w * h.max(0.0);
        }
    }
    let mut out = b2;
    for (h, &w) in hidden
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(w2.chunks_exact(8).remainder())
    {
        out += w * h.max(0.0);
    }
    out += lanes.iter().sum::<f32>();
    1.0 / (1.0 + (-out).exp())
}

/// Probability (0..=1) that the newest frame of `context` (standardised features, newest first)
/// is speech.
pub(super) fn speech_probability(context: &[[f32; FEATURES]; ONSET_CONTEXT]) -> f32 {
    perceptron(
        context[..SPEECH_CONTEXT].iter().flatten().copied(),
        &W1_T,
        &B1,
        &W2,
        B2,
    )
}

/// Probability (0..=1) that a new utterance starts on the newest of `context` (standardised
/// features, newest first) rather than the frame being noise, music or silence.
pub(super) fn onset_probability(context: &[[f32; FEATURES]; ONSET_CONTEXT]) -> f32 {
    perceptron(
        context.iter().flatten().copied(),
        &ONSET_W1_T,
        &ONSET_B1,
        &ONSET_W2,
        ONSET_B2,
    )
}
