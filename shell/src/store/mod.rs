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
//!
//! The types and the store's plumbing are here; its tables' statements are in
//! `stream_tokens.rs`, `calls.rs` (calls and their callbacks) and `recordings.rs` (the job
//! queue), its health in `health.rs`, the one-time import in `import.rs`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _, Row as _};

/// The columns `recordings::job_from_row` reads, in order (a macro, so statements stay literals).
macro_rules! job_columns {
    () => {
        "recording_sid, call_sid, account_sid, recording_url, duration_secs, digits, \
         received_unix_ms, state, claims, file, transcript, error, lease_owner"
    };
}

mod calls;
mod health;
mod import;
mod recordings;
mod stream_tokens;
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
