//! The second stage on barge-in ([`OnsetCheck`]): an onset during playback waits for the check,
//! barges in with its own onset time once confirmed, never barges in if its utterance ends
//! unconfirmed, and barges in unchecked when the check cannot take it. While it waits, the
//! agent's audio pauses: a rejection or the pause's limit resumes it where it stopped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{CallerScript, Sim, ms, roomy, seed, tone};
use handset_engine::call::{CallConfig, CallEvent, ONSET_PRE_ROLL, OnsetCheck, TraceKind};
use handset_engine::{MulawFrame, SampleRate, SampleTime};

/// A check that confirms once it has seen `confirm_after` frames of a candidate (never, if
/// `None`; never for the first `reject_first` candidates), and refuses candidates when `refuse`
/// is set.
struct Scripted {
    confirm_after: Option<usize>,
    reject_first: usize,
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
        self.begun.load(Ordering::Relaxed) > self.reject_first
            && self.confirm_after.is_some_and(|n| self.seen >= n)
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

/// Agent talks for 10 s from t = 1 s; the caller talks over it at t = 3 s for 600 ms (or, with
/// `over_playback` false, the caller talks at t = 1 s, before the agent does).
fn run(confirm_after: Option<usize>, refuse: bool, over_playback: bool) -> Run {
    run_with(Setup {
        confirm_after,
        refuse,
        over_playback,
        ..Setup::default()
    })
}

struct Setup {
    confirm_after: Option<usize>,
    reject_first: usize,
    refuse: bool,
    over_playback: bool,
    pause: Duration,
    dismiss: bool,
    /// When the caller speaks (600 ms each), over playback.
    speech: Vec<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            confirm_after: None,
            reject_first: 0,
            refuse: false,
            over_playback: true,
            pause: CallConfig::default().onset_pause,
            dismiss: true,
            speech: vec![Duration::from_secs(3)],
        }
    }
}

fn run_with(setup: Setup) -> Run {
    let Setup {
        confirm_after,
        reject_first,
        refuse,
        over_playback,
        pause,
        dismiss,
        speech,
    } = setup;
    let begun = Arc::new(AtomicUsize::new(0));
    let frames = Arc::new(AtomicUsize::new(0));
    let mut config = roomy(10);
    config.trace_events = 100_000;
    config.onset_pause = pause;
    config.dismiss_unconfirmed = dismiss;
    let mut sim = Sim::new(config, seed(40));
    sim.call.set_onset_check(Box::new(Scripted {
        confirm_after,
        reject_first,
        refuse,
        seen: 0,
        begun: begun.clone(),
        frames: frames.clone(),
    }));
    let speech = if over_playback {
        speech
    } else {
        vec![Duration::from_secs(1)]
    };
    sim.script = CallerScript {
        speech: speech.iter().map(|&at| (at, ms(600))).collect(),
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

fn ended(sim: &Sim) -> Vec<(Duration, CallEvent)> {
    sim.events_matching(|e| matches!(e, CallEvent::SpeechEnded { .. }))
}

fn dismissed(sim: &Sim) -> Vec<(Duration, CallEvent)> {
    sim.events_matching(|e| matches!(e, CallEvent::SpeechDismissed { .. }))
}

#[test]
fn speech_outside_playback_starts_at_once_and_is_dismissed_only_if_never_confirmed() {
    // Never confirmed: reported at once, then dismissed instead of ended.
    let music = run(None, false, false);
    let confirmed = run(Some(ONSET_PRE_ROLL + 3), false, false);
    let refused = run(None, true, false);
    for r in [&music, &confirmed, &refused] {
        assert_eq!(started(&r.sim).len(), 1, "{:?}", r.sim.events);
        assert_eq!(r.sim.call.stats().onsets_checked, 0, "nothing is held");
    }
    assert_eq!(
        started(&music.sim)[0].0,
        started(&refused.sim)[0].0,
        "the check does not delay the start"
    );
    assert_eq!(music.begun, 1);
    assert!(ended(&music.sim).is_empty(), "{:?}", music.sim.events);
    let [(t, CallEvent::SpeechDismissed { at })] = dismissed(&music.sim)[..] else {
        panic!("{:?}", music.sim.events)
    };
    let [(t_end, CallEvent::SpeechEnded { at: end })] = ended(&refused.sim)[..] else {
        panic!("{:?}", refused.sim.events)
    };
    assert_eq!((t, at), (t_end, end), "dismissed where it would have ended");
    assert_eq!(music.sim.call.stats().speech_dismissed, 1);
    // Confirmed, or not checkable: an ordinary utterance.
    for r in [&confirmed, &refused] {
        assert_eq!(ended(&r.sim).len(), 1, "{:?}", r.sim.events);
        assert!(dismissed(&r.sim).is_empty());
        assert_eq!(r.sim.call.stats().speech_dismissed, 0);
    }
    // The check stopped listening once it had confirmed.
    assert_eq!(confirmed.frames, ONSET_PRE_ROLL + 3);
    assert!(
        music.frames > ONSET_PRE_ROLL + 25,
        "it followed the whole utterance: {}",
        music.frames
    );
    let trace = music.sim.call.trace().unwrap();
    assert!(
        trace
            .events()
            .iter()
            .any(|(_, k)| matches!(k, TraceKind::SpeechDismissed(_)))
    );
    // Switched off (an agent with its own turn detector), the check never hears it.
    let off = run_with(Setup {
        over_playback: false,
        dismiss: false,
        ..Setup::default()
    });
    assert_eq!(off.begun, 0);
    assert_eq!(ended(&off.sim).len(), 1, "{:?}", off.sim.events);
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
                TraceKind::OnsetHeld(_)
                    | TraceKind::OnsetRejected
                    | TraceKind::SpeechStarted(_)
                    | TraceKind::PlaybackPaused
                    | TraceKind::PlaybackResumed
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
        TraceKind::PlaybackPaused,
        TraceKind::SpeechStarted(started),
    ] = events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(held, started, "the barge-in keeps the held onset's time");
    let rejected = run_with(Setup {
        pause: Duration::from_secs(3),
        ..Setup::default()
    });
    assert!(
        matches!(
            onset_trace(&rejected.sim)[..],
            [
                TraceKind::OnsetHeld(_),
                TraceKind::PlaybackPaused,
                TraceKind::OnsetRejected,
                TraceKind::PlaybackResumed
            ]
        ),
        "{:?}",
        onset_trace(&rejected.sim)
    );
}

/// When the trace recorded the first event of this kind, since the call started.
fn traced_at(sim: &Sim, f: impl Fn(&TraceKind) -> bool) -> Duration {
    sim.call
        .trace()
        .expect("tracing on")
        .events()
        .iter()
        .find(|(_, k)| f(k))
        .map(|&(t, _)| t)
        .expect("traced")
}

/// Frames the engine sent within `(from, to]` (since the call started).
fn sent_between(sim: &Sim, from: Duration, to: Duration) -> usize {
    sim.sent
        .iter()
        .filter(|(t, _)| *t - sim.start > from && *t - sim.start <= to)
        .count()
}

#[test]
fn a_held_onset_stops_the_agent_until_the_check_confirms() {
    let r = run(Some(ONSET_PRE_ROLL + 3), false, true);
    let paused = traced_at(&r.sim, |k| *k == TraceKind::PlaybackPaused);
    let held = traced_at(&r.sim, |k| matches!(k, TraceKind::OnsetHeld(_)));
    assert_eq!(paused, held, "playback stops the moment the onset is held");
    let clear = r.sim.clears[0] - r.sim.start;
    assert!(clear >= paused + ms(60), "{paused:?} → {clear:?}");
    assert_eq!(
        sent_between(&r.sim, paused, clear),
        0,
        "no agent audio leaves while the onset is held"
    );
    // The agent was playing steadily until then: a frame every 20 ms.
    assert!(sent_between(&r.sim, paused - ms(200), paused) >= 9);
    let pacer = r.sim.call.stats().pacer;
    assert_eq!((pacer.underruns, pacer.late_wakeups), (0, 0), "{pacer:?}");
}

#[test]
fn a_rejected_onset_resumes_the_agent_where_it_stopped() {
    let mut r = run_with(Setup {
        pause: Duration::from_secs(3),
        ..Setup::default()
    });
    let paused = traced_at(&r.sim, |k| *k == TraceKind::PlaybackPaused);
    let resumed = traced_at(&r.sim, |k| *k == TraceKind::PlaybackResumed);
    let rejected = traced_at(&r.sim, |k| *k == TraceKind::OnsetRejected);
    assert_eq!(resumed, rejected);
    // The caller spoke for 600 ms and the VAD's hangover is 500 ms.
    assert!(resumed >= paused + ms(1_000), "{paused:?} → {resumed:?}");
    assert_eq!(sent_between(&r.sim, paused, resumed - ms(1)), 0);
    // A progress mark at the resume point leaves first, then the lead at once.
    let mark = r
        .sim
        .marks_sent
        .iter()
        .find(|(t, _)| *t - r.sim.start >= resumed)
        .expect("a mark at the resume point");
    assert_eq!(mark.0 - r.sim.start, resumed);
    assert_eq!(sent_between(&r.sim, resumed - ms(1), resumed), 4);
    // Nothing was lost: the agent's 10 s all play, none of it flushed, and the pause counted
    // as neither an underrun nor a late wake-up.
    assert!(r.sim.clears.is_empty());
    let stats = r.sim.call.stats();
    assert_eq!(stats.pacer.frames_flushed, 0);
    assert_eq!(stats.onset_pauses_expired, 0);
    assert_eq!(
        (stats.pacer.underruns, stats.pacer.late_wakeups),
        (0, 0),
        "{:?}",
        stats.pacer
    );
    r.sim.run_for(Duration::from_secs(8));
    assert!(
        r.sim.call.queued_playback() < ms(20),
        "only a partial frame waits"
    );
    assert_eq!(r.sim.sent.len() as u64, r.sim.call.stats().agent_frames);
    // 10 s of agent audio, all but what the unfinished segment still holds (a partial frame,
    // and the downsampler's delay until the segment ends).
    let out = ms(20) * r.sim.sent.len() as u32 + r.sim.call.queued_playback();
    assert!(out.abs_diff(Duration::from_secs(10)) < ms(20), "{out:?}");
}

#[test]
fn a_check_still_undecided_when_the_pause_runs_out_lets_the_agent_go_on() {
    let r = run(None, false, true);
    let paused = traced_at(&r.sim, |k| *k == TraceKind::PlaybackPaused);
    let resumed = traced_at(&r.sim, |k| *k == TraceKind::PlaybackResumed);
    let rejected = traced_at(&r.sim, |k| *k == TraceKind::OnsetRejected);
    assert_eq!(resumed, paused + CallConfig::default().onset_pause);
    assert!(rejected > resumed, "the onset stays held after the pause");
    assert!(sent_between(&r.sim, resumed, rejected) > 10);
    let stats = r.sim.call.stats();
    assert_eq!(
        (
            stats.onset_pauses_expired,
            stats.onsets_rejected,
            stats.barge_ins
        ),
        (1, 1, 0)
    );
}

#[test]
fn without_a_pause_the_agent_is_heard_until_the_verdict() {
    let r = run_with(Setup {
        confirm_after: Some(ONSET_PRE_ROLL + 3),
        pause: Duration::ZERO,
        ..Setup::default()
    });
    let held = traced_at(&r.sim, |k| matches!(k, TraceKind::OnsetHeld(_)));
    let clear = r.sim.clears[0] - r.sim.start;
    assert!(
        sent_between(&r.sim, held, clear) >= 2,
        "{held:?} → {clear:?}"
    );
    assert!(
        !onset_trace(&r.sim).contains(&TraceKind::PlaybackPaused),
        "{:?}",
        onset_trace(&r.sim)
    );
}

#[test]
fn heard_time_just_after_a_resumed_pause_is_what_twilio_played() {
    // The pause runs out 500 ms after the hold; the check confirms 40 ms later, before any of
    // the resumed audio's own progress marks can have come back. The mark sent at the resume
    // point pins the playback position, so the barge-in still reports what Twilio played.
    // The caller starts two frames after a progress mark left (one every 100 ms), so the
    // resumed audio's first progress mark is three frames in.
    let r = run_with(Setup {
        confirm_after: Some(ONSET_PRE_ROLL + 27),
        speech: vec![ms(3_040)],
        ..Setup::default()
    });
    assert_eq!(
        onset_trace(&r.sim)[..4],
        [
            TraceKind::OnsetHeld(SampleTime(24_320)),
            TraceKind::PlaybackPaused,
            TraceKind::PlaybackResumed,
            TraceKind::SpeechStarted(SampleTime(24_320)),
        ]
    );
    let resumed = traced_at(&r.sim, |k| *k == TraceKind::PlaybackResumed);
    let clear = r.sim.clears[0] - r.sim.start;
    assert!(clear <= resumed + ms(60), "{resumed:?} → {clear:?}");
    let barges = barge_ins(&r.sim);
    let CallEvent::BargeIn(i) = barges[0].1 else {
        panic!("{:?}", r.sim.events)
    };
    let clear_at_twilio = r.sim.clears[0] + r.sim.link_delay;
    let truth = Duration::from_micros(r.sim.twilio.played_bytes_until(clear_at_twilio) * 125);
    assert!(
        i.heard.abs_diff(truth) <= Duration::from_micros(125),
        "heard {:?}, Twilio played {truth:?}",
        i.heard
    );
}
