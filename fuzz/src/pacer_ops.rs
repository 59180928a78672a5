//! Target `pacer_ops`: the input becomes a configuration and a sequence of push_frame /
//! push_mark / end_audio / flush / handle_timeout / poll_transmit / time-step operations on
//! `handset_engine::pacer::Pacer`, checked against a reference model of the documented schedule.
//!
//! The model follows the module docs: a schedule is anchored when audio starts with no schedule
//! running (first audio, or after a flush), frame `n` since the anchor is due at
//! `anchor + (n − lead)·20 ms` (saturating at the anchor), and a wake-up `now` (clamped to the
//! latest `now` seen) that finds more than `reanchor_after` deadlines passed on an older anchor
//! re-anchors at `now`. The model's anchor is cross-checked against the pacer's
//! `remote_buffered(now)` after every operation.
//!
//! Invariants checked:
//! - no frame is released before its deadline on the model's schedule;
//! - no more than `max_burst` frames are released per wake-up (a flush starts a new one);
//! - frames and marks come out in push order (every frame carries its push index), `seq`
//!   counts released frames from 0, and a mark at the head of the queue is released at once;
//! - frames out = frames in − flushed − still queued (and the same for marks), matching the
//!   stats, `queued_frames`/`queued_marks` and what `flush` reports and hands to its callback;
//! - pushes fail exactly when the queue is at capacity;
//! - `poll_timeout` is `None` exactly when no frame is queued, and waking at it (or later)
//!   releases at least one frame (the pacer never stalls with audio queued).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use handset_engine::pacer::{Pacer, PacerConfig, PacerError, Transmit};
use handset_engine::time::{FRAME, FRAME_SAMPLES};
use handset_engine::{MarkId, MulawFrame};

/// Virtual time after which an input ends.
const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(600);

/// Configuration knobs; invalid combinations are skipped by `Pacer::new`.
#[derive(Arbitrary, Debug)]
struct Knobs {
    /// Use `PacerConfig::default()` and ignore the rest.
    default: bool,
    /// `lead_frames` (mod 8).
    lead: u8,
    /// Extra `max_burst` above `lead + 1` (mod 8).
    extra_burst: u8,
    /// Extra `reanchor_after` above `lead` (mod 8).
    extra_reanchor: u8,
    /// `capacity_frames` (mod 64, 0 mapped to 1).
    capacity_frames: u8,
    /// `capacity_marks` (mod 16, 0 mapped to 1).
    capacity_marks: u8,
}

impl Knobs {
    fn config(&self) -> PacerConfig {
        if self.default {
            return PacerConfig::default();
        }
        let lead = u32::from(self.lead % 8);
        PacerConfig {
            lead_frames: lead,
            max_burst: lead + 1 + u32::from(self.extra_burst % 8),
            reanchor_after: lead + u32::from(self.extra_reanchor % 8),
            capacity_frames: usize::from((self.capacity_frames % 64).max(1)),
            capacity_marks: usize::from((self.capacity_marks % 16).max(1)),
            ..PacerConfig::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `push_frame(now)` of the next frame.
    PushFrame,
    /// `push_frame(now)` of several frames (mod 16) at once.
    PushFrames(u8),
    /// `push_mark` of the next mark.
    PushMark,
    /// `end_audio()`.
    EndAudio,
    /// `flush` (barge-in).
    Flush,
    /// `handle_timeout(now)`.
    Timeout,
    /// One `poll_transmit`.
    Poll,
    /// `poll_transmit` until `None`.
    Drain,
    /// Time moves forward by this many ms.
    Step(u8),
    /// Time moves forward by this many µs.
    StepMicros(u16),
    /// Time moves forward by this many 20 ms frames.
    StepFrames(u8),
    /// Time moves back by this many ms (a non-monotonic caller; the pacer clamps).
    StepBack(u8),
    /// Time moves to `poll_timeout()` (if later) plus some lateness, then
    /// `handle_timeout` and drain: a well-behaved driver.
    WakeAtDeadline { late_us: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: Knobs,
    ops: Vec<Op>,
}

/// What the model expects at the head of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Frame(u64),
    Mark(u64),
}

/// The reference model of the pacer, plus the harness's counters.
struct Model {
    pacer: Pacer,
    config: PacerConfig,
    start: Instant,
    /// The harness clock (may move back; the pacer clamps).
    now: Duration,
    /// The current wake-up (latest `now` seen since the last flush).
    wake: Option<Duration>,
    /// Frames released in the current wake-up.
    polled_at_wake: u64,
    /// Current anchor; `None` when no schedule runs.
    anchor: Option<Duration>,
    /// Frames released since the anchor.
    n: u64,
    /// Pushed and not yet released or flushed, in order.
    queue: VecDeque<Item>,
    frames_in: u64,
    marks_in: u64,
    frames_out: u64,
    marks_out: u64,
    frames_flushed: u64,
    marks_flushed: u64,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Some(mut model) = Model::new(input.knobs.config()) else {
        return;
    };
    for op in &input.ops {
        if model.now > MAX_VIRTUAL_TIME {
            break;
        }
        model.apply(op);
        model.check();
    }
}

impl Model {
    /// A fresh pacer for `config`, or `None` if the configuration is invalid.
    fn new(config: PacerConfig) -> Option<Self> {
        let pacer = Pacer::new(&config).ok()?;
        Some(Self {
            pacer,
            config,
            start: crate::epoch(),
            now: Duration::ZERO,
            wake: None,
            polled_at_wake: 0,
            anchor: None,
            n: 0,
            queue: VecDeque::new(),
            frames_in: 0,
            marks_in: 0,
            frames_out: 0,
            marks_out: 0,
            frames_flushed: 0,
            marks_flushed: 0,
        })
    }

    fn lead(&self) -> u64 {
        u64::from(self.config.lead_frames)
    }

    fn queued_frames(&self) -> usize {
        self.queue
            .iter()
            .filter(|i| matches!(i, Item::Frame(_)))
            .count()
    }

    fn queued_marks(&self) -> usize {
        self.queue.len() - self.queued_frames()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::PushFrame => self.push_frame(),
            Op::PushFrames(k) => {
                for _ in 0..k % 16 {
                    self.push_frame();
                }
            }
            Op::PushMark => self.push_mark(),
            Op::EndAudio => self.pacer.end_audio(),
            Op::Flush => self.flush(),
            Op::Timeout => self.timeout(),
            Op::Poll => {
                self.poll();
            }
            Op::Drain => while self.poll() {},
            Op::Step(ms) => self.now += Duration::from_millis(u64::from(ms)),
            Op::StepMicros(us) => self.now += Duration::from_micros(u64::from(us)),
            Op::StepFrames(k) => self.now += FRAME * u32::from(k),
            Op::StepBack(ms) => {
                self.now = self
                    .now
                    .saturating_sub(Duration::from_millis(u64::from(ms)));
            }
            Op::WakeAtDeadline { late_us } => self.wake_at_deadline(late_us),
        }
    }

    /// The model's side of a wake-up at the harness's `now` (push or timeout).
    fn advance(&mut self) {
        let now = match self.wake {
            Some(wake) if self.now < wake => wake,
            _ => self.now,
        };
        if self.wake != Some(now) {
            self.wake = Some(now);
            self.polled_at_wake = 0;
        }
        if self.queued_frames() == 0 {
            return;
        }
        let anchor = *self.anchor.get_or_insert(now);
        let ticks = ticks(now - anchor);
        let due = (self.lead() + ticks + 1).saturating_sub(self.n);
        if due > 0 && anchor < now && due > u64::from(self.config.reanchor_after) {
            self.anchor = Some(now);
            self.n = 0;
        }
    }

    fn push_frame(&mut self) {
        let marker = self.frames_in;
        let result = self.pacer.push_frame(self.instant(), marked(marker));
        if self.queued_frames() >= self.config.capacity_frames {
            assert_eq!(
                result,
                Err(PacerError::QueueFull {
                    capacity: self.config.capacity_frames
                })
            );
            return;
        }
        assert_eq!(result, Ok(()), "push refused below capacity");
        self.queue.push_back(Item::Frame(marker));
        self.frames_in += 1;
        self.advance();
    }

    fn push_mark(&mut self) {
        let id = self.marks_in;
        let result = self.pacer.push_mark(MarkId(id));
        if self.queued_marks() >= self.config.capacity_marks {
            assert_eq!(
                result,
                Err(PacerError::MarkQueueFull {
                    capacity: self.config.capacity_marks
                })
            );
            return;
        }
        assert_eq!(result, Ok(()), "mark refused below capacity");
        self.queue.push_back(Item::Mark(id));
        self.marks_in += 1;
    }

    fn flush(&mut self) {
        let mut dropped_marks = Vec::new();
        let flushed = self.pacer.flush(|m| dropped_marks.push(m.0));
        let expected_marks: Vec<u64> = self
            .queue
            .iter()
            .filter_map(|i| match i {
                Item::Mark(id) => Some(*id),
                Item::Frame(_) => None,
            })
            .collect();
        assert_eq!(flushed.frames, self.queued_frames(), "flushed frames");
        assert_eq!(flushed.marks, expected_marks.len(), "flushed marks");
        assert_eq!(dropped_marks, expected_marks, "marks handed to on_mark");
        self.frames_flushed += flushed.frames as u64;
        self.marks_flushed += flushed.marks as u64;
        self.queue.clear();
        self.anchor = None;
        self.n = 0;
        self.wake = None;
        self.polled_at_wake = 0;
    }

    fn timeout(&mut self) {
        self.pacer.handle_timeout(self.instant());
        self.advance();
    }

    /// One `poll_transmit`, checked; returns whether something came out.
    fn poll(&mut self) -> bool {
        let Some(transmit) = self.pacer.poll_transmit() else {
            assert!(
                !matches!(self.queue.front(), Some(Item::Mark(_))),
                "a mark at the head of the queue was held back"
            );
            return false;
        };
        let head = self.queue.pop_front();
        match transmit {
            Transmit::Mark(mark) => {
                assert_eq!(head, Some(Item::Mark(mark.0)), "mark out of order");
                self.marks_out += 1;
            }
            Transmit::Frame { seq, frame } => {
                assert_eq!(
                    head,
                    Some(Item::Frame(marker(&frame))),
                    "frame out of order"
                );
                assert_eq!(seq, self.frames_out, "seq does not count released frames");
                let wake = self.wake.expect("a frame released before any wake-up");
                let anchor = self.anchor.expect("a frame released with no schedule");
                let deadline =
                    anchor + FRAME * u32::try_from(self.n.saturating_sub(self.lead())).unwrap();
                assert!(
                    deadline <= wake,
                    "frame {} of the schedule anchored at {anchor:?} released at {wake:?}, due {deadline:?}",
                    self.n
                );
                self.polled_at_wake += 1;
                assert!(
                    self.polled_at_wake <= u64::from(self.config.max_burst),
                    "{} frames released in the wake-up at {wake:?} (max_burst {})",
                    self.polled_at_wake,
                    self.config.max_burst
                );
                self.n += 1;
                self.frames_out += 1;
            }
        }
        true
    }

    fn wake_at_deadline(&mut self, late_us: u16) {
        let had_frames = self.queued_frames() > 0;
        let Some(deadline) = self.pacer.poll_timeout() else {
            assert!(!had_frames, "frames queued but no timeout");
            return;
        };
        let at = deadline.saturating_duration_since(self.start)
            + Duration::from_micros(u64::from(late_us % 50_000));
        self.now = self.now.max(at);
        self.timeout();
        let before = self.frames_out;
        while self.poll() {}
        assert!(
            self.frames_out > before,
            "woke at the pacer's deadline {:?} and nothing was released",
            deadline.saturating_duration_since(self.start)
        );
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    fn check(&self) {
        let s = self.pacer.stats();
        assert_eq!(self.pacer.queued_frames(), self.queued_frames());
        assert_eq!(self.pacer.queued_marks(), self.queued_marks());
        assert_eq!(s.frames_sent, self.frames_out);
        assert_eq!(s.marks_sent, self.marks_out);
        assert_eq!(s.frames_flushed, self.frames_flushed);
        assert_eq!(s.marks_flushed, self.marks_flushed);
        assert_eq!(
            self.frames_out,
            self.frames_in - self.frames_flushed - self.queued_frames() as u64
        );
        assert_eq!(
            self.marks_out,
            self.marks_in - self.marks_flushed - self.queued_marks() as u64
        );
        assert_eq!(
            self.pacer.poll_timeout().is_none(),
            self.queued_frames() == 0,
            "poll_timeout disagrees with the queue"
        );
        // Cross-check the model's schedule against the pacer's estimate of Twilio's buffer.
        let now = self.instant();
        let expected = match self.anchor {
            Some(anchor) => (FRAME * u32::try_from(self.n).unwrap())
                .saturating_sub(self.now.saturating_sub(anchor)),
            None => Duration::ZERO,
        };
        assert_eq!(
            self.pacer.remote_buffered(now),
            expected,
            "the pacer's schedule differs from the model's (anchor {:?}, n {})",
            self.anchor,
            self.n
        );
    }
}

/// Whole frame periods in `d`.
fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / FRAME.as_nanos()).unwrap_or(u64::MAX)
}

/// A frame carrying `marker` in its first 8 bytes.
fn marked(marker: u64) -> MulawFrame {
    let mut frame = MulawFrame::SILENCE;
    frame.0[..8].copy_from_slice(&marker.to_le_bytes());
    frame
}

fn marker(frame: &MulawFrame) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&frame.0[..8]);
    u64::from_le_bytes(bytes)
}

const _: () = assert!(FRAME_SAMPLES >= 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_speech_with_marks_and_barge_in_runs_every_check() {
        let mut model = Model::new(PacerConfig::default()).unwrap();
        let mut ops = vec![Op::PushFrames(10), Op::PushMark, Op::Drain];
        for _ in 0..20 {
            ops.extend([Op::WakeAtDeadline { late_us: 300 }, Op::PushFrame]);
        }
        ops.extend([
            Op::PushMark,
            Op::Flush,
            Op::Step(5),
            Op::PushFrames(3),
            Op::Drain,
        ]);
        for op in &ops {
            model.apply(op);
            model.check();
        }
        assert_eq!(model.marks_out, 1);
        assert_eq!(model.marks_flushed, 1);
        assert!(model.frames_out >= 24, "{}", model.frames_out);
    }

    #[test]
    fn late_wake_up_with_a_backlog_runs_every_check() {
        let mut model = Model::new(PacerConfig::default()).unwrap();
        let ops = [
            Op::PushFrames(15),
            Op::Drain,
            Op::StepFrames(12),
            Op::Timeout,
            Op::Drain,
            Op::StepBack(30),
            Op::Timeout,
            Op::Drain,
            Op::WakeAtDeadline { late_us: 0 },
        ];
        for op in &ops {
            model.apply(op);
            model.check();
        }
        assert!(model.frames_out >= 9 && model.frames_out < 15);
    }
}
