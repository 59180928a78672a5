//! One engine worker thread: a set of calls, a deadline heap, and an absolute-deadline sleep.
//!
//! **Wake-up coalescing.** Each call has its own deadlines (pacer `anchor + n·20 ms`, jitter
//! playout, agent timers), so a worker that slept until the earliest one would wake about
//! 50 times per second per call, and each wake-up costs far more (a context switch and a timer)
//! than serving a call. The worker therefore rounds its sleep target *up* to a fixed grid
//! ([`EngineConfig::wake_grid`], 1 ms by default) counted from its epoch, and serves every call
//! that is due when it wakes, at that grid tick's time ([`Worker::run`]). A pacer anchors when
//! it is served, so on a tick, and 20 ms is a whole number of ticks, so all of a call's later
//! frame deadlines are ticks too: a call's frames keep exact 20 ms spacing (plus only the
//! wake-up jitter), each is released by the wake-up for its own tick, and a worker wakes at
//! most once per tick however many calls it runs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringbuf::traits::{Consumer, Observer};

use super::{
    CallSpec, Clock, Control, EngineConfig, EngineCounters, InboundItem, Inbox, Outbound,
    OutboundSink, SinkError, WorkerMsg,
};
use crate::agent::{Agent, AgentCommand, AgentOutput, CallInfo};
use crate::call::{Call, CallEvent, CallStats, Input, Output};

/// Wake-ups later than this after their deadline are counted as late.
const LATE: Duration = Duration::from_millis(1);

/// Agent output rounds applied per service before yielding (an agent that answers every
/// output with more commands cannot spin a worker).
const MAX_AGENT_ROUNDS: usize = 16;

/// One call on a worker.
pub(super) struct Slot {
    call: Call,
    info: CallInfo,
    agent: Box<dyn Agent>,
    sink: Box<dyn OutboundSink>,
    inbound: ringbuf::HeapCons<InboundItem>,
    control: ringbuf::HeapCons<Control>,
    /// Commands the agent is writing now, and the ones being applied (swapped, never
    /// reallocated). Agents write audio in `poll_audio`, which gets `out` while nothing is being
    /// applied; after each round the buffers are swapped back, so `out` keeps the one audio
    /// buffer sized for a pull and `applying` stays empty unless an agent plays audio from a
    /// callback made while applying (it then grows once). The pull-sized audio buffer is the
    /// worker's, lent to `out` for the length of one service ([`Worker::spare_audio`]): between
    /// services a call holds no audio buffer of its own (6.4 KB per call saved), unless an
    /// agent left commands unapplied after [`MAX_AGENT_ROUNDS`], when the call keeps it until
    /// its next service and the worker's next borrower grows a buffer once.
    out: AgentOutput,
    applying: AgentOutput,
    started: bool,
    /// The sink reported the writer gone.
    sink_closed: bool,
    /// Bumped whenever the slot's heap entry is replaced, to skip stale entries.
    generation: u64,
    /// The call's media counters already added to [`EngineCounters`].
    published: Published,
    /// When to publish the call's media counters next (`None`: at the first service).
    next_publish: Option<Instant>,
    /// The clock's reading for the current service (the worker's wake-up), which the
    /// measurements use; the call itself runs on the grid tick ([`Worker::run`]).
    woke: Instant,
}

/// The part of a call's counters mirrored into [`EngineCounters`], as last published.
#[derive(Clone, Copy, Default)]
struct Published {
    frames_in: u64,
    concealed: u64,
    expanded: u64,
    late: u64,
    duplicate: u64,
    overflow: u64,
    playback_dropped: u64,
    echo_onsets: u64,
    onsets_checked: u64,
    onsets_confirmed: u64,
    onsets_rejected: u64,
    onsets_unchecked: u64,
    onset_pauses_expired: u64,
}

impl Slot {
    pub(super) fn new(
        call: Call,
        spec: CallSpec,
        inbound: ringbuf::HeapCons<InboundItem>,
        control: ringbuf::HeapCons<Control>,
        now: Instant,
    ) -> Self {
        Self {
            call,
            info: spec.info,
            agent: spec.agent,
            sink: spec.sink,
            inbound,
            control,
            out: AgentOutput::with_capacity(0),
            applying: AgentOutput::with_capacity(0),
            started: false,
            sink_closed: false,
            generation: 0,
            published: Published::default(),
            next_publish: None,
            woke: now,
        }
    }

    /// Serves the call at `now` (the grid tick; `woke` is the clock's reading) with the
    /// worker's audio buffer lent to the agent output (see [`Slot::out`]). Returns false once
    /// the call ended.
    pub(super) fn service(
        &mut self,
        now: Instant,
        woke: Instant,
        config: &EngineConfig,
        counters: &EngineCounters,
        spare_audio: &mut Vec<i16>,
    ) -> bool {
        self.woke = woke;
        self.out.borrow_audio(spare_audio);
        let alive = self.serve(now, config, counters);
        self.out.return_audio(spare_audio);
        alive
    }

    /// Serves the call at `now`: control, media, timers, agent. Returns false once it ended.
    fn serve(&mut self, now: Instant, config: &EngineConfig, counters: &EngineCounters) -> bool {
        if !self.started {
            self.started = true;
            self.agent.on_start(now, &self.info, &mut self.out);
            self.apply_agent(now, counters);
        }
        loop {
            // The shell's handle dropped: nothing more can come once the ring is empty.
            let closed = !self.control.write_is_held();
            match self.control.try_pop() {
                Some(control) => {
                    if matches!(control, Control::Stop(_)) {
                        // Media read off the socket before the stop still counts.
                        self.drain_inbound(now, counters);
                    }
                    let input = match control {
                        Control::Dtmf(t, digit) => Input::Dtmf(t.min(now), digit),
                        Control::MarkEcho(t, mark) => Input::MarkEcho(t.min(now), mark),
                        Control::Stop(t) => Input::Stop(t.min(now)),
                    };
                    self.input(now, input, counters);
                }
                None if !closed => break,
                None => {
                    self.drain_inbound(now, counters);
                    self.input(now, Input::Stop(now), counters);
                    break;
                }
            }
            if self.call.is_stopped() {
                break;
            }
        }
        self.drain_inbound(now, counters);
        if self.call.is_stopped() {
            self.end(now, counters);
            return false;
        }
        if self.call.poll_timeout().is_some_and(|t| t <= now) {
            self.input(now, Input::Timeout(now), counters);
        }
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.on_timeout(now, &mut self.out);
            self.apply_agent(now, counters);
        }
        let queued = self.call.queued_playback();
        if queued < config.playback_low_water {
            self.agent
                .poll_audio(now, queued, config.playback_chunk, &mut self.out);
            self.apply_agent(now, counters);
        }
        if self.sink_closed || self.next_publish.is_none_or(|t| t <= now) {
            self.publish(&self.call.stats(), counters);
            self.next_publish = Some(now + super::COUNTERS_PUBLISH_EVERY);
        }
        !self.sink_closed
    }

    /// Feeds every frame waiting in the inbound ring to the call (until it stops).
    fn drain_inbound(&mut self, now: Instant, counters: &EngineCounters) {
        while !self.call.is_stopped() {
            let Some((at, media)) = self.inbound.try_pop() else {
                break;
            };
            // Read off the socket after the tick this service runs at: it arrived "now".
            self.input(now, Input::Media(at.min(now), media), counters);
        }
    }

    /// Hands the timeline (if traced) and the final counters to the socket writer.
    fn end(&mut self, now: Instant, counters: &EngineCounters) {
        if let Some(trace) = self.call.take_trace() {
            let _ = self.sink.try_send(now, Outbound::Trace(Box::new(trace)));
        }
        let stats = self.call.stats();
        self.publish(&stats, counters);
        let _ = self.sink.try_send(now, Outbound::Ended(Box::new(stats)));
    }

    /// Adds what the call counted since the last publish to the engine-wide counters.
    fn publish(&mut self, stats: &CallStats, counters: &EngineCounters) {
        let now = Published {
            frames_in: stats.media_in,
            concealed: stats.jitter.concealed,
            expanded: stats.jitter.expanded,
            late: stats.media_late,
            duplicate: stats.media_duplicate,
            overflow: stats.jitter.overflow,
            playback_dropped: stats.agent_frames_dropped,
            echo_onsets: stats.echo_onsets,
            onsets_checked: stats.onsets_checked,
            onsets_confirmed: stats.onsets_confirmed,
            onsets_rejected: stats.onsets_rejected,
            onsets_unchecked: stats.onsets_unchecked,
            onset_pauses_expired: stats.onset_pauses_expired,
        };
        let before = std::mem::replace(&mut self.published, now);
        let add = |counter: &std::sync::atomic::AtomicU64, now: u64, before: u64| {
            if now > before {
                counter.fetch_add(now - before, Ordering::Relaxed);
            }
        };
        add(&counters.frames_in, now.frames_in, before.frames_in);
        add(&counters.frames_concealed, now.concealed, before.concealed);
        add(&counters.frames_expanded, now.expanded, before.expanded);
        add(&counters.frames_late, now.late, before.late);
        add(&counters.frames_duplicate, now.duplicate, before.duplicate);
        add(&counters.jitter_overflow, now.overflow, before.overflow);
        add(
            &counters.playback_dropped,
            now.playback_dropped,
            before.playback_dropped,
        );
        add(&counters.echo_onsets, now.echo_onsets, before.echo_onsets);
        add(
            &counters.onsets_checked,
            now.onsets_checked,
            before.onsets_checked,
        );
        add(
            &counters.onsets_confirmed,
            now.onsets_confirmed,
            before.onsets_confirmed,
        );
        add(
            &counters.onsets_rejected,
            now.onsets_rejected,
            before.onsets_rejected,
        );
        add(
            &counters.onsets_unchecked,
            now.onsets_unchecked,
            before.onsets_unchecked,
        );
        add(
            &counters.onset_pauses_expired,
            now.onset_pauses_expired,
            before.onset_pauses_expired,
        );
    }

    /// The next instant this call needs serving.
    fn next_deadline(&self, now: Instant, max_idle: Duration) -> Instant {
        let idle = now + max_idle;
        [self.call.poll_timeout(), self.agent.poll_timeout()]
            .into_iter()
            .flatten()
            .fold(idle, Instant::min)
    }

    fn input(&mut self, now: Instant, input: Input<'_>, counters: &EngineCounters) {
        // The call refuses input only after stop or without a drain; both are counted there.
        let _ = self.call.handle_input(input);
        self.drain(now, counters);
        self.apply_agent(now, counters);
    }

    /// Moves every call output to the sink or the agent.
    fn drain(&mut self, now: Instant, counters: &EngineCounters) {
        while let Some(output) = self.call.poll_output() {
            match output {
                Output::CallerAudio(at, frame) => {
                    self.agent.on_caller_audio(at, &frame, &mut self.out)
                }
                Output::Clear => self.send(now, Outbound::Clear, counters),
                Output::Event(event) => {
                    self.count_event(&event, counters);
                    self.agent.on_event(now, &event, &mut self.out);
                    if !matches!(event, CallEvent::Stopped) {
                        self.send(now, Outbound::Event(event), counters);
                    }
                }
                Output::Mark(mark) => self.send(now, Outbound::Mark(mark), counters),
                Output::Transmit(frame) => {
                    counters.frames_out.fetch_add(1, Ordering::Relaxed);
                    let due = self.call.last_transmit_due();
                    if let Some(due) = due {
                        counters
                            .outbound_lateness
                            .record(self.woke.saturating_duration_since(due));
                    }
                    let due = due.unwrap_or(now);
                    self.send(now, Outbound::Media { frame, due }, counters);
                }
            }
        }
    }

    /// Counts VAD transitions and barge-ins. A barge-in's `clear` was handed to the sink just
    /// before its event, in this same drain, so the service's wake-up is when the `clear` left.
    fn count_event(&self, event: &CallEvent, counters: &EngineCounters) {
        match event {
            CallEvent::SpeechStarted { .. } => {
                counters.speech_started.fetch_add(1, Ordering::Relaxed);
            }
            CallEvent::SpeechEnded { .. } => {
                counters.speech_ended.fetch_add(1, Ordering::Relaxed);
            }
            CallEvent::SpeechDismissed { .. } => {
                counters.speech_dismissed.fetch_add(1, Ordering::Relaxed);
            }
            CallEvent::BargeIn(_) => {
                counters.barge_ins.fetch_add(1, Ordering::Relaxed);
                if let Some(arrived) = self.call.onset_arrival() {
                    counters
                        .barge_in_latency
                        .record(self.woke.saturating_duration_since(arrived));
                }
            }
            _ => {}
        }
    }

    fn send(&mut self, now: Instant, msg: Outbound, counters: &EngineCounters) {
        match self.sink.try_send(now, msg) {
            Ok(()) => {}
            Err(SinkError::Full) => {
                counters.sink_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(SinkError::Closed) => self.sink_closed = true,
        }
    }

    /// Applies what the agent asked, in order, until it asks nothing more.
    fn apply_agent(&mut self, now: Instant, counters: &EngineCounters) {
        for _ in 0..MAX_AGENT_ROUNDS {
            if self.out.is_empty() {
                return;
            }
            std::mem::swap(&mut self.out, &mut self.applying);
            for i in 0..self.applying.commands().len() {
                let command = self.applying.commands()[i];
                match command {
                    AgentCommand::Audio { offset, len, rate } => {
                        let pcm = &self.applying.audio()[offset..offset + len];
                        let _ = self.call.handle_input(Input::AgentAudio(now, pcm, rate));
                    }
                    AgentCommand::Clear => {
                        let _ = self.call.handle_input(Input::AgentClear(now));
                    }
                    AgentCommand::Hangup(reason) => {
                        self.send(now, Outbound::Hangup(reason), counters);
                        continue;
                    }
                    AgentCommand::Mark(mark) => {
                        let _ = self.call.handle_input(Input::AgentMark(now, mark));
                    }
                }
                self.drain(now, counters);
            }
            self.applying.reset();
            if self.out.is_empty() {
                // Both are empty: give the agent back the buffer it has been writing into.
                std::mem::swap(&mut self.out, &mut self.applying);
            }
        }
    }
}

/// The thread's state.
pub(super) struct Worker {
    inbox: Arc<Inbox>,
    /// Messages taken from the inbox, not yet handled (kept to reuse its buffer).
    pending: std::collections::VecDeque<WorkerMsg>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    counters: Arc<EngineCounters>,
    load: Arc<AtomicUsize>,
    /// Calls by index; boxed so the vector stays small (a `Slot` holds a whole `Call`) and
    /// a call is not moved when it is accepted.
    slots: Vec<Option<Box<Slot>>>,
    free: Vec<usize>,
    /// (deadline, slot index, slot generation), earliest first.
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// The agent audio buffer lent to each call while it is served: one pull
    /// (`playback_chunk` at 16 kHz), allocated once per worker.
    spare_audio: Vec<i16>,
    /// Origin of the wake-up grid.
    epoch: Instant,
}

impl Worker {
    pub(super) fn new(
        inbox: Arc<Inbox>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        counters: Arc<EngineCounters>,
        load: Arc<AtomicUsize>,
    ) -> Self {
        let epoch = clock.now();
        let spare_audio = Vec::with_capacity(super::agent_audio_capacity(config.playback_chunk));
        Self {
            inbox,
            pending: std::collections::VecDeque::new(),
            config,
            clock,
            counters,
            load,
            slots: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            spare_audio,
            epoch,
        }
    }

    /// `deadline` rounded up to the wake-up grid (unchanged when the grid is zero or the
    /// deadline precedes the epoch, which then means "now").
    fn on_grid(&self, deadline: Instant) -> Instant {
        self.snap(deadline, u128::div_ceil)
    }

    /// `t` rounded down to the wake-up grid (unchanged when the grid is zero or `t` precedes
    /// the epoch).
    fn grid_floor(&self, t: Instant) -> Instant {
        self.snap(t, |offset, grid| offset / grid)
    }

    /// `t` on the grid, its whole ticks since the epoch counted by `ticks(offset, grid)`.
    fn snap(&self, t: Instant, ticks: fn(u128, u128) -> u128) -> Instant {
        let grid = self.config.wake_grid.as_nanos();
        let Some(offset) = t.checked_duration_since(self.epoch) else {
            return t;
        };
        if grid == 0 {
            return t;
        }
        // Saturates only beyond ~584 years of uptime.
        let nanos = u64::try_from(ticks(offset.as_nanos(), grid) * grid).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(nanos)
    }

    /// The worker's loop. **Its calls run on the grid:** a wake-up serves them at the grid tick
    /// it woke for (the clock's reading rounded down to the grid), not at the clock's reading.
    /// A pacer anchors on a tick, so every frame deadline is a tick and is released by that
    /// tick's wake-up: a call's frames keep exact 20 ms spacing whatever each wake-up's
    /// lateness. (Served at the clock's reading, a pacer anchored at `tick + lateness` has its
    /// deadlines just after a tick; a later wake-up for that tick finds them due, an earlier
    /// one does not, and the frame flips between two ticks: 1 ms interval errors.) The
    /// measurements (release lateness, barge-in latency) use the clock's reading.
    pub(super) fn run(mut self) {
        let mut woke = self.clock.now();
        loop {
            let now = self.grid_floor(woke);
            if !self.accept(now) {
                self.stop_all();
                return;
            }
            self.serve_due(now, woke);
            let earliest = self
                .heap
                .peek()
                .map_or(now + self.config.max_idle, |Reverse((t, ..))| *t)
                .min(now + self.config.max_idle);
            // Everything due by the next tick is served by that one wake-up.
            let next = self.on_grid(earliest);
            self.counters
                .wake_busy
                .record(self.clock.now().saturating_duration_since(woke));
            self.clock.sleep_until(next);
            woke = self.clock.now();
            self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
            let late = woke.saturating_duration_since(next);
            if late > LATE {
                self.counters.late_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            self.counters
                .lateness_us
                .fetch_add(late.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Takes new calls; false on shutdown. Never waits: when a sender holds the inbox, its
    /// call is taken at the next wake-up ([`Inbox`]).
    fn accept(&mut self, now: Instant) -> bool {
        self.inbox.take(&mut self.pending);
        while let Some(msg) = self.pending.pop_front() {
            match msg {
                WorkerMsg::Open(slot) => {
                    let index = match self.free.pop() {
                        Some(i) => i,
                        None => {
                            self.slots.push(None);
                            self.slots.len() - 1
                        }
                    };
                    let generation = slot.generation;
                    self.slots[index] = Some(slot);
                    self.counters.active_calls.fetch_add(1, Ordering::Relaxed);
                    self.counters.calls_started.fetch_add(1, Ordering::Relaxed);
                    self.heap.push(Reverse((now, index, generation)));
                }
                WorkerMsg::Shutdown => return false,
            }
        }
        true
    }

    fn serve_due(&mut self, now: Instant, woke: Instant) {
        while let Some(&Reverse((deadline, index, generation))) = self.heap.peek() {
            if deadline > now {
                return;
            }
            self.heap.pop();
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            if slot.service(
                now,
                woke,
                &self.config,
                &self.counters,
                &mut self.spare_audio,
            ) {
                slot.generation += 1;
                // Never again in this wake-up: a call that still says it is due (a timer its
                // own service did not consume) is served at the next tick instead of spinning
                // the worker, and every other call, until real time catches up.
                let next = slot
                    .next_deadline(now, self.config.max_idle)
                    .max(now + Duration::from_nanos(1));
                self.heap.push(Reverse((next, index, slot.generation)));
            } else {
                self.slots[index] = None;
                self.free.push(index);
                self.counters.active_calls.fetch_sub(1, Ordering::Relaxed);
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn stop_all(&mut self) {
        let now = self.clock.now();
        for slot in self.slots.iter_mut() {
            if let Some(mut s) = slot.take() {
                s.input(now, Input::Stop(now), &self.counters);
                s.end(now, &self.counters);
                self.counters.active_calls.fetch_sub(1, Ordering::Relaxed);
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
