//! # handset-shell
//!
//! The thin I/O shell of Handset: a hyper 1.x HTTP/1.1 server that Twilio talks to. It answers
//! the voice webhooks with TwiML, verifies `X-Twilio-Signature`, issues the single-use stream
//! tokens the Media Streams WebSocket checks, stores recording and call-status callbacks
//! durably, and reports health and version. Everything that is Twilio protocol is pure and lives
//! in its own module; the handlers in [`routes`] are glue.
//!
//! Layout:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | `Config::from_vars` (the environment; `from_vars_with` adds the typed flags), validated once; `Secret` |
//! | [`state`] | `AppState`: what the handlers and media streams share, built once at start |
//! | [`server`] | `listen(addr)`, `serve(listener, state, shutdown)`: the accept loop (`MAX_CONNECTIONS`), the drain |
//! | [`active_calls`] | the live-call count behind `MAX_CALLS` |
//! | [`metrics`] | `/metrics`: the shell's atomic counters and a collector reading them with the engine's |
//! | [`routes`] | one `match (method, path)`, webhook handlers, error → status mapping |
//! | [`signature`] | HMAC-SHA1/SHA256 webhook and WebSocket-upgrade signature verification |
//! | [`ids`] | pure checks of Twilio identifiers, E.164 numbers and dialable addresses |
//! | [`twilio`] | the Twilio REST client (reqwest, rustls): create and update calls, download recordings; outbound call requests |
//! | [`twiml`] | pure TwiML builders |
//! | [`xml`] | the one XML escaper (TwiML, SVG) |
//! | [`ending`] | how a call goes on after its stream (the ending table), transfer checks |
//! | [`tokens`] | single-use per-call stream tokens |
//! | [`store`] | the shared durable state: SQLite or PostgreSQL through sqlx, and the store's health |
//! | [`form`] | strict form decoding |
//! | [`bridge`] | the Media Streams WebSocket: upgrade checks and the socket ↔ engine bridge |
//! | [`egress`] | the thread whose runtime writes engine output to the media sockets |
//! | `session` | stream admission after `start`: drain, token, capacity, agent choice, tracing |
//! | [`media_stream`] | pure parsing and writing of Twilio's Media Streams JSON, and Twilio's side of it (for the simulator and tests); close reasons |
//! | [`onset_check`] | the second stage on barge-in onsets (Silero VAD on a thread of its own) |
//! | [`chrome_trace`] | a call's timeline (the engine's records) as Chrome trace JSON, with serde |
//! | [`svg`] | the one SVG writer (trace timelines, and `handset-sim`'s pictures) |
//! | [`trace_svg`] | `handset trace FILE`: a call's Chrome trace JSON as an SVG timeline |
//! | [`recording`] | recorded messages: download (Basic auth, retries), durable status, transcription by the agent |
//! | [`agent`] | remote voice agents over WebSocket: per-call client, engine-side agent, fallback |
//! | [`log_line`] | the log writer that keeps one event on one line |
//! | [`wav`] | 16-bit PCM WAV files |
//!
//! Tests start the real server on `127.0.0.1:0`:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = handset_shell::Config::from_vars([("DATA_DIR", "/var/lib/handset")])?;
//! let (state, _startup) = handset_shell::AppState::new(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! handset_shell::serve(listener, state, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

pub mod active_calls;
pub mod agent;
pub mod bridge;
pub mod chrome_trace;
pub mod config;
mod conn;
pub mod egress;
pub mod ending;
pub mod form;
pub mod ids;
pub mod log_line;
pub mod media_stream;
pub mod metrics;
pub mod onset_check;
pub mod recording;
pub mod routes;
pub mod server;
mod session;
pub mod signature;
pub mod state;
pub mod store;
pub mod svg;
pub mod tokens;
pub mod trace_svg;
pub mod twilio;
pub mod twiml;
pub mod wav;
pub mod xml;

mod clock;

pub use active_calls::{ActiveCallGuard, ActiveCalls};
pub use config::{
    AgentConfig, AgentFallback, Config, ConfigError, LogFormat, PublicUrl, Secret, TwilioRestConfig,
};
pub use server::serve;
pub use signature::{Algorithm, SignatureError, SignedContent, UrlVariant, Verifier};
pub use state::{AppState, Startup, StateError};
pub use tokens::{CallIdentity, StreamToken, StreamTokens, TokenError};
