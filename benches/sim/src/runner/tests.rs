//! Tests of the runner: the command line's documented defaults, targets and process ids parsed
//! and checked, and the scenarios' caller scripts (conversation, barge-in, DTMF, hold).

use super::*;

fn speech() -> Vec<i16> {
    script::decode_mulaw(DEFAULT_SPEECH)
}

#[test]
fn defaults_match_the_documented_values() {
    let a = SimArgs::defaults();
    assert_eq!(a.scenario, [Scenario::Single]);
    assert_eq!((a.calls, a.calls_each, a.capacity_start), (100, 1, 100));
    assert_eq!(a.pacing_limit_ms, 2.0);
}

#[test]
fn targets_and_pids_are_parsed_and_checked() {
    let t = parse_targets(
        &[
            "handset=http://127.0.0.1:3000/webhook/incoming_call".into(),
            "pipecat=http://127.0.0.1:8765/webhook/incoming_call".into(),
        ],
        &["pipecat=42".into(), "7".into()],
    )
    .unwrap();
    assert_eq!(t[0].name, "handset");
    assert_eq!((t[0].pid, t[1].pid), (Some(7), Some(42)));
    assert!(parse_targets(&["nourl".into()], &[]).is_err());
    assert!(parse_targets(&[], &["nobody=1".into()]).is_err());
    assert_eq!(parse_targets(&[], &[]).unwrap()[0].name, "handset");
}

#[test]
fn conversation_leaves_room_for_every_echo() {
    let s = conversation(&speech(), Duration::from_secs(12));
    assert_eq!(s.utterances.len(), 2, "{:?}", s.utterances);
    for pair in s.utterances.windows(2) {
        assert!(pair[1].onset >= pair[0].end + Duration::from_millis(3_000));
    }
    assert!(
        s.utterances
            .iter()
            .all(|u| u.end + Duration::from_secs(2) < s.duration)
    );
}

#[test]
fn barge_in_script_talks_over_the_greeting_then_over_the_echo() {
    let s = barge_in_script(&speech());
    assert_eq!(s.utterances.len(), 3);
    assert_eq!(s.utterances[0].onset, Duration::from_millis(300));
    let gap = s.utterances[1].onset - s.utterances[0].end;
    assert_eq!(gap, Duration::from_millis(1_000));
    assert!(s.utterances[2].end + Duration::from_secs(2) < s.duration);
}

#[test]
fn dtmf_and_hold_scripts() {
    let d = dtmf_script(&speech(), Duration::from_secs(12));
    assert_eq!(d.dtmf.iter().map(|(_, k)| *k).collect::<String>(), "123#");
    let h = hold_script(&[1_000; 8_000], Duration::from_secs(3));
    assert!(h.utterances.is_empty(), "music is not speech");
    assert_eq!(h.audio.len(), 24_000);
}
