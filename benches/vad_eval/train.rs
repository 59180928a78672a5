//! The trainer of the VAD's speech and onset classifiers (`cargo bench --bench vad_eval -- --train`).
//!
//! Training sources only: up to [`TRAIN_PER_SOURCE`] utterances from every training speech source,
//! mixed clean, under white and pink noise, babble and the training soundtracks at several SNRs
//! (a random speech gain per mix), plus the training soundtracks, babble and pink noise alone. The
//! speech classifier (one ReLU hidden layer, logistic output) is fitted by Adam on cross-entropy,
//! the first frames of each utterance weighted up. The onset classifier (used only to start
//! speech) is fitted next on the first frames of utterances against non-speech frames, from the
//! last three frames' features. The gate is then chosen on the validation sources, and a
//! trade-off sweep is printed.

use std::fmt::Write as _;
use std::path::Path;

use handset_engine::vad::{FEATURE_COUNT, SpeechGate, Vad, VadConfig, VadTransition};
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::{self, Kind, Split};
use crate::{
    Args, CONDITIONS, Detector, Noises, alone, f1_of, onset_delays, percentile, run_detector,
    to_frames,
};

/// Seed of the training draw and the speech classifier's fit.
const TRAIN_SEED: u64 = 0x5EED_0014;
/// Seed of the onset classifier's fit.
const ONSET_SEED: u64 = 0x5EED_0015;
/// Seed of the validation draw used to choose the gate.
const GATE_SEED: u64 = 0x5EED_0016;
/// Utterances drawn from each recorded training voice, and from each recorded validation voice
/// (a tenth of that from each synthetic one).
const TRAIN_PER_SOURCE: usize = 150;
const VALID_PER_SOURCE: usize = 120;

/// For each label: `None` for a non-speech frame, else how many frames into its speech run the
/// frame is, counting only runs that follow at least [`ONSET_GAP_FRAMES`] non-speech frames
/// (frames of other runs count as `usize::MAX`, i.e. never an onset frame).
fn run_positions(labels: &[bool]) -> impl Iterator<Item = Option<usize>> + '_ {
    let mut quiet = ONSET_GAP_FRAMES;
    let mut into_run = usize::MAX;
    labels.iter().map(move |&l| {
        if !l {
            quiet += 1;
            return None;
        }
        if quiet >= ONSET_GAP_FRAMES {
            into_run = 0;
        }
        quiet = 0;
        let at = into_run;
        into_run = into_run.saturating_add(1);
        Some(at)
    })
}

/// Training weights for one mix's labels: the first [`ONSET_FRAMES`] frames of every speech run
/// that follows at least [`ONSET_GAP_FRAMES`] non-speech frames get `onset_weight`, every other
/// frame 1.
fn onset_weights(labels: &[bool], onset_weight: f32, out: &mut Vec<f32>) {
    out.extend(run_positions(labels).map(|at| match at {
        Some(at) if at < ONSET_FRAMES => onset_weight,
        _ => 1.0,
    }));
}

/// The onset classifier's training target for one mix's labels: `Some(true)` for the first
/// `frames` frames of every speech run that follows at least [`ONSET_GAP_FRAMES`]
/// non-speech frames, `Some(false)` for non-speech frames, `None` (not used) for the other
/// speech frames.
fn onset_targets(labels: &[bool], frames: usize, out: &mut Vec<Option<bool>>) {
    out.extend(run_positions(labels).map(|at| match at {
        None => Some(false),
        Some(at) => (at < frames).then_some(true),
    }));
}

/// The onset classifier's input for frame `r` of standardised features `z` (row-major): the
/// frames `r`, `r - 1`, ... (`context` of them, newest first), never reaching before
/// `first` (the start of the signal), where the earliest frame is repeated, as in the engine.
fn stacked_input(z: &[f32], r: usize, first: usize, context: usize, out: &mut Vec<f32>) {
    for k in 0..context {
        let i = r.saturating_sub(k).max(first);
        out.extend_from_slice(&z[i * FEATURE_COUNT..(i + 1) * FEATURE_COUNT]);
    }
}

/// The engine evaluates the onset classifier only on frames with at least this speech
/// probability (must equal the engine's `ONSET_MIN_SPEECH_PROBABILITY`).
const ONSET_MIN_SPEECH_PROBABILITY: f32 = 0.1;

/// Frames the onset classifier sees (must equal the engine's `ONSET_CONTEXT`).
const ONSET_CONTEXT: usize = 3;

/// Speech frames at the start of an utterance weighted up in training (100 ms).
const ONSET_FRAMES: usize = 5;
/// Non-speech frames before a speech run for it to count as an utterance start (200 ms).
const ONSET_GAP_FRAMES: usize = 10;

/// Feature vectors (row-major, [`FEATURE_COUNT`] per frame) of a signal, from the engine's own
/// extractor.
fn features_of(pcm: &[i16], out: &mut Vec<f32>) {
    let mut vad = Vad::new(&VadConfig::default()).expect("the default config is valid");
    for f in to_frames(pcm) {
        vad.push(&f);
        out.extend_from_slice(vad.features());
    }
}

/// The classifier: one ReLU hidden layer and a logistic output, on standardised, clamped
/// inputs. The same arithmetic as `engine/src/vad/model.rs`.
struct Mlp {
    inputs: usize,
    hidden: usize,
    /// `[w1 (hidden × inputs, row per unit) | b1 (hidden) | w2 (hidden) | b2]`.
    params: Vec<f32>,
}

/// Must equal the engine's `INPUT_CLAMP`.
const INPUT_CLAMP: f32 = 5.0;

impl Mlp {
    fn new(inputs: usize, hidden: usize, rng: &mut ChaCha8Rng) -> Self {
        let mut params = vec![0.0; hidden * inputs + 2 * hidden + 1];
        let scale = (2.0 / inputs as f32).sqrt();
        for w in &mut params[..hidden * inputs] {
            *w = gaussian(rng) * scale;
        }
        let s2 = (1.0 / hidden as f32).sqrt();
        for w in &mut params[hidden * inputs + hidden..hidden * inputs + 2 * hidden] {
            *w = gaussian(rng) * s2;
        }
        Self {
            inputs,
            hidden,
            params,
        }
    }

    /// The output logit for a standardised input `z`; fills `act` with the hidden
    /// pre-activations.
    fn forward(&self, z: &[f32], act: &mut [f32]) -> f32 {
        let (n, h) = (self.inputs, self.hidden);
        let (w1, rest) = self.params.split_at(h * n);
        let (b1, rest) = rest.split_at(h);
        let (w2, b2) = rest.split_at(h);
        let mut out = b2[0];
        for j in 0..h {
            let a = b1[j]
                + w1[j * n..(j + 1) * n]
                    .iter()
                    .zip(z)
                    .map(|(w, z)| w * z)
                    .sum::<f32>();
            act[j] = a;
            out += w2[j] * a.max(0.0);
        }
        out
    }

    /// Adds the cross-entropy gradient for one example (`z`, label `y`) to `grad`.
    fn backward(&self, z: &[f32], y: f32, weight: f32, act: &mut [f32], grad: &mut [f32]) -> f32 {
        let (n, h) = (self.inputs, self.hidden);
        let logit = self.forward(z, act);
        let p = sigmoid(logit);
        let d = (p - y) * weight;
        let w2_at = h * n + h;
        for j in 0..h {
            let a = act[j];
            if a > 0.0 {
                grad[w2_at + j] += d * a;
                let g = d * self.params[w2_at + j];
                grad[h * n + j] += g;
                for (gw, &zi) in grad[j * n..(j + 1) * n].iter_mut().zip(z) {
                    *gw += g * zi;
                }
            }
        }
        grad[w2_at + h] += d;
        let p = p.clamp(1e-7, 1.0 - 1e-7);
        -weight * (y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Standardisation: per-feature mean and 1/std over the training frames.
fn standardiser(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / FEATURE_COUNT;
    let mut mean = vec![0.0f64; FEATURE_COUNT];
    let mut sq = vec![0.0f64; FEATURE_COUNT];
    for row in x.chunks_exact(FEATURE_COUNT) {
        for (i, &v) in row.iter().enumerate() {
            mean[i] += f64::from(v);
            sq[i] += f64::from(v) * f64::from(v);
        }
    }
    let mut scale = vec![0.0f32; FEATURE_COUNT];
    for i in 0..FEATURE_COUNT {
        mean[i] /= rows as f64;
        let var = (sq[i] / rows as f64 - mean[i] * mean[i]).max(1e-12);
        scale[i] = (1.0 / var.sqrt()) as f32;
    }
    (mean.iter().map(|&m| m as f32).collect(), scale)
}

fn standardise(x: &mut [f32], mean: &[f32], scale: &[f32]) {
    for row in x.chunks_exact_mut(FEATURE_COUNT) {
        for ((v, &m), &s) in row.iter_mut().zip(mean).zip(scale) {
            *v = ((*v - m) * s).clamp(-INPUT_CLAMP, INPUT_CLAMP);
        }
    }
}

/// Fits the classifier with Adam on mini-batches (seeded shuffles).
fn fit(
    x: &[f32],
    y: &[f32],
    weights: &[f32],
    hidden: usize,
    epochs: usize,
    rng: &mut ChaCha8Rng,
) -> Mlp {
    let n = x.len() / y.len();
    let rows = y.len();
    let mut mlp = Mlp::new(n, hidden, rng);
    let p = mlp.params.len();
    let (mut m, mut v) = (vec![0.0f32; p], vec![0.0f32; p]);
    let mut grad = vec![0.0f32; p];
    let mut act = vec![0.0f32; hidden];
    let mut order: Vec<usize> = (0..rows).collect();
    let batch = 256;
    let (b1, b2, eps, decay) = (0.9f32, 0.999f32, 1e-8f32, 1e-4f32);
    let mut step = 0i32;
    for epoch in 0..epochs {
        order.shuffle(rng);
        let lr = 3e-3 * 0.5f32.powf(epoch as f32 / (epochs as f32 / 3.0));
        let mut loss = 0.0f64;
        for chunk in order.chunks(batch) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &r in chunk {
                let z = &x[r * n..(r + 1) * n];
                loss += f64::from(mlp.backward(z, y[r], weights[r], &mut act, &mut grad));
            }
            step += 1;
            let bc1 = 1.0 - b1.powi(step);
            let bc2 = 1.0 - b2.powi(step);
            for i in 0..p {
                let mut g = grad[i] / chunk.len() as f32;
                if i < hidden * n || (hidden * n + hidden..hidden * n + 2 * hidden).contains(&i) {
                    g += decay * mlp.params[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                mlp.params[i] -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
            }
        }
        println!("epoch {epoch}: lr {lr:.5} loss {:.4}", loss / rows as f64);
    }
    mlp
}

/// Per-frame speech probabilities, onset probabilities and levels of a signal.
struct Probabilities {
    speech: Vec<f32>,
    onset: Vec<f32>,
    levels: Vec<f32>,
}

/// Per-frame probabilities of a signal, with the trained classifiers.
fn probabilities(
    mlp: &Mlp,
    onset: &Mlp,
    pcm: &[i16],
    mean: &[f32],
    scale: &[f32],
) -> Probabilities {
    let mut x = Vec::new();
    features_of(pcm, &mut x);
    let levels: Vec<f32> = x.chunks_exact(FEATURE_COUNT).map(|r| r[0]).collect();
    standardise(&mut x, mean, scale);
    let mut act = vec![0.0f32; mlp.hidden.max(onset.hidden)];
    let mut input = Vec::new();
    let speech = (0..levels.len())
        .map(|r| {
            input.clear();
            stacked_input(&x, r, 0, mlp.inputs / FEATURE_COUNT, &mut input);
            sigmoid(mlp.forward(&input, &mut act))
        })
        .collect();
    let onset = (0..levels.len())
        .map(|r| {
            input.clear();
            stacked_input(&x, r, 0, ONSET_CONTEXT, &mut input);
            sigmoid(onset.forward(&input, &mut act))
        })
        .collect();
    Probabilities {
        speech,
        onset,
        levels,
    }
}

/// The smoothed decisions and start count of the engine's gate over precomputed probabilities.
fn gate_decisions(p: &Probabilities, c: &VadConfig, out: &mut Vec<bool>) -> usize {
    let mut gate = SpeechGate::new(c.attack_frames, c.hangover_frames);
    out.clear();
    let mut starts = 0;
    for ((&p, &o), &l) in p.speech.iter().zip(&p.onset).zip(&p.levels) {
        let likely = if gate.is_speech() {
            p >= c.sustain_probability
        } else {
            p >= c.start_probability
                || (p >= ONSET_MIN_SPEECH_PROBABILITY
                    && c.onset_probability.is_some_and(|t| o >= t))
        };
        let raw = l >= c.min_level_dbfs && likely;
        if let Some(VadTransition::SpeechStarted { .. }) = gate.push(raw) {
            starts += 1;
        }
        out.push(gate.is_speech());
    }
    starts
}

/// Onset thresholds searched (`None`: the onset classifier off).
const ONSET_GRID: [Option<f32>; 11] = [
    None,
    Some(0.5),
    Some(0.7),
    Some(0.8),
    Some(0.9),
    Some(0.95),
    Some(0.97),
    Some(0.98),
    Some(0.99),
    Some(0.995),
    Some(0.998),
];

/// One gate's validation scores.
#[derive(Default)]
struct GateStats {
    /// Per condition, in [`CONDITIONS`] order.
    f1: Vec<f64>,
    median_ms: Vec<f64>,
    p90_ms: Vec<f64>,
    /// False starts per minute of validation music alone.
    starts: f64,
    /// Fraction of music-alone frames judged speech.
    on: f64,
    /// The same with the call layer's 500 ms hangover (its turn-taking config).
    on_turn: f64,
    /// False starts per minute of validation babble alone.
    babble_starts: f64,
}

/// Conditions with an F1 target (clean, babble, pink and music at 10 dB) and their targets.
const F1_TARGETS: [f64; 4] = [0.95, 0.92, 0.92, 0.92];
/// Onset median target from silence (ms), and the false-start rates (per minute) the gate aims under.
const ONSET_TARGET_MS: f64 = 40.0;
const MUSIC_STARTS_AIM: f64 = 0.5;
const BABBLE_STARTS_AIM: f64 = 0.25;

impl GateStats {
    /// The gate-choice objective (see docs/vad-eval.md, "Training"): mean F1 over the first five
    /// conditions, less penalties for false starts (steeper beyond the aims), music frames
    /// judged speech, median onsets beyond 40 ms and F1 below the targets.
    fn objective(&self, args: &Args) -> f64 {
        let f1 = &self.f1[..5];
        let mean_f1 = f1.iter().sum::<f64>() / f1.len() as f64;
        let short: f64 = F1_TARGETS
            .iter()
            .zip(f1)
            .map(|(t, f)| (t - f).max(0.0))
            .sum();
        let late_ms: f64 = self.median_ms[..5]
            .iter()
            .map(|m| (m - ONSET_TARGET_MS).max(0.0))
            .sum();
        mean_f1
            - args.start_penalty * (self.starts + self.babble_starts)
            - 0.05
                * ((self.starts - MUSIC_STARTS_AIM).max(0.0)
                    + (self.babble_starts - BABBLE_STARTS_AIM).max(0.0))
            - 0.05 * self.on
            - 0.1 * self.on_turn
            - args.onset_penalty * late_ms / 20.0
            - 0.5 * short
    }

    fn line(&self) -> String {
        format!(
            "f1={:.3?} medians={:.0?} p90={:.0?} music starts/min={:.2} music on={:.3} (turn {:.3}) babble starts/min={:.2}",
            self.f1,
            self.median_ms,
            self.p90_ms,
            self.starts,
            self.on,
            self.on_turn,
            self.babble_starts
        )
    }
}

fn print_row(c: &VadConfig, s: &GateStats) {
    println!(
        "| {} | {} | {} | {:.3?} | {:.0?} | {:.0?} | {:.2} | {:.3} | {:.3} | {:.2} |",
        c.start_probability,
        c.sustain_probability,
        c.onset_probability
            .map_or("off".to_owned(), |o| o.to_string()),
        s.f1,
        s.median_ms,
        s.p90_ms,
        s.starts,
        s.on,
        s.on_turn,
        s.babble_starts,
    );
}

/// Appends one training mix: its features, labels, weights, onset targets and bookkeeping.
struct TrainingSet {
    x: Vec<f32>,
    y: Vec<f32>,
    w: Vec<f32>,
    /// Per frame: the onset target and the first frame of its mix.
    onset_y: Vec<Option<bool>>,
    mix_first: Vec<usize>,
    /// Per frame: whether it is from a noise-alone mix (music, babble or pink noise).
    alone: Vec<bool>,
}

impl TrainingSet {
    fn push(&mut self, args: &Args, pcm: &[i16], labels: Option<&[bool]>, what: &str) {
        let first = self.y.len();
        let before = self.x.len();
        features_of(pcm, &mut self.x);
        let frames = (self.x.len() - before) / FEATURE_COUNT;
        match labels {
            Some(labels) => {
                self.y
                    .extend(labels.iter().map(|&l| f32::from(u8::from(l))));
                onset_weights(labels, args.onset_weight, &mut self.w);
                onset_targets(labels, args.onset_frames, &mut self.onset_y);
                self.alone.resize(self.y.len(), false);
            }
            None => {
                self.y.extend(std::iter::repeat_n(0.0, frames));
                self.w.extend(std::iter::repeat_n(1.0, frames));
                self.onset_y.resize(self.y.len(), Some(false));
                self.alone.resize(self.y.len(), true);
            }
        }
        self.mix_first.resize(self.y.len(), first);
        println!("training mix {what}: {frames} frames");
    }
}

/// Trains the classifiers on the training sources, picks the gate on the validation sources and
/// writes `engine/src/vad/weights.rs`.
pub fn train(args: &Args) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(TRAIN_SEED);
    let speech = data::sources(Kind::Speech, Split::Train)?;
    let music = data::music(Split::Train)?;
    let corpus = data::build_corpus(&speech, TRAIN_PER_SOURCE, &mut rng)?;
    let n = corpus.clean.len();
    println!(
        "training: {} utterances from {} speech sources ({:.1} min); music: {}",
        corpus.prompts.len(),
        speech.len(),
        n as f64 / 8000.0 / 60.0,
        music
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let noises = Noises::new(&speech, n, &music, &mut rng)?;
    let mut set = TrainingSet {
        x: Vec::new(),
        y: Vec::new(),
        w: Vec::new(),
        onset_y: Vec::new(),
        mix_first: Vec::new(),
        alone: Vec::new(),
    };
    let variants: [(&str, f64); 12] = [
        ("clean", 0.0),
        ("white", 10.0),
        ("white", 0.0),
        ("pink", 10.0),
        ("pink", 0.0),
        ("babble", 20.0),
        ("babble", 10.0),
        ("babble", 5.0),
        ("music", 20.0),
        ("music", 10.0),
        ("music", 5.0),
        ("music", 0.0),
    ];
    for (kind, snr) in variants {
        let gain = 10f64.powf(rng.gen_range(-12.0..6.0) / 20.0);
        let clean: Vec<f64> = corpus.clean.iter().map(|s| s * gain).collect();
        let power = corpus.active_power * gain * gain / 10f64.powf(snr / 10.0);
        let under: &[f64] = match kind {
            "white" => &noises.white,
            "pink" => &noises.pink,
            "babble" => &noises.babble,
            "music" => &noises.music,
            _ => &[],
        };
        let pcm = if under.is_empty() {
            data::mix(&clean, None)
        } else {
            // A random offset into the noise, so no two mixes share an alignment.
            let offset = rng.gen_range(0..under.len());
            let shifted: Vec<f64> = (0..n).map(|i| under[(offset + i) % under.len()]).collect();
            let g = (power / data::mean_power(&shifted)).sqrt();
            data::mix(&clean, Some((&shifted, g)))
        };
        set.push(
            args,
            &pcm,
            Some(&corpus.labels),
            &format!("{kind} {snr} dB"),
        );
    }
    for m in &music {
        let track = m.tracks.concat();
        for gain_db in [0.0, -10.0] {
            let g = 10f64.powf(gain_db / 20.0);
            let pcm = data::mix(&track.iter().map(|s| s * g).collect::<Vec<_>>(), None);
            set.push(
                args,
                &pcm,
                None,
                &format!("music alone {} {gain_db} dB", m.name),
            );
        }
    }
    for dbfs in [-30.0, -20.0] {
        set.push(
            args,
            &alone(&noises.babble, dbfs),
            None,
            &format!("babble alone {dbfs} dBFS"),
        );
    }
    set.push(
        args,
        &alone(&noises.pink, -30.0),
        None,
        "pink alone -30 dBFS",
    );
    drop(noises);
    let TrainingSet {
        mut x,
        y,
        w,
        onset_y,
        mix_first,
        alone: noise_alone,
    } = set;
    let (mean, scale) = standardiser(&x);
    standardise(&mut x, &mean, &scale);
    let mlp = if args.speech_context == 1 {
        fit(&x, &y, &w, args.hidden, args.epochs, &mut rng)
    } else {
        let mut sx = Vec::with_capacity(x.len() * args.speech_context);
        for (r, &first) in mix_first.iter().enumerate() {
            stacked_input(&x, r, first, args.speech_context, &mut sx);
        }
        fit(&sx, &y, &w, args.hidden, args.epochs, &mut rng)
    };

    // The onset classifier: utterance starts against non-speech frames, with context. Its own
    // seed, so the speech classifier and the validation draw do not depend on it.
    let mut onset_rng = ChaCha8Rng::seed_from_u64(ONSET_SEED);
    let positives = onset_y.iter().filter(|&&t| t == Some(true)).count();
    let negatives = onset_y.iter().filter(|&&t| t == Some(false)).count();
    // Positives weighted so that together they weigh a quarter of the negatives.
    let positive_weight = 0.25 * negatives as f32 / positives.max(1) as f32;
    let (mut ox, mut oy, mut ow) = (Vec::new(), Vec::new(), Vec::new());
    for (r, t) in onset_y.iter().enumerate() {
        let Some(t) = *t else { continue };
        stacked_input(&x, r, mix_first[r], ONSET_CONTEXT, &mut ox);
        oy.push(f32::from(u8::from(t)));
        ow.push(if t {
            positive_weight
        } else if noise_alone[r] {
            args.music_weight
        } else {
            1.0
        });
    }
    println!(
        "onset classifier: {positives} onset frames (weight {positive_weight:.1}) against {negatives} non-speech frames"
    );
    let onset_mlp = fit(
        &ox,
        &oy,
        &ow,
        args.onset_hidden,
        args.epochs,
        &mut onset_rng,
    );
    drop((ox, oy, ow, x));

    // Validation: the report's conditions on the validation sources.
    let mut vrng = ChaCha8Rng::seed_from_u64(GATE_SEED);
    let vspeech = data::sources(Kind::Speech, Split::Valid)?;
    let vmusic = data::music(Split::Valid)?;
    let vcorpus = data::build_corpus(&vspeech, VALID_PER_SOURCE, &mut vrng)?;
    let vnoises = Noises::new(&vspeech, vcorpus.clean.len(), &vmusic, &mut vrng)?;
    let mut sets = Vec::new();
    let base = VadConfig::default();
    for (name, under) in crate::conditions(&vcorpus, &vnoises) {
        let pcm = data::mix(&vcorpus.clean, under);
        let webrtc = f1_of(
            &run_detector(Detector::WebRtc, &pcm, &base).decisions,
            &vcorpus.labels,
        );
        println!("validation {name}: WebRTC mode 3 F1 {webrtc:.3}");
        sets.push(probabilities(&mlp, &onset_mlp, &pcm, &mean, &scale));
    }
    let music_pcm = data::mix(&vnoises.music, None);
    let minutes = music_pcm.len() as f64 / 8000.0 / 60.0;
    let music_p = probabilities(&mlp, &onset_mlp, &music_pcm, &mean, &scale);
    let babble_pcm = alone(&vnoises.babble, crate::NOISE_ALONE_DBFS);
    let babble_minutes = babble_pcm.len() as f64 / 8000.0 / 60.0;
    let babble_p = probabilities(&mlp, &onset_mlp, &babble_pcm, &mean, &scale);
    println!(
        "validation: {} utterances, {:.1} min; music alone {minutes:.1} min; babble alone {babble_minutes:.1} min",
        vcorpus.prompts.len(),
        vcorpus.clean.len() as f64 / 8000.0 / 60.0
    );

    let mut dec = Vec::new();
    let mut evaluate = |c: &VadConfig| {
        let mut stats = GateStats::default();
        for p in &sets {
            gate_decisions(p, c, &mut dec);
            let onset = onset_delays(&dec, &vcorpus, None).0;
            stats
                .median_ms
                .push(percentile(&onset, 0.5).unwrap_or(1000.0));
            stats.p90_ms.push(percentile(&onset, 0.9).unwrap_or(1000.0));
            stats.f1.push(f1_of(&dec, &vcorpus.labels));
        }
        stats.starts = gate_decisions(&music_p, c, &mut dec) as f64 / minutes;
        stats.on = dec.iter().filter(|&&d| d).count() as f64 / dec.len() as f64;
        let turn = VadConfig {
            hangover_frames: crate::TURN_HANGOVER,
            ..c.clone()
        };
        gate_decisions(&music_p, &turn, &mut dec);
        stats.on_turn = dec.iter().filter(|&&d| d).count() as f64 / dec.len() as f64;
        stats.babble_starts = gate_decisions(&babble_p, c, &mut dec) as f64 / babble_minutes;
        stats
    };
    let mut results = Vec::new();
    for attack in 1..=2 {
        for hangover in [0, 2, 4] {
            for start in [
                0.5f32, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999,
            ] {
                for sustain in [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
                    if sustain > start {
                        continue;
                    }
                    for onset in ONSET_GRID {
                        let c = VadConfig {
                            attack_frames: attack,
                            hangover_frames: hangover,
                            start_probability: start,
                            sustain_probability: sustain,
                            onset_probability: onset,
                            ..base.clone()
                        };
                        let stats = evaluate(&c);
                        results.push((stats.objective(args), stats, c));
                    }
                }
            }
        }
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (obj, stats, c) in results.iter().take(10) {
        println!("{obj:.4} {} {c:?}", stats.line());
    }
    // The trade-off around the chosen gate: the onset, start and sustain thresholds.
    let chosen = results[0].2.clone();
    println!(
        "\nvalidation trade-off (conditions: {})",
        CONDITIONS.join(", ")
    );
    println!(
        "| start | sustain | onset | F1 | median onset ms | p90 onset ms | music starts/min | music on | music on, hangover 25 | babble starts/min |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut sweep = vec![chosen.clone()];
    for onset in ONSET_GRID {
        sweep.push(VadConfig {
            onset_probability: onset,
            ..chosen.clone()
        });
    }
    for start in [0.95f32, 0.98, 0.99, 0.995, 0.997, 0.999] {
        sweep.push(VadConfig {
            start_probability: start,
            sustain_probability: chosen.sustain_probability.min(start),
            ..chosen.clone()
        });
    }
    for sustain in [0.3f32, 0.5, 0.7, 0.9] {
        sweep.push(VadConfig {
            sustain_probability: sustain.min(chosen.start_probability),
            ..chosen.clone()
        });
    }
    for c in &sweep {
        let s = evaluate(c);
        print_row(c, &s);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src/vad/weights.rs");
    std::fs::write(
        &path,
        weights_source(&mlp, &onset_mlp, &mean, &scale, &chosen),
    )?;
    println!("wrote {} (run cargo fmt)", path.display());
    Ok(())
}

fn weights_source(mlp: &Mlp, onset: &Mlp, mean: &[f32], scale: &[f32], c: &VadConfig) -> String {
    let (n, h) = (FEATURE_COUNT, mlp.hidden);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "//! Generated by `cargo bench --bench vad_eval -- --train` (seeded; hidden {h}, epochs \
         and data in docs/vad-eval.md): do not edit by hand.\n"
    );
    let _ = writeln!(
        s,
        "/// Hidden units of the classifier.\npub(super) const HIDDEN: usize = {h};"
    );
    let _ = writeln!(
        s,
        "/// Frames of features the classifier sees, newest first.\npub(super) const SPEECH_CONTEXT: usize = {};",
        mlp.inputs / FEATURE_COUNT
    );
    let _ = writeln!(
        s,
        "/// Per-feature mean subtracted before the network.\npub(super) const FEATURE_MEAN: [f32; {n}] = {};",
        arr(mean)
    );
    let _ = writeln!(
        s,
        "/// Per-feature scale (1 / standard deviation) applied after the mean.\npub(super) const FEATURE_SCALE: [f32; {n}] = {};",
        arr(scale)
    );
    write_layers(
        &mut s,
        "",
        "",
        &format!(
            " (inputs: {} frames of features, newest first)",
            mlp.inputs / FEATURE_COUNT
        ),
        mlp,
    );
    let _ = writeln!(
        s,
        "/// Default attack in frames chosen on the tuning split.\npub(super) const TUNED_ATTACK_FRAMES: u32 = {};",
        c.attack_frames
    );
    let _ = writeln!(
        s,
        "/// Default hangover in frames chosen on the tuning split.\npub(super) const TUNED_HANGOVER_FRAMES: u32 = {};",
        c.hangover_frames
    );
    let _ = writeln!(
        s,
        "/// Default start probability chosen on the tuning split.\npub(super) const TUNED_START_PROBABILITY: f32 = {:?};",
        c.start_probability
    );
    let _ = writeln!(
        s,
        "/// Default sustain probability chosen on the tuning split.\npub(super) const TUNED_SUSTAIN_PROBABILITY: f32 = {:?};",
        c.sustain_probability
    );
    let _ = writeln!(
        s,
        "/// Hidden units of the onset classifier.\npub(super) const ONSET_HIDDEN: usize = {};",
        onset.hidden
    );
    write_layers(
        &mut s,
        "ONSET_",
        "Onset ",
        &format!(" (inputs: {ONSET_CONTEXT} frames of features, newest first)"),
        onset,
    );
    let _ = writeln!(
        s,
        "/// Default onset probability chosen on the tuning split (`None`: the onset classifier is off).\npub(super) const TUNED_ONSET_PROBABILITY: Option<f32> = {:?};",
        c.onset_probability
    );
    s
}

/// `[a, b, …]` with every value printed exactly (`{:?}` round-trips an `f32`), subnormal values
/// as 0: weight decay leaves the weights of dead units subnormal, they add nothing, and on x86
/// each multiply by one costs about a hundred normal ones.
fn arr(v: &[f32]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|&x| if x.is_subnormal() { 0.0 } else { x })
        .map(|x| format!("{x:?}"))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Writes `net`'s layers as `{prefix}W1`, `{prefix}B1`, `{prefix}W2` and `{prefix}B2`; each doc
/// line starts with `what` ("" for the speech classifier, "Onset " for the onset classifier)
/// and the weights' doc ends with `rows_note`.
fn write_layers(s: &mut String, prefix: &str, what: &str, rows_note: &str, net: &Mlp) {
    let (n, h, p) = (net.inputs, net.hidden, &net.params);
    let doc = |text: &str| {
        if what.is_empty() {
            let mut chars = text.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        } else {
            format!("{what}{text}")
        }
    };
    let rows: Vec<String> = p[..h * n].chunks_exact(n).map(arr).collect();
    let _ = writeln!(
        s,
        "/// {}{rows_note}.\npub(super) const {prefix}W1: [[f32; {n}]; {h}] = [{}];",
        doc("hidden-layer weights, one row per hidden unit"),
        rows.join(", ")
    );
    let _ = writeln!(
        s,
        "/// {}.\npub(super) const {prefix}B1: [f32; {h}] = {};",
        doc("hidden-layer biases"),
        arr(&p[h * n..h * n + h])
    );
    let _ = writeln!(
        s,
        "/// {}.\npub(super) const {prefix}W2: [f32; {h}] = {};",
        doc("output weights"),
        arr(&p[h * n + h..h * n + 2 * h])
    );
    let _ = writeln!(
        s,
        "/// {}.\npub(super) const {prefix}B2: f32 = {:?};",
        doc("output bias"),
        p[h * n + 2 * h]
    );
}
