//! The Twilio REST API settings ([`TwilioRestConfig`]): account, credentials, API origin and
//! default caller ID, read from the `TWILIO_*` variables.
//!
//! The REST client itself is [`crate::twilio`]; this module only validates what it is given.

use super::{ConfigError, PublicUrl, Secret};

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

/// Reads the `TWILIO_*` REST variables.
pub(super) fn twilio_config<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
    auth_token: Option<Secret>,
) -> Result<TwilioRestConfig, ConfigError> {
    let sid = |name: &'static str, prefix: &'static str| match non_empty(name) {
        Some(v) if crate::ids::is_sid(v, prefix) => Ok(Some(v.to_owned())),
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
        Some(v) if crate::ids::is_address(v) => Some(v.to_owned()),
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

/// Whether `host[:port]` names the loopback interface: `127.0.0.1`, `localhost` or `[::1]`.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "127.0.0.1" || host == "::1" || host.eq_ignore_ascii_case("localhost")
}
