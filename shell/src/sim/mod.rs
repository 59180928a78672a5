//! `handset sim`: plays Twilio against any Media Streams server over real sockets, and measures
//! what a caller would hear.
//!
//! | module | what |
//! |---|---|
//! | [`client`] | one simulated call: signed webhook, TwiML, signed WebSocket, real-time µ-law |
//! | [`script`] | the caller's audio (WAV or µ-law), speech spans, DTMF, impairment schedule |
//! | [`observer`] | the playback model plus every measurement, and their definitions |
//! | [`stats`] | fixed-size latency histograms with nearest-rank percentiles |
//! | [`procfs`] | CPU and memory of a process from `/proc` |
//! | [`report`] | aggregation, the text table and the JSON report |
//! | [`svg`] | the picture: latency histograms and per-call timelines |
//! | [`wire`] | `--wire-capture`: tcpdump, pcap reassembly, pacing measured at the wire |
//! | [`runner`] | scenarios, concurrent calls with a ramp, capacity mode, the command line |

pub mod client;
pub mod observer;
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
pub use runner::{SimArgs, run_cli};
