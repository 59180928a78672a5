//! What a simulated caller hears, measured: the sans-IO half of one simulated call.
//!
//! [`CallObserver`] owns the model of Twilio's playback buffer
//! ([`crate::playback::PlaybackModel`]) and is fed every server message with the instant it
//! arrived. It keeps the played timeline compactly (merged spans, not bytes) and the
//! statistics, and [`CallObserver::finish`] turns them into [`CallMetrics`] given the caller's
//! script. Definitions (the report uses these words exactly):
//!
//! - **Playback burst**: a run of outbound `media` that Twilio plays back to back. A burst
//!   starts with the first `media` of the call, the first after a `clear`, or the first after
//!   the buffer sat empty for at least the underrun window (1 s); a shorter gap is an
//!   *underrun* inside the burst.
//! - **Send-ahead lead**: the first messages of a burst that arrive less than half a payload
//!   duration after the previous one (a server sends them at once to fill Twilio's buffer).
//! - **Outbound frame interval error**: for consecutive `media` messages `i − 1`, `i` of the
//!   same burst, after the lead, `|(arrival_i − arrival_{i−1}) − duration(payload_{i−1})|`,
//!   where a payload's duration is its byte count at 8 kHz (160 bytes = 20 ms). Arrival is
//!   when the simulator read the message off the socket; the wire capture ([`super::wire`])
//!   feeds a second observer with the instants the messages crossed the wire instead.
//! - **Buffer depth**: the audio queued in Twilio's buffer when a `media` message arrives
//!   (before adding it).
//! - **Response latency**: for each caller utterance, from the end of the speech as sent to
//!   the start of the first agent audio that plays after it (and before the next utterance).
//! - **Barge-in**: an utterance whose onset finds agent audio playing. Its latency runs from
//!   the onset (when the sim started sending the speech) to the first `clear` received after
//!   it; it is *silenced* when the agent audio playing at the onset stops (by the `clear`, or
//!   earlier when the server stops sending); its stale audio is the agent audio played
//!   between the onset and the end of the utterance.
//! - **False barge-in**: a `clear` that is neither within an utterance (onset to end + 1 s)
//!   nor within 1 s after a DTMF key.
//! - **Unprompted playback**: a new playback (after at least the underrun window of silence)
//!   that starts after the first one (the greeting) without caller speech in the 5 s before
//!   it (for example hold music echoed).

use std::time::{Duration, Instant};

use handset_engine::MarkId;
use serde::Serialize;

use super::script::{Utterance, ser_ms};
use super::stats::{Histogram, Summary};
use crate::playback::{MarkEcho, PlaybackModel, PlaybackStats};

/// µ-law bytes per second.
const BYTES_PER_SECOND: u64 = 8_000;
/// A `clear` this long after an utterance's end still belongs to it.
const CLEAR_GRACE: Duration = Duration::from_secs(1);
/// A `clear` this long after a DTMF key belongs to it.
const DTMF_GRACE: Duration = Duration::from_secs(1);
/// Agent audio starting this long after an utterance's end is still its response.
const RESPONSE_WINDOW: Duration = Duration::from_secs(5);
/// Mark echoes kept per call for the timeline.
const TIMELINE_MARKS: usize = 2_000;

/// A span of agent audio played, since the stream start.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize)]
pub struct Span {
    /// When it started playing.
    #[serde(serialize_with = "ser_ms")]
    pub start: Duration,
    /// When it stopped (end of audio or `clear`).
    #[serde(serialize_with = "ser_ms")]
    pub end: Duration,
}

/// A call's events on one time axis (since the stream start), for the picture.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Caller speech as sent.
    pub speech: Vec<Utterance>,
    /// Agent audio as played by the model.
    pub played: Vec<Span>,
    /// Mark echoes sent back (at most 2,000), ms.
    pub marks_ms: Vec<f64>,
    /// `clear` arrivals, ms.
    pub clears_ms: Vec<f64>,
    /// DTMF keys sent, ms.
    pub dtmf_ms: Vec<f64>,
}

/// One barge-in, measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BargeIn {
    /// Caller speech onset, ms since the stream start.
    pub onset_ms: f64,
    /// Onset → `clear` received, ms; `None` if no `clear` came before the utterance ended.
    pub latency_ms: Option<f64>,
    /// Onset → the agent audio playing at the onset stopped, ms; `None` if it played on past
    /// the end of the utterance.
    pub silenced_ms: Option<f64>,
    /// Agent audio played between the onset and the end of the utterance, ms.
    pub stale_ms: f64,
}

/// Everything measured on one call.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallMetrics {
    /// The call.
    pub call_sid: String,
    /// Why the call failed (webhook, TwiML, handshake, or the server closing abnormally).
    pub failure: Option<String>,
    /// Caller `media` messages sent.
    pub frames_sent: u64,
    /// Caller frames skipped on purpose (impairment).
    pub frames_skipped: u64,
    /// Caller messages that could not be written (socket gone).
    pub send_errors: u64,
    /// DTMF keys sent.
    pub dtmf_sent: u64,
    /// Outbound `media` messages received.
    pub media_received: u64,
    /// Outbound µ-law bytes received.
    pub bytes_received: u64,
    /// Messages that were not exactly one of the documented shapes.
    pub malformed: u64,
    /// Playback bursts.
    pub bursts: u64,
    /// Messages excluded from the interval error as send-ahead lead.
    pub lead_messages: u64,
    /// Outbound frame interval error.
    pub interval_error: Summary,
    /// Every interval-error sample as (index of the later `media` in the call, from 0; error
    /// in ms), kept for the timeline calls only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<(u64, f64)>,
    /// The client's port of the call's WebSocket connection (joins the wire capture).
    pub local_port: Option<u16>,
    /// The call's `streamSid`.
    pub stream_sid: String,
    /// The same call measured at the wire (with `--wire-capture`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<super::wire::WireCallMetrics>,
    /// Buffer depth when `media` arrives.
    pub depth: Summary,
    /// Times playback starved inside a burst.
    pub underruns: u64,
    /// Silence heard inside underruns, ms.
    pub underrun_ms: f64,
    /// Marks received / echoed as played / echoed because of a `clear`.
    pub marks: [u64; 3],
    /// `clear` messages received.
    pub clears: u64,
    /// Audio dropped from Twilio's buffer by `clear`, ms.
    pub cleared_ms: f64,
    /// Stream start → first agent audio heard, ms.
    pub first_audio_ms: Option<f64>,
    /// Response latencies, ms, one per answered utterance.
    pub responses_ms: Vec<f64>,
    /// Utterances with no agent audio after them.
    pub unanswered: u64,
    /// Barge-ins.
    pub barge_ins: Vec<BargeIn>,
    /// `clear`s not explained by caller speech or DTMF.
    pub false_barge_ins: u64,
    /// Agent audio that started without a caller utterance before it.
    pub unprompted_playbacks: u64,
    /// DTMF key → next `clear`, ms (only keys answered by a `clear` within 1 s).
    pub dtmf_clear_ms: Vec<f64>,
    /// How late the simulator wrote caller frames against their schedule (its own overhead).
    pub send_lateness: Summary,
    /// The server's close code, if it closed.
    pub close_code: Option<u16>,
    /// Events on a time axis (kept for the first calls of a run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// Interval-error samples, for aggregation.
    #[serde(skip)]
    pub interval_hist: Histogram,
    /// Buffer-depth samples, for aggregation.
    #[serde(skip)]
    pub depth_hist: Histogram,
    /// Send-lateness samples, for aggregation.
    #[serde(skip)]
    pub lateness_hist: Histogram,
}

/// The playback model plus the measurements on top of it.
#[derive(Debug)]
pub struct CallObserver {
    t0: Instant,
    model: PlaybackModel,
    /// Arrival and payload duration of the previous `media` in the current burst.
    last_media: Option<(Instant, Duration)>,
    in_lead: bool,
    clear_since_media: bool,
    bursts: u64,
    lead_messages: u64,
    underruns: u64,
    underrun_time: Duration,
    interval: Histogram,
    depth: Histogram,
    lateness: Histogram,
    played: Vec<Span>,
    clears: Vec<Duration>,
    mark_echoes: Vec<f64>,
    next_mark: u64,
    keep_marks: bool,
    /// `media` messages so far.
    media_count: u64,
    /// Interval-error samples with the index of their `media`, when kept.
    interval_log: Option<Vec<(u64, Duration)>>,
}

impl CallObserver {
    /// A fresh observer; `t0` is when `start` was sent. With `record` on, the model keeps every
    /// played byte; with `keep_marks`, mark echo times are kept for the timeline.
    pub fn new(t0: Instant, record: bool, keep_marks: bool) -> Self {
        Self {
            t0,
            model: PlaybackModel::new(record),
            last_media: None,
            in_lead: true,
            clear_since_media: false,
            bursts: 0,
            lead_messages: 0,
            underruns: 0,
            underrun_time: Duration::ZERO,
            interval: Histogram::new(),
            depth: Histogram::new(),
            lateness: Histogram::new(),
            played: Vec::new(),
            clears: Vec::new(),
            mark_echoes: Vec::new(),
            next_mark: 0,
            keep_marks,
            media_count: 0,
            interval_log: None,
        }
    }

    /// Keeps every interval-error sample with the index of its `media` (for the timeline calls
    /// and the wire calibration; a long call keeps a few thousand).
    pub fn keep_intervals(&mut self) {
        self.interval_log.get_or_insert_with(Vec::new);
    }

    /// The playback model.
    pub fn model(&self) -> &PlaybackModel {
        &self.model
    }

    /// A `media` message with `payload` µ-law bytes arrived at `at`.
    pub fn on_media(&mut self, at: Instant, payload: &[u8]) {
        let duration = bytes_duration(payload.len() as u64);
        let buffered = self.model.buffered(at);
        let idle_for = self
            .model
            .buffer_end()
            .map(|end| at.saturating_duration_since(end));
        let new_burst = self.last_media.is_none()
            || self.clear_since_media
            || idle_for.is_some_and(|gap| gap >= self.model.underrun_window());
        if new_burst {
            self.bursts += 1;
            self.in_lead = true;
        } else if let Some((last_at, last_duration)) = self.last_media {
            // A gap inside a burst: playback starved (the model does not know about bursts
            // and would also count a resumption shortly after a `clear`).
            if let Some(gap) = idle_for.filter(|g| !g.is_zero()) {
                self.underruns += 1;
                self.underrun_time += gap;
            }
            let gap = at.saturating_duration_since(last_at);
            if self.in_lead && gap < last_duration / 2 {
                self.lead_messages += 1;
            } else {
                self.in_lead = false;
                let error = gap.abs_diff(last_duration);
                self.interval.record(error);
                if let Some(log) = &mut self.interval_log {
                    log.push((self.media_count, error));
                }
            }
        }
        self.depth.record(buffered);
        self.last_media = Some((at, duration));
        self.clear_since_media = false;
        self.media_count += 1;

        let start = at.max(self.model.buffer_end().unwrap_or(at));
        let span = Span {
            start: start.saturating_duration_since(self.t0),
            end: (start + duration).saturating_duration_since(self.t0),
        };
        match self.played.last_mut() {
            Some(last) if last.end == span.start => last.end = span.end,
            _ => self.played.push(span),
        }
        self.model.handle_media(at, payload);
    }

    /// A `mark` arrived at `at`; returns the id its echo will carry (ids count up from 0, and
    /// echoes come back in the order marks arrived).
    pub fn on_mark(&mut self, at: Instant) -> MarkId {
        let id = MarkId(self.next_mark);
        self.next_mark += 1;
        self.model.handle_mark(at, id);
        id
    }

    /// A `clear` arrived at `at`.
    pub fn on_clear(&mut self, at: Instant) {
        let now = at.saturating_duration_since(self.t0);
        self.model.handle_clear(at);
        self.clears.push(now);
        self.clear_since_media = true;
        while let Some(last) = self.played.last_mut() {
            if last.start >= now {
                self.played.pop();
            } else {
                last.end = last.end.min(now);
                break;
            }
        }
    }

    /// When the next mark echo is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.model.poll_timeout()
    }

    /// The next mark echo due at `now`; drain until `None`.
    pub fn poll_echo(&mut self, now: Instant) -> Option<MarkEcho> {
        let echo = self.model.poll_echo(now)?;
        if self.keep_marks && self.mark_echoes.len() < TIMELINE_MARKS {
            self.mark_echoes
                .push(echo.at.saturating_duration_since(self.t0).as_secs_f64() * 1000.0);
        }
        Some(echo)
    }

    /// The simulator wrote a caller frame `late` after its scheduled time.
    pub fn on_send_lateness(&mut self, late: Duration) {
        self.lateness.record(late);
    }

    /// Playback counters so far.
    pub fn playback(&self) -> PlaybackStats {
        self.model.stats()
    }

    /// Agent audio played so far, as merged spans since the stream start.
    pub fn played(&self) -> &[Span] {
        &self.played
    }

    /// The measurements, given what the caller said and keyed.
    pub fn finish(
        &self,
        utterances: &[Utterance],
        dtmf: &[Duration],
        keep_timeline: bool,
    ) -> CallMetrics {
        let stats = self.model.stats();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let played_between = |from: Duration, to: Duration| -> Duration {
            self.played
                .iter()
                .map(|s| s.end.min(to).saturating_sub(s.start.max(from)))
                .sum()
        };

        let mut responses_ms = Vec::new();
        let mut unanswered = 0;
        let mut barge_ins = Vec::new();
        for (i, u) in utterances.iter().enumerate() {
            let next_onset = utterances.get(i + 1).map_or(Duration::MAX, |n| n.onset);
            let limit = next_onset.min(u.end + RESPONSE_WINDOW);
            match self
                .played
                .iter()
                .find(|s| s.start >= u.end && s.start < limit)
            {
                Some(s) => responses_ms.push(ms(s.start - u.end)),
                None => unanswered += 1,
            }
            let playing = self
                .played
                .iter()
                .find(|s| s.start <= u.onset && s.end > u.onset);
            if let Some(playing) = playing {
                let clear = self.clears.iter().find(|c| **c >= u.onset && **c <= u.end);
                barge_ins.push(BargeIn {
                    onset_ms: ms(u.onset),
                    latency_ms: clear.map(|c| ms(*c - u.onset)),
                    silenced_ms: (playing.end <= u.end).then(|| ms(playing.end - u.onset)),
                    stale_ms: ms(played_between(u.onset, u.end)),
                });
            }
        }
        let mut dtmf_clear_ms = Vec::new();
        for key in dtmf {
            if let Some(c) = self
                .clears
                .iter()
                .find(|c| **c >= *key && **c <= *key + DTMF_GRACE)
            {
                dtmf_clear_ms.push(ms(*c - *key));
            }
        }
        let false_barge_ins = self
            .clears
            .iter()
            .filter(|c| {
                !utterances
                    .iter()
                    .any(|u| **c >= u.onset && **c <= u.end + CLEAR_GRACE)
                    && !dtmf.iter().any(|k| **c >= *k && **c <= *k + DTMF_GRACE)
            })
            .count() as u64;
        // New playbacks only: a span that follows the previous one within the underrun window
        // is the same playback resuming after an underrun.
        let window = self.model.underrun_window();
        let unprompted_playbacks = self
            .played
            .windows(2)
            .filter(|w| w[1].start >= w[0].end + window)
            .map(|w| &w[1])
            .filter(|s| {
                !utterances
                    .iter()
                    .any(|u| s.start >= u.onset && s.start <= u.end + RESPONSE_WINDOW)
            })
            .count() as u64;

        CallMetrics {
            media_received: stats.media_messages,
            bytes_received: stats.bytes_received,
            bursts: self.bursts,
            lead_messages: self.lead_messages,
            interval_error: self.interval.summary(),
            intervals: self
                .interval_log
                .iter()
                .flatten()
                .map(|(i, e)| (*i, ms(*e)))
                .collect(),
            depth: self.depth.summary(),
            underruns: self.underruns,
            underrun_ms: ms(self.underrun_time),
            marks: [
                stats.marks_received,
                stats.marks_played,
                stats.marks_cleared,
            ],
            clears: stats.clears,
            cleared_ms: ms(bytes_duration(stats.bytes_cleared)),
            first_audio_ms: self.played.first().map(|s| ms(s.start)),
            responses_ms,
            unanswered,
            barge_ins,
            false_barge_ins,
            unprompted_playbacks,
            dtmf_clear_ms,
            send_lateness: self.lateness.summary(),
            dtmf_sent: dtmf.len() as u64,
            timeline: keep_timeline.then(|| Timeline {
                speech: utterances.to_vec(),
                played: self.played.clone(),
                marks_ms: self.mark_echoes.clone(),
                clears_ms: self.clears.iter().map(|c| ms(*c)).collect(),
                dtmf_ms: dtmf.iter().map(|k| ms(*k)).collect(),
            }),
            interval_hist: self.interval.clone(),
            depth_hist: self.depth.clone(),
            lateness_hist: self.lateness.clone(),
            ..CallMetrics::default()
        }
    }
}

fn bytes_duration(bytes: u64) -> Duration {
    Duration::from_nanos(bytes * 1_000_000_000 / BYTES_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn t0() -> Instant {
        crate::clock::now()
    }

    /// A paced burst: `lead` frames at `start`, then one every 20 ms (+ `wobble` alternately).
    fn paced(obs: &mut CallObserver, t0: Instant, start: u64, lead: u64, n: u64, wobble_us: u64) {
        for k in 0..n {
            let at = if k < lead {
                ms(start)
            } else {
                ms(start + (k - lead + 1) * 20) + Duration::from_micros(wobble_us * (k % 2))
            };
            obs.on_media(t0 + at, &[0xFF; 160]);
        }
    }

    #[test]
    fn steady_pacing_after_the_lead_has_zero_interval_error() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 100, 4, 60, 0);
        let m = obs.finish(&[], &[], false);
        assert_eq!(m.lead_messages, 3, "the send-ahead lead is excluded");
        assert_eq!(m.interval_error.count, 56);
        assert_eq!(m.interval_error.max_ms, 0.0);
        assert_eq!(m.bursts, 1);
        assert_eq!(m.underruns, 0);
        // Depth on arrival settles at the three frames of lead.
        assert_eq!(m.depth.p50_ms, 60.0);
    }

    #[test]
    fn wobbling_arrivals_show_up_as_interval_error() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 0, 4, 100, 3_000);
        let m = obs.finish(&[], &[], false);
        // Every interval is 3 ms off (alternately long and short).
        assert_eq!(m.interval_error.count, 96);
        assert!((3.0..=3.01).contains(&m.interval_error.p50_ms), "{m:?}");
        assert!((3.0..=3.01).contains(&m.interval_error.max_ms));
    }

    #[test]
    fn a_late_frame_is_an_error_and_an_underrun_when_the_buffer_starves() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        // No lead: one frame every 20 ms, then one 70 ms late.
        for k in 0..10u64 {
            obs.on_media(t0 + ms(k * 20), &[0xFF; 160]);
        }
        obs.on_media(t0 + ms(9 * 20 + 90), &[0xFF; 160]);
        let m = obs.finish(&[], &[], false);
        assert_eq!(m.underruns, 1);
        assert_eq!(m.underrun_ms, 70.0);
        assert_eq!(m.interval_error.max_ms, 70.0);
        assert_eq!(m.bursts, 1, "a short gap is inside the burst");
    }

    #[test]
    fn pauses_between_turns_and_clears_start_new_bursts() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 0, 4, 20, 0);
        paced(&mut obs, t0, 3_000, 4, 20, 0);
        obs.on_clear(t0 + ms(3_100));
        paced(&mut obs, t0, 3_200, 4, 20, 0);
        let m = obs.finish(&[], &[], false);
        assert_eq!(m.bursts, 3);
        assert_eq!(m.lead_messages, 9);
        assert_eq!(m.interval_error.max_ms, 0.0);
        assert_eq!(m.clears, 1);
        assert_eq!(
            m.underruns, 0,
            "audio resuming after a clear is not an underrun"
        );
        assert_eq!(m.false_barge_ins, 1, "no caller speech explains it");
    }

    #[test]
    fn marks_echo_in_order_when_played_and_at_once_on_clear() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, true);
        obs.on_media(t0, &[0xFF; 160]);
        let a = obs.on_mark(t0);
        obs.on_media(t0, &[0xFF; 160]);
        let b = obs.on_mark(t0);
        assert_eq!(obs.poll_timeout(), Some(t0 + ms(20)));
        assert_eq!(obs.poll_echo(t0 + ms(19)), None);
        let e = obs.poll_echo(t0 + ms(25)).unwrap();
        assert_eq!((e.mark, e.cleared), (a, false));
        obs.on_clear(t0 + ms(30));
        let e = obs.poll_echo(t0 + ms(30)).unwrap();
        assert_eq!((e.mark, e.cleared), (b, true));
        assert_eq!(obs.poll_echo(t0 + ms(100)), None);
        let m = obs.finish(&[], &[], true);
        assert_eq!(m.marks, [2, 1, 1]);
        assert_eq!(m.timeline.unwrap().marks_ms, [20.0, 30.0]);
        assert_eq!(m.cleared_ms, 10.0);
    }

    #[test]
    fn clear_cuts_the_played_timeline() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        for _ in 0..10 {
            obs.on_media(t0, &[0xFF; 160]);
        }
        obs.on_clear(t0 + ms(50));
        assert_eq!(
            obs.played(),
            [Span {
                start: ms(0),
                end: ms(50)
            }]
        );
    }

    #[test]
    fn audio_that_stops_before_the_clear_is_silenced_at_its_end() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        // Paced from 0: 4 frames at once, then one per 20 ms up to 320 ms (Twilio plays to
        // 400 ms); the server stops sending at the onset (300 ms) and clears at 500 ms.
        paced(&mut obs, t0, 0, 4, 20, 0);
        obs.on_clear(t0 + ms(500));
        let speech = [Utterance {
            onset: ms(300),
            end: ms(1_000),
        }];
        let b = obs.finish(&speech, &[], false).barge_ins[0];
        assert_eq!(b.latency_ms, Some(200.0));
        assert_eq!(b.silenced_ms, Some(100.0));
        assert!((b.stale_ms - 100.0).abs() < 1e-9, "{b:?}");
        // Audio that plays on past the utterance was never silenced.
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 0, 4, 100, 0);
        let b = obs.finish(&speech, &[], false).barge_ins[0];
        assert_eq!((b.latency_ms, b.silenced_ms), (None, None));
    }

    #[test]
    fn barge_in_latency_stale_audio_and_response_are_measured_from_the_script() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        // Greeting: 1 s of audio at once, from 0.
        for _ in 0..50 {
            obs.on_media(t0, &[0xFF; 160]);
        }
        // Caller speaks 300..1_500 ms; clear lands at 420 ms.
        obs.on_clear(t0 + ms(420));
        // Echo arrives at 2_100 ms (600 ms after the caller stopped).
        paced(&mut obs, t0, 2_100, 4, 50, 0);
        let speech = [Utterance {
            onset: ms(300),
            end: ms(1_500),
        }];
        let m = obs.finish(&speech, &[], false);
        assert_eq!(m.first_audio_ms, Some(0.0));
        assert_eq!(m.barge_ins.len(), 1);
        let b = m.barge_ins[0];
        assert_eq!(b.latency_ms, Some(120.0));
        assert_eq!(b.silenced_ms, Some(120.0));
        assert!((b.stale_ms - 120.0).abs() < 1e-9, "{b:?}");
        assert_eq!(m.responses_ms, [600.0]);
        assert_eq!(m.unanswered, 0);
        assert_eq!(m.false_barge_ins, 0);
        assert_eq!(m.unprompted_playbacks, 0);
    }

    #[test]
    fn unprompted_audio_and_unanswered_speech_are_counted() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 0, 4, 20, 0);
        paced(&mut obs, t0, 9_000, 4, 20, 0);
        let speech = [Utterance {
            onset: ms(1_000),
            end: ms(2_000),
        }];
        let m = obs.finish(&speech, &[ms(8_950)], false);
        assert_eq!(m.unanswered, 1, "nothing played within 5 s of the end");
        assert_eq!(m.unprompted_playbacks, 1);
        assert!(m.barge_ins.is_empty());
        assert!(m.dtmf_clear_ms.is_empty());
        assert_eq!(m.dtmf_sent, 1);
    }

    #[test]
    fn playback_resuming_after_an_underrun_is_not_unprompted() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        obs.on_media(t0, &[0xFF; 160]);
        obs.on_media(t0 + ms(50), &[0xFF; 160]);
        let m = obs.finish(&[], &[], false);
        assert_eq!(obs.played().len(), 2);
        assert_eq!((m.underruns, m.unprompted_playbacks), (1, 0));
    }

    #[test]
    fn a_clear_after_a_dtmf_key_is_timed_and_not_a_false_barge_in() {
        let t0 = t0();
        let mut obs = CallObserver::new(t0, false, false);
        paced(&mut obs, t0, 0, 4, 100, 0);
        obs.on_clear(t0 + ms(1_012));
        let m = obs.finish(&[], &[ms(1_000)], false);
        assert_eq!(m.dtmf_clear_ms, [12.0]);
        assert_eq!(m.false_barge_ins, 0);
    }
}
