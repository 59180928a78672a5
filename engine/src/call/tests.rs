#![allow(clippy::disallowed_methods)] // tests take one real anchor instant

use super::*;

fn call() -> (Call, Instant) {
    let t0 = Instant::now();
    (Call::new(&CallConfig::default(), t0).unwrap(), t0)
}

fn drain(call: &mut Call) -> Vec<Output> {
    std::iter::from_fn(|| call.poll_output()).collect()
}

#[test]
fn zero_mark_interval_is_refused() {
    let config = CallConfig {
        mark_interval_frames: 0,
        ..CallConfig::default()
    };
    assert_eq!(
        Call::new(&config, Instant::now()).err(),
        Some(ConfigError::MarkInterval)
    );
}

#[test]
fn input_without_drain_is_refused() {
    let (mut call, t0) = call();
    call.handle_input(Input::Dtmf(t0, '5')).unwrap();
    assert_eq!(
        call.handle_input(Input::Dtmf(t0, '6')),
        Err(CallError::InputWithoutDrain)
    );
    assert_eq!(drain(&mut call), vec![Output::Event(CallEvent::Dtmf('5'))]);
    call.handle_input(Input::Dtmf(t0, '6')).unwrap();
    assert_eq!(drain(&mut call), vec![Output::Event(CallEvent::Dtmf('6'))]);
    assert_eq!(call.stats().dtmf, 2);
}

#[test]
fn unsupported_agent_rate_is_a_counted_error() {
    let (mut call, t0) = call();
    let rate = SampleRate::new(11_025).unwrap();
    assert_eq!(
        call.handle_input(Input::AgentAudio(t0, &[0; 220], rate)),
        Err(CallError::UnsupportedRate { hz: 11_025 })
    );
    assert_eq!(call.stats().agent_bad_rate, 1);
    assert!(drain(&mut call).is_empty());
}

#[test]
fn reserved_mark_ids_are_refused() {
    let (mut call, t0) = call();
    assert_eq!(
        call.handle_input(Input::AgentMark(t0, MarkId(PROGRESS_MARK_BASE + 3))),
        Err(CallError::ReservedMark {
            id: PROGRESS_MARK_BASE + 3
        })
    );
}

#[test]
fn inputs_after_stop_are_refused_and_counted() {
    let (mut call, t0) = call();
    call.handle_input(Input::Stop(t0)).unwrap();
    assert_eq!(drain(&mut call), vec![Output::Event(CallEvent::Stopped)]);
    assert!(call.is_stopped());
    assert_eq!(call.poll_timeout(), None);
    let media = InboundMedia::parse("1", "0", &[0xFF; 160]).unwrap();
    assert_eq!(
        call.handle_input(Input::Media(t0, media)),
        Err(CallError::AfterStop)
    );
    assert_eq!(call.stats().after_stop, 1);
}

#[test]
fn first_agent_frame_is_preceded_by_a_progress_mark() {
    let (mut call, t0) = call();
    call.handle_input(Input::AgentAudio(t0, &[1000; 800], SampleRate::NARROWBAND))
        .unwrap();
    let out = drain(&mut call);
    assert!(
        matches!(out[0], Output::Mark(m) if m.0 == PROGRESS_MARK_BASE),
        "{out:?}"
    );
    assert!(matches!(out[1], Output::Transmit(_)));
    assert!(call.agent_playing());
}

#[test]
fn agent_mark_echo_reports_mark_played_and_playback_finished() {
    let (mut call, t0) = call();
    call.handle_input(Input::AgentAudio(t0, &[1000; 160], SampleRate::NARROWBAND))
        .unwrap();
    let mut sent: Vec<Output> = drain(&mut call);
    call.handle_input(Input::AgentMark(t0, MarkId(7))).unwrap();
    sent.extend(drain(&mut call));
    let marks: Vec<MarkId> = sent
        .iter()
        .filter_map(|o| match o {
            Output::Mark(m) => Some(*m),
            _ => None,
        })
        .collect();
    assert_eq!(marks, vec![MarkId(PROGRESS_MARK_BASE), MarkId(7)]);
    let t1 = t0 + Duration::from_millis(20);
    for m in marks {
        call.handle_input(Input::MarkEcho(t1, m)).unwrap();
        sent.extend(drain(&mut call));
    }
    assert!(sent.contains(&Output::Event(CallEvent::MarkPlayed(MarkId(7)))));
    assert!(
        sent.iter()
            .any(|o| matches!(o, Output::Event(CallEvent::PlaybackFinished { .. }))),
        "{sent:?}"
    );
    assert!(!call.agent_playing());
}

#[test]
fn a_long_stall_delivers_every_caller_frame_in_order_a_ring_at_a_time() {
    let (mut call, t0) = call();
    // 40 frames arrive at once, then the driver stalls for 2 s.
    for n in 0..40u32 {
        let media = InboundMedia {
            chunk: u64::from(n) + 1,
            timestamp_ms: u64::from(n) * 20,
            payload: MulawFrame([0x55; 160]),
        };
        call.handle_input(Input::Media(t0, media)).unwrap();
        assert!(drain(&mut call).is_empty());
    }
    let now = t0 + Duration::from_secs(2);
    let mut feed = Vec::new();
    let mut rounds = 0;
    // What the driver does: serve again while the call's deadline is not in the future.
    while call.poll_timeout().is_some_and(|t| t <= now) {
        rounds += 1;
        assert!(rounds < 1_000, "the call keeps asking for a timeout");
        call.handle_input(Input::Timeout(now)).unwrap();
        let mut this_round = 0;
        for out in drain(&mut call) {
            if let Output::CallerAudio(at, _) = out {
                feed.push(at);
                this_round += 1;
            }
        }
        assert!(
            this_round <= CALLER_RING,
            "{this_round} caller frames in one drain"
        );
    }
    let stats = call.stats();
    assert_eq!(stats.outputs_dropped, 0);
    assert!(
        stats.caller_frames >= 40,
        "{} slots played",
        stats.caller_frames
    );
    assert_eq!(feed.len() as u64, stats.agent_feed_frames);
    assert!(rounds > 1, "more overdue frames than one ring");
    for (k, at) in feed.iter().enumerate() {
        assert_eq!(*at, SampleTime::from_frames(k as u64));
    }
}
