//! What the fleet did, read back from its database, its instances' JSON logs, their data
//! directories and the fake agent, and the assertions the tests share on it and on what a
//! call heard.

use std::collections::BTreeSet;
use std::time::Duration;

use handset_engine::agent::echo::GREETING;
use handset_shell::store::{CallRecord, JobState, RecordingJob};
use handset_sim::CallOutcome;
use tokio::time::Instant;

use crate::IDS;
use crate::fleet::Fleet;
use crate::support::fakes::Offers;
use crate::support::{best_correlation, heard_between, played_bytes};

/// Polls `check` every 100 ms until it gives a value; panics with `what` after `limit`.
pub(crate) async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Fleet {
    /// The call's record.
    pub(crate) async fn call(&self, call_sid: &str) -> CallRecord {
        self.store
            .call(call_sid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no calls row for {call_sid}"))
    }

    /// Waits until recording job `sid` is in `state`.
    pub(crate) async fn wait_job(
        &self,
        sid: &str,
        state: JobState,
        limit: Duration,
    ) -> RecordingJob {
        let what = format!("recording {sid} {}", state.as_str());
        wait_for(limit, &what, async || {
            self.store
                .recording(sid)
                .await
                .unwrap()
                .filter(|job| job.state == state)
        })
        .await
    }

    /// What instance `id` logged with `message` and these `fields` (its JSON log lines).
    fn logged(&self, id: &str, message: &str, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.instance(id).log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["message"] == message && fields.iter().all(|(k, want)| v[k] == *want))
            .collect()
    }

    /// For each copy of a callback received (a `message` line with these `fields`), the
    /// instance that received it and whether its copy was the one stored (the `new` field).
    ///
    /// Logs leave each instance from a thread of their own, so a line may reach the file a
    /// moment after the reply it describes: this waits (up to 10 s) for `expected` copies and
    /// returns what was logged by then.
    pub(crate) async fn copies(
        &self,
        message: &str,
        fields: &[(&str, &str)],
        expected: usize,
    ) -> Vec<(&'static str, bool)> {
        let read = || -> Vec<(&'static str, bool)> {
            IDS.into_iter()
                .flat_map(|id| {
                    self.logged(id, message, fields)
                        .into_iter()
                        .map(move |v| (id, v["new"].as_bool().expect("a `new` field")))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let copies = read();
            if copies.len() >= expected || Instant::now() >= deadline {
                return copies;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether instance `id` saved recording `sid` in its `DATA_DIR`.
    pub(crate) fn has_recording(&self, id: &str, sid: &str) -> bool {
        self.instance(id)
            .data_dir
            .join(format!("recordings/{sid}.wav"))
            .is_file()
    }
}

/// How many transcriptions of `sid` the fake agent made.
pub(crate) fn transcriptions(offers: &Offers, sid: &str) -> usize {
    offers
        .lock()
        .unwrap()
        .iter()
        .filter(|(offer, _)| offer["recordingSid"] == sid)
        .count()
}

/// `delivered` copies of one callback were received, by both instances, and exactly one of
/// them was stored.
pub(crate) fn assert_copies_stored_once(copies: &[(&str, bool)], delivered: usize) {
    assert_eq!(
        copies.len(),
        delivered,
        "every copy was received: {copies:?}"
    );
    let instances: BTreeSet<&str> = copies.iter().map(|(id, _)| *id).collect();
    assert_eq!(instances.len(), IDS.len(), "by both instances: {copies:?}");
    let stored = copies.iter().filter(|(_, new)| *new).count();
    assert_eq!(stored, 1, "stored once: {copies:?}");
}

/// A call that ended normally: every server message well formed, closed by the server with
/// 1000 after the caller's `stop`, every mark sent played and echoed back.
pub(crate) fn assert_normal_end(outcome: &CallOutcome) {
    assert!(
        outcome.malformed.is_empty(),
        "malformed messages: {:?}",
        outcome.malformed
    );
    assert_eq!(outcome.metrics.failure, None, "{:?}", outcome.close);
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{:?}",
        outcome.close
    );
    assert_eq!(outcome.subprotocol.as_deref(), Some("audio.twilio.com"));
    let p = &outcome.playback;
    assert!(p.marks_received > 0, "{p:?}");
    assert_eq!(p.marks_played + p.marks_cleared, p.marks_received, "{p:?}");
}

/// The greeting was heard byte for byte (µ-law 0x7F and 0xFF are both zero).
pub(crate) fn assert_greeting_heard(outcome: &CallOutcome) {
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    let heard = played_bytes(outcome);
    assert!(
        heard.len() >= GREETING.len(),
        "only {} bytes played",
        heard.len()
    );
    assert!(
        heard[..GREETING.len()]
            .iter()
            .zip(GREETING)
            .all(|(a, b)| *a == norm(*b)),
        "the greeting played verbatim"
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a1"),
        "the greeting's mark: {:?}",
        outcome.mark_names
    );
}

/// After the caller's `clip` ended at `spoken_end`, what played was that speech; returns the
/// correlation.
pub(crate) fn assert_echoed(
    outcome: &CallOutcome,
    clip: &[i16],
    spoken_end: Duration,
    until: Duration,
) -> f64 {
    let echo = heard_between(outcome, spoken_end, until);
    assert!(
        echo.len() >= clip.len() * 3 / 4,
        "echo of {} samples for a {}-sample utterance",
        echo.len(),
        clip.len()
    );
    let corr = best_correlation(clip, &echo, 12_000);
    assert!(
        corr > 0.7,
        "the echo correlates with the caller's speech: {corr:.3}"
    );
    corr
}
