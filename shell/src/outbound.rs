//! The queue from an engine worker to one call's socket writer: a preallocated lock-free
//! single-producer single-consumer ring (`ringbuf`) with a waker, in place of a tokio `mpsc`.
//!
//! Why: a tokio bounded channel allocates its slots in blocks of 32 as messages flow and keeps
//! two blocks per call in steady state (2 × 32 × 168-byte [`Outbound`] = 10.8 KB), however
//! small its bound. This ring is allocated once at its capacity ([`OUTBOUND_QUEUE`] slots) and
//! never again. The engine side never blocks: [`OutboundTx::try_send`] refuses with
//! [`SinkError::Full`] when the writer is that far behind (a peer that stopped reading; the
//! writer closes it after `WS_WRITE_TIMEOUT`) and with [`SinkError::Closed`] once the writer
//! is gone. The writer side awaits [`OutboundRx::recv`], which ends with `None` once the engine
//! dropped its end and everything queued was taken.
//!
//! Assumptions: one producer (the call's engine worker) and one consumer (the call's writer
//! task), as the ring's split halves enforce.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use handset_engine::driver::{Outbound, OutboundSink, SinkError};
use ringbuf::HeapRb;
use ringbuf::traits::{Consumer, Producer, Split};

/// Messages queued per call between the engine and the socket writer: 32 × 168 bytes = 5.4 KB,
/// allocated with the call. The engine hands over what one service produces (at most a
/// 5-frame burst, its marks and a few events) and the writer takes everything queued at each
/// wake-up, so 32 is about 0.5 s of audio of slack for a writer that falls behind.
pub const OUTBOUND_QUEUE: usize = 32;

/// What both ends share besides the ring.
#[derive(Debug, Default)]
struct Shared {
    /// The writer's waker, woken after every message and when the engine's end is dropped.
    waker: AtomicWaker,
    /// The engine dropped its end.
    sender_gone: AtomicBool,
    /// The writer dropped its end.
    receiver_gone: AtomicBool,
}

/// A new queue of `capacity` messages (at least 1).
pub fn channel(capacity: usize) -> (OutboundTx, OutboundRx) {
    let (producer, consumer) = HeapRb::<Outbound>::new(capacity.max(1)).split();
    let shared = Arc::new(Shared::default());
    (
        OutboundTx {
            producer,
            shared: Arc::clone(&shared),
        },
        OutboundRx { consumer, shared },
    )
}

/// The engine's end: an [`OutboundSink`].
pub struct OutboundTx {
    producer: ringbuf::HeapProd<Outbound>,
    shared: Arc<Shared>,
}

impl OutboundSink for OutboundTx {
    fn try_send(&mut self, msg: Outbound) -> Result<(), SinkError> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(SinkError::Closed);
        }
        self.producer.try_push(msg).map_err(|_| SinkError::Full)?;
        self.shared.waker.wake();
        Ok(())
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        self.shared.sender_gone.store(true, Ordering::Release);
        self.shared.waker.wake();
    }
}

/// The socket writer's end.
pub struct OutboundRx {
    consumer: ringbuf::HeapCons<Outbound>,
    shared: Arc<Shared>,
}

impl OutboundRx {
    /// The oldest queued message, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.consumer.try_pop()
    }

    /// The oldest queued message, waiting for one; `None` once the engine's end is gone and
    /// the queue is empty. Cancel-safe: a message is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(msg) = self.consumer.try_pop() {
            return Poll::Ready(Some(msg));
        }
        self.shared.waker.register(cx.waker());
        // Again after registering: a message pushed in between would otherwise wait for the next.
        if let Some(msg) = self.consumer.try_pop() {
            return Poll::Ready(Some(msg));
        }
        if self.shared.sender_gone.load(Ordering::Acquire) {
            // Everything pushed before the drop is visible now.
            return Poll::Ready(self.consumer.try_pop());
        }
        Poll::Pending
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use handset_engine::MarkId;

    use super::*;

    fn mark(n: u64) -> Outbound {
        Outbound::Mark(MarkId(n))
    }

    fn mark_id(msg: Option<Outbound>) -> Option<u64> {
        match msg {
            Some(Outbound::Mark(MarkId(n))) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn a_full_queue_refuses_without_blocking_and_takes_again_once_read() {
        let (mut tx, mut rx) = channel(3);
        for n in 0..3 {
            assert_eq!(tx.try_send(mark(n)), Ok(()));
        }
        assert_eq!(tx.try_send(mark(3)), Err(SinkError::Full));
        assert_eq!(mark_id(rx.try_recv()), Some(0));
        assert_eq!(tx.try_send(mark(4)), Ok(()));
        let order: Vec<_> = std::iter::from_fn(|| mark_id(rx.try_recv())).collect();
        assert_eq!(order, [1, 2, 4]);
    }

    #[test]
    fn the_engine_sees_closed_once_the_writer_is_gone() {
        let (mut tx, rx) = channel(4);
        assert_eq!(tx.try_send(mark(0)), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(mark(1)), Err(SinkError::Closed));
    }

    #[tokio::test]
    async fn the_writer_gets_everything_queued_then_none_after_the_engine_drops_its_end() {
        let (mut tx, mut rx) = channel(4);
        tx.try_send(mark(7)).unwrap();
        tx.try_send(mark(8)).unwrap();
        drop(tx);
        assert_eq!(mark_id(rx.recv().await), Some(7));
        assert_eq!(mark_id(rx.recv().await), Some(8));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a plain thread stands in for the engine worker
    async fn a_waiting_writer_is_woken_by_a_message_from_another_thread() {
        let (mut tx, mut rx) = channel(OUTBOUND_QUEUE);
        let engine = std::thread::spawn(move || {
            for n in 0..100 {
                while tx.try_send(mark(n)) == Err(SinkError::Full) {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("woken")
        {
            got.extend(mark_id(Some(msg)));
        }
        engine.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
