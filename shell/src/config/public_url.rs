//! [`PublicUrl`]: a validated `http(s)` origin with no path.
//!
//! Used for `PUBLIC_URL` (the origin Twilio reaches this server at, and the base of every URL
//! the server hands Twilio) and `TWILIO_API_URL` (the REST API origin), and rebuilt per request
//! from forwarding headers when `PUBLIC_URL` is unset.

use std::fmt;

use super::ConfigError;

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
