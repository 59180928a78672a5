//! The deadline each released frame reports (`last_release_due`), from which a wake-up's
//! lateness is measured: zero on time, per frame when late, the missed deadlines across a
//! re-anchor, and the push time for a frame pushed after its deadline.

use super::*;

/// Drains the pacer at `now`, returning each released frame's lateness (`now − due`).
fn lateness_of_releases(pacer: &mut Pacer, now: Instant) -> Vec<Duration> {
    let mut late = Vec::new();
    while let Some(t) = pacer.poll_transmit() {
        if let Transmit::Frame { .. } = t {
            let due = pacer.last_release_due().unwrap();
            assert!(due <= now, "a frame left before it was due");
            late.push(now - due);
        }
    }
    late
}

#[test]
fn release_due_is_the_deadline_so_on_time_wakeups_measure_zero_lateness() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    assert_eq!(pacer.last_release_due(), None);
    for i in 0..10 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    // Lead 3: four frames are due at the anchor.
    assert_eq!(
        lateness_of_releases(&mut pacer, t0),
        vec![Duration::ZERO; 4]
    );
    let mut now = t0;
    while let Some(deadline) = pacer.poll_timeout() {
        now = deadline;
        pacer.handle_timeout(now);
        for late in lateness_of_releases(&mut pacer, now) {
            assert_eq!(late, Duration::ZERO);
        }
    }
    assert_eq!(now, t0 + ms(120));
}

#[test]
fn release_due_measures_a_late_wakeup_per_frame() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..10 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // Frame 4 is due at 20 ms and frame 5 at 40 ms: waking at 47 ms releases both.
    let now = t0 + ms(47);
    pacer.handle_timeout(now);
    assert_eq!(lateness_of_releases(&mut pacer, now), vec![ms(27), ms(7)]);
}

#[test]
fn release_due_keeps_missed_deadlines_across_a_reanchor() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..20 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // A 200 ms stall breaks the schedule: the re-anchor releases lead + 1 frames at once,
    // and they are measured against the deadlines they missed (20, 40, 60, 80 ms).
    let now = t0 + ms(200);
    pacer.handle_timeout(now);
    assert_eq!(pacer.stats().reanchors, 1);
    assert_eq!(
        lateness_of_releases(&mut pacer, now),
        vec![ms(180), ms(160), ms(140), ms(120)]
    );
    // The next frame is on the new schedule and on time.
    let next = pacer.poll_timeout().unwrap();
    assert_eq!(next, now + ms(20));
    pacer.handle_timeout(next);
    assert_eq!(lateness_of_releases(&mut pacer, next), vec![Duration::ZERO]);
}

#[test]
fn release_due_of_a_frame_pushed_after_its_deadline_is_its_push_time() {
    let t0 = base();
    let mut pacer = Pacer::new(&PacerConfig::default()).unwrap();
    for i in 0..4 {
        pacer.push_frame(t0, frame(i)).unwrap();
    }
    lateness_of_releases(&mut pacer, t0);
    // Frame 4 was due at 20 ms but only exists at 30 ms: it leaves at once, not late.
    let pushed = t0 + ms(30);
    pacer.push_frame(pushed, frame(4)).unwrap();
    assert_eq!(
        lateness_of_releases(&mut pacer, pushed),
        vec![Duration::ZERO]
    );
    assert_eq!(pacer.last_release_due(), Some(pushed));
}
