//! The evaluation's material: speech and music sources, split by source, the test signal and
//! the noises mixed under it.
//!
//! Every source is a folder of 8 kHz 16-bit mono WAV files written by `scripts/vad-data.py`
//! (`scripts/install-vad-data.sh`): `<data>/speech/<source>/` is one speaker or one synthetic
//! voice, `<data>/music/<source>/` one soundtrack. [`split_of`] assigns each source to training,
//! validation or the held-out report, so no speaker, voice or soundtrack is ever on two sides.

use std::path::{Path, PathBuf};

use handset_engine::codec::{decode_sample, encode_sample};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const FRAME: usize = 160;
/// Where `scripts/install-vad-data.sh` writes the corpus unless `HANDSET_VAD_DATA` says otherwise.
const DEFAULT_DATA: &str = "/var/tmp/handset-vad";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Split {
    Train,
    Valid,
    Test,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Speech,
    Music,
}

/// Which side of the evaluation a source is on. Real voices: Allison (en), Menardi (it) and the
/// two Czech fillets-ng voices train; the Colombian Spanish prompts validate; Armelle (fr) and
/// the two Dutch fillets-ng voices are held out. Synthetic voices are split by language (espeak-ng)
/// and by voice (flite). Music is split by soundtrack. Anything unlisted is held out.
pub fn split_of(kind: Kind, source: &str) -> Split {
    const SPEECH_TRAIN: [&str; 7] = [
        "allison-en",
        "menardi-it",
        "fillets-cs-",
        "flite-kal",
        "flite-awb",
        "espeak-de-",
        "espeak-es-",
    ];
    const SPEECH_TRAIN_LANGS: [&str; 10] =
        ["pl", "ru", "it", "pt", "nl", "sv", "cs", "tr", "vi", "hu"];
    const SPEECH_VALID: [&str; 2] = ["co-es", "flite-rms"];
    const SPEECH_VALID_LANGS: [&str; 6] = ["da", "fi", "el", "ro", "ja", "ko"];
    const MUSIC_TRAIN: [&str; 4] = ["opsound", "wesnoth", "hyperrogue", "nexuiz"];
    const MUSIC_VALID: [&str; 2] = ["singularity", "asc"];
    let espeak_lang = source
        .strip_prefix("espeak-")
        .and_then(|s| s.split('-').next());
    match kind {
        Kind::Speech => {
            if SPEECH_TRAIN.iter().any(|p| source.starts_with(p))
                || espeak_lang.is_some_and(|l| SPEECH_TRAIN_LANGS.contains(&l))
            {
                Split::Train
            } else if SPEECH_VALID.contains(&source)
                || espeak_lang.is_some_and(|l| SPEECH_VALID_LANGS.contains(&l))
            {
                Split::Valid
            } else {
                Split::Test
            }
        }
        Kind::Music if MUSIC_TRAIN.contains(&source) => Split::Train,
        Kind::Music if MUSIC_VALID.contains(&source) => Split::Valid,
        Kind::Music => Split::Test,
    }
}

/// One speaker, voice or soundtrack: its files, sorted.
pub struct Source {
    pub name: String,
    pub files: Vec<PathBuf>,
}

pub fn data_dir() -> PathBuf {
    std::env::var_os("HANDSET_VAD_DATA").map_or_else(|| PathBuf::from(DEFAULT_DATA), PathBuf::from)
}

/// The sources of `kind` on `split`, sorted by name.
pub fn sources(kind: Kind, split: Split) -> anyhow::Result<Vec<Source>> {
    let dir = data_dir().join(match kind {
        Kind::Speech => "speech",
        Kind::Music => "music",
    });
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; run scripts/install-vad-data.sh first (or set HANDSET_VAD_DATA)",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !path.is_dir() || split_of(kind, &name) != split {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wav"))
            .collect();
        files.sort();
        if !files.is_empty() {
            out.push(Source { name, files });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    anyhow::ensure!(
        !out.is_empty(),
        "no {split:?} sources under {}",
        dir.display()
    );
    Ok(out)
}

pub fn read_wav(path: &Path) -> anyhow::Result<Vec<i16>> {
    let wav = handset_shell::wav::Pcm16::read(&std::fs::read(path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        wav.rate == 8000 && wav.channels == 1,
        "{} is not 8 kHz mono",
        path.display()
    );
    Ok(wav.samples)
}

/// Mean power of a frame in dBFS (full-scale square wave = 0 dBFS).
pub fn frame_dbfs(frame: &[f64]) -> f64 {
    let p: f64 = frame.iter().map(|&s| (s / 32768.0).powi(2)).sum::<f64>() / frame.len() as f64;
    10.0 * p.max(1e-13).log10()
}

/// An utterance: samples zero-padded to whole frames, and its per-frame labels (speech iff the
/// frame's power is above max(−55 dBFS, the loudest frame − 40 dB)).
pub struct Utterance {
    pub pcm: Vec<f64>,
    pub labels: Vec<bool>,
    /// Mean power of the speech-labelled frames.
    pub active_power: f64,
}

pub fn utterance(path: &Path) -> anyhow::Result<Utterance> {
    let mut pcm: Vec<f64> = read_wav(path)?.iter().map(|&s| f64::from(s)).collect();
    pcm.resize(pcm.len().div_ceil(FRAME).max(1) * FRAME, 0.0);
    let energies: Vec<f64> = pcm.chunks(FRAME).map(frame_dbfs).collect();
    let peak = energies.iter().copied().fold(f64::MIN, f64::max);
    let threshold = (-55.0f64).max(peak - 40.0);
    let labels: Vec<bool> = energies.iter().map(|&e| e > threshold).collect();
    let (mut sum, mut n) = (0.0, 0usize);
    for (frame, &l) in pcm.chunks(FRAME).zip(&labels) {
        if l {
            sum += frame.iter().map(|x| x * x).sum::<f64>();
            n += FRAME;
        }
    }
    Ok(Utterance {
        pcm,
        labels,
        active_power: sum / n.max(1) as f64,
    })
}

/// Whether a speech source is a synthetic voice (espeak-ng, flite) rather than a recorded one.
pub fn is_synthetic(source: &str) -> bool {
    source.starts_with("espeak-") || source.starts_with("flite-")
}

/// A synthetic voice contributes this many times fewer utterances than a recorded one: they
/// add variety (pitch, language, timing), but the voices a caller has are recorded ones.
const SYNTHETIC_SHARE: usize = 10;

/// Active speech level every utterance is brought to before its random offset (dBFS).
const SPEECH_LEVEL_DBFS: f64 = -20.0;

/// The clean test signal with its labels and utterance boundaries.
pub struct Corpus {
    pub clean: Vec<f64>,
    pub labels: Vec<bool>,
    /// Per utterance: first and one-past-last frame index, and its source's index.
    pub prompts: Vec<(usize, usize, usize)>,
    pub source_names: Vec<String>,
    pub active_power: f64,
}

/// Draws up to `per_source` utterances from every recorded voice and a tenth of that from every
/// synthetic one, shuffles them, brings each to −20 dBFS active level plus a random −6…+3 dB, and
/// concatenates them with 0.5–1.5 s gaps (whole frames), starting and ending with a gap.
pub fn build_corpus(
    sources: &[Source],
    per_source: usize,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Corpus> {
    let mut picks = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        let mut files = source.files.clone();
        files.shuffle(rng);
        let take = if is_synthetic(&source.name) {
            per_source.div_ceil(SYNTHETIC_SHARE)
        } else {
            per_source
        };
        picks.extend(files.into_iter().take(take).map(|f| (s, f)));
    }
    picks.shuffle(rng);
    let mut corpus = Corpus {
        clean: Vec::new(),
        labels: Vec::new(),
        prompts: Vec::new(),
        source_names: sources.iter().map(|s| s.name.clone()).collect(),
        active_power: 0.0,
    };
    let push_gap = |c: &mut Corpus, rng: &mut ChaCha8Rng| {
        let frames = rng.gen_range(25..=75);
        c.clean.extend(std::iter::repeat_n(0.0, frames * FRAME));
        c.labels.extend(std::iter::repeat_n(false, frames));
    };
    for (s, f) in picks {
        let u = utterance(&f)?;
        if !u.labels.contains(&true) {
            continue;
        }
        push_gap(&mut corpus, rng);
        let target =
            32768f64.powi(2) * 10f64.powf((SPEECH_LEVEL_DBFS + rng.gen_range(-6.0..3.0)) / 10.0);
        let gain = (target / u.active_power).sqrt();
        let start = corpus.labels.len();
        corpus.labels.extend_from_slice(&u.labels);
        corpus.prompts.push((start, corpus.labels.len(), s));
        corpus.clean.extend(u.pcm.iter().map(|x| x * gain));
    }
    push_gap(&mut corpus, rng);
    let (mut sum, mut n) = (0.0, 0usize);
    for (frame, &l) in corpus.clean.chunks(FRAME).zip(&corpus.labels) {
        if l {
            sum += frame.iter().map(|x| x * x).sum::<f64>();
            n += FRAME;
        }
    }
    corpus.active_power = sum / n.max(1) as f64;
    Ok(corpus)
}

/// A signal to mix under the speech, with its gain.
pub type Under<'a> = Option<(&'a [f64], f64)>;

/// `clean` plus `under` (looped), rounded, clipped to 16 bits and through a G.711 µ-law round trip.
pub fn mix(clean: &[f64], under: Under<'_>) -> Vec<i16> {
    clean
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let x = s + under.map_or(0.0, |(n, g)| n[i % n.len()] * g);
            decode_sample(encode_sample(x.round().clamp(-32768.0, 32767.0) as i16))
        })
        .collect()
}

pub fn white_noise(len: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.r#gen();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// Pink (1/f) noise: white noise through Paul Kellet's economy filter (−3 dB per octave within
/// ±0.5 dB above 9 Hz at 44.1 kHz; at 8 kHz the poles sit higher, which still slopes −3 dB per
/// octave across the telephone band).
pub fn pink_noise(len: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let white = white_noise(len, rng);
    let (mut b0, mut b1, mut b2) = (0.0, 0.0, 0.0);
    white
        .iter()
        .map(|&w| {
            b0 = 0.99765 * b0 + w * 0.0990460;
            b1 = 0.96300 * b1 + w * 0.2965164;
            b2 = 0.57000 * b2 + w * 1.0526913;
            b0 + b1 + b2 + w * 0.1848
        })
        .collect()
}

/// Babble: `talkers` voices at equal level talking at once without pauses, each a random
/// sequence of utterances from `sources` (leading and trailing silence cut), `len` samples.
pub fn babble(
    sources: &[Source],
    talkers: usize,
    len: usize,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Vec<f64>> {
    let mut out = vec![0.0; len];
    for _ in 0..talkers {
        let mut voice = Vec::with_capacity(len);
        while voice.len() < len {
            let source = &sources[rng.gen_range(0..sources.len())];
            let file = &source.files[rng.gen_range(0..source.files.len())];
            let u = utterance(file)?;
            let (Some(first), Some(last)) = (
                u.labels.iter().position(|&l| l),
                u.labels.iter().rposition(|&l| l),
            ) else {
                continue;
            };
            let gain =
                (32768f64.powi(2) * 10f64.powf(SPEECH_LEVEL_DBFS / 10.0) / u.active_power).sqrt();
            voice.extend(
                u.pcm[first * FRAME..(last + 1) * FRAME]
                    .iter()
                    .map(|x| x * gain),
            );
        }
        for (o, v) in out.iter_mut().zip(voice) {
            *o += v;
        }
    }
    Ok(out)
}

pub fn mean_power(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64
}

/// One signal per music track of a source.
pub struct Music {
    pub name: String,
    pub tracks: Vec<Vec<f64>>,
}

pub fn music(split: Split) -> anyhow::Result<Vec<Music>> {
    sources(Kind::Music, split)?
        .into_iter()
        .map(|s| {
            let tracks = s
                .files
                .iter()
                .map(|f| Ok(read_wav(f)?.iter().map(|&x| f64::from(x)).collect()))
                .collect::<anyhow::Result<_>>()?;
            Ok(Music {
                name: s.name,
                tracks,
            })
        })
        .collect()
}

/// A generator seeded from `seed` and a name, so each draw is independent of the others.
pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    ChaCha8Rng::seed_from_u64(seed ^ h)
}
