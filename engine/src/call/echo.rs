//! The echo-reference check: tells a caller who starts speaking over the agent from the agent's
//! own audio coming back (a caller on speakerphone, a phone or line that returns what it plays).
//!
//! The call knows exactly what it sent and when each frame is due to play at Twilio; an echo is
//! that audio again, some hundreds of milliseconds later, filtered and quieter. So when the VAD
//! hears speech start while the agent is playing, the check correlates the caller's last
//! [`WINDOW_FRAMES`] frames with the agent's audio at every delay up to
//! [`EchoConfig::max_delay`]: normalised correlation at or above
//! [`EchoConfig::min_correlation`] at some delay means the caller's line is carrying the agent's
//! voice, not a new voice. A caller talking over the echo lowers the correlation (their voice is
//! not in the reference), so while an onset is held as echo, each new frame is checked again
//! over the last [`TRACK_FRAMES`] frames at the delay found (± [`TRACK_LAG`]); the first frame
//! the echo no longer explains is the caller's onset.
//!
//! The search runs twice: over every delay on both signals taken down to 2 kHz (the mean of
//! each 4 samples: the band below 1 kHz carries most of a voice's energy and all of its pitch;
//! about 1 M multiply-adds, vectorised), then at 8 kHz within ± 1 ms of the delay found. The
//! second pass is the verdict: at 2 kHz a delay between two samples costs a 500 Hz component up
//! to 45° of phase, which alone can take an echo's correlation below any useful threshold. It
//! runs only at an onset during playback; tracking, at 8 kHz around the delay, only while an
//! onset is held as echo. Both keep the frames as µ-law (15 KB per call) and decode what a check
//! needs onto the stack.
//!
//! Positions are 20 ms ticks of the call's clock: a sent frame at the tick Twilio plays it (its
//! release, or right after the frame before it when Twilio's buffer still holds that one), a
//! caller frame at its place on Twilio's clock (its sender slot, anchored where the first frame
//! arrived), which the jitter buffer's changes of delay never move. Both clocks run at the same
//! rate, so an echo keeps one delay on this grid. Sans-IO, allocated once per call.

use std::time::{Duration, Instant};

use crate::codec;
use crate::frame::MulawFrame;
use crate::time::{FRAME, FRAME_SAMPLES};

/// Caller frames correlated at an onset, over every delay: 400 ms. Over 100 ms, two unrelated
/// stretches of voiced speech line up at some delay by chance (normalised correlation up to 0.8
/// between different utterances of one speaker); over 400 ms, below 0.6.
const WINDOW_FRAMES: usize = 20;

/// Caller frames correlated while an onset is held as echo, at the delay found: 100 ms, so a
/// caller who starts talking over the echo lowers the correlation within a few frames.
const TRACK_FRAMES: usize = 5;

/// While an onset is held as echo, each new frame is checked within this many 8 kHz samples
/// (± 4 ms) of the delay found.
const TRACK_LAG: usize = 32;

/// The 8 kHz pass searches this many samples (± 1 ms) either side of each 2 kHz candidate.
const REFINE: usize = 8;

/// The best delays at 2 kHz refined at 8 kHz.
const CANDIDATES: usize = 4;

/// The longest delay [`EchoConfig::max_delay`] allows (800 ms), 8 kHz samples.
const MAX_LAG_LIMIT: usize = 6_400;

/// Sent frames remembered: the longest delay, the window and Twilio's buffer (1.28 s).
const SENT_FRAMES: usize = 64;

/// Caller frames remembered.
const HEARD_FRAMES: usize = 32;

/// Lanes of the dot products (written so the compiler vectorises them).
const LANES: usize = 8;

/// Mean square (of samples scaled to ±1) below which a stretch counts as silent: −80 dBFS. The
/// first frames of an echo can be as quiet as −55 dBFS within a window of line noise.
const SILENT: f32 = 1e-8;

/// What the caller's latest frames are, while an onset is held as echo.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Track {
    /// Still the agent's echo.
    Echo,
    /// Not explained by the agent's audio (the caller over the echo, or the agent fell silent).
    Caller,
    /// The caller's line is silent: nothing to tell.
    Quiet,
}

/// What one correlation found.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Correlation {
    /// The caller's window is silent.
    CallerSilent,
    /// The agent was silent at every delay searched.
    AgentSilent,
    /// The highest normalised correlation and its delay (2 kHz samples).
    Best(f32, usize),
}

/// Tuning of the echo-reference check. Plain data; validated by [`EchoConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EchoConfig {
    /// Whether a speech onset during agent playback is checked against the agent's audio.
    pub enabled: bool,
    /// Longest echo delay searched, from when a frame is due to play at Twilio to when its
    /// echo is due in the caller's jitter buffer; 20 ms ..= 800 ms.
    pub max_delay: Duration,
    /// Normalised correlation (0.0..=1.0) at or above which the caller's audio counts as the
    /// agent's echo. Lower suppresses more echo, and more callers who talk over a loud echo.
    pub min_correlation: f32,
}

impl Default for EchoConfig {
    /// 600 ms of delay covers Twilio's buffer, a long PSTN round trip and the line back. 0.6
    /// sits between the two, measured on 400 ms windows of real telephone speech (this
    /// module's tests): an echo through a path with a 30 ms reverberant tail and line noise is
    /// judged echo in 149–150 of 150 windows whatever its delay (in 107 when the tail carries as
    /// much energy as the direct path); another utterance of the same speaker was judged echo
    /// in 1 window of 450, and let go on the next frame.
    fn default() -> Self {
        Self {
            enabled: true,
            max_delay: Duration::from_millis(600),
            min_correlation: 0.6,
        }
    }
}

/// Why an [`EchoConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum EchoConfigError {
    /// `max_delay` out of range.
    #[error("echo max_delay is {0:?}, expected 20 ms ..= 800 ms")]
    MaxDelay(Duration),
    /// `min_correlation` out of range or not finite.
    #[error("echo min_correlation is {0}, expected 0.0..=1.0")]
    MinCorrelation(f32),
}

impl EchoConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), EchoConfigError> {
        if !(FRAME..=Duration::from_millis(800)).contains(&self.max_delay) {
            return Err(EchoConfigError::MaxDelay(self.max_delay));
        }
        if !(0.0..=1.0).contains(&self.min_correlation) {
            return Err(EchoConfigError::MinCorrelation(self.min_correlation));
        }
        Ok(())
    }
}

/// One call's echo reference and the check.
#[derive(Debug)]
pub(super) struct EchoCheck {
    /// The call's clock origin: tick 0.
    origin: Instant,
    /// Longest delay searched, 8 kHz samples.
    max_lag: usize,
    /// Correlation threshold.
    min_correlation: f32,
    /// The agent's frames as sent, ring of [`SENT_FRAMES`] by play tick.
    sent: Box<[MulawFrame; SENT_FRAMES]>,
    /// The tick each slot of `sent` holds (`u64::MAX`: none).
    sent_ticks: [u64; SENT_FRAMES],
    /// The tick the latest sent frame plays in.
    play_tick: Option<u64>,
    /// The caller's frames as received, ring of [`HEARD_FRAMES`] by tick.
    heard: Box<[MulawFrame; HEARD_FRAMES]>,
    /// The tick each slot of `heard` holds.
    heard_ticks: [u64; HEARD_FRAMES],
    /// The newest caller tick.
    heard_tick: Option<u64>,
    /// The tick of the stream's sender slot 0.
    heard_base: Option<u64>,
    /// The delay of the echo found at the last onset, 8 kHz samples.
    lag: Option<usize>,
}

impl EchoCheck {
    /// A check for a call whose clock starts at `origin`; `config` is already validated.
    pub(super) fn new(config: &EchoConfig, origin: Instant) -> Self {
        Self {
            origin,
            max_lag: config.max_delay.as_millis() as usize * 8,
            min_correlation: config.min_correlation,
            sent: Box::new([MulawFrame::SILENCE; SENT_FRAMES]),
            sent_ticks: [u64::MAX; SENT_FRAMES],
            play_tick: None,
            heard: Box::new([MulawFrame::SILENCE; HEARD_FRAMES]),
            heard_ticks: [u64::MAX; HEARD_FRAMES],
            heard_tick: None,
            heard_base: None,
            lag: None,
        }
    }

    /// The 20 ms tick of `at` on the call's clock.
    fn tick(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() / FRAME.as_nanos()) as u64
    }

    /// A frame of agent audio released to Twilio, due on the pacer's schedule at `due`: it
    /// plays then, or after the ones before it.
    pub(super) fn sent(&mut self, due: Instant, frame: &MulawFrame) {
        let released = self.tick(due);
        let tick = self.play_tick.map_or(released, |t| released.max(t + 1));
        self.play_tick = Some(tick);
        let slot = (tick % SENT_FRAMES as u64) as usize;
        self.sent_ticks[slot] = tick;
        self.sent[slot] = *frame;
    }

    /// Twilio dropped everything it had not played yet (a `clear` went out at `now`).
    pub(super) fn cleared(&mut self, now: Instant) {
        let now = self.tick(now);
        for tick in &mut self.sent_ticks {
            if *tick != u64::MAX && *tick > now {
                *tick = u64::MAX;
            }
        }
        self.play_tick = self.play_tick.map(|t| t.min(now));
    }

    /// A caller frame: the `sender_slot`-th frame of the stream (Twilio's clock), read off the
    /// socket at `arrived`. The stream's first frame read fixes where sender slots fall on the
    /// call's ticks; the jitter buffer's schedule never moves them.
    pub(super) fn heard(&mut self, sender_slot: u64, arrived: Instant, frame: &MulawFrame) {
        let first = self.tick(arrived).saturating_sub(sender_slot);
        let base = *self.heard_base.get_or_insert(first);
        let tick = base + sender_slot;
        let slot = (tick % HEARD_FRAMES as u64) as usize;
        self.heard_ticks[slot] = tick;
        self.heard_tick = Some(tick);
        self.heard[slot] = *frame;
    }

    /// Whether the caller's latest [`WINDOW_FRAMES`] frames are the agent's echo: a search over
    /// every delay up to the maximum at 2 kHz, refined at 8 kHz around the best. Remembers the
    /// delay for [`EchoCheck::track`].
    pub(super) fn onset_is_echo(&mut self) -> bool {
        const LEN: usize = WINDOW_FRAMES * FRAME_SAMPLES;
        self.lag = None;
        let Some(first) = self.window_start(WINDOW_FRAMES) else {
            return false;
        };
        let mut x = [0.0f32; LEN];
        if !self.caller(first, &mut x) {
            return false;
        }
        // y[k]: the agent's sample at 8 kHz position `first·160 − max_lag + k`.
        let mut y = [0.0f32; LEN + MAX_LAG_LIMIT];
        let y = &mut y[..LEN + self.max_lag];
        self.agent(first * FRAME_SAMPLES as i128 - self.max_lag as i128, y);
        smooth(&mut x);
        smooth(y);
        let mut x2 = [0.0f32; LEN / 4];
        let mut y2 = [0.0f32; (LEN + MAX_LAG_LIMIT) / 4];
        let y2 = &mut y2[..y.len() / 4];
        decimate(&x, &mut x2);
        decimate(y, y2);
        // With little of the echo in the window (its first frames), a chance peak at 2 kHz can
        // top the true one: refine the best few.
        let mut rho2 = [0.0f32; MAX_LAG_LIMIT / 4 + 1];
        let rho2 = &mut rho2[..self.max_lag / 4 + 1];
        correlations(&x2, y2, rho2);
        let mut best: Option<(f32, usize)> = None;
        for _ in 0..CANDIDATES {
            let Some((lag2, _)) = rho2
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_finite())
                .max_by(|a, b| a.1.total_cmp(b.1))
            else {
                break;
            };
            let (from2, to2) = (lag2.saturating_sub(2), (lag2 + 2).min(rho2.len() - 1));
            rho2[from2..=to2].fill(f32::NAN);
            let from = (lag2 * 4).saturating_sub(REFINE);
            let to = (lag2 * 4 + REFINE).min(self.max_lag);
            // `best_lag` wants the reference for delay `to` at its start.
            if let Correlation::Best(rho, lag) = best_lag(&x, &y[self.max_lag - to..], from, to)
                && best.is_none_or(|(b, _)| rho > b)
            {
                best = Some((rho, lag));
            }
        }
        // When nearly all of the window's energy is in its last two frames (an onset out of
        // silence), a few hundred samples decide among thousands of delays: chance matches run
        // high (0.59 between the simulator's caller and the greeting), so ask for more.
        let onset: f32 = dot(&x[LEN - 2 * FRAME_SAMPLES..], &x[LEN - 2 * FRAME_SAMPLES..]);
        let needed = if onset >= 0.8 * dot(&x, &x) {
            self.min_correlation + (1.0 - self.min_correlation) / 2.0
        } else {
            self.min_correlation
        };
        match best {
            Some((rho, lag)) if rho >= needed => {
                self.lag = Some(lag);
                true
            }
            _ => false,
        }
    }

    /// While an onset is held as echo: whether the caller's last [`TRACK_FRAMES`] frames are
    /// still explained by the agent's audio at the delay found (± [`TRACK_LAG`]).
    pub(super) fn track(&mut self) -> Track {
        const LEN: usize = TRACK_FRAMES * FRAME_SAMPLES;
        let Some(first) = self.window_start(TRACK_FRAMES) else {
            return Track::Quiet;
        };
        let Some(lag) = self.lag else {
            return Track::Caller;
        };
        let mut x = [0.0f32; LEN];
        if !self.caller(first, &mut x) {
            return Track::Quiet;
        }
        let from = lag.saturating_sub(TRACK_LAG);
        let to = (lag + TRACK_LAG).min(self.max_lag);
        // y[k]: the agent's sample at position `first·160 − to + k`.
        let mut y = [0.0f32; LEN + 2 * TRACK_LAG];
        let y = &mut y[..LEN + to - from];
        self.agent(first * FRAME_SAMPLES as i128 - to as i128, y);
        smooth(&mut x);
        smooth(y);
        // `best_lag` counts delays from the reference's start: shift by `from`.
        match best_lag(&x, y, 0, to - from) {
            Correlation::Best(rho, offset) if rho >= self.min_correlation => {
                self.lag = Some(from + offset);
                Track::Echo
            }
            Correlation::CallerSilent => Track::Quiet,
            Correlation::Best(..) | Correlation::AgentSilent => Track::Caller,
        }
    }

    /// The first tick of a window of `frames` ending at the newest caller frame (before the
    /// call's start when the call is younger than the window).
    fn window_start(&self, frames: usize) -> Option<i128> {
        Some(i128::from(self.heard_tick?) - (frames as i128 - 1))
    }

    /// The caller's audio from tick `first` on, scaled to ±1 (silence where no frame came);
    /// whether it is louder than silence.
    fn caller(&self, first: i128, out: &mut [f32]) -> bool {
        for (i, chunk) in out.chunks_exact_mut(FRAME_SAMPLES).enumerate() {
            let frame = u64::try_from(first + i as i128).ok().and_then(|tick| {
                let slot = (tick % HEARD_FRAMES as u64) as usize;
                (self.heard_ticks[slot] == tick).then_some(&self.heard[slot])
            });
            fill(frame.map(|f| &f.0[..]), chunk);
        }
        dot(out, out) >= SILENT * out.len() as f32
    }

    /// The agent's audio as played from 8 kHz position `start` on (silence before the call and
    /// wherever nothing played).
    fn agent(&self, start: i128, out: &mut [f32]) {
        let mut position = start;
        let mut rest = out;
        while !rest.is_empty() {
            let tick = position.div_euclid(FRAME_SAMPLES as i128);
            let offset = position.rem_euclid(FRAME_SAMPLES as i128) as usize;
            let n = (FRAME_SAMPLES - offset).min(rest.len());
            let (chunk, tail) = rest.split_at_mut(n);
            let frame = u64::try_from(tick).ok().and_then(|tick| {
                let slot = (tick % SENT_FRAMES as u64) as usize;
                (self.sent_ticks[slot] == tick).then_some(&self.sent[slot])
            });
            fill(frame.map(|f| &f.0[offset..offset + n]), chunk);
            position += n as i128;
            rest = tail;
        }
    }
}

/// µ-law codes (or silence) decoded and scaled to ±1.
fn fill(codes: Option<&[u8]>, out: &mut [f32]) {
    match codes {
        Some(codes) => {
            for (o, code) in out.iter_mut().zip(codes) {
                *o = f32::from(codec::decode_sample(*code)) / 32_768.0;
            }
        }
        None => out.fill(0.0),
    }
}

/// Calls `f(d, rho)` for every delay `d` in `from..=to` (samples), where the reference for
/// delay `d` starts at `y[to − d]`: `rho` is the normalised correlation of `x` with it, `None`
/// where the reference is silent. Returns false, calling nothing, when `x` is silent.
fn each_correlation(
    x: &[f32],
    y: &[f32],
    from: usize,
    to: usize,
    mut f: impl FnMut(usize, Option<f32>),
) -> bool {
    let len = x.len();
    let ex = dot(x, x);
    if ex < SILENT * len as f32 {
        return false;
    }
    // The reference's energy slides by one sample per step.
    let first = &y[to - from..to - from + len];
    let mut ey = dot(first, first);
    for lag in from..=to {
        let start = to - lag;
        if lag > from {
            let (entering, leaving) = (y[start], y[start + len]);
            ey = (ey + entering * entering - leaving * leaving).max(0.0);
        }
        let rho =
            (ey >= SILENT * len as f32).then(|| dot(x, &y[start..start + len]) / (ex * ey).sqrt());
        f(lag, rho);
    }
    true
}

/// The delay in `from..=to` at which `y` best matches `x` (as [`each_correlation`] lays
/// them out): the highest normalised correlation and its delay.
fn best_lag(x: &[f32], y: &[f32], from: usize, to: usize) -> Correlation {
    let mut best = Correlation::AgentSilent;
    let heard = each_correlation(x, y, from, to, |lag, rho| {
        if let Some(rho) = rho
            && !matches!(best, Correlation::Best(b, _) if b >= rho)
        {
            best = Correlation::Best(rho, lag);
        }
    });
    if heard {
        best
    } else {
        Correlation::CallerSilent
    }
}

/// The normalised correlation of `x` with `y` at every delay `d` in `0..out.len()` (as
/// [`each_correlation`] lays them out); NaN where the reference is silent.
fn correlations(x: &[f32], y: &[f32], out: &mut [f32]) {
    out.fill(f32::NAN);
    each_correlation(x, y, 0, out.len() - 1, |lag, rho| {
        out[lag] = rho.unwrap_or(f32::NAN);
    });
}

/// The dot product of two equally long slices, in [`LANES`] running sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let (a_lanes, a_rest) = a.as_chunks::<LANES>();
    let (b_lanes, b_rest) = b.as_chunks::<LANES>();
    for (x, y) in a_lanes.iter().zip(b_lanes) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + rest
}

/// The mean of each sample and the 3 before it, in place: a low-pass (first null at 2 kHz)
/// that keeps the band where a voice's echo stays coherent through a room and a loudspeaker.
fn smooth(x: &mut [f32]) {
    for n in (1..x.len()).rev() {
        let from = n.saturating_sub(3);
        let sum: f32 = x[from..=n].iter().sum();
        x[n] = sum / (n - from + 1) as f32;
    }
}

/// 8 kHz → 2 kHz for the coarse search, of a [`smooth`]ed signal: every 4th sample.
fn decimate(x: &[f32], out: &mut [f32]) {
    for (o, quad) in out.iter_mut().zip(x.chunks_exact(4)) {
        *o = quad[3];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests take one real anchor instant

    use super::*;

    /// 1.4 s of real telephone speech (`tests/data/hello-world.ulaw`), looped.
    fn speech() -> Vec<i16> {
        let bytes = include_bytes!("../../../tests/data/hello-world.ulaw");
        let mut pcm = vec![0i16; bytes.len()];
        codec::decode_into(bytes, &mut pcm);
        pcm
    }

    /// A reproducible echo path: a direct tap, then a random tail decaying over 8 ms (30 ms
    /// long), a quarter of the level overall, `delay` samples late, and a noise floor at −55
    /// dBFS.
    struct EchoPath {
        delay: usize,
        taps: Vec<f64>,
        noise: Vec<f64>,
    }

    impl EchoPath {
        fn new(delay: usize, tail: f64, seed: u64) -> Self {
            let mut state = seed;
            let mut uniform = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f64 / 1000.0 - 1.0
            };
            let taps = (0..240)
                .map(|k| {
                    if k == 0 {
                        1.0
                    } else {
                        tail * uniform() * (-(k as f64) / 64.0).exp()
                    }
                })
                .collect();
            let noise = (0..8_000).map(|_| uniform() * 60.0).collect();
            Self { delay, taps, noise }
        }

        /// Sample `n` of the caller's line carrying `agent` back.
        fn sample(&self, agent: &[i16], n: usize) -> i16 {
            if n < self.delay + self.taps.len() {
                return 0;
            }
            let echo: f64 = self
                .taps
                .iter()
                .enumerate()
                .map(|(j, h)| h * f64::from(agent[(n - self.delay - j) % agent.len()]))
                .sum();
            (0.25 * echo + self.noise[n % self.noise.len()]) as i16
        }
    }

    /// The µ-law frame of samples `first..first + 160` of `f`.
    fn frame(first: usize, f: impl Fn(usize) -> i16) -> MulawFrame {
        let mut pcm = crate::PcmFrame::SILENCE;
        for (i, s) in pcm.0.iter_mut().enumerate() {
            *s = f(first + i);
        }
        codec::encode_frame(&pcm)
    }

    /// The agent plays `agent` (looped) from tick 0, frame by frame as the call releases it;
    /// the caller's line carries `caller(n)` (8 kHz sample index `n`). From tick 40 on, every
    /// frame is an onset candidate: returns how many of them were judged echo.
    fn onsets_judged_echo(agent: &[i16], caller: impl Fn(usize) -> i16, ticks: u64) -> usize {
        let origin = Instant::now();
        let mut check = EchoCheck::new(&EchoConfig::default(), origin);
        let mut echo = 0;
        for tick in 0..ticks {
            let at = origin + FRAME * tick as u32;
            let sent = frame(tick as usize * FRAME_SAMPLES, |n| agent[n % agent.len()]);
            check.sent(at, &sent);
            check.heard(tick, at, &frame(tick as usize * FRAME_SAMPLES, &caller));
            if tick >= 40 && check.onset_is_echo() {
                echo += 1;
            }
        }
        echo
    }

    #[test]
    fn the_agents_voice_coming_back_is_echo() {
        let agent = speech();
        // 250 ms, and delays between two samples at 2 kHz (the verdict is taken at 8 kHz).
        for delay in [2_000, 2_001, 2_002, 2_003] {
            let path = EchoPath::new(delay, 0.25, 7);
            let echo = onsets_judged_echo(&agent, |n| path.sample(&agent, n), 190);
            assert!(echo >= 135, "delay {delay}: {echo} of 150");
        }
        // A reverberant tail carrying as much energy as the direct path: judged echo less
        // often; a missed echo onset is a barge-in, as without the check.
        let harsh = EchoPath::new(2_002, 0.5, 8);
        let echo = onsets_judged_echo(&agent, |n| harsh.sample(&agent, n), 190);
        assert!(echo >= 90, "{echo} of 150");
    }

    #[test]
    fn another_utterance_over_the_agent_is_never_held_as_echo_beyond_a_frame() {
        // The same speaker saying something else: the clip backwards, 19 % faster, 13 %
        // slower. The hardest case for a correlation: the same voice, the same pitch range.
        // Every frame from tick 40 is an onset candidate, as the call would check it; one that
        // is judged echo by chance must break through on the next frame's tracking.
        let agent = speech();
        let n = agent.len();
        let others: [&dyn Fn(usize) -> i16; 3] = [
            &|k| agent[n - 1 - k % n],
            &|k| agent[(k as f64 * 1.19) as usize % n],
            &|k| agent[(k as f64 * 0.87) as usize % n],
        ];
        for (i, other) in others.iter().enumerate() {
            let origin = Instant::now();
            let mut check = EchoCheck::new(&EchoConfig::default(), origin);
            let (mut held, mut judged, mut longest) = (0u64, 0, 0);
            for tick in 0..190u64 {
                let at = origin + FRAME * tick as u32;
                let sent = frame(tick as usize * FRAME_SAMPLES, |k| agent[k % n]);
                check.sent(at, &sent);
                check.heard(tick, at, &frame(tick as usize * FRAME_SAMPLES, other));
                if held > 0 {
                    if check.track() == Track::Echo {
                        held += 1;
                        longest = longest.max(held);
                    } else {
                        held = 0;
                    }
                } else if tick >= 40 && check.onset_is_echo() {
                    judged += 1;
                    held = 1;
                }
            }
            assert!(judged <= 2, "voice {i}: {judged} of 150 onsets judged echo");
            assert!(longest <= 1, "voice {i}: held {longest} frames");
        }
    }

    #[test]
    fn a_caller_talking_over_the_echo_breaks_through_within_a_few_frames() {
        let agent = speech();
        let n = agent.len();
        let path = EchoPath::new(2_001, 0.25, 9);
        let talks_from = 60 * FRAME_SAMPLES;
        let caller = |k: usize| {
            let voice = if k >= talks_from {
                agent[(k as f64 * 1.19) as usize % n]
            } else {
                0
            };
            path.sample(&agent, k).saturating_add(voice)
        };
        let origin = Instant::now();
        let mut check = EchoCheck::new(&EchoConfig::default(), origin);
        let mut held_at = None;
        let mut broke_at = None;
        for tick in 0..100u64 {
            let at = origin + FRAME * tick as u32;
            let sent = frame(tick as usize * FRAME_SAMPLES, |k| agent[k % n]);
            check.sent(at, &sent);
            check.heard(tick, at, &frame(tick as usize * FRAME_SAMPLES, caller));
            match held_at {
                None if tick >= 40 && check.onset_is_echo() => held_at = Some(tick),
                Some(_) if check.track() == Track::Caller => {
                    broke_at = Some(tick);
                    break;
                }
                _ => {}
            }
        }
        let held_at = held_at.expect("an echo onset is held");
        assert!(held_at < 60, "held at {held_at}");
        let broke_at = broke_at.expect("the caller breaks through");
        assert!(
            (60..60 + TRACK_FRAMES as u64).contains(&broke_at),
            "held at {held_at}, broke through at {broke_at}"
        );
    }

    #[test]
    fn a_silent_agent_or_a_silent_line_is_no_echo() {
        let origin = Instant::now();
        let agent = speech();
        let mut check = EchoCheck::new(&EchoConfig::default(), origin);
        for tick in 0..30u64 {
            let heard = frame(tick as usize * FRAME_SAMPLES, |n| agent[n % agent.len()]);
            check.heard(tick, origin + FRAME * tick as u32, &heard);
        }
        assert!(!check.onset_is_echo(), "nothing was sent");
        check.lag = Some(100);
        assert_eq!(check.track(), Track::Caller, "the agent is silent");
        let mut quiet = EchoCheck::new(&EchoConfig::default(), origin);
        quiet.lag = Some(100);
        assert_eq!(quiet.track(), Track::Quiet);
    }

    #[test]
    fn audio_flushed_by_a_clear_is_not_a_reference() {
        let origin = Instant::now();
        let mut check = EchoCheck::new(&EchoConfig::default(), origin);
        // 30 frames released at once at tick 10 play in ticks 10..40; a clear at tick 12
        // drops those after it.
        let agent = speech();
        for k in 0..30usize {
            let sent = frame((10 + k) * FRAME_SAMPLES, |n| agent[n % agent.len()]);
            check.sent(origin + FRAME * 10, &sent);
        }
        check.cleared(origin + FRAME * 12);
        assert_eq!(check.play_tick, Some(12));
        let kept = check.sent_ticks.iter().filter(|t| **t != u64::MAX).count();
        assert_eq!(kept, 3, "ticks 10, 11 and 12 played");
    }

    #[test]
    fn configs_out_of_range_are_refused() {
        let ok = EchoConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = EchoConfig {
            max_delay: Duration::from_secs(1),
            ..ok.clone()
        };
        assert!(matches!(bad.validate(), Err(EchoConfigError::MaxDelay(_))));
        let bad = EchoConfig {
            min_correlation: f32::NAN,
            ..ok
        };
        assert!(matches!(
            bad.validate(),
            Err(EchoConfigError::MinCorrelation(_))
        ));
    }
}
