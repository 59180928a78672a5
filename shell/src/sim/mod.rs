//! `handset sim`: plays Twilio against any Media Streams server over real sockets.

pub mod client;

pub use client::{
    CallOutcome, CallPlan, Impairments, Received, ReceivedKind, SimError, StreamTarget,
    parse_twiml, post_webhook, run_call, run_stream,
};
