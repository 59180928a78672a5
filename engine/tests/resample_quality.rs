//! Measured quality of every resampling pair the engine uses, through the streaming API.
//!
//! Each measurement streams its signal through [`Resampler::push`] in 20 ms chunks, pops
//! everything after every push, and flushes at the end, exactly as the call does. Then:
//!
//! - **Delay:** an impulse at 0.1 s must come out at 0.1 s (the warm-up is trimmed), and the
//!   steady-state lag of popped output behind pushed input must equal [`Resampler::delay`],
//!   which must be at most 10 ms.
//! - **Passband:** least-squares sinusoid fit at the known frequency over 200 ms, after skipping
//!   100 ms of onset transient. Flat within ±0.5 dB from 300 to 3400 Hz.
//! - **Aliasing (downsampling):** tones from 4.1 kHz to the input Nyquist in 100 Hz steps; output
//!   RMS over 100 ms (after 50 ms) relative to input RMS; the worst must be at most −60 dB.
//! - **Images (8k → 16k):** tones `f` in the telephone band; the fitted amplitude at `8000 − f`
//!   relative to the input; the worst must be at most −60 dB.
//! - **Length:** over many odd-sized pushes (7, 113, 441 samples) the output length follows the
//!   ratio exactly while streaming and to within ±1 sample after `flush`.
//!
//! - **No allocation:** `push`, `pop_into`, `flush` and `reset` never touch the heap (a counting
//!   global allocator, per thread, watches them).
//!
//! Run with `--nocapture` to see the numbers (they are copied into `docs/resampler.md`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::f64::consts::PI;
use std::fmt::Write as _;

use handset_engine::SampleRate;
use handset_engine::resample::Resampler;

/// Counts heap allocations made by the current thread, so tests running in parallel do not
/// disturb each other's counts.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    // `try_with` because the allocator also runs while thread-locals are being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Every pair the engine builds.
const PAIRS: [(SampleRate, SampleRate); 7] = [
    (SampleRate::NARROWBAND, SampleRate::WIDEBAND),
    (SampleRate::NARROWBAND, SampleRate::NARROWBAND),
    (SampleRate::WIDEBAND, SampleRate::NARROWBAND),
    (SampleRate::HZ_22050, SampleRate::NARROWBAND),
    (SampleRate::HZ_24000, SampleRate::NARROWBAND),
    (SampleRate::HZ_44100, SampleRate::NARROWBAND),
    (SampleRate::HZ_48000, SampleRate::NARROWBAND),
];

/// Passband test frequencies in Hz; the last one is informative only (beyond 3.4 kHz).
const PASSBAND_HZ: [f64; 6] = [300.0, 1000.0, 2000.0, 3000.0, 3400.0, 3700.0];

/// Tone amplitude: −6 dBFS, loud enough that i16 rounding sits near −95 dB.
const AMPLITUDE: f64 = 16_384.0;

/// A tone's length and the measured window inside it, in seconds of time-aligned output.
#[derive(Clone, Copy)]
struct Span {
    tone: f64,
    skip: f64,
    window: f64,
}

/// Gain and image fits: 200 ms after 100 ms of onset transient.
const FIT: Span = Span {
    tone: 0.4,
    skip: 0.1,
    window: 0.2,
};

/// Alias sweeps (hundreds of tones): 100 ms after 50 ms. The filter's onset transient is over
/// 10 ms after the tone starts, and the window ends 50 ms before the tone does.
const SWEEP: Span = Span {
    tone: 0.2,
    skip: 0.05,
    window: 0.1,
};

fn label(from: SampleRate, to: SampleRate) -> String {
    format!(
        "{}k→{}k",
        from.hz() as f64 / 1000.0,
        to.hz() as f64 / 1000.0
    )
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.max(1e-12).log10()
}

fn tone(hz: f64, rate: SampleRate, seconds: f64) -> Vec<i16> {
    let len = (seconds * f64::from(rate.hz())) as usize;
    (0..len)
        .map(|n| {
            let phase = 2.0 * PI * hz * n as f64 / f64::from(rate.hz());
            (AMPLITUDE * phase.sin()).round() as i16
        })
        .collect()
}

/// Streams `input` in `chunk`-sized pushes, popping after each, then flushes and pops the rest.
fn stream(r: &mut Resampler, input: &[i16], chunk: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(input.len() * 6 + 1_000);
    let mut buf = vec![0i16; 4_096];
    for piece in input.chunks(chunk) {
        assert_eq!(r.push(piece), piece.len(), "the FIFO filled while popping");
        drain_into(r, &mut buf, &mut out);
    }
    r.flush();
    drain_into(r, &mut buf, &mut out);
    out
}

fn drain_into(r: &mut Resampler, buf: &mut [i16], out: &mut Vec<i16>) {
    loop {
        let n = r.pop_into(buf);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn resampler(from: SampleRate, to: SampleRate) -> Resampler {
    Resampler::new(from, to).unwrap_or_else(|e| panic!("{}: {e}", label(from, to)))
}

/// Resets `r`, streams a tone through it in 20 ms chunks and returns the measured window.
fn tone_window(r: &mut Resampler, hz: f64, span: Span) -> Vec<f64> {
    let (from, to) = (r.from_rate(), r.to_rate());
    r.reset();
    let out = stream(r, &tone(hz, from, span.tone), from.frame_samples());
    let expected_len = (span.tone * f64::from(to.hz())).round() as usize;
    assert_eq!(out.len(), expected_len, "{} output length", label(from, to));
    let start = (span.skip * f64::from(to.hz())) as usize;
    let len = (span.window * f64::from(to.hz())) as usize;
    out[start..start + len]
        .iter()
        .map(|&s| f64::from(s))
        .collect()
}

/// Least-squares fit of `a·cos + b·sin` at `hz`; returns (amplitude, residual RMS).
fn fit(window: &[f64], hz: f64, rate: SampleRate) -> (f64, f64) {
    let w = 2.0 * PI * hz / f64::from(rate.hz());
    let (mut cc, mut ss, mut cs, mut yc, mut ys) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (n, &y) in window.iter().enumerate() {
        let (s, c) = (w * n as f64).sin_cos();
        cc += c * c;
        ss += s * s;
        cs += c * s;
        yc += y * c;
        ys += y * s;
    }
    let det = cc * ss - cs * cs;
    let a = (yc * ss - ys * cs) / det;
    let b = (ys * cc - yc * cs) / det;
    let residual = window
        .iter()
        .enumerate()
        .map(|(n, &y)| {
            let (s, c) = (w * n as f64).sin_cos();
            (y - a * c - b * s).powi(2)
        })
        .sum::<f64>()
        / window.len() as f64;
    (a.hypot(b), residual.sqrt())
}

/// A level in dB, or "silent" when every output sample rounded to zero.
fn level_text(level: f64) -> String {
    if level < -200.0 {
        "silent".to_owned()
    } else {
        format!("{level:.1}")
    }
}

fn rms(window: &[f64]) -> f64 {
    (window.iter().map(|y| y * y).sum::<f64>() / window.len() as f64).sqrt()
}

/// Where a tone at `hz` lands after sampling at `rate` (folded into 0..=Nyquist).
fn alias_of(hz: f64, rate: SampleRate) -> f64 {
    let fs = f64::from(rate.hz());
    let folded = hz % fs;
    if folded > fs / 2.0 {
        fs - folded
    } else {
        folded
    }
}

#[test]
fn impulse_lands_at_its_input_time_and_lag_equals_reported_delay() {
    let mut report =
        String::from("\npair | delay() ms | measured lag ms | impulse peak offset (samples)\n");
    for (from, to) in PAIRS {
        let mut r = resampler(from, to);
        let delay = r.delay();
        assert!(
            delay.as_secs_f64() <= 0.010,
            "{}: delay {delay:?}",
            label(from, to)
        );

        let mut input = vec![0i16; from.hz() as usize / 2];
        let at = from.hz() as usize / 10;
        input[at] = 30_000;
        let chunk = from.frame_samples();
        let (mut popped, mut buf, mut out) = (0usize, vec![0i16; 4_096], Vec::new());
        let mut lags = Vec::new();
        for piece in input.chunks(chunk) {
            assert_eq!(r.push(piece), piece.len());
            drain_into(&mut r, &mut buf, &mut out);
            popped = out.len();
            // Whole 20 ms chunks were pushed, so the expected output count is an integer.
            let pushed = ((lags.len() + 1) * chunk) as u64;
            let due = pushed * u64::from(to.hz()) / u64::from(from.hz());
            lags.push(due as i64 - popped as i64);
        }
        r.flush();
        drain_into(&mut r, &mut buf, &mut out);
        let tail = to.hz() as usize / 2 - popped;
        assert_eq!(
            tail as i64,
            lags[0],
            "{}: flush must release the lagging tail",
            label(from, to)
        );

        // The lag of output behind input is constant, and is the reported delay.
        let lag = lags[0];
        assert!(
            lags.iter().all(|&l| l == lag),
            "{}: lag varies {lags:?}",
            label(from, to)
        );
        let lag_seconds = lag as f64 / f64::from(to.hz());
        assert!(
            (lag_seconds - delay.as_secs_f64()).abs() <= 1.0 / f64::from(to.hz()),
            "{}: lag {lag_seconds} s vs delay() {delay:?}",
            label(from, to)
        );

        // With the warm-up trimmed, the impulse comes out at its own input time.
        let peak = out
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.unsigned_abs())
            .map(|(i, _)| i)
            .unwrap();
        let expected = to.hz() as usize / 10;
        let offset = peak as i64 - expected as i64;
        assert!(
            offset.abs() <= 1,
            "{}: impulse peak at {peak}, expected {expected}",
            label(from, to)
        );
        writeln!(
            report,
            "{} | {:.2} | {:.2} | {offset:+}",
            label(from, to),
            delay.as_secs_f64() * 1e3,
            lag_seconds * 1e3
        )
        .unwrap();
    }
    println!("{report}");
}

#[test]
fn passband_is_flat_within_half_a_db_to_3400_hz() {
    let mut report =
        String::from("\npair | gain dB @ 300/1000/2000/3000/3400 (3700) Hz | SNR @1k dB\n");
    for (from, to) in PAIRS {
        let mut r = resampler(from, to);
        let mut gains = Vec::new();
        let mut snr = 0.0;
        for hz in PASSBAND_HZ {
            let window = tone_window(&mut r, hz, FIT);
            let (amplitude, residual) = fit(&window, hz, to);
            let gain = db(amplitude / AMPLITUDE);
            if hz <= 3400.0 {
                assert!(
                    gain.abs() <= 0.5,
                    "{}: {gain:.3} dB at {hz} Hz",
                    label(from, to)
                );
            }
            if hz == 1000.0 {
                snr = db(amplitude / std::f64::consts::SQRT_2 / residual);
            }
            gains.push(format!("{gain:+.3}"));
        }
        let gains = format!("{} ({})", gains[..5].join(" / "), gains[5]);
        writeln!(report, "{} | {gains} | {snr:.1}", label(from, to)).unwrap();
    }
    println!("{report}");
}

#[test]
fn downsampling_aliases_stay_below_minus_60_db() {
    let mut report = String::from(
        "\npair | worst alias dB (tone Hz) | worst landing in 300–3400 Hz dB (tone Hz)\n",
    );
    for (from, to) in PAIRS {
        if from.hz() <= to.hz() {
            continue;
        }
        let mut r = resampler(from, to);
        let input_rms = AMPLITUDE / std::f64::consts::SQRT_2;
        let (mut worst, mut worst_band) = ((f64::MIN, 0.0), (f64::MIN, 0.0));
        let mut hz = 4_100.0;
        while hz < f64::from(from.hz()) / 2.0 {
            let level = db(rms(&tone_window(&mut r, hz, SWEEP)) / input_rms);
            if level > worst.0 {
                worst = (level, hz);
            }
            let lands = alias_of(hz, to);
            if (300.0..=3400.0).contains(&lands) && level > worst_band.0 {
                worst_band = (level, hz);
            }
            hz += 100.0;
        }
        assert!(
            worst.0 <= -60.0,
            "{}: alias {:.1} dB from {} Hz",
            label(from, to),
            worst.0,
            worst.1
        );
        writeln!(
            report,
            "{} | {} ({}) | {} ({})",
            label(from, to),
            level_text(worst.0),
            worst.1,
            level_text(worst_band.0),
            worst_band.1
        )
        .unwrap();
    }
    println!("{report}");
}

#[test]
fn upsampling_images_stay_below_minus_60_db() {
    let (from, to) = (SampleRate::NARROWBAND, SampleRate::WIDEBAND);
    let mut r = resampler(from, to);
    let mut worst = (f64::MIN, 0.0);
    let mut hz = 300.0;
    while hz <= 3400.0 {
        let window = tone_window(&mut r, hz, FIT);
        let image_hz = f64::from(from.hz()) - hz;
        let (amplitude, _) = fit(&window, image_hz, to);
        let level = db(amplitude / AMPLITUDE);
        if level > worst.0 {
            worst = (level, hz);
        }
        hz += 100.0;
    }
    assert!(
        worst.0 <= -60.0,
        "image {:.1} dB from a {} Hz tone",
        worst.0,
        worst.1
    );
    println!(
        "\n8k→16k worst image for 300–3400 Hz tones: {:.1} dB (tone {} Hz)",
        worst.0, worst.1
    );
}

#[test]
fn long_run_length_tracks_the_ratio_within_one_sample() {
    let mut report =
        String::from("\npair | push size | input samples | output samples | exact ratio | error\n");
    for (from, to) in PAIRS {
        let (f, t) = (u64::from(from.hz()), u64::from(to.hz()));
        let chunk_in = from.frame_samples() as u64;
        let chunk_out = to.frame_samples() as u64;
        let delay = (r_delay_samples(from, to)) as u64;
        for size in [7usize, 113, 441] {
            let mut r = resampler(from, to);
            let input = tone(425.0, from, (size * 300) as f64 / f64::from(from.hz()));
            let mut produced = 0u64;
            let mut pushed = 0u64;
            let mut pops = [0i16; 37];
            for piece in input.chunks(size) {
                assert_eq!(r.push(piece), piece.len());
                pushed += piece.len() as u64;
                // Pop in odd sizes too, leaving some queued.
                while r.available() >= pops.len() {
                    produced += r.pop_into(&mut pops) as u64;
                }
                let total = produced + r.available() as u64;
                let expected = if f == t {
                    pushed
                } else {
                    ((pushed / chunk_in) * chunk_out).saturating_sub(delay)
                };
                assert_eq!(
                    total,
                    expected,
                    "{} size {size} after {pushed}",
                    label(from, to)
                );
            }
            r.flush();
            let total = produced + r.available() as u64;
            let exact = pushed as f64 * t as f64 / f as f64;
            let error = total as f64 - exact;
            assert!(
                error.abs() <= 1.0,
                "{} size {size}: {total} vs {exact}",
                label(from, to)
            );
            writeln!(
                report,
                "{} | {size} | {pushed} | {total} | {exact:.2} | {error:+.2}",
                label(from, to)
            )
            .unwrap();
        }
    }
    println!("{report}");
}

/// The reported delay in output samples.
fn r_delay_samples(from: SampleRate, to: SampleRate) -> f64 {
    (resampler(from, to).delay().as_secs_f64() * f64::from(to.hz())).round()
}

#[test]
fn streaming_calls_never_allocate() {
    for (from, to) in PAIRS {
        let mut r = resampler(from, to);
        let input = tone(1_000.0, from, 0.5);
        let mut out = vec![0i16; 1_000];
        let before = allocations();
        for size in [7usize, 113, 441, 960, 1] {
            for piece in input.chunks(size).take(20) {
                r.push(piece);
                r.pop_into(&mut out);
            }
            r.flush();
            r.pop_into(&mut out);
        }
        r.push(&input);
        let _ = (r.available(), r.delay(), r.capacity());
        r.reset();
        let made = allocations() - before;
        assert_eq!(
            made,
            0,
            "{}: {made} allocations while streaming",
            label(from, to)
        );
    }
}
