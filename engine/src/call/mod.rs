//! The per-call state machine: composes codec, jitter buffer, resamplers, VAD and pacer, and
//! decides barge-in.
//!
//! ```text
//!  Input::Media ──▶ JitterBuffer ──(20 ms playout)──▶ µ-law decode ──▶ Vad ──▶ CallEvent::Speech*
//!                                                            └──▶ 8→16 kHz ──▶ Output::CallerAudio
//!  Input::AgentAudio (any rate) ──▶ →8 kHz ──▶ µ-law encode ──▶ Pacer ──▶ Output::Transmit / Mark
//!  Input::MarkEcho ──▶ playback position ──▶ CallEvent::MarkPlayed, heard time at barge-in
//! ```
//!
//! Contract (sans-IO, str0m style): feed one [`Input`] with [`Call::handle_input`], then drain
//! [`Call::poll_output`] until it returns `None`, then sleep until [`Call::poll_timeout`] and feed
//! [`Input::Timeout`]. Nothing here reads a clock; every `Instant` comes from the driver.
//!
//! The types and the contract are here; the two halves of the work are `caller.rs` (media in,
//! detection, speech turns) and `playback.rs` (agent audio out, marks, interruption), with
//! `echo.rs`, `onset.rs`, `marks.rs` and `trace.rs` beside them.
//!
//! ## Playback truth and heard time
//! At the start of every playback the call queues a *progress mark* before the first frame
//! (Twilio echoes it as soon as it starts playing) and then one every
//! [`CallConfig::mark_interval_frames`] frames. A progress mark's echo pins the caller's playback
//! position to a known sample at a known instant; between echoes the position advances at real
//! time. The first mark of a playback is echoed on arrival (Twilio's buffer is empty), which
//! measures the round trip; a `clear` sent now lands half a round trip later, and the newest
//! echo left half a round trip ago, so the heard time adds one round trip, capped at what was
//! sent. At barge-in the heard time is therefore exact to the sample whenever Twilio plays
//! continuously (which the pacer's lead ensures).
//! Marks that Twilio echoes because a `clear` flushed them are recognised and ignored.
//!
//! ## Barge-in
//! Caller speech onset (the VAD's `SpeechStarted`) while agent audio is queued locally or not yet
//! confirmed played at Twilio → the pacer is flushed, [`Output::Clear`] is emitted and
//! [`CallEvent::BargeIn`] reports the heard time. The VAD reads each caller frame as soon as
//! it is queued in order in the jitter buffer ([`JitterBuffer::read_ahead`]), not when it plays
//! out to the agent, so the decision lands within `attack_frames` frames of the onset's
//! arrival, whatever the jitter buffer's delay. Slots the jitter buffer conceals reach the VAD
//! only when it has read nothing beyond them (a stall, an idle stream), so the VAD hears the
//! caller's audio in order, without the fill-ins of a late stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec;
use crate::frame::{InboundMedia, MarkId, MulawFrame, PcmFrame, WidebandFrame};
use crate::jitter::{Admission, JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::pacer::{Pacer, PacerConfig, PacerStats, Transmit};
use crate::resample::Resampler;
use crate::time::{FRAME, FRAME_SAMPLES, SampleRate, SampleTime, WIDEBAND_FRAME_SAMPLES};
use crate::vad::{Vad, VadConfig, VadTransition};

mod caller;
mod echo;
mod marks;
mod onset;
mod playback;
mod trace;

use echo::{EchoCheck, Track};
pub use echo::{EchoConfig, EchoConfigError};
use marks::MarkLedger;
use onset::{Held, OnsetGate, Verdict};
pub use onset::{ONSET_PRE_ROLL, OnsetCheck};
pub use trace::{Trace, TraceKind};

/// Marks at or above this value are the call's own progress marks; the shell names them
/// `p<n>` on the wire. Agent marks use ids below it.
pub const PROGRESS_MARK_BASE: u64 = 1 << 62;

/// Output FIFO of each resampler: the call pops after every push, so one frame suffices (the
/// resampler adds two chunks of flush headroom): 1.9 KB for 8 → 16 kHz, 0.9 KB for 16 → 8 kHz.
const RESAMPLER_FIFO: Duration = Duration::from_millis(20);

/// Capacity of the output queue between two drains. One input produces a handful of outputs
/// (a caller frame or two; a barge-in: clear plus a few events); transmits are produced lazily
/// and never queue here. An entry is a [`Queued`] (about 90 bytes): caller audio waits in
/// its own ring, so the queue stays 3 KiB instead of 32 × 648 bytes.
const OUTPUT_CAPACITY: usize = 32;

/// 16 kHz caller frames that can wait to be drained (4 × 648 bytes = 2.5 KiB per call). A
/// timeout plays out of the jitter buffer only while two free slots remain (one caller frame
/// can yield two feed frames at the resampler's chunk boundaries); after a late wake-up with
/// more overdue frames than that, the rest stay in the jitter buffer and
/// [`Call::poll_timeout`] stays in the past, so the driver serves the call again at once
/// (and again, two frames at a time, until none is overdue).
const CALLER_RING: usize = 4;

/// While an onset is held for the [`OnsetCheck`], the echo check looks again every this many
/// frames, up to [`ECHO_RECHECK_UNTIL`]: at the onset its window may hold only the first frame
/// or two of an echo, too little to correlate, and a few frames later it holds enough.
const ECHO_RECHECK_EVERY: u32 = 2;

/// Frames into a hold after which the echo check stops looking again (200 ms, about when the
/// check confirms speech; each look is one full search, about 1 M multiply-adds).
const ECHO_RECHECK_UNTIL: u32 = 10;

/// Frames the VAD read whose caller-timeline slot and arrival are remembered, to place a
/// speech onset on the caller timeline and date it by when its audio arrived. The VAD dates an
/// onset at most 50 frames back (its largest attack; the lookback is 25), so 64 always reach it.
const VAD_RING: usize = 64;

/// Configuration of one call. Plain data, validated once by [`Call::new`].
#[derive(Clone, Debug)]
pub struct CallConfig {
    /// Inbound jitter buffer.
    pub jitter: JitterConfig,
    /// Outbound pacer (lead, catch-up policy, queue size).
    pub pacer: PacerConfig,
    /// Voice activity detector (attack and hangover in frames).
    pub vad: VadConfig,
    /// Frames between progress marks during playback (default 5 = 100 ms). Smaller values
    /// tighten heard-time accuracy when Twilio's playback stalls, at the cost of more messages.
    pub mark_interval_frames: u32,
    /// Whether caller speech during agent playback interrupts it (default true).
    pub barge_in: bool,
    /// With an [`OnsetCheck`]: how long playback may pause on a held onset (default 500 ms).
    /// The call stops sending agent audio when it holds an onset, so the caller hears the agent
    /// stop about when the VAD heard them; a confirmation clears as before, a rejection resumes
    /// where the audio stopped, and a check still undecided after this long resumes playback
    /// while the onset stays held. Zero: playback never pauses, and the agent is heard until
    /// the verdict.
    pub onset_pause: Duration,
    /// With an [`OnsetCheck`]: follow each utterance outside playback too, and end one the
    /// check never confirms as [`CallEvent::SpeechDismissed`] (default true). Off when the
    /// agent takes its turns from a detector of its own (OpenAI Realtime's server VAD), which
    /// spares the check about 10 model runs per utterance.
    pub dismiss_unconfirmed: bool,
    /// The echo-reference check on speech onsets during playback (on by default): the agent's
    /// own audio coming back is not a barge-in. See [`EchoConfig`].
    pub echo: EchoConfig,
    /// Whether to produce 16 kHz caller audio for the agent (default true).
    pub agent_feed: bool,
    /// Record a per-call timeline of up to this many events ([`Trace`]); 0 (default) is off.
    /// The buffer is allocated once at construction: about 40 bytes per event, and a call
    /// produces about 250 events per second.
    pub trace_events: usize,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            // Twilio sends in real time, so the jitter buffer holds at most its playout delay:
            // at most `max_delay` (200 ms = 10 frames), stall expansion included; of a stall's
            // backlog, what is older than that arrives late and is dropped as late, never
            // buffered. 16 frames (320 ms, against the general-purpose 50) keep 6 frames of
            // headroom over `max_delay`: 3 KiB per call instead of 9.4 KiB. A frame beyond it
            // drops the oldest and is counted (`JitterStats::overflow`).
            jitter: JitterConfig {
                capacity_frames: 16,
                ..JitterConfig::default()
            },
            // Agents hand audio over a little at a time (the driver pulls ~200 ms when less than
            // 200 ms is queued, so at most ~400 ms is ever queued), so 1 s of queue is 2.5× what
            // is needed and keeps each call small: 50 frame slots of 176 bytes plus 32 mark slots
            // of 16 bytes (10 progress marks for 50 frames, the rest for agent marks) are
            // 9.1 KiB, against 532 KiB for the pacer's general-purpose 3,000 + 256.
            pacer: PacerConfig {
                capacity_frames: 50,
                capacity_marks: 32,
                ..PacerConfig::default()
            },
            // End of turn after 500 ms of silence (the detector's own default hangover is tuned
            // for frame accuracy, which is too eager for turn-taking: it would end a turn at
            // every pause between words).
            vad: VadConfig {
                hangover_frames: 25,
                ..VadConfig::default()
            },
            mark_interval_frames: 5,
            barge_in: true,
            // Silero confirms clean speech within 280 ms of the onset in 90 % of cases
            // (docs/vad-eval.md); a false onset costs the caller at most this much silence.
            onset_pause: Duration::from_millis(500),
            dismiss_unconfirmed: true,
            echo: EchoConfig::default(),
            agent_feed: true,
            trace_events: 0,
        }
    }
}

/// Why a [`CallConfig`] was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The jitter buffer configuration is invalid.
    #[error("jitter buffer: {0}")]
    Jitter(String),
    /// The pacer configuration is invalid.
    #[error("pacer: {0}")]
    Pacer(String),
    /// The VAD configuration is invalid.
    #[error("vad: {0}")]
    Vad(String),
    /// `mark_interval_frames` is zero.
    #[error("mark interval must be at least 1 frame, got 0")]
    MarkInterval,
    /// The echo-reference check's configuration is invalid.
    #[error("{0}")]
    Echo(String),
}

/// Runtime errors: every one is also counted in [`CallStats`] and leaves the call usable.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Input arrived after `Stop`.
    #[error("input after the stream stopped")]
    AfterStop,
    /// Agent audio at a rate the engine does not resample.
    #[error("unsupported agent audio rate: {hz} Hz")]
    UnsupportedRate {
        /// The rate offered.
        hz: u32,
    },
    /// The outbound queue is full; the agent is sending far ahead of real time.
    #[error("playback queue full: {dropped_frames} frames dropped")]
    PlaybackQueueFull {
        /// Frames dropped by this input.
        dropped_frames: u32,
    },
    /// The output queue was not drained after the previous input.
    #[error("outputs not drained before the next input")]
    InputWithoutDrain,
    /// A mark id in the range reserved for the call's own progress marks.
    #[error("mark id {id} is reserved for progress marks")]
    ReservedMark {
        /// The id offered.
        id: u64,
    },
}

/// One input to the call.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Agent audio to play to the caller: PCM at `rate`, any length, faster than real time
    /// allowed (the pacer paces it).
    AgentAudio(Instant, &'a [i16], SampleRate),
    /// The agent stops its playback (no caller speech involved): flush and `clear`.
    AgentClear(Instant),
    /// The agent marks the end of a segment: its audio so far is completed (partial frames padded
    /// with silence) and the mark follows it. The mark's echo is reported as
    /// [`CallEvent::MarkPlayed`].
    AgentMark(Instant, MarkId),
    /// A DTMF digit from the caller.
    Dtmf(Instant, char),
    /// Twilio echoed a mark.
    MarkEcho(Instant, MarkId),
    /// Caller audio as read off the socket; the `Instant` is when it was read.
    Media(Instant, InboundMedia),
    /// The stream ended (Twilio `stop` or the socket closed).
    Stop(Instant),
    /// A deadline from [`Call::poll_timeout`] was reached.
    Timeout(Instant),
}

impl Input<'_> {
    /// The instant carried by the input.
    pub fn time(&self) -> Instant {
        match *self {
            Self::AgentAudio(t, ..)
            | Self::AgentClear(t)
            | Self::AgentMark(t, _)
            | Self::Dtmf(t, _)
            | Self::MarkEcho(t, _)
            | Self::Media(t, _)
            | Self::Stop(t)
            | Self::Timeout(t) => t,
        }
    }
}

/// One output of the call. Drain with [`Call::poll_output`] after every input.
///
/// `CallerAudio` carries its 16 kHz frame inline (648 bytes): boxing it would allocate on every
/// frame, which the hot path must not.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Output {
    /// Caller audio for the agent: 20 ms at 16 kHz, at caller time `at` (8 kHz samples).
    CallerAudio(SampleTime, WidebandFrame),
    /// Send Twilio `clear` now.
    Clear,
    /// Something happened.
    Event(CallEvent),
    /// Send Twilio a `mark` with this id now.
    Mark(MarkId),
    /// Send Twilio this 20 ms µ-law frame now.
    Transmit(MulawFrame),
}

/// Events for the agent and the logs.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The caller spoke over agent audio; playback was flushed and `clear` sent.
    BargeIn(Interruption),
    /// A DTMF digit.
    Dtmf(char),
    /// An agent mark's audio has played.
    MarkPlayed(MarkId),
    /// An agent mark will never play: its audio was flushed.
    MarkCleared(MarkId),
    /// The agent's clear request was carried out.
    PlaybackCleared(Interruption),
    /// All queued agent audio has played (per Twilio's mark echoes).
    PlaybackFinished {
        /// Audio played in this playback.
        played: Duration,
    },
    /// The caller started speaking; `at` is the onset on the caller timeline. Decided as the
    /// audio arrives, ahead of the jitter buffer's playout, so `at` can lie ahead of the
    /// [`Output::CallerAudio`] emitted so far; it is the slot the onset frame was planned for,
    /// which a later jitter adjustment can still move by a frame.
    SpeechStarted {
        /// Onset.
        at: SampleTime,
    },
    /// The caller stopped speaking; `at` is the end of the last speech frame.
    SpeechEnded {
        /// End of speech.
        at: SampleTime,
    },
    /// The utterance the last [`CallEvent::SpeechStarted`] began ended without the
    /// [`OnsetCheck`] confirming it was speech (music, noise): it ends that utterance in place
    /// of [`CallEvent::SpeechEnded`], and was not speech. `at` is where it ended.
    SpeechDismissed {
        /// End of the utterance.
        at: SampleTime,
    },
    /// The stream stopped.
    Stopped,
}

/// What a barge-in or agent clear cut off.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Interruption {
    /// Caller speech onset that caused it (`None` for an agent clear).
    pub onset: Option<SampleTime>,
    /// Agent audio of the current playback the caller actually heard.
    pub heard: Duration,
    /// Agent audio of the current playback sent to Twilio.
    pub sent: Duration,
    /// Agent audio still queued locally and dropped.
    pub dropped: Duration,
    /// The last agent mark confirmed played in this playback, if any: the interrupted audio is
    /// the segment after it.
    pub last_played_mark: Option<MarkId>,
}

/// Counters for one call. Plain `Copy` data.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct CallStats {
    /// Valid `media` messages handed to the jitter buffer.
    pub media_in: u64,
    /// `media` rejected by the jitter buffer as duplicate.
    pub media_duplicate: u64,
    /// `media` rejected by the jitter buffer as late or backwards.
    pub media_late: u64,
    /// Inputs refused after `Stop`.
    pub after_stop: u64,
    /// Jitter buffer counters.
    pub jitter: JitterStats,
    /// Pacer counters.
    pub pacer: PacerStats,
    /// Caller frames played out of the jitter buffer (received or concealed).
    pub caller_frames: u64,
    /// 16 kHz frames handed to the agent.
    pub agent_feed_frames: u64,
    /// Speech-started transitions.
    pub speech_started: u64,
    /// Speech-ended transitions.
    pub speech_ended: u64,
    /// Barge-ins decided.
    pub barge_ins: u64,
    /// Speech onsets during playback held as the agent's own echo (no barge-in, no
    /// `SpeechStarted`).
    pub echo_onsets: u64,
    /// Onsets held for the [`OnsetCheck`] that the echo check, looking again with more of the
    /// utterance in its window, found to be the agent's echo after all (also counted in
    /// `echo_onsets`): held as echo from then on.
    pub echo_onsets_in_hold: u64,
    /// Onsets held as echo that turned out to be the caller talking over it: each became a
    /// `SpeechStarted` (and a barge-in if the agent was still playing) on the first frame the
    /// echo no longer explained.
    pub echo_breakthroughs: u64,
    /// Speech onsets during playback held for the [`OnsetCheck`].
    pub onsets_checked: u64,
    /// Held onsets the check confirmed: each became a `SpeechStarted` and a barge-in.
    pub onsets_confirmed: u64,
    /// Held onsets whose utterance ended unconfirmed: no barge-in, no `SpeechStarted`.
    pub onsets_rejected: u64,
    /// Onsets during playback that barged in unchecked because the check could not take them
    /// or one of their frames (its queue was full).
    pub onsets_unchecked: u64,
    /// Held onsets whose check was still undecided when the pause ran out
    /// ([`CallConfig::onset_pause`]): playback resumed while they stayed held.
    pub onset_pauses_expired: u64,
    /// Utterances outside playback that the [`OnsetCheck`] never confirmed: each ended with
    /// [`CallEvent::SpeechDismissed`] instead of [`CallEvent::SpeechEnded`].
    pub speech_dismissed: u64,
    /// Agent clears carried out.
    pub agent_clears: u64,
    /// Agent audio frames accepted for playback.
    pub agent_frames: u64,
    /// Agent audio frames dropped because the playback queue was full.
    pub agent_frames_dropped: u64,
    /// Agent audio refused for an unsupported rate.
    pub agent_bad_rate: u64,
    /// Frames sent to Twilio.
    pub frames_out: u64,
    /// Marks sent to Twilio (progress and agent).
    pub marks_out: u64,
    /// Mark echoes counted as played.
    pub marks_played: u64,
    /// Mark echoes recognised as flushed by our `clear`.
    pub marks_flushed: u64,
    /// Mark echoes for marks we never sent or already saw.
    pub marks_unknown: u64,
    /// DTMF digits received.
    pub dtmf: u64,
    /// Outputs dropped because the caller did not drain (a driver bug; should stay 0).
    pub outputs_dropped: u64,
}

/// An output waiting in the queue: caller audio sits in [`Call::caller`], in the same order.
#[derive(Clone, Copy, Debug)]
enum Queued {
    /// The next frame of the caller ring.
    CallerAudio,
    /// [`Output::Clear`].
    Clear,
    /// [`Output::Event`].
    Event(CallEvent),
    /// [`Output::Mark`].
    Mark(MarkId),
}

/// Lifecycle of the stream.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    Running,
    Stopped,
}

/// The per-call state machine. See the module docs for the contract.
pub struct Call {
    /// Configuration as validated.
    config: CallConfig,
    /// Running or stopped.
    phase: Phase,
    /// Inbound jitter buffer (caller → agent).
    jitter: JitterBuffer,
    /// Caller speech detector on the jitter buffer's read-ahead.
    vad: Vad,
    /// For each of the last [`VAD_RING`] frames the VAD read, indexed by its frame count modulo
    /// the ring size: the caller-timeline slot it plays in (planned, when read ahead), and when
    /// it arrived (`None`: concealed).
    vad_frames: [(SampleTime, Option<Instant>); VAD_RING],
    /// Frames the VAD has read.
    vad_read: u64,
    /// The echo-reference check, when on.
    echo: Option<EchoCheck>,
    /// The VAD's current utterance started during playback and is held as the agent's echo.
    echo_held: bool,
    /// The second stage on barge-in onsets, when the driver gave the call one.
    onset: Option<OnsetGate>,
    /// While a held onset pauses playback: when the pause runs out.
    pause_until: Option<Instant>,
    /// Frames the VAD has read since the onset now held for the check.
    held_frames: u32,
    /// Caller 8 kHz → 16 kHz for the agent feed.
    upsampler: Resampler,
    /// 16 kHz samples gathered toward the next agent-feed frame.
    feed: [i16; WIDEBAND_FRAME_SAMPLES],
    /// Valid samples in `feed`.
    feed_len: usize,
    /// Agent audio → 8 kHz, rebuilt only when the agent changes rate.
    downsampler: Option<Resampler>,
    /// 8 kHz agent samples gathered toward the next outbound frame.
    outgoing: [i16; FRAME_SAMPLES],
    /// Valid samples in `outgoing`.
    outgoing_len: usize,
    /// Outbound 20 ms pacing.
    pacer: Pacer,
    /// What was sent, what Twilio confirmed, and what is in flight.
    ledger: MarkLedger,
    /// Frames pushed into the pacer since the last progress mark.
    frames_since_mark: u32,
    /// Next progress mark id.
    next_progress_mark: u64,
    /// When to confirm the end of playback with a trailing mark, if the queue stays empty.
    trailing_mark_at: Option<Instant>,
    /// The newest instant seen in any input.
    now: Instant,
    /// Outputs waiting to be drained, in order; at most [`OUTPUT_CAPACITY`].
    outputs: VecDeque<Queued>,
    /// The caller frames of the queued [`Queued::CallerAudio`] entries, oldest first; at most
    /// [`CALLER_RING`].
    caller: VecDeque<(SampleTime, WidebandFrame)>,
    /// The call's timeline, when tracing.
    trace: Option<Trace>,
    /// When the audio of the latest speech onset arrived: see [`Call::onset_arrival`].
    onset_arrival: Option<Instant>,
    /// Counters.
    stats: CallStats,
}

impl Call {
    /// A new call; `now` is when the stream started. Validates the configuration once.
    pub fn new(config: &CallConfig, now: Instant) -> Result<Self, ConfigError> {
        if config.mark_interval_frames == 0 {
            return Err(ConfigError::MarkInterval);
        }
        let jitter =
            JitterBuffer::new(&config.jitter).map_err(|e| ConfigError::Jitter(e.to_string()))?;
        let pacer = Pacer::new(&config.pacer).map_err(|e| ConfigError::Pacer(e.to_string()))?;
        let vad = Vad::new(&config.vad).map_err(|e| ConfigError::Vad(e.to_string()))?;
        config
            .echo
            .validate()
            .map_err(|e| ConfigError::Echo(e.to_string()))?;
        let upsampler =
            Resampler::with_fifo(SampleRate::NARROWBAND, SampleRate::WIDEBAND, RESAMPLER_FIFO)
                .expect("8 kHz to 16 kHz is always supported");
        Ok(Self {
            config: config.clone(),
            phase: Phase::Running,
            jitter,
            vad,
            vad_frames: [(SampleTime(0), None); VAD_RING],
            vad_read: 0,
            echo: (config.echo.enabled && config.barge_in)
                .then(|| EchoCheck::new(&config.echo, now)),
            echo_held: false,
            onset: None,
            pause_until: None,
            held_frames: 0,
            upsampler,
            feed: [0; WIDEBAND_FRAME_SAMPLES],
            feed_len: 0,
            downsampler: None,
            outgoing: [0; FRAME_SAMPLES],
            outgoing_len: 0,
            pacer,
            ledger: MarkLedger::new(),
            frames_since_mark: 0,
            next_progress_mark: PROGRESS_MARK_BASE,
            trailing_mark_at: None,
            now,
            outputs: VecDeque::with_capacity(OUTPUT_CAPACITY),
            caller: VecDeque::with_capacity(if config.agent_feed { CALLER_RING } else { 0 }),
            trace: (config.trace_events > 0).then(|| Trace::new(now, config.trace_events)),
            onset_arrival: None,
            stats: CallStats::default(),
        })
    }

    /// Gives the call a second stage on barge-in onsets (see [`OnsetCheck`]); a call without
    /// barge-in ignores it. Call before the first input.
    pub fn set_onset_check(&mut self, check: Box<dyn OnsetCheck>) {
        if self.config.barge_in {
            self.onset = Some(OnsetGate::new(check));
        }
    }

    /// Feeds one input. Drain [`Call::poll_output`] until `None` before the next input.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), CallError> {
        if !self.outputs.is_empty() {
            return Err(CallError::InputWithoutDrain);
        }
        if self.phase == Phase::Stopped {
            self.stats.after_stop += 1;
            return Err(CallError::AfterStop);
        }
        self.now = self.now.max(input.time());
        if let Some(trace) = self.trace.as_mut() {
            let kind = match input {
                Input::AgentAudio(_, pcm, rate) => Some(TraceKind::AgentAudio {
                    samples: pcm.len() as u32,
                    hz: rate.hz(),
                }),
                Input::AgentClear(_) => Some(TraceKind::AgentClear),
                Input::AgentMark(_, mark) => Some(TraceKind::AgentMark(mark)),
                Input::Dtmf(_, digit) => Some(TraceKind::Dtmf(digit)),
                Input::MarkEcho(_, mark) => Some(TraceKind::MarkEcho(mark)),
                Input::Stop(_) => Some(TraceKind::Stop),
                Input::Media(..) | Input::Timeout(_) => None,
            };
            if let Some(kind) = kind {
                trace.record(input.time(), kind);
            }
        }
        match input {
            Input::AgentAudio(now, pcm, rate) => self.agent_audio(now, pcm, rate),
            Input::AgentClear(now) => {
                self.interrupt(now, None);
                Ok(())
            }
            Input::AgentMark(now, mark) => self.agent_mark(now, mark),
            Input::Dtmf(_, digit) => {
                self.stats.dtmf += 1;
                self.emit(Output::Event(CallEvent::Dtmf(digit)));
                Ok(())
            }
            Input::MarkEcho(now, mark) => {
                self.mark_echo(now, mark);
                Ok(())
            }
            Input::Media(now, media) => {
                self.media(now, &media);
                self.handle_timeout(now);
                Ok(())
            }
            Input::Stop(_) => {
                self.phase = Phase::Stopped;
                if let Some(gate) = self.onset.as_mut() {
                    gate.release();
                }
                self.pause_until = None;
                self.pacer.flush(|_| {});
                self.emit(Output::Event(CallEvent::Stopped));
                Ok(())
            }
            Input::Timeout(now) => {
                self.handle_timeout(now);
                Ok(())
            }
        }
    }

    /// The next output, or `None` when drained. Frames are released only at their deadline.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(queued) = self.outputs.pop_front() {
            return match queued {
                Queued::CallerAudio => {
                    let (at, frame) = self.caller.pop_front()?;
                    Some(Output::CallerAudio(at, frame))
                }
                Queued::Clear => Some(Output::Clear),
                Queued::Event(event) => Some(Output::Event(event)),
                Queued::Mark(mark) => Some(Output::Mark(mark)),
            };
        }
        if self.phase == Phase::Stopped {
            return None;
        }
        match self.pacer.poll_transmit()? {
            Transmit::Frame { frame, .. } => {
                self.stats.frames_out += 1;
                if let Some(trace) = self.trace.as_mut() {
                    trace.record(self.now, TraceKind::Transmit);
                }
                self.ledger.sent_frame();
                if let Some(echo) = self.echo.as_mut() {
                    // The frame's place on the pacer's schedule, not the (later) wake-up that
                    // released it: a late wake-up must not move the reference by a tick.
                    let due = self.pacer.last_release_due().unwrap_or(self.now);
                    echo.sent(due, &frame);
                }
                if self.pacer.queued_frames() == 0 && self.outgoing_len == 0 {
                    self.trailing_mark_at = Some(self.now + FRAME);
                }
                Some(Output::Transmit(frame))
            }
            Transmit::Mark(mark) => {
                self.stats.marks_out += 1;
                if let Some(trace) = self.trace.as_mut() {
                    trace.record(self.now, TraceKind::MarkOut(mark));
                }
                self.ledger.sent_mark(self.now, mark);
                Some(Output::Mark(mark))
            }
        }
    }

    /// When the call next needs [`Input::Timeout`]; `None` when it is waiting for input only.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Stopped {
            return None;
        }
        [
            self.jitter.poll_timeout(),
            self.pacer.poll_timeout(),
            self.trailing_mark_at,
            self.pause_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Counters so far.
    pub fn stats(&self) -> CallStats {
        CallStats {
            jitter: self.jitter.stats(),
            pacer: self.pacer.stats(),
            ..self.stats
        }
    }

    /// Whether the caller is speaking (smoothed VAD decision).
    pub fn caller_speaking(&self) -> bool {
        self.vad.is_speech()
    }

    /// Agent audio queued here and not yet sent to Twilio.
    pub fn queued_playback(&self) -> Duration {
        FRAME * self.pacer.queued_frames() as u32
            + SampleRate::NARROWBAND.duration_of(self.outgoing_len as u64)
    }

    /// Whether agent audio is queued here or not yet confirmed played at Twilio.
    pub fn agent_playing(&self) -> bool {
        self.pacer.queued_frames() > 0 || self.outgoing_len > 0 || self.ledger.in_flight()
    }

    /// The call's timeline so far, when tracing is on.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// Takes the timeline out (tracing stops).
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.trace.take()
    }

    /// When the frame most recently returned as [`Output::Transmit`] became due on the pacer's
    /// schedule (see [`Pacer::last_release_due`]); the driver's wake-up time minus this is how
    /// late the frame left. `None` before the first frame.
    pub fn last_transmit_due(&self) -> Option<Instant> {
        self.pacer.last_release_due()
    }

    /// When the audio of the latest caller speech onset ([`CallEvent::SpeechStarted`], and so
    /// the onset of a [`CallEvent::BargeIn`] emitted with it) was read off the socket: the
    /// arrival of the first received frame from the onset slot on. `None` before any onset, or
    /// when every slot from the onset on was concealed.
    pub fn onset_arrival(&self) -> Option<Instant> {
        self.onset_arrival
    }

    /// Whether the stream has stopped.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    fn emit(&mut self, out: Output) {
        let caller_full =
            matches!(out, Output::CallerAudio(..)) && self.caller.len() >= CALLER_RING;
        if self.outputs.len() >= OUTPUT_CAPACITY || caller_full {
            self.stats.outputs_dropped += 1;
            return;
        }
        let queued = match out {
            Output::CallerAudio(at, frame) => {
                self.caller.push_back((at, frame));
                Queued::CallerAudio
            }
            Output::Clear => Queued::Clear,
            Output::Event(event) => Queued::Event(event),
            Output::Mark(mark) => Queued::Mark(mark),
            // Transmits are produced by `poll_output` itself and never queued.
            Output::Transmit(_) => {
                self.stats.outputs_dropped += 1;
                return;
            }
        };
        self.outputs.push_back(queued);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.onset.as_mut().is_some_and(OnsetGate::poll) {
            self.onset_confirmed(now);
        }
        if self.pause_until.is_some_and(|t| t <= now) {
            self.stats.onset_pauses_expired += 1;
            self.resume_playback(now);
        }
        if self.trailing_mark_at.is_some_and(|t| t <= now) {
            self.trailing_mark_at = None;
            if self.pacer.queued_frames() == 0
                && self.outgoing_len == 0
                && self.ledger.needs_trailing_mark()
            {
                self.push_progress_mark();
            }
        }
        self.pacer.handle_timeout(now);
        // Overdue frames beyond the caller ring's room wait in the jitter buffer (its deadline
        // stays in the past, so the driver comes back at once): see [`CALLER_RING`].
        while self.caller_room() {
            let Some(playout) = self.jitter.pop(now) else {
                break;
            };
            self.stats.caller_frames += 1;
            if let Some(trace) = self.trace.as_mut() {
                trace.record(
                    now,
                    TraceKind::CallerFrame {
                        at: playout.at,
                        kind: playout.kind,
                    },
                );
            }
            if !playout.read_ahead {
                self.detect(now, &playout);
            }
            if self.config.agent_feed {
                self.feed_agent(&codec::decode_frame(&playout.frame));
            }
        }
    }
}

/// 20 ms in the units the ledger uses.
const FRAME_DURATION: Duration = FRAME;

#[cfg(test)]
mod tests;
