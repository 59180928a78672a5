//! Whether the store can commit a write now: what `/healthz`, `/readyz` and `/metrics` report.
//!
//! A database that answers reads may still refuse every write: a full disk (SQLite's
//! `SQLITE_FULL`, PostgreSQL's `53100 disk_full`), a read-only replica after a failover. So the
//! store's health is the outcome of the latest *write*, not of a ping: every statement that
//! writes reports here, a failure marks the store degraded, and only a write that committed
//! something (changed a row) clears it. A read or ping that fails marks it degraded too; one
//! that succeeds proves nothing about writes and reports nothing. A write that changed no row
//! (a retried callback stored before) wrote nothing to disk, so it reports nothing either.
//!
//! Outcomes can arrive out of order (many webhooks at once): each statement takes a ticket when
//! it starts, and the outcome of the latest-started statement wins (one `fetch_max` on a
//! single atomic: the ticket in the high bits, the outcome in the low ones). So a write that
//! started before the disk filled and finished after a failure cannot hide it.
//!
//! [`keep_probing`] writes a row every few seconds (every second while degraded), so the state
//! is current without traffic: a full disk is noticed even before a webhook fails, and a store
//! that recovered is noticed within about a second, without waiting for a webhook.
//!
//! A nearly full disk can let a small write through while larger ones fail (the probe's
//! one-row update has committed between refused webhooks), so on its own the latest outcome
//! can turn healthy and degraded by turns while the disk stays full. For the SQLite
//! store the free space under the database file is therefore measured too (every second, and
//! on each `/healthz` and `/readyz`): below its floor (`STORE_MIN_FREE_MB`) the store counts as
//! [`Trouble::DiskFull`] whatever the latest write did, so readiness turns 503 before writes
//! fail and stays so until there is room again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::StoreError;

/// Why the store is degraded (the `store_error` of `/healthz`, the `kind` of
/// `handset_store_errors_total`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Trouble {
    /// The disk (SQLite's file system, PostgreSQL's data or WAL volume) is full.
    DiskFull,
    /// The database did not answer in time (or no pooled connection was free).
    Timeout,
    /// The database cannot be reached (connection refused or lost, pool closed).
    Unreachable,
    /// Any other failed statement (read-only database, I/O error, …).
    Failed,
}

impl Trouble {
    /// Every kind, in label order.
    pub const ALL: [Self; 4] = [
        Self::DiskFull,
        Self::Timeout,
        Self::Unreachable,
        Self::Failed,
    ];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Failed => "error",
        }
    }

    /// What kind of trouble `error` is.
    pub fn of(error: &StoreError) -> Self {
        let StoreError::Sql(error) = error else {
            return Self::Failed;
        };
        match error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // SQLITE_FULL; PostgreSQL's disk_full.
                Some("13" | "53100") => Self::DiskFull,
                _ => Self::Failed,
            },
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => Self::DiskFull,
            sqlx::Error::PoolTimedOut => Self::Timeout,
            sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                Self::Unreachable
            }
            _ => Self::Failed,
        }
    }

    /// The outcome bits (never 0: 0 is healthy).
    fn code(self) -> u64 {
        match self {
            Self::DiskFull => 1,
            Self::Timeout => 2,
            Self::Unreachable => 3,
            Self::Failed => 4,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// Bits of the packed state that hold the outcome; the ticket is above them.
const OUTCOME_BITS: u32 = 3;
const OUTCOME_MASK: u64 = (1 << OUTCOME_BITS) - 1;

/// The store's health: the outcome of the latest-started statement that reported, and counts
/// of failures by kind. Lock-free.
#[derive(Debug)]
pub struct Health {
    /// The last ticket handed out.
    tickets: AtomicU64,
    /// `ticket << OUTCOME_BITS | outcome` of the latest-started report (0: nothing yet, healthy).
    latest: AtomicU64,
    /// Failed statements, by [`Trouble::ALL`].
    errors: [AtomicU64; Trouble::ALL.len()],
    /// Whether the free space under the database was below its floor when last measured.
    low_space: AtomicBool,
    /// The free space last measured, in bytes ([`UNMEASURED`]: not measured).
    free_bytes: AtomicU64,
}

/// [`Health::free_bytes`] before any measure, or when the store's disk is not ours to measure.
const UNMEASURED: u64 = u64::MAX;

/// The floor under the free space of the file system holding the SQLite database.
#[derive(Debug)]
pub(super) struct DiskFloor {
    /// The database file's directory.
    dir: PathBuf,
    /// Below this many free bytes the store is degraded.
    min_free: u64,
}

impl DiskFloor {
    /// A floor of `min_free` bytes under `dir`; none when `min_free` is 0.
    pub(super) fn new(dir: PathBuf, min_free: u64) -> Option<Self> {
        (min_free > 0).then_some(Self { dir, min_free })
    }

    /// Measures the free space (a `statvfs`, off the runtime's threads since a network file
    /// system may be slow to answer) and records it in `health`.
    pub(super) async fn measure(&self, health: &Health) {
        let dir = self.dir.clone();
        let free = tokio::task::spawn_blocking(move || free_bytes(&dir))
            .await
            .ok()
            .flatten();
        health.space(free, self.min_free);
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`; `None` when it
/// cannot be told.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let stat = rustix::fs::statvfs(dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// A statement's place in the order statements started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket(u64);

impl Default for Health {
    fn default() -> Self {
        Self {
            tickets: AtomicU64::new(0),
            latest: AtomicU64::new(0),
            errors: Default::default(),
            low_space: AtomicBool::new(false),
            free_bytes: AtomicU64::new(UNMEASURED),
        }
    }
}

impl Health {
    /// Takes a ticket: call when the statement starts.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// A statement that wrote and committed: the store takes writes.
    pub(super) fn wrote(&self, ticket: Ticket) {
        if self.report(ticket, 0) {
            tracing::info!("store takes writes again");
        }
    }

    /// A statement that failed.
    pub(super) fn failed(&self, ticket: Ticket, error: &StoreError) {
        let trouble = Trouble::of(error);
        self.errors[trouble.code() as usize - 1].fetch_add(1, Ordering::Relaxed);
        if self.report(ticket, trouble.code()) {
            tracing::error!(error = %error, kind = trouble.label(), "store degraded: writes fail");
        }
    }

    /// A statement that did not answer within its bound.
    pub(super) fn timed_out(&self, ticket: Ticket) {
        self.errors[Trouble::Timeout.code() as usize - 1].fetch_add(1, Ordering::Relaxed);
        if self.report(ticket, Trouble::Timeout.code()) {
            tracing::error!("store degraded: no answer in time");
        }
    }

    /// Records `outcome` unless a later-started statement has reported; whether this turned
    /// the store from healthy to degraded or back.
    fn report(&self, ticket: Ticket, outcome: u64) -> bool {
        let new = (ticket.0 << OUTCOME_BITS) | outcome;
        let before = self.latest.fetch_max(new, Ordering::Relaxed);
        new > before && ((before & OUTCOME_MASK) == 0) != (outcome == 0)
    }

    /// `free` bytes measured under the database (`None`: could not be told) against a floor
    /// of `min_free`.
    fn space(&self, free: Option<u64>, min_free: u64) {
        self.free_bytes
            .store(free.unwrap_or(UNMEASURED), Ordering::Relaxed);
        let low = free.is_some_and(|free| free < min_free);
        if self.low_space.swap(low, Ordering::Relaxed) != low {
            let free = free.unwrap_or(0);
            if low {
                tracing::error!(
                    free_bytes = free,
                    min_free_bytes = min_free,
                    "store degraded: free space under the database below STORE_MIN_FREE_MB"
                );
            } else {
                tracing::info!(free_bytes = free, "store has free space again");
            }
        }
    }

    /// `Ok` while the latest report says the store takes writes and the free space under it
    /// is above its floor; else why not.
    pub fn status(&self) -> Result<(), Trouble> {
        match Trouble::from_code(self.latest.load(Ordering::Relaxed) & OUTCOME_MASK) {
            Some(trouble) => Err(trouble),
            None if self.low_space.load(Ordering::Relaxed) => Err(Trouble::DiskFull),
            None => Ok(()),
        }
    }

    /// The free space under the SQLite database when last measured; `None` for PostgreSQL,
    /// with no floor set, or when it could not be told.
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free_bytes.load(Ordering::Relaxed)).filter(|&b| b != UNMEASURED)
    }

    /// Failed statements of `kind` since start.
    pub fn errors(&self, kind: Trouble) -> u64 {
        self.errors[kind.code() as usize - 1].load(Ordering::Relaxed)
    }
}

/// How often [`keep_probing`] writes while the store is healthy.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How often it looks at the store's health, and writes while the store is degraded (how
/// soon a recovery is noticed).
const PROBE_EVERY_DEGRADED: Duration = Duration::from_secs(1);
/// Longest a probe waits for its write to commit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes `instance`'s probe row ([`Store::probe`](super::Store::probe)) every 5 s, and every
/// second while the store is degraded (whoever found it so: a webhook's failed write turns the
/// probe to every second at once), until the process ends; and measures the free space under
/// the SQLite database every second. What `/healthz` and `/readyz` say is then never older
/// than that.
pub async fn keep_probing(store: super::Store, instance: String) {
    let mut since_probe = Duration::ZERO;
    loop {
        tokio::time::sleep(PROBE_EVERY_DEGRADED).await;
        since_probe += PROBE_EVERY_DEGRADED;
        store.measure_space().await;
        if store.health().status().is_ok() && since_probe < PROBE_EVERY {
            continue;
        }
        since_probe = Duration::ZERO;
        store
            .probe(&instance, crate::clock::unix_ms(), PROBE_TIMEOUT)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StoreError {
        StoreError::Sql(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )))
    }

    #[test]
    fn the_latest_started_statement_decides() {
        let health = Health::default();
        assert_eq!(health.status(), Ok(()));
        let early = health.ticket();
        let late = health.ticket();
        health.failed(late, &full());
        assert_eq!(health.status(), Err(Trouble::DiskFull));
        // A write that started before the failure and finished after it hides nothing.
        health.wrote(early);
        assert_eq!(health.status(), Err(Trouble::DiskFull));
        let next = health.ticket();
        health.wrote(next);
        assert_eq!(health.status(), Ok(()));
        let hung = health.ticket();
        health.timed_out(hung);
        assert_eq!(health.status(), Err(Trouble::Timeout));
        assert_eq!(health.errors(Trouble::DiskFull), 1);
        assert_eq!(health.errors(Trouble::Timeout), 1);
        assert_eq!(health.errors(Trouble::Unreachable), 0);
    }

    #[test]
    fn errors_are_sorted_by_kind() {
        assert_eq!(Trouble::of(&full()), Trouble::DiskFull);
        assert_eq!(
            Trouble::of(&StoreError::Sql(sqlx::Error::PoolTimedOut)),
            Trouble::Timeout
        );
        assert_eq!(
            Trouble::of(&StoreError::Sql(sqlx::Error::PoolClosed)),
            Trouble::Unreachable
        );
        assert_eq!(
            Trouble::of(&StoreError::Corrupt("x".to_owned())),
            Trouble::Failed
        );
    }
}
