//! Which assistant item the caller heard, and how much: the adapter's view of the engine's
//! playbacks, from the marks it put after each delta and the engine's heard time at an
//! interruption.

use std::collections::VecDeque;

use handset_engine::MarkId;
use handset_engine::call::Interruption;

use crate::agent::remote::INTERNAL_MARK_BASE;

/// Samples per millisecond at the adapter's 8 kHz.
const SAMPLES_PER_MS: u64 = 8;
/// Own marks outstanding at most (one per delta); beyond this deltas go unmarked.
const MAX_MARKS: usize = 900;
/// Truncated items remembered, so their late deltas are dropped.
const CUT_ITEMS: usize = 16;

/// The assistant item being played.
#[derive(Clone, Debug, Eq, PartialEq)]
struct Item {
    id: String,
    /// Position of its first sample (8 kHz samples pushed before it).
    start: u64,
}

/// Tracks where the engine's playback began and which assistant item each sample belongs to,
/// so an interruption's `heard` can be turned into an item's `audio_end_ms`. Pure state.
#[derive(Debug)]
pub struct Playout {
    /// 8 kHz samples pushed into the engine's ring so far.
    pushed: u64,
    /// Position at which the engine's current playback began.
    origin: u64,
    /// Every pushed sample is known played (or cut): the next audio starts a playback.
    idle: bool,
    item: Option<Item>,
    /// Own marks not yet played or cleared: (id, position).
    marks: VecDeque<(u64, u64)>,
    /// The last own mark played: (id, position).
    last_played: Option<(u64, u64)>,
    next_mark: u64,
    /// Items truncated recently: their later deltas are dropped.
    cut: VecDeque<String>,
}

impl Default for Playout {
    fn default() -> Self {
        Self::new()
    }
}

impl Playout {
    /// Nothing pushed yet.
    pub fn new() -> Self {
        Self {
            pushed: 0,
            origin: 0,
            idle: true,
            item: None,
            marks: VecDeque::new(),
            last_played: None,
            next_mark: 0,
            cut: VecDeque::new(),
        }
    }

    /// Whether audio of `item_id` should play (false once the item was truncated).
    pub fn accepts(&self, item_id: &str) -> bool {
        !self.cut.iter().any(|c| c == item_id)
    }

    /// Records `samples` of `item_id` about to be pushed at the current position.
    pub fn audio(&mut self, item_id: &str, samples: u64) {
        if self.item.as_ref().is_none_or(|i| i.id != item_id) {
            self.item = Some(Item {
                id: item_id.to_owned(),
                start: self.pushed,
            });
        }
        if self.idle {
            self.origin = self.pushed;
            self.idle = false;
        }
        self.pushed += samples;
    }

    /// A mark to push after the audio recorded so far, or `None` if too many are outstanding.
    pub fn mark(&mut self) -> Option<MarkId> {
        if self.marks.len() >= MAX_MARKS {
            return None;
        }
        self.next_mark += 1;
        if self.next_mark >= INTERNAL_MARK_BASE {
            return None;
        }
        self.marks.push_back((self.next_mark, self.pushed));
        Some(MarkId(self.next_mark))
    }

    /// A mark's audio played. When it was the last audio pushed, the playback is over.
    pub fn mark_played(&mut self, mark: MarkId) {
        if let Some(i) = self.marks.iter().position(|(m, _)| *m == mark.0) {
            let (_, pos) = self.marks[i];
            self.marks.drain(..=i);
            self.last_played = Some((mark.0, pos));
            if pos == self.pushed {
                self.idle = true;
            }
        }
    }

    /// A mark was cut (it will never play).
    pub fn mark_cleared(&mut self, mark: MarkId) {
        if let Some(i) = self.marks.iter().position(|(m, _)| *m == mark.0) {
            self.marks.remove(i);
        }
    }

    /// Whether assistant audio may still be playing.
    pub fn playing(&self) -> bool {
        !self.idle
    }

    /// Playback was cut: the item to truncate and its `audio_end_ms`, unless nothing of an
    /// item was playing.
    pub fn interrupted(&mut self, interruption: &Interruption) -> Option<(String, u64)> {
        let was_idle = self.idle;
        self.idle = true;
        self.marks.clear();
        let item = self.item.take()?;
        if was_idle {
            return None;
        }
        let heard = interruption.heard.as_micros() as u64 * SAMPLES_PER_MS / 1_000;
        let confirmed = match (interruption.last_played_mark, self.last_played) {
            (Some(m), Some((id, pos))) if m.0 == id => pos,
            _ => 0,
        };
        let played = (self.origin + heard).max(confirmed).min(self.pushed);
        if self.cut.len() == CUT_ITEMS {
            self.cut.pop_front();
        }
        self.cut.push_back(item.id.clone());
        let end_ms = played.saturating_sub(item.start) / SAMPLES_PER_MS;
        Some((item.id, end_ms))
    }

    /// Stops tracking the current item (its audio is being cut); later deltas of it are dropped.
    pub fn cut_current(&mut self) -> Option<&str> {
        let item = self.item.as_ref()?;
        if !self.cut.contains(&item.id) {
            if self.cut.len() == CUT_ITEMS {
                self.cut.pop_front();
            }
            self.cut.push_back(item.id.clone());
        }
        Some(&item.id)
    }
}
