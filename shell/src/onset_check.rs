//! The second stage on barge-in ([`OnsetCheck`]): Silero VAD v6 on the onsets that would cut
//! the agent off, on a thread of its own.
//!
//! The engine's VAD decides every frame in about a microsecond; Silero costs about 60 µs per
//! 32 ms chunk and is much harder to fool with music, so it runs only where a decision matters:
//! from a speech onset during agent playback (and, to dismiss what was never speech, from any
//! utterance's start outside it) until it confirms speech or the utterance ends.
//! Each call gets a [`SileroCheck`] handle. Its methods, called on the engine's worker thread,
//! only push onto the call's own single-producer ring, wake the checker thread, and read one
//! atomic: no lock and no wait (a shared channel's send can take a lock or spin behind a receiver
//! in mid-read, which a real-time worker must never do). The checker thread takes every call's
//! messages, runs the model and publishes the verdict. A full ring refuses the message, and the
//! engine then barges in unchecked (outside playback: lets the utterance end as speech).
//!
//! The model is `silero_vad_op18_ifless.onnx` from the `silero-vad` 6.2.3 wheel (MIT,
//! `shell/models/LICENSE-silero-vad`), compiled into the binary and run through tract with the
//! sample rate fixed at 8 kHz, fed as the package's own `OnnxWrapper` feeds it: 256-sample
//! chunks, each preceded by the last 32 samples of the one before, the recurrent state carried
//! over, both zero when a candidate starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handset_engine::call::OnsetCheck;
use handset_engine::{MulawFrame, PcmFrame, codec};
use parking_lot::Mutex;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use tract_onnx::prelude::*;

/// The bundled model (2.8 MB).
const MODEL: &[u8] = include_bytes!("../models/silero_vad_op18_ifless.onnx");
/// Samples per model call at 8 kHz.
const CHUNK: usize = 256;
/// Samples of the previous chunk prepended to each call.
const CONTEXT: usize = 32;
/// Speech probability that confirms an onset (the silero-vad package's default threshold).
pub const THRESHOLD: f32 = 0.5;
/// Messages a call can have queued for the checker (about 6 KB): a candidate's pre-roll and
/// then 460 ms of frames the checker has not yet taken.
const CALL_QUEUE: usize = 32;
/// How long the checker sleeps when nothing wakes it (new calls are picked up at the latest
/// then, or with the first message of any call).
const IDLE: Duration = Duration::from_millis(100);

/// Silero VAD, loaded and optimised for 8 kHz, with one run state (one thread's worth).
pub struct Silero {
    state: TypedSimpleState,
}

impl Silero {
    /// Loads the bundled model (about 30 ms).
    pub fn load() -> anyhow::Result<Self> {
        let mut model = onnx().model_for_read(&mut &MODEL[..])?;
        let names: Vec<String> = model
            .input_outlets()?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let index = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| anyhow::anyhow!("the model has no input {name}"))
        };
        let (input, state, sr) = (index("input")?, index("state")?, index("sr")?);
        // The model's branches are written for a symbolic batch; it becomes 1 once typed.
        let batch = model.symbols.sym("batch");
        model.set_input_fact(
            input,
            f32::fact([batch.to_dim(), ((CONTEXT + CHUNK) as i64).into()]).into(),
        )?;
        model.set_input_fact(
            state,
            f32::fact([2.into(), batch.to_dim(), 128.into()]).into(),
        )?;
        // The sample rate becomes a constant, so tract folds the model's 8/16 kHz switch away
        // (left an input, the switch is re-planned on every call: 20 times slower).
        let sr_outlet = model.input_outlets()?[sr];
        let users = model.outlet_successors(sr_outlet).to_vec();
        let constant = model.add_const("sr_8000", tensor0(8000i64))?;
        for user in users {
            model.add_edge(constant, user)?;
        }
        let inputs: Vec<OutletId> = model
            .input_outlets()?
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != sr)
            .map(|(_, o)| *o)
            .collect();
        anyhow::ensure!(
            input < state,
            "the model's inputs are not in the expected order: {names:?}"
        );
        model.set_input_outlets(&inputs)?;
        let plan = model
            .into_typed()?
            .set_symbols(&[(batch, 1.to_dim())].into_iter().collect())?
            .into_optimized()?
            .into_runnable()?;
        Ok(Self {
            state: plan.spawn()?,
        })
    }

    /// Feeds one 20 ms frame of `session`'s audio; returns the speech probability of the chunk
    /// it completes, if it completes one.
    pub fn push(&mut self, session: &mut Session, frame: &PcmFrame) -> anyhow::Result<Option<f32>> {
        let mut probability = None;
        for &sample in &frame.0 {
            session.input[CONTEXT + session.len] = f32::from(sample) / 32768.0;
            session.len += 1;
            if session.len == CHUNK {
                probability = Some(self.run(session)?);
                session.len = 0;
            }
        }
        Ok(probability)
    }

    fn run(&mut self, session: &mut Session) -> anyhow::Result<f32> {
        let input = Tensor::from_shape(&[1, CONTEXT + CHUNK], &session.input[..])?;
        let state = Tensor::from_shape(&[2, 1, 128], &session.state[..])?;
        let out = self
            .state
            .run(tvec![input.into_tvalue(), state.into_tvalue()])?;
        let probability = out[0].try_as_plain_ram()?.as_slice::<f32>()?[0];
        session
            .state
            .copy_from_slice(out[1].try_as_plain_ram()?.as_slice::<f32>()?);
        session.input.copy_within(CHUNK.., 0);
        Ok(probability)
    }
}

/// One candidate's model state: the recurrent state, the context and the samples gathered
/// toward the next chunk. New sessions start from zero, as the silero-vad package does.
pub struct Session {
    state: Box<[f32; 256]>,
    /// The previous chunk's last [`CONTEXT`] samples, then the chunk being gathered.
    input: Box<[f32; CONTEXT + CHUNK]>,
    /// Samples of the chunk gathered.
    len: usize,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            state: Box::new([0.0; 256]),
            input: Box::new([0.0; CONTEXT + CHUNK]),
            len: 0,
        }
    }
}

/// What the checker thread counts.
#[derive(Debug, Default)]
pub struct CheckerCounters {
    /// Model runs (32 ms chunks).
    pub chunks: AtomicU64,
    /// Model runs that failed (the candidate is then confirmed: a failure never blocks a
    /// barge-in).
    pub errors: AtomicU64,
}

/// A message from a call to the checker.
#[derive(Debug)]
enum Msg {
    Begin { candidate: u64 },
    Frame { candidate: u64, frame: MulawFrame },
    End,
}

/// A call as the checker sees it.
struct Registered {
    rx: HeapCons<Msg>,
    /// Where the verdict goes: the call's [`SileroCheck::verdict`].
    verdict: Arc<AtomicU64>,
    /// The open candidate and its model state.
    open: Option<(u64, Session)>,
}

/// The checker thread and the way to it. Dropping it ends the thread once every call's handle
/// is gone.
pub struct Checker {
    thread: std::thread::Thread,
    /// Calls registered since the checker last looked.
    new_calls: Arc<Mutex<Vec<Registered>>>,
    counters: Arc<CheckerCounters>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// Loads the model and starts the checker thread.
    pub fn start() -> anyhow::Result<Self> {
        let silero = Silero::load()?;
        let new_calls = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(CheckerCounters::default());
        let (thread_calls, thread_counters) = (new_calls.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("handset-onset-check".into())
            .spawn(move || run(silero, &thread_calls, &thread_counters))?
            .thread()
            .clone();
        Ok(Self {
            thread,
            new_calls,
            counters,
        })
    }

    /// A handle for one call (made on the shell's side, before the call reaches the engine).
    pub fn handle(&self) -> SileroCheck {
        let (tx, rx) = HeapRb::<Msg>::new(CALL_QUEUE).split();
        let verdict = Arc::new(AtomicU64::new(0));
        self.new_calls.lock().push(Registered {
            rx,
            verdict: verdict.clone(),
            open: None,
        });
        SileroCheck {
            tx,
            checker: self.thread.clone(),
            candidate: 0,
            verdict,
        }
    }

    /// The checker's counters.
    pub fn counters(&self) -> &Arc<CheckerCounters> {
        &self.counters
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.thread.unpark();
    }
}

/// The checker thread: takes every call's messages, runs the model for open candidates, and
/// sleeps until a call wakes it. It ends when the [`Checker`] and every call are gone.
fn run(mut silero: Silero, new_calls: &Arc<Mutex<Vec<Registered>>>, counters: &CheckerCounters) {
    let mut calls: Vec<Registered> = Vec::new();
    loop {
        calls.append(&mut new_calls.lock());
        // A call whose handle is gone and whose messages are all taken is over.
        calls.retain(|c| c.rx.write_is_held() || !c.rx.is_empty());
        if calls.is_empty() && Arc::strong_count(new_calls) == 1 {
            return;
        }
        for call in &mut calls {
            while let Some(msg) = call.rx.try_pop() {
                take(&mut silero, call, msg, counters);
            }
        }
        std::thread::park_timeout(IDLE);
    }
}

/// One message of `call`.
fn take(silero: &mut Silero, call: &mut Registered, msg: Msg, counters: &CheckerCounters) {
    match msg {
        Msg::Begin { candidate } => call.open = Some((candidate, Session::default())),
        Msg::End => call.open = None,
        Msg::Frame { candidate, frame } => {
            let Some((open, session)) = call.open.as_mut() else {
                return;
            };
            if *open != candidate {
                return;
            }
            let confirmed = match silero.push(session, &codec::decode_frame(&frame)) {
                Ok(None) => false,
                Ok(Some(p)) => {
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    p >= THRESHOLD
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "onset check failed; the onset barges in");
                    true
                }
            };
            if confirmed {
                call.verdict.store(candidate, Ordering::Release);
                call.open = None;
            }
        }
    }
}

/// One call's way to the checker: a single-producer ring only this call writes, and the
/// checker's thread handle to wake it. Nothing here locks or waits.
pub struct SileroCheck {
    tx: HeapProd<Msg>,
    checker: std::thread::Thread,
    /// The current candidate's number (from 1); 0 before the first.
    candidate: u64,
    /// The newest candidate the checker confirmed.
    verdict: Arc<AtomicU64>,
}

impl SileroCheck {
    fn send(&mut self, msg: Msg) -> bool {
        let sent = self.tx.try_push(msg).is_ok();
        if sent {
            self.checker.unpark();
        }
        sent
    }
}

impl OnsetCheck for SileroCheck {
    fn begin(&mut self) -> bool {
        self.candidate += 1;
        let candidate = self.candidate;
        self.send(Msg::Begin { candidate })
    }

    fn push(&mut self, frame: &MulawFrame) -> bool {
        let candidate = self.candidate;
        self.send(Msg::Frame {
            candidate,
            frame: *frame,
        })
    }

    fn confirmed(&mut self) -> bool {
        self.candidate != 0 && self.verdict.load(Ordering::Acquire) == self.candidate
    }

    fn end(&mut self) {
        // A lost `End` (full ring) is harmless: the next `Begin` replaces the session, frames
        // of an older candidate are ignored, and the session goes with the call.
        let _ = self.send(Msg::End);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Hello world" (Allison Smith, Asterisk core sounds), 8 kHz µ-law: `tests/data`.
    const HELLO: &[u8] = include_bytes!("../../tests/data/hello-world.ulaw");

    fn frames(ulaw: &[u8]) -> Vec<PcmFrame> {
        ulaw.chunks_exact(160)
            .map(|c| codec::decode_frame(&MulawFrame(c.try_into().unwrap())))
            .collect()
    }

    fn max_probability(silero: &mut Silero, frames: &[PcmFrame]) -> f32 {
        let mut session = Session::default();
        frames
            .iter()
            .filter_map(|f| silero.push(&mut session, f).unwrap())
            .fold(0.0, f32::max)
    }

    #[test]
    fn speech_is_confirmed_and_silence_and_a_tone_are_not() {
        let mut silero = Silero::load().unwrap();
        assert!(max_probability(&mut silero, &frames(HELLO)) > 0.9);
        assert!(max_probability(&mut silero, &[PcmFrame::SILENCE; 50]) < 0.1);
        let tone: Vec<PcmFrame> = (0..50)
            .map(|f| {
                let mut frame = PcmFrame::SILENCE;
                for (i, s) in frame.0.iter_mut().enumerate() {
                    let t = (f * 160 + i) as f32 / 8000.0;
                    *s = (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
                }
                frame
            })
            .collect();
        assert!(max_probability(&mut silero, &tone) < THRESHOLD);
    }

    // The test waits for the checker thread's verdict.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn the_checker_confirms_a_candidate_of_speech_and_only_that_candidate() {
        let checker = Checker::start().unwrap();
        let mut check = checker.handle();
        assert!(!check.confirmed());
        assert!(check.begin());
        let step = Duration::from_millis(10);
        let deadline = Duration::from_secs(30);
        for chunk in HELLO.chunks_exact(160) {
            // A full ring refuses a frame; the checker takes them as it runs.
            let frame = MulawFrame(chunk.try_into().unwrap());
            let mut waited = Duration::ZERO;
            while !check.push(&frame) && waited < deadline {
                std::thread::sleep(step);
                waited += step;
            }
        }
        let mut waited = Duration::ZERO;
        while !check.confirmed() && waited < deadline {
            std::thread::sleep(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        }
        assert!(check.confirmed(), "hello-world confirmed");
        check.end();
        // The next candidate starts unconfirmed.
        assert!(check.begin());
        assert!(!check.confirmed());
        // The first candidate is the only one the checker ever confirmed.
        assert_eq!(check.verdict.load(Ordering::Acquire), 1);
    }
}
