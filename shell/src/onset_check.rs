//! The second stage on barge-in ([`OnsetCheck`]): Silero VAD v6 on the onsets that would cut
//! the agent off, on a thread of its own.
//!
//! The engine's VAD decides every frame in about a microsecond; Silero costs about 60 µs per
//! 32 ms chunk and is much harder to fool with music, so it runs only where a decision matters:
//! from a speech onset during agent playback until it confirms speech or the utterance ends.
//! Each call gets a [`SileroCheck`] handle. Its methods, called on the engine's worker thread,
//! only queue messages on a bounded channel and read one atomic; the checker thread decodes the
//! frames, runs the model and publishes the verdict. A full queue refuses the message, and the
//! engine then barges in unchecked.
//!
//! The model is `silero_vad_op18_ifless.onnx` from the `silero-vad` 6.2.3 wheel (MIT,
//! `shell/models/LICENSE-silero-vad`), compiled into the binary and run through tract with the
//! sample rate fixed at 8 kHz, fed as the package's own `OnnxWrapper` feeds it: 256-sample
//! chunks, each preceded by the last 32 samples of the one before, the recurrent state carried
//! over, both zero when a candidate starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use handset_engine::call::OnsetCheck;
use handset_engine::{MulawFrame, PcmFrame, codec};
use tract_onnx::prelude::*;

/// The bundled model (2.8 MB).
const MODEL: &[u8] = include_bytes!("../models/silero_vad_op18_ifless.onnx");
/// Samples per model call at 8 kHz.
const CHUNK: usize = 256;
/// Samples of the previous chunk prepended to each call.
const CONTEXT: usize = 32;
/// Speech probability that confirms an onset (the silero-vad package's default threshold).
pub const THRESHOLD: f32 = 0.5;
/// Messages the checker can have queued: about 40 ms of model time at 60 µs a chunk.
const QUEUE: usize = 1024;
/// Every this many messages the checker forgets sessions that have had none of the last
/// [`STALE`] (a call whose `End` found the queue full). An open candidate gets a frame every
/// 20 ms, so at 1,000 calls holding at once it goes stale only after about a second of silence.
const PRUNE_EVERY: u64 = 4096;
const STALE: u64 = 1 << 16;

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
    /// Candidates confirmed as speech.
    pub confirmed: AtomicU64,
    /// Model runs that failed (the candidate is then confirmed: a failure never blocks a
    /// barge-in).
    pub errors: AtomicU64,
}

#[derive(Debug)]
enum Msg {
    Begin {
        call: u64,
        candidate: u64,
        verdict: Arc<AtomicU64>,
    },
    Frame {
        call: u64,
        candidate: u64,
        frame: MulawFrame,
    },
    End {
        call: u64,
    },
}

/// The checker thread and the way to it. Dropping it and every handle ends the thread.
#[derive(Debug)]
pub struct Checker {
    tx: SyncSender<Msg>,
    next_call: AtomicU64,
    counters: Arc<CheckerCounters>,
}

impl Checker {
    /// Loads the model and starts the checker thread.
    pub fn start() -> anyhow::Result<Self> {
        let silero = Silero::load()?;
        let (tx, rx) = sync_channel(QUEUE);
        let counters = Arc::new(CheckerCounters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("handset-onset-check".into())
            .spawn(move || run(silero, &rx, &thread_counters))?;
        Ok(Self {
            tx,
            next_call: AtomicU64::new(0),
            counters,
        })
    }

    /// A handle for one call.
    pub fn handle(&self) -> SileroCheck {
        SileroCheck {
            tx: self.tx.clone(),
            call: self.next_call.fetch_add(1, Ordering::Relaxed),
            candidate: 0,
            verdict: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The checker's counters.
    pub fn counters(&self) -> &Arc<CheckerCounters> {
        &self.counters
    }
}

/// The checker thread: one session per call with a candidate open.
fn run(mut silero: Silero, rx: &Receiver<Msg>, counters: &CheckerCounters) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut received: u64 = 0;
    for msg in rx {
        received += 1;
        if received.is_multiple_of(PRUNE_EVERY) {
            open.retain(|_, o| received - o.last < STALE);
        }
        match msg {
            Msg::Begin {
                call,
                candidate,
                verdict,
            } => {
                let open_candidate = Open {
                    candidate,
                    verdict,
                    session: Session::default(),
                    last: received,
                };
                open.insert(call, open_candidate);
            }
            Msg::End { call } => {
                open.remove(&call);
            }
            Msg::Frame {
                call,
                candidate,
                frame,
            } => {
                let Some(o) = open.get_mut(&call) else {
                    continue;
                };
                if o.candidate != candidate {
                    continue;
                }
                o.last = received;
                let confirmed = match silero.push(&mut o.session, &codec::decode_frame(&frame)) {
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
                    counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    o.verdict.store(candidate, Ordering::Release);
                    open.remove(&call);
                }
            }
        }
    }
}

/// A call's open candidate, on the checker thread.
struct Open {
    candidate: u64,
    /// Where the verdict goes: the call's [`SileroCheck::verdict`].
    verdict: Arc<AtomicU64>,
    session: Session,
    /// The message count when the candidate last had a message.
    last: u64,
}

/// One call's way to the checker.
pub struct SileroCheck {
    tx: SyncSender<Msg>,
    call: u64,
    /// The current candidate's number (from 1); 0 before the first.
    candidate: u64,
    /// The newest candidate the checker confirmed.
    verdict: Arc<AtomicU64>,
}

impl SileroCheck {
    fn send(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

impl OnsetCheck for SileroCheck {
    fn begin(&mut self) -> bool {
        self.candidate += 1;
        self.send(Msg::Begin {
            call: self.call,
            candidate: self.candidate,
            verdict: self.verdict.clone(),
        })
    }

    fn push(&mut self, frame: &MulawFrame) -> bool {
        self.send(Msg::Frame {
            call: self.call,
            candidate: self.candidate,
            frame: *frame,
        })
    }

    fn confirmed(&mut self) -> bool {
        self.candidate != 0 && self.verdict.load(Ordering::Acquire) == self.candidate
    }

    fn end(&mut self) {
        // A lost `End` leaves the session until the call's next candidate replaces it; the
        // checker ignores frames of a candidate it no longer has open.
        let _ = self.send(Msg::End { call: self.call });
    }
}

impl Drop for SileroCheck {
    fn drop(&mut self) {
        let _ = self.send(Msg::End { call: self.call });
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
        for chunk in HELLO.chunks_exact(160) {
            assert!(check.push(&MulawFrame(chunk.try_into().unwrap())));
        }
        let deadline = std::time::Duration::from_secs(30);
        let mut waited = std::time::Duration::ZERO;
        while !check.confirmed() && waited < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += std::time::Duration::from_millis(10);
        }
        assert!(check.confirmed(), "hello-world confirmed");
        check.end();
        // The next candidate starts unconfirmed.
        assert!(check.begin());
        assert!(!check.confirmed());
        assert_eq!(checker.counters().confirmed.load(Ordering::Relaxed), 1);
    }
}
