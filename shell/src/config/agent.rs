//! The remote voice agent settings ([`AgentConfig`]): a Handset-protocol agent (`AGENT_*`) or
//! the built-in OpenAI Realtime adapter (`OPENAI_*`), with what they share (timeouts, the
//! fallback sound).
//!
//! `AGENT_URL` and `OPENAI_API_KEY` exclude each other; without either, calls talk to the
//! built-in echo agent and no `AGENT_*` variable may be set.

use std::time::Duration;

use super::parse::{int_in, switch};
use super::{ConfigError, Secret};

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

/// Reads the `AGENT_*` variables; `None` without `AGENT_URL`.
pub(super) fn agent_config<'a>(
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
