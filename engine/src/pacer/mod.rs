//! Outbound pacer: agent audio leaves for Twilio as one 160-byte µ-law frame per 20 ms, on
//! absolute deadlines, with marks kept in order with the audio.
//!
//! # Why
//!
//! Twilio queues outbound `media` and plays it in arrival order, so sending faster than real time
//! only grows Twilio's buffer (and delays barge-in, because a `clear` is needed to drop it), while
//! sending slower makes the caller hear gaps and makes `mark`s come back early. Relative sleeping
//! drifts by 0.4–0.8 % (`docs/background.md` §1); this pacer computes every deadline from a fixed anchor, so
//! late wake-ups never add up.
//!
//! # Model
//!
//! The pacer keeps an estimate of Twilio's playback position. When audio starts from idle
//! (nothing left at Twilio by our estimate) the schedule is anchored at that instant:
//! `anchor = now`. Frame `n` (counted from 0 since the anchor) is played by Twilio during
//! `[anchor + n·20 ms, anchor + (n+1)·20 ms)` and is **due** at
//! `anchor + (n − lead)·20 ms` (saturating at the anchor), so the first `lead + 1` frames go out
//! at once and after that a frame is released exactly when our estimate of Twilio's buffered
//! audio falls to `lead` frames. The estimate ignores network delay, so it is conservative: the
//! real buffer at Twilio is larger by the one-way delay.
//!
//! When the local queue runs empty the schedule keeps running. When new audio is pushed:
//! - before Twilio's estimated buffer has drained (`now < anchor + n·20 ms`, `n` = frames sent
//!   since the anchor), the schedule continues unchanged: no re-anchor, no drift;
//! - after it has drained, the pacer re-anchors at `now` and counts an **underrun** (the producer
//!   was too slow), unless the previous audio ended naturally: the caller declared it complete
//!   with [`Pacer::end_audio`], or a [`Pacer::flush`] happened, or nothing was ever sent.
//!
//! Marks are queued in order with the audio: a mark pushed after frames is released right after
//! the last of those frames; a mark with nothing queued before it is released immediately.
//! [`Pacer::flush`] (barge-in) drops every queued frame and mark, reports how many, and resets the
//! schedule: the caller sends Twilio a `clear`, so the estimate of Twilio's buffer becomes empty
//! and the next audio starts a new anchor.
//!
//! [`Pacer::pause`] stops releasing frames (a caller onset awaiting its check): what Twilio
//! holds plays out and the queue waits, marks behind sent audio still leave, and
//! [`Pacer::poll_timeout`] asks for no wake-up. [`Pacer::resume`] continues the schedule if our
//! estimate says Twilio is still playing (the frames due then restore the lead, at most `lead`
//! of them), and otherwise starts a new one at `now`; either way the wait is neither a late
//! wake-up nor an underrun. A flush ends a pause.
//!
//! # Late wake-up policy (catch-up)
//!
//! A wake-up is a call to [`Pacer::handle_timeout`] or [`Pacer::push_frame`] with a given
//! `now`; all calls with the same `now` are the same wake-up. At each wake-up with `k` deadlines
//! passed (frames due: deadline ≤ `now`):
//!
//! 1. **Catch up.** Every due frame is released immediately; they are all still needed, because
//!    Twilio's buffer has shrunk by the lateness. Frames are never released before their
//!    deadline.
//! 2. **Burst cap.** At most `max_burst` frames (default `lead + 2` = 5) leave in one wake-up. If
//!    the cap stops a catch-up, the rest wait for the next scheduled deadline (strictly after
//!    this wake-up), so a backlog drains at `max_burst` frames per 20 ms tick instead of flooding
//!    the socket.
//! 3. **Re-anchor.** If `k > reanchor_after` (default `reanchor_after = lead`, which is exactly
//!    "our estimate says Twilio's buffer has run dry": `now ≥ anchor + n·20 ms`), the schedule is
//!    broken: Twilio has played a gap and paused. The late frames are still sent, but the anchor
//!    moves to `now` and frame numbering restarts, so the next `lead + 1` frames are due at once
//!    (the lead is restored) and the following ones every 20 ms from `now`, instead of bursting
//!    to replay the missed time. A larger `reanchor_after` trusts the network delay to have kept
//!    Twilio playing for `reanchor_after − lead` more frames; it may not be below `lead`.
//! 4. **Counting.** The lateness of a wake-up is `now − max(deadline, push time)` of the first
//!    frame it releases (a frame pushed after its deadline is not late until it has waited). A
//!    wake-up is **late** when that lateness exceeds `late_threshold` (default 2 ms: above the
//!    1 ms rounding of tokio's timer wheel and the ~0.2 ms wake-up latency of an absolute
//!    `clock_nanosleep`, far below one frame). [`PacerStats`] counts wake-ups that released
//!    frames, late wake-ups, total and maximum lateness (over all releasing wake-ups), catch-up
//!    bursts (late wake-ups releasing more than one frame), capped bursts, re-anchors (late
//!    wake-ups with `k > reanchor_after`) and underruns (re-anchors caused by a starved queue).
//!
//! With the defaults (lead 3, cap 5, re-anchor after 3) a wake-up up to 59 ms late is absorbed
//! with no audible effect and no drift; a longer stall costs one re-anchor.
//!
//! # Assumptions
//!
//! `now` comes from a monotonic clock; a `now` earlier than the previous one is treated as the
//! previous one. Storage is preallocated by [`Pacer::new`]: frames and marks wait in two queues,
//! a frame slot 176 bytes (the frame plus its push instant) and a mark slot 16 bytes (the mark
//! and how many frames were pushed before it, which keeps it in order with the audio), so the
//! default 3,000 frames (60 s of audio) plus 256 marks take about 532 KB per call. Pushing
//! beyond capacity is an error, never an allocation. The hot path (push, timeout, poll) does
//! not allocate, lock, log or format.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use handset_engine::pacer::{Pacer, PacerConfig, Transmit};
//! use handset_engine::{MarkId, MulawFrame};
//!
//! let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
//! let start = Instant::now();
//! for _ in 0..10 {
//!     pacer.push_frame(start, MulawFrame::SILENCE).unwrap();
//! }
//! pacer.push_mark(MarkId(7)).unwrap();
//! let mut sent = 0;
//! while let Some(Transmit::Frame { .. }) = pacer.poll_transmit() {
//!     sent += 1;
//! }
//! assert_eq!(sent, 4); // lead 3 + 1 at the anchor
//! assert_eq!(pacer.poll_timeout(), Some(start + Duration::from_millis(20)));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::frame::{MarkId, MulawFrame};
use crate::time::FRAME;

/// One frame period in nanoseconds.
const FRAME_NANOS: u64 = FRAME.as_nanos() as u64;

/// Pacer settings. Validated once by [`Pacer::new`].
#[derive(Clone, Debug)]
pub struct PacerConfig {
    /// Send-ahead lead in 20 ms frames: a frame is released when our estimate of Twilio's
    /// buffered audio falls to this many frames, and `lead_frames + 1` frames go out at once
    /// when audio starts. Default 3 (60 ms). More lead survives longer stalls; less lead makes
    /// barge-in quieter sooner if a `clear` is lost. Any value is valid.
    pub lead_frames: u32,
    /// Most frames released in one wake-up (one `now`). Default 5 (`lead + 2`). Must be at least
    /// `lead_frames + 1`, so the lead can be restored in one wake-up.
    pub max_burst: u32,
    /// A wake-up that finds more than this many frames overdue re-anchors the schedule at `now`
    /// instead of catching up further. Default 3 (= `lead_frames`: our estimate of Twilio's
    /// buffer has run dry). Must be at least `lead_frames`.
    pub reanchor_after: u32,
    /// Frames the local queue can hold, preallocated (176 bytes each). Default 3,000 (60 s of
    /// audio, about 528 KB). Must be non-zero.
    pub capacity_frames: usize,
    /// Marks the local queue can hold, preallocated (16 bytes each). Default 256. Must be
    /// non-zero.
    pub capacity_marks: usize,
    /// A wake-up whose first release is more than this late is counted as late. Default 2 ms.
    /// Must be below one frame (20 ms).
    pub late_threshold: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            lead_frames: 3,
            max_burst: 5,
            reanchor_after: 3,
            capacity_frames: 3_000,
            capacity_marks: 256,
            late_threshold: Duration::from_millis(2),
        }
    }
}

/// Why a [`PacerConfig`] was rejected.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum PacerConfigError {
    /// The queue storage could not be reserved.
    #[error("cannot preallocate the pacer queue: {slots} slots")]
    Allocation {
        /// Slots requested (frames plus marks).
        slots: usize,
    },
    /// `max_burst` cannot restore the lead in one wake-up.
    #[error("max_burst {max_burst} is below lead_frames + 1 = {needed}")]
    BurstBelowLead {
        /// The configured `max_burst`.
        max_burst: u32,
        /// `lead_frames + 1`.
        needed: u64,
    },
    /// `late_threshold` is not below one frame.
    #[error("late_threshold {threshold:?} is not below one frame (20 ms)")]
    LateThresholdTooLarge {
        /// The configured threshold.
        threshold: Duration,
    },
    /// `reanchor_after` would re-anchor while Twilio still holds the lead.
    #[error("reanchor_after {reanchor_after} is below lead_frames {lead_frames}")]
    ReanchorBeforeLead {
        /// The configured `reanchor_after`.
        reanchor_after: u32,
        /// The configured `lead_frames`.
        lead_frames: u32,
    },
    /// `capacity_frames` is zero.
    #[error("capacity_frames is zero")]
    ZeroCapacity,
    /// `capacity_marks` is zero.
    #[error("capacity_marks is zero")]
    ZeroMarkCapacity,
}

/// Why a push was refused. Nothing was queued.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum PacerError {
    /// The mark queue holds `capacity` marks already.
    #[error("pacer mark queue full: {capacity} marks queued")]
    MarkQueueFull {
        /// The configured mark capacity.
        capacity: usize,
    },
    /// The frame queue holds `capacity` frames already.
    #[error("pacer queue full: {capacity} frames queued")]
    QueueFull {
        /// The configured frame capacity.
        capacity: usize,
    },
}

/// Something to send to Twilio now, in this order.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Transmit {
    /// A 20 ms `media` message.
    Frame {
        /// Frames sent by this pacer before this one (the first frame is 0).
        seq: u64,
        /// The audio.
        frame: MulawFrame,
    },
    /// A `mark` message: every frame pushed before it has been sent.
    Mark(MarkId),
}

/// What [`Pacer::flush`] dropped.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Flushed {
    /// Frames dropped from the local queue.
    pub frames: usize,
    /// Marks dropped from the local queue.
    pub marks: usize,
}

/// Pacer counters since creation. Plain data.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct PacerStats {
    /// Schedules started: first audio, audio after a natural end or flush, underruns and
    /// re-anchors.
    pub anchors: u64,
    /// Wake-ups whose release was capped by `max_burst`, leaving due frames for the next tick.
    pub capped_bursts: u64,
    /// Late wake-ups that released more than one frame.
    pub catch_up_bursts: u64,
    /// Frames dropped by flushes.
    pub frames_flushed: u64,
    /// Frames released by `poll_transmit`.
    pub frames_sent: u64,
    /// Calls to `flush`.
    pub flushes: u64,
    /// Wake-ups whose lateness exceeded `late_threshold`.
    pub late_wakeups: u64,
    /// Marks dropped by flushes.
    pub marks_flushed: u64,
    /// Marks released by `poll_transmit`.
    pub marks_sent: u64,
    /// Largest lateness of any releasing wake-up.
    pub max_lateness: Duration,
    /// Re-anchors after a late wake-up found more than `reanchor_after` frames overdue.
    pub reanchors: u64,
    /// Sum of the lateness of all releasing wake-ups (divide by `wakeups` for the mean).
    pub total_lateness: Duration,
    /// Audio pushed after Twilio's estimated buffer drained mid-speech (no `end_audio`).
    pub underruns: u64,
    /// Wake-ups that released at least one frame.
    pub wakeups: u64,
}

/// A queued frame: the audio and the instant it was pushed.
#[derive(Clone, Copy)]
struct QueuedFrame {
    frame: MulawFrame,
    pushed: Instant,
}

/// A queued mark: it leaves once `after` frames (counted by [`Pacer::frames_in`]) have left.
#[derive(Clone, Copy)]
struct QueuedMark {
    after: u64,
    mark: MarkId,
}

/// Releases queued µ-law frames on an anchored 20 ms schedule with a send-ahead lead. See the
/// module docs for the model and the late wake-up policy.
pub struct Pacer {
    /// Send-ahead lead, in frames.
    lead: u64,
    /// Most frames released per wake-up.
    max_burst: u64,
    /// Overdue frames beyond which a wake-up re-anchors.
    reanchor_after: u64,
    /// Lateness above which a wake-up is counted late.
    late_threshold: Duration,
    /// Capacity of `frames`.
    capacity_frames: usize,
    /// Capacity of `marks`.
    capacity_marks: usize,
    /// Frames in push order; preallocated.
    frames: VecDeque<QueuedFrame>,
    /// Marks in push order, each placed after the frames pushed before it; preallocated.
    marks: VecDeque<QueuedMark>,
    /// Frames pushed since creation.
    frames_in: u64,
    /// Frames that left (polled or flushed) since creation; `frames_in − frames_out` are queued.
    frames_out: u64,
    /// Start of the current schedule; `None` when no schedule runs (new, or after a flush).
    anchor: Option<Instant>,
    /// Frames sent since `anchor`: the number `n` of the next frame.
    next_index: u64,
    /// Frames at the head of `frames` granted for release and not yet polled.
    ready: u64,
    /// The current wake-up instant (latest `now` seen); `None` after a flush.
    wake: Option<Instant>,
    /// Frames polled during the current wake-up.
    polled_at_wake: u64,
    /// Whether the current wake-up's lateness is already in the stats.
    wake_recorded: bool,
    /// Whether the current wake-up was late.
    wake_late: bool,
    /// Whether the current wake-up was already counted as a catch-up burst.
    burst_recorded: bool,
    /// Whether the current wake-up was already counted as capped.
    cap_recorded: bool,
    /// The audio sent so far is complete (`end_audio`), so a drain is not an underrun.
    audio_ended: bool,
    /// No frame is released until [`Pacer::resume`].
    paused: bool,
    /// `seq` of the next frame released.
    next_seq: u64,
    /// When the current wake-up re-anchored a broken schedule: that schedule's anchor and the
    /// index its next frame had on it, so the frames released in this wake-up are still measured
    /// against the deadlines they missed. Cleared by the next wake-up and by a flush.
    broken: Option<(Instant, u64)>,
    /// When the most recently released frame became due: its deadline, or its push instant if
    /// it was pushed after the deadline. `None` before the first frame.
    last_due: Option<Instant>,
    /// Counters.
    stats: PacerStats,
}

impl Pacer {
    /// A pacer with its queue preallocated; nothing is queued and no schedule runs.
    pub fn new(config: &PacerConfig) -> Result<Self, PacerConfigError> {
        let lead = u64::from(config.lead_frames);
        if u64::from(config.max_burst) < lead + 1 {
            return Err(PacerConfigError::BurstBelowLead {
                max_burst: config.max_burst,
                needed: lead + 1,
            });
        }
        if config.reanchor_after < config.lead_frames {
            return Err(PacerConfigError::ReanchorBeforeLead {
                reanchor_after: config.reanchor_after,
                lead_frames: config.lead_frames,
            });
        }
        if config.late_threshold >= FRAME {
            return Err(PacerConfigError::LateThresholdTooLarge {
                threshold: config.late_threshold,
            });
        }
        if config.capacity_frames == 0 {
            return Err(PacerConfigError::ZeroCapacity);
        }
        if config.capacity_marks == 0 {
            return Err(PacerConfigError::ZeroMarkCapacity);
        }
        let slots = config.capacity_frames.saturating_add(config.capacity_marks);
        let mut frames = VecDeque::new();
        let mut marks = VecDeque::new();
        frames
            .try_reserve_exact(config.capacity_frames)
            .and_then(|()| marks.try_reserve_exact(config.capacity_marks))
            .map_err(|_| PacerConfigError::Allocation { slots })?;
        Ok(Self {
            lead,
            max_burst: u64::from(config.max_burst),
            reanchor_after: u64::from(config.reanchor_after),
            late_threshold: config.late_threshold,
            capacity_frames: config.capacity_frames,
            capacity_marks: config.capacity_marks,
            frames,
            marks,
            frames_in: 0,
            frames_out: 0,
            anchor: None,
            next_index: 0,
            ready: 0,
            wake: None,
            polled_at_wake: 0,
            wake_recorded: false,
            wake_late: false,
            burst_recorded: false,
            cap_recorded: false,
            audio_ended: true,
            paused: false,
            next_seq: 0,
            broken: None,
            last_due: None,
            stats: PacerStats::default(),
        })
    }

    /// Queues one frame of agent audio at `now`, anchoring a new schedule if audio starts from
    /// idle, and releasing it at once if it is already due. Drain [`Pacer::poll_transmit`]
    /// afterwards.
    pub fn push_frame(&mut self, now: Instant, frame: MulawFrame) -> Result<(), PacerError> {
        if self.frames.len() >= self.capacity_frames {
            return Err(PacerError::QueueFull {
                capacity: self.capacity_frames,
            });
        }
        let starved = self.frames.is_empty();
        self.frames.push_back(QueuedFrame { frame, pushed: now });
        self.frames_in += 1;
        self.advance(now, starved);
        self.audio_ended = false;
        Ok(())
    }

    /// Queues a mark after everything pushed so far. With nothing queued before it, it is
    /// released by the next [`Pacer::poll_transmit`].
    pub fn push_mark(&mut self, mark: MarkId) -> Result<(), PacerError> {
        self.mark_room()?;
        self.marks.push_back(QueuedMark {
            after: self.frames_in,
            mark,
        });
        Ok(())
    }

    /// Queues a mark ahead of every queued frame: it leaves with the next
    /// [`Pacer::poll_transmit`] and marks the point where the audio sent so far ends (where a
    /// resumed playback continues).
    pub fn push_mark_next(&mut self, mark: MarkId) -> Result<(), PacerError> {
        self.mark_room()?;
        // Every queued mark waits for `after ≥ frames_out`, so the front keeps the order.
        self.marks.push_front(QueuedMark {
            after: self.frames_out,
            mark,
        });
        Ok(())
    }

    /// Stops releasing frames at `now` until [`Pacer::resume`]: Twilio plays what it holds, the
    /// queue waits (pushes still queue), and marks behind audio already sent still leave.
    pub fn pause(&mut self, now: Instant) {
        self.begin_wake(now);
        self.paused = true;
        self.ready = 0;
    }

    /// Whether [`Pacer::pause`] holds the frames.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Releases frames again at `now`: the schedule continues if our estimate says Twilio is
    /// still playing, else a new one starts at `now`. The frames that waited for the pause are
    /// not late, and a drained buffer is not an underrun. Drain [`Pacer::poll_transmit`]
    /// afterwards.
    pub fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        self.paused = false;
        let now = self.begin_wake(now);
        if self.remote_buffered(now).is_zero() {
            self.anchor = None;
            self.next_index = 0;
        }
        // The head frame waited for the pause, not for a late wake-up: no lateness to record.
        // With Twilio still playing, at most `lead` frames are due (the buffer is above zero),
        // so the schedule is not broken either.
        self.wake_recorded = true;
        self.advance(now, false);
    }

    /// Room for one more mark, or the error that says there is none.
    fn mark_room(&self) -> Result<(), PacerError> {
        if self.marks.len() >= self.capacity_marks {
            return Err(PacerError::MarkQueueFull {
                capacity: self.capacity_marks,
            });
        }
        Ok(())
    }

    /// Declares the audio pushed so far complete (end of an utterance): when Twilio's buffer
    /// drains after it, the next audio starts a new schedule without counting an underrun.
    /// Pushing another frame cancels the declaration.
    pub fn end_audio(&mut self) {
        self.audio_ended = true;
    }

    /// Drops everything queued; `on_mark` is called for each dropped mark (in order) so the
    /// caller can report them. Resets the schedule: the caller clears Twilio's buffer, so the
    /// next audio starts a new anchor.
    pub fn flush(&mut self, mut on_mark: impl FnMut(MarkId)) -> Flushed {
        let flushed = Flushed {
            frames: self.frames.len(),
            marks: self.marks.len(),
        };
        self.frames.clear();
        for queued in self.marks.drain(..) {
            on_mark(queued.mark);
        }
        self.frames_out = self.frames_in;
        self.anchor = None;
        self.next_index = 0;
        self.ready = 0;
        self.wake = None;
        self.broken = None;
        self.audio_ended = true;
        self.paused = false;
        self.stats.flushes += 1;
        self.stats.frames_flushed += flushed.frames as u64;
        self.stats.marks_flushed += flushed.marks as u64;
        flushed
    }

    /// When to call [`Pacer::handle_timeout`] next: the next frame's deadline (in the past if
    /// released frames are waiting to be polled), or `None` when no frame is queued or the
    /// pacer is paused.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.frames.is_empty() || self.paused {
            return None;
        }
        // Frames are queued, so `push_frame` has set both the wake-up and the anchor.
        let (wake, anchor) = (self.wake?, self.anchor?);
        if self.ready > 0 {
            return Some(wake);
        }
        let deadline = at(anchor, self.next_index.saturating_sub(self.lead));
        if deadline > wake {
            Some(deadline)
        } else {
            // The burst cap held back due frames: wait for the next tick after this wake-up.
            Some(at(anchor, ticks_since(anchor, wake) + 1))
        }
    }

    /// Wakes the pacer at `now`: due frames become available from [`Pacer::poll_transmit`],
    /// following the late wake-up policy in the module docs.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now, false);
    }

    /// The next frame or mark to send. Drain until `None` after every push and
    /// `handle_timeout`. Frames never leave before their deadline; a mark leaves right after the
    /// last frame pushed before it.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match self.marks.front() {
            Some(&QueuedMark { after, mark }) if after <= self.frames_out => {
                self.marks.pop_front();
                self.stats.marks_sent += 1;
                return Some(Transmit::Mark(mark));
            }
            _ => {}
        }
        let QueuedFrame { frame, pushed } = *self.frames.front()?;
        if self.ready == 0 {
            return None;
        }
        let deadline = match (self.broken, self.anchor) {
            (Some((anchor, index)), _) => {
                at(anchor, (index + self.next_index).saturating_sub(self.lead))
            }
            (None, Some(anchor)) => at(anchor, self.next_index.saturating_sub(self.lead)),
            // Unreachable: frames are granted only on a running schedule.
            (None, None) => pushed,
        };
        self.last_due = Some(deadline.max(pushed));
        self.frames.pop_front();
        self.frames_out += 1;
        self.ready -= 1;
        self.next_index += 1;
        self.polled_at_wake += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.frames_sent += 1;
        Some(Transmit::Frame { seq, frame })
    }

    /// Frames waiting in the local queue (released-but-unpolled frames included).
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Marks waiting in the local queue.
    pub fn queued_marks(&self) -> usize {
        self.marks.len()
    }

    /// Nothing is queued locally and our estimate says Twilio has played everything sent: the
    /// audio has ended naturally.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.frames.is_empty() && self.marks.is_empty() && self.remote_buffered(now).is_zero()
    }

    /// Our estimate of audio buffered at Twilio (sent but not yet played).
    pub fn remote_buffered(&self, now: Instant) -> Duration {
        match self.anchor {
            Some(anchor) => {
                frames(self.next_index).saturating_sub(now.saturating_duration_since(anchor))
            }
            None => Duration::ZERO,
        }
    }

    /// When the frame most recently returned by [`Pacer::poll_transmit`] became due: its
    /// deadline on the schedule, or the instant it was pushed if that was later (a frame cannot
    /// leave before it exists). Frames released by a wake-up that re-anchored a broken schedule
    /// keep the deadlines they missed. `wake − last_release_due` is how late the frame left.
    /// `None` before the first frame.
    pub fn last_release_due(&self) -> Option<Instant> {
        self.last_due
    }

    /// Counters since creation.
    pub fn stats(&self) -> PacerStats {
        self.stats
    }

    /// Grants the frames due at `now` for release. `starved` says the frame queue was empty
    /// before this call (a push), which makes a broken schedule an underrun, not a late wake-up.
    fn advance(&mut self, now: Instant, starved: bool) {
        let now = self.begin_wake(now);
        if self.frames.is_empty() || self.paused {
            return;
        }
        let anchor = match self.anchor {
            Some(anchor) => anchor,
            None => {
                self.start_schedule(now);
                now
            }
        };
        let mut due = self.due(anchor, now);
        if due == 0 {
            return;
        }
        if !self.wake_recorded {
            self.record_lateness(anchor, now);
        }
        // A schedule anchored in this wake-up cannot be broken yet: its first frames are due at
        // the anchor and may still be waiting to be polled.
        if anchor < now && due > self.reanchor_after {
            if !starved {
                self.stats.reanchors += 1;
            } else if !self.audio_ended {
                self.stats.underruns += 1;
            }
            if !starved {
                // The queued frames missed their deadlines on the broken schedule; a starved
                // queue's new frame did not (it was pushed after them).
                self.broken = Some((anchor, self.next_index));
            }
            self.start_schedule(now);
            due = self.lead + 1;
        }
        let wanted = due.min(self.frames.len() as u64);
        self.ready = wanted.min(self.max_burst.saturating_sub(self.polled_at_wake));
        if self.ready < wanted && !self.cap_recorded {
            self.cap_recorded = true;
            self.stats.capped_bursts += 1;
        }
        if self.wake_late && !self.burst_recorded && self.polled_at_wake + self.ready > 1 {
            self.burst_recorded = true;
            self.stats.catch_up_bursts += 1;
        }
    }

    /// Makes `now` (or the latest `now` seen, if earlier) the current wake-up and returns it; a
    /// new wake-up starts with fresh per-wake-up bookkeeping.
    fn begin_wake(&mut self, now: Instant) -> Instant {
        let now = match self.wake {
            Some(wake) if now < wake => wake,
            _ => now,
        };
        if self.wake != Some(now) {
            self.wake = Some(now);
            self.polled_at_wake = 0;
            self.wake_recorded = false;
            self.wake_late = false;
            self.burst_recorded = false;
            self.cap_recorded = false;
            self.broken = None;
        }
        now
    }

    /// Frames due at `now` on the schedule anchored at `anchor`, counted from `next_index`.
    fn due(&self, anchor: Instant, now: Instant) -> u64 {
        let last_due = self.lead.saturating_add(ticks_since(anchor, now));
        last_due.saturating_add(1).saturating_sub(self.next_index)
    }

    /// Adds the current wake-up's lateness (of the head frame, which is due) to the stats.
    fn record_lateness(&mut self, anchor: Instant, now: Instant) {
        let Some(&QueuedFrame { pushed, .. }) = self.frames.front() else {
            return;
        };
        let deadline = at(anchor, self.next_index.saturating_sub(self.lead));
        let lateness = now.saturating_duration_since(deadline.max(pushed));
        self.wake_recorded = true;
        self.wake_late = lateness > self.late_threshold;
        self.stats.wakeups += 1;
        self.stats.total_lateness += lateness;
        self.stats.max_lateness = self.stats.max_lateness.max(lateness);
        if self.wake_late {
            self.stats.late_wakeups += 1;
        }
    }

    /// Starts a schedule at `now`: Twilio's buffer is empty by our estimate.
    fn start_schedule(&mut self, now: Instant) {
        self.anchor = Some(now);
        self.next_index = 0;
        self.stats.anchors += 1;
    }
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("queued_frames", &self.frames.len())
            .field("queued_marks", &self.marks.len())
            .field("anchor", &self.anchor)
            .field("next_index", &self.next_index)
            .field("ready", &self.ready)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The duration of `n` frames.
fn frames(n: u64) -> Duration {
    Duration::from_nanos(n.saturating_mul(FRAME_NANOS))
}

/// `anchor + n·20 ms`.
fn at(anchor: Instant, n: u64) -> Instant {
    // Overflowing `Instant` would need centuries of frames on one schedule; stay at the anchor
    // rather than panic.
    anchor.checked_add(frames(n)).unwrap_or(anchor)
}

/// Whole frame periods from `anchor` to `now` (0 if `now` is earlier).
fn ticks_since(anchor: Instant, now: Instant) -> u64 {
    let ticks = now.saturating_duration_since(anchor).as_nanos() / u128::from(FRAME_NANOS);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
