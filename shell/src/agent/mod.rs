//! Remote voice agents over WebSocket: each call is bridged to the service at `AGENT_URL`.
//!
//! [`start`] builds the two halves of one call's bridge and the bounded queues between them:
//!
//! - [`remote::RemoteAgent`] runs on the call's engine thread as its [`Agent`]: it hands caller
//!   audio (16 kHz, 20 ms) and events to the client with `try_send`, and pulls agent audio and
//!   commands out of lock-free SPSC rings. It never blocks, locks or allocates per frame.
//! - [`client::run`] is a tokio task holding the client WebSocket to the agent: it connects, sends
//!   `start`, writes caller audio and events, and pushes the agent's audio and commands into the
//!   rings, waiting for room (so TCP backpressure, not memory, absorbs a fast agent).
//!
//! With `OPENAI_API_KEY` set, [`openai::run`] takes the client's place and speaks the OpenAI
//! Realtime API instead (same rings, same fallback).
//!
//! The wire protocol is in [`protocol`] and, with examples, in `docs/agent-protocol.md`. When
//! the agent is unreachable, too slow or drops, the caller hears the fallback sound and the
//! stream closes (1000, `agent failed`) so Twilio runs `/webhook/stream_ended` and records a
//! message.
//!
//! [`Agent`]: handset_engine::agent::Agent

use std::collections::HashMap;
use std::sync::Arc;

use handset_engine::agent::CallInfo;
use ringbuf::HeapRb;
use ringbuf::traits::Split;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::tokens::TOKEN_PARAMETER;

pub mod client;
pub mod openai;
pub mod protocol;
pub mod remote;

pub use remote::{APOLOGY, FailReason, RemoteAgent};

/// Agent audio held between the client and the engine, in samples (1 s at 48 kHz, 3 s at 16 kHz).
pub const AUDIO_RING: usize = 48_000;
/// Agent commands held between the client and the engine.
pub const COMMAND_RING: usize = 256;
/// Caller frames and events queued for the agent (128 frames = 2.56 s); more are dropped and
/// counted.
pub const UPLINK_QUEUE: usize = 128;

/// Starts the agent connection for one call (on the current tokio runtime) and returns the
/// engine-side agent, and the state both halves share (the bridge reads the transfer target
/// from it when the call ends). Never fails: an unreachable agent is reported through the
/// returned agent, which then plays the fallback.
pub fn start(
    config: &AgentConfig,
    info: &CallInfo,
    custom_parameters: &HashMap<String, String>,
    id: u64,
) -> (RemoteAgent, Arc<remote::Shared>) {
    let (audio_tx, audio_rx) = HeapRb::<i16>::new(AUDIO_RING).split();
    let (commands_tx, commands_rx) = HeapRb::new(COMMAND_RING).split();
    let (uplink_tx, uplink_rx) = mpsc::channel(UPLINK_QUEUE);
    let shared = Arc::new(remote::Shared::default());
    let engine = remote::EngineEnds {
        uplink: uplink_tx,
        audio: audio_rx,
        commands: commands_rx,
        shared: Arc::clone(&shared),
    };
    let ends = client::ClientEnds {
        uplink: uplink_rx,
        audio: audio_tx,
        commands: commands_tx,
        shared: Arc::clone(&shared),
    };
    // The stream token was single-use and is spent; it is not the agent's business.
    let params: HashMap<String, String> = custom_parameters
        .iter()
        .filter(|(k, _)| k.as_str() != TOKEN_PARAMETER)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if config.openai.is_some() {
        tokio::spawn(openai::run(config.clone(), info.clone(), ends, id));
    } else {
        tokio::spawn(client::run(config.clone(), info.clone(), params, ends, id));
    }
    (
        RemoteAgent::new(engine, config.fallback, config.reply_timeout),
        shared,
    )
}
