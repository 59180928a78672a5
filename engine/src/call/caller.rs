//! The caller's side of a [`Call`]: media into the jitter buffer, and each played-out frame
//! through detection (the VAD, the echo check, the second-stage onset check) into speech turns,
//! onsets held with playback paused, and barge-in.

use super::*;

impl Call {
    /// Whether the caller ring has room for what one more played-out frame can produce.
    pub(super) fn caller_room(&self) -> bool {
        !self.config.agent_feed || self.caller.len() + 2 <= CALLER_RING
    }

    pub(super) fn media(&mut self, now: Instant, media: &InboundMedia) {
        let admission = self.jitter.insert(now, media);
        if let Some(trace) = self.trace.as_mut() {
            trace.record(
                now,
                TraceKind::MediaIn {
                    chunk: media.chunk,
                    admission,
                },
            );
        }
        while let Some(ahead) = self.jitter.read_ahead() {
            self.detect(now, &ahead);
        }
        match admission {
            Admission::Queued | Admission::Overflow => self.stats.media_in += 1,
            Admission::Duplicate => self.stats.media_duplicate += 1,
            Admission::Backwards | Admission::Late => self.stats.media_late += 1,
        }
    }

    /// One caller frame through the VAD (read ahead, or a concealed slot at playout).
    pub(super) fn detect(&mut self, now: Instant, frame: &Playout) {
        self.vad_frames[self.vad_read as usize % VAD_RING] = (frame.at, frame.arrived);
        self.vad_read += 1;
        let pcm = codec::decode_frame(&frame.frame);
        if let (Some(echo), Some(slot), Some(arrived)) =
            (self.echo.as_mut(), frame.sender_slot, frame.arrived)
        {
            echo.heard(slot, arrived, &frame.frame);
        }
        let held = self.echo_held;
        let checking = match self.onset.as_mut() {
            Some(gate) => {
                gate.record(&frame.frame);
                gate.holding()
            }
            None => false,
        };
        if let Some(transition) = self.vad.push(&pcm) {
            self.vad_transition(now, transition);
        }
        // An onset held for the check since an earlier frame: this frame is the check's too,
        // unless the echo check, looking again, now finds the agent's echo.
        if checking && self.echo_in_hold(now) {
            // Held as echo from here on (below).
        } else if checking && let Some(gate) = self.onset.as_mut() {
            match gate.next() {
                Verdict::Waiting => {}
                Verdict::Speech => self.onset_confirmed(now),
                // A watched utterance the check cannot follow ends as speech.
                Verdict::Unchecked if gate.watching() => {
                    gate.release();
                }
                Verdict::Unchecked => {
                    self.stats.onsets_unchecked += 1;
                    self.onset_released(now);
                }
            }
        }
        // An utterance held as echo since an earlier frame: does the echo still explain it?
        if held && self.echo_held && self.vad.frame_is_speech() {
            let caller = self
                .echo
                .as_mut()
                .is_some_and(|echo| echo.track() == Track::Caller);
            if caller {
                self.echo_held = false;
                self.stats.echo_breakthroughs += 1;
                self.onset_arrival = frame.arrived;
                self.speech_started(now, frame.at);
            }
        }
    }

    /// Where the start of the VAD's frame `at` (on the VAD's own count) lies on the caller
    /// timeline: the slot it was read for when the ring still holds it, else counted back
    /// from the newest frame read.
    pub(super) fn caller_time(&self, at: SampleTime) -> SampleTime {
        let frame = at.0 / FRAME_SAMPLES as u64;
        if frame < self.vad_read && self.vad_read - frame <= VAD_RING as u64 {
            return self.vad_frames[frame as usize % VAD_RING].0;
        }
        let newest = self.vad_frames[(self.vad_read.max(1) - 1) as usize % VAD_RING].0;
        let back = (self.vad_read.saturating_sub(frame)).saturating_sub(1);
        SampleTime(newest.0.saturating_sub(back * FRAME_SAMPLES as u64))
    }

    pub(super) fn vad_transition(&mut self, now: Instant, transition: VadTransition) {
        match transition {
            VadTransition::SpeechStarted { at } => {
                let playing = self.config.barge_in && self.agent_playing();
                if playing && self.echo.as_mut().is_some_and(EchoCheck::onset_is_echo) {
                    self.echo_held = true;
                    self.stats.echo_onsets += 1;
                    return;
                }
                let arrival = self.arrival_since(at);
                let at = self.caller_time(at);
                if let Some(gate) = self.onset.as_mut() {
                    let held = Held {
                        at,
                        arrival,
                        watch: !playing,
                    };
                    if playing {
                        if gate.hold(held) {
                            self.stats.onsets_checked += 1;
                            self.held_frames = 0;
                            if let Some(trace) = self.trace.as_mut() {
                                trace.record(now, TraceKind::OnsetHeld(at));
                            }
                            self.pause_playback(now);
                            return;
                        }
                        self.stats.onsets_unchecked += 1;
                    } else if self.config.dismiss_unconfirmed {
                        // Outside playback the utterance starts at once (an agent's turn must
                        // not wait); the check decides only whether it ends as speech or is
                        // dismissed. If it cannot take it, it ends as speech.
                        gate.hold(held);
                    }
                }
                self.onset_arrival = arrival;
                self.speech_started(now, at);
            }
            VadTransition::SpeechEnded { .. } if self.echo_held => self.echo_held = false,
            VadTransition::SpeechEnded { at }
                if self.onset.as_ref().is_some_and(OnsetGate::watching) =>
            {
                if let Some(gate) = self.onset.as_mut() {
                    gate.release();
                }
                self.stats.speech_dismissed += 1;
                let at = self.speech_end(at);
                if let Some(trace) = self.trace.as_mut() {
                    trace.record(now, TraceKind::SpeechDismissed(at));
                }
                self.emit(Output::Event(CallEvent::SpeechDismissed { at }));
            }
            VadTransition::SpeechEnded { .. }
                if self.onset.as_ref().is_some_and(OnsetGate::holding) =>
            {
                if let Some(gate) = self.onset.as_mut() {
                    gate.release();
                }
                self.stats.onsets_rejected += 1;
                if let Some(trace) = self.trace.as_mut() {
                    trace.record(now, TraceKind::OnsetRejected);
                }
                self.resume_playback(now);
            }
            VadTransition::SpeechEnded { at } => {
                self.stats.speech_ended += 1;
                let at = self.speech_end(at);
                if let Some(trace) = self.trace.as_mut() {
                    trace.record(now, TraceKind::SpeechEnded(at));
                }
                self.emit(Output::Event(CallEvent::SpeechEnded { at }));
            }
        }
    }

    /// While an onset is held for the check (not an utterance watched outside playback): every
    /// [`ECHO_RECHECK_EVERY`] frames up to [`ECHO_RECHECK_UNTIL`], whether the echo check now
    /// finds the agent's echo. If so the candidate ends unconfirmed, playback resumes, and the
    /// utterance is held as echo, as if the check had found it at the onset.
    pub(super) fn echo_in_hold(&mut self, now: Instant) -> bool {
        if !self
            .onset
            .as_ref()
            .is_some_and(|g| g.holding() && !g.watching())
        {
            return false;
        }
        self.held_frames += 1;
        if self.held_frames > ECHO_RECHECK_UNTIL
            || !self.held_frames.is_multiple_of(ECHO_RECHECK_EVERY)
        {
            return false;
        }
        if !self.echo.as_mut().is_some_and(EchoCheck::onset_is_echo) {
            return false;
        }
        if let Some(gate) = self.onset.as_mut() {
            gate.release();
        }
        self.echo_held = true;
        self.stats.echo_onsets += 1;
        self.stats.echo_onsets_in_hold += 1;
        if let Some(trace) = self.trace.as_mut() {
            trace.record(now, TraceKind::OnsetRejected);
        }
        self.resume_playback(now);
        true
    }

    /// Where the VAD's speech end `at` (the end of its last speech frame, on its own count) lies
    /// on the caller timeline: that frame's slot, then its end.
    pub(super) fn speech_end(&self, at: SampleTime) -> SampleTime {
        let last = SampleTime(at.0.saturating_sub(FRAME_SAMPLES as u64));
        SampleTime(self.caller_time(last).0 + FRAME_SAMPLES as u64)
    }

    /// The check confirmed the held onset (or the watched utterance: it ends normally).
    pub(super) fn onset_confirmed(&mut self, now: Instant) {
        if self.onset.as_ref().is_some_and(OnsetGate::watching) {
            if let Some(gate) = self.onset.as_mut() {
                gate.release();
            }
            return;
        }
        if self.onset.as_ref().is_some_and(OnsetGate::holding) {
            self.stats.onsets_confirmed += 1;
            self.onset_released(now);
        }
    }

    /// The held onset stands: its `SpeechStarted`, and its barge-in if the agent is still
    /// playing.
    pub(super) fn onset_released(&mut self, now: Instant) {
        let Some(held) = self.onset.as_mut().and_then(OnsetGate::release) else {
            return;
        };
        self.onset_arrival = held.arrival;
        // A barge-in flushes the paused queue; without one (nothing left playing), playback
        // carries on.
        self.speech_started(now, held.at);
        self.resume_playback(now);
    }

    /// A held onset stops the agent's audio where it is (see [`CallConfig::onset_pause`]).
    pub(super) fn pause_playback(&mut self, now: Instant) {
        if self.config.onset_pause.is_zero() {
            return;
        }
        self.pacer.pause(now);
        self.pause_until = Some(now + self.config.onset_pause);
        if let Some(trace) = self.trace.as_mut() {
            trace.record(now, TraceKind::PlaybackPaused);
        }
    }

    /// Ends a pause without a barge-in: the held audio continues where it stopped, behind a
    /// progress mark that pins the caller's playback position again (Twilio may have sat idle).
    pub(super) fn resume_playback(&mut self, now: Instant) {
        self.pause_until = None;
        if !self.pacer.is_paused() {
            return;
        }
        if self.pacer.queued_frames() > 0
            && self
                .pacer
                .push_mark_next(MarkId(self.next_progress_mark))
                .is_ok()
        {
            self.next_progress_mark += 1;
        }
        self.pacer.resume(now);
        if let Some(trace) = self.trace.as_mut() {
            trace.record(now, TraceKind::PlaybackResumed);
        }
    }

    /// The caller started speaking at `at` (caller timeline): the event, and a barge-in if the
    /// agent is playing. [`Call::onset_arrival`] is set by the caller.
    pub(super) fn speech_started(&mut self, now: Instant, at: SampleTime) {
        self.stats.speech_started += 1;
        if let Some(trace) = self.trace.as_mut() {
            trace.record(now, TraceKind::SpeechStarted(at));
        }
        self.emit(Output::Event(CallEvent::SpeechStarted { at }));
        if self.config.barge_in && self.agent_playing() {
            self.interrupt(now, Some(at));
        }
    }

    /// The arrival of the first received frame the VAD read from its frame `onset` (on the
    /// VAD's own count) to the newest, if the ring still holds `onset`.
    pub(super) fn arrival_since(&self, onset: SampleTime) -> Option<Instant> {
        let first = onset.0 / FRAME_SAMPLES as u64;
        if first >= self.vad_read || self.vad_read - first > VAD_RING as u64 {
            return None;
        }
        (first..self.vad_read).find_map(|frame| self.vad_frames[frame as usize % VAD_RING].1)
    }
}
