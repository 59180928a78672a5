//! Per-stage and whole-path costs of the media engine, on realistic 20 ms shapes.
//!
//! Every number is per 20 ms frame. Budgets (ARCHITECTURE.md): inbound path (decode + jitter +
//! resample 8→16 kHz + VAD) ≤ 2 µs; outbound path (resample 24→8 kHz + encode + pacer) ≤ 3 µs.
//! Run with `cargo bench --bench stages`.

#![allow(clippy::disallowed_methods)] // benches take real anchor instants

use std::f64::consts::TAU;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use handset_engine::call::{Call, CallConfig, Input};
use handset_engine::codec;
use handset_engine::jitter::{JitterBuffer, JitterConfig};
use handset_engine::pacer::{Pacer, PacerConfig};
use handset_engine::resample::Resampler;
use handset_engine::vad::{Vad, VadConfig};
use handset_engine::{InboundMedia, MulawFrame, PcmFrame, SampleRate};

const FRAME: Duration = Duration::from_millis(20);

/// Speech-like 8 kHz frames: a voiced tone with a syllabic envelope, then quiet noise.
fn caller_frames(n: usize) -> Vec<PcmFrame> {
    (0..n)
        .map(|f| {
            let mut pcm = PcmFrame::SILENCE;
            for (i, s) in pcm.0.iter_mut().enumerate() {
                let t = (f * 160 + i) as f64 / 8000.0;
                let env = if (f / 50) % 2 == 0 { 0.3 } else { 0.002 };
                let v = (TAU * 140.0 * t).sin()
                    + 0.5 * (TAU * 280.0 * t).sin()
                    + 0.3 * (TAU * 700.0 * t).sin();
                *s = (v * env * 20_000.0) as i16;
            }
            pcm
        })
        .collect()
}

fn agent_chunk(rate: SampleRate) -> Vec<i16> {
    (0..rate.frame_samples())
        .map(|i| ((TAU * 440.0 * i as f64 / f64::from(rate.hz())).sin() * 9000.0) as i16)
        .collect()
}

fn codec_benches(c: &mut Criterion) {
    let pcm = caller_frames(1)[0];
    let mulaw = codec::encode_frame(&pcm);
    let mut g = c.benchmark_group("codec");
    g.bench_function("decode_frame", |b| {
        b.iter(|| codec::decode_frame(black_box(&mulaw)))
    });
    g.bench_function("encode_frame", |b| {
        b.iter(|| codec::encode_frame(black_box(&pcm)))
    });
    g.finish();
}

fn resample_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    let pairs = [
        (SampleRate::NARROWBAND, SampleRate::WIDEBAND),
        (SampleRate::WIDEBAND, SampleRate::NARROWBAND),
        (SampleRate::HZ_22050, SampleRate::NARROWBAND),
        (SampleRate::HZ_24000, SampleRate::NARROWBAND),
        (SampleRate::HZ_44100, SampleRate::NARROWBAND),
        (SampleRate::HZ_48000, SampleRate::NARROWBAND),
    ];
    for (from, to) in pairs {
        let mut r = Resampler::new(from, to).expect("supported pair");
        let input = agent_chunk(from);
        let mut out = vec![0i16; to.frame_samples() * 2];
        g.bench_function(
            format!("{}k_to_{}k", from.hz() / 1000, to.hz() / 1000),
            |b| {
                b.iter(|| {
                    r.push(black_box(&input));
                    black_box(r.pop_into(&mut out))
                })
            },
        );
    }
    g.finish();
}

fn vad_benches(c: &mut Criterion) {
    let frames = caller_frames(500);
    let mut vad = Vad::new(&VadConfig::default()).expect("default config");
    let mut i = 0;
    c.bench_function("vad/push", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            black_box(vad.push(black_box(&frames[i])))
        })
    });
}

fn jitter_benches(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut jb = JitterBuffer::new(&JitterConfig::default()).expect("default config");
    let mut n: u64 = 0;
    c.bench_function("jitter/insert_pop", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + FRAME * n as u32;
            let media = InboundMedia {
                chunk: n,
                timestamp_ms: n * 20,
                payload: MulawFrame([0x55; 160]),
            };
            black_box(jb.insert(now, &media));
            while let Some(p) = jb.pop(now) {
                black_box(p);
            }
        })
    });
}

fn pacer_benches(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(&PacerConfig::default()).expect("default config");
    let mut n: u64 = 0;
    c.bench_function("pacer/push_tick", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + FRAME * n as u32;
            let _ = pacer.push_frame(now, MulawFrame([0x55; 160]));
            pacer.handle_timeout(now);
            while let Some(t) = pacer.poll_transmit() {
                black_box(t);
            }
        })
    });
}

/// Inbound path per frame: µ-law decode + jitter buffer + 8→16 kHz + VAD, composed by hand so
/// only these stages are measured.
fn inbound_path(c: &mut Criterion) {
    let t0 = Instant::now();
    let frames: Vec<MulawFrame> = caller_frames(500).iter().map(codec::encode_frame).collect();
    let mut jb = JitterBuffer::new(&JitterConfig::default()).expect("default config");
    let mut vad = Vad::new(&VadConfig::default()).expect("default config");
    let mut up = Resampler::new(SampleRate::NARROWBAND, SampleRate::WIDEBAND).expect("supported");
    let mut feed = [0i16; 640];
    let mut n: u64 = 0;
    c.bench_function("path/inbound_frame", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + FRAME * n as u32;
            let media = InboundMedia {
                chunk: n,
                timestamp_ms: n * 20,
                payload: frames[n as usize % frames.len()],
            };
            jb.insert(now, &media);
            while let Some(p) = jb.pop(now) {
                let pcm = codec::decode_frame(&p.frame);
                black_box(vad.push(&pcm));
                up.push(&pcm.0);
                black_box(up.pop_into(&mut feed));
            }
        })
    });
}

/// Outbound path per frame: 24→8 kHz + µ-law encode + pacer.
fn outbound_path(c: &mut Criterion) {
    let t0 = Instant::now();
    let rate = SampleRate::HZ_24000;
    let chunk = agent_chunk(rate);
    let mut down = Resampler::new(rate, SampleRate::NARROWBAND).expect("supported");
    let mut pacer = Pacer::new(&PacerConfig::default()).expect("default config");
    let mut pcm = PcmFrame::SILENCE;
    let mut n: u64 = 0;
    c.bench_function("path/outbound_frame", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + FRAME * n as u32;
            down.push(black_box(&chunk));
            while down.available() >= 160 {
                down.pop_into(&mut pcm.0);
                let _ = pacer.push_frame(now, codec::encode_frame(&pcm));
            }
            pacer.handle_timeout(now);
            while let Some(t) = pacer.poll_transmit() {
                black_box(t);
            }
        })
    });
}

/// A whole call tick: one caller frame in, one agent 24 kHz chunk in, the 20 ms timeout, and
/// every output drained (transmit, marks, 16 kHz feed, events).
fn call_tick(c: &mut Criterion) {
    let t0 = Instant::now();
    let frames: Vec<MulawFrame> = caller_frames(500).iter().map(codec::encode_frame).collect();
    let rate = SampleRate::HZ_24000;
    let chunk = agent_chunk(rate);
    let config = CallConfig {
        barge_in: false,
        ..CallConfig::default()
    };
    let mut call = Call::new(&config, t0).expect("default config");
    let mut n: u64 = 0;
    c.bench_function("call/tick", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + FRAME * n as u32;
            let media = InboundMedia {
                chunk: n,
                timestamp_ms: n * 20,
                payload: frames[n as usize % frames.len()],
            };
            let _ = call.handle_input(Input::Media(now, media));
            while let Some(o) = call.poll_output() {
                black_box(o);
            }
            let _ = call.handle_input(Input::AgentAudio(now, &chunk, rate));
            while let Some(o) = call.poll_output() {
                black_box(o);
            }
            let _ = call.handle_input(Input::Timeout(now));
            while let Some(o) = call.poll_output() {
                black_box(o);
            }
        })
    });
}

criterion_group!(
    benches,
    codec_benches,
    resample_benches,
    vad_benches,
    jitter_benches,
    pacer_benches,
    inbound_path,
    outbound_path,
    call_tick
);
criterion_main!(benches);
