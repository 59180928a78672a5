//! Calls and their callbacks: where each call's stream ran and why it ended (what the
//! `<Connect action>` reads), and the call-status and stream-status callbacks, each stored once.

use super::*;

impl Store {
    /// Records that `call`'s media stream started (on `call.instance`). A call that streams
    /// again (redirected after a drain) starts a fresh record.
    pub async fn call_started(&self, call: &CallRecord) -> Result<(), StoreError> {
        let write = sqlx::query(
            "INSERT INTO calls (call_sid, account_sid, stream_sid, instance, started_unix_ms, \
             ended_unix_ms, end_reason) VALUES ($1, $2, $3, $4, $5, NULL, NULL) \
             ON CONFLICT (call_sid) DO UPDATE SET account_sid = excluded.account_sid, \
             stream_sid = excluded.stream_sid, instance = excluded.instance, \
             started_unix_ms = excluded.started_unix_ms, ended_unix_ms = NULL, end_reason = NULL",
        )
        .bind(&call.call_sid)
        .bind(&call.account_sid)
        .bind(&call.stream_sid)
        .bind(&call.instance)
        .bind(ms(call.started_unix_ms))
        .execute(&self.pool);
        self.write(write).await?;
        Ok(())
    }

    /// Records why a call's stream ended, and where to when the agent transferred it. A
    /// call refused before it started (say, by a draining instance) gets a record with only
    /// the end. The stream's own `stream_sid` guards against a late write for an earlier
    /// stream of the same call.
    pub async fn call_ended(
        &self,
        call_sid: &str,
        stream_sid: &str,
        instance: &str,
        ended_unix_ms: u64,
        reason: &str,
        transfer: Option<&crate::ending::Transfer>,
    ) -> Result<(), StoreError> {
        let write = sqlx::query(
            "INSERT INTO calls (call_sid, account_sid, stream_sid, instance, started_unix_ms, \
             ended_unix_ms, end_reason, transfer_to, transfer_caller_id, transfer_timeout_s) \
             VALUES ($1, '', $2, $3, $4, $4, $5, $6, $7, $8) \
             ON CONFLICT (call_sid) DO UPDATE SET ended_unix_ms = excluded.ended_unix_ms, \
             end_reason = excluded.end_reason, transfer_to = excluded.transfer_to, \
             transfer_caller_id = excluded.transfer_caller_id, \
             transfer_timeout_s = excluded.transfer_timeout_s \
             WHERE calls.stream_sid = excluded.stream_sid",
        )
        .bind(call_sid)
        .bind(stream_sid)
        .bind(instance)
        .bind(ms(ended_unix_ms))
        .bind(reason)
        .bind(transfer.map(|t| t.to.as_str()))
        .bind(transfer.and_then(|t| t.caller_id.as_deref()))
        .bind(transfer.map(|t| i64::from(t.timeout_s)))
        .execute(&self.pool);
        self.write(write).await?;
        Ok(())
    }

    /// Records how a transfer went (`DialCallStatus`).
    pub async fn transfer_ended(&self, call_sid: &str, status: &str) -> Result<(), StoreError> {
        let write = sqlx::query("UPDATE calls SET transfer_status = $2 WHERE call_sid = $1")
            .bind(call_sid)
            .bind(status)
            .execute(&self.pool);
        self.write(write).await?;
        Ok(())
    }

    /// The call's record, if its stream ever started (or was refused).
    pub async fn call(&self, call_sid: &str) -> Result<Option<CallRecord>, StoreError> {
        let query = sqlx::query(
            "SELECT call_sid, account_sid, stream_sid, instance, started_unix_ms, \
             ended_unix_ms, end_reason, transfer_to, transfer_caller_id, transfer_timeout_s, \
             transfer_status FROM calls WHERE call_sid = $1",
        )
        .bind(call_sid)
        .fetch_optional(&self.pool);
        let row = self.read(query).await?;
        row.map(|row| {
            Ok(CallRecord {
                call_sid: row.try_get(0)?,
                account_sid: row.try_get(1)?,
                stream_sid: row.try_get(2)?,
                instance: row.try_get(3)?,
                started_unix_ms: unsigned(row.try_get(4)?),
                ended_unix_ms: row.try_get::<Option<i64>, _>(5)?.map(unsigned),
                end_reason: row.try_get(6)?,
                transfer: transfer_from_row(&row)?,
                transfer_status: row.try_get(10)?,
            })
        })
        .transpose()
    }

    // ---- callbacks ----

    /// Stores a call-status callback; `false` when the same callback was stored before.
    pub async fn insert_call_status(&self, event: &CallStatusEvent) -> Result<bool, StoreError> {
        self.write(insert_call_status(&self.pool, event)).await
    }

    /// The call-status callbacks stored for `call_sid`, in sequence order.
    pub async fn call_statuses(&self, call_sid: &str) -> Result<Vec<CallStatusEvent>, StoreError> {
        let query = sqlx::query(
            "SELECT call_status, sequence_number, duration_secs, received_unix_ms \
             FROM call_status_events WHERE call_sid = $1 \
             ORDER BY sequence_number, received_unix_ms",
        )
        .bind(call_sid)
        .fetch_all(&self.pool);
        let rows = self.read(query).await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(1)?;
                Ok(CallStatusEvent {
                    call_sid: call_sid.to_owned(),
                    call_status: row.try_get(0)?,
                    sequence_number: u64::try_from(seq).ok(),
                    duration_secs: row.try_get::<Option<i64>, _>(2)?.map(unsigned),
                    received_unix_ms: unsigned(row.try_get(3)?),
                })
            })
            .collect()
    }

    /// Stores a stream-status callback; `false` when the same callback was stored before.
    pub async fn insert_stream_status(
        &self,
        event: &StreamStatusEvent,
    ) -> Result<bool, StoreError> {
        let write = sqlx::query(
            "INSERT INTO stream_status_events (stream_sid, stream_event, call_sid, stream_error, \
             received_unix_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&event.stream_sid)
        .bind(&event.stream_event)
        .bind(&event.call_sid)
        .bind(event.stream_error.as_deref())
        .bind(ms(event.received_unix_ms))
        .execute(&self.pool);
        let done = self.write(write).await?;
        Ok(done.rows_affected() == 1)
    }

    /// The stream-status events stored for `call_sid` (`StreamEvent` values), oldest first.
    pub async fn stream_statuses(&self, call_sid: &str) -> Result<Vec<String>, StoreError> {
        let query = sqlx::query_scalar(
            "SELECT stream_event FROM stream_status_events WHERE call_sid = $1 \
             ORDER BY received_unix_ms, stream_event",
        )
        .bind(call_sid)
        .fetch_all(&self.pool);
        self.read(query).await
    }
}

/// The transfer columns (7–9) of a `calls` row, re-checked for form: the row was written
/// from a checked transfer, so a failure here means the database was edited by hand.
fn transfer_from_row(
    row: &sqlx::any::AnyRow,
) -> Result<Option<crate::ending::Transfer>, StoreError> {
    let Some(to) = row.try_get::<Option<String>, _>(7)? else {
        return Ok(None);
    };
    let caller_id: Option<String> = row.try_get(8)?;
    let timeout: Option<i64> = row.try_get(9)?;
    crate::ending::check_transfer(
        &to,
        caller_id.as_deref(),
        timeout.and_then(|t| u64::try_from(t).ok()),
        &[],
    )
    .map(Some)
    .map_err(|e| StoreError::Corrupt(format!("stored transfer: {e}")))
}

/// [`Store::insert_call_status`] on any executor (the pool, or the import's transaction).
pub(super) async fn insert_call_status<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    event: &CallStatusEvent,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO call_status_events (call_sid, call_status, sequence_number, \
         duration_secs, received_unix_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&event.call_sid)
    .bind(&event.call_status)
    .bind(event.sequence_number.map_or(-1, ms))
    .bind(event.duration_secs.map(ms))
    .bind(ms(event.received_unix_ms))
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
