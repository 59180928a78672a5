//! Driver tests on real threads and the real clock. They assert behaviour (what arrives, in
//! what order, that calls end cleanly), never timing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::agent::SilentAgent;
use crate::agent::echo::{EchoAgent, GREETING, GREETING_MARK};
use crate::call::PROGRESS_MARK_BASE;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<(Instant, Outbound)>>>);

impl OutboundSink for Collect {
    fn try_send(&mut self, now: Instant, msg: Outbound) -> Result<(), SinkError> {
        self.0.lock().unwrap().push((now, msg));
        Ok(())
    }
}

impl Collect {
    fn wait_for(&self, timeout: Duration, f: impl Fn(&[(Instant, Outbound)]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(&self.0.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f(&self.0.lock().unwrap())
    }
}

struct Full;

impl OutboundSink for Full {
    fn try_send(&mut self, _now: Instant, _msg: Outbound) -> Result<(), SinkError> {
        Err(SinkError::Full)
    }
}

fn engine(workers: usize) -> Engine {
    let config = EngineConfig {
        workers,
        ..EngineConfig::default()
    };
    Engine::start(config, Arc::new(SystemClock::new())).unwrap()
}

fn spec(agent: Box<dyn Agent>, sink: Box<dyn OutboundSink>) -> CallSpec {
    CallSpec {
        config: CallConfig::default(),
        info: CallInfo::default(),
        agent,
        sink,
        onset_check: None,
    }
}

#[test]
fn echo_call_plays_the_whole_greeting_in_order_then_ends_cleanly() {
    let engine = engine(1);
    let sink = Collect::default();
    let mut handle = engine
        .open_call(
            spec(Box::new(EchoAgent::default()), Box::new(sink.clone())),
            Instant::now(),
        )
        .unwrap();
    let frames = GREETING.len().div_ceil(160);
    assert!(sink.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .any(|(_, o)| matches!(o, Outbound::Mark(id) if *id == GREETING_MARK))
    }));
    {
        let msgs = sink.0.lock().unwrap();
        assert!(matches!(msgs[0].1, Outbound::Mark(m) if m.0 == PROGRESS_MARK_BASE));
        let media = msgs
            .iter()
            .filter(|(_, o)| matches!(o, Outbound::Media { .. }))
            .count();
        assert_eq!(media, frames, "every greeting frame, nothing else");
        // Frames come one per 20 ms after the lead: the greeting takes about its own length.
        let first = msgs
            .iter()
            .find(|(_, o)| matches!(o, Outbound::Media { .. }))
            .unwrap()
            .0;
        let last = msgs
            .iter()
            .rev()
            .find(|(_, o)| matches!(o, Outbound::Media { .. }))
            .unwrap()
            .0;
        let lead = CallConfig::default().pacer.lead_frames;
        assert!(
            // (`first` is stamped slightly after the anchor, hence the 2 ms allowance.)
            last - first + Duration::from_millis(2) >= FRAME_MS * (frames as u32 - 1 - lead),
            "paced, not bursted: {:?}",
            msgs.iter()
                .filter(|(_, o)| matches!(o, Outbound::Media { .. }))
                .map(|(t, _)| (*t - first).as_millis())
                .collect::<Vec<_>>()
        );
    }
    handle.send(Control::Stop(Instant::now()));
    assert!(sink.wait_for(Duration::from_secs(2), |m| {
        m.iter().any(|(_, o)| matches!(o, Outbound::Ended(_)))
    }));
    assert!(sink.wait_for(Duration::from_secs(1), |_| {
        engine.counters().active_calls.load(Ordering::Relaxed) == 0
    }));
}

const FRAME_MS: Duration = Duration::from_millis(20);

#[test]
fn media_reaches_the_call_and_is_counted_at_the_end() {
    let engine = engine(2);
    let sink = Collect::default();
    let mut handle = engine
        .open_call(
            spec(Box::new(SilentAgent), Box::new(sink.clone())),
            Instant::now(),
        )
        .unwrap();
    let start = Instant::now();
    for i in 0..25u64 {
        let media =
            InboundMedia::parse(&(i + 1).to_string(), &(i * 20).to_string(), &[0xFF; 160]).unwrap();
        assert!(handle.push_media(start + FRAME_MS * i as u32, media));
    }
    std::thread::sleep(Duration::from_millis(100));
    handle.send(Control::Stop(Instant::now()));
    assert!(sink.wait_for(Duration::from_secs(2), |m| {
        m.iter().any(|(_, o)| matches!(o, Outbound::Ended(_)))
    }));
    let msgs = sink.0.lock().unwrap();
    let Some((_, Outbound::Ended(stats))) =
        msgs.iter().find(|(_, o)| matches!(o, Outbound::Ended(_)))
    else {
        unreachable!()
    };
    assert_eq!(stats.media_in, 25);
}

#[test]
fn a_full_socket_queue_is_counted_and_never_blocks_other_calls() {
    let engine = engine(1);
    let healthy = Collect::default();
    let _slow = engine
        .open_call(
            spec(Box::new(EchoAgent::default()), Box::new(Full)),
            Instant::now(),
        )
        .unwrap();
    let _ok = engine
        .open_call(
            spec(Box::new(EchoAgent::default()), Box::new(healthy.clone())),
            Instant::now(),
        )
        .unwrap();
    let frames = GREETING.len().div_ceil(160);
    assert!(healthy.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .filter(|(_, o)| matches!(o, Outbound::Media { .. }))
            .count()
            == frames
    }));
    assert!(engine.counters().sink_full.load(Ordering::Relaxed) >= frames as u64);
}

#[test]
fn dropping_the_handle_ends_the_call() {
    let engine = engine(1);
    let sink = Collect::default();
    let handle = engine
        .open_call(
            spec(Box::new(SilentAgent), Box::new(sink.clone())),
            Instant::now(),
        )
        .unwrap();
    drop(handle);
    assert!(sink.wait_for(Duration::from_secs(2), |m| {
        m.iter().any(|(_, o)| matches!(o, Outbound::Ended(_)))
    }));
}

#[test]
fn shutdown_ends_every_call() {
    let mut engine = engine(2);
    let sinks: Vec<Collect> = (0..4).map(|_| Collect::default()).collect();
    let _handles: Vec<_> = sinks
        .iter()
        .map(|s| {
            engine
                .open_call(
                    spec(Box::new(SilentAgent), Box::new(s.clone())),
                    Instant::now(),
                )
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    engine.shutdown();
    for s in &sinks {
        assert!(
            s.0.lock()
                .unwrap()
                .iter()
                .any(|(_, o)| matches!(o, Outbound::Ended(_)))
        );
    }
    assert!(matches!(
        engine.open_call(spec(Box::new(SilentAgent), Box::new(Full)), Instant::now()),
        Err(StartError::ShuttingDown)
    ));
}

#[test]
fn engine_counters_mirror_the_calls_counters_and_time_every_released_frame() {
    let engine = engine(1);
    let sink = Collect::default();
    let mut handle = engine
        .open_call(
            spec(Box::new(EchoAgent::default()), Box::new(sink.clone())),
            Instant::now(),
        )
        .unwrap();
    let start = Instant::now();
    for i in 0..30u64 {
        let media =
            InboundMedia::parse(&(i + 1).to_string(), &(i * 20).to_string(), &[0xFF; 160]).unwrap();
        assert!(handle.push_media(start + FRAME_MS * i as u32, media));
    }
    // A duplicate of the last chunk.
    let dup = InboundMedia::parse("30", "580", &[0xFF; 160]).unwrap();
    assert!(handle.push_media(start + FRAME_MS * 30, dup));
    let frames = GREETING.len().div_ceil(160);
    assert!(sink.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .filter(|(_, o)| matches!(o, Outbound::Media { .. }))
            .count()
            == frames
    }));
    handle.send(Control::Stop(Instant::now()));
    assert!(sink.wait_for(Duration::from_secs(2), |m| {
        m.iter().any(|(_, o)| matches!(o, Outbound::Ended(_)))
    }));
    let msgs = sink.0.lock().unwrap();
    let Some((_, Outbound::Ended(stats))) =
        msgs.iter().find(|(_, o)| matches!(o, Outbound::Ended(_)))
    else {
        unreachable!()
    };
    let c = engine.counters();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(load(&c.frames_in), 30);
    assert_eq!(load(&c.frames_in), stats.media_in);
    assert_eq!(load(&c.frames_duplicate), 1);
    assert_eq!(load(&c.frames_concealed), stats.jitter.concealed);
    assert_eq!(load(&c.frames_expanded), stats.jitter.expanded);
    assert_eq!(load(&c.frames_late), stats.media_late);
    assert_eq!(load(&c.frames_out), frames as u64);
    // Every released frame was timed against its deadline.
    let lateness = c.outbound_lateness.snapshot();
    assert_eq!(lateness.count, frames as u64);
    assert_eq!(lateness.bounds, &OUTBOUND_LATENESS_BOUNDS[..]);
    // Silence from the caller: no VAD transition, no barge-in.
    assert_eq!(load(&c.speech_started), 0);
    assert_eq!(c.barge_in_latency.snapshot().count, 0);
}

/// Virtual time for a worker run on the test thread: `sleep_until` jumps to the deadline plus a
/// pseudo-random lateness (0–300 µs, as real timers show), opens the calls whose start time has
/// come, and asks the worker to stop once the run is over. A call's start also wakes the worker
/// (early, which the worker must tolerate), so each call is first served at its own phase, as
/// calls arriving from the network are.
struct VirtualClock {
    state: Mutex<VirtualState>,
}

struct VirtualState {
    now: Instant,
    end: Instant,
    rng: u64,
    /// Every sleep target, in order.
    sleeps: Vec<Instant>,
    /// Calls still to open, latest first, with when they open.
    pending: Vec<(Instant, Box<worker::Slot>)>,
    tx: Option<Arc<Inbox>>,
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        self.state.lock().unwrap().now
    }

    fn sleep_until(&self, deadline: Instant) {
        let mut s = self.state.lock().unwrap();
        s.sleeps.push(deadline);
        s.rng = s
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let late = Duration::from_micros((s.rng >> 33) % 300);
        let wake = s
            .pending
            .last()
            .map_or(deadline, |(at, _)| deadline.min(*at));
        s.now = s.now.max(wake) + late;
        let now = s.now;
        while s.pending.last().is_some_and(|(at, _)| *at <= now) {
            let (_, slot) = s.pending.pop().unwrap();
            s.tx.as_ref().unwrap().send(WorkerMsg::Open(slot));
        }
        if now >= s.end
            && let Some(tx) = s.tx.take()
        {
            tx.send(WorkerMsg::Shutdown);
        }
    }
}

/// A sink that stamps each message with the virtual clock's reading: when it physically left.
struct VirtualSink {
    clock: Arc<VirtualClock>,
    log: Arc<Mutex<Vec<(Instant, Outbound)>>>,
}

impl OutboundSink for VirtualSink {
    fn try_send(&mut self, now: Instant, msg: Outbound) -> Result<(), SinkError> {
        let left = self.clock.now();
        assert!(now <= left, "the worker's time is never ahead of the clock");
        self.log.lock().unwrap().push((left, msg));
        Ok(())
    }
}

/// Per call, each media frame's (release time, pacer deadline).
type Released = Vec<Vec<(Instant, Instant)>>;

/// Runs `calls` echo calls starting 0.37 ms apart (phases spread over the 20 ms cycle) on one
/// worker for `run` of virtual time; returns the sleep targets and, per call, each media
/// frame's (release time, pacer deadline).
fn run_virtual(
    calls: usize,
    run: Duration,
    wake_grid: Duration,
) -> (Vec<Instant>, Released, Arc<EngineCounters>) {
    let t0 = Instant::now();
    let config = EngineConfig {
        workers: 1,
        wake_grid,
        ..EngineConfig::default()
    };
    let tx = Arc::new(Inbox::default());
    let rx = Arc::clone(&tx);
    let clock = Arc::new(VirtualClock {
        state: Mutex::new(VirtualState {
            now: t0,
            end: t0 + run,
            rng: 7,
            sleeps: Vec::new(),
            pending: Vec::new(),
            tx: Some(tx),
        }),
    });
    let counters = Arc::new(EngineCounters::default());
    let worker = worker::Worker::new(
        rx,
        config.clone(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&counters),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut logs = Vec::new();
    let mut controls = Vec::new();
    let mut pending = Vec::new();
    for i in 0..calls {
        let at = t0 + Duration::from_micros(370 * i as u64 + 1);
        let call = crate::call::Call::new(&CallConfig::default(), at).unwrap();
        let (_producer, consumer) = HeapRb::<InboundItem>::new(4).split();
        let (control_tx, control_rx) = HeapRb::<Control>::new(4).split();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = VirtualSink {
            clock: Arc::clone(&clock),
            log: Arc::clone(&log),
        };
        let spec = spec(Box::new(EchoAgent::default()), Box::new(sink));
        pending.push((
            at,
            Box::new(worker::Slot::new(call, spec, consumer, control_rx, at)),
        ));
        logs.push(log);
        controls.push(control_tx);
    }
    pending.reverse();
    clock.state.lock().unwrap().pending = pending;
    worker.run();
    drop(controls);
    let media = logs
        .iter()
        .map(|log| {
            log.lock()
                .unwrap()
                .iter()
                .filter_map(|(t, o)| match o {
                    Outbound::Media { due, .. } => Some((*t, *due)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let sleeps = clock.state.lock().unwrap().sleeps.clone();
    (sleeps, media, counters)
}

/// Checks every call's greeting frames against the pacer's schedule: frame `n` is due at
/// `first + (n − lead)·20 ms`, as the frame itself says, and must never leave before that, nor
/// more than `slack` after.
fn assert_paced(media: &Released, slack: Duration) {
    let lead = CallConfig::default().pacer.lead_frames as usize;
    for (call, times) in media.iter().enumerate() {
        assert!(
            times.len() > 20,
            "call {call} sent only {} frames",
            times.len()
        );
        let first = times[lead].1;
        for (n, (t, said)) in times.iter().enumerate().skip(lead + 1) {
            let due = first + FRAME_MS * (n - lead) as u32;
            assert_eq!(
                *said, due,
                "call {call} frame {n} is off the 20 ms schedule"
            );
            assert!(*t >= due, "call {call} frame {n} left {:?} early", due - *t);
            assert!(
                *t - due <= slack,
                "call {call} frame {n} left {:?} late",
                *t - due
            );
        }
    }
}

#[test]
fn wake_ups_are_bounded_by_the_grid_however_many_calls_and_no_frame_leaves_early() {
    let run = Duration::from_secs(2);
    let grid = Duration::from_millis(1);
    let (sleeps, media, counters) = run_virtual(200, run, grid);
    assert_eq!(
        counters.wakeups.load(Ordering::Relaxed),
        sleeps.len() as u64
    );
    // Once every call runs (the last starts at 74 ms), 200 calls with spread phases would need
    // ~50 wake-ups per call per second without coalescing (about 18,000 here); on a 1 ms grid
    // there is at most one per tick.
    let steady = sleeps[0] + Duration::from_millis(100);
    let wakes = sleeps.iter().filter(|t| **t >= steady).count();
    let ticks = ((run - Duration::from_millis(100)).as_millis() / grid.as_millis()) as usize;
    assert!(wakes <= ticks + 2, "{wakes} wake-ups in {ticks} ticks");
    // Every sleep target is on the grid.
    for pair in sleeps.windows(2) {
        let step = pair[1].saturating_duration_since(pair[0]);
        assert_eq!(
            step.as_nanos() % grid.as_nanos(),
            0,
            "off-grid step {step:?}"
        );
    }
    // Each frame leaves at or after its deadline, within the wake-up's own lateness (< 300 µs
    // here): the deadlines are ticks, so none waits for the next tick whichever way the
    // lateness of its tick's wake-up falls.
    assert_paced(&media, Duration::from_micros(300));
}

#[test]
fn without_a_grid_each_deadline_gets_its_own_wake_up() {
    // The contrast that shows what the grid saves, on the same calls.
    let run = Duration::from_secs(1);
    let (sleeps, media, _) = run_virtual(50, run, Duration::ZERO);
    let steady = sleeps[0] + Duration::from_millis(100);
    let wakes = sleeps.iter().filter(|t| **t >= steady).count();
    // 50 calls × 50 frames per second over 0.9 s: each frame deadline is its own wake-up.
    assert!(
        wakes > 2_000,
        "only {wakes} wake-ups for 50 calls with spread phases"
    );
    assert_paced(&media, Duration::from_micros(300));
}

#[test]
fn a_wake_grid_that_does_not_divide_the_frame_is_refused() {
    for grid in [Duration::from_millis(3), Duration::from_millis(20)] {
        let config = EngineConfig {
            workers: 1,
            wake_grid: grid,
            ..EngineConfig::default()
        };
        assert!(matches!(
            Engine::start(config, Arc::new(SystemClock::new())),
            Err(StartError::Config(_))
        ));
    }
}

#[test]
fn a_full_inbound_ring_refuses_the_newest_frames_and_counts_them() {
    use ringbuf::traits::Consumer as _;
    let capacity = EngineConfig::default().inbound_ring_frames;
    let (producer, mut consumer) = HeapRb::<InboundItem>::new(capacity).split();
    let (control, _control_rx) = HeapRb::<Control>::new(4).split();
    let mut handle = CallHandle {
        inbound: producer,
        control,
        inbound_dropped: 0,
        control_dropped: 0,
    };
    let start = Instant::now();
    let frame = |i: u64| {
        InboundMedia::parse(&(i + 1).to_string(), &(i * 20).to_string(), &[0xFF; 160]).unwrap()
    };
    // A stall's backlog arriving at once, with nothing draining the ring.
    let burst = capacity as u64 + 5;
    let accepted = (0..burst)
        .filter(|&i| handle.push_media(start + FRAME_MS * i as u32, frame(i)))
        .count();
    assert_eq!(accepted, capacity);
    assert_eq!(handle.inbound_dropped(), 5);
    // The oldest stay, in order; once the worker takes one, there is room again.
    let (_, first) = consumer.try_pop().unwrap();
    assert_eq!(first.chunk, 1);
    assert!(handle.push_media(start, frame(burst)));
    assert_eq!(handle.inbound_dropped(), 5);
    let chunks: Vec<u64> =
        std::iter::from_fn(|| consumer.try_pop().map(|(_, m)| m.chunk)).collect();
    let expected: Vec<u64> = (2..=capacity as u64).chain([burst + 1]).collect();
    assert_eq!(chunks, expected);
}

#[test]
fn realtime_priority_is_applied_or_refused_with_the_os_reason() {
    use thread_priority::{RealtimeThreadSchedulePolicy, ThreadSchedulePolicy};
    // On a fresh thread, so the test runner's threads keep their scheduling.
    let (outcome, policy) = std::thread::spawn(|| {
        let outcome = realtime(7);
        let policy =
            thread_priority::thread_schedule_policy_param(thread_priority::thread_native_id())
                .unwrap();
        (outcome, policy)
    })
    .join()
    .unwrap();
    match outcome {
        Ok(()) => {
            assert_eq!(
                policy.0,
                ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo)
            );
            assert_eq!(policy.1.sched_priority, 7);
        }
        Err(reason) => {
            // Refused (no CAP_SYS_NICE here): the thread kept its scheduler, and the reason
            // is the OS's.
            assert!(!matches!(policy.0, ThreadSchedulePolicy::Realtime(_)));
            assert!(reason.contains("os error"), "{reason}");
        }
    }
}

#[test]
fn realtime_priority_out_of_range_is_refused_at_start() {
    for priority in [0, 100] {
        let config = EngineConfig {
            workers: 1,
            realtime_priority: Some(priority),
            ..EngineConfig::default()
        };
        let err = Engine::start(config, Arc::new(SystemClock::new())).unwrap_err();
        assert!(matches!(err, StartError::Config(_)), "{err}");
    }
}

#[test]
fn the_engine_reports_how_its_workers_are_scheduled() {
    assert_eq!(*engine(1).scheduling(), Scheduling::Normal);
    let config = EngineConfig {
        workers: 2,
        realtime_priority: Some(3),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, Arc::new(SystemClock::new())).unwrap();
    // Same answer as asking the OS directly from a thread of our own.
    let direct = std::thread::spawn(|| realtime(3)).join().unwrap();
    match (engine.scheduling(), direct) {
        (Scheduling::Realtime(3), Ok(())) => {}
        (Scheduling::Refused(3, reason), Err(direct)) => assert_eq!(*reason, direct),
        (got, direct) => panic!("engine says {got:?}, the OS says {direct:?}"),
    }
}

#[test]
fn a_cpu_latency_request_is_held_while_the_engine_runs_or_refused_with_the_reason() {
    assert_eq!(*engine(1).cpu_latency(), CpuLatency::Default);
    let config = EngineConfig {
        workers: 1,
        cpu_wake_latency: Some(Duration::from_micros(50)),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, Arc::new(SystemClock::new())).unwrap();
    match engine.cpu_latency() {
        CpuLatency::Held(latency) => {
            assert_eq!(*latency, Duration::from_micros(50));
            // The kernel counts the request; it is the strictest one here unless another
            // process holds a stricter one.
            let value = std::fs::read_to_string("/sys/kernel/debug/pm_qos/cpu_dma_latency")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(value) = value {
                assert!(value <= 50, "{value}");
            }
        }
        CpuLatency::Refused(latency, reason) => {
            assert_eq!(*latency, Duration::from_micros(50));
            assert!(reason.contains(CPU_DMA_LATENCY), "{reason}");
        }
        CpuLatency::Default => panic!("a request was asked for"),
    }
}

/// An agent whose timer is always due and never consumed (a component bug): it counts how
/// often it was asked.
struct AlwaysDue(Arc<AtomicU64>);

impl Agent for AlwaysDue {
    fn poll_timeout(&self) -> Option<Instant> {
        Some(Instant::now() - Duration::from_secs(1))
    }

    fn on_timeout(&mut self, _now: Instant, _out: &mut crate::agent::AgentOutput) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_call_that_stays_due_is_served_once_per_wake_up_and_cannot_spin_the_worker() {
    let engine = engine(1);
    let timeouts = Arc::new(AtomicU64::new(0));
    let sink = Collect::default();
    let mut handle = engine
        .open_call(
            spec(
                Box::new(AlwaysDue(Arc::clone(&timeouts))),
                Box::new(sink.clone()),
            ),
            Instant::now(),
        )
        .unwrap();
    // A second call on the same worker still gets its greeting paced out.
    let greeted = Collect::default();
    let _other = engine
        .open_call(
            spec(Box::new(EchoAgent::default()), Box::new(greeted.clone())),
            Instant::now(),
        )
        .unwrap();
    assert!(greeted.wait_for(Duration::from_secs(5), |log| {
        log.iter()
            .filter(|(_, o)| matches!(o, Outbound::Media { .. }))
            .count()
            >= 20
    }));
    handle.send(Control::Stop(Instant::now()));
    // Each wake-up served the call at most once (plus its first service on arrival).
    let wakeups = engine.counters().wakeups.load(Ordering::Relaxed);
    let served = timeouts.load(Ordering::Relaxed);
    assert!(
        served <= wakeups + 2,
        "{served} timeouts in {wakeups} wake-ups"
    );
}
