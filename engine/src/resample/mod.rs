//! Streaming sample-rate conversion for the call's two audio paths, on rubato's FFT resampler.
//!
//! - **Agent feed:** the caller's 8 kHz audio goes up to 16 kHz.
//! - **Playback:** agent audio at 8, 16, 22.05, 24, 44.1 or 48 kHz comes down to the 8 kHz
//!   µ-law leg. 8 kHz → 8 kHz is an identity passthrough (no filter, no delay).
//!
//! Every other pair is refused with [`ResampleError::Unsupported`].
//!
//! # Design
//!
//! [`Resampler`] is sans-IO and streaming: [`push`](Resampler::push) takes any number of `i16`
//! samples, stages them into 20 ms input chunks, and runs each complete chunk through
//! `rubato::Fft` (`FixedSync::Input`, mono, `f32`) into a bounded output FIFO that
//! [`pop_into`](Resampler::pop_into) drains. State is kept across calls, so chunk boundaries
//! are inaudible. Every buffer is allocated in [`Resampler::new`]; `push`, `pop_into`,
//! `flush` and `reset` never allocate, lock or log.
//!
//! Filter choice: `Fft::new_custom` with **one sub-chunk** per 20 ms chunk and the
//! BlackmanHarris2 window for every pair. `Fft::new` would split the 882-sample (44.1 kHz) and
//! 960-sample (48 kHz) chunks into 3 sub-chunks, shrinking the FFT block to 80 or 54 output
//! samples, which lowers the anti-alias cutoff so far that 3.4 kHz drops by tens of dB. With one
//! sub-chunk every pair has an 80-sample (8 kHz) or 160-sample (16 kHz) output half-block:
//! exactly **10 ms** of algorithmic delay, flat to 3.4 kHz, −10 dB at 3.7 kHz. Measured figures
//! are in `docs/resampler.md` and `engine/tests/resample_quality.rs`.
//!
//! Time alignment: the first [`delay`](Resampler::delay) worth of output after construction,
//! [`reset`](Resampler::reset) or [`flush`](Resampler::flush) is the filter's warm-up and is
//! dropped, so output sample `k` corresponds to input time `k / to_rate`. The latency is still
//! there: the output for the last 10 ms of input only appears after more input or a `flush`.
//!
//! Sample format: input `i16` is scaled by 1/32768 into `f32`; output is scaled by 32768,
//! rounded to nearest and saturated to `i16` (ringing on full-scale input clips, never wraps).
//!
//! Output FIFO: [`Resampler::capacity`] is 2 s of output plus two output chunks. `push` stops
//! consuming input once another chunk would not fit under the 2 s mark; the two extra chunks
//! are headroom reserved for `flush`, so `flush` never drops audio.
//!
//! ```
//! use handset_engine::SampleRate;
//! use handset_engine::resample::Resampler;
//!
//! let mut up = Resampler::new(SampleRate::NARROWBAND, SampleRate::WIDEBAND).unwrap();
//! let tone: Vec<i16> = (0..800).map(|n| ((n as f32 * 0.4).sin() * 8000.0) as i16).collect();
//! assert_eq!(up.push(&tone), 800);
//! up.flush();
//! let mut out = vec![0i16; 2000];
//! assert_eq!(up.pop_into(&mut out), 1600);
//! ```

use std::time::Duration;

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _, WindowFunction};

use crate::time::SampleRate;

/// Output the FIFO holds for the caller before `push` stops consuming, in seconds of output.
const FIFO_SECONDS: usize = 2;

/// Scale between `i16` samples and rubato's `f32` samples in −1.0..1.0.
const FULL_SCALE: f32 = 32_768.0;

/// Why a [`Resampler`] could not be built. Construction-only; the streaming calls cannot fail.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ResampleError {
    /// rubato refused the configuration, or chose chunk sizes other than one FFT block per
    /// 20 ms chunk (a rubato behaviour change; never seen with rubato 5.0).
    #[error("rubato cannot resample {from} hz to {to} hz in 20 ms chunks")]
    Construction {
        /// Input rate in Hz.
        from: u32,
        /// Output rate in Hz.
        to: u32,
    },
    /// The pair is not one the engine uses: 8 kHz → 16 kHz, or any supported rate → 8 kHz.
    #[error("unsupported resampling pair: {from} hz to {to} hz")]
    Unsupported {
        /// Input rate in Hz.
        from: u32,
        /// Output rate in Hz.
        to: u32,
    },
}

/// A streaming mono resampler for one direction of one call. See the [module docs](self).
pub struct Resampler {
    /// Input rate.
    from: SampleRate,
    /// Output rate.
    to: SampleRate,
    /// The FFT resampler, or `None` for the 8 kHz → 8 kHz passthrough.
    fft: Option<Fft<f32>>,
    /// Input samples per 20 ms chunk (1 for the passthrough, which has no chunking).
    chunk_in: usize,
    /// Output samples per processed chunk (1 for the passthrough).
    chunk_out: usize,
    /// rubato's `output_delay()`: filter warm-up in output samples (0 for the passthrough).
    delay_out: usize,
    /// The partial input chunk, as `f32`; `chunk_in` long, the first `staged_len` valid.
    staged: Vec<f32>,
    /// Valid samples in `staged`, in input samples (always below `chunk_in` between calls).
    staged_len: usize,
    /// rubato's output for one chunk, `chunk_out` long.
    scratch_out: Vec<f32>,
    /// Resampled samples waiting to be popped.
    fifo: Fifo,
    /// `push` only completes a chunk if the FIFO then holds at most this many samples.
    push_limit: usize,
    /// Warm-up output samples still to drop before output is time-aligned.
    trim_left: usize,
    /// Input samples consumed since construction, `reset` or the last `flush`.
    segment_in: u64,
    /// Output samples written to the FIFO since construction, `reset` or the last `flush`.
    segment_out: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("chunk_in", &self.chunk_in)
            .field("chunk_out", &self.chunk_out)
            .field("delay_out", &self.delay_out)
            .field("staged_len", &self.staged_len)
            .field("available", &self.fifo.len)
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from` to `to`: 8 kHz → 16 kHz, or any of
    /// [`SampleRate::SUPPORTED`] → 8 kHz. Allocates every buffer it will use.
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        Self::with_fifo(from, to, Duration::from_secs(FIFO_SECONDS as u64))
    }

    /// Like [`Resampler::new`] with an output FIFO of `fifo` (at least one 20 ms chunk) plus the
    /// flush headroom. A caller that pops after every push needs only a chunk or two; the call
    /// state machine uses 40 ms so each call's resamplers stay a few kilobytes.
    pub fn with_fifo(
        from: SampleRate,
        to: SampleRate,
        fifo: Duration,
    ) -> Result<Self, ResampleError> {
        let unsupported = ResampleError::Unsupported {
            from: from.hz(),
            to: to.hz(),
        };
        let supported = (from == SampleRate::NARROWBAND && to == SampleRate::WIDEBAND)
            || (to == SampleRate::NARROWBAND && SampleRate::SUPPORTED.contains(&from));
        if !supported {
            return Err(unsupported);
        }
        let push_limit =
            ((fifo.as_micros() * u128::from(to.hz()) / 1_000_000) as usize).max(to.frame_samples());
        if from == to {
            return Ok(Self::with_parts(from, to, None, 1, 1, 0, push_limit));
        }

        let construction = ResampleError::Construction {
            from: from.hz(),
            to: to.hz(),
        };
        let chunk_in = from.frame_samples();
        let chunk_out = to.frame_samples();
        let fft = Fft::<f32>::new_custom(
            from.hz() as usize,
            to.hz() as usize,
            chunk_in,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|_| construction)?;
        // One FFT block per chunk: every chunk then yields exactly `chunk_out` samples, which
        // the buffer sizes and the flush arithmetic rely on.
        if fft.input_frames_max() != chunk_in
            || fft.output_frames_max() != chunk_out
            || fft.output_frames_next() != chunk_out
        {
            return Err(construction);
        }
        let delay_out = fft.output_delay();
        Ok(Self::with_parts(
            from,
            to,
            Some(fft),
            chunk_in,
            chunk_out,
            delay_out,
            push_limit,
        ))
    }

    fn with_parts(
        from: SampleRate,
        to: SampleRate,
        fft: Option<Fft<f32>>,
        chunk_in: usize,
        chunk_out: usize,
        delay_out: usize,
        push_limit: usize,
    ) -> Self {
        Self {
            from,
            to,
            fft,
            chunk_in,
            chunk_out,
            delay_out,
            staged: vec![0.0; chunk_in],
            staged_len: 0,
            scratch_out: vec![0.0; chunk_out],
            fifo: Fifo::with_capacity(push_limit + 2 * chunk_out),
            push_limit,
            trim_left: delay_out,
            segment_in: 0,
            segment_out: 0,
        }
    }

    /// The input rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Accepts input samples (any count). Processes every complete 20 ms input chunk into the
    /// output FIFO. Returns how many input samples were consumed: less than `input.len()` only
    /// if the output FIFO is full (holds 2 s), in which case the caller must pop first.
    pub fn push(&mut self, input: &[i16]) -> usize {
        if self.fft.is_none() {
            let room = self.push_limit.saturating_sub(self.fifo.len);
            let taken = self.fifo.extend_from(&input[..input.len().min(room)]);
            self.segment_in += taken as u64;
            self.segment_out += taken as u64;
            return taken;
        }
        let mut consumed = 0;
        while consumed < input.len() {
            let wanted = self.chunk_in - self.staged_len;
            let take = wanted.min(input.len() - consumed);
            if take == wanted && self.fifo.len + self.chunk_out > self.push_limit {
                break;
            }
            let staged = &mut self.staged[self.staged_len..self.staged_len + take];
            for (dst, &src) in staged.iter_mut().zip(&input[consumed..consumed + take]) {
                *dst = f32::from(src) / FULL_SCALE;
            }
            self.staged_len += take;
            self.segment_in += take as u64;
            consumed += take;
            if self.staged_len == self.chunk_in {
                self.process_chunk(u64::MAX);
            }
        }
        consumed
    }

    /// Moves up to `out.len()` resampled samples out, oldest first; returns the count.
    pub fn pop_into(&mut self, out: &mut [i16]) -> usize {
        self.fifo.pop_into(out)
    }

    /// Resampled samples ready to pop.
    pub fn available(&self) -> usize {
        self.fifo.len
    }

    /// The output FIFO's size in samples: 2 s of output plus two output chunks of headroom
    /// reserved for [`flush`](Self::flush).
    pub fn capacity(&self) -> usize {
        self.fifo.buf.len()
    }

    /// Ends a segment: pads the partial input chunk with zeros and pushes the filter's delay
    /// out, so the output of every input sample since the last `new`/`reset`/`flush` is
    /// poppable, exactly `round(input_len × to / from)` samples in all. Then the filter starts
    /// afresh: the next pushed sample begins a new, again time-aligned, segment.
    ///
    /// The FIFO keeps room for one flush beyond what `push` fills. Flushing again and again
    /// without popping in between can exhaust that room; the tail that does not fit is dropped.
    pub fn flush(&mut self) {
        if self.fft.is_some() {
            let from = u64::from(self.from.hz());
            let to = u64::from(self.to.hz());
            let target = (self.segment_in * to + from / 2) / from;
            while self.segment_out < target {
                let before = self.segment_out;
                self.staged[self.staged_len..].fill(0.0);
                self.staged_len = self.chunk_in;
                self.process_chunk(target);
                if self.segment_out == before {
                    // FIFO full: only after repeated flushes with nothing popped in between.
                    break;
                }
            }
        }
        self.restart_segment();
    }

    /// Drops all state: staged input, queued output and filter memory (for barge-in).
    pub fn reset(&mut self) {
        self.fifo.clear();
        self.restart_segment();
    }

    /// The algorithmic delay (rubato's `output_delay`): how far the output lags the input.
    /// 10 ms for every resampled pair, zero for the passthrough.
    pub fn delay(&self) -> Duration {
        self.to.duration_of(self.delay_out as u64)
    }

    /// Clears the filter and staging and re-arms the warm-up trim; keeps the FIFO.
    fn restart_segment(&mut self) {
        if let Some(fft) = self.fft.as_mut() {
            fft.reset();
        }
        self.staged_len = 0;
        self.trim_left = self.delay_out;
        self.segment_in = 0;
        self.segment_out = 0;
    }

    /// Resamples the full staged chunk into the FIFO, dropping warm-up samples and anything
    /// past `limit` output samples in this segment.
    fn process_chunk(&mut self, limit: u64) {
        self.staged_len = 0;
        let Some(fft) = self.fft.as_mut() else {
            return;
        };
        let produced = match (
            InterleavedSlice::new(&self.staged[..], 1, self.chunk_in),
            InterleavedSlice::new_mut(&mut self.scratch_out[..], 1, self.chunk_out),
        ) {
            (Ok(input), Ok(mut output)) => fft
                .process_into_buffer(&input, &mut output, None)
                .map_or(0, |(_, written)| written),
            // The adapters wrap buffers of exactly the lengths they are given.
            _ => 0,
        };
        // `new` checked that rubato takes `chunk_in` and yields `chunk_out` per call, so the
        // error arm is unreachable; if it ever were reached, emit silence to keep the timeline.
        let produced = if produced == self.chunk_out {
            produced
        } else {
            self.scratch_out.fill(0.0);
            self.chunk_out
        };
        let skip = self.trim_left.min(produced);
        self.trim_left -= skip;
        let room = limit.saturating_sub(self.segment_out);
        let wanted = (produced - skip).min(usize::try_from(room).unwrap_or(usize::MAX));
        let written = self
            .fifo
            .extend_converted(&self.scratch_out[skip..skip + wanted]);
        self.segment_out += written as u64;
    }
}

/// `1.5 × 2^23`: adding it to a float of magnitude below 2^22 leaves that float rounded to an
/// integer (ties to even) in the low mantissa bits of the sum.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `f32` in −1.0..1.0 to `i16`, rounded to nearest (halves away from zero), saturating; NaN
/// becomes 0.
///
/// Written so that the loops calling it vectorise with plain SSE2 (the default x86-64 target):
/// a saturating `as` cast from `f32` and `f32::round` both compile to one scalar instruction or
/// call per sample. Instead: add ±0.5, clamp in `f32`, then truncate toward zero as
/// `floor(|x|)` with the sign put back, where `floor` is the magic-number rounding corrected by
/// one when it rounded up. Exact for every input: after the clamp `|x| ≤ 32768`.
#[inline(always)]
fn to_i16(sample: f32) -> i16 {
    let scaled = sample * FULL_SCALE;
    let rounded = scaled + 0.5f32.copysign(scaled);
    let clamped = if rounded.is_nan() {
        0.0
    } else {
        rounded.clamp(-FULL_SCALE, FULL_SCALE - 1.0)
    };
    let magnitude = clamped.abs();
    let nearest = (magnitude + ROUNDING_MAGIC).to_bits() as i32 - ROUNDING_MAGIC.to_bits() as i32;
    let floor = nearest - i32::from(nearest as f32 > magnitude);
    let truncated = if clamped < 0.0 { -floor } else { floor };
    // In −32768..=32767 after the clamp, so the narrowing is exact.
    truncated as i16
}

/// A fixed-capacity ring of `i16`, allocated once.
struct Fifo {
    /// Storage; its length is the capacity in samples.
    buf: Vec<i16>,
    /// Index of the oldest sample.
    head: usize,
    /// Samples stored.
    len: usize,
}

impl Fifo {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            head: 0,
            len: 0,
        }
    }

    /// Appends as much of `src` as fits; returns the count.
    fn extend_from(&mut self, src: &[i16]) -> usize {
        let capacity = self.buf.len();
        let n = src.len().min(capacity - self.len);
        let mut tail = self.head + self.len;
        if tail >= capacity {
            tail -= capacity;
        }
        let first = n.min(capacity - tail);
        self.buf[tail..tail + first].copy_from_slice(&src[..first]);
        self.buf[..n - first].copy_from_slice(&src[first..n]);
        self.len += n;
        n
    }

    /// Appends as much of `src` as fits, converted with [`to_i16`]; returns the count.
    fn extend_converted(&mut self, src: &[f32]) -> usize {
        let capacity = self.buf.len();
        let n = src.len().min(capacity - self.len);
        let mut tail = self.head + self.len;
        if tail >= capacity {
            tail -= capacity;
        }
        let first = n.min(capacity - tail);
        for (dst, &s) in self.buf[tail..tail + first].iter_mut().zip(&src[..first]) {
            *dst = to_i16(s);
        }
        for (dst, &s) in self.buf[..n - first].iter_mut().zip(&src[first..n]) {
            *dst = to_i16(s);
        }
        self.len += n;
        n
    }

    /// Moves up to `out.len()` of the oldest samples into `out`; returns the count.
    fn pop_into(&mut self, out: &mut [i16]) -> usize {
        let capacity = self.buf.len();
        let n = out.len().min(self.len);
        let first = n.min(capacity - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.head += n;
        if self.head >= capacity {
            self.head -= capacity;
        }
        self.len -= n;
        n
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(hz: u32) -> SampleRate {
        SampleRate::new(hz).unwrap()
    }

    fn drain(r: &mut Resampler) -> Vec<i16> {
        let mut out = vec![0; r.available()];
        let n = r.pop_into(&mut out);
        out.truncate(n);
        out
    }

    fn tone(hz: f32, rate: SampleRate, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| {
                let phase = 2.0 * std::f32::consts::PI * hz * n as f32 / rate.hz() as f32;
                (phase.sin() * 12_000.0) as i16
            })
            .collect()
    }

    #[test]
    fn unsupported_pairs_are_refused_with_their_rates() {
        for (from, to) in [
            (16_000, 16_000),
            (16_000, 48_000),
            (8_000, 48_000),
            (11_025, 8_000),
        ] {
            let err = Resampler::new(rate(from), rate(to)).unwrap_err();
            assert_eq!(err, ResampleError::Unsupported { from, to });
            assert_eq!(
                err.to_string(),
                format!("unsupported resampling pair: {from} hz to {to} hz")
            );
        }
    }

    #[test]
    fn every_engine_pair_builds_with_ten_ms_delay() {
        let up = Resampler::new(SampleRate::NARROWBAND, SampleRate::WIDEBAND).unwrap();
        assert_eq!(up.delay(), Duration::from_millis(10));
        for from in SampleRate::SUPPORTED {
            let r = Resampler::new(from, SampleRate::NARROWBAND).unwrap();
            assert_eq!((r.from_rate(), r.to_rate()), (from, SampleRate::NARROWBAND));
            let expected = if from == SampleRate::NARROWBAND {
                0
            } else {
                10
            };
            assert_eq!(r.delay(), Duration::from_millis(expected), "{from}");
        }
    }

    #[test]
    fn passthrough_returns_input_unchanged_without_delay() {
        let mut r = Resampler::new(SampleRate::NARROWBAND, SampleRate::NARROWBAND).unwrap();
        let input = tone(440.0, SampleRate::NARROWBAND, 333);
        assert_eq!(r.push(&input), 333);
        assert_eq!(drain(&mut r), input);
    }

    #[test]
    fn output_is_withheld_until_a_full_chunk_arrives() {
        let mut r = Resampler::new(SampleRate::HZ_48000, SampleRate::NARROWBAND).unwrap();
        assert_eq!(r.push(&[1000; 959]), 959);
        assert_eq!(r.available(), 0);
        assert_eq!(r.push(&[1000; 1]), 1);
        // One chunk yields 160 samples, minus the 80-sample warm-up that is trimmed.
        assert_eq!(r.available(), 80);
    }

    #[test]
    fn push_stops_at_the_fifo_bound_and_resumes_after_pop() {
        let mut r = Resampler::new(SampleRate::WIDEBAND, SampleRate::NARROWBAND).unwrap();
        let input = tone(700.0, SampleRate::WIDEBAND, 16_000 * 5);
        let consumed = r.push(&input);
        assert!(consumed < input.len(), "5 s cannot fit in a 2 s FIFO");
        let held = r.available();
        assert!(held <= 2 * 8_000, "held {held}");
        assert!(held + 160 > 2 * 8_000, "stopped early at {held}");
        assert!(r.capacity() >= held + 2 * 160);
        // Refused input stays refused until there is room.
        assert_eq!(r.push(&input[consumed..]), 0);
        let mut out = vec![0; 4_000];
        assert_eq!(r.pop_into(&mut out), 4_000);
        let more = r.push(&input[consumed..]);
        assert!(more > 0 && more <= 4_000 * 2 + 320, "resumed with {more}");
    }

    #[test]
    fn flush_emits_exactly_the_rounded_output_length() {
        for from in SampleRate::SUPPORTED {
            for len in [1usize, 7, 441, 959, 1000] {
                let mut r = Resampler::new(from, SampleRate::NARROWBAND).unwrap();
                let input = tone(500.0, from, len);
                assert_eq!(r.push(&input), len);
                r.flush();
                let expected = ((len as u64 * 8_000 + u64::from(from.hz()) / 2)
                    / u64::from(from.hz())) as usize;
                assert_eq!(r.available(), expected, "{from} len {len}");
            }
        }
    }

    #[test]
    fn flush_fits_even_when_the_fifo_is_at_its_push_bound() {
        let mut r = Resampler::new(SampleRate::HZ_44100, SampleRate::NARROWBAND).unwrap();
        let input = tone(300.0, SampleRate::HZ_44100, 44_100 * 3);
        let consumed = r.push(&input);
        r.flush();
        let expected = (consumed as u64 * 8_000 + 22_050) / 44_100;
        assert_eq!(r.available() as u64, expected);
    }

    #[test]
    fn repeated_flushes_without_popping_stay_bounded() {
        let mut r = Resampler::new(SampleRate::HZ_22050, SampleRate::NARROWBAND).unwrap();
        let input = tone(800.0, SampleRate::HZ_22050, 22_050 * 3);
        let mut offset = r.push(&input);
        for _ in 0..10 {
            r.flush();
            assert!(r.available() <= r.capacity());
            offset += r.push(&input[offset..offset + 300]);
        }
        r.flush();
        assert_eq!(
            r.available(),
            r.capacity(),
            "the FIFO ends full, nothing more"
        );
    }

    #[test]
    fn stream_continues_time_aligned_after_flush() {
        let mut r = Resampler::new(SampleRate::NARROWBAND, SampleRate::WIDEBAND).unwrap();
        let input = tone(1000.0, SampleRate::NARROWBAND, 1_600);
        r.push(&input);
        r.flush();
        let first = drain(&mut r);
        r.push(&input);
        r.flush();
        let second = drain(&mut r);
        assert_eq!(first.len(), 3_200);
        assert_eq!(first, second, "each segment starts from a clean filter");
    }

    #[test]
    fn reset_drops_queued_output_and_filter_memory() {
        let mut r = Resampler::new(SampleRate::HZ_24000, SampleRate::NARROWBAND).unwrap();
        r.push(&tone(1000.0, SampleRate::HZ_24000, 4_800 + 100));
        assert!(r.available() > 0);
        r.reset();
        assert_eq!(r.available(), 0);
        // After reset, silence in gives exact silence out: no staged input or ringing survives.
        r.push(&[0; 4_800]);
        r.flush();
        let out = drain(&mut r);
        assert_eq!(out.len(), 1_600);
        assert!(out.iter().all(|&s| s == 0), "leftover state leaked");
    }

    #[test]
    fn full_scale_overshoot_saturates_instead_of_wrapping() {
        let mut r = Resampler::new(SampleRate::HZ_48000, SampleRate::NARROWBAND).unwrap();
        let mut input = vec![0i16; 4_800];
        input.extend(std::iter::repeat_n(i16::MAX, 9_600));
        r.push(&input);
        r.flush();
        let out = drain(&mut r);
        assert!(out.contains(&i16::MAX), "the step's overshoot must clip");
        // Wrapping would turn the overshoot into values near -32768.
        assert!(
            out.iter().all(|&s| s > -8_000),
            "wrapped: {:?}",
            out.iter().min()
        );
    }

    #[test]
    fn float_to_i16_rounds_to_nearest_and_saturates() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(100.4 / FULL_SCALE), 100);
        assert_eq!(to_i16(100.5 / FULL_SCALE), 101);
        assert_eq!(to_i16(-100.5 / FULL_SCALE), -101);
        assert_eq!(to_i16(-0.4 / FULL_SCALE), 0);
        assert_eq!(to_i16(1.5), i16::MAX);
        assert_eq!(to_i16(-1.5), i16::MIN);
        assert_eq!(to_i16(f32::NAN), 0);
    }

    /// The obvious form `to_i16` must agree with everywhere.
    fn to_i16_reference(sample: f32) -> i16 {
        let scaled = sample * FULL_SCALE;
        (scaled + 0.5f32.copysign(scaled)) as i16
    }

    #[test]
    fn float_to_i16_matches_the_saturating_cast_on_every_quarter_step() {
        // Quarter steps hit every tie (x.5) and both sides of it, past both clipping points.
        for quarter in -140_000i32..=140_000 {
            let sample = quarter as f32 / 4.0 / FULL_SCALE;
            assert_eq!(to_i16(sample), to_i16_reference(sample), "{quarter}/4");
        }
    }

    proptest::proptest! {
        #[test]
        fn float_to_i16_matches_the_saturating_cast(sample in proptest::num::f32::ANY) {
            proptest::prop_assert_eq!(to_i16(sample), to_i16_reference(sample));
        }
    }

    #[test]
    fn fifo_wraps_around_in_order() {
        let mut fifo = Fifo::with_capacity(5);
        assert_eq!(fifo.extend_from(&[1, 2, 3, 4]), 4);
        let mut out = [0; 3];
        assert_eq!(fifo.pop_into(&mut out), 3);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(fifo.extend_from(&[5, 6, 7, 8, 9]), 4);
        assert_eq!(fifo.extend_from(&[10]), 0);
        let mut out = [0; 6];
        assert_eq!(fifo.pop_into(&mut out), 5);
        assert_eq!(out[..5], [4, 5, 6, 7, 8]);
        assert_eq!(fifo.extend_converted(&[11.0 / FULL_SCALE]), 1);
        assert_eq!(fifo.pop_into(&mut out), 1);
        assert_eq!(out[0], 11);
    }
}
