//! How many media calls are live: counted by the media stream for as long as its call runs,
//! read by `MAX_CALLS` admission, `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of live media calls, shown by `/healthz`. The WebSocket layer holds one
/// [`ActiveCallGuard`] per bridged call.
#[derive(Clone, Debug, Default)]
pub struct ActiveCalls(Arc<AtomicUsize>);

impl ActiveCalls {
    /// Counts one more call until the guard is dropped.
    pub fn enter(&self) -> ActiveCallGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveCallGuard(self.0.clone())
    }

    /// Calls currently counted.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decrements [`ActiveCalls`] when dropped.
#[derive(Debug)]
pub struct ActiveCallGuard(Arc<AtomicUsize>);

impl Drop for ActiveCallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
