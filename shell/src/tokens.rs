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
//! succeeds. Time is an argument (`*_at` methods) so tests need no clock.
//!
//! A call gets one token per voice-webhook hop. Twilio's signatures carry no timestamp, so a
//! captured signed voice webhook can be replayed verbatim; the replay finds the call's token
//! row (outstanding, redeemed or expired) and is refused ([`StreamTokens::issue`] returns
//! `None`): it can neither obtain a usable token nor replace the genuine one, which stays
//! redeemable. Only a drain redirect, whose URL carries a higher `hop` and is signed as such,
//! gets a new one. The rows are kept like the call records (no retention yet), so a call's
//! webhook stays refused after the call.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

pub use crate::store::{CallIdentity, TokenError};
use crate::store::{Store, StoreError};

/// `<Parameter name>` carrying the token; the WebSocket handler reads it from
/// `start.customParameters`.
pub const TOKEN_PARAMETER: &str = "streamToken";

/// Random bytes per token (128 bits).
pub const TOKEN_BYTES: usize = 16;

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

    /// Issues a token for `call` from its voice webhook of `hop` (0 first, n after the n-th
    /// drain redirect). `None` when the call already has a token from this hop or a later one:
    /// a replayed webhook, which gets nothing, while the earlier token stays as it was.
    pub async fn issue(
        &self,
        call: &CallIdentity,
        hop: u32,
    ) -> Result<Option<StreamToken>, StoreError> {
        self.issue_at(crate::clock::unix_ms(), call, hop).await
    }

    /// [`Self::issue`] at `now_unix_ms`.
    pub async fn issue_at(
        &self,
        now_unix_ms: u64,
        call: &CallIdentity,
        hop: u32,
    ) -> Result<Option<StreamToken>, StoreError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = StreamToken(URL_SAFE_NO_PAD.encode(bytes));
        let expires =
            now_unix_ms.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let stored = self
            .store
            .issue_token(call, &digest(token.as_str()), hop, now_unix_ms, expires)
            .await?;
        Ok(stored.then_some(token))
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
        let tok = tokens.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
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
        let tok = a.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
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
        let tok = tokens.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
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
    async fn token_expires_after_ttl() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(10));
        let tok = tokens.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
        assert_eq!(db.store.outstanding_tokens(T0).await.unwrap(), 1);
        assert_eq!(
            tokens
                .redeem_at(T0 + 10_000, tok.as_str(), "CA1")
                .await
                .unwrap(),
            Err(TokenError::Expired)
        );
        assert_eq!(db.store.outstanding_tokens(T0 + 10_000).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn tokens_are_128_bit_distinct_and_stored_only_as_digests() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(10));
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let tok = tokens
                .issue_at(T0, &call(&format!("CA{i}")), 0)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                URL_SAFE_NO_PAD.decode(tok.as_str()).unwrap().len(),
                TOKEN_BYTES
            );
            assert!(seen.insert(tok.as_str().to_owned()));
            let stored = db.stored_token_digest(&format!("CA{i}")).await;
            assert_eq!(stored, digest(tok.as_str()));
            assert_ne!(stored, tok.as_str());
        }
        let tok = tokens.issue_at(T0, &call("X"), 0).await.unwrap().unwrap();
        let shown = format!("{tok:?}");
        assert!(shown.contains("redacted") && !shown.contains(tok.as_str()));
    }

    /// A replayed voice webhook (same CallSid, same hop) gets no token, whether the genuine one
    /// is outstanding, redeemed or expired, and the genuine one is left exactly as it was.
    #[tokio::test]
    async fn a_replayed_webhook_gets_no_token_and_leaves_the_genuine_one() {
        let db = TestStore::new().await;
        let tokens = StreamTokens::new(db.store.clone(), Duration::from_secs(60));
        let genuine = tokens.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
        // Before the genuine stream: refused, and the genuine token still redeems.
        assert_eq!(
            tokens.issue_at(T0 + 1, &call("CA1"), 0).await.unwrap(),
            None
        );
        assert_eq!(
            db.stored_token_digest("CA1").await,
            digest(genuine.as_str())
        );
        assert!(
            tokens
                .redeem_at(T0 + 2, genuine.as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
        // After it started, and long after the token's TTL: still refused.
        assert_eq!(
            tokens.issue_at(T0 + 3, &call("CA1"), 0).await.unwrap(),
            None
        );
        assert_eq!(
            tokens
                .issue_at(T0 + 86_400_000, &call("CA1"), 0)
                .await
                .unwrap(),
            None
        );
        assert_eq!(db.store.outstanding_tokens(T0 + 3).await.unwrap(), 0);
    }

    /// A drain redirect (a higher hop) gets a new token that replaces the old one; a replay of
    /// that redirect, or of any earlier hop, gets none.
    #[tokio::test]
    async fn a_drain_redirect_gets_one_new_token_per_hop() {
        let db = TestStore::new().await;
        let a = StreamTokens::new(db.store.clone(), Duration::from_secs(60));
        let b = StreamTokens::new(db.reopen().await, Duration::from_secs(60));
        let first = a.issue_at(T0, &call("CA1"), 0).await.unwrap().unwrap();
        assert!(
            a.redeem_at(T0, first.as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
        let moved = b.issue_at(T0 + 5, &call("CA1"), 1).await.unwrap().unwrap();
        assert_eq!(a.issue_at(T0 + 6, &call("CA1"), 1).await.unwrap(), None);
        assert_eq!(a.issue_at(T0 + 6, &call("CA1"), 0).await.unwrap(), None);
        assert_eq!(
            b.redeem_at(T0 + 7, first.as_str(), "CA1").await.unwrap(),
            Err(TokenError::Mismatch)
        );
        assert!(
            b.redeem_at(T0 + 7, moved.as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
    }

    /// Two instances answering the same webhook at once (a replay racing the genuine request):
    /// exactly one token is issued.
    #[tokio::test]
    async fn of_two_concurrent_issues_for_one_call_exactly_one_gets_a_token() {
        let db = TestStore::new().await;
        let a = StreamTokens::new(db.store.clone(), Duration::from_secs(60));
        let b = StreamTokens::new(db.reopen().await, Duration::from_secs(60));
        let one = call("CA1");
        let (ta, tb) = tokio::join!(a.issue_at(T0, &one, 0), b.issue_at(T0, &one, 0));
        let issued: Vec<StreamToken> = [ta.unwrap(), tb.unwrap()].into_iter().flatten().collect();
        assert_eq!(issued.len(), 1);
        assert!(
            a.redeem_at(T0, issued[0].as_str(), "CA1")
                .await
                .unwrap()
                .is_ok()
        );
    }
}
