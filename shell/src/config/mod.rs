//! Shell configuration, read once at start from environment-style variables.
//!
//! [`Config::from_vars`] takes any iterator of `(name, value)` pairs, so tests inject the
//! environment the way the engine injects time. `main` passes `std::env::vars()` followed by the
//! command-line flags translated to the same names, so a flag overrides its variable and every
//! value is validated in one place. After validation every field holds a type that cannot be
//! invalid (`Duration`, `SocketAddr`, [`PublicUrl`]).
//!
//! Secrets (the auth token) live in [`Secret`], whose `Debug`/`Display` never show the value.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (the Twilio auth token). `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Eq, PartialEq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where the bytes are needed (HMAC keys).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The public origin Twilio uses to reach the server, e.g. `https://voice.example.com`.
///
/// Always `http` or `https`, with a host, optional port, no credentials, no path, no query and
/// no fragment; stored without a trailing slash.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PublicUrl {
    /// `http` or `https`, lowercase.
    scheme: &'static str,
    /// Host and optional `:port` exactly as configured.
    authority: String,
}

impl PublicUrl {
    /// Parses and validates a public origin. `name` is used in the error message.
    pub fn parse(name: &'static str, value: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::PublicUrl {
            name,
            value: value.to_owned(),
        };
        let trimmed = value.trim();
        let (scheme, rest) = trimmed.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => "http",
            "https" => "https",
            _ => return Err(bad()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let valid = !authority.is_empty()
            && !authority.contains(['/', '?', '#', '@', ' '])
            && authority.is_ascii();
        if !valid {
            return Err(bad());
        }
        Ok(Self {
            scheme,
            authority: authority.to_owned(),
        })
    }

    /// Builds a public URL from a scheme and authority taken from request headers.
    pub fn from_parts(scheme: &'static str, authority: &str) -> Self {
        Self {
            scheme,
            authority: authority.to_owned(),
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Host and optional port.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Absolute `http(s)` URL for `path_and_query` (which starts with `/`).
    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme, self.authority, path_and_query)
    }

    /// Absolute WebSocket URL for `path`: `wss` for an `https` origin, `ws` for `http`.
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.scheme == "https" { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.authority)
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text (default).
    #[default]
    Text,
}

/// When text log lines carry ANSI colour codes.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum LogColor {
    /// Always, even into a file or a pipe.
    Always,
    /// Only when the log goes to a terminal (default).
    #[default]
    Auto,
    /// Never.
    Never,
}

impl LogColor {
    /// Whether to colour, given whether the log's destination is a terminal.
    pub fn is_on(self, terminal: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Auto => terminal,
            Self::Never => false,
        }
    }
}

/// What the caller hears before the stream connects.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Greeting {
    /// Text spoken with `<Say>`; empty means no greeting.
    pub text: String,
    /// `<Say voice>`, e.g. `Polly.Joanna`; `None` lets Twilio pick its default voice.
    pub voice: Option<String>,
    /// `<Say language>`, a tag like `en-US`.
    pub language: String,
}

/// Validated shell configuration. Every field is read once at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address. `BIND` (default `0.0.0.0`) and `PORT` (default 3000).
    pub listen: SocketAddr,
    /// `HEALTH_PORT` (1–65535, not `PORT`): a second listener on `BIND` that answers only
    /// `/healthz`, `/readyz`, `/metrics` and `/version`, outside `MAX_CONNECTIONS`, so probes
    /// still reach a server whose main port is flooded. Unset: no second listener.
    pub health_port: Option<u16>,
    /// `TWILIO_AUTH_TOKEN`: webhook signing secret. `None` turns signature checks off.
    pub auth_token: Option<Secret>,
    /// `PUBLIC_URL`: public origin used for TwiML URLs and signature checks. `None` rebuilds it
    /// per request from `X-Forwarded-Proto`/`X-Forwarded-Host` or `Host`.
    pub public_url: Option<PublicUrl>,
    /// `DEPLOY_ID`: free-form deployment label shown by `/version`.
    pub deploy_id: Option<String>,
    /// `BUILD_COMMIT`: commit shown by `/version` when the binary was not built with
    /// `HANDSET_BUILD_COMMIT`.
    pub build_commit: Option<String>,
    /// `GREETING_TEXT`, `GREETING_VOICE`, `GREETING_LANGUAGE` (default language `en-US`).
    pub greeting: Greeting,
    /// `FALLBACK_PROMPT`: spoken before recording a message when the stream ends.
    pub fallback_prompt: String,
    /// `RECORD_MAX_LENGTH` in seconds (2–14400, default 120): `<Record maxLength>`.
    pub record_max_length: Duration,
    /// `LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `LOG_COLOR`: `auto` (default: colour only when stderr is a terminal), `always` or `never`.
    pub log_color: LogColor,
    /// `DATA_DIR` (default `./data`): the embedded database (when `DATABASE_URL` is unset) and
    /// downloaded recordings.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: `sqlite://FILE` or `postgres://USER:PASSWORD@HOST/DB` (a fleet's shared
    /// store). Unset: `sqlite://$DATA_DIR/handset.db`. A secret: it may carry a password.
    pub database_url: Option<Secret>,
    /// `DATABASE_MAX_CONNECTIONS` (1–1000, default 8): the store's connection pool size.
    pub database_max_connections: u32,
    /// `LOG_PII`: `masked` (default) logs phone numbers as `+1415***4567`; `full` logs them
    /// whole. Phone keys (DTMF) are never logged, only counted.
    pub log_pii_full: bool,
    /// `INSTANCE_ID` (default: the host name): this instance's name in call records and
    /// recording-job leases. Printable ASCII, at most 64 characters.
    pub instance_id: String,
    /// `RECORDING_LEASE` in seconds (5–3600, default 120): how long a recording job stays
    /// claimed by an instance that stopped renewing it (a crash) before another may take it.
    pub recording_lease: Duration,
    /// `STREAM_TOKEN_TTL` in seconds (10–86400, default 600): life of a per-call stream token.
    pub stream_token_ttl: Duration,
    /// `ENGINE_WORKERS` (0–256, default 0 = one per core): engine media threads.
    pub engine_workers: usize,
    /// `ENGINE_REALTIME_PRIORITY` (0–99, default 0 = off): run the engine media threads under
    /// `SCHED_FIFO` at this priority, ahead of socket work, so frames leave on their deadlines
    /// when the core is busy. Needs `CAP_SYS_NICE` or `RLIMIT_RTPRIO`; when refused the server
    /// logs a warning and runs them at normal priority.
    pub engine_realtime_priority: Option<u8>,
    /// `ENGINE_CPU_LATENCY_US` (0–100000, unset = off): hold the CPUs to this wake-up latency
    /// while the server runs (PM QoS, `/dev/cpu_dma_latency`, root only); `0` keeps idle CPUs
    /// polling. When refused the server logs a warning and goes on.
    pub engine_cpu_latency: Option<Duration>,
    /// `MAX_CALLS` (0–1000000, default 0 = no limit): most concurrent media calls. Beyond it the
    /// voice webhook answers with `BUSY_PROMPT` and hangs up, and a media stream is closed with
    /// 1013 (try again later).
    pub max_calls: usize,
    /// `BUSY_PROMPT`: spoken when `MAX_CALLS` is reached.
    pub busy_prompt: String,
    /// `MAX_CONNECTIONS` (1–1000000): most open client connections (HTTP, and the media
    /// streams upgraded from them). Beyond it a new connection gets a bare 503 and is closed.
    /// Unset: derived from the open-files limit ([`derived_max_connections`]).
    pub max_connections: usize,
    /// `TRACE_DIR`: where per-call timelines are written (`<CallSid>.json`, Chrome trace format;
    /// render with `handset trace FILE`). Unset: tracing off.
    pub trace_dir: Option<PathBuf>,
    /// `TRACE_SAMPLE` (0–1, default 0): the share of calls traced when `TRACE_DIR` is set. A
    /// call is also traced when its voice webhook URL carries `trace=1` (per-call opt-in).
    pub trace_sample: f64,
    /// `ECHO_CHECK` (default `on`; `off` disables): a caller speech onset during agent playback
    /// that is the agent's own audio coming back (a speakerphone) is held, not taken for a
    /// barge-in (`handset_engine::call::EchoConfig`).
    pub echo_check: bool,
    /// `ONSET_CHECK` (default `on`; `off` disables): a caller speech onset during agent playback
    /// barges in only once Silero VAD confirms it is speech (`crate::onset_check`).
    pub onset_check: bool,
    /// `ONSET_PAUSE_MS` (0–2000, default 500): with the onset check on, how long agent playback
    /// may pause while a held onset waits for its verdict (0: no pause; the agent is heard until
    /// the verdict). See `handset_engine::call::CallConfig::onset_pause`.
    pub onset_pause: Duration,
    /// `DRAIN_TIMEOUT` in seconds (0–86400, default 900): after SIGTERM, how long active calls
    /// may go on (while `/readyz` answers 503 and new streams are refused) before their
    /// streams are closed with 1001 and the calls are redirected to another instance.
    pub drain_timeout: Duration,
    /// `HEADER_READ_TIMEOUT` in seconds (1–300, default 10): a client that has not sent a whole
    /// request head (request line and headers) this long after it started is disconnected.
    pub header_read_timeout: Duration,
    /// `AGENT_*`: the remote voice agent each call is bridged to. `None` (no `AGENT_URL`) keeps
    /// the built-in echo agent.
    pub agent: Option<AgentConfig>,
    /// `WS_MAX_MESSAGE_BYTES` (1024–16777216, default 65536): the largest Media Streams
    /// WebSocket message (and frame) accepted; a larger one closes the stream with 1009. A
    /// 20 ms media message is about 400 bytes.
    pub ws_max_message_bytes: usize,
    /// `WS_IDLE_TIMEOUT` in seconds (1–3600, default 60): a media stream with no message at all
    /// for this long is closed with 1001.
    pub ws_idle_timeout: Duration,
    /// `WS_WRITE_TIMEOUT` in seconds (1–600, default 5): longest a message for a media stream
    /// may wait, from when the engine queued it, to be taken by the socket; past it the peer
    /// counts as stalled (closed with 1011). Also how long a stream the server closes is still
    /// read for the peer's close reply, and the bound on writing the close frame.
    pub ws_write_timeout: Duration,
    /// `WS_START_TIMEOUT` in seconds (1–600, default 10): time allowed between the upgrade and
    /// a valid `start` (otherwise closed with 1008).
    pub ws_start_timeout: Duration,
    /// `METRICS_TOKEN`: when set, `GET /metrics` requires `Authorization: Bearer <token>`
    /// (401 otherwise). Unset: `/metrics` is open, like `/healthz`.
    pub metrics_token: Option<Secret>,
    /// `TWILIO_ACCOUNT_SID`, `TWILIO_API_KEY_SID`/`TWILIO_API_KEY_SECRET`, `TWILIO_API_URL` and
    /// `TWILIO_FROM`: the Twilio REST API (outbound calls, call updates, recording downloads).
    pub twilio: TwilioRestConfig,
    /// `CONTROL_TOKEN`: the bearer token `POST /calls` requires. Unset: that route answers 404.
    pub control_token: Option<Secret>,
}

/// Default `TWILIO_API_URL`.
pub const DEFAULT_TWILIO_API_URL: &str = "https://api.twilio.com";

/// The Twilio REST API settings, validated.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TwilioRestConfig {
    /// `TWILIO_ACCOUNT_SID`: `AC` and 32 hex digits; the account in every API path.
    pub account_sid: Option<String>,
    /// `TWILIO_AUTH_TOKEN` (the same secret that signs webhooks): the Basic-auth password
    /// with the account SID, unless an API key is set.
    pub auth_token: Option<Secret>,
    /// `TWILIO_API_KEY_SID` (`SK` and 32 hex digits) and `TWILIO_API_KEY_SECRET`: Basic-auth
    /// credentials used instead of the auth token.
    pub api_key: Option<(String, Secret)>,
    /// `TWILIO_API_URL` (default `https://api.twilio.com`): the origin every REST request goes
    /// to. `http` only for a loopback host (`127.0.0.1`, `localhost`, `[::1]`).
    pub api_url: PublicUrl,
    /// `TWILIO_FROM`: the caller ID of outbound calls that name none.
    pub from: Option<String>,
}

impl Default for TwilioRestConfig {
    fn default() -> Self {
        Self {
            account_sid: None,
            auth_token: None,
            api_key: None,
            api_url: PublicUrl::from_parts("https", "api.twilio.com"),
            from: None,
        }
    }
}

impl TwilioRestConfig {
    /// The Basic-auth user and password: the API key pair, else the account SID and auth
    /// token; `None` without credentials.
    pub fn credentials(&self) -> Option<(String, Secret)> {
        match (&self.api_key, &self.account_sid, &self.auth_token) {
            (Some((sid, secret)), _, _) => Some((sid.clone(), secret.clone())),
            (None, Some(account), Some(token)) => Some((account.clone(), token.clone())),
            _ => None,
        }
    }

    /// Whether the REST API can be used: an account SID and credentials.
    pub fn is_usable(&self) -> bool {
        self.account_sid.is_some() && self.credentials().is_some()
    }
}

/// What the caller hears when the remote agent fails, before the stream closes.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum AgentFallback {
    /// A short spoken apology (default).
    #[default]
    Apology,
    /// Three short beeps.
    Tone,
}

/// The remote agent settings (`AGENT_*` variables), validated.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AgentConfig {
    /// `AGENT_URL`: `ws://` or `wss://` URL each call connects to.
    pub url: String,
    /// `AGENT_AUTH_HEADER` (`Name: value`) or `AGENT_TOKEN` (sent as `Authorization: Bearer
    /// <token>`): header name and secret value sent with the WebSocket handshake.
    pub auth: Option<(String, Secret)>,
    /// `AGENT_CONNECT_TIMEOUT_MS` (100–60000, default 3000): the TCP, TLS and WebSocket
    /// handshake must finish within this.
    pub connect_timeout: Duration,
    /// `AGENT_REPLY_TIMEOUT_MS` (0–600000, default 0 = off): after the caller stops speaking,
    /// the agent must send audio within this, or the call falls back.
    pub reply_timeout: Option<Duration>,
    /// `AGENT_FALLBACK`: `apology` (default) or `tone`.
    pub fallback: AgentFallback,
    /// `TRANSFER_ALLOW`: number prefixes and SIP domains an agent's `transfer` may dial
    /// (empty: any well-formed target).
    pub transfer_allow: Vec<String>,
    /// `OPENAI_*`: set when `OPENAI_API_KEY` selects the built-in OpenAI Realtime adapter
    /// instead of the Handset agent protocol (`url` is then `OPENAI_REALTIME_URL` and `auth`
    /// the bearer key).
    pub openai: Option<OpenAiConfig>,
}

/// Default `OPENAI_REALTIME_URL`.
pub const DEFAULT_OPENAI_REALTIME_URL: &str = "wss://api.openai.com/v1/realtime?model=gpt-realtime";

/// The OpenAI Realtime adapter's session settings (`OPENAI_*` variables).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OpenAiConfig {
    /// `OPENAI_VOICE` (default `alloy`): the assistant's voice.
    pub voice: String,
    /// `OPENAI_INSTRUCTIONS`: the system instructions (default: a short phone-assistant prompt).
    pub instructions: String,
    /// `OPENAI_TRANSCRIBE_MODEL` (default `gpt-4o-mini-transcribe`; `off` disables): model
    /// transcribing the caller, logged as `STT_FINAL`.
    pub transcribe_model: Option<String>,
    /// `OPENAI_GREETING` (default: a short instruction to greet the caller; `off` disables):
    /// the instructions of the response the adapter asks for as soon as the session is set up,
    /// so the assistant answers the phone instead of waiting for the caller to speak.
    pub greeting: Option<String>,
    /// `OPENAI_DTMF` (default `on`; `off` disables): tell the assistant which phone keys the
    /// caller pressed (a user message once the keys settle, then a response).
    pub dtmf: bool,
    /// `OPENAI_TOOLS` (default `on`; `off` disables): declare the `end_call` and
    /// `transfer_call` function tools, so the assistant can hang up or transfer the caller
    /// (transfers checked like an agent's `transfer`, against `TRANSFER_ALLOW`).
    pub tools: bool,
}

/// Default `OPENAI_GREETING`.
pub const DEFAULT_OPENAI_GREETING: &str =
    "Greet the caller in one short sentence and ask how you can help.";

/// Default `OPENAI_INSTRUCTIONS`.
pub const DEFAULT_OPENAI_INSTRUCTIONS: &str =
    "You are a helpful assistant answering a phone call. Keep answers short and spoken.";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            auth_token: None,
            public_url: None,
            deploy_id: None,
            build_commit: None,
            greeting: Greeting {
                text: String::new(),
                voice: None,
                language: "en-US".to_owned(),
            },
            fallback_prompt: DEFAULT_FALLBACK_PROMPT.to_owned(),
            record_max_length: Duration::from_secs(120),
            log_format: LogFormat::Text,
            log_color: LogColor::Auto,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_max_connections: 8,
            log_pii_full: false,
            instance_id: default_instance_id(),
            recording_lease: Duration::from_secs(120),
            stream_token_ttl: Duration::from_secs(600),
            engine_workers: 0,
            engine_realtime_priority: None,
            engine_cpu_latency: None,
            max_calls: 0,
            busy_prompt: "Sorry, all our lines are busy. Please call again in a few minutes."
                .to_owned(),
            max_connections: MAX_CONNECTIONS_CEILING,
            health_port: None,
            trace_dir: None,
            trace_sample: 0.0,
            echo_check: true,
            onset_check: true,
            onset_pause: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
            header_read_timeout: Duration::from_secs(10),
            agent: None,
            ws_max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            ws_idle_timeout: Duration::from_secs(60),
            ws_write_timeout: Duration::from_secs(5),
            ws_start_timeout: Duration::from_secs(10),
            metrics_token: None,
            twilio: TwilioRestConfig::default(),
            control_token: None,
        }
    }
}

/// Default `PORT`.
pub const DEFAULT_PORT: u16 = 3000;
/// Default `WS_MAX_MESSAGE_BYTES` (64 KiB).
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest accepted `WS_MAX_MESSAGE_BYTES` (16 MiB).
pub const MAX_WS_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_FALLBACK_PROMPT: &str =
    "Sorry, we could not connect you. Please leave a message after the beep.";

/// A configuration value that cannot be used. Messages name the variable and the bad value
/// (never for secrets).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `TWILIO_AUTH_TOKEN` is set but empty.
    #[error(
        "TWILIO_AUTH_TOKEN is set but empty: unset it to run without signature checks, or set the account's auth token"
    )]
    EmptyAuthToken,
    /// `METRICS_TOKEN` is set but empty.
    #[error(
        "METRICS_TOKEN is set but empty: unset it to leave /metrics open, or set the token scrapers send as a bearer token"
    )]
    EmptyMetricsToken,
    /// A bind address that is not an IP address.
    #[error("{name} must be an IP address such as 0.0.0.0 or ::1: got {value:?}")]
    BindAddress {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// A language tag that is not `ll-CC`.
    #[error("{name} must be a language tag like en-US: got {value:?}")]
    Language {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// A switch that is neither `on` nor `off`.
    #[error("{name} must be on or off: got {value:?}")]
    Switch {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// An unknown log format.
    #[error("{name} must be text or json: got {value:?}")]
    LogFormat {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// An unknown log colour setting.
    #[error("{name} must be auto, always or never: got {value:?}")]
    LogColor {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// An integer outside its range or not an integer.
    #[error("{name} must be an integer from {min} to {max}: got {value:?}")]
    OutOfRange {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A WebSocket URL that is not `ws://` or `wss://` with a host.
    #[error("{name} must be a ws:// or wss:// URL with a host and no credentials: got {value:?}")]
    WebSocketUrl {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// An authentication header that is not `Name: value` (the value is never shown).
    #[error("{name} must look like \"Name: value\" with a valid header name and a non-empty value")]
    AuthHeader {
        /// Variable name.
        name: &'static str,
    },
    /// Two variables that exclude each other are both set.
    #[error("{first} and {second} cannot both be set")]
    Conflict {
        /// One variable.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// An `AGENT_*` variable without `AGENT_URL`.
    #[error("{name} is set but AGENT_URL is not")]
    AgentUrlMissing {
        /// Variable name.
        name: &'static str,
    },
    /// An unknown fallback sound.
    #[error("{name} must be apology or tone: got {value:?}")]
    Fallback {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// `DATABASE_URL` names no database Handset can use.
    #[error(
        "DATABASE_URL must be sqlite://FILE or postgres://USER:PASSWORD@HOST/DATABASE: got a URL starting {scheme:?}"
    )]
    DatabaseUrl {
        /// What the value started with (never the rest: it may hold a password).
        scheme: String,
    },
    /// A `TRANSFER_ALLOW` entry that is neither a number prefix nor a domain.
    #[error(
        "TRANSFER_ALLOW entries must be number prefixes (+ and digits) or SIP domains (pbx.example.com): got {entry:?}"
    )]
    TransferAllow {
        /// The entry.
        entry: String,
    },
    /// `LOG_PII` is neither `masked` nor `full`.
    #[error("LOG_PII must be masked or full: got {value:?}")]
    LogPii {
        /// Value given.
        value: String,
    },
    /// `INSTANCE_ID` is not a short printable name.
    #[error("INSTANCE_ID must be 1 to 64 printable ASCII characters without spaces: got {value:?}")]
    InstanceId {
        /// Value given.
        value: String,
    },
    /// A public URL that is not an absolute http(s) origin.
    #[error(
        "{name} must be an absolute http(s) URL without a path, query string, fragment or credentials: got {value:?}"
    )]
    PublicUrl {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// A Twilio identifier that is not its prefix and 32 hex digits.
    #[error("{name} must be {prefix} followed by 32 hex digits: got {value:?}")]
    TwilioSid {
        /// Variable name.
        name: &'static str,
        /// The two-letter prefix.
        prefix: &'static str,
        /// Value given.
        value: String,
    },
    /// A variable that only works with another one that is not set.
    #[error("{name} is set but {needs} is not")]
    Requires {
        /// The variable set.
        name: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// `TWILIO_API_URL` over plain http to a host that is not loopback.
    #[error(
        "TWILIO_API_URL must be https unless its host is 127.0.0.1, localhost or [::1]: got {value:?}"
    )]
    PlainHttpApiUrl {
        /// Value given.
        value: String,
    },
    /// A caller ID that Twilio cannot dial from.
    #[error(
        "{name} must be an E.164 number (+ and 8 to 15 digits), a sip: or a client: address: got {value:?}"
    )]
    Address {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
    },
    /// `CONTROL_TOKEN` is set but empty.
    #[error(
        "CONTROL_TOKEN is set but empty: unset it to turn POST /calls off, or set the bearer token callers send"
    )]
    EmptyControlToken,
    /// `MAX_CONNECTIONS` leaves no room beside `MAX_CALLS` media streams.
    #[error(
        "MAX_CONNECTIONS ({max_connections}) must be at least MAX_CALLS + {CONNECTIONS_BESIDE_CALLS} ({needed}): every call holds a connection for its media stream, and webhooks, health checks and scrapes need more"
    )]
    ConnectionsBelowCalls {
        /// `MAX_CONNECTIONS`.
        max_connections: usize,
        /// What `MAX_CALLS` needs.
        needed: usize,
    },
    /// `MAX_CONNECTIONS` needs more open files than the process may have.
    #[error(
        "MAX_CONNECTIONS ({max_connections}) needs about {needed} open files (connections, agent sockets, the store, logs) but the open-files limit (RLIMIT_NOFILE) is {limit}: raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CONNECTIONS"
    )]
    ConnectionsOverFileLimit {
        /// `MAX_CONNECTIONS`.
        max_connections: usize,
        /// Open files needed.
        needed: u64,
        /// The soft `RLIMIT_NOFILE`.
        limit: u64,
    },
    /// The open-files limit leaves too few connections (for `MAX_CALLS`, or at all).
    #[error(
        "the open-files limit (RLIMIT_NOFILE) is {limit}, which leaves {available} connections: at least {needed} are needed (MAX_CALLS + {CONNECTIONS_BESIDE_CALLS}); raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CALLS"
    )]
    FileLimitTooLow {
        /// The soft `RLIMIT_NOFILE`.
        limit: u64,
        /// Connections it leaves.
        available: usize,
        /// Connections needed.
        needed: usize,
    },
}

/// Connections kept beside `MAX_CALLS` media streams for webhooks, health checks and
/// scrapes: `MAX_CONNECTIONS` is at least `MAX_CALLS` plus this.
pub const CONNECTIONS_BESIDE_CALLS: usize = 32;

/// Open files kept aside from connections: standard streams, the runtime's epoll and event
/// descriptors, the listener, the REST client's pool, recording downloads (up to four at once,
/// each a socket and a file), trace files being written, DNS lookups.
pub const RESERVED_FILES: u64 = 64;

/// Open files per store connection: an SQLite connection holds the database, its WAL and its
/// shared-memory file (a PostgreSQL connection is one socket).
pub const FILES_PER_STORE_CONNECTION: u64 = 3;

/// The most connections the derived default allows, however high the open-files limit: what
/// an instance needs is about one connection per call plus a few for webhooks, and every open
/// connection costs memory.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// The soft open-files limit of this process (`RLIMIT_NOFILE`); `None` when unlimited or
/// unknown.
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::Resource::NOFILE
            .get()
            .ok()
            .map(|(soft, _hard)| soft)
            .filter(|&soft| soft != rlimit::INFINITY)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default `MAX_CONNECTIONS` for an open-files `limit`: what is left after
/// [`RESERVED_FILES`], the store's files and, with a remote agent, one upstream socket per
/// call (`MAX_CALLS` of them, or one per connection when calls are not limited), at most
/// [`MAX_CONNECTIONS_CEILING`] (or `MAX_CALLS` + [`CONNECTIONS_BESIDE_CALLS`] when that is more).
pub fn derived_max_connections(config: &Config, limit: Option<u64>) -> usize {
    let ceiling = MAX_CONNECTIONS_CEILING.max(config.max_calls + CONNECTIONS_BESIDE_CALLS);
    let Some(limit) = limit else {
        return ceiling;
    };
    let budget = limit.saturating_sub(fixed_files(config));
    let connections = match (config.agent.is_some(), config.max_calls as u64) {
        (false, _) => budget,
        (true, 0) => budget / 2,
        (true, calls) => budget.saturating_sub(calls),
    };
    usize::try_from(connections)
        .unwrap_or(usize::MAX)
        .min(ceiling)
}

/// Open files needed besides client connections and upstream agent sockets.
fn fixed_files(config: &Config) -> u64 {
    RESERVED_FILES + FILES_PER_STORE_CONNECTION * u64::from(config.database_max_connections)
}

/// Open files `max_connections` client connections need at most: the connections, one
/// upstream socket per call with a remote agent, and the fixed share.
fn files_needed(config: &Config, max_connections: usize) -> u64 {
    let upstream = match (config.agent.is_some(), config.max_calls) {
        (false, _) => 0,
        (true, 0) => max_connections,
        (true, calls) => calls.min(max_connections),
    };
    fixed_files(config) + max_connections as u64 + upstream as u64
}

/// Default `DRAIN_TIMEOUT`: 15 minutes, longer than most calls, so a rolling deploy lets
/// live conversations finish.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 900;

/// The host name (`/proc/sys/kernel/hostname`, a pod's name under Kubernetes), or `handset`.
fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "handset".to_owned())
}

impl Config {
    /// Builds and validates a configuration from `(name, value)` pairs. Later pairs override
    /// earlier ones with the same name; unknown names are ignored.
    ///
    /// The default `MAX_CONNECTIONS` is derived from this process's open-files limit as it is
    /// now (`main` raises it to the hard limit first).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::from_vars_limited(vars, open_files_limit())
    }

    /// [`Self::from_vars`] for a given open-files limit (`None`: unlimited).
    fn from_vars_limited<I, K, V>(vars: I, file_limit: Option<u64>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = std::collections::HashMap::new();
        for (k, v) in vars {
            map.insert(k.as_ref().to_owned(), v.as_ref().to_owned());
        }
        let get = |name: &str| map.get(name).map(String::as_str);
        let non_empty = |name: &str| get(name).map(str::trim).filter(|v| !v.is_empty());

        let mut config = Self::default();

        let ip = match non_empty("BIND") {
            Some(v) => v.parse::<IpAddr>().map_err(|_| ConfigError::BindAddress {
                name: "BIND",
                value: v.to_owned(),
            })?,
            None => config.listen.ip(),
        };
        let port = match non_empty("PORT") {
            Some(v) => int_in("PORT", v, 0, u64::from(u16::MAX))? as u16,
            None => DEFAULT_PORT,
        };
        config.listen = SocketAddr::new(ip, port);
        config.health_port = match non_empty("HEALTH_PORT") {
            Some(v) => {
                let health = int_in("HEALTH_PORT", v, 1, u64::from(u16::MAX))? as u16;
                if health == port {
                    return Err(ConfigError::Conflict {
                        first: "HEALTH_PORT",
                        second: "the same PORT",
                    });
                }
                Some(health)
            }
            None => None,
        };

        config.auth_token = match get("TWILIO_AUTH_TOKEN") {
            Some(v) if v.trim().is_empty() => return Err(ConfigError::EmptyAuthToken),
            Some(v) => Some(Secret::new(v.trim())),
            None => None,
        };
        config.public_url = non_empty("PUBLIC_URL")
            .map(|v| PublicUrl::parse("PUBLIC_URL", v))
            .transpose()?;
        config.deploy_id = non_empty("DEPLOY_ID").map(str::to_owned);
        config.build_commit = non_empty("BUILD_COMMIT").map(str::to_owned);

        if let Some(text) = get("GREETING_TEXT") {
            config.greeting.text = text.trim().to_owned();
        }
        config.greeting.voice = non_empty("GREETING_VOICE").map(str::to_owned);
        if let Some(lang) = non_empty("GREETING_LANGUAGE") {
            config.greeting.language = language_tag("GREETING_LANGUAGE", lang)?;
        }
        if let Some(prompt) = non_empty("FALLBACK_PROMPT") {
            config.fallback_prompt = prompt.to_owned();
        }
        if let Some(v) = non_empty("RECORD_MAX_LENGTH") {
            config.record_max_length =
                Duration::from_secs(int_in("RECORD_MAX_LENGTH", v, 2, 14_400)?);
        }
        if let Some(v) = non_empty("LOG_FORMAT") {
            config.log_format = match v.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::LogFormat {
                        name: "LOG_FORMAT",
                        value: v.to_owned(),
                    });
                }
            };
        }
        if let Some(v) = non_empty("LOG_COLOR") {
            config.log_color = match v.to_ascii_lowercase().as_str() {
                "always" => LogColor::Always,
                "auto" => LogColor::Auto,
                "never" => LogColor::Never,
                _ => {
                    return Err(ConfigError::LogColor {
                        name: "LOG_COLOR",
                        value: v.to_owned(),
                    });
                }
            };
        }
        if let Some(v) = non_empty("DATA_DIR") {
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = non_empty("STREAM_TOKEN_TTL") {
            config.stream_token_ttl =
                Duration::from_secs(int_in("STREAM_TOKEN_TTL", v, 10, 86_400)?);
        }
        if let Some(v) = get("DATABASE_URL") {
            let v = v.trim();
            let scheme = v.split(':').next().unwrap_or_default();
            if !matches!(scheme, "sqlite" | "postgres" | "postgresql") || !v.contains(':') {
                return Err(ConfigError::DatabaseUrl {
                    scheme: scheme.chars().take(16).collect(),
                });
            }
            config.database_url = Some(Secret::new(v));
        }
        if let Some(v) = non_empty("DATABASE_MAX_CONNECTIONS") {
            config.database_max_connections =
                int_in("DATABASE_MAX_CONNECTIONS", v, 1, 1_000)? as u32;
        }
        if let Some(v) = non_empty("LOG_PII") {
            config.log_pii_full = match v {
                "full" => true,
                "masked" => false,
                other => {
                    return Err(ConfigError::LogPii {
                        value: other.chars().take(32).collect(),
                    });
                }
            };
        }
        if let Some(v) = non_empty("INSTANCE_ID") {
            if v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::InstanceId {
                    value: v.chars().take(80).collect(),
                });
            }
            config.instance_id = v.to_owned();
        }
        if let Some(v) = non_empty("RECORDING_LEASE") {
            config.recording_lease = Duration::from_secs(int_in("RECORDING_LEASE", v, 5, 3_600)?);
        }
        if let Some(v) = non_empty("ENGINE_WORKERS") {
            config.engine_workers = int_in("ENGINE_WORKERS", v, 0, 256)? as usize;
        }
        if let Some(v) = non_empty("ENGINE_REALTIME_PRIORITY") {
            let priority = int_in("ENGINE_REALTIME_PRIORITY", v, 0, 99)? as u8;
            config.engine_realtime_priority = (priority > 0).then_some(priority);
        }
        if let Some(v) = non_empty("ENGINE_CPU_LATENCY_US") {
            config.engine_cpu_latency = Some(Duration::from_micros(int_in(
                "ENGINE_CPU_LATENCY_US",
                v,
                0,
                100_000,
            )?));
        }
        if let Some(v) = non_empty("MAX_CALLS") {
            config.max_calls = int_in("MAX_CALLS", v, 0, 1_000_000)? as usize;
        }
        if let Some(v) = non_empty("BUSY_PROMPT") {
            config.busy_prompt = v.to_owned();
        }
        config.trace_dir = non_empty("TRACE_DIR").map(PathBuf::from);
        config.echo_check = switch(&non_empty, "ECHO_CHECK")?;
        config.onset_check = switch(&non_empty, "ONSET_CHECK")?;
        if let Some(v) = non_empty("ONSET_PAUSE_MS") {
            config.onset_pause = Duration::from_millis(int_in("ONSET_PAUSE_MS", v, 0, 2_000)?);
        }
        if let Some(v) = non_empty("TRACE_SAMPLE") {
            config.trace_sample = v
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| ConfigError::OutOfRange {
                    name: "TRACE_SAMPLE",
                    value: v.to_owned(),
                    min: 0,
                    max: 1,
                })?;
        }
        if let Some(v) = non_empty("DRAIN_TIMEOUT") {
            config.drain_timeout = Duration::from_secs(int_in("DRAIN_TIMEOUT", v, 0, 86_400)?);
        }
        if let Some(v) = non_empty("WS_MAX_MESSAGE_BYTES") {
            config.ws_max_message_bytes = int_in(
                "WS_MAX_MESSAGE_BYTES",
                v,
                1_024,
                MAX_WS_MAX_MESSAGE_BYTES as u64,
            )? as usize;
        }
        if let Some(v) = non_empty("WS_IDLE_TIMEOUT") {
            config.ws_idle_timeout = Duration::from_secs(int_in("WS_IDLE_TIMEOUT", v, 1, 3_600)?);
        }
        if let Some(v) = non_empty("WS_WRITE_TIMEOUT") {
            config.ws_write_timeout = Duration::from_secs(int_in("WS_WRITE_TIMEOUT", v, 1, 600)?);
        }
        if let Some(v) = non_empty("WS_START_TIMEOUT") {
            config.ws_start_timeout = Duration::from_secs(int_in("WS_START_TIMEOUT", v, 1, 600)?);
        }
        config.metrics_token = match get("METRICS_TOKEN") {
            Some(v) if v.trim().is_empty() => return Err(ConfigError::EmptyMetricsToken),
            Some(v) => Some(Secret::new(v.trim())),
            None => None,
        };
        if let Some(v) = non_empty("HEADER_READ_TIMEOUT") {
            config.header_read_timeout =
                Duration::from_secs(int_in("HEADER_READ_TIMEOUT", v, 1, 300)?);
        }
        config.agent = agent_config(&non_empty)?;
        if let Some(v) = non_empty("TRANSFER_ALLOW") {
            let mut allow = Vec::new();
            for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                if !crate::ending::valid_allow_entry(entry) {
                    return Err(ConfigError::TransferAllow {
                        entry: entry.chars().take(64).collect(),
                    });
                }
                allow.push(entry.to_owned());
            }
            if let Some(agent) = &mut config.agent {
                agent.transfer_allow = allow;
            }
        }
        config.twilio = twilio_config(&non_empty, config.auth_token.clone())?;
        config.control_token = match get("CONTROL_TOKEN") {
            Some(v) if v.trim().is_empty() => return Err(ConfigError::EmptyControlToken),
            Some(v) => Some(Secret::new(v.trim())),
            None => None,
        };
        config.max_connections =
            max_connections(&config, non_empty("MAX_CONNECTIONS"), file_limit)?;
        if config.control_token.is_some() {
            if config.public_url.is_none() {
                return Err(ConfigError::Requires {
                    name: "CONTROL_TOKEN",
                    needs: "PUBLIC_URL",
                });
            }
            if !config.twilio.is_usable() {
                return Err(ConfigError::Requires {
                    name: "CONTROL_TOKEN",
                    needs: "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or an API key)",
                });
            }
        }
        Ok(config)
    }

    /// A phone number (or SIP address) as it may be logged: masked unless `LOG_PII=full`, and
    /// then with control characters escaped (the number came from the network).
    pub fn loggable_number(&self, number: &str) -> String {
        if self.log_pii_full {
            number.escape_debug().to_string()
        } else {
            crate::ending::masked(number)
        }
    }

    /// How to open the store: `DATABASE_URL`, or the embedded SQLite file under `DATA_DIR`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        let mut options = match &self.database_url {
            Some(url) => crate::store::StoreOptions::new(url.expose()),
            None => crate::store::StoreOptions::sqlite_in(&self.data_dir),
        };
        options.max_connections = self.database_max_connections;
        options
    }

    /// Whether `X-Twilio-Signature` is checked on webhooks.
    pub fn signature_checks(&self) -> bool {
        self.auth_token.is_some()
    }
}

/// `MAX_CONNECTIONS` as given (checked against `MAX_CALLS` and the open-files limit), or
/// derived from the limit.
fn max_connections(
    config: &Config,
    value: Option<&str>,
    file_limit: Option<u64>,
) -> Result<usize, ConfigError> {
    let needed = config.max_calls + CONNECTIONS_BESIDE_CALLS;
    let Some(value) = value else {
        let available = derived_max_connections(config, file_limit);
        if available < needed {
            return Err(ConfigError::FileLimitTooLow {
                limit: file_limit.unwrap_or(u64::MAX),
                available,
                needed,
            });
        }
        return Ok(available);
    };
    let max_connections = int_in("MAX_CONNECTIONS", value, 1, 1_000_000)? as usize;
    if config.max_calls > 0 && max_connections < needed {
        return Err(ConfigError::ConnectionsBelowCalls {
            max_connections,
            needed,
        });
    }
    if let Some(limit) = file_limit {
        let needed = files_needed(config, max_connections);
        if needed > limit {
            return Err(ConfigError::ConnectionsOverFileLimit {
                max_connections,
                needed,
                limit,
            });
        }
    }
    Ok(max_connections)
}

/// Reads the `TWILIO_*` REST variables.
fn twilio_config<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
    auth_token: Option<Secret>,
) -> Result<TwilioRestConfig, ConfigError> {
    let sid = |name: &'static str, prefix: &'static str| match non_empty(name) {
        Some(v) if crate::twilio::is_sid(v, prefix) => Ok(Some(v.to_owned())),
        Some(v) => Err(ConfigError::TwilioSid {
            name,
            prefix,
            value: v.chars().take(64).collect(),
        }),
        None => Ok(None),
    };
    let account_sid = sid("TWILIO_ACCOUNT_SID", "AC")?;
    let api_key = match (
        sid("TWILIO_API_KEY_SID", "SK")?,
        non_empty("TWILIO_API_KEY_SECRET"),
    ) {
        (Some(key), Some(secret)) => Some((key, Secret::new(secret))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Requires {
                name: "TWILIO_API_KEY_SID",
                needs: "TWILIO_API_KEY_SECRET",
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Requires {
                name: "TWILIO_API_KEY_SECRET",
                needs: "TWILIO_API_KEY_SID",
            });
        }
    };
    if api_key.is_some() && account_sid.is_none() {
        return Err(ConfigError::Requires {
            name: "TWILIO_API_KEY_SID",
            needs: "TWILIO_ACCOUNT_SID",
        });
    }
    let api_url = match non_empty("TWILIO_API_URL") {
        Some(v) => {
            let url = PublicUrl::parse("TWILIO_API_URL", v)?;
            if url.scheme() == "http" && !is_loopback_authority(url.authority()) {
                return Err(ConfigError::PlainHttpApiUrl {
                    value: v.to_owned(),
                });
            }
            url
        }
        None => PublicUrl::parse("TWILIO_API_URL", DEFAULT_TWILIO_API_URL)?,
    };
    let from = match non_empty("TWILIO_FROM") {
        Some(v) if crate::twilio::is_address(v) => Some(v.to_owned()),
        Some(v) => {
            return Err(ConfigError::Address {
                name: "TWILIO_FROM",
                value: v.chars().take(64).collect(),
            });
        }
        None => None,
    };
    Ok(TwilioRestConfig {
        account_sid,
        auth_token,
        api_key,
        api_url,
        from,
    })
}

/// Whether `host[:port]` names the loopback interface: 127.0.0.1, localhost or [::1].
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "127.0.0.1" || host == "::1" || host.eq_ignore_ascii_case("localhost")
}

/// Reads the `AGENT_*` variables; `None` without `AGENT_URL`.
fn agent_config<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<AgentConfig>, ConfigError> {
    const DEPENDENT: [&str; 5] = [
        "AGENT_AUTH_HEADER",
        "AGENT_TOKEN",
        "AGENT_CONNECT_TIMEOUT_MS",
        "AGENT_REPLY_TIMEOUT_MS",
        "AGENT_FALLBACK",
    ];
    let openai_key = non_empty("OPENAI_API_KEY");
    let agent_url = non_empty("AGENT_URL");
    if agent_url.is_some() && openai_key.is_some() {
        return Err(ConfigError::Conflict {
            first: "AGENT_URL",
            second: "OPENAI_API_KEY",
        });
    }
    if let Some(key) = openai_key {
        return openai_config(non_empty, key);
    }
    let Some(url) = agent_url else {
        if let Some(name) = DEPENDENT.into_iter().find(|n| non_empty(n).is_some()) {
            return Err(ConfigError::AgentUrlMissing { name });
        }
        return Ok(None);
    };
    let url = ws_url("AGENT_URL", url)?;
    let (connect_timeout, reply_timeout, fallback) = agent_common(non_empty)?;
    let auth = match (non_empty("AGENT_AUTH_HEADER"), non_empty("AGENT_TOKEN")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                first: "AGENT_AUTH_HEADER",
                second: "AGENT_TOKEN",
            });
        }
        (Some(line), None) => {
            let bad = ConfigError::AuthHeader {
                name: "AGENT_AUTH_HEADER",
            };
            let (name, value) = line.split_once(':').ok_or(bad.clone())?;
            let (name, value) = (name.trim(), value.trim());
            if value.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad);
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(bad);
            }
            Some((name.to_ascii_lowercase(), Secret::new(value)))
        }
        (None, Some(token)) => {
            if http::HeaderValue::from_str(token).is_err() {
                return Err(ConfigError::AuthHeader {
                    name: "AGENT_TOKEN",
                });
            }
            Some((
                "authorization".to_owned(),
                Secret::new(format!("Bearer {token}")),
            ))
        }
        (None, None) => None,
    };
    Ok(Some(AgentConfig {
        url,
        auth,
        connect_timeout,
        reply_timeout,
        fallback,
        transfer_allow: Vec::new(),
        openai: None,
    }))
}

/// An `on`/`off` variable, `on` when unset.
fn switch<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
    name: &'static str,
) -> Result<bool, ConfigError> {
    match non_empty(name) {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("on") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(false),
        Some(v) => Err(ConfigError::Switch {
            name,
            value: v.to_owned(),
        }),
    }
}

/// The OpenAI Realtime adapter (`OPENAI_API_KEY` set): its URL, key and session settings.
fn openai_config<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
    key: &str,
) -> Result<Option<AgentConfig>, ConfigError> {
    for other in ["AGENT_AUTH_HEADER", "AGENT_TOKEN"] {
        if non_empty(other).is_some() {
            return Err(ConfigError::Conflict {
                first: other,
                second: "OPENAI_API_KEY",
            });
        }
    }
    if http::HeaderValue::from_str(key).is_err() {
        return Err(ConfigError::AuthHeader {
            name: "OPENAI_API_KEY",
        });
    }
    let url = ws_url(
        "OPENAI_REALTIME_URL",
        non_empty("OPENAI_REALTIME_URL").unwrap_or(DEFAULT_OPENAI_REALTIME_URL),
    )?;
    let (connect_timeout, reply_timeout, fallback) = agent_common(non_empty)?;
    let transcribe_model = match non_empty("OPENAI_TRANSCRIBE_MODEL") {
        Some(m) if m.eq_ignore_ascii_case("off") => None,
        Some(m) => Some(m.to_owned()),
        None => Some("gpt-4o-mini-transcribe".to_owned()),
    };
    Ok(Some(AgentConfig {
        url,
        auth: Some((
            "authorization".to_owned(),
            Secret::new(format!("Bearer {key}")),
        )),
        connect_timeout,
        reply_timeout,
        fallback,
        transfer_allow: Vec::new(),
        openai: Some(OpenAiConfig {
            voice: non_empty("OPENAI_VOICE").unwrap_or("alloy").to_owned(),
            instructions: non_empty("OPENAI_INSTRUCTIONS")
                .unwrap_or(DEFAULT_OPENAI_INSTRUCTIONS)
                .to_owned(),
            transcribe_model,
            greeting: match non_empty("OPENAI_GREETING") {
                Some(g) if g.eq_ignore_ascii_case("off") => None,
                Some(g) => Some(g.to_owned()),
                None => Some(DEFAULT_OPENAI_GREETING.to_owned()),
            },
            dtmf: switch(non_empty, "OPENAI_DTMF")?,
            tools: switch(non_empty, "OPENAI_TOOLS")?,
        }),
    }))
}

/// The settings shared by every agent kind: connect timeout, reply timeout, fallback sound.
fn agent_common<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(Duration, Option<Duration>, AgentFallback), ConfigError> {
    let connect_timeout = match non_empty("AGENT_CONNECT_TIMEOUT_MS") {
        Some(v) => Duration::from_millis(int_in("AGENT_CONNECT_TIMEOUT_MS", v, 100, 60_000)?),
        None => Duration::from_secs(3),
    };
    let reply_timeout = match non_empty("AGENT_REPLY_TIMEOUT_MS") {
        Some(v) => Some(Duration::from_millis(int_in(
            "AGENT_REPLY_TIMEOUT_MS",
            v,
            0,
            600_000,
        )?))
        .filter(|d| !d.is_zero()),
        None => None,
    };
    let fallback = match non_empty("AGENT_FALLBACK") {
        None => AgentFallback::Apology,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "apology" => AgentFallback::Apology,
            "tone" => AgentFallback::Tone,
            _ => {
                return Err(ConfigError::Fallback {
                    name: "AGENT_FALLBACK",
                    value: v.to_owned(),
                });
            }
        },
    };
    Ok((connect_timeout, reply_timeout, fallback))
}

/// Accepts `ws://host[:port][/path][?query]` or `wss://…`: a host, no credentials, no fragment.
fn ws_url(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::WebSocketUrl {
        name,
        value: value.to_owned(),
    };
    let (scheme, rest) = value.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
        return Err(bad());
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let valid = !authority.is_empty()
        && !authority.starts_with(':')
        && !authority.contains('@')
        && !value.contains(['#', ' '])
        && value.is_ascii()
        && value.parse::<http::Uri>().is_ok();
    if !valid {
        return Err(bad());
    }
    Ok(value.to_owned())
}

fn int_in(name: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfigError::OutOfRange {
            name,
            value: value.to_owned(),
            min,
            max,
        })
}

/// Accepts `ll-CC` / `ll_CC` in any case and returns `ll-CC` (the form Twilio documents).
fn language_tag(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let b = value.as_bytes();
    let ok = b.len() == 5
        && b[..2].iter().all(u8::is_ascii_alphabetic)
        && (b[2] == b'-' || b[2] == b'_')
        && b[3..].iter().all(u8::is_ascii_alphabetic);
    if !ok {
        return Err(ConfigError::Language {
            name,
            value: value.to_owned(),
        });
    }
    Ok(format!(
        "{}-{}",
        value[..2].to_ascii_lowercase(),
        value[3..].to_ascii_uppercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().copied())
    }

    #[test]
    fn the_echo_check_is_on_unless_switched_off() {
        assert!(from(&[]).unwrap().echo_check);
        assert!(!from(&[("ECHO_CHECK", "off")]).unwrap().echo_check);
        assert!(from(&[]).unwrap().onset_check);
        assert!(!from(&[("ONSET_CHECK", "off")]).unwrap().onset_check);
        assert_eq!(from(&[]).unwrap().onset_pause, Duration::from_millis(500));
        assert_eq!(
            from(&[("ONSET_PAUSE_MS", "0")]).unwrap().onset_pause,
            Duration::ZERO
        );
        assert_eq!(
            from(&[("ONSET_PAUSE_MS", "2001")]).unwrap_err().to_string(),
            "ONSET_PAUSE_MS must be an integer from 0 to 2000: got \"2001\""
        );
        assert_eq!(
            from(&[("ECHO_CHECK", "no")]).unwrap_err().to_string(),
            "ECHO_CHECK must be on or off: got \"no\""
        );
    }

    #[test]
    fn empty_environment_gives_documented_defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:3000".parse().unwrap());
        assert!(c.auth_token.is_none());
        assert!(!c.signature_checks());
        assert!(c.public_url.is_none());
        assert_eq!(c.greeting.language, "en-US");
        assert!(c.greeting.text.is_empty());
        assert_eq!(c.record_max_length, Duration::from_secs(120));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.stream_token_ttl, Duration::from_secs(600));
    }

    #[test]
    fn log_color_is_parsed_and_auto_colours_only_a_terminal() {
        assert_eq!(from(&[]).unwrap().log_color, LogColor::Auto);
        for (value, color) in [
            ("auto", LogColor::Auto),
            ("Always", LogColor::Always),
            ("NEVER", LogColor::Never),
        ] {
            assert_eq!(from(&[("LOG_COLOR", value)]).unwrap().log_color, color);
        }
        assert!(LogColor::Auto.is_on(true));
        assert!(!LogColor::Auto.is_on(false));
        assert!(LogColor::Always.is_on(false));
        assert!(!LogColor::Never.is_on(true));
        assert_eq!(
            from(&[("LOG_COLOR", "yes")]).unwrap_err().to_string(),
            "LOG_COLOR must be auto, always or never: got \"yes\""
        );
    }

    #[test]
    fn full_environment_is_parsed() {
        let c = from(&[
            ("PORT", "8080"),
            ("BIND", "127.0.0.1"),
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("PUBLIC_URL", "https://voice.example.com/"),
            ("DEPLOY_ID", "blue-7"),
            ("GREETING_TEXT", "Hello"),
            ("GREETING_VOICE", "Polly.Joanna"),
            ("GREETING_LANGUAGE", "en_gb"),
            ("RECORD_MAX_LENGTH", "60"),
            ("LOG_FORMAT", "JSON"),
            ("DATA_DIR", "/var/lib/handset"),
            ("STREAM_TOKEN_TTL", "30"),
        ])
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.auth_token.as_ref().unwrap().expose(), "tok");
        let url = c.public_url.unwrap();
        assert_eq!(url.http_url("/a"), "https://voice.example.com/a");
        assert_eq!(url.ws_url("/ws"), "wss://voice.example.com/ws");
        assert_eq!(c.deploy_id.as_deref(), Some("blue-7"));
        assert_eq!(c.greeting.language, "en-GB");
        assert_eq!(c.greeting.voice.as_deref(), Some("Polly.Joanna"));
        assert_eq!(c.record_max_length, Duration::from_secs(60));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/handset"));
        assert_eq!(c.stream_token_ttl, Duration::from_secs(30));
    }

    #[test]
    fn openai_key_selects_the_realtime_adapter_and_is_never_shown() {
        let c = from(&[("OPENAI_API_KEY", "sk-abc"), ("OPENAI_VOICE", "verse")]).unwrap();
        let agent = c.agent.unwrap();
        assert_eq!(agent.url, DEFAULT_OPENAI_REALTIME_URL);
        let (name, value) = agent.auth.clone().unwrap();
        assert_eq!(
            (name.as_str(), value.expose()),
            ("authorization", "Bearer sk-abc")
        );
        assert!(!format!("{agent:?}").contains("sk-abc"));
        let openai = agent.openai.unwrap();
        assert_eq!(openai.voice, "verse");
        assert_eq!(
            openai.transcribe_model.as_deref(),
            Some("gpt-4o-mini-transcribe")
        );
        let local = from(&[
            ("OPENAI_API_KEY", "k"),
            ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
            ("OPENAI_TRANSCRIBE_MODEL", "off"),
        ])
        .unwrap()
        .agent
        .unwrap();
        assert_eq!(local.url, "ws://127.0.0.1:9/v1/realtime");
        let local = local.openai.unwrap();
        assert_eq!(local.transcribe_model, None);
        assert_eq!(local.greeting.as_deref(), Some(DEFAULT_OPENAI_GREETING));
        let quiet = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_GREETING", "OFF")]).unwrap();
        assert_eq!(quiet.agent.unwrap().openai.unwrap().greeting, None);
        let custom = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_GREETING", "Say hi.")]).unwrap();
        assert_eq!(
            custom.agent.unwrap().openai.unwrap().greeting.as_deref(),
            Some("Say hi.")
        );
        assert!(local.dtmf, "keys are forwarded by default");
        let no_keys = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_DTMF", "off")]).unwrap();
        assert!(!no_keys.agent.unwrap().openai.unwrap().dtmf);
        let err = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_DTMF", "maybe")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OPENAI_DTMF must be on or off: got \"maybe\""
        );
        assert!(from(&[("OPENAI_API_KEY", "k"), ("AGENT_URL", "ws://h")]).is_err());
        assert!(from(&[("OPENAI_API_KEY", "k"), ("AGENT_TOKEN", "t")]).is_err());
        assert!(
            from(&[
                ("OPENAI_API_KEY", "k"),
                ("OPENAI_REALTIME_URL", "https://x")
            ])
            .is_err()
        );
        assert!(from(&[("OPENAI_API_KEY", "a\u{1}b")]).is_err());
    }

    #[test]
    fn agent_variables_are_validated_and_secrets_never_shown() {
        assert!(from(&[]).unwrap().agent.is_none());
        let c = from(&[
            ("AGENT_URL", "wss://agent.example.com/voice?x=1"),
            ("AGENT_AUTH_HEADER", "X-Api-Key: s3cret"),
            ("AGENT_CONNECT_TIMEOUT_MS", "250"),
            ("AGENT_REPLY_TIMEOUT_MS", "4000"),
            ("AGENT_FALLBACK", "Tone"),
        ])
        .unwrap();
        let agent = c.agent.unwrap();
        assert_eq!(agent.url, "wss://agent.example.com/voice?x=1");
        let (name, value) = agent.auth.clone().unwrap();
        assert_eq!((name.as_str(), value.expose()), ("x-api-key", "s3cret"));
        assert!(!format!("{agent:?}").contains("s3cret"));
        assert_eq!(agent.connect_timeout, Duration::from_millis(250));
        assert_eq!(agent.reply_timeout, Some(Duration::from_secs(4)));
        assert_eq!(agent.fallback, AgentFallback::Tone);

        let token = from(&[("AGENT_URL", "ws://127.0.0.1:9"), ("AGENT_TOKEN", "t")]).unwrap();
        let (name, value) = token.agent.unwrap().auth.unwrap();
        assert_eq!(
            (name.as_str(), value.expose()),
            ("authorization", "Bearer t")
        );
        let off = from(&[("AGENT_URL", "ws://h"), ("AGENT_REPLY_TIMEOUT_MS", "0")]).unwrap();
        assert_eq!(off.agent.unwrap().reply_timeout, None);

        for bad in ["http://h", "ws://", "ws://u:p@h/", "wss://h/#f", "h:80"] {
            assert!(
                matches!(
                    from(&[("AGENT_URL", bad)]),
                    Err(ConfigError::WebSocketUrl { .. })
                ),
                "{bad}"
            );
        }
        let err = from(&[("AGENT_URL", "ws://h"), ("AGENT_AUTH_HEADER", "novalue")]).unwrap_err();
        assert!(!err.to_string().contains("novalue"), "{err}");
        assert!(matches!(
            from(&[
                ("AGENT_URL", "ws://h"),
                ("AGENT_AUTH_HEADER", "A: b"),
                ("AGENT_TOKEN", "c")
            ]),
            Err(ConfigError::Conflict { .. })
        ));
        assert_eq!(
            from(&[("AGENT_TOKEN", "c")]).unwrap_err(),
            ConfigError::AgentUrlMissing {
                name: "AGENT_TOKEN"
            }
        );
        assert!(from(&[("AGENT_URL", "ws://h"), ("AGENT_CONNECT_TIMEOUT_MS", "5")]).is_err());
        assert!(from(&[("AGENT_URL", "ws://h"), ("AGENT_FALLBACK", "music")]).is_err());
    }

    #[test]
    fn later_pairs_override_earlier_ones() {
        let c = from(&[("PORT", "1"), ("PORT", "2")]).unwrap();
        assert_eq!(c.listen.port(), 2);
    }

    #[test]
    fn public_url_with_query_or_path_is_rejected_with_the_value() {
        for bad in [
            "voice.example.com",
            "ftp://voice.example.com",
            "https://voice.example.com/?x=1",
            "https://voice.example.com/base",
            "https://user:pw@voice.example.com",
            "https://",
        ] {
            let err = from(&[("PUBLIC_URL", bad)]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("PUBLIC_URL must be an absolute http(s) URL"),
                "{msg}"
            );
            assert!(msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn bad_numbers_name_the_variable_and_range() {
        let err = from(&[("PORT", "70000")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PORT must be an integer from 0 to 65535: got \"70000\""
        );
        assert!(from(&[("RECORD_MAX_LENGTH", "1")]).is_err());
        assert!(from(&[("RECORD_MAX_LENGTH", "abc")]).is_err());
        assert!(from(&[("STREAM_TOKEN_TTL", "5")]).is_err());
        assert_eq!(
            from(&[("ENGINE_REALTIME_PRIORITY", "100")])
                .unwrap_err()
                .to_string(),
            "ENGINE_REALTIME_PRIORITY must be an integer from 0 to 99: got \"100\""
        );
    }

    #[test]
    fn engine_realtime_priority_is_off_by_default_and_at_zero() {
        assert_eq!(from(&[]).unwrap().engine_realtime_priority, None);
        let zero = from(&[("ENGINE_REALTIME_PRIORITY", "0")]).unwrap();
        assert_eq!(zero.engine_realtime_priority, None);
        let on = from(&[("ENGINE_REALTIME_PRIORITY", "20")]).unwrap();
        assert_eq!(on.engine_realtime_priority, Some(20));
    }

    #[test]
    fn engine_cpu_latency_is_off_unless_set() {
        assert_eq!(from(&[]).unwrap().engine_cpu_latency, None);
        let zero = from(&[("ENGINE_CPU_LATENCY_US", "0")]).unwrap();
        assert_eq!(zero.engine_cpu_latency, Some(Duration::ZERO));
        assert!(from(&[("ENGINE_CPU_LATENCY_US", "100001")]).is_err());
    }

    #[test]
    fn health_port_is_a_port_other_than_port() {
        assert_eq!(from(&[]).unwrap().health_port, None);
        let c = from(&[("PORT", "3000"), ("HEALTH_PORT", "9090")]).unwrap();
        assert_eq!(c.health_port, Some(9090));
        assert!(
            from(&[("PORT", "3000"), ("HEALTH_PORT", "3000")])
                .unwrap_err()
                .to_string()
                .contains("HEALTH_PORT")
        );
        assert!(from(&[("HEALTH_PORT", "0")]).is_err());
        assert!(from(&[("HEALTH_PORT", "65536")]).is_err());
    }

    #[test]
    fn empty_auth_token_is_an_error_not_a_silent_disable() {
        assert_eq!(
            from(&[("TWILIO_AUTH_TOKEN", "  ")]).unwrap_err(),
            ConfigError::EmptyAuthToken
        );
    }

    #[test]
    fn bad_language_bind_and_log_format_are_rejected() {
        assert!(matches!(
            from(&[("GREETING_LANGUAGE", "english")]),
            Err(ConfigError::Language { .. })
        ));
        assert!(matches!(
            from(&[("BIND", "localhost")]),
            Err(ConfigError::BindAddress { .. })
        ));
        assert!(matches!(
            from(&[("LOG_FORMAT", "xml")]),
            Err(ConfigError::LogFormat { .. })
        ));
    }

    #[test]
    fn stream_limits_default_to_the_documented_values() {
        let c = from(&[]).unwrap();
        assert_eq!(c.ws_max_message_bytes, 64 * 1024);
        assert_eq!(c.ws_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.ws_write_timeout, Duration::from_secs(5));
        assert_eq!(c.ws_start_timeout, Duration::from_secs(10));
        assert!(c.metrics_token.is_none());
    }

    #[test]
    fn stream_limits_are_read_at_their_bounds() {
        let low = from(&[
            ("WS_MAX_MESSAGE_BYTES", "1024"),
            ("WS_IDLE_TIMEOUT", "1"),
            ("WS_WRITE_TIMEOUT", "1"),
            ("WS_START_TIMEOUT", "1"),
        ])
        .unwrap();
        assert_eq!(low.ws_max_message_bytes, 1024);
        assert_eq!(low.ws_idle_timeout, Duration::from_secs(1));
        assert_eq!(low.ws_write_timeout, Duration::from_secs(1));
        assert_eq!(low.ws_start_timeout, Duration::from_secs(1));
        let high = from(&[
            ("WS_MAX_MESSAGE_BYTES", "16777216"),
            ("WS_IDLE_TIMEOUT", "3600"),
            ("WS_WRITE_TIMEOUT", "600"),
            ("WS_START_TIMEOUT", " 600 "),
        ])
        .unwrap();
        assert_eq!(high.ws_max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(high.ws_idle_timeout, Duration::from_secs(3600));
        assert_eq!(high.ws_write_timeout, Duration::from_secs(600));
        assert_eq!(high.ws_start_timeout, Duration::from_secs(600));
    }

    #[test]
    fn stream_limits_outside_their_range_name_the_variable_and_range() {
        let cases = [
            ("WS_MAX_MESSAGE_BYTES", "1023", "1024 to 16777216"),
            ("WS_MAX_MESSAGE_BYTES", "16777217", "1024 to 16777216"),
            ("WS_MAX_MESSAGE_BYTES", "64k", "1024 to 16777216"),
            ("WS_IDLE_TIMEOUT", "0", "1 to 3600"),
            ("WS_IDLE_TIMEOUT", "3601", "1 to 3600"),
            ("WS_WRITE_TIMEOUT", "0", "1 to 600"),
            ("WS_WRITE_TIMEOUT", "601", "1 to 600"),
            ("WS_START_TIMEOUT", "-1", "1 to 600"),
            ("WS_START_TIMEOUT", "1.5", "1 to 600"),
        ];
        for (name, value, range) in cases {
            let err = from(&[(name, value)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{name} must be an integer from {range}: got {value:?}")
            );
        }
    }

    #[test]
    fn metrics_token_is_a_secret_and_empty_is_refused() {
        let c = from(&[("METRICS_TOKEN", " scrape-me ")]).unwrap();
        assert_eq!(c.metrics_token.as_ref().unwrap().expose(), "scrape-me");
        assert!(!format!("{c:?}").contains("scrape-me"));
        assert_eq!(
            from(&[("METRICS_TOKEN", " ")]).unwrap_err(),
            ConfigError::EmptyMetricsToken
        );
    }

    #[test]
    fn twilio_rest_variables_are_validated_and_secrets_never_shown() {
        let c = from(&[]).unwrap();
        assert_eq!(c.twilio.api_url.to_string(), DEFAULT_TWILIO_API_URL);
        assert!(!c.twilio.is_usable());
        let account = "AC0123456789abcdef0123456789abcdef";
        let key = "SK0123456789abcdef0123456789abcdef";
        let c = from(&[
            ("TWILIO_ACCOUNT_SID", account),
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("TWILIO_API_URL", "http://127.0.0.1:9/"),
            ("TWILIO_FROM", "+15550001111"),
        ])
        .unwrap();
        assert_eq!(c.twilio.api_url.http_url("/x"), "http://127.0.0.1:9/x");
        let (user, password) = c.twilio.credentials().unwrap();
        assert_eq!((user.as_str(), password.expose()), (account, "tok"));
        assert_eq!(c.twilio.from.as_deref(), Some("+15550001111"));
        let keyed = from(&[
            ("TWILIO_ACCOUNT_SID", account),
            ("TWILIO_API_KEY_SID", key),
            ("TWILIO_API_KEY_SECRET", "key-secret"),
        ])
        .unwrap();
        let (user, password) = keyed.twilio.credentials().unwrap();
        assert_eq!((user.as_str(), password.expose()), (key, "key-secret"));
        assert!(!format!("{keyed:?}").contains("key-secret"));
        for host in ["http://localhost:8080", "http://[::1]:1"] {
            assert!(from(&[("TWILIO_API_URL", host)]).is_ok(), "{host}");
        }
        assert_eq!(
            from(&[("TWILIO_API_URL", "http://api.example.com")])
                .unwrap_err()
                .to_string(),
            "TWILIO_API_URL must be https unless its host is 127.0.0.1, localhost or [::1]: got \"http://api.example.com\""
        );
        assert!(from(&[("TWILIO_API_URL", "https://api.example.com/path")]).is_err());
        assert_eq!(
            from(&[("TWILIO_ACCOUNT_SID", "AC123")])
                .unwrap_err()
                .to_string(),
            "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits: got \"AC123\""
        );
        assert_eq!(
            from(&[("TWILIO_ACCOUNT_SID", account), ("TWILIO_API_KEY_SID", key)]).unwrap_err(),
            ConfigError::Requires {
                name: "TWILIO_API_KEY_SID",
                needs: "TWILIO_API_KEY_SECRET"
            }
        );
        assert!(from(&[("TWILIO_API_KEY_SID", key), ("TWILIO_API_KEY_SECRET", "s")]).is_err());
        assert!(from(&[("TWILIO_FROM", "5550001111")]).is_err());
    }

    #[test]
    fn control_token_needs_a_public_url_and_twilio_credentials() {
        let account = "AC0123456789abcdef0123456789abcdef";
        let c = from(&[
            ("CONTROL_TOKEN", " ctl "),
            ("PUBLIC_URL", "https://voice.example.com"),
            ("TWILIO_ACCOUNT_SID", account),
            ("TWILIO_AUTH_TOKEN", "tok"),
        ])
        .unwrap();
        assert_eq!(c.control_token.as_ref().unwrap().expose(), "ctl");
        assert!(!format!("{c:?}").contains("ctl\""));
        assert_eq!(
            from(&[("CONTROL_TOKEN", "ctl"), ("TWILIO_ACCOUNT_SID", account)]).unwrap_err(),
            ConfigError::Requires {
                name: "CONTROL_TOKEN",
                needs: "PUBLIC_URL"
            }
        );
        assert!(matches!(
            from(&[
                ("CONTROL_TOKEN", "ctl"),
                ("PUBLIC_URL", "https://voice.example.com")
            ]),
            Err(ConfigError::Requires {
                name: "CONTROL_TOKEN",
                ..
            })
        ));
        assert_eq!(
            from(&[("CONTROL_TOKEN", "")]).unwrap_err(),
            ConfigError::EmptyControlToken
        );
    }

    fn limited(pairs: &[(&str, &str)], files: Option<u64>) -> Result<Config, ConfigError> {
        Config::from_vars_limited(pairs.iter().copied(), files)
    }

    #[test]
    fn max_connections_default_is_what_the_open_files_limit_leaves() {
        // 1024 − 64 reserved − 3 × 8 store connections.
        assert_eq!(limited(&[], Some(1024)).unwrap().max_connections, 936);
        let store = [("DATABASE_MAX_CONNECTIONS", "20")];
        assert_eq!(limited(&store, Some(1024)).unwrap().max_connections, 900);
        // A remote agent: one upstream socket per call, so half when calls are not limited,
        // and MAX_CALLS fewer when they are.
        let agent = [("AGENT_URL", "ws://127.0.0.1:9")];
        assert_eq!(limited(&agent, Some(1024)).unwrap().max_connections, 468);
        let agent_calls = [("AGENT_URL", "ws://127.0.0.1:9"), ("MAX_CALLS", "100")];
        assert_eq!(
            limited(&agent_calls, Some(1024)).unwrap().max_connections,
            836
        );
        // However many files: at most the ceiling, or what MAX_CALLS needs when that is more.
        for files in [None, Some(1_048_576)] {
            assert_eq!(
                limited(&[], files).unwrap().max_connections,
                MAX_CONNECTIONS_CEILING
            );
        }
        assert_eq!(
            limited(&[("MAX_CALLS", "20000")], None)
                .unwrap()
                .max_connections,
            20_032
        );
    }

    #[test]
    fn max_connections_is_checked_against_max_calls_and_the_open_files_limit() {
        let c = limited(&[("MAX_CONNECTIONS", " 8 ")], Some(1024)).unwrap();
        assert_eq!(c.max_connections, 8);
        let c = limited(
            &[("MAX_CALLS", "100"), ("MAX_CONNECTIONS", "132")],
            Some(1024),
        );
        assert_eq!(c.unwrap().max_connections, 132);
        for bad in ["0", "1000001", "many", "-1"] {
            assert_eq!(
                limited(&[("MAX_CONNECTIONS", bad)], Some(1024))
                    .unwrap_err()
                    .to_string(),
                format!("MAX_CONNECTIONS must be an integer from 1 to 1000000: got {bad:?}")
            );
        }
        assert_eq!(
            limited(
                &[("MAX_CALLS", "100"), ("MAX_CONNECTIONS", "100")],
                Some(1024)
            )
            .unwrap_err()
            .to_string(),
            "MAX_CONNECTIONS (100) must be at least MAX_CALLS + 32 (132): every call holds a connection for its media stream, and webhooks, health checks and scrapes need more"
        );
        assert_eq!(
            limited(&[("MAX_CONNECTIONS", "5000")], Some(1024))
                .unwrap_err()
                .to_string(),
            "MAX_CONNECTIONS (5000) needs about 5088 open files (connections, agent sockets, the store, logs) but the open-files limit (RLIMIT_NOFILE) is 1024: raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CONNECTIONS"
        );
        // With a remote agent each call may hold an upstream socket too.
        let agent = [("AGENT_URL", "ws://h"), ("MAX_CONNECTIONS", "500")];
        assert!(matches!(
            limited(&agent, Some(1024)),
            Err(ConfigError::ConnectionsOverFileLimit { needed: 1088, .. })
        ));
        assert_eq!(
            limited(&[("MAX_CONNECTIONS", "5000")], None)
                .unwrap()
                .max_connections,
            5000
        );
    }

    #[test]
    fn an_open_files_limit_too_low_for_max_calls_is_an_error() {
        assert_eq!(
            limited(&[("MAX_CALLS", "1000")], Some(1024))
                .unwrap_err()
                .to_string(),
            "the open-files limit (RLIMIT_NOFILE) is 1024, which leaves 936 connections: at least 1032 are needed (MAX_CALLS + 32); raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CALLS"
        );
        assert!(matches!(
            limited(&[], Some(100)),
            Err(ConfigError::FileLimitTooLow {
                limit: 100,
                available: 12,
                needed: 32
            })
        ));
    }

    #[test]
    fn secret_never_prints_its_value() {
        let c = from(&[("TWILIO_AUTH_TOKEN", "hunter2")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.auth_token.unwrap().to_string(), "[redacted]");
    }
}
