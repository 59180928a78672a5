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

use std::sync::atomic::{AtomicU64, Ordering};
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
#[derive(Debug, Default)]
pub struct Health {
    /// The last ticket handed out.
    tickets: AtomicU64,
    /// `ticket << OUTCOME_BITS | outcome` of the latest-started report (0: nothing yet, healthy).
    latest: AtomicU64,
    /// Failed statements, by [`Trouble::ALL`].
    errors: [AtomicU64; Trouble::ALL.len()],
}

/// A statement's place in the order statements started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket(u64);

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

    /// `Ok` while the latest report says the store takes writes; else why not.
    pub fn status(&self) -> Result<(), Trouble> {
        match Trouble::from_code(self.latest.load(Ordering::Relaxed) & OUTCOME_MASK) {
            None => Ok(()),
            Some(trouble) => Err(trouble),
        }
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
/// probe to every second at once), until the process ends. What `/healthz` and `/readyz` say is
/// then never older than that.
pub async fn keep_probing(store: super::Store, instance: String) {
    let mut since_probe = Duration::ZERO;
    loop {
        tokio::time::sleep(PROBE_EVERY_DEGRADED).await;
        since_probe += PROBE_EVERY_DEGRADED;
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
