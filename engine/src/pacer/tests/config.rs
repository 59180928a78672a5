//! The pacer's configuration: the default values, each invalid setting rejected with its
//! numbers, and the frame and mark queues' capacity.

use super::*;

#[test]
fn default_config_is_valid_and_documented_values_hold() {
    let config = PacerConfig::default();
    assert_eq!(config.lead_frames, 3);
    assert_eq!(config.max_burst, config.lead_frames + 2);
    assert_eq!(config.reanchor_after, config.lead_frames);
    assert!(Pacer::new(&config).is_ok());
    // The module docs state the slot sizes used for the memory estimate.
    assert_eq!(size_of::<QueuedFrame>(), 176);
    assert_eq!(size_of::<QueuedMark>(), 16);
}

#[test]
fn invalid_configs_are_rejected_with_their_numbers() {
    let ok = PacerConfig::default();
    let burst = PacerConfig {
        max_burst: 3,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&burst).unwrap_err(),
        PacerConfigError::BurstBelowLead {
            max_burst: 3,
            needed: 4
        }
    );
    let reanchor = PacerConfig {
        reanchor_after: 2,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&reanchor).unwrap_err(),
        PacerConfigError::ReanchorBeforeLead {
            reanchor_after: 2,
            lead_frames: 3
        }
    );
    let late = PacerConfig {
        late_threshold: FRAME,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&late).unwrap_err(),
        PacerConfigError::LateThresholdTooLarge { threshold: FRAME }
    );
    let empty = PacerConfig {
        capacity_frames: 0,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&empty).unwrap_err(),
        PacerConfigError::ZeroCapacity
    );
    let no_marks = PacerConfig {
        capacity_marks: 0,
        ..ok.clone()
    };
    assert_eq!(
        Pacer::new(&no_marks).unwrap_err(),
        PacerConfigError::ZeroMarkCapacity
    );
    let huge = PacerConfig {
        capacity_frames: usize::MAX / 2,
        ..ok
    };
    assert!(matches!(
        Pacer::new(&huge),
        Err(PacerConfigError::Allocation { .. })
    ));
    assert_eq!(
        PacerConfigError::BurstBelowLead {
            max_burst: 3,
            needed: 4
        }
        .to_string(),
        "max_burst 3 is below lead_frames + 1 = 4"
    );
}

#[test]
fn pushing_beyond_capacity_is_an_error_and_changes_nothing() {
    let config = PacerConfig {
        capacity_frames: 4,
        capacity_marks: 1,
        ..PacerConfig::default()
    };
    let mut pacer = Pacer::new(&config).unwrap();
    let t0 = base();
    for id in 0..4 {
        pacer.push_frame(t0, frame(id)).unwrap();
    }
    assert_eq!(
        pacer.push_frame(t0, frame(4)),
        Err(PacerError::QueueFull { capacity: 4 })
    );
    assert_eq!(pacer.queued_frames(), 4);
    assert_eq!(
        pacer.poll_timeout(),
        Some(t0),
        "released frames wait to be polled"
    );
    pacer.push_mark(MarkId(1)).unwrap();
    assert_eq!(
        pacer.push_mark(MarkId(2)),
        Err(PacerError::MarkQueueFull { capacity: 1 })
    );
    assert_eq!(
        PacerError::QueueFull { capacity: 4 }.to_string(),
        "pacer queue full: 4 frames queued"
    );
    let mut out = Vec::new();
    drain(&mut pacer, t0, &mut out);
    assert_eq!(frame_ids(&out), [0, 1, 2, 3]);
    assert_eq!(out.len(), 5);
    // Space is free again once frames leave.
    pacer.push_frame(t0, frame(4)).unwrap();
    pacer.push_mark(MarkId(2)).unwrap();
}
