//! Target `jitter_ops`: the input becomes a configuration and a sequence of insert / pop /
//! time-step operations on `handset_engine::jitter::JitterBuffer`, checked against the
//! buffer's documented contract after every operation.
//!
//! Invariants checked:
//! - `pop(now)` returns a slot exactly when `poll_timeout()` is at or before `now` (so it never
//!   returns a slot before its deadline, and never holds back a due one);
//! - independently of the buffer's bookkeeping, slot `n` is never popped before
//!   `first arrival + initial_delay + n·20 ms` (the documented absolute schedule);
//! - `Playout::at` starts at 0 and advances by exactly 160 samples per popped slot;
//! - received frames play at most once each and in the order they were admitted (every frame
//!   carries its insert index in its payload), and only frames that were admitted;
//! - buffered and max_buffered ≤ capacity; `is_idle` implies nothing is buffered;
//! - counters agree with what the harness saw: inserts = received, pops = played, received pops
//!   = played_received, each admission outcome = its counter, played = played_received +
//!   concealed, and every received frame is in exactly one of duplicate / backwards / late /
//!   overflow / accelerated / played_received / buffered;
//! - the target delay stays within `[min_delay, max_delay]`.
//!
//! Time only moves forward (the buffer assumes one monotonic clock) and the run stops after
//! ten minutes of virtual time so one input stays fast.

use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use handset_engine::jitter::{Admission, JitterBuffer, JitterConfig, PlayoutKind};
use handset_engine::time::{FRAME, FRAME_SAMPLES};
use handset_engine::{InboundMedia, MulawFrame};

/// Virtual time after which an input ends.
const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(600);

/// Configuration knobs; out-of-range combinations are skipped after `validate`.
#[derive(Arbitrary, Debug)]
struct Knobs {
    /// Use `JitterConfig::default()` and ignore the rest.
    default: bool,
    /// `initial_delay` in ms.
    initial_ms: u8,
    /// `min_delay` in ms.
    min_ms: u8,
    /// `max_delay` in 4 ms units.
    max_4ms: u8,
    /// Extra capacity above the minimum, frames.
    extra_capacity: u8,
    /// `max_repeat_frames` (mod 17).
    max_repeat: u8,
    /// `accelerate_after_frames` (0 is mapped to 1).
    accelerate_after: u8,
    /// `idle_after_frames` (0 is mapped to 1).
    idle_after: u8,
    /// `max_backwards_frames` (0 is mapped to 1).
    max_backwards: u8,
    /// `max_jump` in seconds (mapped into 1..=255).
    max_jump_s: u8,
}

impl Knobs {
    fn config(&self) -> JitterConfig {
        if self.default {
            return JitterConfig::default();
        }
        let max_delay = Duration::from_millis(u64::from(self.max_4ms) * 4);
        let min_capacity = max_delay.as_nanos().div_ceil(FRAME.as_nanos()) as usize + 2;
        JitterConfig {
            initial_delay: Duration::from_millis(u64::from(self.initial_ms)),
            min_delay: Duration::from_millis(u64::from(self.min_ms)),
            max_delay,
            capacity_frames: min_capacity + usize::from(self.extra_capacity % 64),
            max_repeat_frames: u32::from(self.max_repeat % 17),
            accelerate_after_frames: u32::from(self.accelerate_after.max(1)),
            idle_after_frames: u32::from(self.idle_after.max(1)),
            max_backwards_frames: u32::from(self.max_backwards.max(1)),
            max_jump: Duration::from_secs(u64::from(self.max_jump_s.max(1))),
            ..JitterConfig::default()
        }
    }
}

/// How the next frame's `chunk` relates to the previous one sent.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ChunkStep {
    Next,
    Same,
    Skip(u8),
    Back(u8),
    Raw(u64),
}

/// How the next frame's `timestamp` relates to the previous one sent.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum TimestampStep {
    Next,
    Same,
    Jitter(i8),
    Skip(u16),
    Back(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Twilio's next frame arrives now.
    Insert {
        chunk: ChunkStep,
        timestamp: TimestampStep,
        loud: bool,
    },
    /// One `pop(now)`.
    Pop,
    /// `pop(now)` until `None`.
    Drain,
    /// Time moves forward by this many ms.
    Step(u8),
    /// Time moves forward by this many µs.
    StepMicros(u16),
    /// Time moves forward by this many 20 ms frames.
    StepFrames(u8),
    /// Time moves to the next deadline (if later), then drain: a well-behaved popper.
    WakeAtDeadline { late_ms: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: Knobs,
    ops: Vec<Op>,
}

/// The harness's view of the buffer.
struct Model {
    jb: JitterBuffer,
    config: JitterConfig,
    start: Instant,
    now: Duration,
    first_arrival: Option<Duration>,
    /// Next expected `Playout::at`, samples.
    next_at: u64,
    /// Numbering of the last frame sent.
    chunk: u64,
    timestamp: u64,
    /// Frames inserted (the next frame's marker).
    inserted: u64,
    /// Marker of each insert's admission, indexed by marker.
    admitted: Vec<bool>,
    /// Marker of the last received frame played.
    last_played: Option<u64>,
    pops: u64,
    received_pops: u64,
    duplicate: u64,
    backwards: u64,
    late: u64,
    overflow: u64,
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
        model.check_stats();
    }
}

impl Model {
    /// A fresh buffer for `config`, or `None` if the configuration is invalid.
    fn new(config: JitterConfig) -> Option<Self> {
        let jb = JitterBuffer::new(&config).ok()?;
        Some(Model {
            jb,
            config,
            start: crate::epoch(),
            now: Duration::ZERO,
            first_arrival: None,
            next_at: 0,
            chunk: 0,
            timestamp: 0,
            inserted: 0,
            admitted: Vec::new(),
            last_played: None,
            pops: 0,
            received_pops: 0,
            duplicate: 0,
            backwards: 0,
            late: 0,
            overflow: 0,
        })
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Insert {
                chunk,
                timestamp,
                loud,
            } => self.insert(chunk, timestamp, loud),
            Op::Pop => {
                self.pop();
            }
            Op::Drain => self.drain(),
            Op::Step(ms) => self.now += Duration::from_millis(u64::from(ms)),
            Op::StepMicros(us) => self.now += Duration::from_micros(u64::from(us)),
            Op::StepFrames(n) => self.now += FRAME * u32::from(n),
            Op::WakeAtDeadline { late_ms } => {
                if let Some(deadline) = self.jb.poll_timeout() {
                    let at = deadline.saturating_duration_since(self.start)
                        + Duration::from_millis(u64::from(late_ms % 80));
                    self.now = self.now.max(at);
                }
                self.drain();
            }
        }
    }

    fn insert(&mut self, chunk: ChunkStep, timestamp: TimestampStep, loud: bool) {
        let first = self.inserted == 0;
        self.chunk = match chunk {
            ChunkStep::Next if first => 1,
            ChunkStep::Next => self.chunk.wrapping_add(1),
            ChunkStep::Same => self.chunk,
            ChunkStep::Skip(n) => self.chunk.wrapping_add(u64::from(n) + 2),
            ChunkStep::Back(n) => self.chunk.wrapping_sub(u64::from(n) + 1),
            ChunkStep::Raw(v) => v,
        };
        self.timestamp = match timestamp {
            TimestampStep::Next => self.timestamp.wrapping_add(20),
            TimestampStep::Same => self.timestamp,
            TimestampStep::Jitter(j) => self.timestamp.wrapping_add_signed(20 + i64::from(j)),
            TimestampStep::Skip(ms) => self.timestamp.wrapping_add(20 + u64::from(ms)),
            TimestampStep::Back(ms) => self.timestamp.wrapping_sub(u64::from(ms) + 1),
            TimestampStep::Raw(v) => v,
        };
        let marker = self.inserted;
        let media = InboundMedia {
            chunk: self.chunk,
            timestamp_ms: self.timestamp,
            payload: marked(marker, loud),
        };
        self.first_arrival.get_or_insert(self.now);
        let admission = self.jb.insert(self.instant(), &media);
        self.inserted += 1;
        let admitted = match admission {
            Admission::Queued => true,
            Admission::Overflow => {
                self.overflow += 1;
                true
            }
            Admission::Duplicate => {
                self.duplicate += 1;
                false
            }
            Admission::Backwards => {
                self.backwards += 1;
                false
            }
            Admission::Late => {
                self.late += 1;
                false
            }
        };
        self.admitted.push(admitted);
    }

    /// One pop, checked; returns whether a slot came out.
    fn pop(&mut self) -> bool {
        let now = self.instant();
        let due = self.jb.poll_timeout();
        let expect_slot = due.is_some_and(|d| d <= now);
        let Some(playout) = self.jb.pop(now) else {
            assert!(
                !expect_slot,
                "pop returned None at {:?} with deadline {:?} passed",
                self.now,
                due.map(|d| d - self.start)
            );
            return false;
        };
        assert!(
            expect_slot,
            "pop returned slot {:?} at {:?} before its deadline {:?}",
            playout.at,
            self.now,
            due.map(|d| d.saturating_duration_since(self.start))
        );
        assert_eq!(playout.at.0, self.next_at, "at did not advance by 160");
        self.next_at += FRAME_SAMPLES as u64;
        let slot = playout.at.0 / FRAME_SAMPLES as u64;
        let first = self.first_arrival.expect("a slot before any frame arrived");
        let schedule = first + self.config.initial_delay + FRAME * u32::try_from(slot).unwrap();
        assert!(
            self.now >= schedule,
            "slot {slot} popped at {:?}, scheduled for {schedule:?}",
            self.now
        );
        self.pops += 1;
        if playout.kind == PlayoutKind::Received {
            self.received_pops += 1;
            let marker = marker(&playout.frame);
            assert!(
                self.admitted.get(marker as usize) == Some(&true),
                "played frame {marker} was never admitted"
            );
            if let Some(last) = self.last_played {
                assert!(marker > last, "frame {marker} played after frame {last}");
            }
            self.last_played = Some(marker);
        }
        true
    }

    fn drain(&mut self) {
        while self.pop() {}
    }

    fn check_stats(&self) {
        let s = self.jb.stats();
        let capacity = self.config.capacity_frames as u64;
        assert!(s.buffered <= capacity, "{s:?}");
        assert!(s.max_buffered <= capacity, "{s:?}");
        assert!(s.buffered <= s.max_buffered, "{s:?}");
        assert_eq!(s.received, self.inserted, "{s:?}");
        assert_eq!(s.played, self.pops, "{s:?}");
        assert_eq!(s.played_received, self.received_pops, "{s:?}");
        assert_eq!(s.played, s.played_received + s.concealed, "{s:?}");
        assert_eq!(
            (s.duplicate, s.backwards, s.late, s.overflow),
            (self.duplicate, self.backwards, self.late, self.overflow),
            "admission counters"
        );
        assert_eq!(
            s.received,
            s.duplicate
                + s.backwards
                + s.late
                + s.overflow
                + s.accelerated
                + s.played_received
                + s.buffered,
            "{s:?}"
        );
        assert!(s.idle_concealed <= s.concealed, "{s:?}");
        assert!(s.concealment_events <= s.concealed, "{s:?}");
        assert!(s.decelerated + s.expanded <= s.concealed, "{s:?}");
        assert!(
            s.target_delay >= self.config.min_delay && s.target_delay <= self.config.max_delay,
            "{s:?}"
        );
        if self.jb.is_idle() {
            assert_eq!(s.buffered, 0, "idle with frames buffered");
        }
    }
}

/// A frame carrying `marker` in its first 8 bytes as µ-law codes near 0xFF (quiet), so it
/// survives untouched when played as received. The rest is silence or the loudest code.
fn marked(marker: u64, loud: bool) -> MulawFrame {
    let mut frame = MulawFrame([if loud { 0x80 } else { 0xFF }; FRAME_SAMPLES]);
    for (i, byte) in frame.0[..16].iter_mut().enumerate() {
        *byte = 0xF0 | ((marker >> (4 * i)) & 0x0F) as u8;
    }
    frame
}

fn marker(frame: &MulawFrame) -> u64 {
    frame.0[..16]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, b)| acc | (u64::from(b & 0x0F) << (4 * i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for m in [0, 1, 0xABCD, u64::MAX] {
            assert_eq!(marker(&marked(m, true)), m);
        }
    }

    #[test]
    fn steady_stream_runs_every_check() {
        let mut model = Model::new(JitterConfig::default()).unwrap();
        let mut model_input = Vec::new();
        for _ in 0..200 {
            model_input.push(Op::Insert {
                chunk: ChunkStep::Next,
                timestamp: TimestampStep::Next,
                loud: true,
            });
            model_input.push(Op::Step(20));
            model_input.push(Op::Drain);
        }
        model_input.push(Op::Insert {
            chunk: ChunkStep::Same,
            timestamp: TimestampStep::Next,
            loud: true,
        });
        for op in &model_input {
            model.apply(op);
            model.check_stats();
        }
        assert!(model.received_pops >= 190);
        assert_eq!(model.duplicate, 1);
    }
}
