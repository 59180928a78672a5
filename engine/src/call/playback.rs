//! The agent's side of a [`Call`]: its audio resampled to 8 kHz, encoded and queued on the
//! pacer in 20 ms frames, its marks and the progress marks, Twilio's mark echoes, and the
//! interruption that flushes it all when the caller barges in.

use super::*;

impl Call {
    /// 8 kHz caller frame → 16 kHz agent feed frames. The upsampler's output is time-aligned
    /// (its delay trimmed), so feed frame `n` covers caller time `n · 20 ms`.
    pub(super) fn feed_agent(&mut self, pcm: &PcmFrame) {
        let mut input: &[i16] = &pcm.0;
        loop {
            let used = self.upsampler.push(input);
            input = &input[used..];
            loop {
                let n = self.upsampler.pop_into(&mut self.feed[self.feed_len..]);
                self.feed_len += n;
                if self.feed_len == WIDEBAND_FRAME_SAMPLES {
                    let at = SampleTime::from_frames(self.stats.agent_feed_frames);
                    self.stats.agent_feed_frames += 1;
                    self.feed_len = 0;
                    let frame = WidebandFrame(self.feed);
                    self.emit(Output::CallerAudio(at, frame));
                } else if n == 0 {
                    break;
                }
            }
            if input.is_empty() || used == 0 {
                break;
            }
        }
    }

    pub(super) fn agent_audio(
        &mut self,
        now: Instant,
        pcm: &[i16],
        rate: SampleRate,
    ) -> Result<(), CallError> {
        if SampleRate::supported(rate.hz()).is_none() {
            self.stats.agent_bad_rate += 1;
            return Err(CallError::UnsupportedRate { hz: rate.hz() });
        }
        if self.downsampler.as_ref().map(Resampler::from_rate) != Some(rate) {
            // A rate change completes the previous segment, then builds the new resampler (the
            // only allocation on this path; agents keep one rate in practice).
            self.finish_segment(now);
            match Resampler::with_fifo(rate, SampleRate::NARROWBAND, RESAMPLER_FIFO) {
                Ok(r) => self.downsampler = Some(r),
                Err(_) => {
                    self.stats.agent_bad_rate += 1;
                    return Err(CallError::UnsupportedRate { hz: rate.hz() });
                }
            }
        }
        let mut dropped = 0;
        let mut input = pcm;
        while !input.is_empty() {
            let Some(resampler) = self.downsampler.as_mut() else {
                break;
            };
            let used = resampler.push(input);
            input = &input[used..];
            dropped += self.drain_downsampler(now);
            if used == 0 {
                break;
            }
        }
        self.handle_timeout(now);
        if dropped > 0 {
            return Err(CallError::PlaybackQueueFull {
                dropped_frames: dropped,
            });
        }
        Ok(())
    }

    /// Moves resampled agent audio into frames and the pacer; returns frames dropped.
    pub(super) fn drain_downsampler(&mut self, now: Instant) -> u32 {
        let mut dropped = 0;
        loop {
            let Some(resampler) = self.downsampler.as_mut() else {
                return dropped;
            };
            let n = resampler.pop_into(&mut self.outgoing[self.outgoing_len..]);
            self.outgoing_len += n;
            if self.outgoing_len == FRAME_SAMPLES {
                let frame = codec::encode_frame(&PcmFrame(self.outgoing));
                self.outgoing_len = 0;
                if !self.push_agent_frame(now, frame) {
                    dropped += 1;
                }
            } else if n == 0 {
                return dropped;
            }
        }
    }

    /// Queues one agent frame, with progress marks at playback start and every interval.
    pub(super) fn push_agent_frame(&mut self, now: Instant, frame: MulawFrame) -> bool {
        if self.pacer.queued_frames() >= self.config.pacer.capacity_frames {
            self.stats.agent_frames_dropped += 1;
            return false;
        }
        if !self.agent_playing() {
            // A new playback: pin its start with a mark Twilio echoes as soon as it plays.
            self.ledger.start_playback();
            self.push_progress_mark();
        } else if self.frames_since_mark >= self.config.mark_interval_frames {
            self.push_progress_mark();
        }
        match self.pacer.push_frame(now, frame) {
            Ok(()) => {
                self.stats.agent_frames += 1;
                self.frames_since_mark += 1;
                true
            }
            Err(_) => {
                self.stats.agent_frames_dropped += 1;
                false
            }
        }
    }

    pub(super) fn push_progress_mark(&mut self) {
        let mark = MarkId(self.next_progress_mark);
        if self.pacer.push_mark(mark).is_ok() {
            self.next_progress_mark += 1;
            self.frames_since_mark = 0;
        }
    }

    /// Completes the current agent segment: resampler tail flushed, partial frame padded.
    pub(super) fn finish_segment(&mut self, now: Instant) {
        if let Some(resampler) = self.downsampler.as_mut() {
            resampler.flush();
        }
        self.drain_downsampler(now);
        if self.outgoing_len > 0 {
            self.outgoing[self.outgoing_len..].fill(0);
            self.outgoing_len = 0;
            let frame = codec::encode_frame(&PcmFrame(self.outgoing));
            self.push_agent_frame(now, frame);
        }
        // If no audio follows, Twilio draining is the natural end, not an underrun.
        self.pacer.end_audio();
    }

    pub(super) fn agent_mark(&mut self, now: Instant, mark: MarkId) -> Result<(), CallError> {
        if mark.0 >= PROGRESS_MARK_BASE {
            return Err(CallError::ReservedMark { id: mark.0 });
        }
        self.finish_segment(now);
        if self.pacer.push_mark(mark).is_err() {
            self.emit(Output::Event(CallEvent::MarkCleared(mark)));
            return Err(CallError::PlaybackQueueFull { dropped_frames: 0 });
        }
        self.handle_timeout(now);
        Ok(())
    }

    pub(super) fn mark_echo(&mut self, now: Instant, mark: MarkId) {
        match self.ledger.echo(now, mark) {
            marks::Echo::Played { agent } => {
                self.stats.marks_played += 1;
                if agent {
                    self.emit(Output::Event(CallEvent::MarkPlayed(mark)));
                }
                if !self.agent_playing() && self.pacer.queued_frames() == 0 {
                    let played = self.ledger.playback_played();
                    self.emit(Output::Event(CallEvent::PlaybackFinished { played }));
                }
            }
            marks::Echo::Flushed => self.stats.marks_flushed += 1,
            marks::Echo::Unknown => self.stats.marks_unknown += 1,
        }
    }

    /// Barge-in (`onset` is `Some`) or agent clear: flush, `clear`, report the heard time.
    pub(super) fn interrupt(&mut self, now: Instant, onset: Option<SampleTime>) {
        let partial = u64::from(self.outgoing_len > 0);
        self.outgoing_len = 0;
        if let Some(resampler) = self.downsampler.as_mut() {
            resampler.reset();
        }
        self.trailing_mark_at = None;
        self.pause_until = None;
        self.frames_since_mark = 0;
        self.emit(Output::Clear);
        if let Some(echo) = self.echo.as_mut() {
            echo.cleared(now);
        }
        // Agent marks still queued here never reach Twilio: report them as cleared.
        let outputs = &mut self.outputs;
        let stats = &mut self.stats;
        let flushed = self.pacer.flush(|mark| {
            if mark.0 < PROGRESS_MARK_BASE {
                if outputs.len() < OUTPUT_CAPACITY {
                    outputs.push_back(Queued::Event(CallEvent::MarkCleared(mark)));
                } else {
                    stats.outputs_dropped += 1;
                }
            }
        });
        let report = self.ledger.interrupt(now, flushed.frames as u64 + partial);
        while let Some(mark) = self.ledger.pop_cleared_agent_mark() {
            self.emit(Output::Event(CallEvent::MarkCleared(mark)));
        }
        let interruption = Interruption {
            onset,
            heard: report.heard,
            sent: report.sent,
            dropped: report.dropped,
            last_played_mark: report.last_played_mark,
        };
        if let Some(trace) = self.trace.as_mut() {
            trace.record(now, TraceKind::Clear);
            if let Some(onset) = onset {
                trace.record(
                    now,
                    TraceKind::BargeIn {
                        onset,
                        heard: report.heard,
                    },
                );
            }
        }
        if onset.is_some() {
            self.stats.barge_ins += 1;
            self.emit(Output::Event(CallEvent::BargeIn(interruption)));
        } else {
            self.stats.agent_clears += 1;
            self.emit(Output::Event(CallEvent::PlaybackCleared(interruption)));
        }
    }
}
