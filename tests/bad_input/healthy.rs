//! The healthy call beside the attackers: a Twilio-emulating caller that calls back to back
//! for as long as the cases run, and must hear exactly what an undisturbed call hears
//! ([`assert_healthy`]), every frame counted at both ends, nothing dropped, the server's pacer
//! never starved ([`Matrix::check_outcomes`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use handset_engine::agent::echo::GREETING;
use handset_sim::CallOutcome;
use libtest_mimic::Failed;

use crate::support::{self, call_sid};
use crate::{Matrix, PATIENCE, client_runtime, greeting_frames};

/// The healthy caller: 2 s of silence (the greeting plays), "hello world", then silence while
/// the echo plays.
pub(crate) fn healthy_audio() -> Arc<Vec<i16>> {
    support::after_silence(Duration::from_secs(2), &support::speech())
}

pub(crate) const HEALTHY_LENGTH: Duration = Duration::from_secs(6);

/// What every healthy call must hear: the whole greeting verbatim and then the echo, with no
/// clear and only documented message shapes. When the frames arrived is not judged here: the
/// server's own account of its pacing is (see [`Matrix::check_outcomes`]).
fn assert_healthy(outcome: &CallOutcome, what: &str) {
    assert!(
        outcome.malformed.is_empty(),
        "{what}: malformed {:?}",
        outcome.malformed
    );
    assert_eq!(
        outcome.playback.clears, 0,
        "{what}: nothing cut: {:?}",
        outcome.playback
    );
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{what}: {:?}",
        outcome.close
    );
    let first: Vec<u8> = outcome
        .played
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .take(GREETING.len())
        .collect();
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    assert!(
        first.len() == GREETING.len()
            && first
                .iter()
                .zip(GREETING)
                .all(|(a, b)| norm(*a) == norm(*b)),
        "{what}: the whole greeting, verbatim"
    );
    // The echo of the 1.4 s clip, trimmed by the VAD at both ends.
    assert!(
        outcome.playback.media_messages >= greeting_frames() + 50,
        "{what}: greeting {} frames + an echo: {:?}",
        greeting_frames(),
        outcome.playback
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a1"),
        "{what}: greeting mark"
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a2"),
        "{what}: echo mark"
    );
    assert_eq!(
        outcome.playback.marks_played, outcome.playback.marks_received,
        "{what}"
    );
}

/// The healthy call's trial: listed after every case, so it runs last (see [`main`](crate::main)).
pub(crate) const HEALTHY: &str = "healthy_call_beside_every_case";

/// Longest the healthy trial waits for the cases (each is bounded by a few [`PATIENCE`]s).
const CASES_PATIENCE: Duration = Duration::from_secs(600);

impl Matrix {
    /// The healthy trial: waits for the cases, stops the healthy caller after its current
    /// call, and checks every call it made.
    pub(crate) fn check_healthy(&self) -> Result<(), Failed> {
        let left = self
            .case_finished
            .wait_timeout_while(
                self.cases_left
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
                CASES_PATIENCE,
                |left| *left > 0,
            )
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *left > 0 {
            return Err(format!("{} cases still running after {CASES_PATIENCE:?}", *left).into());
        }
        drop(left);
        self.stop_healthy.store(true, Ordering::Relaxed);
        let caller = self
            .healthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the healthy caller runs when its trial is selected");
        let outcomes = caller
            .join()
            .map_err(|_| "the healthy caller panicked (see its message above)")?;
        client_runtime().block_on(self.check_outcomes(&outcomes));
        Ok(())
    }

    /// Every healthy call heard exactly what an undisturbed call hears, and the server's pacer
    /// always had its next frame ready when it was due.
    ///
    /// The caller's receive times are not judged: on a loaded 2-core machine (a debug build,
    /// other builds beside it) every thread of this process, a bare sleeping one included, is
    /// sometimes held up for 50–130 ms, the server's engine threads, its socket writers and
    /// the healthy caller alike, and the pacer's 60 ms lead does not cover that. With
    /// `--nocapture` the caller-side gaps and the pacer's late wake-ups are printed.
    async fn check_outcomes(&self, outcomes: &[CallOutcome]) {
        assert!(!outcomes.is_empty(), "a healthy call ran");
        for (i, outcome) in outcomes.iter().enumerate() {
            let what = format!("healthy call {i}");
            let sid = call_sid(2 + i as u32);
            assert_healthy(outcome, &what);
            // Exact counts: every frame the server sent was received, every frame the caller
            // sent reached the engine.
            let stop = self.logs.wait_for("WS stop", &sid, PATIENCE).await;
            assert_eq!(stop.len(), 1, "{what}: one WS stop line");
            if self.report_timing {
                eprintln!(
                    "{HEALTHY}: call {i}: {} frames; caller-side gaps {} ({:?}); pacer late wake-ups {}",
                    outcome.playback.media_messages,
                    outcome.playback.underruns,
                    outcome.playback.underrun_time,
                    stop[0]["late_wakeups"]
                );
            }
            // The server's pacer never found the call's queue empty when a frame was due
            // (an underrun is a re-anchor caused by a starved queue, not a late wake-up).
            assert_eq!(
                stop[0]["underruns"].as_u64(),
                Some(0),
                "{what}: the pacer never starved: {}",
                stop[0]
            );
            assert_eq!(
                stop[0]["frames_out"].as_u64(),
                Some(outcome.playback.media_messages),
                "{what}: frames the server sent = frames the caller received: {}",
                stop[0]
            );
            // Frames that arrive after their playout time (a stalled machine) are counted as
            // late.
            let taken =
                stop[0]["media_in"].as_u64().unwrap_or(0) + stop[0]["late"].as_u64().unwrap_or(0);
            assert_eq!(
                taken, outcome.frames_sent,
                "{what}: frames the caller sent = frames the engine took in or counted late: {}",
                stop[0]
            );
            assert!(
                self.logs.find("WS input dropped", &sid).is_empty(),
                "{what}: nothing dropped"
            );
        }
        assert_eq!(self.server.wait_idle(PATIENCE).await, 0, "every call ended");
    }
}
