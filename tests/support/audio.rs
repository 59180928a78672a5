//! Test audio at 8 kHz: recorded speech, a drum, silence before a clip, and how alike two
//! signals are.

use std::sync::Arc;
use std::time::Duration;

/// "Hello world", recorded: 8 kHz telephone speech (tests/data/hello-world.ulaw).
pub fn speech() -> Vec<i16> {
    let bytes = include_bytes!("../data/hello-world.ulaw");
    let mut pcm = vec![0i16; bytes.len()];
    handset_engine::codec::decode_into(bytes, &mut pcm);
    pcm
}

/// A drum: a decaying 120 Hz burst twice a second, loud, for `len` (8 kHz). Not speech, but
/// Handset's small VAD starts speech on it within 60 ms of silence and holds it, while Silero
/// VAD, started on it as the onset check starts it, never gets above 0.3: the sound the onset
/// check exists for.
pub fn drum(len: Duration) -> Vec<i16> {
    (0..len.as_millis() as usize * 8)
        .map(|i| {
            let t = (i % 4_000) as f64 / 8_000.0;
            ((-t * 30.0).exp() * (std::f64::consts::TAU * 120.0 * t).sin() * 20_000.0) as i16
        })
        .collect()
}

/// `lead` of silence, then `clip` (8 kHz), as a simulator plan's caller audio.
pub fn after_silence(lead: Duration, clip: &[i16]) -> Arc<Vec<i16>> {
    let mut audio = vec![0i16; (lead.as_millis() * 8) as usize];
    audio.extend_from_slice(clip);
    Arc::new(audio)
}

/// Best normalised cross-correlation between `a` and `b` over lags of either sign up to
/// `max_lag` samples (overlaps shorter than half a second are ignored).
pub fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    let energy = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>().sqrt();
    let mut best = 0.0f64;
    for shift in -(max_lag as i64)..=(max_lag as i64) {
        let (a0, b0) = if shift >= 0 {
            (0, shift as usize)
        } else {
            ((-shift) as usize, 0)
        };
        if a0 >= a.len() || b0 >= b.len() {
            continue;
        }
        let n = (a.len() - a0).min(b.len() - b0);
        if n < 4000 {
            continue;
        }
        let (x, y) = (&a[a0..a0 + n], &b[b0..b0 + n]);
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        let denom = energy(x) * energy(y);
        if denom > 0.0 {
            best = best.max(dot / denom);
        }
    }
    best
}
