//! One engine worker thread: a set of calls, a deadline heap, and an absolute-deadline sleep.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use ringbuf::traits::Consumer;

use super::{
    CallSpec, Clock, Control, EngineConfig, EngineCounters, InboundItem, Outbound, OutboundSink,
    SinkError, WorkerMsg,
};
use crate::agent::{Agent, AgentCommand, AgentOutput, CallInfo};
use crate::call::{Call, CallEvent, Input, Output};

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
    control: Receiver<Control>,
    /// Commands the agent is writing now, and the ones being applied (swapped, never reallocated).
    out: AgentOutput,
    applying: AgentOutput,
    started: bool,
    /// The sink reported the writer gone.
    sink_closed: bool,
    /// Bumped whenever the slot's heap entry is replaced, to skip stale entries.
    generation: u64,
}

impl Slot {
    pub(super) fn new(
        call: Call,
        spec: CallSpec,
        inbound: ringbuf::HeapCons<InboundItem>,
        control: Receiver<Control>,
    ) -> Self {
        Self {
            call,
            info: spec.info,
            agent: spec.agent,
            sink: spec.sink,
            inbound,
            control,
            out: AgentOutput::with_capacity(4_000),
            applying: AgentOutput::with_capacity(4_000),
            started: false,
            sink_closed: false,
            generation: 0,
        }
    }

    /// Serves the call at `now`: control, media, timers, agent. Returns false once it ended.
    fn service(&mut self, now: Instant, config: &EngineConfig, counters: &EngineCounters) -> bool {
        if !self.started {
            self.started = true;
            self.agent.on_start(now, &self.info, &mut self.out);
            self.apply_agent(now, counters);
        }
        loop {
            match self.control.try_recv() {
                Ok(control) => {
                    let input = match control {
                        Control::Dtmf(t, digit) => Input::Dtmf(t, digit),
                        Control::MarkEcho(t, mark) => Input::MarkEcho(t, mark),
                        Control::MediaRejected(t, error) => Input::MediaRejected(t, error),
                        Control::Stop(t) => Input::Stop(t),
                    };
                    self.input(now, input, counters);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.input(now, Input::Stop(now), counters);
                    break;
                }
            }
            if self.call.is_stopped() {
                break;
            }
        }
        while !self.call.is_stopped() {
            let Some((at, media)) = self.inbound.try_pop() else {
                break;
            };
            self.input(now, Input::Media(at, media), counters);
        }
        if self.call.is_stopped() {
            self.end();
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
        !self.sink_closed
    }

    /// Hands the timeline (if traced) and the final counters to the socket writer.
    fn end(&mut self) {
        if let Some(trace) = self.call.take_trace() {
            let _ = self.sink.try_send(Outbound::Trace(Box::new(trace)));
        }
        let stats = self.call.stats();
        let _ = self.sink.try_send(Outbound::Ended(Box::new(stats)));
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
                Output::Clear => self.send(Outbound::Clear, counters),
                Output::Event(event) => {
                    self.agent.on_event(now, &event, &mut self.out);
                    if !matches!(event, CallEvent::Stopped) {
                        self.send(Outbound::Event(event), counters);
                    }
                }
                Output::Mark(mark) => self.send(Outbound::Mark(mark), counters),
                Output::Transmit(frame) => {
                    counters.frames_out.fetch_add(1, Ordering::Relaxed);
                    self.send(Outbound::Media(frame), counters);
                }
            }
        }
    }

    fn send(&mut self, msg: Outbound, counters: &EngineCounters) {
        match self.sink.try_send(msg) {
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
                        self.send(Outbound::Hangup(reason), counters);
                        continue;
                    }
                    AgentCommand::Mark(mark) => {
                        let _ = self.call.handle_input(Input::AgentMark(now, mark));
                    }
                }
                self.drain(now, counters);
            }
            self.applying.reset();
        }
    }
}

/// The thread's state.
pub(super) struct Worker {
    rx: Receiver<WorkerMsg>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    counters: Arc<EngineCounters>,
    load: Arc<AtomicUsize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// (deadline, slot index, slot generation), earliest first.
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Worker {
    pub(super) fn new(
        rx: Receiver<WorkerMsg>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        counters: Arc<EngineCounters>,
        load: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            rx,
            config,
            clock,
            counters,
            load,
            slots: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let now = self.clock.now();
            if !self.accept(now) {
                self.stop_all();
                return;
            }
            self.serve_due(now);
            let next = self
                .heap
                .peek()
                .map_or(now + self.config.max_idle, |Reverse((t, ..))| *t)
                .min(now + self.config.max_idle);
            self.clock.sleep_until(next);
            let woke = self.clock.now();
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

    /// Takes new calls; false on shutdown.
    fn accept(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(WorkerMsg::Open(slot)) => {
                    let index = match self.free.pop() {
                        Some(i) => i,
                        None => {
                            self.slots.push(None);
                            self.slots.len() - 1
                        }
                    };
                    let generation = slot.generation;
                    self.slots[index] = Some(*slot);
                    self.counters.active_calls.fetch_add(1, Ordering::Relaxed);
                    self.counters.calls_started.fetch_add(1, Ordering::Relaxed);
                    self.heap.push(Reverse((now, index, generation)));
                }
                Ok(WorkerMsg::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn serve_due(&mut self, now: Instant) {
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
            if slot.service(now, &self.config, &self.counters) {
                slot.generation += 1;
                let next = slot.next_deadline(now, self.config.max_idle);
                self.heap
                    .push(Reverse((next.max(now), index, slot.generation)));
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
                s.end();
                self.counters.active_calls.fetch_sub(1, Ordering::Relaxed);
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
