//! The property test: any schedule of pushes, marks, flushes, pauses and wake-ups keeps
//! order, never releases early or in oversized bursts, and counts what it sent and dropped,
//! each output checked against independent models of Twilio's playback.

use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// Push this many frames now.
    Push(u8),
    /// Push a mark now.
    Mark,
    /// Declare the audio complete.
    End,
    /// Barge-in.
    Flush,
    /// Hold the frames (a caller onset awaiting its check).
    Pause,
    /// Release them again, with a mark at the resume point.
    Resume,
    /// Wake at the pacer's deadline plus this lateness (µs).
    Timer(u32),
    /// Let this much time pass (µs), then wake.
    Wait(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..12).prop_map(Op::Push),
        2 => Just(Op::Mark),
        1 => Just(Op::End),
        1 => Just(Op::Flush),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        6 => prop_oneof![3 => 0u32..6_000, 1 => 0u32..120_000].prop_map(Op::Timer),
        2 => (0u32..150_000).prop_map(Op::Wait),
    ]
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Item {
    Frame(u64),
    Mark(u64),
}

/// Checks one output against independent models of Twilio's playback.
struct Checker {
    lead: Duration,
    exact: bool,
    max_burst: u32,
    /// Pushed, not yet sent or flushed, in push order.
    expected: VecDeque<Item>,
    /// Twilio's playback end if it pauses when starved (exact when `reanchor_after == lead`).
    twilio_end: Option<Instant>,
    /// Playback end if Twilio never paused since the last flush (a lower bound).
    steady_end: Option<Instant>,
    /// Frames sent per (flush epoch, instant).
    bursts: HashMap<(u64, Instant), u32>,
    epoch: u64,
    next_seq: u64,
    paused: bool,
}

impl Checker {
    fn sent(&mut self, now: Instant, transmit: Transmit) -> Result<(), TestCaseError> {
        match transmit {
            Transmit::Frame { seq, frame } => {
                prop_assert!(!self.paused, "a frame left while paused");
                prop_assert_eq!(seq, self.next_seq);
                self.next_seq += 1;
                prop_assert_eq!(self.expected.pop_front(), Some(Item::Frame(id_of(&frame))));
                let buffered = self
                    .twilio_end
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                let steady = self
                    .steady_end
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                prop_assert!(
                    steady <= self.lead,
                    "early release: steady buffer {:?}",
                    steady
                );
                if self.exact {
                    prop_assert!(
                        buffered <= self.lead,
                        "early release: twilio holds {:?}",
                        buffered
                    );
                }
                self.twilio_end = Some(self.twilio_end.map_or(now, |e| e.max(now)) + FRAME);
                self.steady_end = Some(self.steady_end.unwrap_or(now) + FRAME);
                let burst = self.bursts.entry((self.epoch, now)).or_default();
                *burst += 1;
                prop_assert!(*burst <= self.max_burst, "burst of {} frames", burst);
            }
            Transmit::Mark(MarkId(m)) => {
                prop_assert_eq!(self.expected.pop_front(), Some(Item::Mark(m)));
            }
        }
        Ok(())
    }

    fn drain(&mut self, pacer: &mut Pacer, now: Instant) -> Result<(), TestCaseError> {
        while let Some(t) = pacer.poll_transmit() {
            self.sent(now, t)?;
        }
        if self.paused {
            prop_assert_eq!(pacer.poll_timeout(), None);
        } else if self.exact && pacer.queued_frames() > 0 {
            // Nothing due is held back, and the next deadline is exactly when Twilio's
            // buffer falls to the lead.
            let end = self.twilio_end.unwrap_or(now);
            prop_assert!(
                end.saturating_duration_since(now) > self.lead,
                "due frame held back"
            );
            prop_assert_eq!(pacer.poll_timeout(), Some(end - self.lead));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pacer_keeps_schedule_order_and_counts_for_any_schedule(
        lead in 0u32..5,
        extra_burst in 0u32..4,
        extra_reanchor in prop_oneof![2 => Just(0u32), 1 => 0u32..5],
        capacity in 1usize..64,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let config = PacerConfig {
            lead_frames: lead,
            max_burst: lead + 1 + extra_burst,
            reanchor_after: lead + extra_reanchor,
            capacity_frames: capacity,
            capacity_marks: 8,
            ..PacerConfig::default()
        };
        let mut pacer = Pacer::new(&config).unwrap();
        let mut check = Checker {
            lead: FRAME * lead,
            exact: extra_reanchor == 0,
            max_burst: config.max_burst,
            expected: VecDeque::new(),
            twilio_end: None,
            steady_end: None,
            bursts: HashMap::new(),
            epoch: 0,
            next_seq: 0,
            paused: false,
        };
        let mut now = base();
        let (mut frames_in, mut next_id, mut marks_in) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Push(n) => {
                    for _ in 0..n {
                        let id = next_id;
                        next_id += 1;
                        match pacer.push_frame(now, frame(id)) {
                            Ok(()) => {
                                frames_in += 1;
                                check.expected.push_back(Item::Frame(id));
                            }
                            Err(e) => prop_assert_eq!(e, PacerError::QueueFull { capacity }),
                        }
                        check.drain(&mut pacer, now)?;
                    }
                }
                Op::Mark => {
                    let id = marks_in;
                    if pacer.push_mark(MarkId(id)).is_ok() {
                        marks_in += 1;
                        check.expected.push_back(Item::Mark(id));
                    }
                    check.drain(&mut pacer, now)?;
                }
                Op::End => pacer.end_audio(),
                Op::Flush => {
                    let mut marks = Vec::new();
                    let flushed = pacer.flush(|m| marks.push(Item::Mark(m.0)));
                    let frames = check.expected.iter().filter(|i| matches!(i, Item::Frame(_))).count();
                    let expected_marks: Vec<_> =
                        check.expected.iter().copied().filter(|i| matches!(i, Item::Mark(_))).collect();
                    prop_assert_eq!(flushed, Flushed { frames, marks: expected_marks.len() });
                    prop_assert_eq!(marks, expected_marks);
                    check.expected.clear();
                    check.twilio_end = None;
                    check.steady_end = None;
                    check.epoch += 1;
                    check.paused = false;
                    prop_assert_eq!(pacer.poll_timeout(), None);
                }
                Op::Pause => {
                    pacer.pause(now);
                    check.paused = true;
                    check.drain(&mut pacer, now)?;
                }
                Op::Resume => {
                    if check.paused {
                        let id = marks_in;
                        if pacer.push_mark_next(MarkId(id)).is_ok() {
                            marks_in += 1;
                            check.expected.push_front(Item::Mark(id));
                        }
                    }
                    pacer.resume(now);
                    check.paused = false;
                    check.drain(&mut pacer, now)?;
                }
                Op::Timer(late) => {
                    if let Some(deadline) = pacer.poll_timeout() {
                        now = deadline.max(now) + Duration::from_micros(late.into());
                        pacer.handle_timeout(now);
                        check.drain(&mut pacer, now)?;
                    }
                }
                Op::Wait(us) => {
                    now += Duration::from_micros(us.into());
                    pacer.handle_timeout(now);
                    check.drain(&mut pacer, now)?;
                }
            }
        }
        // Play everything out on time.
        pacer.resume(now);
        check.paused = false;
        check.drain(&mut pacer, now)?;
        while let Some(deadline) = pacer.poll_timeout() {
            now = deadline.max(now);
            pacer.handle_timeout(now);
            check.drain(&mut pacer, now)?;
        }
        prop_assert!(check.expected.is_empty());
        let stats = pacer.stats();
        prop_assert_eq!(stats.frames_sent, frames_in - stats.frames_flushed);
        prop_assert_eq!(stats.marks_sent, marks_in - stats.marks_flushed);
        prop_assert_eq!(stats.frames_sent, check.next_seq);
        prop_assert!(pacer.is_idle(now + FRAME * (lead + 1)));
    }
}
