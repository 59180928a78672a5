//! Tests of the engine-side agent on a harness that plays the client's side of the rings:
//! marks and clears against the audio queued, barge-in, the apology on failure, the reply
//! timeout and hang-ups.

use super::*;
use handset_engine::agent::AgentCommand;
use ringbuf::HeapRb;
use ringbuf::traits::{Producer, Split};

struct Harness {
    agent: RemoteAgent,
    audio: ringbuf::HeapProd<i16>,
    commands: ringbuf::HeapProd<(u64, Downlink)>,
    uplink: mpsc::Receiver<Uplink>,
    shared: Arc<Shared>,
    pushed: u64,
    now: Instant,
}

#[allow(clippy::disallowed_methods)]
fn harness(fallback: AgentFallback, reply_timeout: Option<Duration>) -> Harness {
    let (audio, audio_cons) = HeapRb::<i16>::new(16_000).split();
    let (commands, commands_cons) = HeapRb::<(u64, Downlink)>::new(16).split();
    let (tx, uplink) = mpsc::channel(8);
    let shared = Arc::new(Shared::default());
    let ends = EngineEnds {
        uplink: tx,
        audio: audio_cons,
        commands: commands_cons,
        shared: Arc::clone(&shared),
    };
    Harness {
        agent: RemoteAgent::new(ends, fallback, reply_timeout),
        audio,
        commands,
        uplink,
        shared,
        pushed: 0,
        now: Instant::now(),
    }
}

impl Harness {
    fn push_audio(&mut self, value: i16, n: usize) {
        let samples = vec![value; n];
        assert_eq!(self.audio.push_slice(&samples), n);
        self.pushed += n as u64;
    }

    fn push_command(&mut self, command: Downlink) {
        assert!(self.commands.try_push((self.pushed, command)).is_ok());
        if command == Downlink::Clear {
            self.shared.clear_pushed();
        }
    }

    /// Pulls `ms` of audio: (audio (value, len, rate) runs, marks, clears, hang-ups).
    fn pull(&mut self, ms: u64) -> Vec<AgentCommand> {
        let mut out = AgentOutput::default();
        self.agent.poll_audio(
            self.now,
            Duration::ZERO,
            Duration::from_millis(ms),
            &mut out,
        );
        out.commands().to_vec()
    }
}

#[test]
fn marks_land_exactly_after_the_audio_before_them() {
    let mut h = harness(AgentFallback::Apology, None);
    h.push_command(Downlink::Rate(SampleRate::HZ_24000));
    h.push_audio(1, 480); // 20 ms at 24 kHz
    h.push_command(Downlink::Mark(MarkId(7)));
    h.push_audio(2, 4_800); // 200 ms
    let first = h.pull(100);
    assert_eq!(
        first,
        vec![
            AgentCommand::Audio {
                offset: 0,
                len: 480,
                rate: SampleRate::HZ_24000
            },
            AgentCommand::Mark(MarkId(7)),
            AgentCommand::Audio {
                offset: 480,
                len: 1_920,
                rate: SampleRate::HZ_24000
            },
        ],
        "audio up to the mark, the mark, then the rest of the 100 ms budget"
    );
    let rest = h.pull(1_000);
    assert_eq!(rest.len(), 1);
    assert!(matches!(rest[0], AgentCommand::Audio { len: 2_880, .. }));
    assert!(h.pull(100).is_empty());
}

#[test]
fn clear_drops_the_audio_queued_before_it_at_once() {
    let mut h = harness(AgentFallback::Apology, None);
    h.push_audio(1, 3_200);
    h.push_command(Downlink::Mark(MarkId(3)));
    h.push_audio(1, 160);
    h.push_command(Downlink::Clear);
    h.push_audio(9, 320);
    // Seen on the next caller frame, without pulling audio first.
    let mut out = AgentOutput::default();
    h.agent
        .on_caller_audio(SampleTime::ZERO, &WidebandFrame::SILENCE, &mut out);
    assert_eq!(out.commands(), &[AgentCommand::Clear]);
    let mut mark_dropped = false;
    while let Ok(msg) = h.uplink.try_recv() {
        mark_dropped |= matches!(msg, Uplink::MarkDropped(MarkId(3)));
    }
    assert!(
        mark_dropped,
        "the mark before the clear is reported dropped"
    );
    let after = h.pull(100);
    assert_eq!(after.len(), 1);
    assert!(matches!(after[0], AgentCommand::Audio { len: 320, .. }));
}

#[test]
fn barge_in_discards_queued_agent_audio() {
    let mut h = harness(AgentFallback::Apology, None);
    h.push_audio(1, 8_000);
    assert!(!h.pull(100).is_empty());
    h.push_command(Downlink::Mark(MarkId(4)));
    let mut out = AgentOutput::default();
    let interruption = Interruption {
        onset: Some(SampleTime(800)),
        heard: Duration::from_millis(60),
        sent: Duration::from_millis(100),
        dropped: Duration::ZERO,
        last_played_mark: None,
    };
    h.agent
        .on_event(h.now, &CallEvent::BargeIn(interruption), &mut out);
    assert!(h.pull(200).is_empty(), "nothing of the old answer plays");
    let mut seen = Vec::new();
    while let Ok(msg) = h.uplink.try_recv() {
        seen.push(msg);
    }
    assert!(matches!(seen[0], Uplink::MarkDropped(MarkId(4))));
    assert!(matches!(
        seen[1],
        Uplink::Interrupted {
            first_cleared: Some(MarkId(4)),
            ..
        }
    ));
}

#[test]
fn failure_plays_the_apology_then_hangs_up_after_its_echo() {
    let mut h = harness(AgentFallback::Apology, None);
    h.push_audio(5, 1_600);
    assert!(!h.pull(50).is_empty());
    assert!(h.shared.fail(FailReason::Dropped));
    assert!(!h.shared.fail(FailReason::Slow), "the first failure wins");
    let mut apology = Vec::new();
    let mut saw_clear = false;
    let mut saw_mark = false;
    for _ in 0..100 {
        let mut out = AgentOutput::default();
        h.agent
            .poll_audio(h.now, Duration::ZERO, Duration::from_millis(200), &mut out);
        for c in out.commands() {
            match *c {
                AgentCommand::Audio { offset, len, rate } => {
                    assert_eq!(rate, SampleRate::NARROWBAND);
                    apology.extend_from_slice(&out.audio()[offset..offset + len]);
                }
                AgentCommand::Clear => saw_clear = true,
                AgentCommand::Mark(m) => {
                    assert_eq!(m, FALLBACK_MARK);
                    saw_mark = true;
                }
                AgentCommand::Hangup(_) => panic!("hang-up waits for the echo"),
            }
        }
    }
    assert!(saw_clear, "the agent's half-played audio is cleared first");
    assert!(saw_mark);
    let expected: Vec<i16> = APOLOGY.iter().map(|&b| codec::decode_sample(b)).collect();
    assert_eq!(apology, expected);
    let mut out = AgentOutput::default();
    h.agent
        .on_event(h.now, &CallEvent::MarkPlayed(FALLBACK_MARK), &mut out);
    assert_eq!(
        out.commands(),
        &[AgentCommand::Hangup(HangupReason::AgentFailed)]
    );
}

#[test]
fn no_reply_within_the_timeout_fails_over_and_tells_the_client() {
    let mut h = harness(AgentFallback::Tone, Some(Duration::from_millis(500)));
    let mut out = AgentOutput::default();
    h.agent.on_event(
        h.now,
        &CallEvent::SpeechEnded {
            at: SampleTime(8_000),
        },
        &mut out,
    );
    let deadline = h.agent.poll_timeout().unwrap();
    assert!(
        deadline <= h.now + FAST_POLL,
        "fast polling while a reply is due"
    );
    h.agent
        .on_timeout(h.now + Duration::from_millis(499), &mut out);
    assert_eq!(h.shared.failure(), None);
    h.agent
        .on_timeout(h.now + Duration::from_millis(500), &mut out);
    assert_eq!(h.shared.failure(), Some(FailReason::Slow));
    let mut failed = false;
    while let Ok(msg) = h.uplink.try_recv() {
        failed |= matches!(msg, Uplink::Failed(FailReason::Slow));
    }
    assert!(failed);
    let tone = h.pull(200);
    assert!(matches!(tone[0], AgentCommand::Audio { len: 1_600, .. }));
}

#[test]
fn hangup_waits_for_the_audio_before_it() {
    let mut h = harness(AgentFallback::Apology, None);
    h.push_audio(3, 320);
    h.push_command(Downlink::Hangup(HangupReason::Completed));
    let cmds = h.pull(200);
    assert!(matches!(cmds[0], AgentCommand::Audio { len: 320, .. }));
    assert_eq!(cmds[1], AgentCommand::Mark(HANGUP_MARK));
    assert_eq!(cmds.len(), 2);
    let deadline = h.agent.poll_timeout().expect("a bounded wait");
    let mut out = AgentOutput::default();
    h.agent.on_timeout(deadline, &mut out);
    assert_eq!(
        out.commands(),
        &[AgentCommand::Hangup(HangupReason::Completed)]
    );
}
