//! The driver: the engine's only impure code. It owns a small fixed pool of dedicated threads
//! (one per core by default), shards calls across them, and runs each call's sans-IO state
//! machine and agent on absolute deadlines.
//!
//! ```text
//!  shell task (per socket)                    engine worker thread (one per core)
//!  ───────────────────────                    ──────────────────────────────────
//!  media JSON → base64 → InboundMedia ──SPSC ring (ringbuf, lock-free)──▶ Call::handle_input
//!  mark / dtmf / stop ────────SPSC ring (ringbuf, lock-free)──────────▶        │
//!                                                                       Agent ◀─┤ caller audio,
//!  socket writer ◀──OutboundSink::try_send (never blocks)── Outbound ◀──────────┘ events
//! ```
//!
//! A worker sleeps with `clock_nanosleep(TIMER_ABSTIME)` until the earliest deadline of its
//! calls (a binary heap) rounded up to a 1 ms grid ([`EngineConfig::wake_grid`]), wakes, serves
//! every call that is due, and sleeps again: one wake-up per grid step at most, whatever the
//! number of calls. Every call
//! is served at least every [`EngineConfig::max_idle`], which is when its rings and control
//! messages are read if it has no deadline of its own. Inbound frames carry the instant the
//! shell read them, so serving them a few milliseconds later changes no decision (one read
//! after the tick a service runs at counts as read at that tick: a call never sees input from
//! its future). A call is served at most once per wake-up.
//!
//! Nothing on a worker blocks: the rings and channels are non-blocking, and a full socket queue
//! is counted, never waited on, so one slow socket cannot stall other calls.

#![allow(clippy::disallowed_methods)] // the driver owns the threads

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbuf::HeapRb;
use ringbuf::traits::{Producer, Split};

use crate::agent::{Agent, CallInfo, HangupReason};
use crate::call::{CallConfig, CallEvent, CallStats};
use crate::frame::{InboundMedia, MarkId, MulawFrame};
use crate::time::SampleRate;

mod clock;
mod histogram;
mod worker;

pub use clock::{Clock, SystemClock};
pub use histogram::{
    AtomicHistogram, BARGE_IN_LATENCY_BOUNDS, HistogramSnapshot, MAX_BUCKETS,
    OUTBOUND_LATENESS_BOUNDS,
};

/// Engine settings. Plain data; validated by [`Engine::start`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Inbound frames a call's ring holds (default 32 = 640 ms of audio): room for the burst
    /// that a network stall releases at once. The worker empties the ring at least every
    /// `max_idle` (and at every 20 ms playout), so outside such a burst it holds a frame or two.
    /// Of a burst, only the frames younger than the jitter buffer's playout delay (at most
    /// 200 ms) can still play; the older ones are dropped as late. A burst longer than the ring
    /// (a stall over 640 ms) has its newest frames refused and counted
    /// ([`CallHandle::inbound_dropped`]), and playout resumes with the next frame.
    /// 32 × 192 bytes = 6 KiB per call.
    pub inbound_ring_frames: usize,
    /// Control messages a call's ring holds (default 64): mark echoes (a progress mark per
    /// 5 frames, so at most ~10 for the 1 s the pacer holds, plus agent marks), DTMF, stop.
    pub control_capacity: usize,
    /// Longest a call goes unserved (default 10 ms): bounds how late its rings are read when
    /// it has no deadline of its own.
    pub max_idle: Duration,
    /// Pull more agent audio when less than this is queued locally (default 200 ms).
    pub playback_low_water: Duration,
    /// How much agent audio to pull at a time (default 200 ms).
    pub playback_chunk: Duration,
    /// Wake-up grid (default 1 ms): a worker's sleep target is rounded up to a multiple of this
    /// from the worker's start, and one wake-up serves every call due by then, so a worker
    /// wakes at most once per grid step however many calls it runs. Frames are released at
    /// most one step after their deadline, never before. Zero wakes for every deadline
    /// exactly. Must divide 20 ms (so a call's frame deadlines keep one offset from the grid)
    /// and be at most `max_idle`.
    pub wake_grid: Duration,
    /// Run the worker threads under `SCHED_FIFO` at this priority (1–99), above every thread
    /// of the default scheduler, so a worker wakes on its deadline even when socket work keeps
    /// the core busy. `None` (the default) leaves them on the default scheduler. The OS may
    /// refuse (it needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` this high); the engine then runs
    /// at normal priority and says so in [`Engine::scheduling`].
    pub realtime_priority: Option<u8>,
    /// Ask the kernel to keep every CPU out of idle states that take longer than this to wake
    /// from (a PM QoS request through `/dev/cpu_dma_latency`, held while the engine runs).
    /// Waking from a deep idle state, or on a virtual machine from a halted vCPU, can take
    /// milliseconds, and every frame due meanwhile leaves that much late; `Some(ZERO)` keeps
    /// idle CPUs polling instead, at the cost of power. `None` (the default) leaves the
    /// kernel's choice. The device is root's; a refusal is reported in [`Engine::cpu_latency`].
    pub cpu_wake_latency: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            inbound_ring_frames: 32,
            control_capacity: 64,
            max_idle: Duration::from_millis(10),
            playback_low_water: Duration::from_millis(200),
            playback_chunk: Duration::from_millis(200),
            wake_grid: Duration::from_millis(1),
            realtime_priority: None,
            cpu_wake_latency: None,
        }
    }
}

/// The engine's request on CPU wake-up latency, as [`Engine::start`] left it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum CpuLatency {
    /// None was asked for ([`EngineConfig::cpu_wake_latency`] was `None`).
    Default,
    /// The kernel holds CPUs to this wake-up latency while the engine runs.
    Held(Duration),
    /// This was asked for and refused; the OS's reason.
    Refused(Duration, String),
}

/// Where Linux takes PM QoS CPU latency requests: a 32-bit microsecond value written to the
/// open device, in force until the file is closed.
const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// Opens a CPU latency request of `latency`; it lasts as long as the returned file is open.
fn hold_cpu_latency(latency: Duration) -> Result<std::fs::File, String> {
    use std::io::Write as _;
    let us = i32::try_from(latency.as_micros()).map_err(|_| "latency too large".to_owned())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(CPU_DMA_LATENCY)
        .map_err(|e| format!("{CPU_DMA_LATENCY}: {e}"))?;
    file.write_all(&us.to_ne_bytes())
        .map_err(|e| format!("{CPU_DMA_LATENCY}: {e}"))?;
    Ok(file)
}

/// How the worker threads are scheduled, as [`Engine::start`] left them.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Scheduling {
    /// The default scheduler ([`EngineConfig::realtime_priority`] was `None`).
    Normal,
    /// Every worker runs under `SCHED_FIFO` at this priority.
    Realtime(u8),
    /// `SCHED_FIFO` at this priority was asked for and the OS refused it (the workers run on
    /// the default scheduler); the OS's reason.
    Refused(u8, String),
}

/// Why the engine or a call could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The operating system refused a thread.
    #[error("cannot start engine worker thread: {0}")]
    Thread(#[from] std::io::Error),
    /// A setting is out of range.
    #[error("invalid engine setting: {0}")]
    Config(&'static str),
    /// The call configuration is invalid.
    #[error("invalid call configuration: {0}")]
    Call(#[from] crate::call::ConfigError),
    /// The engine is shutting down.
    #[error("engine is shutting down")]
    ShuttingDown,
}

/// Samples a worker's agent audio buffer is preallocated for: one `chunk` pull at 16 kHz (the
/// agent feed's rate; 200 ms = 3,200 samples = 6.4 KB). An agent answering at a higher rate grows
/// it once, on its first pull. Each worker lends its one buffer to the call it is serving.
pub(crate) fn agent_audio_capacity(chunk: Duration) -> usize {
    let samples = chunk.as_micros() * u128::from(SampleRate::WIDEBAND.hz()) / 1_000_000;
    usize::try_from(samples).unwrap_or(usize::MAX)
}

/// A message from the engine about a call: what goes on the wire (media, marks, clears, the
/// agent's hang-up) and reports (events, the timeline, the final counters). The shell's sink
/// sends the two kinds to different queues.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// Send Twilio `clear`.
    Clear,
    /// The call is over; its final counters.
    Ended(Box<CallStats>),
    /// A call event, for logs and for remote agents.
    Event(CallEvent),
    /// The agent asked to end the call: close the stream.
    Hangup(HangupReason),
    /// Send Twilio a `mark`.
    Mark(MarkId),
    /// Send Twilio this 20 ms µ-law frame, due on the wire at `due` (its pacer deadline), so
    /// the writer can measure how late its bytes reached the socket.
    Media {
        /// The frame.
        frame: MulawFrame,
        /// The frame's deadline on the pacer's schedule.
        due: Instant,
    },
    /// The call's timeline, sent once just before `Ended` when tracing was on.
    Trace(Box<crate::call::Trace>),
}

/// Why an [`OutboundSink`] refused a message.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum SinkError {
    /// The writer is gone.
    Closed,
    /// The writer's queue is full (a slow socket).
    Full,
}

/// Where a call's outbound messages go. Implementations must never block.
pub trait OutboundSink: Send {
    /// Queues `msg`, emitted by the worker at `now`, or refuses at once.
    fn try_send(&mut self, now: Instant, msg: Outbound) -> Result<(), SinkError>;
}

/// Control messages from the shell to a call.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    /// A DTMF digit.
    Dtmf(Instant, char),
    /// Twilio echoed a mark.
    MarkEcho(Instant, MarkId),
    /// The stream stopped or the socket closed.
    Stop(Instant),
}

/// Everything needed to run one call.
pub struct CallSpec {
    /// The call's configuration.
    pub config: CallConfig,
    /// Who the call is with.
    pub info: CallInfo,
    /// What answers the caller.
    pub agent: Box<dyn Agent>,
    /// Where outbound messages go.
    pub sink: Box<dyn OutboundSink>,
    /// The second stage on barge-in onsets, if any (see [`crate::call::OnsetCheck`]).
    pub onset_check: Option<Box<dyn crate::call::OnsetCheck>>,
}

/// One inbound frame with the instant it was read off the socket.
pub(crate) type InboundItem = (Instant, InboundMedia);

/// Counters shared by the engine's workers (relaxed atomics; read for metrics and health).
///
/// Everything here is written by the workers with relaxed atomic adds (no lock, no allocation)
/// and read by the shell at scrape time. Per-frame measurements (`frames_out`, the two
/// histograms, VAD transitions) are recorded as they happen; the per-call media counters
/// (`frames_in` through `onset_pauses_expired`) are published from each call's own counters at most
/// every [`COUNTERS_PUBLISH_EVERY`] and when the call ends, so they may trail by that much.
#[derive(Debug)]
pub struct EngineCounters {
    /// Calls running now.
    pub active_calls: AtomicUsize,
    /// Calls started since the engine started.
    pub calls_started: AtomicU64,
    /// Frames handed to socket writers.
    pub frames_out: AtomicU64,
    /// Outbound messages a call's sink refused as full (in the shell: a stream's wire queue to
    /// its socket writer, or its report queue).
    pub sink_full: AtomicU64,
    /// Worker wake-ups.
    pub wakeups: AtomicU64,
    /// Wake-ups more than 1 ms after the deadline they were for.
    pub late_wakeups: AtomicU64,
    /// Total lateness of wake-ups, in microseconds.
    pub lateness_us: AtomicU64,
    /// How long each wake-up's work took, from waking to sleeping again: what delays every
    /// frame due later in the same wake-up, and the next wake-up if it runs past it. Buckets
    /// [`OUTBOUND_LATENESS_BOUNDS`].
    pub wake_busy: AtomicHistogram,
    /// Caller frames accepted by the calls' jitter buffers.
    pub frames_in: AtomicU64,
    /// Caller playout slots concealed (no frame in time: faded repeat or silence).
    pub frames_concealed: AtomicU64,
    /// Caller playout slots concealed while their frame was held up in transit (a stall): the
    /// frames behind them played a slot later instead of being dropped as late. A subset of
    /// `frames_concealed`.
    pub frames_expanded: AtomicU64,
    /// Caller frames dropped as late (their slot had played) or backwards.
    pub frames_late: AtomicU64,
    /// Caller frames dropped as duplicates.
    pub frames_duplicate: AtomicU64,
    /// Buffered caller frames dropped because a jitter buffer was full.
    pub jitter_overflow: AtomicU64,
    /// Agent frames dropped because a call's playback queue was full.
    pub playback_dropped: AtomicU64,
    /// Caller speech onsets during agent playback held as the agent's own echo (no barge-in).
    pub echo_onsets: AtomicU64,
    /// Caller speech onsets during agent playback held for the second-stage check.
    pub onsets_checked: AtomicU64,
    /// Held onsets the check confirmed (each a barge-in).
    pub onsets_confirmed: AtomicU64,
    /// Held onsets whose utterance ended unconfirmed (no barge-in).
    pub onsets_rejected: AtomicU64,
    /// Onsets during playback that barged in unchecked because the check's queue was full.
    pub onsets_unchecked: AtomicU64,
    /// Held onsets still undecided when their playback pause ran out (playback resumed).
    pub onset_pauses_expired: AtomicU64,
    /// Caller speech-started transitions of the VAD.
    pub speech_started: AtomicU64,
    /// Caller speech-ended transitions of the VAD.
    pub speech_ended: AtomicU64,
    /// Caller utterances outside playback that the onset check never confirmed (dismissed
    /// instead of ended).
    pub speech_dismissed: AtomicU64,
    /// Barge-ins decided (caller speech over agent playback).
    pub barge_ins: AtomicU64,
    /// How late each outbound frame was handed to its socket writer after it was due on its
    /// pacer's schedule: the worker's wake-up time minus the frame's deadline (or its push
    /// time, if later). Buckets [`OUTBOUND_LATENESS_BOUNDS`].
    pub outbound_lateness: AtomicHistogram,
    /// Barge-in latency: from when the caller's speech onset frame was read off the socket to
    /// when the worker handed the `clear` to the socket writer. Buckets
    /// [`BARGE_IN_LATENCY_BOUNDS`].
    pub barge_in_latency: AtomicHistogram,
}

/// Longest a call's media counters wait before they are added to [`EngineCounters`].
pub const COUNTERS_PUBLISH_EVERY: Duration = Duration::from_millis(100);

impl Default for EngineCounters {
    fn default() -> Self {
        Self {
            active_calls: AtomicUsize::new(0),
            calls_started: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            sink_full: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            late_wakeups: AtomicU64::new(0),
            lateness_us: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_concealed: AtomicU64::new(0),
            frames_expanded: AtomicU64::new(0),
            frames_late: AtomicU64::new(0),
            frames_duplicate: AtomicU64::new(0),
            jitter_overflow: AtomicU64::new(0),
            playback_dropped: AtomicU64::new(0),
            echo_onsets: AtomicU64::new(0),
            onsets_checked: AtomicU64::new(0),
            onsets_confirmed: AtomicU64::new(0),
            onsets_rejected: AtomicU64::new(0),
            onsets_unchecked: AtomicU64::new(0),
            onset_pauses_expired: AtomicU64::new(0),
            speech_started: AtomicU64::new(0),
            speech_ended: AtomicU64::new(0),
            speech_dismissed: AtomicU64::new(0),
            barge_ins: AtomicU64::new(0),
            outbound_lateness: AtomicHistogram::new(&OUTBOUND_LATENESS_BOUNDS),
            wake_busy: AtomicHistogram::new(&OUTBOUND_LATENESS_BOUNDS),
            barge_in_latency: AtomicHistogram::new(&BARGE_IN_LATENCY_BOUNDS),
        }
    }
}

/// The shell's end of one call: push media, send control.
pub struct CallHandle {
    inbound: ringbuf::HeapProd<InboundItem>,
    control: ringbuf::HeapProd<Control>,
    /// Frames refused because the ring was full.
    inbound_dropped: u64,
    /// Control messages refused because the channel was full.
    control_dropped: u64,
}

impl CallHandle {
    /// Hands one caller frame, read off the socket at `at`, to the engine. Returns false (and
    /// counts it) when the ring is full: the engine is far behind or the peer floods.
    pub fn push_media(&mut self, at: Instant, media: InboundMedia) -> bool {
        if self.inbound.try_push((at, media)).is_err() {
            self.inbound_dropped += 1;
            return false;
        }
        true
    }

    /// Sends a control message; false (and counted) when the channel is full or the call ended.
    pub fn send(&mut self, control: Control) -> bool {
        if self.control.try_push(control).is_err() {
            self.control_dropped += 1;
            return false;
        }
        true
    }

    /// Frames refused because the ring was full.
    pub fn inbound_dropped(&self) -> u64 {
        self.inbound_dropped
    }

    /// Control messages refused.
    pub fn control_dropped(&self) -> u64 {
        self.control_dropped
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        // The worker also ends a call whose control ring lost its producer; this makes it prompt.
        let _ = self.control.try_push(Control::Stop(Instant::now()));
    }
}

enum WorkerMsg {
    Open(Box<worker::Slot>),
    Shutdown,
}

/// A worker's inbox: new calls and the shutdown, from the shell's threads.
///
/// The worker only ever `try_lock`s it, once per wake-up: a sender holding the lock costs a
/// new call one wake-up's delay, never the worker a wait. A lock-free channel would not do:
/// its receiver waits for a send in progress (crossbeam's `try_recv` yields in a loop until
/// the sender has written the slot), and a real-time worker that yields to a sender of lower
/// priority, preempted on the same core, yields to nobody: it spun until the kernel's
/// real-time throttle stopped it, almost a second with no frame on any of its calls.
#[derive(Default)]
struct Inbox(parking_lot::Mutex<std::collections::VecDeque<WorkerMsg>>);

impl Inbox {
    fn send(&self, msg: WorkerMsg) {
        self.0.lock().push_back(msg);
    }

    /// Moves what is waiting into `into`, unless a sender holds the lock right now.
    fn take(&self, into: &mut std::collections::VecDeque<WorkerMsg>) {
        if let Some(mut queue) = self.0.try_lock() {
            into.extend(queue.drain(..));
        }
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

#[derive(Debug)]
struct WorkerHandle {
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
    load: Arc<AtomicUsize>,
}

/// The engine: a fixed pool of worker threads running calls.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    workers: Vec<WorkerHandle>,
    counters: Arc<EngineCounters>,
    scheduling: Scheduling,
    cpu_latency: CpuLatency,
    /// The open PM QoS request, while the engine runs.
    _cpu_latency_request: Option<std::fs::File>,
    shutting_down: AtomicBool,
}

impl Engine {
    /// Starts the worker threads.
    pub fn start(config: EngineConfig, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        if config.inbound_ring_frames == 0 || config.control_capacity == 0 {
            return Err(StartError::Config(
                "ring and channel capacities must be at least 1",
            ));
        }
        if config.max_idle.is_zero() || config.playback_chunk.is_zero() {
            return Err(StartError::Config(
                "max_idle and playback_chunk must be positive",
            ));
        }
        if !config.wake_grid.is_zero()
            && (!crate::time::FRAME
                .as_nanos()
                .is_multiple_of(config.wake_grid.as_nanos())
                || config.wake_grid > config.max_idle)
        {
            return Err(StartError::Config(
                "wake_grid must divide 20 ms and be at most max_idle",
            ));
        }
        if config
            .realtime_priority
            .is_some_and(|p| !(1..=99).contains(&p))
        {
            return Err(StartError::Config("realtime_priority must be 1 to 99"));
        }
        let count = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            config.workers
        };
        let counters = Arc::new(EngineCounters::default());
        let mut workers = Vec::with_capacity(count);
        let (priority_tx, priority_rx) = crossbeam_channel::bounded(count);
        for index in 0..count {
            let inbox = Arc::new(Inbox::default());
            let load = Arc::new(AtomicUsize::new(0));
            let worker = worker::Worker::new(
                Arc::clone(&inbox),
                config.clone(),
                Arc::clone(&clock),
                Arc::clone(&counters),
                Arc::clone(&load),
            );
            let priority = config.realtime_priority;
            let priority_tx = priority_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("handset-engine-{index}"))
                .spawn(move || {
                    let _ = priority_tx.send(priority.map(realtime));
                    drop(priority_tx);
                    worker.run()
                })?;
            workers.push(WorkerHandle {
                inbox,
                thread: Some(thread),
                load,
            });
        }
        drop(priority_tx);
        // Every worker reports before it serves anything; a refusal on one is a refusal.
        let mut scheduling = config
            .realtime_priority
            .map_or(Scheduling::Normal, Scheduling::Realtime);
        for outcome in priority_rx.iter().flatten() {
            if let Err(reason) = outcome {
                scheduling = Scheduling::Refused(config.realtime_priority.unwrap_or(0), reason);
            }
        }
        let (cpu_latency, cpu_latency_request) = match config.cpu_wake_latency {
            None => (CpuLatency::Default, None),
            Some(latency) => match hold_cpu_latency(latency) {
                Ok(file) => (CpuLatency::Held(latency), Some(file)),
                Err(reason) => (CpuLatency::Refused(latency, reason), None),
            },
        };
        Ok(Self {
            config,
            workers,
            counters,
            scheduling,
            cpu_latency,
            _cpu_latency_request: cpu_latency_request,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// How the worker threads are scheduled.
    pub fn scheduling(&self) -> &Scheduling {
        &self.scheduling
    }

    /// The engine's CPU wake-up latency request.
    pub fn cpu_latency(&self) -> &CpuLatency {
        &self.cpu_latency
    }

    /// Starts a call on the least-loaded worker and returns the shell's handle to it.
    pub fn open_call(&self, mut spec: CallSpec, now: Instant) -> Result<CallHandle, StartError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(StartError::ShuttingDown);
        }
        let mut call = crate::call::Call::new(&spec.config, now)?;
        if let Some(check) = spec.onset_check.take() {
            call.set_onset_check(check);
        }
        let (producer, consumer) =
            HeapRb::<InboundItem>::new(self.config.inbound_ring_frames).split();
        let (control_tx, control_rx) = HeapRb::<Control>::new(self.config.control_capacity).split();
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .ok_or(StartError::Config("no workers"))?;
        worker.load.fetch_add(1, Ordering::Relaxed);
        let slot = worker::Slot::new(call, spec, consumer, control_rx, now);
        worker.inbox.send(WorkerMsg::Open(Box::new(slot)));
        Ok(CallHandle {
            inbound: producer,
            control: control_tx,
            inbound_dropped: 0,
            control_dropped: 0,
        })
    }

    /// Shared counters.
    pub fn counters(&self) -> &Arc<EngineCounters> {
        &self.counters
    }

    /// Worker threads running.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops every call (each gets `Stop` and its `Ended` message) and joins the workers.
    pub fn shutdown(&mut self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for w in &self.workers {
            w.inbox.send(WorkerMsg::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1–99), as the engine does its
/// workers; the OS's reason when it refuses. For the shell's own media threads.
pub fn realtime(priority: u8) -> Result<(), String> {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let value = ThreadPriorityValue::try_from(priority)?;
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| match e {
        thread_priority::Error::OS(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests;
