//! [`ConfigError`]: every way a configuration value can be unusable.
//!
//! One variant per kind of mistake; each message names the variable and the bad value (never a
//! secret's) and, where the fix is not obvious, says what to do, because the message is the
//! one line an operator sees before the server exits with status 2.

use super::CONNECTIONS_BESIDE_CALLS;

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
    /// A share that is not a number from 0 to 1.
    #[error("{name} must be a number from 0 to 1, such as 0.05: got {value:?}")]
    Share {
        /// Variable name.
        name: &'static str,
        /// Value given.
        value: String,
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
