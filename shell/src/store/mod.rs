//! The durable state shared by every instance: a SQL database through sqlx.
//!
//! `DATABASE_URL` picks the database: unset, an embedded SQLite file at
//! `$DATA_DIR/handset.db` (one instance); `postgres://…`, a PostgreSQL server shared by a fleet,
//! so that the voice webhook, the Media Stream, the `<Connect action>` and the status and
//! recording callbacks of one call may each land on a different instance.
//!
//! What lives here: single-use stream tokens ([`Store::issue_token`], [`Store::redeem_token`]:
//! redeemed exactly once fleet-wide by one conditional `UPDATE`), call records with their end
//! reason, call-status and stream-status callbacks (a retried callback is stored once), and
//! recording callbacks as a job queue with leases ([`Store::claim_recording`]; `FOR UPDATE SKIP
//! LOCKED` on PostgreSQL) whose rows also keep the transcript.
//!
//! One schema serves both databases (`shell/migrations/`, embedded, run at start; concurrent
//! starts are serialised by sqlx's migration lock on PostgreSQL). Queries go through sqlx's
//! `Any` driver; the one statement that differs by dialect is the job claim. SQLite runs in WAL
//! mode with `synchronous=FULL`, so a committed write, and with it every 2xx answer that
//! depends on it, survives a power cut. A write either commits whole or fails with a
//! [`StoreError`] (the handler answers 5xx); nothing is left half-written, a full disk
//! included.
//!
//! Every statement reports its outcome to the store's [`Health`]: whether writes commit now
//! (a full disk still answers reads), what `/healthz`, `/readyz` and `/metrics` report.
//! [`keep_probing`] keeps it current with a small write every few seconds.
//!
//! The store is never on the media path: it is written on webhooks, when a stream starts and
//! when it ends, and by the recording worker; no frame waits on it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _, Row as _};

/// The columns [`job_from_row`] reads, in order (a macro, so statements stay literals).
macro_rules! job_columns {
    () => {
        "recording_sid, call_sid, account_sid, recording_url, duration_secs, digits, \
         received_unix_ms, state, claims, file, transcript, error, lease_owner"
    };
}

mod health;
mod import;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use health::DiskFloor;
pub use health::{Health, Trouble, keep_probing};
pub use import::{ImportReport, import_jsonl};

/// The embedded migrations (`shell/migrations/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A `<Record action>` or recording-status callback.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct RecordingEvent {
    /// When we received it, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// `CallSid`.
    pub call_sid: String,
    /// `AccountSid`.
    pub account_sid: String,
    /// `RecordingSid`: the job's key.
    pub recording_sid: String,
    /// `RecordingUrl`: where the audio can be fetched.
    pub recording_url: String,
    /// `RecordingDuration` in seconds, when given and numeric.
    pub duration_secs: Option<u64>,
    /// `Digits`: the key that ended the recording, if any.
    pub digits: Option<String>,
}

/// A call-status callback.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct CallStatusEvent {
    /// When we received it, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// `CallSid`.
    pub call_sid: String,
    /// `CallStatus` (`queued`, `ringing`, `in-progress`, `completed`, …).
    pub call_status: String,
    /// `SequenceNumber`: orders callbacks that arrive out of order.
    pub sequence_number: Option<u64>,
    /// `CallDuration` in seconds (terminal callbacks).
    pub duration_secs: Option<u64>,
}

/// A Media Streams status callback.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct StreamStatusEvent {
    /// When we received it, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// `StreamSid`.
    pub stream_sid: String,
    /// `StreamEvent` (`stream-started`, `stream-stopped`, `stream-error`).
    pub stream_event: String,
    /// `CallSid`.
    pub call_sid: String,
    /// `StreamError`, for `stream-error`.
    pub stream_error: Option<String>,
}

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

/// A call whose media stream started on some instance.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct CallRecord {
    /// `CallSid`.
    pub call_sid: String,
    /// `AccountSid`.
    pub account_sid: String,
    /// `StreamSid` of the media stream.
    pub stream_sid: String,
    /// `INSTANCE_ID` of the instance that ran the stream.
    pub instance: String,
    /// When the stream started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When it ended, if it has.
    pub ended_unix_ms: Option<u64>,
    /// Why it ended (a close-reason label such as `agent_hangup`, `draining`).
    pub end_reason: Option<String>,
    /// Where the agent transferred the call, when it ended with `transfer`.
    pub transfer: Option<crate::ending::Transfer>,
    /// How the transfer went (`DialCallStatus`: `completed`, `busy`, `no-answer`, …).
    pub transfer_status: Option<String>,
}

impl CallRecord {
    /// How the stream ended, for [`crate::ending::decide`].
    pub fn stream_end(&self) -> crate::ending::StreamEnd<'_> {
        crate::ending::StreamEnd {
            reason: self.end_reason.as_deref(),
            transfer: self.transfer.as_ref(),
        }
    }
}

/// Where a recording job is.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum JobState {
    /// Downloaded; waits for transcription (when an agent can transcribe).
    Fetched,
    /// Given up on.
    Failed,
    /// Stored, not yet downloaded.
    Pending,
    /// Transcribed; the transcript is stored.
    Transcribed,
}

impl JobState {
    /// The `state` column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetched => "fetched",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Transcribed => "transcribed",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "fetched" => Self::Fetched,
            "failed" => Self::Failed,
            "pending" => Self::Pending,
            "transcribed" => Self::Transcribed,
            other => return Err(StoreError::Corrupt(format!("job state {other:?}"))),
        })
    }
}

/// A recording job as claimed or read back.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RecordingJob {
    /// The callback as stored.
    pub event: RecordingEvent,
    /// Where the job is.
    pub state: JobState,
    /// How many times the job has been claimed (this claim included).
    pub claims: u32,
    /// The saved WAV relative to `DATA_DIR` of the instance that fetched it.
    pub file: Option<String>,
    /// The transcript, once transcribed.
    pub transcript: Option<String>,
    /// Why it failed, once failed.
    pub error: Option<String>,
    /// Who holds the lease, if anyone.
    pub lease_owner: Option<String>,
}

/// What a worker reports when it puts a claimed job down.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum JobUpdate {
    /// Downloaded to `file`; the lease is kept (transcription follows).
    Fetched {
        /// The WAV relative to `DATA_DIR`.
        file: String,
    },
    /// Given up on for good.
    Failed {
        /// Why.
        error: String,
    },
    /// Not finished; try again at `retry_at_unix_ms` (the lease is released).
    Released {
        /// Earliest next claim, milliseconds since the Unix epoch.
        retry_at_unix_ms: u64,
        /// What went wrong this time.
        error: String,
    },
    /// Done: the transcript (the lease is released).
    Transcribed {
        /// The final transcript.
        transcript: String,
    },
    /// Done without a transcript: no agent transcribes recordings (the lease is released).
    Kept,
}

/// Row counts, for the start-up log.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Counts {
    /// Recording jobs not yet done (pending, or fetched and waiting for transcription).
    pub recordings_pending: u64,
    /// Recording jobs in every state.
    pub recordings: u64,
    /// Call-status callbacks stored.
    pub call_statuses: u64,
    /// Calls recorded.
    pub calls: u64,
}

/// The database family behind [`Store`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Dialect {
    /// PostgreSQL: the fleet's shared store.
    Postgres,
    /// SQLite: the embedded single-instance store.
    Sqlite,
}

/// Why the store could not be opened or a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `DATABASE_URL` is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("DATABASE_URL must start with sqlite:, postgres: or postgresql: (got {scheme:?})")]
    Scheme {
        /// What it started with.
        scheme: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot connect to the {dialect:?} database: {source}")]
    Connect {
        /// Which database.
        dialect: Dialect,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A statement failed (connection lost, disk full, constraint, timeout).
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored value is not what this version writes.
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    /// A file to import could not be read.
    #[error("cannot read {path}: {source}")]
    Import {
        /// The file.
        path: String,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Most pooled connections.
    pub max_connections: u32,
    /// Longest wait for a pooled connection (and the connect at start).
    pub acquire_timeout: Duration,
    /// SQLite only: below this many free bytes on the database's file system the store counts
    /// as full ([`Trouble::DiskFull`]) whatever the latest write did; 0 measures nothing.
    pub min_free_bytes: u64,
}

impl StoreOptions {
    /// The embedded default: `sqlite://<dir>/handset.db`, created if missing.
    pub fn sqlite_in(dir: &Path) -> Self {
        Self::new(format!(
            "sqlite://{}?mode=rwc",
            dir.join("handset.db").display()
        ))
    }

    /// Options for `url` with the default pool size (8) and acquire timeout (5 s), and no
    /// floor under the free space.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            min_free_bytes: 0,
        }
    }
}

/// The shared store. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Whether writes commit, from every statement's outcome.
    health: Arc<Health>,
    /// SQLite with `min_free_bytes` set: the floor under its file system's free space.
    floor: Option<Arc<DiskFloor>>,
}

impl Store {
    /// Connects, applies SQLite's durability settings, and runs the embedded migrations.
    pub async fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let scheme = options.url.split(':').next().unwrap_or_default();
        let dialect = match scheme {
            "sqlite" => Dialect::Sqlite,
            "postgres" | "postgresql" => Dialect::Postgres,
            other => {
                return Err(StoreError::Scheme {
                    scheme: other.chars().take(16).collect(),
                });
            }
        };
        let dir = match dialect {
            Dialect::Sqlite => sqlite_dir(&options.url),
            Dialect::Postgres => None,
        };
        if let Some(dir) = &dir {
            // A failure shows up as the connect error that follows, with the path in it.
            let _ = std::fs::create_dir_all(dir);
        }
        let connect_options: AnyConnectOptions = options
            .url
            .parse()
            .map_err(|source| StoreError::Connect { dialect, source })?;
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL: readers never block the writer. FULL: a commit is on disk
                        // (WAL fsynced) before it returns, so 2xx means durable.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_options)
            .await
            .map_err(|source| StoreError::Connect { dialect, source })?;
        MIGRATOR.run(&pool).await?;
        let store = Self {
            pool,
            dialect,
            health: Arc::default(),
            floor: dir
                .and_then(|dir| DiskFloor::new(dir, options.min_free_bytes))
                .map(Arc::new),
        };
        store.measure_space().await;
        Ok(store)
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// One round trip: whether the database answers (reads; says nothing about writes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(sqlx::query("SELECT 1").execute(&self.pool))
            .await?;
        Ok(())
    }

    /// Whether writes commit, as of the latest statement (see [`Health`]).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Measures the free space under the SQLite database against its floor (see [`Health`]);
    /// nothing without one.
    pub async fn measure_space(&self) {
        if let Some(floor) = &self.floor {
            floor.measure(&self.health).await;
        }
    }

    /// [`Self::ping`] bounded by `limit` (no answer in time is [`Trouble::Timeout`]) and a
    /// fresh measure of the free space, then the store's health: `Err` when the ping failed,
    /// the latest write did, or the free space is below its floor.
    pub async fn check(&self, limit: Duration) -> Result<(), Trouble> {
        self.measure_space().await;
        let ticket = self.health.ticket();
        if tokio::time::timeout(limit, self.ping()).await.is_err() {
            self.health.timed_out(ticket);
        }
        self.health.status()
    }

    /// Writes this instance's row of `store_probe` (a committed write, as a webhook's would
    /// be), bounded by `limit`; the outcome is recorded in [`Self::health`].
    pub async fn probe(&self, instance: &str, now_unix_ms: u64, limit: Duration) {
        let ticket = self.health.ticket();
        let write = self.write(
            sqlx::query(
                "INSERT INTO store_probe (instance, probed_unix_ms) VALUES ($1, $2) \
                 ON CONFLICT (instance) DO UPDATE SET probed_unix_ms = excluded.probed_unix_ms",
            )
            .bind(instance)
            .bind(ms(now_unix_ms))
            .execute(&self.pool),
        );
        if tokio::time::timeout(limit, write).await.is_err() {
            self.health.timed_out(ticket);
        }
    }

    /// Runs `statement`, which writes, and reports its outcome to [`Self::health`]: a failure
    /// degrades the store; a statement that changed a row committed to disk and clears it.
    async fn write<T: Wrote, E: Into<StoreError>>(
        &self,
        statement: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        let ticket = self.health.ticket();
        match statement.await {
            Ok(done) => {
                if done.wrote() {
                    self.health.wrote(ticket);
                }
                Ok(done)
            }
            Err(e) => {
                let e = e.into();
                self.health.failed(ticket, &e);
                Err(e)
            }
        }
    }

    /// Runs `statement`, which only reads, and reports a failure to [`Self::health`] (a read
    /// that succeeds says nothing about writes).
    async fn read<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let ticket = self.health.ticket();
        statement.await.map_err(|e| {
            let e = StoreError::from(e);
            self.health.failed(ticket, &e);
            e
        })
    }

    /// Closes the pool (waits for connections in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- stream tokens ----

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

    // ---- calls ----

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

    // ---- recordings: the job queue ----

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

    /// Row counts for the start-up log and `/healthz`.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let query = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM recordings WHERE state IN ('pending', 'fetched')), \
             (SELECT COUNT(*) FROM recordings), (SELECT COUNT(*) FROM call_status_events), \
             (SELECT COUNT(*) FROM calls)",
        )
        .fetch_one(&self.pool);
        let row = self.read(query).await?;
        Ok(Counts {
            recordings_pending: count(row.try_get(0)?),
            recordings: count(row.try_get(1)?),
            call_statuses: count(row.try_get(2)?),
            calls: count(row.try_get(3)?),
        })
    }

    /// The pool, for the JSON-lines import (one transaction).
    fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// What a statement that writes returns, asked whether it changed a row: only then did it
/// commit anything to disk (and prove that writes work).
trait Wrote {
    fn wrote(&self) -> bool;
}

impl Wrote for sqlx::any::AnyQueryResult {
    fn wrote(&self) -> bool {
        self.rows_affected() > 0
    }
}

impl Wrote for Option<sqlx::any::AnyRow> {
    fn wrote(&self) -> bool {
        self.is_some()
    }
}

/// `true`: a row was stored.
impl Wrote for bool {
    fn wrote(&self) -> bool {
        *self
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
async fn insert_call_status<'e>(
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

/// [`Store::insert_recording`] on any executor (the pool, or the import's transaction).
async fn insert_recording<'e>(
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

/// The directory of a `sqlite://` file URL (SQLite creates the file, not its folder); `None`
/// for an in-memory database.
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let dir = Path::new(path).parent()?;
    Some(match dir.as_os_str().is_empty() {
        true => PathBuf::from("."),
        false => dir.to_path_buf(),
    })
}

/// A `u64` time or count as the BIGINT column holds it (saturating: no real value is near).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A BIGINT column back as `u64` (negative values, never written, read as 0).
fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A `COUNT(*)`.
fn count(value: i64) -> u64 {
    unsigned(value)
}
