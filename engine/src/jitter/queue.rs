//! The jitter buffer's frame store: a fixed-capacity ring of frames in playout order, allocated
//! once at construction.
//!
//! Each entry carries its playout slot. Frames arrive in sender order, so pushes always go to the
//! back and slots increase from front to back. Shrinking or growing the delay moves every
//! buffered frame by one slot; that touches at most `capacity` entries and happens at most once
//! per 20 ms slot.

use std::time::Instant;

use crate::frame::MulawFrame;

/// One buffered frame.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// Playout slot index (slot n is due at `anchor + n·20 ms`).
    pub(super) slot: u64,
    /// Sender slot: frames since the stream's first frame, on Twilio's clock. Unlike `slot`,
    /// never moved by the playout schedule.
    pub(super) sender: u64,
    /// Whether the frame is quiet enough to drop when shrinking the delay.
    pub(super) quiet: bool,
    /// The audio.
    pub(super) frame: MulawFrame,
    /// When the frame was read off the socket (`None` only in the unused `EMPTY` filler).
    pub(super) arrived: Option<Instant>,
}

impl Entry {
    const EMPTY: Self = Self {
        slot: 0,
        sender: 0,
        quiet: true,
        frame: MulawFrame::SILENCE,
        arrived: None,
    };
}

/// A ring of at most `capacity` entries, oldest first.
#[derive(Debug)]
pub(super) struct FrameQueue {
    /// Storage; only `len` entries starting at `head` (wrapping) are live.
    entries: Box<[Entry]>,
    /// Index of the oldest live entry.
    head: usize,
    /// Number of live entries.
    len: usize,
    /// Live entries, from the oldest, already handed out by [`FrameQueue::read_next`].
    read: usize,
}

impl FrameQueue {
    /// An empty queue holding up to `capacity` (at least 1) frames.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: vec![Entry::EMPTY; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
            read: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == self.entries.len()
    }

    /// The `i`-th oldest entry.
    pub(super) fn get(&self, i: usize) -> Option<&Entry> {
        (i < self.len).then(|| &self.entries[(self.head + i) % self.entries.len()])
    }

    /// The oldest entry.
    pub(super) fn front(&self) -> Option<&Entry> {
        self.get(0)
    }

    /// Appends `entry`; returns false (and drops it) if the queue is full.
    pub(super) fn push_back(&mut self, entry: Entry) -> bool {
        if self.is_full() {
            return false;
        }
        let cap = self.entries.len();
        self.entries[(self.head + self.len) % cap] = entry;
        self.len += 1;
        true
    }

    /// Removes and returns the oldest entry, and whether [`FrameQueue::read_next`] had
    /// handed it out.
    pub(super) fn pop_front(&mut self) -> Option<(Entry, bool)> {
        let entry = *self.front()?;
        self.head = (self.head + 1) % self.entries.len();
        self.len -= 1;
        let read = self.read > 0;
        self.read = self.read.saturating_sub(1);
        Some((entry, read))
    }

    /// The oldest entry not handed out yet, now marked as handed out. Entries are handed out
    /// in queue order, each once.
    pub(super) fn read_next(&mut self) -> Option<Entry> {
        let entry = *self.get(self.read)?;
        self.read += 1;
        Some(entry)
    }

    /// Whether some live entry was handed out by [`FrameQueue::read_next`].
    pub(super) fn any_read(&self) -> bool {
        self.read > 0
    }

    /// Moves every buffered frame one slot later (the delay grows by one frame).
    pub(super) fn delay_all(&mut self) {
        self.for_each_mut(|e| e.slot = e.slot.saturating_add(1));
    }

    /// Moves every buffered frame one slot earlier (the delay shrinks by one frame). The caller
    /// guarantees no frame is in slot 0 or in the slot being played.
    pub(super) fn advance_all(&mut self) {
        self.for_each_mut(|e| e.slot = e.slot.saturating_sub(1));
    }

    fn for_each_mut(&mut self, mut f: impl FnMut(&mut Entry)) {
        let cap = self.entries.len();
        for i in 0..self.len {
            f(&mut self.entries[(self.head + i) % cap]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u64) -> Entry {
        Entry {
            slot,
            ..Entry::EMPTY
        }
    }

    #[test]
    fn queue_is_fifo_across_wraparound_and_refuses_when_full() {
        let mut q = FrameQueue::new(3);
        for round in 0..5u64 {
            for i in 0..3 {
                assert!(q.push_back(entry(round * 10 + i)));
            }
            assert!(q.is_full());
            assert!(!q.push_back(entry(99)));
            assert_eq!(q.len(), 3);
            for i in 0..3 {
                assert_eq!(q.pop_front().map(|(e, _)| e.slot), Some(round * 10 + i));
            }
            assert!(q.is_empty());
            assert!(q.pop_front().is_none());
            // Leave one behind so the head moves around the ring.
            assert!(q.push_back(entry(7)));
            assert_eq!(q.pop_front().map(|(e, _)| e.slot), Some(7));
        }
    }

    #[test]
    fn entries_are_read_ahead_once_in_order_and_popped_with_their_mark() {
        let mut q = FrameQueue::new(4);
        for s in [1, 2, 3] {
            assert!(q.push_back(entry(s)));
        }
        assert!(!q.any_read());
        assert_eq!(q.read_next().map(|e| e.slot), Some(1));
        assert_eq!(q.read_next().map(|e| e.slot), Some(2));
        assert!(q.any_read());
        assert_eq!(
            q.pop_front().map(|(e, read)| (e.slot, read)),
            Some((1, true))
        );
        // The next unread entry is still 3; 2 stays read.
        assert_eq!(q.read_next().map(|e| e.slot), Some(3));
        assert!(q.read_next().is_none());
        assert!(q.push_back(entry(4)));
        assert_eq!(
            q.pop_front().map(|(e, read)| (e.slot, read)),
            Some((2, true))
        );
        assert_eq!(
            q.pop_front().map(|(e, read)| (e.slot, read)),
            Some((3, true))
        );
        assert!(!q.any_read());
        assert_eq!(
            q.pop_front().map(|(e, read)| (e.slot, read)),
            Some((4, false))
        );
        assert!(q.read_next().is_none() && q.pop_front().is_none());
    }

    #[test]
    fn shifting_moves_every_live_entry_by_one_slot() {
        let mut q = FrameQueue::new(4);
        for s in [5, 6, 9] {
            assert!(q.push_back(entry(s)));
        }
        q.delay_all();
        let slots: Vec<u64> = (0..q.len())
            .filter_map(|i| q.get(i))
            .map(|e| e.slot)
            .collect();
        assert_eq!(slots, [6, 7, 10]);
        q.advance_all();
        q.advance_all();
        let slots: Vec<u64> = (0..q.len())
            .filter_map(|i| q.get(i))
            .map(|e| e.slot)
            .collect();
        assert_eq!(slots, [4, 5, 8]);
        assert!(q.get(3).is_none());
    }
}
