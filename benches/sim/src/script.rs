//! What the simulated caller says and how it reaches the server.
//!
//! A [`Script`] is the caller's audio for a whole call (8 kHz PCM), the spans in it that are
//! speech ([`Utterance`]: onset and end, as sent), DTMF keys by time, and the call length. Its
//! audio is encoded once into [`CallerFrames`]: one base64 µ-law payload per 20 ms frame, shared
//! by every call that plays the script, so sending costs no encoding.
//!
//! [`SendSchedule`] turns [`Impairments`] into the time each frame is written to the socket:
//! frame `k` (from 0) is captured at `(k + 1) · 20 ms` after `start`; bursts hold frames back and
//! send them together, jitter delays a frame by a random amount but keeps order, and skipped
//! chunks are never sent (their chunk and timestamp numbers are still used up, as with Twilio).
//!
//! WAV input: RIFF/WAVE, 16-bit PCM, 8 kHz (the first channel is used). Raw `.ulaw` files are
//! 8 kHz µ-law.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use handset_engine::codec;
use handset_shell::wav::Pcm16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Samples per 20 ms frame at 8 kHz.
const FRAME: usize = 160;
/// A frame's duration.
const FRAME_TIME: Duration = Duration::from_millis(20);

/// How the simulated caller's media reaches the server.
#[derive(Clone, Debug, Default)]
pub struct Impairments {
    /// Send frames in bursts of this many (TCP head-of-line blocking); 0 or 1 = no bursts.
    pub burst: u32,
    /// Random extra delay per frame, up to this (order kept).
    pub jitter: Duration,
    /// Probability of skipping a chunk (timestamps and chunk numbers jump).
    pub skip: f64,
    /// Seed for the impairments.
    pub seed: u64,
}

/// When frame `k` of the caller's audio is written, and whether it is skipped.
#[derive(Debug)]
pub struct SendSchedule {
    burst: u64,
    jitter_us: u64,
    skip: f64,
    rng: ChaCha8Rng,
    last_at: Duration,
}

/// One frame's fate.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FrameSend {
    /// When it is written, since the stream start.
    pub at: Duration,
    /// Never sent (chunk and timestamp still advance).
    pub skipped: bool,
}

impl SendSchedule {
    /// A schedule for these impairments.
    pub fn new(impair: &Impairments) -> Self {
        Self {
            burst: u64::from(impair.burst.max(1)),
            jitter_us: u64::try_from(impair.jitter.as_micros()).unwrap_or(u64::MAX),
            skip: impair.skip.clamp(0.0, 1.0),
            rng: ChaCha8Rng::seed_from_u64(impair.seed),
            last_at: Duration::ZERO,
        }
    }

    /// The fate of frame `k`; call with `k = 0, 1, 2, …` in order.
    pub fn next(&mut self, k: u64) -> FrameSend {
        // A frame can only leave once captured; a burst leaves with its last frame.
        let burst_end = (k / self.burst + 1) * self.burst;
        let mut at = FRAME_TIME * u32::try_from(burst_end).unwrap_or(u32::MAX);
        if self.jitter_us > 0 {
            at += Duration::from_micros(self.rng.gen_range(0..=self.jitter_us));
        }
        // Order is kept: TCP never reorders.
        at = at.max(self.last_at);
        self.last_at = at;
        let skipped = self.skip > 0.0 && self.rng.gen_bool(self.skip);
        FrameSend { at, skipped }
    }
}

/// The caller's audio as ready-to-send base64 µ-law payloads, one per 20 ms frame.
#[derive(Debug)]
pub struct CallerFrames {
    payloads: Vec<Box<str>>,
    silence: Box<str>,
}

impl CallerFrames {
    /// Encodes 8 kHz PCM (the last frame is padded with silence).
    pub fn from_pcm(pcm: &[i16]) -> Self {
        let mut mulaw = [0u8; FRAME];
        let payloads = pcm
            .chunks(FRAME)
            .map(|chunk| {
                let mut frame = [0i16; FRAME];
                frame[..chunk.len()].copy_from_slice(chunk);
                codec::encode_into(&frame, &mut mulaw);
                STANDARD.encode(mulaw).into_boxed_str()
            })
            .collect();
        let mut silence = [0u8; FRAME];
        codec::encode_into(&[0i16; FRAME], &mut silence);
        Self {
            payloads,
            silence: STANDARD.encode(silence).into_boxed_str(),
        }
    }

    /// The payload of frame `k`; silence past the end of the audio.
    pub fn payload(&self, k: u64) -> &str {
        usize::try_from(k)
            .ok()
            .and_then(|k| self.payloads.get(k))
            .unwrap_or(&self.silence)
    }

    /// Frames of audio (before the silence).
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether there is no audio.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// A stretch of caller speech, as sent.
#[derive(Clone, Copy, Debug, Eq, PartialEq, serde::Serialize)]
pub struct Utterance {
    /// When the sim began sending the speech (first frame above the speech threshold).
    #[serde(serialize_with = "ser_ms")]
    pub onset: Duration,
    /// When the last speech frame was sent.
    #[serde(serialize_with = "ser_ms")]
    pub end: Duration,
}

pub(crate) fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A whole call's caller side.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// 8 kHz PCM from the stream start; silence after it.
    pub audio: Vec<i16>,
    /// Speech spans, in order.
    pub utterances: Vec<Utterance>,
    /// DTMF keys by time from the stream start, in order.
    pub dtmf: Vec<(Duration, char)>,
    /// Call length (media is sent until then, then `stop`).
    pub duration: Duration,
    /// The caller's line also returns what it plays (a speakerphone); `None`: it does not.
    pub echo: Option<LineEcho>,
}

/// A caller's line that returns what Twilio plays to it: `delay` later, times `gain`, mixed
/// into the caller's own audio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineEcho {
    /// From when Twilio plays a sample to when it is in the caller's audio.
    pub delay: Duration,
    /// Linear gain (0.25 is −12 dB).
    pub gain: f32,
}

impl Script {
    /// Silence for `duration`.
    pub fn silent(duration: Duration) -> Self {
        Self {
            duration,
            ..Self::default()
        }
    }

    /// Places `clip` at `at` (mixing over anything there). Speech clips add an utterance
    /// spanning their frames above the speech threshold; other clips (music) add none.
    pub fn place(&mut self, at: Duration, clip: &[i16], speech: bool) -> &mut Self {
        let start = samples(at);
        if self.audio.len() < start + clip.len() {
            self.audio.resize(start + clip.len(), 0);
        }
        for (dst, src) in self.audio[start..].iter_mut().zip(clip) {
            *dst = dst.saturating_add(*src);
        }
        if speech && let Some((first, last)) = speech_frames(clip) {
            let onset = at + FRAME_TIME * first as u32;
            let end = at + FRAME_TIME * (last as u32 + 1);
            self.utterances.push(Utterance { onset, end });
            self.utterances.sort_by_key(|u| u.onset);
        }
        self
    }

    /// Sends `digit` at `at`.
    pub fn key(&mut self, at: Duration, digit: char) -> &mut Self {
        self.dtmf.push((at, digit));
        self.dtmf.sort_by_key(|(t, _)| *t);
        self
    }

    /// The audio clipped to the call length.
    pub fn frames(&self) -> CallerFrames {
        let end = samples(self.duration).min(self.audio.len());
        CallerFrames::from_pcm(&self.audio[..end])
    }
}

fn samples(d: Duration) -> usize {
    usize::try_from(d.as_micros() * 8 / 1000).unwrap_or(usize::MAX)
}

/// Peak above which a 20 ms frame counts as speech when placing a clip (about −36 dBFS).
const SPEECH_PEAK: i16 = 500;

/// First and last 20 ms frame of `clip` whose peak reaches `SPEECH_PEAK`.
pub fn speech_frames(clip: &[i16]) -> Option<(usize, usize)> {
    let loud = |f: &[i16]| {
        f.iter()
            .any(|s| s.unsigned_abs() >= SPEECH_PEAK.unsigned_abs())
    };
    let first = clip.chunks(FRAME).position(loud)?;
    let last = clip.chunks(FRAME).rposition(loud)?;
    Some((first, last))
}

/// Why an audio file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a WAV this reader handles.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads 8 kHz audio: a 16-bit PCM WAV (first channel) or raw µ-law (`.ulaw`, `.mulaw`, `.ul`).
pub fn load_audio(path: &Path) -> Result<Vec<i16>, AudioError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: name.clone(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(ext.as_str(), "ulaw" | "mulaw" | "ul") {
        return Ok(decode_mulaw(&bytes));
    }
    parse_wav(&bytes).map_err(|reason| AudioError::Format { path: name, reason })
}

/// Decodes raw 8 kHz µ-law.
pub fn decode_mulaw(bytes: &[u8]) -> Vec<i16> {
    let mut pcm = vec![0i16; bytes.len()];
    codec::decode_into(bytes, &mut pcm);
    pcm
}

/// Reads a WAV file of 16-bit PCM at 8 kHz; returns the first channel.
pub fn parse_wav(bytes: &[u8]) -> Result<Vec<i16>, String> {
    let pcm = Pcm16::read(bytes)?;
    if pcm.rate != 8_000 {
        return Err(format!("sample rate {} Hz; need 8000 Hz", pcm.rate));
    }
    let channels = usize::from(pcm.channels.max(1));
    Ok(pcm.samples.into_iter().step_by(channels).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV of `samples` (interleaved over `channels`) at `rate`, 8 or 16 bits per sample.
    fn wav(rate: u32, channels: u16, bits: u16, samples: &[i16]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for &s in samples {
            match bits {
                8 => writer.write_sample(s as i8).unwrap(),
                _ => writer.write_sample(s).unwrap(),
            }
        }
        writer.finalize().unwrap();
        out.into_inner()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unimpaired_frames_leave_every_20_ms_after_capture() {
        let mut s = SendSchedule::new(&Impairments::default());
        let times: Vec<_> = (0..4).map(|k| s.next(k)).collect();
        assert_eq!(
            times.iter().map(|f| f.at).collect::<Vec<_>>(),
            [ms(20), ms(40), ms(60), ms(80)]
        );
        assert!(times.iter().all(|f| !f.skipped));
    }

    #[test]
    fn bursts_hold_frames_until_the_last_one_is_captured() {
        let mut s = SendSchedule::new(&Impairments {
            burst: 3,
            ..Impairments::default()
        });
        let times: Vec<_> = (0..7).map(|k| s.next(k).at).collect();
        assert_eq!(
            times,
            [ms(60), ms(60), ms(60), ms(120), ms(120), ms(120), ms(180)]
        );
    }

    #[test]
    fn jitter_delays_within_bounds_and_never_reorders() {
        let mut s = SendSchedule::new(&Impairments {
            jitter: ms(35),
            seed: 7,
            ..Impairments::default()
        });
        let mut last = Duration::ZERO;
        let mut delayed = 0;
        for k in 0..2_000u64 {
            let at = s.next(k).at;
            let captured = ms(20 * (k + 1));
            assert!(at >= captured && at >= last, "frame {k} at {at:?}");
            // Never more than the jitter bound after the later of capture and the previous send.
            assert!(at <= captured.max(last) + ms(35));
            delayed += usize::from(at > captured);
            last = at;
        }
        assert!(delayed > 1_000, "jitter delays most frames: {delayed}");
    }

    #[test]
    fn skip_probability_is_honoured_and_reproducible() {
        let impair = Impairments {
            skip: 0.1,
            seed: 42,
            ..Impairments::default()
        };
        let count = |impair: &Impairments| {
            let mut s = SendSchedule::new(impair);
            (0..10_000u64).filter(|&k| s.next(k).skipped).count()
        };
        let skipped = count(&impair);
        assert!((800..1_200).contains(&skipped), "{skipped} of 10000");
        assert_eq!(skipped, count(&impair), "same seed, same skips");
    }

    #[test]
    fn placing_speech_records_the_loud_span_as_an_utterance() {
        let mut clip = vec![0i16; 160 * 10];
        for s in &mut clip[160 * 3..160 * 7] {
            *s = 4_000;
        }
        let mut script = Script::silent(Duration::from_secs(2));
        script.place(ms(500), &clip, true);
        script.place(ms(1_000), &clip, false);
        assert_eq!(
            script.utterances,
            [Utterance {
                onset: ms(560),
                end: ms(640)
            }]
        );
        assert_eq!(script.audio.len(), 8 * 1_000 + clip.len());
        let frames = script.frames();
        assert_eq!(frames.len(), 60, "the audio, shorter than the call");
        script.duration = Duration::from_secs(1);
        assert_eq!(script.frames().len(), 50, "clipped to the call length");
        assert_eq!(frames.payload(0), frames.payload(10_000), "silence after");
        assert_ne!(frames.payload(28), frames.payload(0));
    }

    #[test]
    fn wav_reader_takes_16_bit_8_khz_first_channel_and_refuses_others() {
        assert_eq!(
            parse_wav(&wav(8_000, 1, 16, &[1, -2, 3])).unwrap(),
            [1, -2, 3]
        );
        assert_eq!(
            parse_wav(&wav(8_000, 2, 16, &[1, 9, -2, 9])).unwrap(),
            [1, -2]
        );
        assert!(
            parse_wav(&wav(16_000, 1, 16, &[1]))
                .unwrap_err()
                .contains("16000")
        );
        assert!(parse_wav(&wav(8_000, 1, 8, &[1])).is_err());
        assert!(parse_wav(b"not a wav").is_err());
    }
}
