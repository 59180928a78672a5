//! Barge-in through the whole call: caller speech over agent playback flushes the queue, sends
//! `clear` within the VAD attack window of the onset's arrival (not after the jitter buffer's
//! delay), and reports exactly how much the caller heard.

mod common;

use std::time::Duration;

use common::{CallerScript, Impair, Sim, ms, roomy, seed, tone};
use handset_engine::call::{CallConfig, CallEvent, Interruption, ONSET_PRE_ROLL, OnsetCheck};
use handset_engine::{MulawFrame, SampleRate};

fn barge_in(sim: &Sim) -> Vec<(Duration, Interruption)> {
    sim.events
        .iter()
        .filter_map(|(t, e)| match e {
            CallEvent::BargeIn(i) => Some((*t - sim.start, *i)),
            _ => None,
        })
        .collect()
}

/// Agent talks for 10 s from t = 1 s; the caller talks over it at t = 3 s.
fn talk_over(seed: u64, link_delay: Duration, impair: Impair) -> Sim {
    talk_over_with(roomy(10), seed, link_delay, impair)
}

fn talk_over_with(config: CallConfig, seed: u64, link_delay: Duration, impair: Impair) -> Sim {
    let mut sim = Sim::new(config, seed);
    sim.link_delay = link_delay;
    sim.impair = impair;
    sim.script = CallerScript {
        speech: vec![(Duration::from_secs(3), Duration::from_secs(2))],
    };
    sim.run_for(Duration::from_secs(1));
    let rate = SampleRate::HZ_24000;
    sim.agent_says(&tone(rate, 500.0, 0.3, 24_000 * 10, 0), rate);
    sim.agent_mark(42);
    sim.run_for(Duration::from_secs(5));
    sim
}

#[test]
fn caller_speech_over_playback_flushes_and_clears_within_the_attack_window() {
    let sim = talk_over(seed(10), ms(20), Impair::default());
    let config = CallConfig::default();
    let barges = barge_in(&sim);
    assert_eq!(barges.len(), 1, "one barge-in: {:?}", sim.events);
    let (at, interruption) = barges[0];
    let onset = interruption.onset.expect("caller onset");
    // The onset is where the caller started (3 s into the stream), within one frame.
    let onset_time = onset.as_duration();
    assert!(
        onset_time >= Duration::from_secs(3) - ms(20)
            && onset_time <= Duration::from_secs(3) + ms(20),
        "onset at {onset_time:?}"
    );
    // Decided within the attack window after the onset frame arrived (one link delay after
    // it was complete), without waiting for the jitter buffer's delay.
    let attack = common::FRAME * config.vad.attack_frames;
    assert!(
        at <= Duration::from_secs(3) + attack + ms(20) + ms(20),
        "barge-in decided at {at:?}"
    );
    assert_eq!(sim.clears.len(), 1, "exactly one clear");
    assert_eq!(
        sim.clears[0] - sim.start,
        at,
        "clear goes out with the decision"
    );
    // Nothing more was sent after the clear, and the local queue is empty.
    assert!(sim.sent.iter().all(|(t, _)| *t <= sim.clears[0]));
    assert!(!sim.call.agent_playing());
    assert!(
        interruption.dropped > Duration::from_secs(5),
        "most of the 10 s was dropped"
    );
    // The agent's own mark never played and is reported as cleared.
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| matches!(e, CallEvent::MarkCleared(m) if m.0 == 42)),
        "agent mark reported cleared"
    );
    assert!(
        !sim.events
            .iter()
            .any(|(_, e)| matches!(e, CallEvent::MarkPlayed(m) if m.0 == 42))
    );
}

#[test]
fn onset_arrival_is_when_the_onset_frame_arrived_and_precedes_the_clear() {
    let sim = talk_over(seed(12), ms(20), Impair::default());
    let barges = barge_in(&sim);
    assert_eq!(barges.len(), 1, "{:?}", sim.events);
    let (at, interruption) = barges[0];
    let onset = interruption.onset.expect("caller onset").as_duration();
    let arrival = sim
        .call
        .onset_arrival()
        .expect("the onset frame was received")
        - sim.start;
    // Caller frame n (stream time n·20 ms) is complete, and sent, at (n + 1)·20 ms; the
    // simulation delivers it at its next step, within a frame.
    assert!(
        arrival >= onset + ms(20) && arrival < onset + ms(40),
        "onset {onset:?}, arrival {arrival:?}"
    );
    // Barge-in latency (onset arrival to clear) is within the attack and the onset lookback;
    // the jitter buffer's delay is not part of it (zero: decided on the onset frame itself).
    let config = CallConfig::default();
    let bound = common::FRAME * (config.vad.attack_frames + 25);
    let latency = sim.clears[0] - sim.start - arrival;
    assert!(latency <= bound, "{latency:?}");
    assert_eq!(sim.clears[0] - sim.start, at);
}

#[test]
fn the_decision_does_not_wait_for_the_jitter_buffer_delay() {
    // The same call with the jitter buffer held at 20 ms and at 200 ms of delay: the caller's
    // onset plays out to the agent 180 ms later in the second, the barge-in does not.
    let held = |delay: Duration| {
        let mut config = roomy(10);
        config.jitter.min_delay = delay;
        config.jitter.initial_delay = delay;
        config.jitter.max_delay = delay;
        let sim = talk_over_with(config, seed(17), ms(20), Impair::default());
        let barges = barge_in(&sim);
        assert_eq!(barges.len(), 1, "{delay:?}: {:?}", sim.events);
        let onset = barges[0].1.onset.expect("caller onset");
        (barges[0].0, onset)
    };
    let (short_at, short_onset) = held(ms(20));
    let (long_at, long_onset) = held(ms(200));
    assert_eq!(long_at, short_at, "decided at the same time");
    // The onset is reported where it plays on the caller timeline: the same stream time.
    assert!(
        short_onset.as_duration().abs_diff(Duration::from_secs(3)) <= ms(20)
            && long_onset.as_duration().abs_diff(Duration::from_secs(3)) <= ms(20),
        "onsets {short_onset:?}, {long_onset:?}"
    );
}

#[test]
fn heard_time_is_exactly_what_twilio_played_before_the_clear() {
    for (seed_value, link) in [(11, ms(0)), (12, ms(17)), (13, ms(45))] {
        let sim = talk_over(seed(seed_value), link, Impair::default());
        let barges = barge_in(&sim);
        assert_eq!(barges.len(), 1, "link {link:?}");
        let heard = barges[0].1.heard;
        // Twilio executed the clear one link delay after the engine sent it; everything it
        // played before that is what the caller heard.
        let clear_at_twilio = sim.clears[0] + link;
        let truth = Duration::from_micros(sim.twilio.played_bytes_until(clear_at_twilio) * 125);
        let error = heard.abs_diff(truth);
        assert!(
            error <= Duration::from_micros(125),
            "link {link:?}: heard {heard:?}, Twilio played {truth:?}"
        );
        assert!(
            heard > Duration::from_secs(1),
            "about 2 s played before the caller spoke"
        );
        // Twilio's model agrees nothing played after the clear.
        assert_eq!(
            sim.twilio
                .played_bytes_until(sim.start + Duration::from_secs(60)),
            sim.twilio.played_bytes_until(clear_at_twilio)
        );
    }
}

#[test]
fn marks_flushed_by_clear_are_not_taken_as_played() {
    let sim = talk_over(seed(14), ms(25), Impair::default());
    let stats = sim.call.stats();
    assert!(
        stats.marks_flushed > 0,
        "progress marks in flight came back flushed: {stats:?}"
    );
    assert_eq!(stats.marks_unknown, 0);
    assert_eq!(
        stats.marks_flushed + stats.marks_played,
        stats.marks_out,
        "every mark sent came back exactly once"
    );
}

#[test]
fn caller_speech_without_agent_audio_is_not_a_barge_in() {
    let mut sim = Sim::new(CallConfig::default(), seed(15));
    sim.script = CallerScript {
        speech: vec![(Duration::from_secs(1), Duration::from_secs(1))],
    };
    sim.run_for(Duration::from_secs(3));
    assert!(barge_in(&sim).is_empty());
    assert!(sim.clears.is_empty());
    let started = sim.events_matching(|e| matches!(e, CallEvent::SpeechStarted { .. }));
    let ended = sim.events_matching(|e| matches!(e, CallEvent::SpeechEnded { .. }));
    assert_eq!((started.len(), ended.len()), (1, 1), "{:?}", sim.events);
}

#[test]
fn barge_in_holds_under_bursty_arrivals() {
    let impair = Impair {
        burst: 4,
        jitter: ms(15),
        ..Impair::default()
    };
    let sim = talk_over(seed(16), ms(20), impair);
    let barges = barge_in(&sim);
    assert_eq!(barges.len(), 1);
    let config = CallConfig::default();
    let bound = Duration::from_secs(3)
        + common::FRAME * config.vad.attack_frames
        + config.jitter.max_delay
        + ms(20);
    assert!(barges[0].0 <= bound, "decided at {:?}", barges[0].0);
}

#[test]
fn agent_clear_flushes_without_a_barge_in() {
    let mut sim = Sim::new(roomy(5), seed(17));
    sim.caller_until = Duration::ZERO;
    let rate = SampleRate::WIDEBAND;
    sim.agent_says(&tone(rate, 700.0, 0.3, 16_000 * 5, 0), rate);
    sim.run_for(Duration::from_secs(2));
    let now = sim.now;
    sim.input(handset_engine::call::Input::AgentClear(now));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.clears.len(), 1);
    let cleared: Vec<_> = sim.events_matching(|e| matches!(e, CallEvent::PlaybackCleared(_)));
    assert_eq!(cleared.len(), 1);
    let CallEvent::PlaybackCleared(i) = cleared[0].1 else {
        unreachable!()
    };
    assert!(i.onset.is_none());
    let played = Duration::from_micros(sim.twilio.played_bytes_until(sim.now) * 125);
    assert!(
        i.heard.abs_diff(played) <= Duration::from_micros(125),
        "{i:?} vs {played:?}"
    );
    assert!(barge_in(&sim).is_empty());
}

#[test]
fn a_traced_call_records_the_barge_in_timeline() {
    let mut config = roomy(10);
    config.trace_events = 100_000;
    let mut sim = Sim::new(config, seed(18));
    sim.link_delay = ms(20);
    sim.script = CallerScript {
        speech: vec![(Duration::from_secs(3), Duration::from_secs(2))],
    };
    sim.run_for(Duration::from_secs(1));
    let rate = SampleRate::HZ_24000;
    sim.agent_says(&tone(rate, 500.0, 0.3, 24_000 * 10, 0), rate);
    sim.run_for(Duration::from_secs(5));
    use handset_engine::call::TraceKind;
    let trace = sim.call.trace().expect("tracing on");
    let count =
        |f: &dyn Fn(&TraceKind) -> bool| trace.events().iter().filter(|(_, k)| f(k)).count();
    assert_eq!(count(&|k| matches!(k, TraceKind::Transmit)), sim.sent.len());
    assert_eq!(
        count(&|k| matches!(k, TraceKind::MediaIn { .. })) as u64,
        sim.call.stats().media_in
    );
    assert_eq!(count(&|k| matches!(k, TraceKind::BargeIn { .. })), 1);
    assert_eq!(count(&|k| matches!(k, TraceKind::Clear)), 1);
    assert!(count(&|k| matches!(k, TraceKind::SpeechStarted(_))) >= 1);
    // Events are in time order.
    assert!(trace.events().windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(trace.dropped(), 0);
}

/// 1.4 s of real telephone speech, looped to `seconds`: the agent's voice.
fn agent_speech(seconds: usize) -> Vec<i16> {
    let bytes = include_bytes!("../../tests/data/hello-world.ulaw");
    let mut clip = vec![0i16; bytes.len()];
    handset_engine::codec::decode_into(bytes, &mut clip);
    clip.iter().copied().cycle().take(8_000 * seconds).collect()
}

/// The agent speaks for 6 s from t = 1 s; the caller's line returns it 250 ms later at a
/// quarter of its level (a speakerphone), and the caller talks over it when `talks` says.
fn speakerphone(config: CallConfig, talks: Option<Duration>, impair: Impair) -> Sim {
    let mut sim = Sim::new(config, seed(18));
    sim.impair = impair;
    speak_over(sim, ms(250), talks)
}

/// Runs the [`speakerphone`] call on `sim`, the echo `delay` later.
fn speak_over(mut sim: Sim, delay: Duration, talks: Option<Duration>) -> Sim {
    sim.link_delay = ms(20);
    sim.echo = Some((delay, 0.25));
    if let Some(at) = talks {
        sim.script = CallerScript {
            speech: vec![(at, Duration::from_secs(2))],
        };
    }
    sim.run_for(Duration::from_secs(1));
    sim.agent_says(&agent_speech(6), SampleRate::NARROWBAND);
    sim.run_for(Duration::from_secs(7));
    sim
}

#[test]
fn the_agents_own_voice_coming_back_is_not_a_barge_in() {
    // Without the check, the echo barges in: the test's premise.
    let mut unchecked = roomy(10);
    unchecked.echo.enabled = false;
    let sim = speakerphone(unchecked, None, Impair::default());
    assert!(!barge_in(&sim).is_empty(), "the echo reaches the VAD");

    let sim = speakerphone(roomy(10), None, Impair::default());
    assert!(barge_in(&sim).is_empty(), "{:?}", barge_in(&sim));
    assert!(sim.clears.is_empty());
    let stats = sim.call.stats();
    assert!(stats.echo_onsets >= 1, "{stats:?}");
    assert_eq!(stats.echo_breakthroughs, 0, "{stats:?}");
    // Held as echo, the utterance is no speech to the agent either.
    assert!(
        sim.events_matching(|e| matches!(e, CallEvent::SpeechStarted { .. }))
            .is_empty()
    );
    // Everything the agent said played.
    assert_eq!(sim.twilio.stats().bytes_cleared, 0);
}

#[test]
fn a_caller_talking_over_the_echo_still_barges_in() {
    let onset = Duration::from_secs(3);
    let sim = speakerphone(roomy(10), Some(onset), Impair::default());
    let barges = barge_in(&sim);
    assert_eq!(barges.len(), 1, "{barges:?}");
    // Decided within a few frames of the onset's arrival (one frame to complete it).
    assert!(
        barges[0].0 <= onset + ms(20) + ms(20) * 6,
        "decided at {:?}",
        barges[0].0
    );
    let at = barges[0].1.onset.expect("caller onset").as_duration();
    assert!(at.abs_diff(onset) <= ms(140), "onset at {at:?}");
}

#[test]
fn the_echo_is_held_through_bursty_arrivals_and_jitter_buffer_changes() {
    // Frames in bursts of 4 with up to 15 ms of jitter: the jitter buffer grows and shrinks
    // its delay, which moves playout slots but not the frames' places on Twilio's clock.
    let impair = Impair {
        burst: 4,
        jitter: ms(15),
        ..Impair::default()
    };
    let sim = speakerphone(roomy(10), None, impair.clone());
    assert!(barge_in(&sim).is_empty(), "{:?}", barge_in(&sim));
    let stats = sim.call.stats();
    assert!(stats.echo_onsets >= 1, "{stats:?}");
    let sim = speakerphone(roomy(10), Some(Duration::from_secs(3)), impair);
    assert_eq!(barge_in(&sim).len(), 1);
}

/// An onset check that confirms every candidate once it has seen `0` frames (as Silero
/// would: the agent's voice coming back is speech).
struct ConfirmAfter(usize, usize);

impl OnsetCheck for ConfirmAfter {
    fn begin(&mut self) -> bool {
        self.1 = 0;
        true
    }
    fn push(&mut self, _frame: &MulawFrame) -> bool {
        self.1 += 1;
        true
    }
    fn confirmed(&mut self) -> bool {
        self.1 >= self.0
    }
    fn end(&mut self) {
        self.1 = 0;
    }
}

/// [`speakerphone`] with the echo `delay` later, and with an onset check that confirms every
/// candidate 80 ms after its onset when `checked`.
fn speakerphone_at(delay: Duration, checked: bool, talks: Option<Duration>) -> Sim {
    let mut sim = Sim::new(roomy(10), seed(18));
    if checked {
        sim.call
            .set_onset_check(Box::new(ConfirmAfter(ONSET_PRE_ROLL + 4, 0)));
    }
    speak_over(sim, delay, talks)
}

#[test]
fn an_echo_too_short_to_tell_at_its_onset_is_found_while_the_onset_is_held() {
    // Echo delays at which the echo's first syllable escapes the check at its onset: the
    // window holds a frame or two of it (found by scanning 250–252 ms in 125 µs steps).
    for us in [250_250, 250_750, 251_125, 251_250, 251_625, 251_750] {
        let delay = Duration::from_micros(us);
        let unchecked = speakerphone_at(delay, false, None);
        assert_eq!(barge_in(&unchecked).len(), 1, "{delay:?}: the premise");
        let sim = speakerphone_at(delay, true, None);
        assert!(barge_in(&sim).is_empty(), "{delay:?}: {:?}", barge_in(&sim));
        assert!(sim.clears.is_empty());
        let stats = sim.call.stats();
        assert_eq!(
            (stats.echo_onsets_in_hold, stats.onsets_confirmed),
            (1, 0),
            "{delay:?}: {stats:?}"
        );
        assert!(
            sim.events_matching(|e| matches!(e, CallEvent::SpeechStarted { .. }))
                .is_empty()
        );
        assert_eq!(sim.twilio.stats().bytes_cleared, 0, "everything played");
        // The caller talking over that echo still barges in.
        let talks = speakerphone_at(delay, true, Some(Duration::from_secs(3)));
        assert_eq!(barge_in(&talks).len(), 1, "{delay:?}");
    }
}
