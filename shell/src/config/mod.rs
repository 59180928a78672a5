//! Shell configuration, read once at start from environment-style variables.
//!
//! [`Config::from_vars`] takes any iterator of `(name, value)` pairs, so tests inject the
//! environment the way the engine injects time. `main` passes [`environment()`] followed by the
//! command-line flags translated to the same names, so a flag overrides its variable and every
//! value is validated in one place. After validation every field holds a type that cannot be
//! invalid (`Duration`, `SocketAddr`, [`PublicUrl`]).
//!
//! Secrets (the auth token) live in [`Secret`], whose `Debug`/`Display` never show the value.
//!
//! This module holds [`Config`], its defaults and [`Config::from_vars`], which reads every
//! variable in one pass. The parts a reader looks for on their own sit in submodules, each
//! re-exported here: [`Secret`], [`PublicUrl`], [`ConfigError`], the remote agent
//! ([`AgentConfig`]), the Twilio REST API ([`TwilioRestConfig`]), the connection limit and its
//! open-files arithmetic ([`derived_max_connections`]), and the small value parsers they share.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

mod agent;
mod error;
mod limits;
mod parse;
mod public_url;
mod secret;
mod twilio_rest;

pub use agent::{
    AgentConfig, AgentFallback, DEFAULT_OPENAI_GREETING, DEFAULT_OPENAI_INSTRUCTIONS,
    DEFAULT_OPENAI_REALTIME_URL, OpenAiConfig,
};
pub use error::ConfigError;
pub use limits::{
    CONNECTIONS_BESIDE_CALLS, FILES_PER_STORE_CONNECTION, MAX_CONNECTIONS_CEILING, RESERVED_FILES,
    derived_max_connections, open_files_limit,
};
pub use public_url::PublicUrl;
pub use secret::Secret;
pub use twilio_rest::{DEFAULT_TWILIO_API_URL, TwilioRestConfig};

use agent::agent_config;
use limits::max_connections;
use parse::{int_in, language_tag, switch};
use twilio_rest::twilio_config;

/// The process environment as `(name, value)` pairs for [`Config::from_vars`]. A name or value
/// that is not UTF-8 is converted with U+FFFD in place of the bad bytes (`std::env::vars` would
/// panic on it, whoever's variable it is): one Handset reads then fails its own check with a
/// clear message, and any other is ignored as before.
pub fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().map(|(name, value)| {
        (
            name.to_string_lossy().into_owned(),
            value.to_string_lossy().into_owned(),
        )
    })
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
    /// `STORE_MIN_FREE_MB` (0–1048576, default 64): with the SQLite store, the free space (MiB)
    /// on its file system below which the store counts as full (`/readyz` 503) before writes
    /// fail; 0 turns the measure off.
    pub store_min_free_mb: u64,
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
            store_min_free_mb: 64,
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

/// Values the command line gives typed (`handset serve --port …`), each in place of its
/// variable: parsed once by the flag parser, never turned back into text.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--port`, in place of `PORT`.
    pub port: Option<u16>,
    /// `--bind`, in place of `BIND`.
    pub bind: Option<IpAddr>,
    /// `--log-format`, in place of `LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
    /// `--data-dir`, in place of `DATA_DIR` (any path, UTF-8 or not).
    pub data_dir: Option<PathBuf>,
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
        Self::from_vars_limited(vars, &Overrides::default(), open_files_limit())
    }

    /// [`Self::from_vars`] with the command line's typed values in place of their variables
    /// (a variable an override replaces is not read, so its value cannot be an error).
    pub fn from_vars_with<I, K, V>(vars: I, overrides: &Overrides) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::from_vars_limited(vars, overrides, open_files_limit())
    }

    /// [`Self::from_vars_with`] for a given open-files limit (`None`: unlimited).
    fn from_vars_limited<I, K, V>(
        vars: I,
        overrides: &Overrides,
        file_limit: Option<u64>,
    ) -> Result<Self, ConfigError>
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

        let ip = match (overrides.bind, non_empty("BIND")) {
            (Some(ip), _) => ip,
            (None, Some(v)) => v.parse::<IpAddr>().map_err(|_| ConfigError::BindAddress {
                name: "BIND",
                value: v.to_owned(),
            })?,
            (None, None) => config.listen.ip(),
        };
        let port = match (overrides.port, non_empty("PORT")) {
            (Some(port), _) => port,
            (None, Some(v)) => int_in("PORT", v, 0, u64::from(u16::MAX))? as u16,
            (None, None) => DEFAULT_PORT,
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
        if let Some(format) = overrides.log_format {
            config.log_format = format;
        } else if let Some(v) = non_empty("LOG_FORMAT") {
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
        if let Some(dir) = &overrides.data_dir {
            config.data_dir.clone_from(dir);
        } else if let Some(v) = non_empty("DATA_DIR") {
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
        if let Some(v) = non_empty("STORE_MIN_FREE_MB") {
            config.store_min_free_mb = int_in("STORE_MIN_FREE_MB", v, 0, 1 << 20)?;
        }
        if let Some(v) = non_empty("LOG_PII") {
            config.log_pii_full = match v.to_ascii_lowercase().as_str() {
                "full" => true,
                "masked" => false,
                _ => {
                    return Err(ConfigError::LogPii {
                        value: v.chars().take(32).collect(),
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
                .ok_or_else(|| ConfigError::Share {
                    name: "TRACE_SAMPLE",
                    value: v.to_owned(),
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
        options.min_free_bytes = self.store_min_free_mb << 20;
        options
    }

    /// Whether `X-Twilio-Signature` is checked on webhooks.
    pub fn signature_checks(&self) -> bool {
        self.auth_token.is_some()
    }
}

#[cfg(test)]
mod tests;
