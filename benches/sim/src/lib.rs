//! `handset-sim`: plays Twilio against any Media Streams server over real sockets, and measures
//! what a caller would hear. A client tool, apart from the server: it uses the shell only for
//! what both sides of the protocol share (the signature, the Media Streams messages as Twilio
//! writes and reads them, the WAV reader, the SVG writer), and the engine for µ-law and mark
//! ids.
//!
//! | module | what |
//! |---|---|
//! | [`client`] | one simulated call: signed webhook, TwiML, signed WebSocket, real-time µ-law |
//! | [`script`] | the caller's audio (WAV or µ-law), speech spans, DTMF, impairment schedule |
//! | [`playback`] | a sans-IO model of Twilio's playback buffer (also the engine's virtual-time tests' Twilio) |
//! | [`observer`] | the playback model plus every measurement, and their definitions |
//! | [`stats`] | fixed-size latency histograms with nearest-rank percentiles |
//! | [`procfs`] | CPU and memory of a process from `/proc` |
//! | [`report`] | aggregation, the text table and the JSON report |
//! | [`svg`] | the picture: latency histograms and per-call timelines |
//! | [`wire`] | `--wire-capture`: tcpdump, pcap reassembly, pacing measured at the wire |
//! | [`runner`] | scenarios, concurrent calls with a ramp, capacity mode, the command line |

pub mod client;
mod clock;
pub mod observer;
pub mod playback;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod script;
pub mod stats;
pub mod svg;
pub mod wire;

pub use client::{
    CallOutcome, CallPlan, Impairments, Received, ReceivedKind, SimError, StreamTarget,
    parse_twiml, post_webhook, run_call, run_stream,
};
pub use observer::{CallMetrics, CallObserver};
pub use playback::{MarkEcho, PlaybackModel, PlaybackStats, PlayedAudio};
pub use runner::{SimArgs, run_cli};
