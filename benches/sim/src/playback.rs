//! A sans-IO model of Twilio's outbound playback buffer.
//!
//! Twilio queues the `media` we send and plays it at real time, in order. A `mark` is echoed
//! when the audio queued before it has finished playing (at once if nothing is queued), and
//! `clear` empties the buffer and echoes every mark still pending. This model reproduces that
//! behaviour on virtual or real time so tests and the simulator can measure what a caller would
//! hear: which audio played when, when marks came back, and when playback starved.
//!
//! Underruns: Twilio does not know where an utterance ends, so the model calls a gap an
//! underrun when new audio arrives less than [`PlaybackModel::underrun_window`] after the buffer
//! ran dry (the default is 1 s: agents pause between turns for longer than that, while a starved
//! pacer resumes within a few frames).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use handset_engine::frame::MarkId;

/// µ-law bytes per second at 8 kHz.
const BYTES_PER_SECOND: u64 = 8_000;

/// One stretch of audio as Twilio would play it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PlayedAudio {
    /// When the first byte starts playing.
    pub start: Instant,
    /// The µ-law bytes, played at 8 kHz from `start`.
    pub bytes: Vec<u8>,
}

/// Counters kept by the model.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct PlaybackStats {
    /// µ-law bytes received in `media` messages.
    pub bytes_received: u64,
    /// µ-law bytes dropped by `clear` before they played.
    pub bytes_cleared: u64,
    /// `media` messages received.
    pub media_messages: u64,
    /// Marks received.
    pub marks_received: u64,
    /// Marks echoed because their audio played.
    pub marks_played: u64,
    /// Marks echoed because a `clear` flushed them.
    pub marks_cleared: u64,
    /// `clear` messages received.
    pub clears: u64,
    /// Times playback ran dry and audio resumed within the underrun window.
    pub underruns: u64,
    /// Total silence heard inside underruns.
    pub underrun_time: Duration,
    /// Largest buffered audio seen right after a `media` message.
    pub max_buffered: Duration,
}

/// A mark echo, as Twilio would send it back.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct MarkEcho {
    /// When Twilio sends the echo.
    pub at: Instant,
    /// The mark.
    pub mark: MarkId,
    /// Whether a `clear` flushed it (Twilio's echo does not say; the model does, for tests).
    pub cleared: bool,
}

/// Twilio's playback buffer for one stream.
#[derive(Debug)]
pub struct PlaybackModel {
    /// When everything queued so far finishes playing; `None` before any audio.
    buffer_end: Option<Instant>,
    /// Marks waiting for their audio to play, with the time they will be echoed.
    pending_marks: VecDeque<(Instant, MarkId)>,
    /// Echoes ready to be delivered, in time order.
    echoes: VecDeque<MarkEcho>,
    /// What played (or is scheduled to play), when recording is on.
    log: Option<Vec<PlayedAudio>>,
    /// Gaps shorter than this between drained buffer and new audio count as underruns.
    underrun_window: Duration,
    stats: PlaybackStats,
}

impl PlaybackModel {
    /// A model with an empty buffer. With `record` on, every played byte is kept for inspection.
    pub fn new(record: bool) -> Self {
        Self {
            buffer_end: None,
            pending_marks: VecDeque::new(),
            echoes: VecDeque::new(),
            log: record.then(Vec::new),
            underrun_window: Duration::from_secs(1),
            stats: PlaybackStats::default(),
        }
    }

    /// The gap below which a drained buffer counts as an underrun.
    pub fn underrun_window(&self) -> Duration {
        self.underrun_window
    }

    /// Changes the underrun window.
    pub fn set_underrun_window(&mut self, window: Duration) {
        self.underrun_window = window;
    }

    /// A `media` message with `payload` µ-law bytes arrived at `now`.
    pub fn handle_media(&mut self, now: Instant, payload: &[u8]) {
        self.release_due(now);
        let start = match self.buffer_end {
            Some(end) if end > now => end,
            Some(end) => {
                let gap = now - end;
                if !gap.is_zero() && gap < self.underrun_window {
                    self.stats.underruns += 1;
                    self.stats.underrun_time += gap;
                }
                now
            }
            None => now,
        };
        let len = bytes_duration(payload.len() as u64);
        self.buffer_end = Some(start + len);
        self.stats.bytes_received += payload.len() as u64;
        self.stats.media_messages += 1;
        self.stats.max_buffered = self.stats.max_buffered.max(start + len - now);
        if let Some(log) = &mut self.log {
            log.push(PlayedAudio {
                start,
                bytes: payload.to_vec(),
            });
        }
    }

    /// A `mark` arrived at `now`.
    pub fn handle_mark(&mut self, now: Instant, mark: MarkId) {
        self.release_due(now);
        self.stats.marks_received += 1;
        match self.buffer_end {
            Some(end) if end > now => self.pending_marks.push_back((end, mark)),
            _ => {
                self.stats.marks_played += 1;
                self.echoes.push_back(MarkEcho {
                    at: now,
                    mark,
                    cleared: false,
                });
            }
        }
    }

    /// A `clear` arrived at `now`: unplayed audio is dropped and pending marks are echoed.
    pub fn handle_clear(&mut self, now: Instant) {
        self.release_due(now);
        self.stats.clears += 1;
        if let Some(end) = self.buffer_end
            && end > now
        {
            self.stats.bytes_cleared += duration_bytes(end - now);
            self.buffer_end = Some(now);
        }
        if let Some(log) = &mut self.log {
            log.retain(|p| p.start < now);
            if let Some(last) = log.last_mut() {
                let played = duration_bytes(now - last.start) as usize;
                last.bytes.truncate(played);
            }
        }
        while let Some((_, mark)) = self.pending_marks.pop_front() {
            self.stats.marks_cleared += 1;
            self.echoes.push_back(MarkEcho {
                at: now,
                mark,
                cleared: true,
            });
        }
    }

    /// The next instant a mark echo becomes due, if any is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.echoes
            .front()
            .map(|e| e.at)
            .or_else(|| self.pending_marks.front().map(|(t, _)| *t))
    }

    /// The next echo due at or before `now`; drain until `None`.
    pub fn poll_echo(&mut self, now: Instant) -> Option<MarkEcho> {
        self.release_due(now);
        if self.echoes.front().is_some_and(|e| e.at <= now) {
            return self.echoes.pop_front();
        }
        None
    }

    /// Audio buffered at `now` (sent but not yet played).
    pub fn buffered(&self, now: Instant) -> Duration {
        self.buffer_end
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(now))
    }

    /// Whether audio is playing at `now`.
    pub fn is_playing(&self, now: Instant) -> bool {
        self.buffer_end.is_some_and(|end| end > now)
    }

    /// When all queued audio finishes playing.
    pub fn buffer_end(&self) -> Option<Instant> {
        self.buffer_end
    }

    /// Counters so far.
    pub fn stats(&self) -> PlaybackStats {
        self.stats
    }

    /// What was played (or is scheduled), if recording; audio cut by `clear` is removed.
    pub fn played(&self) -> &[PlayedAudio] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// The µ-law byte playing at `at`, if recording and something plays then (what a caller's
    /// speakerphone would pick up).
    pub fn played_at(&self, at: Instant) -> Option<u8> {
        let log = self.played();
        let i = log.partition_point(|p| p.start <= at).checked_sub(1)?;
        let segment = &log[i];
        let k = usize::try_from(duration_bytes(at - segment.start)).ok()?;
        segment.bytes.get(k).copied()
    }

    /// Bytes played up to `now` (from the recording).
    pub fn played_bytes_until(&self, now: Instant) -> u64 {
        self.played()
            .iter()
            .map(|p| {
                if p.start >= now {
                    0
                } else {
                    duration_bytes(now - p.start).min(p.bytes.len() as u64)
                }
            })
            .sum()
    }

    fn release_due(&mut self, now: Instant) {
        while self.pending_marks.front().is_some_and(|(t, _)| *t <= now) {
            let (at, mark) = self.pending_marks.pop_front().expect("front checked");
            self.stats.marks_played += 1;
            self.echoes.push_back(MarkEcho {
                at,
                mark,
                cleared: false,
            });
        }
    }
}

fn bytes_duration(bytes: u64) -> Duration {
    Duration::from_nanos(bytes * 1_000_000_000 / BYTES_PER_SECOND)
}

fn duration_bytes(d: Duration) -> u64 {
    (d.as_nanos() * u128::from(BYTES_PER_SECOND) / 1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn marks_echo_after_their_audio_plays() {
        #[allow(clippy::disallowed_methods)] // tests need one real anchor instant
        let t0 = Instant::now();
        let mut p = PlaybackModel::new(true);
        p.handle_media(t0, &[0xFF; 160]);
        p.handle_media(t0, &[0xFF; 160]);
        p.handle_mark(t0, MarkId(1));
        assert_eq!(p.poll_echo(t0 + ms(39)), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(40)));
        let echo = p.poll_echo(t0 + ms(41)).unwrap();
        assert_eq!(
            (echo.at, echo.mark, echo.cleared),
            (t0 + ms(40), MarkId(1), false)
        );
        assert_eq!(p.played_bytes_until(t0 + ms(40)), 320);
    }

    #[test]
    fn mark_with_nothing_buffered_echoes_at_once() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut p = PlaybackModel::new(false);
        p.handle_mark(t0, MarkId(7));
        assert_eq!(p.poll_echo(t0).map(|e| e.mark), Some(MarkId(7)));
    }

    #[test]
    fn clear_flushes_audio_and_echoes_pending_marks() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut p = PlaybackModel::new(true);
        for _ in 0..10 {
            p.handle_media(t0, &[0x00; 160]);
        }
        p.handle_mark(t0, MarkId(1));
        p.handle_clear(t0 + ms(50));
        let e = p.poll_echo(t0 + ms(50)).unwrap();
        assert!(e.cleared);
        assert_eq!(p.stats().bytes_cleared, 1600 - 400);
        assert_eq!(p.played_bytes_until(t0 + ms(1000)), 400);
        assert!(!p.is_playing(t0 + ms(51)));
    }

    #[test]
    fn short_starvation_counts_as_underrun() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut p = PlaybackModel::new(false);
        p.handle_media(t0, &[0xFF; 160]);
        p.handle_media(t0 + ms(30), &[0xFF; 160]);
        assert_eq!(p.stats().underruns, 1);
        assert_eq!(p.stats().underrun_time, ms(10));
        p.handle_media(t0 + ms(3000), &[0xFF; 160]);
        assert_eq!(
            p.stats().underruns,
            1,
            "a pause between turns is not an underrun"
        );
    }
}
