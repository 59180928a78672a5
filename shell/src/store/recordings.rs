//! The recordings' job queue: a recording callback stored as a pending job, claimed under a
//! lease (on PostgreSQL `FOR UPDATE SKIP LOCKED`), renewed, and moved through its states.

use super::*;

impl Store {
    /// Stores a recording callback as a pending job; `false` when this `RecordingSid` was
    /// stored before (a retried callback: one job).
    pub async fn insert_recording(
        &self,
        event: &RecordingEvent,
        now_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        self.write(insert_recording(&self.pool, event, now_unix_ms))
            .await
    }

    /// Claims the oldest job that is due: pending, or fetched when `transcribes` (this
    /// instance has an agent to transcribe with), and not leased (or its lease expired).
    /// The claim holds until `lease_until_unix_ms` unless renewed. Concurrent claimers get
    /// different jobs (PostgreSQL skips rows another claim has locked; SQLite runs one
    /// writer at a time).
    pub async fn claim_recording(
        &self,
        owner: &str,
        now_unix_ms: u64,
        lease_until_unix_ms: u64,
        transcribes: bool,
    ) -> Result<Option<RecordingJob>, StoreError> {
        // The same statement but for PostgreSQL's row lock, which lets concurrent claimers
        // skip a row another has locked instead of queueing behind it.
        macro_rules! claim {
            ($lock:literal) => {
                concat!(
                    "UPDATE recordings SET lease_owner = $1, lease_until_unix_ms = $2, \
                     claims = claims + 1, updated_unix_ms = $3 \
                     WHERE recording_sid = (SELECT recording_sid FROM recordings \
                     WHERE (state = 'pending' OR (state = 'fetched' AND $4 = 1)) \
                     AND (lease_until_unix_ms IS NULL OR lease_until_unix_ms <= $3) \
                     ORDER BY received_unix_ms, recording_sid LIMIT 1",
                    $lock,
                    ") RETURNING ",
                    job_columns!()
                )
            };
        }
        let sql = match self.dialect {
            Dialect::Postgres => claim!(" FOR UPDATE SKIP LOCKED"),
            Dialect::Sqlite => claim!(""),
        };
        let claim = sqlx::query(sql)
            .bind(owner)
            .bind(ms(lease_until_unix_ms))
            .bind(ms(now_unix_ms))
            .bind(i64::from(transcribes))
            .fetch_optional(&self.pool);
        let row = self.write(claim).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Extends `owner`'s lease on a job; `false` when the lease is no longer `owner`'s.
    pub async fn renew_lease(
        &self,
        recording_sid: &str,
        owner: &str,
        lease_until_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        let renew = sqlx::query(
            "UPDATE recordings SET lease_until_unix_ms = $3 \
             WHERE recording_sid = $1 AND lease_owner = $2",
        )
        .bind(recording_sid)
        .bind(owner)
        .bind(ms(lease_until_unix_ms))
        .execute(&self.pool);
        let done = self.write(renew).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what `owner` did with a claimed job. `false` (nothing written) when the lease
    /// is no longer `owner`'s: another instance took the job over after the lease expired.
    pub async fn update_recording(
        &self,
        recording_sid: &str,
        owner: &str,
        update: &JobUpdate,
        now_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        // (state, keep the lease?, retry at, file, transcript, error)
        let (state, keep, retry_at, file, transcript, error) = match update {
            JobUpdate::Fetched { file } => (JobState::Fetched, true, None, Some(file), None, None),
            JobUpdate::Failed { error } => (JobState::Failed, false, None, None, None, Some(error)),
            JobUpdate::Released {
                retry_at_unix_ms,
                error,
            } => (
                JobState::Pending,
                false,
                Some(ms(*retry_at_unix_ms)),
                None,
                None,
                Some(error),
            ),
            JobUpdate::Transcribed { transcript } => (
                JobState::Transcribed,
                false,
                None,
                None,
                Some(transcript),
                None,
            ),
            JobUpdate::Kept => (JobState::Fetched, false, None, None, None, None),
        };
        // A released job goes back to where it was: pending, or fetched if it has a file.
        let state = match update {
            JobUpdate::Released { .. } | JobUpdate::Kept => "back",
            _ => state.as_str(),
        };
        let sql = "UPDATE recordings SET state = CASE WHEN $3 = 'back' THEN (CASE WHEN file IS NULL THEN 'pending' ELSE 'fetched' END) ELSE $3 END, lease_owner = CASE WHEN $4 = 1 THEN lease_owner ELSE NULL END, lease_until_unix_ms = CASE WHEN $4 = 1 THEN lease_until_unix_ms ELSE $5 END, file = COALESCE($6, file), transcript = COALESCE($7, transcript), error = $8, updated_unix_ms = $9 WHERE recording_sid = $1 AND lease_owner = $2";
        let update = sqlx::query(sql)
            .bind(recording_sid)
            .bind(owner)
            .bind(state)
            .bind(i64::from(keep))
            .bind(retry_at)
            .bind(file.map(String::as_str))
            .bind(transcript.map(String::as_str))
            .bind(error.map(String::as_str))
            .bind(ms(now_unix_ms))
            .execute(&self.pool);
        let done = self.write(update).await?;
        Ok(done.rows_affected() == 1)
    }

    /// One recording job as stored.
    pub async fn recording(&self, recording_sid: &str) -> Result<Option<RecordingJob>, StoreError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM recordings WHERE recording_sid = $1"
        );
        let row = self
            .read(
                sqlx::query(sql)
                    .bind(recording_sid)
                    .fetch_optional(&self.pool),
            )
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }
}

/// [`Store::insert_recording`] on any executor (the pool, or the import's transaction).
pub(super) async fn insert_recording<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    event: &RecordingEvent,
    now_unix_ms: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO recordings (recording_sid, call_sid, account_sid, recording_url, \
         duration_secs, digits, received_unix_ms, state, claims, updated_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8) \
         ON CONFLICT (recording_sid) DO NOTHING",
    )
    .bind(&event.recording_sid)
    .bind(&event.call_sid)
    .bind(&event.account_sid)
    .bind(&event.recording_url)
    .bind(event.duration_secs.map(ms))
    .bind(event.digits.as_deref())
    .bind(ms(event.received_unix_ms))
    .bind(ms(now_unix_ms))
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn job_from_row(row: &sqlx::any::AnyRow) -> Result<RecordingJob, StoreError> {
    Ok(RecordingJob {
        event: RecordingEvent {
            recording_sid: row.try_get(0)?,
            call_sid: row.try_get(1)?,
            account_sid: row.try_get(2)?,
            recording_url: row.try_get(3)?,
            duration_secs: row.try_get::<Option<i64>, _>(4)?.map(unsigned),
            digits: row.try_get(5)?,
            received_unix_ms: unsigned(row.try_get(6)?),
        },
        state: JobState::parse(&row.try_get::<String, _>(7)?)?,
        claims: u32::try_from(row.try_get::<i64, _>(8)?).unwrap_or(u32::MAX),
        file: row.try_get(9)?,
        transcript: row.try_get(10)?,
        error: row.try_get(11)?,
        lease_owner: row.try_get(12)?,
    })
}
