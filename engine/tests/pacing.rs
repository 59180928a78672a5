//! Outbound pacing through the whole call: 10 virtual minutes of agent audio under a late,
//! stalling scheduler give exactly 30,000 frames, none early, with zero cumulative drift and no
//! starvation at Twilio.

mod common;

use std::time::Duration;

use common::{Lateness, Sim, ms, roomy, seed, tone};
use handset_engine::SampleRate;
use handset_engine::call::CallConfig;

const TEN_MINUTES_FRAMES: usize = 30_000;

/// Feeds `total` seconds of 24 kHz agent audio, staying about one second ahead of playback.
fn play_ten_minutes(sim: &mut Sim) {
    let rate = SampleRate::HZ_24000;
    let per_second = rate.hz() as usize;
    let total_seconds = 600;
    let second = |s: usize| tone(rate, 440.0, 0.3, per_second, s * per_second);
    // Two seconds up front, then one more each second: the agent stays ahead of playback.
    sim.agent_says(&second(0), rate);
    sim.agent_says(&second(1), rate);
    for s in 2..total_seconds {
        sim.run_for(Duration::from_secs(1));
        sim.agent_says(&second(s), rate);
    }
    sim.agent_mark(1);
    sim.run_for(Duration::from_secs(4));
}

fn check_schedule(sim: &Sim, max_lateness: Duration) {
    let lead = sim.call_config_lead();
    assert_eq!(
        sim.sent.len(),
        TEN_MINUTES_FRAMES,
        "exactly 30,000 frames for 10 minutes"
    );
    let anchor = sim.sent[0].0;
    for (n, (at, _)) in sim.sent.iter().enumerate() {
        let deadline = anchor + common::FRAME * (n.saturating_sub(lead) as u32);
        assert!(
            *at >= deadline,
            "frame {n} released {:?} early",
            deadline - *at
        );
    }
    let last = TEN_MINUTES_FRAMES - 1;
    let ideal = anchor + common::FRAME * (last - lead) as u32;
    let drift = sim.sent[last].0 - ideal;
    assert!(
        drift <= max_lateness,
        "cumulative drift {drift:?} exceeds one wake-up's lateness {max_lateness:?}"
    );
}

trait LeadOf {
    fn call_config_lead(&self) -> usize;
}

impl LeadOf for Sim {
    fn call_config_lead(&self) -> usize {
        CallConfig::default().pacer.lead_frames as usize
    }
}

#[test]
fn ten_minutes_on_time_scheduler_give_exactly_30000_frames() {
    let mut sim = Sim::new(roomy(3), seed(1));
    sim.caller_until = Duration::ZERO;
    play_ten_minutes(&mut sim);
    check_schedule(&sim, Duration::ZERO);
    assert_eq!(sim.twilio.stats().underruns, 0);
}

#[test]
fn late_and_stalling_wakeups_never_release_early_nor_drift() {
    let mut sim = Sim::new(roomy(3), seed(2));
    sim.caller_until = Duration::ZERO;
    sim.lateness = Lateness {
        max: ms(5),
        stall_probability: 0.002,
        stall: ms(45),
    };
    sim.link_delay = ms(30);
    play_ten_minutes(&mut sim);
    check_schedule(&sim, ms(50));
    let stats = sim.call.stats();
    assert!(
        stats.pacer.late_wakeups > 0,
        "the scheduler really was late: {stats:?}"
    );
    assert_eq!(
        sim.twilio.stats().underruns,
        0,
        "the 3-frame lead covers 0-50 ms lateness"
    );
    // Catch-up bursts stay within the documented bound.
    let max_burst = CallConfig::default().pacer.max_burst as usize;
    let mut i = 0;
    while i < sim.sent.len() {
        let same = sim.sent[i..]
            .iter()
            .take_while(|(t, _)| *t == sim.sent[i].0)
            .count();
        if i > 0 {
            assert!(same <= max_burst, "burst of {same} frames at frame {i}");
        }
        i += same;
    }
}

#[test]
fn twilio_plays_the_agent_audio_continuously_and_confirms_the_end() {
    let mut sim = Sim::new(roomy(4), seed(3));
    sim.caller_until = Duration::ZERO;
    sim.link_delay = ms(40);
    let rate = SampleRate::HZ_22050;
    let pcm = tone(rate, 300.0, 0.3, 22_050 * 4, 0);
    sim.agent_says(&pcm, rate);
    sim.agent_mark(9);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.sent.len(), 200, "4 s = 200 frames");
    let played = sim.events_matching(
        |e| matches!(e, handset_engine::call::CallEvent::MarkPlayed(m) if m.0 == 9),
    );
    assert_eq!(played.len(), 1);
    // The mark's audio ends 4 s after the first frame reached Twilio; the echo takes one link.
    let first = sim.sent[0].0 - sim.start;
    let expected = first + Duration::from_secs(4) + ms(80);
    let got = played[0].0;
    assert!(
        got >= expected && got <= expected + ms(1),
        "mark played at {got:?}, want {expected:?}"
    );
    assert_eq!(sim.twilio.stats().underruns, 0);
    assert!(
        sim.events_matching(|e| matches!(
            e,
            handset_engine::call::CallEvent::PlaybackFinished { .. }
        ))
        .len()
            == 1
    );
}
