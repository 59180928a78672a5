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
//! | [`config`] | `Config::from_vars` (environment + flags, validated once), `Secret` |
//! | [`server`] | `listen(addr)`, `serve(listener, state, shutdown)` (the accept loop, `MAX_CONNECTIONS`), shared `AppState`, `ActiveCalls` |
//! | [`metrics`] | `/metrics`: the shell's atomic counters and a collector reading them with the engine's |
//! | [`routes`] | one `match (method, path)`, webhook handlers, error → status mapping |
//! | [`signature`] | HMAC-SHA1/SHA256 webhook and WebSocket-upgrade signature verification |
//! | [`twilio`] | the Twilio REST client (reqwest, rustls): create and update calls, download recordings; outbound call requests |
//! | [`twiml`] | pure TwiML builders |
//! | [`ending`] | how a call goes on after its stream (the ending table), transfer checks |
//! | [`tokens`] | single-use per-call stream tokens |
//! | [`store`] | append-only JSON-lines logs under `DATA_DIR` |
//! | [`form`] | strict form decoding |
//! | [`bridge`] | the Media Streams WebSocket: upgrade checks and the socket ↔ engine bridge |
//! | [`egress`] | the thread whose runtime writes engine output to the media sockets |
//! | `session` | stream admission after `start`: drain, token, capacity, agent choice, tracing |
//! | [`media_stream`] | pure parsing and writing of Twilio's Media Streams JSON |
//! | [`trace_svg`] | `handset trace FILE`: a call's Chrome trace JSON as an SVG timeline |
//! | [`sim`] | a Twilio call simulator (webhook, TwiML, signed WebSocket, playback model) |
//! | [`recording`] | recorded messages: download (Basic auth, retries), durable status, transcription by the agent |
//! | [`agent`] | remote voice agents over WebSocket: per-call client, engine-side agent, fallback |
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

pub mod agent;
pub mod bridge;
pub mod config;
pub mod egress;
pub mod ending;
pub mod form;
pub mod log_line;
pub mod media_stream;
pub mod metrics;
pub mod onset_check;
pub mod recording;
pub mod routes;
pub mod server;
mod session;
pub mod signature;
pub mod sim;
pub mod store;
pub mod tokens;
pub mod trace_svg;
pub mod twilio;
pub mod twiml;
pub mod wav;
pub mod xml;

mod clock;

pub use config::{
    AgentConfig, AgentFallback, Config, ConfigError, LogFormat, PublicUrl, Secret, TwilioRestConfig,
};
pub use server::{ActiveCallGuard, ActiveCalls, AppState, Startup, StateError, serve};
pub use signature::{Algorithm, SignatureError, SignedContent, UrlVariant, Verifier};
pub use tokens::{CallIdentity, StreamToken, StreamTokens, TokenError};
