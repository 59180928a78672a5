//! The egress runtime: one thread of its own that writes the engine's output to the media
//! sockets.
//!
//! **Why.** The main runtime reads every socket: at hundreds of calls it parses tens of
//! thousands of `media` messages a second, in bursts (a caller's network releasing a backlog,
//! a simulator catching up). A writer task woken by an engine thread joins the main runtime's
//! queue behind that work, so a frame the engine released on its deadline could reach the
//! kernel milliseconds later (`handset_outbound_write_lateness`). Here the writers run on a
//! single-threaded runtime that nothing else uses: one wake-up writes what the engine released
//! for every call in that tick, and no read waits in front of it.
//!
//! **Priority.** When the engine threads run under `SCHED_FIFO` at `P`
//! ([`EngineConfig::realtime_priority`](handset_engine::driver::EngineConfig)), this thread
//! runs at `P − 1` (at least 1): above socket reads, below the engine, whose own deadlines
//! come first. Otherwise it runs on the default scheduler like the rest of the shell.
//!
//! **What runs here.** Only the write pump of each stream ([`crate::bridge`]): its socket
//! half is registered with the main runtime's reactor, which keeps delivering writability; a
//! write that does not block (the usual case) is one system call on this thread. What follows
//! a call's end (its store record, the close frame) goes back to the main runtime.

use std::future::Future;

use handset_engine::driver::Scheduling;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The egress thread and its runtime's handle. Dropping it stops the runtime; tasks still on
/// it end (their join handles report cancellation).
#[derive(Debug)]
pub struct Egress {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    scheduling: Scheduling,
}

impl Egress {
    /// Starts the thread, under `SCHED_FIFO` at `priority` when given (a refusal leaves it on
    /// the default scheduler and is reported by [`Egress::scheduling`]).
    pub fn start(priority: Option<u8>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("handset-egress-blocking")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("handset-egress".to_owned())
            .spawn(move || {
                let scheduling = match priority {
                    None => Scheduling::Normal,
                    Some(p) => match handset_engine::driver::realtime(p) {
                        Ok(()) => Scheduling::Realtime(p),
                        Err(reason) => Scheduling::Refused(p, reason),
                    },
                };
                let _ = started_tx.send(scheduling);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })?;
        let scheduling = started
            .recv()
            .map_err(|_| std::io::Error::other("the egress thread ended at start"))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            scheduling,
        })
    }

    /// Runs `task` on the egress thread.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// How the egress thread is scheduled.
    pub fn scheduling(&self) -> &Scheduling {
        &self.scheduling
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_egress_thread_and_their_results_come_back() {
        let egress = Egress::start(None).unwrap();
        assert_eq!(*egress.scheduling(), Scheduling::Normal);
        let name = egress
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("handset-egress"));
    }

    #[tokio::test]
    async fn dropping_it_cancels_what_still_runs() {
        let egress = Egress::start(None).unwrap();
        let task = egress.spawn(std::future::pending::<()>());
        drop(egress);
        assert!(task.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn a_priority_is_applied_or_the_refusal_reported() {
        let egress = Egress::start(Some(2)).unwrap();
        // Asked on a thread of its own, which ends, so no runtime thread keeps the priority.
        let direct = std::thread::Builder::new()
            .spawn(|| handset_engine::driver::realtime(2))
            .unwrap()
            .join()
            .unwrap();
        match (egress.scheduling(), direct) {
            (Scheduling::Realtime(2), Ok(())) => {}
            (Scheduling::Refused(2, reason), Err(direct)) => assert_eq!(*reason, direct),
            (got, direct) => panic!("egress says {got:?}, the OS says {direct:?}"),
        }
    }
}
