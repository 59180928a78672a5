//! The second stage on barge-in ([`OnsetCheck`]): an onset during playback waits for the check,
//! barges in with its own onset time once confirmed, never barges in if its utterance ends
//! unconfirmed, and barges in unchecked when the check cannot take it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{CallerScript, Sim, ms, roomy, seed, tone};
use handset_engine::call::{CallEvent, ONSET_PRE_ROLL, OnsetCheck, TraceKind};
use handset_engine::{MulawFrame, SampleRate};

/// A check that confirms once it has seen `confirm_after` frames of a candidate (never, if
/// `None`), and refuses candidates when `refuse` is set.
struct Scripted {
    confirm_after: Option<usize>,
    refuse: bool,
    seen: usize,
    begun: Arc<AtomicUsize>,
    frames: Arc<AtomicUsize>,
}

impl OnsetCheck for Scripted {
    fn begin(&mut self) -> bool {
        if self.refuse {
            return false;
        }
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.seen = 0;
        true
    }
    fn push(&mut self, _frame: &MulawFrame) -> bool {
        self.seen += 1;
        self.frames.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn confirmed(&mut self) -> bool {
        self.confirm_after.is_some_and(|n| self.seen >= n)
    }
    fn end(&mut self) {
        self.seen = 0;
    }
}

struct Run {
    sim: Sim,
    begun: usize,
    frames: usize,
}

/// Agent talks for 10 s from t = 1 s; the caller talks over it at t = 3 s for 2 s (or, with
/// `over_playback` false, the caller talks at t = 1 s, before the agent does).
fn run(confirm_after: Option<usize>, refuse: bool, over_playback: bool) -> Run {
    let begun = Arc::new(AtomicUsize::new(0));
    let frames = Arc::new(AtomicUsize::new(0));
    let mut config = roomy(10);
    config.trace_events = 100_000;
    let mut sim = Sim::new(config, seed(40));
    sim.call.set_onset_check(Box::new(Scripted {
        confirm_after,
        refuse,
        seen: 0,
        begun: begun.clone(),
        frames: frames.clone(),
    }));
    let caller_at = if over_playback { 3 } else { 1 };
    sim.script = CallerScript {
        speech: vec![(Duration::from_secs(caller_at), Duration::from_millis(600))],
    };
    if over_playback {
        sim.run_for(Duration::from_secs(1));
        let rate = SampleRate::HZ_24000;
        sim.agent_says(&tone(rate, 500.0, 0.3, 24_000 * 10, 0), rate);
        sim.run_for(Duration::from_secs(5));
    } else {
        sim.run_for(Duration::from_secs(3));
    }
    Run {
        sim,
        begun: begun.load(Ordering::Relaxed),
        frames: frames.load(Ordering::Relaxed),
    }
}

fn barge_ins(sim: &Sim) -> Vec<(Duration, CallEvent)> {
    sim.events_matching(|e| matches!(e, CallEvent::BargeIn(_)))
}

fn started(sim: &Sim) -> Vec<(Duration, CallEvent)> {
    sim.events_matching(|e| matches!(e, CallEvent::SpeechStarted { .. }))
}

#[test]
fn a_confirmed_onset_barges_in_with_its_own_onset_time() {
    let unchecked = run(Some(0), true, true);
    let checked = run(Some(ONSET_PRE_ROLL + 3), false, true);
    let (Some(&(t0, CallEvent::BargeIn(i0))), Some(&(t1, CallEvent::BargeIn(i1)))) = (
        barge_ins(&unchecked.sim).first(),
        barge_ins(&checked.sim).first(),
    ) else {
        panic!("both barge in: {:?}", checked.sim.events);
    };
    assert_eq!(barge_ins(&checked.sim).len(), 1);
    // Same onset, decided three frames later (the check saw the pre-roll and three more).
    assert_eq!(i0.onset, i1.onset);
    assert!(t1 >= t0 + ms(60) && t1 <= t0 + ms(80), "{t0:?} → {t1:?}");
    assert_eq!(checked.sim.clears.len(), 1);
    assert_eq!(checked.sim.clears[0] - checked.sim.start, t1);
    // SpeechStarted comes with the barge-in, not before it.
    assert_eq!(started(&checked.sim).len(), 1);
    assert_eq!(started(&checked.sim)[0].0, t1);
    let stats = checked.sim.call.stats();
    assert_eq!(
        (
            stats.onsets_checked,
            stats.onsets_confirmed,
            stats.onsets_rejected,
            stats.barge_ins
        ),
        (1, 1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(checked.begun, 1);
    assert_eq!(checked.frames, ONSET_PRE_ROLL + 3);
}

#[test]
fn an_utterance_that_ends_unconfirmed_never_barges_in() {
    let r = run(None, false, true);
    assert!(barge_ins(&r.sim).is_empty(), "{:?}", r.sim.events);
    assert!(r.sim.clears.is_empty());
    assert!(started(&r.sim).is_empty());
    assert!(
        r.sim
            .events_matching(|e| matches!(e, CallEvent::SpeechEnded { .. }))
            .is_empty()
    );
    assert!(r.sim.call.agent_playing(), "the agent plays on");
    let stats = r.sim.call.stats();
    assert_eq!(
        (
            stats.onsets_checked,
            stats.onsets_rejected,
            stats.onsets_confirmed
        ),
        (1, 1, 0),
        "{stats:?}"
    );
    // The check saw the pre-roll and every frame of the held utterance (600 ms of speech and
    // the VAD's hangover).
    assert!(r.frames > ONSET_PRE_ROLL + 25, "{}", r.frames);
}

#[test]
fn a_check_that_cannot_take_the_onset_lets_it_barge_in_at_once() {
    let r = run(None, true, true);
    assert_eq!(barge_ins(&r.sim).len(), 1, "{:?}", r.sim.events);
    let stats = r.sim.call.stats();
    assert_eq!((stats.onsets_unchecked, stats.onsets_checked), (1, 0));
    // On the onset frame itself: the caller starts at 3 s, the frame is complete at 3.02 s.
    let at = barge_ins(&r.sim)[0].0;
    assert!(at <= Duration::from_secs(3) + ms(60), "{at:?}");
}

#[test]
fn speech_outside_playback_is_not_checked() {
    let r = run(None, false, false);
    assert_eq!(r.begun, 0);
    assert_eq!(started(&r.sim).len(), 1, "{:?}", r.sim.events);
    assert_eq!(r.sim.call.stats().onsets_checked, 0);
}

/// The trace's onset events, in order.
fn onset_trace(sim: &Sim) -> Vec<TraceKind> {
    sim.call
        .trace()
        .expect("tracing on")
        .events()
        .iter()
        .map(|&(_, k)| k)
        .filter(|k| {
            matches!(
                k,
                TraceKind::OnsetHeld(_) | TraceKind::OnsetRejected | TraceKind::SpeechStarted(_)
            )
        })
        .collect()
}

#[test]
fn the_trace_shows_the_hold_and_its_outcome() {
    let confirmed = run(Some(ONSET_PRE_ROLL + 3), false, true);
    let events = onset_trace(&confirmed.sim);
    let [
        TraceKind::OnsetHeld(held),
        TraceKind::SpeechStarted(started),
    ] = events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(held, started, "the barge-in keeps the held onset's time");
    let rejected = run(None, false, true);
    assert!(
        matches!(
            onset_trace(&rejected.sim)[..],
            [TraceKind::OnsetHeld(_), TraceKind::OnsetRejected]
        ),
        "{:?}",
        onset_trace(&rejected.sim)
    );
    let json = rejected.sim.call.trace().unwrap().to_chrome_json("CA1");
    assert!(json.contains("\"onset held\"") && json.contains("\"onset rejected\""));
}
