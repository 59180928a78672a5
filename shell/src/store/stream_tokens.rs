//! The stream tokens' table: a token issued once per call and webhook hop, redeemed once
//! fleet-wide.

use super::*;

impl Store {
    /// Stores a token (its SHA-256, hex) for `call`, issued by the voice webhook of `hop`
    /// (0 for the call's first, n for its n-th redirect after a drain). One conditional upsert,
    /// so it holds fleet-wide: a `CallSid` that already has a token from this hop or a later
    /// one gets none — whether that token is outstanding, redeemed or
    /// expired — so a replayed webhook can neither obtain a second usable token nor replace
    /// the genuine one. A redirect (a higher hop) replaces it. Returns whether it was stored.
    pub async fn issue_token(
        &self,
        call: &CallIdentity,
        token_sha256: &str,
        hop: u32,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        let write = sqlx::query(
            "INSERT INTO stream_tokens (call_sid, token_sha256, account_sid, from_number, \
             to_number, issued_unix_ms, expires_unix_ms, redeemed_unix_ms, hop) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8) \
             ON CONFLICT (call_sid) DO UPDATE SET token_sha256 = excluded.token_sha256, \
             account_sid = excluded.account_sid, from_number = excluded.from_number, \
             to_number = excluded.to_number, issued_unix_ms = excluded.issued_unix_ms, \
             expires_unix_ms = excluded.expires_unix_ms, redeemed_unix_ms = NULL, \
             hop = excluded.hop \
             WHERE stream_tokens.hop < excluded.hop",
        )
        .bind(&call.call_sid)
        .bind(token_sha256)
        .bind(&call.account_sid)
        .bind(&call.from)
        .bind(&call.to)
        .bind(ms(now_unix_ms))
        .bind(ms(expires_unix_ms))
        .bind(i64::from(hop))
        .execute(&self.pool);
        let done = self.write(write).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Redeems the token whose SHA-256 is `token_sha256` for `call_sid`, once fleet-wide: one
    /// conditional `UPDATE`, so of two instances redeeming at once exactly one wins. A wrong
    /// token does not burn the real one.
    pub async fn redeem_token(
        &self,
        call_sid: &str,
        token_sha256: &str,
        now_unix_ms: u64,
    ) -> Result<Result<CallIdentity, TokenError>, StoreError> {
        let redeem = sqlx::query(
            "UPDATE stream_tokens SET redeemed_unix_ms = $3 \
             WHERE call_sid = $1 AND token_sha256 = $2 AND redeemed_unix_ms IS NULL \
             AND expires_unix_ms > $3 \
             RETURNING account_sid, from_number, to_number",
        )
        .bind(call_sid)
        .bind(token_sha256)
        .bind(ms(now_unix_ms))
        .fetch_optional(&self.pool);
        if let Some(row) = self.write(redeem).await? {
            return Ok(Ok(CallIdentity {
                call_sid: call_sid.to_owned(),
                account_sid: row.try_get(0)?,
                from: row.try_get(1)?,
                to: row.try_get(2)?,
            }));
        }
        // Refused: say why (for the log; the socket is closed the same way in every case).
        let row = self
            .read(
                sqlx::query(
                    "SELECT token_sha256, expires_unix_ms, redeemed_unix_ms FROM stream_tokens \
                     WHERE call_sid = $1",
                )
                .bind(call_sid)
                .fetch_optional(&self.pool),
            )
            .await?;
        let Some(row) = row else {
            return Ok(Err(TokenError::Unknown));
        };
        let stored: String = row.try_get(0)?;
        let expires: i64 = row.try_get(1)?;
        let redeemed: Option<i64> = row.try_get(2)?;
        Ok(Err(if redeemed.is_some() {
            TokenError::Unknown
        } else if stored != token_sha256 {
            TokenError::Mismatch
        } else if expires <= ms(now_unix_ms) {
            TokenError::Expired
        } else {
            TokenError::Unknown
        }))
    }

    /// Tokens issued and neither redeemed nor expired at `now_unix_ms`.
    pub async fn outstanding_tokens(&self, now_unix_ms: u64) -> Result<u64, StoreError> {
        let query = sqlx::query_scalar(
            "SELECT COUNT(*) FROM stream_tokens \
             WHERE redeemed_unix_ms IS NULL AND expires_unix_ms > $1",
        )
        .bind(ms(now_unix_ms))
        .fetch_one(&self.pool);
        let n: i64 = self.read(query).await?;
        Ok(count(n))
    }
}
