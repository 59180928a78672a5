//! Virtual-time harness for the call state machine (str0m's `TestRtc` + quinn's `Pair::step`).
//!
//! A [`Sim`] owns a [`Call`], a seeded model of Twilio's side (caller media arrivals with
//! impairments, and Twilio's playback buffer echoing marks), and a model of a late OS scheduler.
//! Time only moves when [`Sim::step`] jumps to the next event, so ten virtual minutes run in
//! milliseconds. Seeds are fixed; set `SIM_SEED` to rerun a failing case with another seed.

#![allow(dead_code, unreachable_pub, clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::f64::consts::TAU;
use std::time::{Duration, Instant};

use handset_engine::call::{Call, CallConfig, CallEvent, Input, Output};
use handset_engine::codec;
use handset_engine::{InboundMedia, MarkId, MulawFrame, PcmFrame, SampleRate};
use handset_sim::PlaybackModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const FRAME: Duration = Duration::from_millis(20);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The default call configuration with room to queue `seconds` of agent audio at once (the
/// tests push whole answers; the driver would hand them over a little at a time).
pub fn roomy(seconds: usize) -> CallConfig {
    let mut config = CallConfig::default();
    config.pacer.capacity_frames = seconds * 50 + 10;
    // A progress mark every 5 frames, plus room for agent marks.
    config.pacer.capacity_marks = config.pacer.capacity_frames / 5 + 16;
    config
}

/// The seed for this run: `SIM_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// How caller media reaches the engine.
#[derive(Clone, Debug, Default)]
pub struct Impair {
    /// Hold frames back and release them together every `burst` frames (TCP head-of-line).
    pub burst: u32,
    /// Extra random delay per frame, uniform in 0..=jitter (order is preserved, as over TCP).
    pub jitter: Duration,
    /// Probability a chunk number is skipped (the frame is never sent).
    pub skip: f64,
    /// Probability a frame is sent twice.
    pub duplicate: f64,
}

/// How late the driver wakes up after each deadline.
#[derive(Clone, Debug, Default)]
pub struct Lateness {
    /// Uniform lateness in 0..=max on every wake-up.
    pub max: Duration,
    /// Probability of a long stall on a wake-up.
    pub stall_probability: f64,
    /// Length of a stall.
    pub stall: Duration,
}

/// Caller signal generator: speech-like voiced audio in given intervals over a low noise floor.
#[derive(Clone, Debug, Default)]
pub struct CallerScript {
    /// Intervals (start, length) of caller speech from stream start.
    pub speech: Vec<(Duration, Duration)>,
}

impl CallerScript {
    /// Sample `n` (8 kHz) of the caller's signal.
    pub fn sample(&self, n: u64, noise: &mut ChaCha8Rng) -> i16 {
        let t = n as f64 / 8000.0;
        let floor = noise.gen_range(-20.0..20.0);
        let speaking = self.speech.iter().any(|(s, l)| {
            let s = s.as_secs_f64();
            t >= s && t < s + l.as_secs_f64()
        });
        if !speaking {
            return floor as i16;
        }
        (voiced(t) * 9000.0 + floor) as i16
    }

    /// Whether the caller is speaking at `t`.
    pub fn speaking_at(&self, t: Duration) -> bool {
        self.speech.iter().any(|(s, l)| t >= *s && t < *s + *l)
    }
}

/// A vowel-like voiced signal: harmonics of a gliding 110–150 Hz pitch shaped by two formants,
/// amplitude-modulated at a syllabic 4 Hz. Peak about ±1.
pub fn voiced(t: f64) -> f64 {
    let f0 = 130.0 + 20.0 * (TAU * 0.7 * t).sin();
    let phase = TAU * (130.0 * t - 20.0 / (TAU * 0.7) * (TAU * 0.7 * t).cos());
    let mut v = 0.0;
    for h in 1..=25 {
        let f = f0 * f64::from(h);
        if f > 3600.0 {
            break;
        }
        let formant = (-((f - 700.0) / 250.0).powi(2)).exp()
            + 0.6 * (-((f - 1200.0) / 300.0).powi(2)).exp()
            + 0.25 * (-((f - 2500.0) / 400.0).powi(2)).exp();
        v += formant * (phase * f64::from(h)).sin();
    }
    let envelope = 0.55 + 0.45 * (TAU * 4.0 * t).sin();
    (v * envelope / 1.6).clamp(-1.0, 1.0)
}

/// A test tone at `hz`, amplitude `amp` (0..1), for agent audio.
pub fn tone(rate: SampleRate, hz: f64, amp: f64, samples: usize, offset: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = (i + offset) as f64 / f64::from(rate.hz());
            ((TAU * hz * t).sin() * amp * 32767.0) as i16
        })
        .collect()
}

/// The virtual-time world around one call.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub call: Call,
    pub twilio: PlaybackModel,
    /// One-way network delay between the engine and Twilio.
    pub link_delay: Duration,
    pub impair: Impair,
    pub lateness: Lateness,
    pub script: CallerScript,
    /// The caller's line carries what Twilio played back to the engine: `delay` later, times
    /// `gain` (a speakerphone). `None`: no echo.
    pub echo: Option<(Duration, f64)>,
    rng: ChaCha8Rng,
    noise: ChaCha8Rng,
    /// Caller frames generated so far (nominal 20 ms clock).
    caller_frames: u64,
    /// Chunk numbers used so far.
    next_chunk: u64,
    /// Stop generating caller media after this time.
    pub caller_until: Duration,
    /// Frames waiting to arrive, in arrival order.
    arrivals: VecDeque<(Instant, InboundMedia)>,
    /// Messages in flight to Twilio.
    downlink: VecDeque<(Instant, ToTwilio)>,
    /// Mark echoes in flight back to the engine.
    uplink: VecDeque<(Instant, MarkId)>,
    /// Frames the engine sent, with the instant it sent them.
    pub sent: Vec<(Instant, MulawFrame)>,
    pub marks_sent: Vec<(Instant, MarkId)>,
    pub clears: Vec<Instant>,
    pub events: Vec<(Instant, CallEvent)>,
    pub caller_audio_frames: u64,
    /// Deadlines the engine asked for and when the driver actually woke.
    pub wakeups: Vec<(Instant, Instant)>,
    /// The deadline being waited for and the (late) instant the driver will wake.
    pending_wake: Option<(Instant, Instant)>,
    steps: u64,
}

#[derive(Clone, Copy, Debug)]
enum ToTwilio {
    Media(MulawFrame),
    Mark(MarkId),
    Clear,
}

impl Sim {
    pub fn new(config: CallConfig, seed: u64) -> Self {
        let start = Instant::now();
        let call = Call::new(&config, start).expect("valid config");
        Self {
            start,
            now: start,
            call,
            twilio: PlaybackModel::new(true),
            link_delay: Duration::ZERO,
            impair: Impair::default(),
            lateness: Lateness::default(),
            script: CallerScript::default(),
            echo: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            noise: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
            caller_frames: 0,
            next_chunk: 1,
            caller_until: Duration::MAX,
            arrivals: VecDeque::new(),
            downlink: VecDeque::new(),
            uplink: VecDeque::new(),
            sent: Vec::new(),
            marks_sent: Vec::new(),
            clears: Vec::new(),
            events: Vec::new(),
            caller_audio_frames: 0,
            wakeups: Vec::new(),
            pending_wake: None,
            steps: 0,
        }
    }

    /// Virtual time since the stream started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Feeds one input and drains every output into the world.
    pub fn input(&mut self, input: Input<'_>) {
        let _ = self.call.handle_input(input);
        self.drain();
    }

    /// The agent says `pcm` at `rate` now.
    pub fn agent_says(&mut self, pcm: &[i16], rate: SampleRate) {
        let now = self.now;
        self.input(Input::AgentAudio(now, pcm, rate));
    }

    /// The agent marks the end of a segment now.
    pub fn agent_mark(&mut self, id: u64) {
        let now = self.now;
        self.input(Input::AgentMark(now, MarkId(id)));
    }

    fn drain(&mut self) {
        while let Some(out) = self.call.poll_output() {
            let at = self.now + self.link_delay;
            match out {
                Output::Transmit(frame) => {
                    self.sent.push((self.now, frame));
                    self.downlink.push_back((at, ToTwilio::Media(frame)));
                }
                Output::Mark(id) => {
                    self.marks_sent.push((self.now, id));
                    self.downlink.push_back((at, ToTwilio::Mark(id)));
                }
                Output::Clear => {
                    self.clears.push(self.now);
                    self.downlink.push_back((at, ToTwilio::Clear));
                }
                Output::Event(e) => self.events.push((self.now, e)),
                Output::CallerAudio(..) => self.caller_audio_frames += 1,
            }
        }
    }

    /// Generates caller frames (nominal clock) up to `until` and schedules their arrivals.
    fn generate_caller(&mut self, until: Instant) {
        loop {
            let nominal = self.start + FRAME * (self.caller_frames as u32 + 1);
            if nominal > until || nominal - self.start > self.caller_until {
                return;
            }
            let index = self.caller_frames;
            self.caller_frames += 1;
            let mut pcm = PcmFrame::SILENCE;
            for (i, s) in pcm.0.iter_mut().enumerate() {
                let n = index * 160 + i as u64;
                *s = self.script.sample(n, &mut self.noise);
                if let Some((delay, gain)) = self.echo {
                    let captured = self.start + Duration::from_nanos(n * 125_000);
                    let back = captured
                        .checked_sub(delay)
                        .and_then(|t| self.twilio.played_at(t))
                        .map_or(0, codec::decode_sample);
                    *s = s.saturating_add((f64::from(back) * gain) as i16);
                }
            }
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            if self.impair.skip > 0.0 && self.rng.gen_bool(self.impair.skip) {
                continue;
            }
            let media = InboundMedia {
                chunk,
                timestamp_ms: index * 20,
                payload: codec::encode_frame(&pcm),
            };
            // The frame is complete at `nominal`; TCP keeps order, bursts hold frames back.
            let mut arrival = nominal;
            if !self.impair.jitter.is_zero() {
                let extra = self
                    .rng
                    .gen_range(0..=self.impair.jitter.as_micros() as u64);
                arrival += Duration::from_micros(extra);
            }
            if self.impair.burst > 1 {
                let b = u64::from(self.impair.burst);
                let release = (index / b + 1) * b;
                arrival = arrival.max(self.start + FRAME * release as u32);
            }
            if let Some((last, _)) = self.arrivals.back() {
                arrival = arrival.max(*last);
            }
            self.arrivals.push_back((arrival, media));
            if self.impair.duplicate > 0.0 && self.rng.gen_bool(self.impair.duplicate) {
                self.arrivals.push_back((arrival, media));
            }
        }
    }

    fn lateness(&mut self) -> Duration {
        let mut late = Duration::ZERO;
        if !self.lateness.max.is_zero() {
            late =
                Duration::from_micros(self.rng.gen_range(0..=self.lateness.max.as_micros() as u64));
        }
        if self.lateness.stall_probability > 0.0
            && self.rng.gen_bool(self.lateness.stall_probability)
        {
            late += self.lateness.stall;
        }
        late
    }

    /// Advances to the next event (no later than `limit`) and handles it. Returns false when
    /// `limit` was reached. The driver wakes for a deadline late by a seeded random amount.
    pub fn step(&mut self, limit: Instant) -> bool {
        // With an echo, a caller frame needs what Twilio played `delay` before it, which is
        // known only once it reached Twilio: generate just ahead of time.
        let ahead = if self.echo.is_some() { 2 } else { 10 };
        self.generate_caller(self.now + FRAME * ahead);
        let deadline = self.call.poll_timeout();
        let wake = match (deadline, self.pending_wake) {
            (None, _) => {
                self.pending_wake = None;
                None
            }
            (Some(d), Some((pending, actual))) if pending == d => Some(actual),
            (Some(d), _) => {
                let actual = d.max(self.now) + self.lateness();
                self.pending_wake = Some((d, actual));
                Some(actual)
            }
        };
        let other = [
            self.arrivals.front().map(|(t, _)| *t),
            self.downlink.front().map(|(t, _)| *t),
            self.uplink.front().map(|(t, _)| *t),
            self.twilio.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = [wake, other].into_iter().flatten().min() else {
            self.now = limit;
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = next.max(self.now);
        if wake == Some(next) && other.is_none_or(|o| o > next) {
            let (deadline, _) = self.pending_wake.take().expect("wake implies pending");
            self.wakeups.push((deadline, self.now));
            let now = self.now;
            self.input(Input::Timeout(now));
        } else {
            self.deliver();
        }
        self.steps += 1;
        assert!(self.steps < 50_000_000, "simulation does not progress");
        true
    }

    fn deliver(&mut self) {
        let now = self.now;
        while self.arrivals.front().is_some_and(|(t, _)| *t <= now) {
            let (_, media) = self.arrivals.pop_front().expect("checked");
            self.input(Input::Media(now, media));
        }
        while self.downlink.front().is_some_and(|(t, _)| *t <= now) {
            let (t, msg) = self.downlink.pop_front().expect("checked");
            match msg {
                ToTwilio::Media(frame) => self.twilio.handle_media(t, &frame.0),
                ToTwilio::Mark(id) => self.twilio.handle_mark(t, id),
                ToTwilio::Clear => self.twilio.handle_clear(t),
            }
        }
        while let Some(echo) = self.twilio.poll_echo(now) {
            self.uplink
                .push_back((echo.at + self.link_delay, echo.mark));
        }
        while self.uplink.front().is_some_and(|(t, _)| *t <= now) {
            let (_, id) = self.uplink.pop_front().expect("checked");
            self.input(Input::MarkEcho(now, id));
        }
        // A wake-up that coincides with a delivery.
        if self.call.poll_timeout().is_some_and(|t| t <= now) {
            self.input(Input::Timeout(now));
        }
    }

    /// Runs until `span` of virtual time has passed.
    pub fn run_for(&mut self, span: Duration) {
        let limit = self.now + span;
        while self.step(limit) {}
    }

    /// Runs until `f` holds or `span` passes; returns whether it held.
    pub fn run_until(&mut self, span: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let limit = self.now + span;
        while !f(self) {
            if !self.step(limit) {
                return f(self);
            }
        }
        true
    }

    /// Events of one kind, with their time since start.
    pub fn events_matching(&self, f: impl Fn(&CallEvent) -> bool) -> Vec<(Duration, CallEvent)> {
        self.events
            .iter()
            .filter(|(_, e)| f(e))
            .map(|(t, e)| (*t - self.start, *e))
            .collect()
    }
}
