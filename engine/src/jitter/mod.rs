//! Inbound jitter buffer: re-times Twilio's bursty, TCP-delivered µ-law frames into a steady
//! 20 ms playout on the buffer's own clock and conceals what is missing.
//!
//! Twilio Media Streams run over a WebSocket, so frames never get lost or reordered in transit;
//! they arrive late and in bursts (head-of-line blocking), and `chunk`/`timestamp` may skip when
//! Twilio omits audio. Input is still treated as hostile: duplicates, backwards numbers and absurd
//! jumps are counted and bounded, never a panic or an unbounded allocation.
//!
//! # Model
//!
//! * **Slots.** The first frame is sender slot 0. Every later in-sequence frame advances the
//!   sender slot by `max(chunk delta, timestamp advance)`, where the timestamp advance is the
//!   difference of `round((timestamp − first timestamp) / 20 ms)`, so a gap shows up through
//!   missing chunk numbers or through a timestamp jump, and off-grid timestamps never drift.
//! * **Schedule.** Playout slot `n` is due at `anchor + n·20 ms`, with `anchor = first arrival +
//!   initial_delay` (absolute schedule: late wake-ups never accumulate drift). A frame in sender
//!   slot `s` plays in slot `s + offset`; the offset starts at 0 and moves by one frame when the
//!   delay grows or shrinks. [`Playout::at`] is slot `n` on the caller timeline
//!   (`n·160` samples) and always advances by exactly 160 per popped slot, resyncs included.
//! * **Admission.** `chunk` equal to the newest (or to one of the last 64 accepted) is a
//!   [`Admission::Duplicate`]. A lower `chunk` or an earlier timestamp is
//!   [`Admission::Backwards`]. A frame whose slot was already played is [`Admission::Late`]. If
//!   the buffer holds `capacity_frames` frames, the oldest is dropped and every buffered frame
//!   moves one slot earlier, so no gap opens ([`Admission::Overflow`]).
//! * **Resync.** A frame is re-placed at the slot its arrival time implies (where its relative
//!   delay is below one frame, and after the newest slot) instead of where its numbers point when:
//!   the advance exceeds `max_jump` (10 s by default); or it skips slots yet would play more than
//!   `capacity_frames`·20 ms after it arrived (the sender clock jumped, arrivals did not); or more
//!   than `max_backwards_frames` consecutive frames were backwards (the newest numbers were bogus
//!   or the stream restarted). Resyncing a frame that is consistent with its arrival time places it
//!   where its numbers point, so a resync never reorders audio; the frames rejected before a
//!   backwards resync are counted as backwards. [`Playout::at`] stays continuous across resyncs.
//! * **Stalls.** Over TCP nothing is lost in transit, only held up, so a due slot whose frame has
//!   not arrived yet (nothing at or after its sender slot has been accepted) is concealed and
//!   everything later moves one slot later (expand, as NetEq does), instead of playing the
//!   frame's slot without it and dropping the frame when it turns up: a stall costs the caller's
//!   audio nothing, only latency, which acceleration then gives back. Expansion stops at
//!   `max_delay` of playout delay; frames held up longer than that are late and dropped. A due
//!   slot whose frame Twilio skipped (a later frame is already in) is concealed in place, and so
//!   is every slot once the stream is idle. When the frame that ends a stall turns out to skip
//!   slots (Twilio omitted audio rather than the network holding it), the expansion is taken
//!   back as far as those skipped slots cover it, so omitted audio keeps its length. The
//!   stalled frames' delays also raise the target.
//! * **Concealment.** A due slot without a frame repeats the last played frame, 6 dB quieter per
//!   consecutive concealed slot, for up to `max_repeat_frames` slots, then plays µ-law silence.
//!   Slots keep coming while Twilio sends nothing (the call needs a continuous 20 ms feed). After
//!   `idle_after_frames` consecutive concealed slots with nothing buffered, the stream counts as
//!   idle ([`JitterBuffer::is_idle`]) rather than underrunning.
//! * **Adaptation.** The target delay follows the 0.95 quantile of relative arrival delay (see
//!   `delay.rs`), clamped to `[min_delay, max_delay]`. The playout delay `D` is how long before
//!   its deadline the fastest recent frame arrives: `anchor + offset·20 ms − reference`. When
//!   `D < target`, the due slot is concealed and everything buffered moves one slot later
//!   (decelerate). When `D ≥ target + 20 ms` for `accelerate_after_frames` received slots in a
//!   row, the due frame is dropped and the next one plays in its slot (accelerate) if it is quiet
//!   (µ-law codes near 0xFF/0x7F), or if the excess lasted five times as long. `D` therefore
//!   settles in `[target, target + 20 ms)`.
//!
//! * **Read-ahead.** [`JitterBuffer::read_ahead`] hands out each buffered frame once, in order,
//!   as soon as it is queued, with the slot it is planned for, for a reader that must not wait
//!   for the playout delay (the call's speech detector: a barge-in is decided on arrival, not
//!   `target` later). [`Playout::read_ahead`] tells that reader which popped slots it is past.
//!
//! Assumptions: one buffer per stream; instants come from one monotonic clock (an instant earlier
//! than the first arrival counts as the first arrival).
//!
//! Hot path: `insert` and `pop` do a bounded amount of work (at most one pass over the buffered
//! frames and the 10 ms histogram buckets); nothing allocates after [`JitterBuffer::new`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use handset_engine::jitter::{JitterBuffer, JitterConfig, PlayoutKind};
//! use handset_engine::{InboundMedia, MulawFrame};
//!
//! let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
//! let t0 = Instant::now();
//! jb.insert(t0, &InboundMedia { chunk: 1, timestamp_ms: 5, payload: MulawFrame::SILENCE });
//! // Nothing is due before the first deadline (arrival + 40 ms).
//! assert!(jb.pop(t0).is_none());
//! let due = jb.poll_timeout().unwrap();
//! assert_eq!(due, t0 + Duration::from_millis(40));
//! let slot = jb.pop(due).unwrap();
//! assert_eq!(slot.kind, PlayoutKind::Received);
//! ```

mod config;
mod delay;
mod mulaw;
mod queue;

use std::time::{Duration, Instant};

use crate::frame::{InboundMedia, MulawFrame};
use crate::time::{FRAME, SampleTime};

pub use self::config::{
    CAPACITY_LIMIT, JitterConfig, JitterConfigError, MAX_DELAY_LIMIT, MAX_JUMP_RANGE, REPEAT_LIMIT,
};
use self::delay::{DelayEstimator, duration_ns};
use self::queue::{Entry, FrameQueue};

/// One frame in nanoseconds.
const FRAME_NS: u64 = FRAME.as_nanos() as u64;

/// How many recently accepted chunk numbers are remembered to tell duplicates from backwards.
const RECENT_CHUNKS: usize = 64;
/// An excess delay lasting this many times `accelerate_after_frames` drops even loud frames.
const FORCED_ACCELERATE_FACTOR: u32 = 5;

/// What [`JitterBuffer::insert`] did with a frame.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Admission {
    /// Dropped: its chunk is lower than the newest, or its timestamp went backwards.
    Backwards,
    /// Dropped: its chunk was already accepted.
    Duplicate,
    /// Dropped: its playout slot was already played.
    Late,
    /// Queued, but the buffer was full: the oldest frame was dropped and every buffered frame
    /// moved one slot earlier.
    Overflow,
    /// Queued for playout.
    Queued,
}

/// Where the audio of a [`Playout`] came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PlayoutKind {
    /// No frame for this slot: a faded repeat of the last frame, or silence.
    Concealed,
    /// The frame Twilio sent for this slot.
    Received,
}

/// One 20 ms playout slot.
#[derive(Clone, Copy, Debug)]
pub struct Playout {
    /// Start of the slot on the caller timeline (8 kHz samples; slot n starts at n·160).
    pub at: SampleTime,
    /// The audio to play.
    pub frame: MulawFrame,
    /// Whether the audio was received or concealed.
    pub kind: PlayoutKind,
    /// For a received frame, when it was read off the socket (the instant given to
    /// [`JitterBuffer::insert`]); `None` for a concealed slot.
    pub arrived: Option<Instant>,
    /// For a received frame, its slot on the sender's timeline (frames since the stream's first
    /// frame, on Twilio's clock; resyncs aside, it never moves when the playout schedule does);
    /// `None` for a concealed slot.
    pub sender_slot: Option<u64>,
    /// Whether [`JitterBuffer::read_ahead`] is already past this slot: it handed out this
    /// frame, or (a concealed slot) a frame planned after it. A reader of the read-ahead skips
    /// such a slot.
    pub read_ahead: bool,
}

/// Jitter buffer counters and gauges. Counts are frames since construction unless stated.
///
/// Every inserted frame ends up in exactly one of `duplicate`, `backwards`, `late`, `overflow`,
/// `accelerated`, `played_received` or `buffered`, and `played == played_received + concealed`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct JitterStats {
    /// Frames passed to `insert`.
    pub received: u64,
    /// Slots popped (received + concealed).
    pub played: u64,
    /// Slots popped with [`PlayoutKind::Received`].
    pub played_received: u64,
    /// Slots popped with [`PlayoutKind::Concealed`], including decelerate slots.
    pub concealed: u64,
    /// Runs of consecutive concealed slots (W3C `concealmentEvents`).
    pub concealment_events: u64,
    /// Concealed slots popped while the stream was idle (a subset of `concealed`).
    pub idle_concealed: u64,
    /// Frames dropped because their slot was already played (W3C `packetsDiscarded`).
    pub late: u64,
    /// Frames dropped as duplicates.
    pub duplicate: u64,
    /// Frames dropped because chunk or timestamp went backwards.
    pub backwards: u64,
    /// Oldest frames dropped because the buffer was full.
    pub overflow: u64,
    /// Frames dropped to shrink the delay (W3C `removedSamplesForAcceleration` / 160).
    pub accelerated: u64,
    /// Concealed slots inserted to grow the delay (W3C `insertedSamplesForDeceleration` / 160).
    pub decelerated: u64,
    /// Concealed slots inserted while their frame was still in transit (a stall): the frames
    /// behind them play a slot later each instead of late. A subset of `concealed`.
    pub expanded: u64,
    /// Frames re-placed by a resync.
    pub resyncs: u64,
    /// Frames buffered now.
    pub buffered: u64,
    /// Most frames ever buffered at once.
    pub max_buffered: u64,
    /// Current target delay (W3C `jitterBufferTargetDelay`).
    pub target_delay: Duration,
    /// Current quantile (0.95) estimate of relative arrival delay, before clamping.
    pub p95_delay: Duration,
    /// Current playout delay: how long before its deadline the fastest recent frame arrives.
    pub playout_delay: Duration,
    /// Most frames that arrived within 20 ms of the first frame of a burst.
    pub max_burst: u64,
    /// RFC 3550 interarrival jitter (A.8), on the 20 ms slot schedule.
    pub interarrival_jitter: Duration,
}

/// Sender-side position of the newest accepted frame.
#[derive(Clone, Copy, Debug)]
struct Newest {
    /// Its `chunk`.
    chunk: u64,
    /// Its `timestamp_ms`.
    timestamp_ms: u64,
    /// Timestamp of the frame the timestamp positions count from (first frame or last resync), ms.
    timestamp_base: u64,
    /// Its timestamp position: `round((timestamp − base) / 20 ms)`, frames.
    timestamp_slot: u64,
    /// Its sender slot, frames since the first frame.
    slot: u64,
}

/// The adaptive jitter buffer. See the module docs for the model.
#[derive(Debug)]
pub struct JitterBuffer {
    /// Buffered frames in playout order.
    queue: FrameQueue,
    /// Relative-delay histogram, reference and interarrival jitter.
    delay: DelayEstimator,
    /// `initial_delay` in ns: the anchor's offset from the first arrival.
    anchor_ns: u64,
    /// Faded repeats before silence, frames.
    max_repeat_frames: u32,
    /// Slots of excess delay before a quiet frame is dropped.
    accelerate_after: u32,
    /// Concealed slots with an empty buffer before the stream is idle.
    idle_after: u32,
    /// Largest advance taken at face value, frames.
    max_jump_frames: u64,
    /// Consecutive backwards frames tolerated before a resync.
    max_backwards: u32,
    /// A skipping frame due more than this long after its arrival is resynced, ns.
    early_limit_ns: u64,
    /// `max_delay` in ns: stall expansion never takes the playout delay beyond it.
    max_delay_ns: u64,
    /// First arrival; `None` until the first frame.
    origin: Option<Instant>,
    /// The newest accepted frame (meaningless while `origin` is `None`).
    newest: Newest,
    /// Ring of recently accepted chunk numbers, for duplicate detection.
    recent_chunks: [u64; RECENT_CHUNKS],
    /// Live entries in `recent_chunks`.
    recent_len: usize,
    /// Next write index in `recent_chunks`.
    recent_next: usize,
    /// Consecutive backwards frames so far.
    backwards_run: u32,
    /// Next playout slot to pop.
    next_slot: u64,
    /// Playout slot minus sender slot, frames.
    offset: i64,
    /// The last received frame played, for concealment.
    last_frame: MulawFrame,
    /// Consecutive concealed slots up to now.
    concealed_run: u32,
    /// Slots expanded since the last accepted frame (taken back if that frame skips slots).
    pending_expansion: u64,
    /// Received slots played in a row with the playout delay at least a frame above target
    /// (concealed slots leave it unchanged).
    above_target_run: u32,
    /// Arrival of the first frame of the current burst, ns since the first arrival.
    burst_start_ns: u64,
    /// Frames in the current burst.
    burst_len: u64,
    /// Counters (gauges are filled in by [`JitterBuffer::stats`]).
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer for `config`, with all memory allocated.
    pub fn new(config: &JitterConfig) -> Result<Self, JitterConfigError> {
        config.validate()?;
        Ok(Self {
            queue: FrameQueue::new(config.capacity_frames),
            delay: DelayEstimator::new(
                config.initial_delay,
                config.min_delay,
                config.max_delay,
                config.quantile,
                config.forget_factor,
            ),
            anchor_ns: duration_ns(config.initial_delay),
            max_repeat_frames: config.max_repeat_frames,
            accelerate_after: config.accelerate_after_frames,
            idle_after: config.idle_after_frames,
            max_jump_frames: duration_ns(config.max_jump) / FRAME_NS,
            max_backwards: config.max_backwards_frames,
            early_limit_ns: (config.capacity_frames as u64).saturating_mul(FRAME_NS),
            max_delay_ns: duration_ns(config.max_delay),
            origin: None,
            newest: Newest {
                chunk: 0,
                timestamp_ms: 0,
                timestamp_base: 0,
                timestamp_slot: 0,
                slot: 0,
            },
            recent_chunks: [0; RECENT_CHUNKS],
            recent_len: 0,
            recent_next: 0,
            backwards_run: 0,
            next_slot: 0,
            offset: 0,
            last_frame: MulawFrame::SILENCE,
            concealed_run: 0,
            pending_expansion: 0,
            above_target_run: 0,
            burst_start_ns: 0,
            burst_len: 0,
            stats: JitterStats::default(),
        })
    }

    /// Offers one frame. `now` is when the frame was read off the socket (not when this is
    /// called). After inserting, drain [`JitterBuffer::pop`] until `None`.
    pub fn insert(&mut self, now: Instant, media: &InboundMedia) -> Admission {
        self.stats.received += 1;
        let Some(origin) = self.origin else {
            self.origin = Some(now);
            self.burst_start_ns = 0;
            self.burst_len = 1;
            self.stats.max_burst = 1;
            self.accept(media, 0, 0, true);
            self.delay.observe(0, 0, false);
            return self.place(0, media.payload, now);
        };
        let now_ns = nanos_since(origin, now);
        if now_ns.saturating_sub(self.burst_start_ns) < FRAME_NS {
            self.burst_len += 1;
        } else {
            self.burst_start_ns = now_ns;
            self.burst_len = 1;
        }
        self.stats.max_burst = self.stats.max_burst.max(self.burst_len);

        let newest = self.newest;
        if media.chunk == newest.chunk
            || (media.chunk < newest.chunk
                && self.recent_chunks[..self.recent_len].contains(&media.chunk))
        {
            self.stats.duplicate += 1;
            return Admission::Duplicate;
        }
        let (slot, timestamp_slot, resync) =
            if media.chunk < newest.chunk || media.timestamp_ms < newest.timestamp_ms {
                self.backwards_run += 1;
                if self.backwards_run <= self.max_backwards {
                    self.stats.backwards += 1;
                    return Admission::Backwards;
                }
                (self.resync_slot(now_ns), 0, true)
            } else {
                let timestamp_slot = timestamp_position(media.timestamp_ms - newest.timestamp_base);
                let advance = (media.chunk - newest.chunk)
                    .max(timestamp_slot.saturating_sub(newest.timestamp_slot));
                let slot = newest.slot.saturating_add(advance);
                if advance > self.max_jump_frames || (advance > 1 && self.too_early(slot, now_ns)) {
                    (self.resync_slot(now_ns), 0, true)
                } else {
                    self.retract_expansion(slot, advance);
                    (slot, timestamp_slot, false)
                }
            };
        if resync {
            self.stats.resyncs += 1;
        }
        self.accept(media, slot, timestamp_slot, resync);
        let transit = i64::try_from(i128::from(now_ns) - i128::from(slot) * i128::from(FRAME_NS))
            .unwrap_or(i64::MIN);
        self.delay.observe(now_ns, transit, !resync);
        self.place(slot, media.payload, now)
    }

    /// Next playout deadline: when [`JitterBuffer::pop`] will next return a slot. `None` before
    /// the first frame arrived (and, unreachably, if the deadline does not fit an `Instant`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.origin?
            .checked_add(Duration::from_nanos(self.deadline_ns(self.next_slot)))
    }

    /// The next slot if its deadline is at or before `now`, else `None`. Returns every due slot,
    /// one per call and in order, so after a late wake-up the caller drains until `None` and
    /// gets them all; none is skipped. `at` advances by exactly 160 samples per returned slot.
    pub fn pop(&mut self, now: Instant) -> Option<Playout> {
        let origin = self.origin?;
        let n = self.next_slot;
        if nanos_since(origin, now) < self.deadline_ns(n) {
            return None;
        }
        let delay = self.playout_delay_ns();
        let target = i128::from(self.delay.target_ns());
        let stalled =
            self.in_transit(n) && delay + i128::from(FRAME_NS) <= i128::from(self.max_delay_ns);
        if delay < target || stalled {
            // Decelerate, or expand through a stall: hold everything back by one slot and
            // conceal this one.
            self.queue.delay_all();
            self.offset += 1;
            if delay < target {
                self.stats.decelerated += 1;
            } else {
                self.stats.expanded += 1;
                self.pending_expansion += 1;
            }
            self.above_target_run = 0;
        } else if delay >= target + i128::from(FRAME_NS) {
            // Only slots that play audio count, so a long idle stretch cannot force the drop
            // of the first (likely loud) frame when the caller speaks again.
            if self.queue.front().is_some_and(|head| head.slot == n) {
                self.above_target_run = self.above_target_run.saturating_add(1);
                self.try_accelerate(n);
            }
        } else {
            self.above_target_run = 0;
        }

        // Slots only ever move in step with `next_slot`, so `head.slot < n` cannot happen;
        // playing it now is the safe answer if it ever did.
        let due = self.queue.front().is_some_and(|head| head.slot <= n);
        let (frame, kind, arrived, sender_slot, read_ahead) =
            match due.then(|| self.queue.pop_front()) {
                Some(Some((head, read))) => {
                    self.last_frame = head.frame;
                    self.concealed_run = 0;
                    self.stats.played_received += 1;
                    let sender = Some(head.sender);
                    (
                        head.frame,
                        PlayoutKind::Received,
                        head.arrived,
                        sender,
                        read,
                    )
                }
                _ => {
                    let read = self.queue.any_read();
                    (self.conceal(), PlayoutKind::Concealed, None, None, read)
                }
            };
        self.next_slot += 1;
        self.stats.played += 1;
        Some(Playout {
            at: SampleTime::from_frames(n),
            frame,
            kind,
            arrived,
            sender_slot,
            read_ahead,
        })
    }

    /// The oldest buffered frame not handed out yet, as the [`Playout`] it is planned to be:
    /// `at` is the slot it is due in now. For a reader that needs the caller's audio as soon
    /// as it is in order rather than when it plays (speech detection): each received frame is
    /// handed out once, in order, before it plays. A later deceleration, stall expansion or
    /// acceleration can still move the frame's slot, and concealed slots are never handed out
    /// (a reader that is not past them meets them in [`JitterBuffer::pop`], where
    /// [`Playout::read_ahead`] is false).
    pub fn read_ahead(&mut self) -> Option<Playout> {
        let entry = self.queue.read_next()?;
        Some(Playout {
            at: SampleTime::from_frames(entry.slot),
            frame: entry.frame,
            kind: PlayoutKind::Received,
            arrived: entry.arrived,
            sender_slot: Some(entry.sender),
            read_ahead: true,
        })
    }

    /// Current target delay.
    pub fn target_delay(&self) -> Duration {
        Duration::from_nanos(self.delay.target_ns())
    }

    /// Whether Twilio has stopped sending: nothing is buffered and at least `idle_after_frames`
    /// consecutive slots were concealed. Slots keep coming (as silence) while idle.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.concealed_run >= self.idle_after
    }

    /// Counters and current gauges.
    pub fn stats(&self) -> JitterStats {
        let playout_delay = u64::try_from(self.playout_delay_ns().max(0)).unwrap_or(u64::MAX);
        JitterStats {
            buffered: self.queue.len() as u64,
            target_delay: self.target_delay(),
            p95_delay: self.delay.estimate(),
            playout_delay: Duration::from_nanos(playout_delay),
            interarrival_jitter: self.delay.jitter(),
            ..self.stats
        }
    }

    /// Records `media` as the newest accepted frame at sender `slot`.
    fn accept(&mut self, media: &InboundMedia, slot: u64, timestamp_slot: u64, rebase: bool) {
        let timestamp_base = if rebase {
            media.timestamp_ms
        } else {
            self.newest.timestamp_base
        };
        self.newest = Newest {
            chunk: media.chunk,
            timestamp_ms: media.timestamp_ms,
            timestamp_base,
            timestamp_slot,
            slot,
        };
        self.backwards_run = 0;
        self.pending_expansion = 0;
        self.recent_chunks[self.recent_next] = media.chunk;
        self.recent_next = (self.recent_next + 1) % RECENT_CHUNKS;
        self.recent_len = (self.recent_len + 1).min(RECENT_CHUNKS);
    }

    /// Queues a frame of sender slot `slot`, or reports it late.
    fn place(&mut self, slot: u64, frame: MulawFrame, arrived: Instant) -> Admission {
        let playout = i128::from(slot) + i128::from(self.offset);
        if playout < i128::from(self.next_slot) {
            self.stats.late += 1;
            return Admission::Late;
        }
        // In range: at least `next_slot` and at most `slot + offset` with a bounded offset.
        let mut playout = u64::try_from(playout).unwrap_or(u64::MAX);
        let mut admission = Admission::Queued;
        if self.queue.is_full() {
            // Every buffered slot is >= next_slot and below `playout`, so after dropping the
            // oldest, moving everything one slot earlier keeps all of them >= next_slot.
            self.queue.pop_front();
            self.queue.advance_all();
            self.offset -= 1;
            playout -= 1;
            self.stats.overflow += 1;
            admission = Admission::Overflow;
        }
        let entry = Entry {
            slot: playout,
            sender: slot,
            quiet: mulaw::is_quiet(&frame),
            frame,
            arrived: Some(arrived),
        };
        // Always true: the queue was made non-full above.
        let pushed = self.queue.push_back(entry);
        debug_assert!(pushed);
        self.stats.max_buffered = self.stats.max_buffered.max(self.queue.len() as u64);
        admission
    }

    /// Whether playout slot `n` has no frame yet because its frame is still on its way: nothing
    /// is buffered for it, no frame at or after its sender slot has been accepted, and the stream
    /// is not idle (an idle stream's silence is not a stall).
    fn in_transit(&self, n: u64) -> bool {
        let waiting = self.queue.front().is_none_or(|head| head.slot > n);
        let sender_slot = i128::from(n) - i128::from(self.offset);
        waiting
            && sender_slot > i128::from(self.newest.slot)
            && self.concealed_run < self.idle_after
    }

    /// Takes back stall expansion that turned out to cover slots Twilio skipped: the frame in
    /// sender `slot` came `advance` slots after the newest, so `advance − 1` slots were never
    /// sent. Only while nothing is buffered (always so after an expansion: it happens only with
    /// nothing buffered and nothing has been accepted since), and never so far that the frame
    /// would be late.
    fn retract_expansion(&mut self, slot: u64, advance: u64) {
        if self.pending_expansion == 0 || !self.queue.is_empty() {
            return;
        }
        let playout = i128::from(slot) + i128::from(self.offset);
        let room = u64::try_from(playout - i128::from(self.next_slot)).unwrap_or(0);
        let back = self
            .pending_expansion
            .min(advance.saturating_sub(1))
            .min(room);
        // `back` is at most `pending_expansion`, which is far below i64::MAX.
        self.offset -= i64::try_from(back).unwrap_or(0);
    }

    /// Drops the due frame in slot `n` to shrink the delay, if the next frame can take its slot
    /// and the excess has lasted long enough (longer still for a loud frame).
    fn try_accelerate(&mut self, n: u64) {
        if self.above_target_run < self.accelerate_after {
            return;
        }
        let (Some(head), Some(next)) = (self.queue.front(), self.queue.get(1)) else {
            return;
        };
        let forced = self.above_target_run
            >= self
                .accelerate_after
                .saturating_mul(FORCED_ACCELERATE_FACTOR);
        if head.slot == n && next.slot == n + 1 && (head.quiet || forced) {
            self.queue.pop_front();
            self.queue.advance_all();
            self.offset -= 1;
            self.stats.accelerated += 1;
            self.above_target_run = 0;
        }
    }

    /// The audio for a slot without a frame, with the concealment counters.
    fn conceal(&mut self) -> MulawFrame {
        self.concealed_run = self.concealed_run.saturating_add(1);
        self.stats.concealed += 1;
        if self.concealed_run == 1 {
            self.stats.concealment_events += 1;
        }
        if self.queue.is_empty() && self.concealed_run > self.idle_after {
            self.stats.idle_concealed += 1;
        }
        if self.concealed_run <= self.max_repeat_frames {
            mulaw::attenuate(&self.last_frame, self.concealed_run)
        } else {
            MulawFrame::SILENCE
        }
    }

    /// Sender slot for a resynced frame that arrived at `now_ns`: where its relative delay is
    /// below one frame, and after the newest slot.
    fn resync_slot(&self, now_ns: u64) -> u64 {
        let reference = self.delay.reference().unwrap_or(0);
        let since = (i128::from(now_ns) - i128::from(reference)).max(0);
        let implied = u64::try_from(since / i128::from(FRAME_NS)).unwrap_or(u64::MAX);
        implied.max(self.newest.slot.saturating_add(1))
    }

    /// Whether sender slot `slot` would play more than the early limit after `now_ns`.
    fn too_early(&self, slot: u64, now_ns: u64) -> bool {
        let playout = i128::from(slot) + i128::from(self.offset);
        let deadline = i128::from(self.anchor_ns) + playout * i128::from(FRAME_NS);
        deadline - i128::from(now_ns) > i128::from(self.early_limit_ns)
    }

    /// Deadline of playout slot `n`, ns since the first arrival.
    fn deadline_ns(&self, n: u64) -> u64 {
        self.anchor_ns.saturating_add(n.saturating_mul(FRAME_NS))
    }

    /// Playout delay `anchor + offset·20 ms − reference`, ns (may be negative).
    fn playout_delay_ns(&self) -> i128 {
        let reference = self.delay.reference().unwrap_or(0);
        i128::from(self.anchor_ns) + i128::from(self.offset) * i128::from(FRAME_NS)
            - i128::from(reference)
    }
}

/// `round(delta_ms / 20)`: a timestamp difference in whole frames, halves rounded up.
fn timestamp_position(delta_ms: u64) -> u64 {
    let frame_ms = FRAME.as_millis() as u64;
    delta_ms / frame_ms + u64::from(delta_ms % frame_ms >= frame_ms / 2)
}

/// `now − origin` in ns; 0 if `now` is earlier, saturating after 584 years.
fn nanos_since(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
