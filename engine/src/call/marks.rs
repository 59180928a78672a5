//! The mark ledger: what was sent to Twilio, what Twilio confirmed played, and what a `clear`
//! flushed.
//!
//! Positions are counted in frames sent since the call started. A mark sent after `n` frames
//! sits at position `n`; its echo means the caller has heard everything before `n`. Twilio
//! echoes marks in the order they were sent, and after a `clear` echoes every pending mark at
//! once: those echoes mean "flushed", not "played", and are recognised by name.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{FRAME_DURATION, PROGRESS_MARK_BASE};
use crate::frame::MarkId;

/// Bound on marks tracked at once (sent and unconfirmed, or flushed and awaiting their echo).
/// At one mark per 100 ms this covers minutes of send-ahead; beyond it the oldest is forgotten.
/// The queues start with room for 32 (a healthy call has two or three marks in flight: the
/// 60 ms lead plus one round trip) and grow only if Twilio stops echoing.
const MAX_TRACKED: usize = 4096;

/// What an echo meant.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Echo {
    /// The mark's audio played; `agent` tells whether the agent asked for it.
    Played { agent: bool },
    /// The mark came back because our `clear` flushed it.
    Flushed,
    /// Never sent, or already echoed.
    Unknown,
}

/// What an interruption cut off.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) struct InterruptReport {
    pub(super) heard: Duration,
    pub(super) sent: Duration,
    pub(super) dropped: Duration,
    pub(super) last_played_mark: Option<MarkId>,
}

/// Mark bookkeeping for one call.
#[derive(Debug)]
pub(super) struct MarkLedger {
    /// Frames sent to Twilio since the call started.
    sent: u64,
    /// Marks sent and not yet echoed, with their positions and send instants, in send order.
    outstanding: VecDeque<(MarkId, u64, Instant)>,
    /// Marks that were outstanding when we sent `clear`; their echoes mean "flushed".
    flushed: VecDeque<MarkId>,
    /// Agent marks flushed by the last interruption, to report as cleared.
    cleared_agent: VecDeque<MarkId>,
    /// Position of the newest confirmed-played mark, and when its echo arrived.
    played: Option<(u64, Instant)>,
    /// Position where the current playback started (its first mark), if it started.
    playback_start: Option<u64>,
    /// A playback was started and its first mark is not sent yet.
    pending_start: bool,
    /// Position of the newest mark sent.
    last_mark_pos: u64,
    /// The newest agent mark confirmed played in the current playback.
    last_played_agent: Option<MarkId>,
    /// Round trip to Twilio, measured on the first mark of a playback (Twilio's buffer is empty
    /// then, so it echoes on arrival). A `clear` sent now lands half of it later, and the
    /// echo we act on left half of it ago: the caller hears one round trip more than the
    /// newest echo shows.
    round_trip: Duration,
}

impl MarkLedger {
    pub(super) fn new() -> Self {
        Self {
            sent: 0,
            outstanding: VecDeque::with_capacity(32),
            flushed: VecDeque::with_capacity(32),
            cleared_agent: VecDeque::with_capacity(16),
            played: None,
            playback_start: None,
            pending_start: false,
            last_mark_pos: 0,
            last_played_agent: None,
            round_trip: Duration::ZERO,
        }
    }

    /// A new playback begins with the next mark sent.
    pub(super) fn start_playback(&mut self) {
        self.pending_start = true;
        self.playback_start = None;
        self.played = None;
        self.last_played_agent = None;
    }

    /// One frame went to Twilio.
    pub(super) fn sent_frame(&mut self) {
        self.sent += 1;
    }

    /// A mark went to Twilio at `now`.
    pub(super) fn sent_mark(&mut self, now: Instant, mark: MarkId) {
        if self.pending_start {
            self.pending_start = false;
            self.playback_start = Some(self.sent);
        }
        if self.outstanding.len() == MAX_TRACKED {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((mark, self.sent, now));
        self.last_mark_pos = self.sent;
    }

    /// Frames were sent after the newest mark: playback has no confirmation point at its end.
    pub(super) fn needs_trailing_mark(&self) -> bool {
        self.sent > self.last_mark_pos
    }

    /// Whether agent audio sent to Twilio is not yet confirmed played.
    pub(super) fn in_flight(&self) -> bool {
        !self.outstanding.is_empty()
            || self.played.map_or(self.sent, |(p, _)| p) < self.sent
                && self.playback_start.is_some()
    }

    /// Twilio echoed `mark` at `now`.
    pub(super) fn echo(&mut self, now: Instant, mark: MarkId) -> Echo {
        if let Some(i) = self.flushed.iter().position(|m| *m == mark) {
            self.flushed.remove(i);
            return Echo::Flushed;
        }
        let Some(i) = self.outstanding.iter().position(|(m, ..)| *m == mark) else {
            return Echo::Unknown;
        };
        // Echoes come in send order: anything sent before this mark has played too.
        let mut pos = 0;
        for _ in 0..=i {
            let (m, p, sent_at) = self.outstanding.pop_front().expect("index within length");
            pos = p;
            if self.playback_start == Some(p) && self.played.is_none() {
                self.round_trip = now.saturating_duration_since(sent_at);
            }
            if m.0 < PROGRESS_MARK_BASE && self.playback_start.is_some_and(|s| p >= s) {
                self.last_played_agent = Some(m);
            }
        }
        self.played = Some((pos, now));
        Echo::Played {
            agent: mark.0 < PROGRESS_MARK_BASE,
        }
    }

    /// Audio of the current playback confirmed played.
    pub(super) fn playback_played(&self) -> Duration {
        match (self.playback_start, self.played) {
            (Some(start), Some((pos, _))) if pos >= start => frames(pos - start),
            _ => Duration::ZERO,
        }
    }

    /// How much of the current playback the caller will have heard when a `clear` sent at `now`
    /// reaches Twilio: the newest confirmed position, advanced at real time since its echo plus
    /// one round trip, but never past the end of what was sent.
    pub(super) fn heard(&self, now: Instant) -> Duration {
        let (Some(start), Some((pos, at))) = (self.playback_start, self.played) else {
            return Duration::ZERO;
        };
        if pos < start {
            return Duration::ZERO;
        }
        let bound = self.sent;
        let confirmed = frames(pos - start);
        let limit = frames(bound.saturating_sub(pos));
        confirmed + (now.saturating_duration_since(at) + self.round_trip).min(limit)
    }

    /// Barge-in or clear at `now`, with `dropped_frames` dropped locally: computes what the
    /// caller heard, then treats every outstanding mark as flushed and ends the playback.
    pub(super) fn interrupt(&mut self, now: Instant, dropped_frames: u64) -> InterruptReport {
        let report = InterruptReport {
            heard: self.heard(now),
            sent: self
                .playback_start
                .map_or(Duration::ZERO, |s| frames(self.sent.saturating_sub(s))),
            dropped: frames(dropped_frames),
            last_played_mark: self.last_played_agent,
        };
        while let Some((mark, ..)) = self.outstanding.pop_front() {
            if self.flushed.len() == MAX_TRACKED {
                self.flushed.pop_front();
            }
            self.flushed.push_back(mark);
            if mark.0 < PROGRESS_MARK_BASE {
                self.cleared_agent.push_back(mark);
            }
        }
        self.playback_start = None;
        self.pending_start = false;
        self.played = None;
        self.last_played_agent = None;
        self.last_mark_pos = self.sent;
        report
    }

    /// Agent marks flushed by the last interruption (sent to Twilio, never played).
    pub(super) fn pop_cleared_agent_mark(&mut self) -> Option<MarkId> {
        self.cleared_agent.pop_front()
    }
}

fn frames(n: u64) -> Duration {
    FRAME_DURATION * n as u32
}
