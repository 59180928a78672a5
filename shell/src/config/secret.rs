//! [`Secret`]: a configured string that must not reach a log line.
//!
//! The auth token, API key secrets, bearer tokens and `DATABASE_URL` (which may carry a
//! password) are held as `Secret`, so a [`Config`](super::Config) printed with `{:?}` shows
//! `Secret([redacted])` in their place.

use std::fmt;

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
