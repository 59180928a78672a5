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
    fn try_send(&mut self, msg: Outbound) -> Result<(), SinkError> {
        self.0.lock().unwrap().push((Instant::now(), msg));
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
    fn try_send(&mut self, _msg: Outbound) -> Result<(), SinkError> {
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
            .filter(|(_, o)| matches!(o, Outbound::Media(_)))
            .count();
        assert_eq!(media, frames, "every greeting frame, nothing else");
        // Frames come one per 20 ms after the lead: the greeting takes about its own length.
        let first = msgs
            .iter()
            .find(|(_, o)| matches!(o, Outbound::Media(_)))
            .unwrap()
            .0;
        let last = msgs
            .iter()
            .rev()
            .find(|(_, o)| matches!(o, Outbound::Media(_)))
            .unwrap()
            .0;
        let lead = CallConfig::default().pacer.lead_frames;
        assert!(
            // (`first` is stamped slightly after the anchor, hence the 2 ms allowance.)
            last - first + Duration::from_millis(2) >= FRAME_MS * (frames as u32 - 1 - lead),
            "paced, not bursted: {:?}",
            msgs.iter()
                .filter(|(_, o)| matches!(o, Outbound::Media(_)))
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
    handle.send(Control::MediaRejected(start, MediaError::BadChunk));
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
    assert_eq!(stats.media_bad_number, 1);
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
            .filter(|(_, o)| matches!(o, Outbound::Media(_)))
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
    // A duplicate of the last chunk, and one message the shell rejected.
    let dup = InboundMedia::parse("30", "580", &[0xFF; 160]).unwrap();
    assert!(handle.push_media(start + FRAME_MS * 30, dup));
    handle.send(Control::MediaRejected(start, MediaError::Encoding));
    let frames = GREETING.len().div_ceil(160);
    assert!(sink.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .filter(|(_, o)| matches!(o, Outbound::Media(_)))
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
    assert_eq!(load(&c.media_rejected), 1);
    assert_eq!(load(&c.frames_concealed), stats.jitter.concealed);
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
