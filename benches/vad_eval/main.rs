//! VAD evaluation program: Handset's [`Vad`] against WebRTC VAD mode 3 (and Silero v6 with
//! `--silero`) on 8 kHz speech from many speakers, voices and languages, clean and under babble,
//! pink noise, white noise and music, every condition through a µ-law round trip; the call's
//! barge-in decision with its Silero onset check ([`checked_run`]); and the trainer of the VAD's
//! classifiers.
//!
//! Run with `cargo bench --bench vad_eval` (held-out sources; `-- --quick` for fewer utterances,
//! `-- --valid` for the validation sources). `-- --train` trains on the training sources, picks
//! the gate on the validation sources and writes `engine/src/vad/weights.rs` (seeded,
//! deterministic; run `cargo fmt` afterwards). Needs the corpus written by
//! `scripts/install-vad-data.sh`. Method and results: `docs/vad-eval.md`.
//!
//! Recipe:
//! - Sources are split whole ([`data::split_of`]): a speaker, a synthetic voice or a soundtrack
//!   is on one side only. The report draws up to `--per-source` utterances from every held-out
//!   speech source, brings each to −20 dBFS active level plus a random −6…+3 dB, and concatenates
//!   them with 0.5–1.5 s gaps.
//! - Labels come from the clean utterance: a 20 ms frame is speech if its mean power is above
//!   max(−55 dBFS, the utterance's loudest frame − 40 dB). Gap frames are non-speech.
//! - Conditions: clean; babble, pink noise, music and white noise at 10 dB SNR; music at 0 dB. SNR
//!   is relative to the active speech level; the noise runs under everything, gaps included.
//!   Babble is six talkers from the same side's speech sources; music is the side's soundtracks
//!   concatenated and looped. The mix is clipped to 16 bits and passed through G.711 µ-law.
//! - Detectors run causally, one frame at a time; a frame's decision is the state after pushing it.
//! - Onset delay: for each utterance, the frames from its first speech-labelled frame to the first
//!   frame (within the utterance) whose decision is speech; never is a missed onset.
//! - Noise alone: each held-out soundtrack at its own level, babble and pink noise at −30 dBFS,
//!   µ-law, no speech; false speech starts per minute (for a raw detector every run of speech
//!   frames is a start) and the fraction of frames judged speech.

mod data;
mod train;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use data::{Corpus, FRAME, Kind, Split, Under};
use handset_engine::PcmFrame;
use handset_engine::call::ONSET_PRE_ROLL;
use handset_engine::vad::{SpeechGate, Vad, VadConfig, VadTransition};
use handset_shell::onset_check::{Session, Silero, THRESHOLD};
use rand_chacha::ChaCha8Rng;

/// Seeds: the report's draw, the validation draw, and the trainer (see `train`).
const REPORT_SEED: u64 = 0x5EED_0013;
const VALID_SEED: u64 = 0x5EED_0012;
/// The call layer's turn-taking hangover (500 ms), reported next to the default.
pub const TURN_HANGOVER: u32 = 25;
/// Level of babble and pink noise when played alone (dBFS).
const NOISE_ALONE_DBFS: f64 = -30.0;
/// Talkers in the babble.
const BABBLE_TALKERS: usize = 6;
/// Local SNRs (dB) at which the ceiling's ideal detector still hears a speech frame.
const CEILING_SNR_DB: [f64; 3] = [0.0, -6.0, -12.0];
/// Hangovers (frames) the ceiling's ideal detector tries; it keeps the best.
const CEILING_HANGOVERS: [u32; 8] = [0, 2, 4, 6, 8, 12, 16, 25];

pub struct Args {
    per_source: usize,
    valid: bool,
    train: bool,
    hidden: usize,
    speech_context: usize,
    epochs: usize,
    start_penalty: f64,
    onset_penalty: f64,
    onset_weight: f32,
    onset_hidden: usize,
    onset_frames: usize,
    music_weight: f32,
    config: VadConfig,
    only: Option<String>,
    silero: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        per_source: 120,
        valid: false,
        train: false,
        hidden: 32,
        speech_context: 1,
        epochs: 20,
        start_penalty: 0.01,
        onset_penalty: 0.01,
        onset_weight: 3.0,
        onset_hidden: 16,
        onset_frames: 3,
        music_weight: 4.0,
        config: VadConfig::default(),
        only: None,
        silero: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.per_source = 30,
            "--valid" => args.valid = true,
            "--silero" => args.silero = true,
            "--train" => args.train = true,
            "--per-source" => args.per_source = it.next().unwrap_or_default().parse()?,
            "--speech-context" => args.speech_context = it.next().unwrap_or_default().parse()?,
            "--hidden" => args.hidden = it.next().unwrap_or_default().parse()?,
            "--start-penalty" => args.start_penalty = it.next().unwrap_or_default().parse()?,
            "--onset-penalty" => args.onset_penalty = it.next().unwrap_or_default().parse()?,
            "--onset-weight" => args.onset_weight = it.next().unwrap_or_default().parse()?,
            "--onset-frames" => args.onset_frames = it.next().unwrap_or_default().parse()?,
            "--music-weight" => args.music_weight = it.next().unwrap_or_default().parse()?,
            "--onset-hidden" => args.onset_hidden = it.next().unwrap_or_default().parse()?,
            "--epochs" => args.epochs = it.next().unwrap_or_default().parse()?,
            "--only" => args.only = it.next(),
            "--set" => {
                let kv = it.next().unwrap_or_default();
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--set key=value"))?;
                set_field(&mut args.config, k, v)?;
            }
            _ => {} // cargo bench passes `--bench`; ignore what we do not know
        }
    }
    args.config.validate()?;
    Ok(args)
}

fn set_field(c: &mut VadConfig, k: &str, v: &str) -> anyhow::Result<()> {
    match k {
        "attack_frames" => c.attack_frames = v.parse()?,
        "hangover_frames" => c.hangover_frames = v.parse()?,
        "start_probability" => c.start_probability = v.parse()?,
        "sustain_probability" => c.sustain_probability = v.parse()?,
        "onset_probability" => {
            c.onset_probability = if v == "none" { None } else { Some(v.parse()?) }
        }
        "min_level_dbfs" => c.min_level_dbfs = v.parse()?,
        _ => anyhow::bail!("unknown config field {k}"),
    }
    Ok(())
}

/// One detector's per-frame smoothed decisions, start events and timing.
pub struct Run {
    decisions: Vec<bool>,
    starts: usize,
    elapsed: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    Handset,
    HandsetTurn,
    WebRtc,
    WebRtcTurn,
}

impl Detector {
    const ALL: [Self; 4] = [
        Self::Handset,
        Self::HandsetTurn,
        Self::WebRtc,
        Self::WebRtcTurn,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Handset => "Handset VAD (default)",
            Self::HandsetTurn => "Handset VAD (hangover 25)",
            Self::WebRtc => "WebRTC mode 3 (raw)",
            Self::WebRtcTurn => "WebRTC mode 3 + gate, hangover 25",
        }
    }
}

// The evaluation program times the detectors; it is not engine code.
#[allow(clippy::disallowed_methods)]
pub fn run_detector(det: Detector, pcm: &[i16], config: &VadConfig) -> Run {
    let frames = to_frames(pcm);
    let mut decisions = Vec::with_capacity(frames.len());
    let mut starts = 0;
    let start_time;
    let mut config = config.clone();
    if matches!(det, Detector::HandsetTurn | Detector::WebRtcTurn) {
        config.hangover_frames = TURN_HANGOVER;
    }
    match det {
        Detector::Handset | Detector::HandsetTurn => {
            let mut vad = Vad::new(&config).expect("config validated");
            start_time = Instant::now();
            for f in &frames {
                if let Some(VadTransition::SpeechStarted { .. }) = vad.push(f) {
                    starts += 1;
                }
                decisions.push(vad.is_speech());
            }
        }
        Detector::WebRtc | Detector::WebRtcTurn => {
            let mut vad = webrtc_vad::Vad::new_with_rate_and_mode(
                webrtc_vad::SampleRate::Rate8kHz,
                webrtc_vad::VadMode::VeryAggressive,
            );
            let mut gate = SpeechGate::new(config.attack_frames, config.hangover_frames);
            let mut prev = false;
            start_time = Instant::now();
            for f in &frames {
                let raw = vad.is_voice_segment(&f.0).unwrap_or(false);
                if det == Detector::WebRtc {
                    starts += usize::from(raw && !prev);
                    prev = raw;
                    decisions.push(raw);
                } else {
                    if let Some(VadTransition::SpeechStarted { .. }) = gate.push(raw) {
                        starts += 1;
                    }
                    decisions.push(gate.is_speech());
                }
            }
        }
    }
    Run {
        decisions,
        starts,
        elapsed: start_time.elapsed(),
    }
}

/// Silero VAD v6 over `pcm`, through `benches/vad_eval/silero.py` (ONNX Runtime, in the Python
/// environment `scripts/install-vad-data.sh` made): one speech probability per 20 ms frame, that
/// of the newest 32 ms chunk ended by then.
// The evaluation program times the detectors and runs Python; it is not engine code.
#[allow(clippy::disallowed_methods)]
fn silero_probabilities(pcm: &[i16]) -> anyhow::Result<(Vec<f32>, Duration)> {
    let data = data::data_dir();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("signal.s16");
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(&path, bytes)?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vad_eval/silero.py");
    let start = Instant::now();
    let status = std::process::Command::new(data.join("venv/bin/python"))
        .arg(script)
        .arg(data.join("silero_vad.onnx"))
        .arg(&path)
        .status()?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        status.success(),
        "silero.py failed ({status}); run scripts/install-vad-data.sh"
    );
    let raw = std::fs::read(dir.path().join("signal.s16.prob"))?;
    let p = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((p, elapsed))
}

/// Silero's own streaming rule (the silero-vad package's defaults): speech starts at probability
/// 0.5 and holds while it stays at 0.35 or more; then `hangover` frames more.
fn silero_run(p: &[f32], hangover: u32, elapsed: Duration) -> Run {
    let mut gate = SpeechGate::new(1, hangover);
    let mut starts = 0;
    let decisions = p
        .iter()
        .map(|&p| {
            let raw = p >= if gate.is_speech() { 0.35 } else { 0.5 };
            if let Some(VadTransition::SpeechStarted { .. }) = gate.push(raw) {
                starts += 1;
            }
            gate.is_speech()
        })
        .collect();
    Run {
        decisions,
        starts,
        elapsed,
    }
}

/// The call's barge-in decision with its second stage (`handset_shell::onset_check`): the VAD
/// with the call's hangover; at each speech start a fresh Silero session gets the
/// [`ONSET_PRE_ROLL`] frames up to the onset, then every frame until the utterance ends; the
/// utterance counts (a start, and speech from then on) from the frame after the one that
/// completed a chunk at or above the threshold, when the call sees the checker's verdict.
/// Times only Silero.
// The evaluation program times the detectors; it is not engine code.
#[allow(clippy::disallowed_methods)]
fn checked_run(pcm: &[i16], config: &VadConfig) -> anyhow::Result<Run> {
    let frames = to_frames(pcm);
    let mut config = config.clone();
    config.hangover_frames = TURN_HANGOVER;
    let mut vad = Vad::new(&config).expect("config validated");
    let mut silero = Silero::load()?;
    let mut decisions = vec![false; frames.len()];
    let mut starts = 0;
    let mut elapsed = Duration::ZERO;
    // The open candidate's session, and whether the checker has confirmed it.
    let mut open: Option<(Session, bool)> = None;
    let mut confirmed_at: Option<usize> = None;
    for (i, frame) in frames.iter().enumerate() {
        let transition = vad.push(frame);
        if let Some((_, true)) = open {
            open = None;
            confirmed_at = Some(i);
            starts += 1;
        }
        let fed: &[PcmFrame] = match transition {
            Some(VadTransition::SpeechStarted { .. }) => {
                open = Some((Session::default(), false));
                &frames[(i + 1).saturating_sub(ONSET_PRE_ROLL)..=i]
            }
            Some(VadTransition::SpeechEnded { .. }) => {
                open = None;
                confirmed_at = None;
                &[]
            }
            None => std::slice::from_ref(frame),
        };
        if let Some((session, confirmed)) = open.as_mut() {
            let t = Instant::now();
            for f in fed {
                if silero.push(session, f)?.is_some_and(|p| p >= THRESHOLD) {
                    *confirmed = true;
                    break;
                }
            }
            elapsed += t.elapsed();
        }
        decisions[i] = confirmed_at.is_some() && vad.is_speech();
    }
    Ok(Run {
        decisions,
        starts,
        elapsed,
    })
}

/// The rows of every detector on one signal: Handset and WebRTC, and Silero with `--silero`.
fn all_runs(pcm: &[i16], args: &Args) -> anyhow::Result<Vec<(&'static str, Run)>> {
    let mut runs: Vec<(&'static str, Run)> = Detector::ALL
        .iter()
        .map(|&d| (d.name(), run_detector(d, pcm, &args.config)))
        .collect();
    runs.push((
        "Handset (hangover 25) + Silero onset check",
        checked_run(pcm, &args.config)?,
    ));
    if args.silero {
        let (p, elapsed) = silero_probabilities(pcm)?;
        runs.push(("Silero v6 (0.5 / 0.35)", silero_run(&p, 0, elapsed)));
        runs.push((
            "Silero v6, hangover 25",
            silero_run(&p, TURN_HANGOVER, elapsed),
        ));
    }
    Ok(runs)
}

pub fn to_frames(pcm: &[i16]) -> Vec<PcmFrame> {
    pcm.chunks_exact(FRAME)
        .map(|c| PcmFrame(c.try_into().expect("chunks_exact gives whole frames")))
        .collect()
}

struct Score {
    precision: f64,
    recall: f64,
    f1: f64,
    false_alarm: f64,
    onset_median_ms: Option<f64>,
    onset_p90_ms: Option<f64>,
    missed: usize,
    us_per_frame: f64,
}

/// Onset delays in ms, sorted, over the utterances (of source `only`, if given) whose onset was
/// detected, and the number of utterances where it never was.
pub fn onset_delays(decisions: &[bool], corpus: &Corpus, only: Option<usize>) -> (Vec<f64>, usize) {
    let mut delays = Vec::new();
    let mut missed = 0;
    for &(start, end, source) in &corpus.prompts {
        if only.is_some_and(|o| o != source) {
            continue;
        }
        let Some(first) = (start..end).find(|&i| corpus.labels[i]) else {
            continue;
        };
        match (first..end).find(|&i| decisions[i]) {
            Some(i) => delays.push((i - first) as f64 * 20.0),
            None => missed += 1,
        }
    }
    delays.sort_by(f64::total_cmp);
    (delays, missed)
}

pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

/// Precision, recall and F1 of the speech class over `frames` (all when `None`).
fn prf(decisions: &[bool], labels: &[bool], frames: Option<&[bool]>) -> (f64, f64, f64, f64) {
    let (mut tp, mut fp, mut fneg, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (i, (&d, &l)) in decisions.iter().zip(labels).enumerate() {
        if frames.is_some_and(|f| !f[i]) {
            continue;
        }
        match (d, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => tn += 1,
        }
    }
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fneg).max(1) as f64;
    let f1 = 2.0 * tp as f64 / (2 * tp + fp + fneg).max(1) as f64;
    (precision, recall, f1, fp as f64 / (fp + tn).max(1) as f64)
}

pub fn f1_of(decisions: &[bool], labels: &[bool]) -> f64 {
    prf(decisions, labels, None).2
}

fn score(run: &Run, corpus: &Corpus) -> Score {
    let (precision, recall, f1, false_alarm) = prf(&run.decisions, &corpus.labels, None);
    let (delays, missed) = onset_delays(&run.decisions, corpus, None);
    Score {
        precision,
        recall,
        f1,
        false_alarm,
        onset_median_ms: percentile(&delays, 0.5),
        onset_p90_ms: percentile(&delays, 0.9),
        missed,
        us_per_frame: run.elapsed.as_secs_f64() * 1e6 / run.decisions.len().max(1) as f64,
    }
}

/// The F1 the labels allow under `under`: an ideal detector hears exactly the speech-labelled
/// frames whose speech power is at least `snr_db` above the noise's power in the same frame
/// (before µ-law), and holds each decision for a hangover of frames, the best of
/// [`CEILING_HANGOVERS`]. Per threshold of [`CEILING_SNR_DB`]: (best F1, its hangover).
fn ceiling(corpus: &Corpus, under: Under<'_>) -> Vec<(f64, u32)> {
    let power = |f: &dyn Fn(usize) -> f64, frame: usize| -> f64 {
        (frame * FRAME..(frame + 1) * FRAME)
            .map(|i| f(i).powi(2))
            .sum()
    };
    let speech: Vec<f64> = (0..corpus.labels.len())
        .map(|frame| power(&|i| corpus.clean[i], frame))
        .collect();
    let noise: Vec<f64> = (0..corpus.labels.len())
        .map(|frame| under.map_or(0.0, |(n, g)| power(&|i| n[i % n.len()] * g, frame)))
        .collect();
    CEILING_SNR_DB
        .iter()
        .map(|&snr_db| {
            let ratio = 10f64.powf(snr_db / 10.0);
            let heard: Vec<bool> = (0..corpus.labels.len())
                .map(|i| corpus.labels[i] && speech[i] >= noise[i] * ratio)
                .collect();
            CEILING_HANGOVERS
                .iter()
                .map(|&hangover| {
                    let mut since = u32::MAX;
                    let decisions: Vec<bool> = heard
                        .iter()
                        .map(|&h| {
                            since = if h { 0 } else { since.saturating_add(1) };
                            since <= hangover
                        })
                        .collect();
                    (f1_of(&decisions, &corpus.labels), hangover)
                })
                .fold((0.0, 0), |best, x| if x.0 > best.0 { x } else { best })
        })
        .collect()
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"))
}

/// The noises of one side of the split, each at least as long as the corpus.
pub struct Noises {
    white: Vec<f64>,
    pink: Vec<f64>,
    babble: Vec<f64>,
    /// The side's soundtracks, concatenated.
    music: Vec<f64>,
}

impl Noises {
    /// The noises of the side whose speech sources and soundtracks these are.
    pub fn new(
        speech: &[data::Source],
        len: usize,
        music: &[data::Music],
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            white: data::white_noise(len, rng),
            pink: data::pink_noise(len, rng),
            babble: data::babble(speech, BABBLE_TALKERS, len, rng)?,
            music: music.iter().flat_map(|m| m.tracks.concat()).collect(),
        })
    }
}

/// Condition names, in the order [`conditions`] gives them (the gate objective relies on it).
pub const CONDITIONS: [&str; 6] = [
    "clean",
    "babble 10 dB",
    "pink 10 dB",
    "music 10 dB",
    "white 10 dB",
    "music 0 dB",
];

/// The conditions of the report for `corpus`.
pub fn conditions<'a>(corpus: &Corpus, n: &'a Noises) -> Vec<(&'static str, Under<'a>)> {
    let at = |snr_db: f64, x: &'a [f64]| -> Under<'a> {
        Some((
            x,
            (corpus.active_power / 10f64.powf(snr_db / 10.0) / data::mean_power(x)).sqrt(),
        ))
    };
    vec![
        (CONDITIONS[0], None),
        (CONDITIONS[1], at(10.0, &n.babble)),
        (CONDITIONS[2], at(10.0, &n.pink)),
        (CONDITIONS[3], at(10.0, &n.music)),
        (CONDITIONS[4], at(10.0, &n.white)),
        (CONDITIONS[5], at(0.0, &n.music)),
    ]
}

/// Noise alone at a fixed level, through µ-law.
pub fn alone(x: &[f64], dbfs: f64) -> Vec<i16> {
    let g = (32768f64.powi(2) * 10f64.powf(dbfs / 10.0) / data::mean_power(x)).sqrt();
    data::mix(&x.iter().map(|v| v * g).collect::<Vec<_>>(), None)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.train {
        return train::train(&args);
    }
    let split = if args.valid {
        Split::Valid
    } else {
        Split::Test
    };
    let seed = if args.valid { VALID_SEED } else { REPORT_SEED };
    let mut rng = data::rng_for(seed, "corpus");
    let speech = data::sources(Kind::Speech, split)?;
    let corpus = data::build_corpus(&speech, args.per_source, &mut rng)?;
    let music = data::music(split)?;
    let n = corpus.clean.len();
    let noises = Noises::new(&speech, n, &music, &mut data::rng_for(seed, "noise"))?;
    let speech_frames = corpus.labels.iter().filter(|&&l| l).count();
    println!(
        "# VAD evaluation ({split:?} sources): {} utterances from {} sources, {:.1} min, {:.1} % speech frames\n",
        corpus.prompts.len(),
        speech.len(),
        n as f64 / 8000.0 / 60.0,
        100.0 * speech_frames as f64 / corpus.labels.len() as f64,
    );
    println!(
        "Speech sources: {}\n\nMusic sources: {}\n",
        corpus.source_names.join(", "),
        music
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Handset config: {:?}\n", args.config);
    println!(
        "| condition | VAD | precision | recall | F1 | false alarms | onset median ms | onset p90 ms | missed onsets | µs/frame |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut per_source: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (name, under) in conditions(&corpus, &noises) {
        if args.only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let pcm = data::mix(&corpus.clean, under);
        for (i, (det, run)) in all_runs(&pcm, &args)?.into_iter().enumerate() {
            let s = score(&run, &corpus);
            println!(
                "| {name} | {det} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.2} |",
                s.precision,
                s.recall,
                s.f1,
                s.false_alarm,
                fmt_ms(s.onset_median_ms),
                fmt_ms(s.onset_p90_ms),
                s.missed,
                s.us_per_frame,
            );
            if i == 0 {
                // Per source: F1 over the frames of its utterances and the gaps before them.
                for (si, sname) in corpus.source_names.iter().enumerate() {
                    let mut mask = vec![false; corpus.labels.len()];
                    let mut gap_start = 0;
                    for &(_, end, s) in &corpus.prompts {
                        if s == si {
                            mask[gap_start..end].iter_mut().for_each(|m| *m = true);
                        }
                        gap_start = end;
                    }
                    let f1 = prf(&run.decisions, &corpus.labels, Some(&mask)).2;
                    per_source.entry(sname.as_str()).or_default().push(f1);
                }
            }
        }
    }
    println!(
        "\n## Handset VAD (default) per speech source: F1 ({})\n",
        CONDITIONS.join(" / ")
    );
    println!("| source | F1 |");
    println!("|---|---|");
    for (name, f1) in &per_source {
        let f: Vec<String> = f1.iter().map(|v| format!("{v:.3}")).collect();
        println!("| {name} | {} |", f.join(" / "));
    }

    println!(
        "\n## The ceiling the labels set\n\nAn ideal detector that hears exactly the speech-labelled frames whose speech is at least θ dB above the noise in the same frame, holding each decision for the best hangover (frames): its F1.\n"
    );
    let head: Vec<String> = CEILING_SNR_DB
        .iter()
        .map(|t| format!("θ = {t} dB"))
        .collect();
    println!("| condition | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(CEILING_SNR_DB.len()));
    for (name, under) in conditions(&corpus, &noises) {
        let cells: Vec<String> = ceiling(&corpus, under)
            .iter()
            .map(|(f1, h)| format!("{f1:.3} (hangover {h})"))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }

    println!("\n## Noise alone, no speech ({split:?} sources)\n");
    println!("| material | min | VAD | false speech starts per minute | frames judged speech |");
    println!("|---|---|---|---|---|");
    let mut alone_runs: Vec<(String, Vec<i16>)> = music
        .iter()
        .map(|m| {
            (
                format!("music: {}", m.name),
                data::mix(&m.tracks.concat(), None),
            )
        })
        .collect();
    alone_runs.push((
        format!("babble ({BABBLE_TALKERS} talkers), {NOISE_ALONE_DBFS} dBFS"),
        alone(&noises.babble, NOISE_ALONE_DBFS),
    ));
    alone_runs.push((
        format!("pink noise, {NOISE_ALONE_DBFS} dBFS"),
        alone(&noises.pink, NOISE_ALONE_DBFS),
    ));
    for (name, pcm) in &alone_runs {
        let minutes = pcm.len() as f64 / 8000.0 / 60.0;
        for (det, run) in all_runs(pcm, &args)? {
            let on = run.decisions.iter().filter(|&&d| d).count() as f64
                / run.decisions.len().max(1) as f64;
            println!(
                "| {name} | {minutes:.1} | {det} | {:.2} | {:.3} |",
                run.starts as f64 / minutes,
                on
            );
        }
    }
    Ok(())
}
