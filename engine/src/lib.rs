//! # handset-engine
//!
//! The performance-critical media path of Handset, a realtime voice media engine for Twilio Media
//! Streams. Every component here is **sans-IO**: it never reads a clock, sleeps, spawns or does
//! I/O. Wall time enters as an [`std::time::Instant`] argument; media time is counted in samples
//! ([`SampleTime`]). Only the `driver` module owns threads and clocks (enforced by clippy's
//! `disallowed-methods` in `clippy.toml`).
//!
//! Components, in the order a caller frame meets them:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | µ-law | [`codec`] | G.711 µ-law encode/decode, bit-exact with ITU-T G.191 |
//! | jitter | [`jitter`] | re-times bursty TCP arrivals into a steady 20 ms playout, conceals gaps |
//! | resample | [`resample`] | rubato FFT resamplers, streaming, state kept per call |
//! | VAD | [`vad`] | speech started / ended at 8 kHz on 20 ms frames |
//! | pacer | [`pacer`] | one 160-byte frame per 20 ms on absolute deadlines, marks in order |
//! | call | [`call`] | the per-call state machine composing all of the above, with barge-in |
//! | agent | [`agent`] | the per-call agent seam and the built-in echo agent |
//! | driver | [`driver`] | dedicated worker threads, absolute-deadline sleeps, rings to the shell |
//!
//! Every stateful component has the same verbs: `handle_*` / `push`/`insert` for inputs,
//! `poll_timeout()` for the next instant it wants to be woken at, and `poll_*` / `pop` for
//! outputs. After any input the caller drains the outputs until they return `None`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod call;
pub mod codec;
pub mod driver;
pub mod frame;
pub mod jitter;
pub mod pacer;
pub mod resample;
pub mod time;
pub mod vad;

pub use frame::{InboundMedia, MarkId, MediaError, MulawFrame, PcmFrame, WidebandFrame};
pub use time::{FRAME, FRAME_SAMPLES, SampleRate, SampleTime, WIDEBAND_FRAME_SAMPLES};
