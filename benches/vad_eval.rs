//! VAD evaluation program: Handset's [`Vad`] against WebRTC VAD mode 3 on real 8 kHz telephone
//! speech mixed with white noise and hold music, every condition through a µ-law round trip.
//!
//! Run with `cargo bench --bench vad_eval` (add `-- --quick` for fewer prompts, `-- --tune` to
//! run on the tuning split instead of the held-out split). Needs the Debian audio packages
//! installed by `scripts/install-audio-data.sh`. Method and results: `docs/vad-eval.md`.
//!
//! Recipe (dsp-notes §3.3):
//! - The 568 Allison prompts are shuffled with a fixed seed and split in half: a tuning pool and
//!   a held-out report pool. Each run draws `--prompts` prompts (default 150) from one pool
//!   with that pool's own seed, and concatenates them with 0.5–1.5 s gaps (whole 20 ms frames),
//!   starting with a gap. Prompts are zero-padded to whole frames.
//! - Labels come from the clean prompt: a 20 ms frame is speech if its mean power (dBFS, full
//!   scale square wave = 0) is above max(−55 dBFS, the prompt's loudest frame − 40 dB). Gap
//!   frames are non-speech.
//! - Conditions: clean; white Gaussian noise at 10 and 0 dB SNR; hold music at 10 and 0 dB SNR.
//!   SNR is relative to the active speech level (mean power over the speech-labelled frames of
//!   the clean signal); noise and music run under everything, gaps included. The music is the
//!   five opsound tracks, each cut in half: the first halves are used for tuning, the second
//!   halves for reporting; concatenated and looped to length, scaled so its mean power over the
//!   run gives the SNR. The mix is clipped to 16 bits and passed through G.711 µ-law.
//! - Detectors run causally, one frame at a time; a frame's decision is the state after pushing it.
//! - Onset delay: for each prompt, the frames from its first labelled speech frame to the first
//!   frame (within the prompt) on which the smoothed decision is speech, i.e. the push that
//!   returned `SpeechStarted` (0 if the decision was already speech). Prompts where it never
//!   turns on are counted as missed onsets.
//! - A hold-music-only run (the held-out halves, ~9 min, at the tracks' own level and through
//!   µ-law) counts speech-start events per minute: for a raw detector every run of speech
//!   frames is an event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handset_engine::PcmFrame;
use handset_engine::codec::{decode_sample, encode_sample};
use handset_engine::vad::{SpeechGate, Vad, VadConfig, VadTransition};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SPEECH_DIR: &str = "/usr/share/asterisk/sounds/en_US_f_Allison";
const MUSIC_DIR: &str = "/usr/share/asterisk/moh";
const FRAME: usize = 160;
/// Seeds: the pool split, the tuning draw, the report draw, and noise.
const SPLIT_SEED: u64 = 0x5EED_0001;
const TUNE_SEED: u64 = 0x5EED_0002;
const REPORT_SEED: u64 = 0x5EED_0003;

struct Args {
    prompts: usize,
    tune: bool,
    config: VadConfig,
    only: Option<String>,
    sweep: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        prompts: 150,
        tune: false,
        config: VadConfig::default(),
        only: None,
        sweep: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.prompts = 40,
            "--tune" => args.tune = true,
            "--prompts" => args.prompts = it.next().unwrap_or_default().parse()?,
            "--only" => args.only = it.next(),
            "--sweep" => args.sweep = it.next().unwrap_or_default().parse()?,
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
        "threshold_db" => c.threshold_db = v.parse()?,
        "min_level_dbfs" => c.min_level_dbfs = v.parse()?,
        "noise_window_frames" => c.noise_window_frames = v.parse()?,
        "noise_bias_db" => c.noise_bias_db = v.parse()?,
        "noise_smoothing" => c.noise_smoothing = v.parse()?,
        "floor_rise" => c.floor_rise = v.parse()?,
        "floor_fall" => c.floor_fall = v.parse()?,
        "snr_exponent" => c.snr_exponent = v.parse()?,
        "quantile_up_db" => c.quantile_up_db = v.parse()?,
        "quantile_down_db" => c.quantile_down_db = v.parse()?,
        _ => anyhow::bail!("unknown config field {k}"),
    }
    Ok(())
}

fn wav_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            wav_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "wav") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_wav(path: &Path) -> anyhow::Result<Vec<i16>> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    anyhow::ensure!(
        spec.sample_rate == 8000 && spec.channels == 1 && spec.bits_per_sample == 16,
        "{} is not 8 kHz mono 16-bit",
        path.display()
    );
    Ok(reader.samples::<i16>().collect::<Result<_, _>>()?)
}

/// Mean power of a frame in dBFS (full-scale square wave = 0 dBFS).
fn frame_dbfs(frame: &[i16]) -> f64 {
    let p: f64 = frame
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / frame.len() as f64;
    10.0 * p.max(1e-13).log10()
}

/// The clean test signal with its labels and prompt boundaries.
struct Corpus {
    clean: Vec<f64>,
    labels: Vec<bool>,
    /// Per prompt: first and one-past-last frame index.
    prompts: Vec<(usize, usize)>,
    active_power: f64,
}

fn build_corpus(files: &[PathBuf], rng: &mut ChaCha8Rng) -> anyhow::Result<Corpus> {
    let mut clean = Vec::new();
    let mut labels = Vec::new();
    let mut prompts = Vec::new();
    let push_gap = |clean: &mut Vec<f64>, labels: &mut Vec<bool>, rng: &mut ChaCha8Rng| {
        let frames = rng.gen_range(25..=75);
        clean.extend(std::iter::repeat_n(0.0, frames * FRAME));
        labels.extend(std::iter::repeat_n(false, frames));
    };
    for f in files {
        push_gap(&mut clean, &mut labels, rng);
        let mut pcm = read_wav(f)?;
        pcm.resize(pcm.len().div_ceil(FRAME) * FRAME, 0);
        let energies: Vec<f64> = pcm.chunks(FRAME).map(frame_dbfs).collect();
        let peak = energies.iter().copied().fold(f64::MIN, f64::max);
        let threshold = (-55.0f64).max(peak - 40.0);
        let start = labels.len();
        labels.extend(energies.iter().map(|&e| e > threshold));
        prompts.push((start, labels.len()));
        clean.extend(pcm.iter().map(|&s| f64::from(s)));
    }
    push_gap(&mut clean, &mut labels, rng);
    let (mut sum, mut n) = (0.0, 0usize);
    for (frame, &l) in clean.chunks(FRAME).zip(&labels) {
        if l {
            sum += frame.iter().map(|x| x * x).sum::<f64>();
            n += FRAME;
        }
    }
    Ok(Corpus {
        clean,
        labels,
        prompts,
        active_power: sum / n.max(1) as f64,
    })
}

/// A signal to mix under the speech, with its gain.
type Under<'a> = Option<(&'a [f64], f64)>;

fn mix(clean: &[f64], under: Under<'_>) -> Vec<i16> {
    clean
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let x = s + under.map_or(0.0, |(n, g)| n[i % n.len()] * g);
            decode_sample(encode_sample(x.round().clamp(-32768.0, 32767.0) as i16))
        })
        .collect()
}

fn white_noise(len: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.r#gen();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn mean_power(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64
}

/// One detector's per-frame smoothed decisions, start events and timing.
struct Run {
    decisions: Vec<bool>,
    starts: usize,
    elapsed: Duration,
}

#[derive(Clone, Copy)]
enum Detector {
    Handset,
    HandsetRaw,
    WebRtc,
    WebRtcGated,
}

impl Detector {
    fn name(self) -> &'static str {
        match self {
            Self::Handset => "Handset VAD (smoothed)",
            Self::HandsetRaw => "Handset VAD (raw frames)",
            Self::WebRtc => "WebRTC mode 3 (raw)",
            Self::WebRtcGated => "WebRTC mode 3 + Handset gate",
        }
    }
}

// The evaluation program times the detectors; it is not engine code.
#[allow(clippy::disallowed_methods)]
fn run_detector(det: Detector, pcm: &[i16], config: &VadConfig) -> Run {
    let frames: Vec<PcmFrame> = pcm
        .chunks_exact(FRAME)
        .map(|c| PcmFrame(c.try_into().expect("chunks_exact gives whole frames")))
        .collect();
    let mut decisions = Vec::with_capacity(frames.len());
    let mut starts = 0;
    let start_time;
    match det {
        Detector::Handset | Detector::HandsetRaw => {
            let mut vad = Vad::new(config).expect("config validated");
            start_time = Instant::now();
            for f in &frames {
                if let Some(VadTransition::SpeechStarted { .. }) = vad.push(f) {
                    starts += 1;
                }
                decisions.push(vad.is_speech());
            }
            let elapsed = start_time.elapsed();
            if matches!(det, Detector::HandsetRaw) {
                // Re-run cheaply for the raw decisions (not timed).
                let mut vad = Vad::new(config).expect("config validated");
                decisions.clear();
                starts = 0;
                let mut prev = false;
                for f in &frames {
                    vad.push(f);
                    let raw = vad.frame_is_speech();
                    starts += usize::from(raw && !prev);
                    prev = raw;
                    decisions.push(raw);
                }
            }
            Run {
                decisions,
                starts,
                elapsed,
            }
        }
        Detector::WebRtc | Detector::WebRtcGated => {
            let mut vad = webrtc_vad::Vad::new_with_rate_and_mode(
                webrtc_vad::SampleRate::Rate8kHz,
                webrtc_vad::VadMode::VeryAggressive,
            );
            let mut gate = SpeechGate::new(config.attack_frames, config.hangover_frames);
            let mut prev = false;
            start_time = Instant::now();
            for f in &frames {
                let raw = vad.is_voice_segment(&f.0).unwrap_or(false);
                if matches!(det, Detector::WebRtcGated) {
                    if let Some(VadTransition::SpeechStarted { .. }) = gate.push(raw) {
                        starts += 1;
                    }
                    decisions.push(gate.is_speech());
                } else {
                    starts += usize::from(raw && !prev);
                    prev = raw;
                    decisions.push(raw);
                }
            }
            let elapsed = start_time.elapsed();
            Run {
                decisions,
                starts,
                elapsed,
            }
        }
    }
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

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn score(run: &Run, corpus: &Corpus) -> Score {
    let (mut tp, mut fp, mut fneg, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (&d, &l) in run.decisions.iter().zip(&corpus.labels) {
        match (d, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => tn += 1,
        }
    }
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fneg).max(1) as f64;
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    let mut delays = Vec::new();
    let mut missed = 0;
    for &(start, end) in &corpus.prompts {
        let Some(first) = (start..end).find(|&i| corpus.labels[i]) else {
            continue;
        };
        match (first..end).find(|&i| run.decisions[i]) {
            Some(i) => delays.push((i - first) as f64 * 20.0),
            None => missed += 1,
        }
    }
    delays.sort_by(f64::total_cmp);
    Score {
        precision,
        recall,
        f1,
        false_alarm: fp as f64 / (fp + tn).max(1) as f64,
        onset_median_ms: percentile(&delays, 0.5),
        onset_p90_ms: percentile(&delays, 0.9),
        missed,
        us_per_frame: run.elapsed.as_secs_f64() * 1e6 / run.decisions.len().max(1) as f64,
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut files = Vec::new();
    wav_files(Path::new(SPEECH_DIR), &mut files).map_err(|e| {
        anyhow::anyhow!("{SPEECH_DIR}: {e}; run scripts/install-audio-data.sh first")
    })?;
    files.sort();
    files.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let half = files.len() / 2;
    let (pool, seed) = if args.tune {
        (&files[..half], TUNE_SEED)
    } else {
        (&files[half..], REPORT_SEED)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pool = pool.to_vec();
    pool.shuffle(&mut rng);
    pool.truncate(args.prompts);
    let corpus = build_corpus(&pool, &mut rng)?;

    let mut music_files = Vec::new();
    wav_files(Path::new(MUSIC_DIR), &mut music_files)?;
    music_files.sort();
    let mut music = Vec::new();
    for f in &music_files {
        let pcm = read_wav(f)?;
        let (a, b) = pcm.split_at(pcm.len() / 2);
        let part = if args.tune { a } else { b };
        music.extend(part.iter().map(|&s| f64::from(s)));
    }

    let n = corpus.clean.len();
    let noise = white_noise(n, &mut rng);
    let looped_music: Vec<f64> = (0..n).map(|i| music[i % music.len()]).collect();
    let noise_power = mean_power(&noise);
    let music_power = mean_power(&looped_music);
    let speech_frames = corpus.labels.iter().filter(|&&l| l).count();
    println!(
        "# VAD evaluation ({} split): {} prompts, {:.1} min, {:.1} % speech frames, active speech level {:.1} dBFS\n",
        if args.tune { "tuning" } else { "held-out" },
        corpus.prompts.len(),
        n as f64 / 8000.0 / 60.0,
        100.0 * speech_frames as f64 / corpus.labels.len() as f64,
        10.0 * (corpus.active_power / 32768f64.powi(2)).log10(),
    );
    println!("Handset config: {:?}\n", args.config);

    let conditions: Vec<(&str, Under<'_>)> = vec![
        ("clean", None),
        (
            "white 10 dB",
            Some((
                &noise[..],
                (corpus.active_power / 10f64.powf(1.0) / noise_power).sqrt(),
            )),
        ),
        (
            "white 0 dB",
            Some((&noise[..], (corpus.active_power / noise_power).sqrt())),
        ),
        (
            "music 10 dB",
            Some((
                &looped_music[..],
                (corpus.active_power / 10f64.powf(1.0) / music_power).sqrt(),
            )),
        ),
        (
            "music 0 dB",
            Some((
                &looped_music[..],
                (corpus.active_power / music_power).sqrt(),
            )),
        ),
    ];
    if args.sweep > 0 {
        anyhow::ensure!(
            args.tune,
            "--sweep only runs on the tuning split (add --tune)"
        );
        let mixes: Vec<Vec<i16>> = conditions
            .iter()
            .map(|(_, u)| mix(&corpus.clean, *u))
            .collect();
        let music_pcm = mix(&music, None);
        sweep(&args, &corpus, &mixes, &music_pcm);
        return Ok(());
    }
    let detectors = [
        Detector::Handset,
        Detector::HandsetRaw,
        Detector::WebRtc,
        Detector::WebRtcGated,
    ];
    println!(
        "| condition | VAD | precision | recall | F1 | false alarms | onset median ms | onset p90 ms | missed onsets | µs/frame |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut f1s: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (name, under) in &conditions {
        if args.only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let pcm = mix(&corpus.clean, *under);
        for det in detectors {
            let run = run_detector(det, &pcm, &args.config);
            let s = score(&run, &corpus);
            f1s.entry(name).or_default().push(s.f1);
            println!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.2} |",
                det.name(),
                s.precision,
                s.recall,
                s.f1,
                s.false_alarm,
                fmt_ms(s.onset_median_ms),
                fmt_ms(s.onset_p90_ms),
                s.missed,
                s.us_per_frame,
            );
        }
    }
    let mean_handset: f64 = f1s.values().map(|v| v[0]).sum::<f64>() / f1s.len().max(1) as f64;
    println!("\nmean F1 (Handset smoothed): {mean_handset:.4}");

    // Hold music only: no speech at all, at the tracks' own level.
    let music_pcm = mix(&music, None);
    let minutes = music_pcm.len() as f64 / 8000.0 / 60.0;
    println!(
        "\n## Hold music only ({minutes:.1} min, {} split, no speech)\n",
        if args.tune { "tuning" } else { "held-out" }
    );
    println!("| VAD | false SpeechStarted per minute | frames judged speech |");
    println!("|---|---|---|");
    for det in detectors {
        let run = run_detector(det, &music_pcm, &args.config);
        let on = run.decisions.iter().filter(|&&d| d).count() as f64 / run.decisions.len() as f64;
        println!(
            "| {} | {:.2} | {:.3} |",
            det.name(),
            run.starts as f64 / minutes,
            on
        );
    }
    Ok(())
}

/// Random search over the tuning knobs on the tuning split. Prints the best configurations by
/// mean F1 over the conditions, penalised when any condition falls below WebRTC mode 3.
fn sweep(args: &Args, corpus: &Corpus, mixes: &[Vec<i16>], music_pcm: &[i16]) {
    let base = args.config.clone();
    let webrtc: Vec<f64> = mixes
        .iter()
        .map(|m| score(&run_detector(Detector::WebRtc, m, &base), corpus).f1)
        .collect();
    println!("WebRTC mode 3 raw F1 per condition: {webrtc:.3?}");
    let minutes = music_pcm.len() as f64 / 8000.0 / 60.0;
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0FFEE);
    let mut results: Vec<(f64, Vec<f64>, f64, VadConfig)> = Vec::new();
    for i in 0..args.sweep {
        let mut c = base.clone();
        if i > 0 {
            c.attack_frames = rng.gen_range(1..=3);
            let (up, down) = [
                (0.0, 1.0),
                (0.02, 0.2),
                (0.05, 0.3),
                (0.05, 0.1),
                (0.1, 0.2),
                (0.1, 0.5),
                (0.2, 0.4),
                (0.02, 0.05),
                (0.05, 0.05),
                (0.1, 0.1),
            ][rng.gen_range(0..10)];
            c.quantile_up_db = up;
            c.quantile_down_db = down;
            c.hangover_frames = rng.gen_range(0..=20);
            c.threshold_db = rng.gen_range(3.0..10.0);
            c.min_level_dbfs = rng.gen_range(-62.0..-44.0);
            c.noise_window_frames = [48, 96, 160, 240][rng.gen_range(0..4)];
            c.noise_bias_db = rng.gen_range(0.0..8.0);
            c.noise_smoothing = [0.3, 0.5, 0.7, 0.85][rng.gen_range(0..4)];
            c.floor_rise = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2][rng.gen_range(0..6)];
            c.floor_fall = rng.gen_range(0.02..0.6);
            c.snr_exponent = rng.gen_range(1.0..4.0);
        }
        let f1: Vec<f64> = mixes
            .iter()
            .map(|m| score(&run_detector(Detector::Handset, m, &c), corpus).f1)
            .collect();
        let starts = run_detector(Detector::Handset, music_pcm, &c).starts as f64 / minutes;
        let mean = f1.iter().sum::<f64>() / f1.len() as f64;
        let margin = f1
            .iter()
            .zip(&webrtc)
            .map(|(a, b)| a - b)
            .fold(f64::MAX, f64::min);
        let objective = margin + 0.25 * mean - 0.001 * starts;
        results.push((objective, f1, starts, c));
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (obj, f1, starts, c) in results.iter().take(12) {
        println!("{obj:.4} f1={f1:.3?} music_starts/min={starts:.2} {c:?}");
    }
}
