//! Single-use per-call stream tokens.
//!
//! The incoming-call webhook (whose signature was checked) issues a random token bound to the
//! call's `CallSid` and puts it in a `<Parameter>` of the `<Stream>`. Twilio hands it back in the
//! Media Streams `start.customParameters`, and the WebSocket handler calls [`StreamTokens::redeem`]
//! before bridging any audio. This does not depend on URL reconstruction, so it holds even when a
//! proxy breaks the upgrade's signature URL.
//!
//! Tokens carry 128 bits from the operating system's CSPRNG, expire after a TTL, and can be
//! redeemed once, fleet-wide: they live in the shared [`Store`] (only their SHA-256), so any
//! instance can redeem a token any other instance issued, and of two redeeming at once only one
//! succeeds. Expired tokens are purged by the store's maintenance task. Time is an argument
//! (`*_at` methods) so tests need no clock.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::store::{Store, StoreError};

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

/// Issues and redeems stream tokens through the shared [`Store`], so that the instance that
/// answers the voice webhook and the one that takes the stream need not be the same.
#[derive(Clone, Debug)]
pub struct StreamTokens {
    /// Where tokens live (their SHA-256 only).
    store: Store,
    /// Life of a token from issue.
    ttl: Duration,
}

impl StreamTokens {
    /// Tokens in `store` that live `ttl` from issue.
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// Issues a token for `call`, replacing any earlier one for the same `CallSid`.
    pub async fn issue(&self, call: &CallIdentity) -> Result<StreamToken, StoreError> {
        self.issue_at(crate::clock::unix_ms(), call).await
    }

    /// [`Self::issue`] at `now_unix_ms`.
    pub async fn issue_at(
        &self,
        now_unix_ms: u64,
        call: &CallIdentity,
    ) -> Result<StreamToken, StoreError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = StreamToken(URL_SAFE_NO_PAD.encode(bytes));
        let expires =
            now_unix_ms.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        self.store
            .issue_token(call, &digest(token.as_str()), now_unix_ms, expires)
            .await?;
        Ok(token)
    }

    /// Redeems `token` for `call_sid` once, fleet-wide; returns the call's identity.
    pub async fn redeem(
        &self,
        token: &str,
        call_sid: &str,
    ) -> Result<Result<CallIdentity, TokenError>, StoreError> {
        self.redeem_at(crate::clock::unix_ms(), token, call_sid)
            .await
    }

    /// [`Self::redeem`] at `now_unix_ms`.
    pub async fn redeem_at(
        &self,
        now_unix_ms: u64,
        token: &str,
        call_sid: &str,
    ) -> Result<Result<CallIdentity, TokenError>, StoreError> {
        if token.is_empty() {
            return Ok(Err(TokenError::Unknown));
        }
        self.store
            .redeem_token(call_sid, &digest(token), now_unix_ms)
            .await
    }
}

/// Deletes expired stream tokens once a minute, an hour after they expired (a late redeem
/// meanwhile still reads "expired" rather than "unknown" in the logs). Runs until the process
/// ends; a store failure (which the store's health records) is retried a minute later.
pub async fn purge_expired(state: std::sync::Arc<crate::server::AppState>) {
    const EVERY: Duration = Duration::from_secs(60);
    const KEEP_MS: u64 = 3_600_000;
    loop {
        tokio::time::sleep(EVERY).await;
        let before = crate::clock::unix_ms().saturating_sub(KEEP_MS);
        match state.store.purge_tokens(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired stream tokens deleted"),
            Err(e) => tracing::warn!(error = %e, "expired stream tokens not deleted"),
        }
    }
}

/// The stored form of a token: SHA-256, lowercase hex. A database reader learns no usable
/// token, and comparing digests leaks nothing about the token through timing.
fn digest(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestStore;

    fn call(sid: &str) -> CallIdentity {
        CallIdentity {
            call_sid: sid.to_owned(),
            account_sid: "AC1".to_owned(),
            from: "+15550001".to_owned(),
            to: "+15550002".to_owned(),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[tokio::test]
    async fn token_redeems_once_for_its_call() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(600));
        let tok = tokens.issue_at(T0, &call("CA1")).await.unwrap();
        assert_eq!(
            tokens.redeem_at(T0, tok.as_str(), "CA2").await.unwrap(),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            tokens.redeem_at(T0, tok.as_str(), "CA1").await.unwrap(),
            Ok(call("CA1"))
        );
        assert_eq!(
            tokens.redeem_at(T0, tok.as_str(), "CA1").await.unwrap(),
            Err(TokenError::Unknown)
        );
    }

    #[tokio::test]
    async fn a_token_issued_by_one_instance_redeems_on_another_exactly_once() {
        let db = TestStore::new().await;
        let a = StreamTokens::new(db.store.clone(), Duration::from_secs(600));
        let b = StreamTokens::new(db.reopen().await, Duration::from_secs(600));
        let tok = a.issue_at(T0, &call("CA1")).await.unwrap();
        // Both instances race to redeem the same token: exactly one wins.
        let (ra, rb) = tokio::join!(
            a.redeem_at(T0 + 1, tok.as_str(), "CA1"),
            b.redeem_at(T0 + 1, tok.as_str(), "CA1")
        );
        let wins = [ra.unwrap(), rb.unwrap()]
            .iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn wrong_token_is_refused_and_does_not_burn_the_real_one() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(600));
        let tok = tokens.issue_at(T0, &call("CA1")).await.unwrap();
        assert_eq!(
            tokens.redeem_at(T0, "guess", "CA1").await.unwrap(),
            Err(TokenError::Mismatch)
        );
        assert_eq!(
            tokens.redeem_at(T0, "", "CA1").await.unwrap(),
            Err(TokenError::Unknown)
        );
        assert!(
            tokens
                .redeem_at(T0, tok.as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn token_expires_after_ttl_and_is_purged() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(10));
        let tok = tokens.issue_at(T0, &call("CA1")).await.unwrap();
        assert_eq!(db.store.outstanding_tokens(T0).await.unwrap(), 1);
        assert_eq!(
            tokens
                .redeem_at(T0 + 10_000, tok.as_str(), "CA1")
                .await
                .unwrap(),
            Err(TokenError::Expired)
        );
        assert_eq!(db.store.purge_tokens(T0 + 10_001).await.unwrap(), 1);
        assert_eq!(
            tokens.redeem_at(T0, tok.as_str(), "CA1").await.unwrap(),
            Err(TokenError::Unknown)
        );
    }

    #[tokio::test]
    async fn tokens_are_128_bit_distinct_and_stored_only_as_digests() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(10));
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let tok = tokens.issue_at(T0, &call(&format!("CA{i}"))).await.unwrap();
            assert_eq!(
                URL_SAFE_NO_PAD.decode(tok.as_str()).unwrap().len(),
                TOKEN_BYTES
            );
            assert!(seen.insert(tok.as_str().to_owned()));
            let stored = db.stored_token_digest(&format!("CA{i}")).await;
            assert_eq!(stored, digest(tok.as_str()));
            assert_ne!(stored, tok.as_str());
        }
        let tok = tokens.issue_at(T0, &call("X")).await.unwrap();
        let shown = format!("{tok:?}");
        assert!(shown.contains("redacted") && !shown.contains(tok.as_str()));
    }

    #[tokio::test]
    async fn reissue_for_same_call_replaces_the_old_token() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(60));
        let old = tokens.issue_at(T0, &call("CA1")).await.unwrap();
        let new = tokens.issue_at(T0, &call("CA1")).await.unwrap();
        assert_eq!(db.store.outstanding_tokens(T0).await.unwrap(), 1);
        assert_eq!(
            tokens.redeem_at(T0, old.as_str(), "CA1").await.unwrap(),
            Err(TokenError::Mismatch)
        );
        assert!(
            tokens
                .redeem_at(T0, new.as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
    }
}
