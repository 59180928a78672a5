//! Single-use per-call stream tokens.
//!
//! The incoming-call webhook (whose signature was checked) issues a random token bound to the
//! call's `CallSid` and puts it in a `<Parameter>` of the `<Stream>`. Twilio hands it back in the
//! Media Streams `start.customParameters`, and the WebSocket handler calls [`StreamTokens::redeem`]
//! before bridging any audio. This does not depend on URL reconstruction, so it holds even when a
//! proxy breaks the upgrade's signature URL.
//!
//! Tokens carry 128 bits from the operating system's CSPRNG, expire after a TTL, and can be
//! redeemed once. The table is bounded: when full, expired entries are purged and then the entry
//! closest to expiry is evicted. Lookup is by `CallSid` (not secret); the token itself is
//! compared in constant time. Time is an argument (`*_at` methods) so tests need no clock.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use rand::RngCore as _;
use subtle::ConstantTimeEq;

/// `<Parameter name>` carrying the token; the WebSocket handler reads it from
/// `start.customParameters`.
pub const TOKEN_PARAMETER: &str = "streamToken";

/// Random bytes per token (128 bits).
pub const TOKEN_BYTES: usize = 16;

/// Who a call is, as told by the signed incoming-call webhook.
#[derive(Clone, Debug, Default, Eq, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallIdentity {
    /// `CallSid` (`CA…`).
    pub call_sid: String,
    /// `AccountSid` (`AC…`).
    pub account_sid: String,
    /// Caller (`From`), E.164 or `client:`/SIP form.
    pub from: String,
    /// Called number (`To`).
    pub to: String,
}

/// An issued token: URL-safe base64 of 16 random bytes. `Debug` redacts it.
#[derive(Clone, Eq, PartialEq)]
pub struct StreamToken(String);

impl StreamToken {
    /// The token text, as put in the TwiML `<Parameter>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamToken([redacted])")
    }
}

/// Why a token was refused. The WebSocket handler closes the socket without saying which.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The token was valid but its TTL has passed.
    #[error("stream token expired")]
    Expired,
    /// No outstanding token for this call, or it was already redeemed.
    #[error("no stream token outstanding for this call")]
    Unknown,
    /// A token exists for the call but this one does not match.
    #[error("stream token does not match")]
    Mismatch,
}

struct Entry {
    /// Token bytes as issued (the base64 text).
    token: String,
    /// Who the call is.
    identity: CallIdentity,
    /// When the token stops being accepted.
    expires: Instant,
}

/// The table of outstanding tokens, shared by the webhook and WebSocket handlers.
pub struct StreamTokens {
    /// Outstanding tokens by `CallSid`.
    entries: Mutex<HashMap<String, Entry>>,
    /// Life of a token from issue.
    ttl: Duration,
    /// Most outstanding tokens kept.
    capacity: usize,
}

impl fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTokens")
            .field("outstanding", &self.entries.lock().len())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl StreamTokens {
    /// An empty table. `capacity` is clamped to at least 1.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Issues a token for `call`, replacing any earlier one for the same `CallSid`.
    pub fn issue(&self, call: CallIdentity) -> StreamToken {
        self.issue_at(crate::clock::now(), call)
    }

    /// [`Self::issue`] at time `now`.
    pub fn issue_at(&self, now: Instant, call: CallIdentity) -> StreamToken {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&call.call_sid) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            call.call_sid.clone(),
            Entry {
                token: token.clone(),
                identity: call,
                expires: now + self.ttl,
            },
        );
        StreamToken(token)
    }

    /// Redeems `token` for `call_sid` once; returns the call's identity.
    pub fn redeem(&self, token: &str, call_sid: &str) -> Result<CallIdentity, TokenError> {
        self.redeem_at(crate::clock::now(), token, call_sid)
    }

    /// [`Self::redeem`] at time `now`.
    pub fn redeem_at(
        &self,
        now: Instant,
        token: &str,
        call_sid: &str,
    ) -> Result<CallIdentity, TokenError> {
        let mut entries = self.entries.lock();
        let entry = entries.get(call_sid).ok_or(TokenError::Unknown)?;
        if !bool::from(entry.token.as_bytes().ct_eq(token.as_bytes())) {
            // A wrong guess must not cancel the real call's token.
            return Err(TokenError::Mismatch);
        }
        let entry = entries
            .remove(call_sid)
            .unwrap_or_else(|| unreachable!("entry was found under the same lock"));
        if entry.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(entry.identity)
    }

    /// Number of outstanding (possibly expired) tokens.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no token is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sid: &str) -> CallIdentity {
        CallIdentity {
            call_sid: sid.to_owned(),
            account_sid: "AC1".to_owned(),
            from: "+15550001".to_owned(),
            to: "+15550002".to_owned(),
        }
    }

    #[test]
    fn token_redeems_once_for_its_call() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(600), 16);
        let tok = tokens.issue_at(t0, call("CA1"));
        assert_eq!(
            tokens.redeem_at(t0, tok.as_str(), "CA2"),
            Err(TokenError::Unknown)
        );
        assert_eq!(tokens.redeem_at(t0, tok.as_str(), "CA1"), Ok(call("CA1")));
        assert_eq!(
            tokens.redeem_at(t0, tok.as_str(), "CA1"),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn wrong_token_is_refused_and_does_not_burn_the_real_one() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(600), 16);
        let tok = tokens.issue_at(t0, call("CA1"));
        assert_eq!(
            tokens.redeem_at(t0, "guess", "CA1"),
            Err(TokenError::Mismatch)
        );
        assert!(tokens.redeem_at(t0, tok.as_str(), "CA1").is_ok());
    }

    #[test]
    fn token_expires_after_ttl() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(10), 16);
        let tok = tokens.issue_at(t0, call("CA1"));
        assert_eq!(
            tokens.redeem_at(t0 + Duration::from_secs(10), tok.as_str(), "CA1"),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn tokens_are_128_bit_and_distinct() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(10), 1000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let tok = tokens.issue_at(t0, call(&format!("CA{i}")));
            assert_eq!(
                URL_SAFE_NO_PAD.decode(tok.as_str()).unwrap().len(),
                TOKEN_BYTES
            );
            assert!(seen.insert(tok.as_str().to_owned()));
        }
        let tok = tokens.issue_at(t0, call("X"));
        let shown = format!("{tok:?}");
        assert!(shown.contains("redacted") && !shown.contains(tok.as_str()));
    }

    #[test]
    fn table_is_bounded_and_evicts_closest_to_expiry() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(60), 3);
        let first = tokens.issue_at(t0, call("CA0"));
        for i in 1..=3 {
            tokens.issue_at(t0 + Duration::from_secs(i), call(&format!("CA{i}")));
        }
        assert_eq!(tokens.len(), 3);
        assert_eq!(
            tokens.redeem_at(t0, first.as_str(), "CA0"),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn reissue_for_same_call_replaces_the_old_token() {
        let t0 = crate::clock::now();
        let tokens = StreamTokens::new(Duration::from_secs(60), 3);
        let old = tokens.issue_at(t0, call("CA1"));
        let new = tokens.issue_at(t0, call("CA1"));
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            tokens.redeem_at(t0, old.as_str(), "CA1"),
            Err(TokenError::Mismatch)
        );
        assert!(tokens.redeem_at(t0, new.as_str(), "CA1").is_ok());
    }
}
