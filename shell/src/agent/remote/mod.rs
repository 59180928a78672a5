//! The engine-side half of a remote agent: an [`Agent`] that runs on the engine thread and talks
//! to the call's agent client task only through lock-free, bounded queues.
//!
//! ```text
//!  engine thread (RemoteAgent)                     tokio task (client)
//!  caller frames, events ──mpsc::try_send (bounded, drops counted)──▶ WebSocket to the agent
//!  poll_audio ◀──SPSC ring of i16 (bounded; the task awaits room)─── binary audio
//!  commands at sample positions ◀──SPSC ring (rate, mark, clear, hang-up)── JSON commands
//!  failure ◀──atomics── connect / read / write failures
//! ```
//!
//! Every command carries the position in the audio stream (samples pushed before it) at which it
//! applies, so [`Agent::poll_audio`] moves audio up to the next command and never past it: a mark
//! lands exactly after the audio sent before it. A `clear` is seen at once (a counter the task
//! bumps after pushing it), and drops the audio queued before it without playing it.
//!
//! Nothing here blocks, locks, allocates or logs: the rings and the channel were sized when the
//! call started, and the client task does the logging. When the agent fails (unreachable, gone,
//! too slow) the caller hears the fallback sound, then the agent hangs up with
//! [`HangupReason::AgentFailed`] so the shell closes the stream and Twilio runs the recording
//! fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handset_engine::agent::{Agent, AgentOutput, CallInfo, HangupReason};
use handset_engine::call::{CallEvent, Interruption, PROGRESS_MARK_BASE};
use handset_engine::{MarkId, SampleRate, SampleTime, WidebandFrame, codec};
use ringbuf::traits::{Consumer, Observer};
use tokio::sync::mpsc;

use crate::config::AgentFallback;

/// A spoken apology for when the agent cannot answer: "I'm sorry. One moment please." 8 kHz
/// µ-law (`shell/assets/NOTICE`), played when a remote agent fails.
pub const APOLOGY: &[u8] = include_bytes!("../../../assets/apology.ulaw");

/// Mark ids at or above this are the bridge's own (never an agent's).
pub const INTERNAL_MARK_BASE: u64 = PROGRESS_MARK_BASE - 16;
/// Put after the fallback sound; its echo ends the call.
pub const FALLBACK_MARK: MarkId = MarkId(PROGRESS_MARK_BASE - 1);
/// Put after the audio an agent sent before `hangup`; its echo ends the call.
pub const HANGUP_MARK: MarkId = MarkId(PROGRESS_MARK_BASE - 2);

/// How often the engine looks for agent audio while a reply is expected.
pub const FAST_POLL: Duration = Duration::from_millis(2);
/// How long after the caller stops speaking (or the call starts) a reply is expected.
pub const FAST_POLL_WINDOW: Duration = Duration::from_secs(5);
/// Longest wait for the echo of the mark after the fallback sound or a hang-up, beyond the
/// audio still queued.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// The tone fallback: beeps of 250 ms at 440 Hz, every 500 ms, three times (8 kHz samples).
const TONE_PERIOD: usize = 4_000;
const TONE_LEN: usize = 3 * TONE_PERIOD;

/// Why the agent could not go on. Stored in an atomic, so `repr(u8)`; 0 is "no failure".
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
#[repr(u8)]
pub enum FailReason {
    /// The connection could not be made within the connect timeout.
    #[error("agent unreachable at call start")]
    Unreachable = 1,
    /// The agent closed the connection or it broke mid-call.
    #[error("agent connection dropped mid-call")]
    Dropped = 2,
    /// No agent audio within the reply timeout after the caller stopped speaking.
    #[error("agent did not reply in time")]
    Slow = 3,
    /// The agent stopped reading (a write timed out).
    #[error("agent stopped reading")]
    Stalled = 4,
}

impl FailReason {
    fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Unreachable),
            2 => Some(Self::Dropped),
            3 => Some(Self::Slow),
            4 => Some(Self::Stalled),
            _ => None,
        }
    }
}

/// State shared by the two halves: atomics, and the transfer slot written once per call.
#[derive(Debug, Default)]
pub struct Shared {
    /// A [`FailReason`] code, 0 while healthy. The first writer wins.
    failed: AtomicU8,
    /// The checked transfer the agent asked for, set once before its hang-up command is
    /// queued; the bridge takes it when the call ends with [`HangupReason::Transfer`].
    transfer: parking_lot::Mutex<Option<crate::ending::Transfer>>,
    /// Why the call is being stopped, when the agent should know (`handover`); set by the
    /// bridge before it stops the call.
    stop_reason: parking_lot::Mutex<Option<&'static str>>,
    /// `clear` commands pushed into the command ring so far.
    clears: AtomicU64,
    /// Uplink messages (caller frames and events) dropped because the queue was full.
    uplink_dropped: AtomicU64,
}

impl Shared {
    /// Keeps the transfer the call will end with (not on the media path: once per call).
    pub fn set_transfer(&self, transfer: crate::ending::Transfer) {
        *self.transfer.lock() = Some(transfer);
    }

    /// Tells the agent why its call stops (sent with its `stop`).
    pub fn set_stop_reason(&self, reason: &'static str) {
        *self.stop_reason.lock() = Some(reason);
    }

    /// Why the call stops, if the bridge said.
    pub fn stop_reason(&self) -> Option<&'static str> {
        *self.stop_reason.lock()
    }

    /// The transfer the call ended with, if any.
    pub fn take_transfer(&self) -> Option<crate::ending::Transfer> {
        self.transfer.lock().take()
    }

    /// Records `reason` unless a failure was recorded already; true if this call recorded it.
    pub fn fail(&self, reason: FailReason) -> bool {
        self.failed
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The recorded failure, if any.
    pub fn failure(&self) -> Option<FailReason> {
        FailReason::from_u8(self.failed.load(Ordering::Acquire))
    }

    /// Counts one `clear` pushed into the command ring (after pushing it).
    pub fn clear_pushed(&self) {
        self.clears.fetch_add(1, Ordering::Release);
    }

    /// Uplink messages dropped so far.
    pub fn uplink_dropped(&self) -> u64 {
        self.uplink_dropped.load(Ordering::Relaxed)
    }
}

/// Engine → client messages.
#[allow(clippy::large_enum_variant)] // inline on purpose: boxing would allocate per frame
#[derive(Clone, Copy, Debug)]
pub enum Uplink {
    /// 20 ms of caller audio at 16 kHz.
    Audio(WidebandFrame),
    /// A call event to forward (speech, DTMF, marks).
    Event(CallEvent),
    /// Playback was cut: by the caller (`barge_in`) or by the agent's `clear`.
    Interrupted {
        /// What was cut.
        interruption: Interruption,
        /// The first agent mark that will not play.
        first_cleared: Option<MarkId>,
    },
    /// An agent mark dropped from the ring before it reached the call.
    MarkDropped(MarkId),
    /// The engine side gave up on the agent.
    Failed(FailReason),
    /// The call ended.
    Stop,
}

/// A command from the agent, applied when `popped` reaches its position.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Downlink {
    /// Audio from here on is at this rate.
    Rate(SampleRate),
    /// An agent mark (id assigned by the client).
    Mark(MarkId),
    /// Drop the audio queued before this and stop playback.
    Clear,
    /// End the call (or transfer it) after the audio before this has played.
    Hangup(HangupReason),
}

/// The engine's end of the queues, handed to [`RemoteAgent::new`].
pub struct EngineEnds {
    /// Caller frames and events to the client.
    pub uplink: mpsc::Sender<Uplink>,
    /// Agent audio (samples at the current rate).
    pub audio: ringbuf::HeapCons<i16>,
    /// Agent commands with the sample position they apply at.
    pub commands: ringbuf::HeapCons<(u64, Downlink)>,
    /// Failure flags and counters.
    pub shared: Arc<Shared>,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    /// Bridging to the agent.
    Live,
    /// Playing the fallback sound from `pos` (8 kHz samples).
    Fallback { pos: usize },
    /// Waiting for the echo of `mark` (or `deadline`), then hanging up for `reason`.
    Closing {
        mark: MarkId,
        deadline: Option<Instant>,
        reason: HangupReason,
    },
    /// Hung up.
    Done,
}

/// The engine-side remote agent. See the module docs.
pub struct RemoteAgent {
    ends: EngineEnds,
    fallback: AgentFallback,
    reply_timeout: Option<Duration>,
    phase: Phase,
    /// Rate of the audio being moved.
    rate: SampleRate,
    /// Samples taken from the audio ring so far (played or dropped).
    popped: u64,
    /// `clear` commands handled so far.
    clears_seen: u64,
    /// The first agent mark cleared since the last interruption report.
    first_cleared: Option<MarkId>,
    /// Agent audio handed to the call that may still be playing.
    playing: bool,
    /// When a reply is overdue (armed at the end of caller speech).
    reply_deadline: Option<Instant>,
    /// Look for agent audio every [`FAST_POLL`] until then.
    fast_poll_until: Option<Instant>,
    /// The latest instant seen (for deadlines set in callbacks without a time).
    last_now: Option<Instant>,
    /// Local playback queue at the last pull.
    queued: Duration,
}

impl RemoteAgent {
    /// A remote agent over `ends`.
    pub fn new(ends: EngineEnds, fallback: AgentFallback, reply_timeout: Option<Duration>) -> Self {
        Self {
            ends,
            fallback,
            reply_timeout,
            phase: Phase::Live,
            rate: SampleRate::WIDEBAND,
            popped: 0,
            clears_seen: 0,
            first_cleared: None,
            playing: false,
            reply_deadline: None,
            fast_poll_until: None,
            last_now: None,
            queued: Duration::ZERO,
        }
    }

    fn uplink(&self, msg: Uplink) {
        if self.ends.uplink.try_send(msg).is_err() {
            self.ends
                .shared
                .uplink_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fallback_len(&self) -> usize {
        match self.fallback {
            AgentFallback::Apology => APOLOGY.len(),
            AgentFallback::Tone => TONE_LEN,
        }
    }

    /// Checks the failure flag, the reply deadline and pending clears.
    fn check(&mut self, now: Option<Instant>, out: &mut AgentOutput) {
        if self.phase != Phase::Live {
            return;
        }
        if self.ends.shared.failure().is_some() {
            self.enter_fallback(out);
            return;
        }
        let overdue = matches!((now, self.reply_deadline), (Some(now), Some(d)) if now >= d);
        if overdue {
            if self.ends.shared.fail(FailReason::Slow) {
                self.uplink(Uplink::Failed(FailReason::Slow));
            }
            self.enter_fallback(out);
            return;
        }
        self.apply_clears(out);
    }

    fn enter_fallback(&mut self, out: &mut AgentOutput) {
        self.discard_queued();
        if self.playing {
            out.clear();
            self.playing = false;
        }
        self.reply_deadline = None;
        self.fast_poll_until = None;
        self.phase = Phase::Fallback { pos: 0 };
    }

    /// Handles every `clear` the client pushed: drops the audio and marks queued before it.
    fn apply_clears(&mut self, out: &mut AgentOutput) {
        let pushed = self.ends.shared.clears.load(Ordering::Acquire);
        while self.clears_seen < pushed {
            let Some((pos, command)) = self.ends.commands.try_pop() else {
                self.clears_seen = pushed;
                return;
            };
            match command {
                Downlink::Clear => {
                    self.skip_audio(pos.saturating_sub(self.popped));
                    self.clears_seen += 1;
                    out.clear();
                    self.playing = false;
                }
                other => self.drop_command(other, out),
            }
        }
    }

    /// A command whose audio was dropped: marks are reported, the rest still takes effect.
    fn drop_command(&mut self, command: Downlink, out: &mut AgentOutput) {
        match command {
            Downlink::Rate(rate) => self.rate = rate,
            Downlink::Mark(mark) => {
                self.first_cleared.get_or_insert(mark);
                self.uplink(Uplink::MarkDropped(mark));
            }
            Downlink::Clear => self.clears_seen += 1,
            Downlink::Hangup(reason) => {
                out.hangup(reason);
                self.phase = Phase::Done;
            }
        }
    }

    fn skip_audio(&mut self, samples: u64) {
        let want = usize::try_from(samples).unwrap_or(usize::MAX);
        let skipped = self
            .ends
            .audio
            .skip(want.min(self.ends.audio.occupied_len()));
        self.popped += skipped as u64;
    }

    /// Drops everything queued in the rings (barge-in, failure). Commands first, so no audio
    /// that precedes a kept command is dropped.
    fn discard_queued(&mut self) {
        let mut sink = AgentOutput::default();
        while let Some((_, command)) = self.ends.commands.try_pop() {
            if !matches!(command, Downlink::Hangup(_)) {
                self.drop_command(command, &mut sink);
            }
        }
        self.clears_seen = self.ends.shared.clears.load(Ordering::Acquire);
        self.skip_audio(u64::MAX);
    }

    /// Moves up to `want` of agent audio into `out`, applying commands at their positions.
    fn pull_live(&mut self, now: Instant, queued: Duration, want: Duration, out: &mut AgentOutput) {
        let mut budget_us = want.as_micros() as u64;
        let mut moved = false;
        loop {
            while let Some(&(pos, command)) = self.ends.commands.try_peek() {
                if pos > self.popped {
                    break;
                }
                let _ = self.ends.commands.try_pop();
                match command {
                    Downlink::Rate(rate) => self.rate = rate,
                    Downlink::Mark(mark) => out.mark(mark),
                    Downlink::Clear => {
                        self.clears_seen += 1;
                        out.clear();
                        self.playing = false;
                    }
                    Downlink::Hangup(reason) => {
                        out.mark(HANGUP_MARK);
                        let deadline = now + queued + want + HANGUP_GRACE;
                        self.phase = Phase::Closing {
                            mark: HANGUP_MARK,
                            deadline: Some(deadline),
                            reason,
                        };
                        return;
                    }
                }
            }
            let hz = u64::from(self.rate.hz());
            let budget = (budget_us * hz / 1_000_000) as usize;
            let limit = match self.ends.commands.try_peek() {
                Some(&(pos, _)) => usize::try_from(pos - self.popped).unwrap_or(usize::MAX),
                None => usize::MAX,
            };
            let n = budget.min(limit).min(self.ends.audio.occupied_len());
            if n == 0 {
                break;
            }
            let audio = &mut self.ends.audio;
            out.play_with(n, self.rate, |buf| audio.pop_slice(buf));
            self.popped += n as u64;
            budget_us = budget_us.saturating_sub(n as u64 * 1_000_000 / hz);
            moved = true;
        }
        if moved {
            self.playing = true;
            self.reply_deadline = None;
            self.fast_poll_until = None;
        }
    }

    fn pull_fallback(
        &mut self,
        now: Instant,
        queued: Duration,
        want: Duration,
        out: &mut AgentOutput,
    ) {
        let Phase::Fallback { pos } = self.phase else {
            return;
        };
        let total = self.fallback_len();
        let n = ((want.as_millis() as usize) * 8).min(total - pos);
        match self.fallback {
            AgentFallback::Apology => {
                out.play_with(n, SampleRate::NARROWBAND, |buf| {
                    codec::decode_into(&APOLOGY[pos..pos + n], buf)
                });
            }
            AgentFallback::Tone => out.play_with(n, SampleRate::NARROWBAND, |buf| {
                for (i, s) in buf.iter_mut().enumerate() {
                    let t = pos + i;
                    *s = if t % TONE_PERIOD < TONE_PERIOD / 2 {
                        let phase = (t as f32) * 440.0 / 8_000.0 * std::f32::consts::TAU;
                        (phase.sin() * 8_000.0) as i16
                    } else {
                        0
                    };
                }
                n
            }),
        }
        if pos + n >= total {
            out.mark(FALLBACK_MARK);
            self.phase = Phase::Closing {
                mark: FALLBACK_MARK,
                deadline: Some(
                    now + queued + SampleRate::NARROWBAND.duration_of(n as u64) + HANGUP_GRACE,
                ),
                reason: HangupReason::AgentFailed,
            };
        } else {
            self.phase = Phase::Fallback { pos: pos + n };
        }
    }

    fn hang_up(&mut self, reason: HangupReason, out: &mut AgentOutput) {
        out.hangup(reason);
        self.phase = Phase::Done;
    }

    fn expect_reply(&mut self, now: Instant) {
        self.fast_poll_until = Some(now + FAST_POLL_WINDOW);
    }
}

impl Agent for RemoteAgent {
    fn on_start(&mut self, now: Instant, _info: &CallInfo, out: &mut AgentOutput) {
        self.last_now = Some(now);
        self.expect_reply(now);
        self.check(Some(now), out);
    }

    fn on_caller_audio(&mut self, _at: SampleTime, frame: &WidebandFrame, out: &mut AgentOutput) {
        if self.phase == Phase::Live {
            self.uplink(Uplink::Audio(*frame));
        }
        self.check(self.last_now, out);
    }

    fn on_event(&mut self, now: Instant, event: &CallEvent, out: &mut AgentOutput) {
        self.last_now = Some(now);
        match *event {
            CallEvent::BargeIn(interruption) | CallEvent::PlaybackCleared(interruption) => {
                self.playing = false;
                match self.phase {
                    Phase::Live => {
                        if interruption.onset.is_some() {
                            self.discard_queued();
                        }
                        let first_cleared = self.first_cleared.take();
                        self.uplink(Uplink::Interrupted {
                            interruption,
                            first_cleared,
                        });
                    }
                    // The caller spoke over the fallback sound or a closing answer: end now.
                    Phase::Fallback { .. } | Phase::Closing { .. }
                        if interruption.onset.is_some() =>
                    {
                        let reason = match self.phase {
                            Phase::Closing { reason, .. } => reason,
                            _ => HangupReason::AgentFailed,
                        };
                        self.hang_up(reason, out);
                    }
                    _ => {}
                }
            }
            CallEvent::MarkPlayed(mark) | CallEvent::MarkCleared(mark)
                if mark.0 >= INTERNAL_MARK_BASE =>
            {
                if let Phase::Closing {
                    mark: m, reason, ..
                } = self.phase
                    && m == mark
                {
                    self.hang_up(reason, out);
                }
            }
            CallEvent::MarkCleared(mark) => {
                self.first_cleared.get_or_insert(mark);
                self.uplink(Uplink::Event(*event));
            }
            CallEvent::SpeechEnded { .. } => {
                if self.phase == Phase::Live {
                    self.reply_deadline = self.reply_timeout.map(|t| now + t);
                    self.expect_reply(now);
                }
                self.uplink(Uplink::Event(*event));
            }
            // Not speech: no answer is expected.
            CallEvent::SpeechStarted { .. } | CallEvent::SpeechDismissed { .. } => {
                self.reply_deadline = None;
                self.uplink(Uplink::Event(*event));
            }
            CallEvent::Dtmf(_) => {
                self.expect_reply(now);
                self.uplink(Uplink::Event(*event));
            }
            CallEvent::PlaybackFinished { .. } => {
                self.playing = false;
            }
            CallEvent::Stopped => self.uplink(Uplink::Stop),
            // Agent marks played, and anything newer: forwarded (the client skips what it
            // does not know).
            _ => self.uplink(Uplink::Event(*event)),
        }
        self.check(Some(now), out);
    }

    fn poll_audio(
        &mut self,
        now: Instant,
        queued: Duration,
        want: Duration,
        out: &mut AgentOutput,
    ) {
        self.last_now = Some(now);
        self.queued = queued;
        self.check(Some(now), out);
        match self.phase {
            Phase::Live => self.pull_live(now, queued, want, out),
            Phase::Fallback { .. } => self.pull_fallback(now, queued, want, out),
            Phase::Closing { .. } | Phase::Done => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Live => {
                let fast = match (self.fast_poll_until, self.last_now) {
                    (Some(until), Some(now)) if now < until => Some(now + FAST_POLL),
                    _ => None,
                };
                [fast, self.reply_deadline].into_iter().flatten().min()
            }
            Phase::Closing { deadline, .. } => deadline,
            Phase::Fallback { .. } | Phase::Done => None,
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut AgentOutput) {
        self.last_now = Some(now);
        if self.fast_poll_until.is_some_and(|t| now >= t) {
            self.fast_poll_until = None;
        }
        if let Phase::Closing {
            deadline: Some(deadline),
            reason,
            ..
        } = self.phase
            && now >= deadline
        {
            self.hang_up(reason, out);
            return;
        }
        self.check(Some(now), out);
    }
}

#[cfg(test)]
mod tests;
