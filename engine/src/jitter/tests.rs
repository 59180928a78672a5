use super::*;
use crate::time::FRAME_SAMPLES;
use proptest::prelude::*;

const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// An arbitrary origin for virtual time: only differences matter to the buffer.
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// A frame whose first 8 bytes carry `chunk`, so tests can tell which frame played. Quiet
/// frames are otherwise silence; loud ones use the loudest µ-law code.
fn marked(chunk: u64, loud: bool) -> MulawFrame {
    let mut frame = MulawFrame([if loud { 0x80 } else { 0xFF }; FRAME_SAMPLES]);
    frame.0[..8].copy_from_slice(&chunk.to_le_bytes());
    frame
}

fn marker(frame: &MulawFrame) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&frame.0[..8]);
    u64::from_le_bytes(bytes)
}

/// Twilio's numbering for the frame generated at `20·(k − 1)` ms: chunk k, timestamp offset 5.
fn media(chunk: u64) -> InboundMedia {
    InboundMedia {
        chunk,
        timestamp_ms: 5 + 20 * (chunk - 1),
        payload: marked(chunk, false),
    }
}

/// Output of a virtual-time run.
struct Run {
    jb: JitterBuffer,
    /// Admission of each arrival, in arrival order.
    admissions: Vec<Admission>,
    /// Every popped slot with the virtual time it was popped at.
    out: Vec<(Duration, Playout)>,
}

impl Run {
    fn received_markers(&self) -> Vec<u64> {
        self.out
            .iter()
            .filter(|(_, p)| p.kind == PlayoutKind::Received)
            .map(|(_, p)| marker(&p.frame))
            .collect()
    }

    fn slot_of(&self, chunk: u64) -> u64 {
        self.out
            .iter()
            .find(|(_, p)| p.kind == PlayoutKind::Received && marker(&p.frame) == chunk)
            .map(|(_, p)| p.at.0 / FRAME_SAMPLES as u64)
            .unwrap_or_else(|| panic!("chunk {chunk} never played"))
    }
}

/// Feeds `arrivals` (sorted by time) at their virtual times and pops every slot at its
/// deadline until `end`; arrivals at a deadline are inserted before the pop.
fn run(config: &JitterConfig, arrivals: &[(Duration, InboundMedia)], end: Duration) -> Run {
    let start = epoch();
    let mut jb = JitterBuffer::new(config).unwrap();
    let mut admissions = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let arrival = arrivals.get(i).map(|a| a.0);
        let deadline = jb.poll_timeout().map(|t| t - start);
        let t = match (arrival, deadline) {
            (Some(a), Some(d)) => a.min(d),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => break,
        };
        if t > end {
            break;
        }
        let now = start + t;
        while i < arrivals.len() && arrivals[i].0 == t {
            admissions.push(jb.insert(now, &arrivals[i].1));
            i += 1;
        }
        while let Some(p) = jb.pop(now) {
            out.push((t, p));
        }
    }
    Run {
        jb,
        admissions,
        out,
    }
}

/// Chunks `1..=count` arriving at their generation time plus `delay(k)`, kept monotone (TCP).
fn schedule(count: u64, delay: impl Fn(u64) -> Duration) -> Vec<(Duration, InboundMedia)> {
    let mut last = Duration::ZERO;
    (1..=count)
        .map(|k| {
            last = last.max(ms(20 * (k - 1)) + delay(k));
            (last, media(k))
        })
        .collect()
}

fn assert_contiguous(run: &Run) {
    for (i, (_, p)) in run.out.iter().enumerate() {
        assert_eq!(p.at, SampleTime::from_frames(i as u64), "slot {i}");
    }
}

#[test]
fn new_validates_the_config_and_starts_at_the_initial_delay() {
    let bad = JitterConfig {
        capacity_frames: 0,
        ..JitterConfig::default()
    };
    assert!(matches!(
        JitterBuffer::new(&bad),
        Err(JitterConfigError::Capacity { got: 0, .. })
    ));
    let config = JitterConfig {
        initial_delay: ms(60),
        ..JitterConfig::default()
    };
    let jb = JitterBuffer::new(&config).unwrap();
    assert_eq!(jb.target_delay(), ms(60));
    assert!(!jb.is_idle());
}

#[test]
fn received_slots_carry_their_arrival_instant_and_concealed_slots_none() {
    // Chunk 4 never arrives; the others arrive with varying delay.
    let arrivals: Vec<_> = schedule(8, |k| ms(3 * (k % 3)))
        .into_iter()
        .filter(|(_, m)| m.chunk != 4)
        .collect();
    let run = run(&JitterConfig::default(), &arrivals, ms(400));
    let first = run.out[0].1.arrived.expect("chunk 1 was received");
    let mut concealed = 0;
    for (_, p) in &run.out {
        match p.kind {
            PlayoutKind::Received => {
                let chunk = marker(&p.frame);
                let sent = arrivals.iter().find(|(_, m)| m.chunk == chunk).unwrap().0;
                assert_eq!(p.arrived.unwrap() - first, sent - arrivals[0].0, "{chunk}");
            }
            PlayoutKind::Concealed => {
                assert_eq!(p.arrived, None);
                concealed += 1;
            }
        }
    }
    assert!(concealed >= 1);
    assert_eq!(run.received_markers(), vec![1, 2, 3, 5, 6, 7, 8]);
}

#[test]
fn nothing_is_due_before_the_first_frame() {
    let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
    let t = epoch();
    assert_eq!(jb.poll_timeout(), None);
    assert!(jb.pop(t + ms(1000)).is_none());
    assert_eq!(
        jb.stats(),
        JitterBuffer::new(&JitterConfig::default()).unwrap().stats()
    );
}

#[test]
fn first_frame_plays_initial_delay_after_it_arrived() {
    let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
    let t = epoch();
    assert_eq!(jb.insert(t, &media(1)), Admission::Queued);
    assert_eq!(jb.poll_timeout(), Some(t + ms(40)));
    assert!(jb.pop(t + ms(39)).is_none());
    let p = jb.pop(t + ms(40)).unwrap();
    assert_eq!(
        (p.at, p.kind, marker(&p.frame)),
        (SampleTime(0), PlayoutKind::Received, 1)
    );
    assert_eq!(jb.poll_timeout(), Some(t + ms(60)));
}

#[test]
fn steady_arrivals_play_without_concealment_and_settle_at_min_delay() {
    // 10 s of frames with 0–4 ms of arrival jitter.
    let arrivals = schedule(500, |k| ms(k * 7919 % 5));
    let r = run(&JitterConfig::default(), &arrivals, ms(9_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert_eq!(s.concealed, 0);
    assert_eq!(s.late, 0);
    assert_eq!(r.jb.target_delay(), ms(20));
    assert!(
        s.playout_delay >= ms(20) && s.playout_delay < ms(40),
        "{s:?}"
    );
    assert_eq!(
        s.accelerated, 1,
        "40 ms initial delay shrinks to the 20 ms floor once"
    );
    let played = r.received_markers();
    assert!(played.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.played_received + s.accelerated + s.buffered, 500);
    assert!(r.admissions.iter().all(|a| *a == Admission::Queued));
}

#[test]
fn bursty_arrivals_grow_the_target_to_cover_the_burst_then_play_steadily() {
    // Twilio delivers every 100 ms whatever was generated since: 5 frames per burst, and the
    // first frame arrives alone, so the initial 40 ms is too short.
    let arrivals = schedule(750, |k| {
        let generated = 20 * (k - 1);
        ms(generated.div_ceil(100) * 100 - generated)
    });
    let r = run(&JitterConfig::default(), &arrivals, ms(15_000));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert_eq!(s.max_burst, 5);
    assert!(
        s.concealed > 0 && s.decelerated > 0,
        "adaptation was needed: {s:?}"
    );
    assert!(r.jb.target_delay() >= ms(80), "{:?}", r.jb.target_delay());
    assert!(s.playout_delay >= r.jb.target_delay());
    let after_adapting: Vec<_> = r.out.iter().filter(|(t, _)| *t >= ms(3_000)).collect();
    assert!(after_adapting.len() > 500);
    assert!(
        after_adapting
            .iter()
            .all(|(_, p)| p.kind == PlayoutKind::Received),
        "concealment after adaptation"
    );
    // Output is steady: every slot popped exactly at its deadline, 20 ms apart.
    for w in after_adapting.windows(2) {
        assert_eq!(w[1].0 - w[0].0, FRAME);
    }
}

#[test]
fn missing_frame_conceals_exactly_one_slot_and_later_frames_keep_their_slots() {
    // The gap shows in both numbers, in the chunk only, or in the timestamp only.
    for (chunk_gap, timestamp_gap) in [(true, true), (true, false), (false, true)] {
        let mut arrivals = Vec::new();
        for k in 1..=500u64 {
            if k == 400 {
                continue;
            }
            let mut m = media(k);
            if !chunk_gap && k > 400 {
                m.chunk -= 1;
            }
            if !timestamp_gap && k > 400 {
                m.timestamp_ms -= 20;
            }
            arrivals.push((ms(20 * (k - 1)), m));
        }
        let r = run(&JitterConfig::default(), &arrivals, ms(9_980));
        let s = r.jb.stats();
        let case = (chunk_gap, timestamp_gap);
        assert_contiguous(&r);
        assert_eq!((s.concealed, s.concealment_events), (1, 1), "{case:?}");
        let (before, after) = (r.slot_of(399), r.slot_of(401));
        assert_eq!(after - before, 2, "{case:?}");
        assert_eq!(r.out[before as usize + 1].1.kind, PlayoutKind::Concealed);
        assert!(r.admissions.iter().all(|a| *a == Admission::Queued));
    }
}

#[test]
fn read_ahead_hands_out_each_frame_on_arrival_before_it_plays() {
    // Frame 3 is missing (Twilio skipped it); the stream ends after frame 6.
    let start = epoch();
    let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
    let mut read = Vec::new();
    let mut popped = Vec::new();
    for k in [1u64, 2, 4, 5, 6] {
        let t = start + ms(20 * (k - 1));
        while let Some(p) = jb.pop(t) {
            popped.push(p);
        }
        assert_eq!(jb.insert(t, &media(k)), Admission::Queued);
        let a = jb.read_ahead().expect("the frame just queued");
        assert!(jb.read_ahead().is_none(), "each frame once");
        assert_eq!((marker(&a.frame), a.arrived), (k, Some(t)));
        read.push((k, a.at));
    }
    // Each is planned for the slot its numbers point to (frame 3's slot stays empty).
    let planned: Vec<u64> = read
        .iter()
        .map(|(_, at)| at.0 / FRAME_SAMPLES as u64)
        .collect();
    assert_eq!(planned, [0, 1, 3, 4, 5]);
    while let Some(p) = jb.pop(start + ms(2_000)) {
        popped.push(p);
    }
    for (k, at) in &read {
        let slot = popped
            .iter()
            .find(|p| p.kind == PlayoutKind::Received && marker(&p.frame) == *k)
            .expect("played");
        assert_eq!(slot.at, *at, "frame {k} played where it was planned");
        assert!(slot.read_ahead);
    }
    // The skipped slot is concealed after frame 4 was read: the reader is past it. Once the
    // stream is idle, concealed slots are new to the reader.
    let concealed: Vec<(u64, bool)> = popped
        .iter()
        .filter(|p| p.kind == PlayoutKind::Concealed)
        .map(|p| (p.at.0 / FRAME_SAMPLES as u64, p.read_ahead))
        .collect();
    assert_eq!(concealed[0], (2, true), "{concealed:?}");
    assert!(concealed[1..].iter().all(|(slot, read)| *slot > 5 && !read));
    assert!(concealed.len() > 10);
}

#[test]
fn one_second_timestamp_jump_conceals_fifty_slots_then_reports_idle() {
    // Twilio omitted 1 s of silence: chunks stay contiguous, timestamp and arrival jump.
    let arrivals: Vec<_> = (1..=300u64)
        .map(|k| {
            let generated = 20 * (k - 1) + if k > 200 { 1000 } else { 0 };
            let mut m = media(k);
            m.timestamp_ms = 5 + generated;
            (ms(generated), m)
        })
        .collect();
    let r = run(&JitterConfig::default(), &arrivals, ms(6_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert_eq!(r.slot_of(201) - r.slot_of(200), 51);
    assert_eq!((s.concealed, s.concealment_events), (50, 1));
    // The first 10 concealed slots are an underrun; so are those popped once frame 201 has
    // arrived (it waits the playout delay for its slot).
    let after_resume = r
        .out
        .iter()
        .filter(|(t, p)| *t >= ms(5_000) && p.kind == PlayoutKind::Concealed)
        .count() as u64;
    assert!((1..=2).contains(&after_resume), "{after_resume}");
    assert_eq!(s.idle_concealed, 40 - after_resume);
    assert_eq!(s.resyncs, 0);
    // The first repeats fade frame 200; then silence.
    let gap = r.slot_of(200) as usize + 1;
    let levels: Vec<u32> = (gap..gap + 5)
        .map(|i| mulaw::loudness(&r.out[i].1.frame))
        .collect();
    assert!(
        levels[0] > levels[1] && levels[1] > levels[2] && levels[2] > 0,
        "{levels:?}"
    );
    assert_eq!(r.out[gap + 3].1.frame, MulawFrame::SILENCE);
}

#[test]
fn timestamp_jump_without_arrival_gap_resyncs_instead_of_concealing() {
    let arrivals: Vec<_> = (1..=300u64)
        .map(|k| {
            let mut m = media(k);
            if k > 200 {
                m.timestamp_ms += 1000;
            }
            (ms(20 * (k - 1)), m)
        })
        .collect();
    let r = run(&JitterConfig::default(), &arrivals, ms(5_980));
    let s = r.jb.stats();
    assert_eq!(s.resyncs, 1);
    assert_eq!(s.concealed, 0);
    assert_eq!(r.slot_of(201) - r.slot_of(200), 1);
    assert_contiguous(&r);
}

#[test]
fn duplicates_and_backwards_frames_are_counted_and_never_played() {
    let mut arrivals = Vec::new();
    for k in 1..=200u64 {
        let t = ms(20 * (k - 1));
        arrivals.push((t, media(k)));
        match k {
            10 => arrivals.push((t, media(10))), // immediate duplicate
            20 => arrivals.push((t, media(15))), // recent duplicate
            30 => {
                // Higher chunk but timestamp going backwards.
                let mut m = media(31);
                m.timestamp_ms = media(5).timestamp_ms;
                arrivals.push((t, m));
            }
            100 => arrivals.push((t, media(2))), // long forgotten: backwards
            _ => {}
        }
    }
    let r = run(&JitterConfig::default(), &arrivals, ms(3_980));
    let s = r.jb.stats();
    assert_eq!((s.duplicate, s.backwards), (2, 2));
    let dropped: Vec<_> = r
        .admissions
        .iter()
        .filter(|a| **a != Admission::Queued)
        .collect();
    assert_eq!(
        dropped,
        [
            &Admission::Duplicate,
            &Admission::Duplicate,
            &Admission::Backwards,
            &Admission::Backwards
        ]
    );
    let played = r.received_markers();
    assert!(
        played.windows(2).all(|w| w[0] < w[1]),
        "each frame once, in order"
    );
    assert_eq!(s.concealed, 0);
    assert_eq!(s.played_received + s.accelerated + s.buffered, 200);
}

#[test]
fn stall_shorter_than_max_delay_loses_no_frame_and_the_delay_comes_back_down() {
    // Frame 301 is held up 100 ms, and the frames behind it with it (head-of-line blocking).
    let arrivals = schedule(1_000, |k| if k == 301 { ms(100) } else { Duration::ZERO });
    let r = run(&JitterConfig::default(), &arrivals, ms(19_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert!(r.admissions.iter().all(|a| *a == Admission::Queued));
    assert_eq!(s.late, 0, "{s:?}");
    // The slots that waited for frame 301 were concealed while the rest moved later.
    let (before, stalled) = (r.slot_of(300), r.slot_of(301));
    assert!(stalled - before >= 5, "{before} {stalled}");
    assert_eq!(s.expanded, stalled - before - 1, "{s:?}");
    assert_eq!(s.concealed, s.expanded + s.decelerated, "{s:?}");
    // Every frame up to the ones still buffered played once, in order, except the quiet
    // frames dropped to give the added delay back.
    let played = r.received_markers();
    assert!(played.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        s.received,
        s.played_received + s.accelerated + s.buffered,
        "{s:?}"
    );
    assert!(s.accelerated >= s.expanded, "{s:?}");
    assert!(s.playout_delay < ms(40), "{s:?}");
}

#[test]
fn stall_longer_than_max_delay_expands_only_to_max_delay_then_drops_late_frames() {
    // Frame 301 and everything behind it held up 400 ms; expansion stops at 200 ms.
    let arrivals = schedule(400, |k| if k == 301 { ms(400) } else { Duration::ZERO });
    let r = run(&JitterConfig::default(), &arrivals, ms(7_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert_eq!(r.admissions[300], Admission::Late);
    assert!(s.late >= 1 && s.expanded >= 1, "{s:?}");
    assert!(!r.received_markers().contains(&301));
    // Expanded slots, each 20 ms, never took the playout delay (at most 40 ms before the
    // stall: it settles in [target, target + 20 ms)) past 200 ms.
    assert!(s.expanded <= 9, "{s:?}");
    assert_eq!(
        s.received,
        s.late + s.played_received + s.accelerated + s.buffered
    );
}

#[test]
fn twilio_skipping_slots_after_a_stall_takes_the_expansion_back() {
    // Nothing arrives for 200 ms, then frame 311 comes next: chunks 301..=310 were never
    // sent (numbers skip), so it plays 11 slots after frame 300 as if nothing had stalled.
    let arrivals: Vec<_> = (1..=400u64)
        .filter(|k| !(301..=310).contains(k))
        .map(|k| (ms(20 * (k - 1)), media(k)))
        .collect();
    let r = run(&JitterConfig::default(), &arrivals, ms(7_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert!(s.expanded >= 1, "{s:?}");
    assert_eq!(r.slot_of(311) - r.slot_of(300), 11);
    // No frame late, and no more dropped to shrink the delay than without the gap (the
    // initial 40 ms settling to the 20 ms minimum).
    let steady = run(
        &JitterConfig::default(),
        &schedule(400, |_| ms(0)),
        ms(7_980),
    );
    assert_eq!(s.late, 0, "{s:?}");
    assert_eq!(s.accelerated, steady.jb.stats().accelerated, "{s:?}");
}

#[test]
fn hostile_numbers_are_bounded_and_the_stream_recovers() {
    let mut arrivals = Vec::new();
    for k in 1..=1000u64 {
        let mut m = media(k);
        match k {
            51 => m.chunk = u64::MAX,
            151 => m.chunk = 0,
            251 => m.timestamp_ms = u64::MAX,
            351 => m.timestamp_ms += 1_000_000_000_000,
            451 => m.chunk += 1_000_000_000_000_000,
            _ => {}
        }
        arrivals.push((ms(20 * (k - 1)), m));
    }
    let r = run(&JitterConfig::default(), &arrivals, ms(19_980));
    let s = r.jb.stats();
    assert_contiguous(&r);
    assert!(s.max_buffered <= 50);
    assert!(s.resyncs >= 5 && s.resyncs <= 10, "{s:?}");
    assert!(s.backwards <= 50, "{s:?}");
    // The last 5 s play every frame on time.
    let tail: Vec<_> = r.out.iter().filter(|(t, _)| *t >= ms(15_000)).collect();
    assert!(tail.len() >= 240);
    assert!(tail.iter().all(|(_, p)| p.kind == PlayoutKind::Received));
    assert!(s.playout_delay <= ms(200), "{s:?}");
}

#[test]
fn first_frame_with_extreme_numbers_does_not_break_the_buffer() {
    for (chunk, ts) in [(u64::MAX, u64::MAX), (0, 0), (u64::MAX, 0), (0, u64::MAX)] {
        let mut arrivals = vec![(
            Duration::ZERO,
            InboundMedia {
                chunk,
                timestamp_ms: ts,
                payload: MulawFrame::SILENCE,
            },
        )];
        arrivals.extend((2..=200u64).map(|k| (ms(20 * (k - 1)), media(k))));
        let r = run(&JitterConfig::default(), &arrivals, ms(3_980));
        let tail: Vec<_> = r.out.iter().filter(|(t, _)| *t >= ms(1_000)).collect();
        assert!(
            tail.iter().all(|(_, p)| p.kind == PlayoutKind::Received),
            "({chunk}, {ts})"
        );
        assert_contiguous(&r);
    }
}

#[test]
fn concealment_fades_the_last_frame_then_keeps_feeding_silence_while_idle() {
    let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
    let t = epoch();
    let loud = InboundMedia {
        payload: marked(1, true),
        ..media(1)
    };
    jb.insert(t, &loud);
    let mut out = Vec::new();
    let mut idle_at = None;
    for n in 0..100u64 {
        let now = t + ms(40 + 20 * n);
        out.push(jb.pop(now).unwrap());
        assert!(jb.pop(now).is_none());
        if idle_at.is_none() && jb.is_idle() {
            idle_at = Some(n);
        }
    }
    assert_eq!(out[0].kind, PlayoutKind::Received);
    assert!(out[1..].iter().all(|p| p.kind == PlayoutKind::Concealed));
    let levels: Vec<u32> = out[..5].iter().map(|p| mulaw::loudness(&p.frame)).collect();
    assert!(levels.windows(2).take(3).all(|w| w[0] > w[1]), "{levels:?}");
    assert!(out[4..].iter().all(|p| p.frame == MulawFrame::SILENCE));
    assert_eq!(idle_at, Some(10), "idle after 10 concealed slots");
    let s = jb.stats();
    assert_eq!((s.played, s.concealed, s.concealment_events), (100, 99, 1));
    assert_eq!(s.idle_concealed, 89);
    // A new frame ends the idle state.
    assert!(jb.is_idle());
    assert_eq!(jb.insert(t + ms(2_100), &media(110)), Admission::Queued);
    assert!(!jb.is_idle());
}

#[test]
fn late_wakeup_drains_every_due_slot_in_order() {
    let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
    let t = epoch();
    for k in 1..=40u64 {
        assert_eq!(
            jb.insert(t + ms(20 * (k - 1)), &media(k)),
            Admission::Queued
        );
    }
    // First wake-up 1 s after the first deadline: 51 slots are due (40 frames + 11 gaps).
    let now = t + ms(1_040);
    let out: Vec<_> = std::iter::from_fn(|| jb.pop(now)).collect();
    assert_eq!(out.len(), 51);
    for (i, p) in out.iter().enumerate() {
        assert_eq!(p.at, SampleTime::from_frames(i as u64));
    }
    let received: Vec<u64> = out
        .iter()
        .filter(|p| p.kind == PlayoutKind::Received)
        .map(|p| marker(&p.frame))
        .collect();
    assert_eq!(received, (1..=40).collect::<Vec<_>>());
    assert_eq!(jb.poll_timeout(), Some(t + ms(1_060)));
}

#[test]
fn overflow_drops_the_oldest_and_pulls_the_rest_forward_without_a_gap() {
    // Keep the delay where the flood put it, to see the overflow alone.
    let config = JitterConfig {
        accelerate_after_frames: 1_000,
        ..JitterConfig::default()
    };
    let mut jb = JitterBuffer::new(&config).unwrap();
    let t = epoch();
    let admissions: Vec<_> = (1..=60u64).map(|k| jb.insert(t, &media(k))).collect();
    assert!(admissions[..50].iter().all(|a| *a == Admission::Queued));
    assert!(admissions[50..].iter().all(|a| *a == Admission::Overflow));
    let s = jb.stats();
    assert_eq!((s.overflow, s.buffered, s.max_buffered), (10, 50, 50));
    let out: Vec<_> = std::iter::from_fn(|| jb.pop(t + ms(40 + 49 * 20))).collect();
    let received: Vec<u64> = out.iter().map(|p| marker(&p.frame)).collect();
    assert_eq!(received, (11..=60).collect::<Vec<_>>());
}

#[test]
fn shrinking_the_delay_drops_only_quiet_frames_when_it_can() {
    // The first frame arrives 200 ms late with the next ten behind it, so the playout
    // delay starts ~200 ms above what steady arrivals need.
    let loud_even = |k: u64| InboundMedia {
        payload: marked(k, k.is_multiple_of(2)),
        ..media(k)
    };
    let arrivals: Vec<_> = (1..=1000u64)
        .map(|k| (ms((20 * (k - 1)).max(200)), loud_even(k)))
        .collect();
    let r = run(&JitterConfig::default(), &arrivals, ms(19_980));
    let s = r.jb.stats();
    assert!(s.accelerated >= 8, "{s:?}");
    assert!(s.playout_delay < s.target_delay + FRAME, "{s:?}");
    let played = r.received_markers();
    let dropped: Vec<u64> = (1..=played[played.len() - 1])
        .filter(|k| !played.contains(k))
        .collect();
    assert_eq!(dropped.len() as u64, s.accelerated);
    assert!(
        dropped.iter().all(|k| !k.is_multiple_of(2)),
        "dropped loud frames: {dropped:?}"
    );
    assert_eq!(s.concealed, 0);
}

#[test]
fn shrinking_the_delay_eventually_drops_loud_frames_too() {
    let arrivals: Vec<_> = (1..=1000u64)
        .map(|k| {
            let m = InboundMedia {
                payload: marked(k, true),
                ..media(k)
            };
            (ms((20 * (k - 1)).max(200)), m)
        })
        .collect();
    let r = run(&JitterConfig::default(), &arrivals, ms(19_980));
    let s = r.jb.stats();
    assert!(s.accelerated >= 8, "{s:?}");
    assert!(s.playout_delay < s.target_delay + FRAME, "{s:?}");
}

/// One step of a random arrival schedule.
#[derive(Clone, Debug)]
struct Step {
    /// 0–79 normal, 80–87 drop the frame, 88–95 send it twice, 96–99 timestamp jump.
    kind: u8,
    /// Extra network delay of this frame, ms (arrivals stay monotone).
    delay_ms: u64,
    /// How late the popper wakes after each deadline, ms.
    lateness_ms: u64,
    /// Below the case's flood percentage, the frame arrives with the previous one even if
    /// it was not generated yet (a sender running ahead: early frames fill the buffer).
    flood: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..100,
        prop_oneof![8 => 0u64..25, 1 => 25u64..400],
        prop_oneof![4 => Just(0u64), 1 => 0u64..70],
        0u8..100,
    )
        .prop_map(|(kind, delay_ms, lateness_ms, flood)| Step {
            kind,
            delay_ms,
            lateness_ms,
            flood,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn playout_is_ordered_on_schedule_and_bounded_for_any_arrivals(
        steps in proptest::collection::vec(step(), 1..400),
        capacity in 12usize..60,
        flood_percent in prop_oneof![Just(0u8), 0u8..80],
    ) {
        let config = JitterConfig { capacity_frames: capacity, ..JitterConfig::default() };
        // Build arrivals: (time, media, how late the next pop wakes).
        let mut arrivals = Vec::new();
        let mut last = Duration::ZERO;
        let mut ts_shift = 0;
        for (k, s) in (1u64..).zip(&steps) {
            if s.kind >= 96 {
                ts_shift += 20 * u64::from(s.kind - 95);
            }
            let generated = ms(20 * (k - 1) + ts_shift);
            if s.flood >= flood_percent {
                last = last.max(generated + ms(s.delay_ms));
            }
            let mut m = media(k);
            m.timestamp_ms += ts_shift;
            if (80..88).contains(&s.kind) {
                continue;
            }
            arrivals.push((last, m, s.lateness_ms));
            if (88..96).contains(&s.kind) {
                arrivals.push((last, m, s.lateness_ms));
            }
        }

        let start = epoch();
        let mut jb = JitterBuffer::new(&config).unwrap();
        let mut first_arrival = None;
        let mut next_at = 0;
        let mut last_marker = 0;
        let mut received = 0;
        let mut last_read = 0;
        let mut i = 0;
        let mut lateness = ms(0);
        let end = last + ms(500);
        loop {
            let deadline = jb.poll_timeout().map(|d| d - start + lateness);
            let t = match (arrivals.get(i).map(|a| a.0), deadline) {
                (Some(a), Some(d)) => a.min(d),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            let now = start + t;
            while i < arrivals.len() && arrivals[i].0 == t {
                first_arrival.get_or_insert(t);
                jb.insert(now, &arrivals[i].1);
                lateness = ms(arrivals[i].2);
                i += 1;
            }
            // Read ahead after every insert, as the call does: each frame once, in order,
            // planned for a slot not yet played.
            while let Some(a) = jb.read_ahead() {
                let m = marker(&a.frame);
                prop_assert!(m > last_read, "read {} after {}", m, last_read);
                last_read = m;
                prop_assert!(a.at.0 >= next_at, "read {:?}, next due {}", a.at, next_at);
            }
            while let Some(p) = jb.pop(now) {
                prop_assert_eq!(p.at, SampleTime(next_at));
                next_at += FRAME_SAMPLES as u64;
                let first = first_arrival.unwrap();
                let due = first + ms(40) + FRAME * ((p.at.0 / 160) as u32);
                prop_assert!(t >= due, "slot {:?} popped at {:?}, due {:?}", p.at, t, due);
                if p.kind == PlayoutKind::Received {
                    received += 1;
                    let m = marker(&p.frame);
                    prop_assert!(m > last_marker, "frame {} after {}", m, last_marker);
                    prop_assert!(p.read_ahead && m <= last_read, "played {} unread", m);
                    last_marker = m;
                }
            }
            prop_assert!(jb.poll_timeout().is_none_or(|d| d > now));
            let s = jb.stats();
            prop_assert!(s.buffered <= capacity as u64 && s.max_buffered <= capacity as u64);
            prop_assert_eq!(s.played_received + s.concealed, s.played);
            prop_assert_eq!(s.played_received, received);
            prop_assert_eq!(
                s.received,
                s.duplicate + s.backwards + s.late + s.overflow + s.accelerated
                    + s.played_received + s.buffered
            );
            prop_assert!(s.target_delay >= ms(20) && s.target_delay <= ms(200));
        }
    }

    #[test]
    fn hostile_numbers_never_panic_and_stay_bounded(
        frames in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), 0u64..60, any::<bool>()), 1..200),
    ) {
        let mut jb = JitterBuffer::new(&JitterConfig::default()).unwrap();
        let start = epoch();
        let mut t = Duration::ZERO;
        let mut next_at = 0;
        for (chunk, timestamp_ms, dt, pop) in frames {
            t += ms(dt);
            let m = InboundMedia { chunk, timestamp_ms, payload: MulawFrame::SILENCE };
            jb.insert(start + t, &m);
            if pop {
                while let Some(p) = jb.pop(start + t) {
                    prop_assert_eq!(p.at, SampleTime(next_at));
                    next_at += FRAME_SAMPLES as u64;
                }
            }
            let s = jb.stats();
            prop_assert!(s.buffered <= 50);
            prop_assert_eq!(
                s.received,
                s.duplicate + s.backwards + s.late + s.overflow + s.accelerated
                    + s.played_received + s.buffered
            );
        }
    }
}
