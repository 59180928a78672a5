//! G.711 µ-law encode and decode, bit-exact with the ITU-T G.191 Software Tool Library.
//!
//! Twilio Media Streams carry 8 kHz G.711 µ-law, so every inbound frame is decoded here and every
//! outbound frame is encoded here. The functions are pure, never allocate and never panic, so
//! they are safe on the per-frame hot path and on bytes straight from the network.
//!
//! Algorithm (written from the G.711 description, checked against the STL `sweep` vectors in
//! `engine/tests/codec_golden.rs`):
//!
//! - **Encode.** Work on the 14 most significant bits. The magnitude of a negative sample is its
//!   one's complement (`!x`, not `-x`): this is what the STL reference does, and it differs
//!   from the common "bias 0x84" encoder on 127 negative boundary inputs. Add the bias 33,
//!   clip to `0x1FFF`, find the segment from the bit length, take four mantissa bits, then
//!   transmit the seven magnitude bits inverted with the sign bit set for `x >= 0`.
//! - **Decode.** Invert the byte, read exponent `e` (bits 4–6) and mantissa `m` (bits 0–3); the
//!   magnitude is `(0x80 << e) + step·m + step/2 − 132` with `step = 8 << e`, in 16-bit units.
//! - Both `0x7F` and `0xFF` decode to 0; 0 encodes to `0xFF` and −1 to `0x7F`.
//! - No zero-code suppression: full-scale negative audio is sent as `0x00`, which every
//!   decoder handles (the all-zero trap only mattered on T1 links, not on IP).
//!
//! Both directions use tables computed at compile time by `const fn`s: 256 `i16` for decode and
//! 16 KiB for encode (the code depends only on `x >> 2`), which is the fastest portable form.
//!
//! ```
//! use handset_engine::codec::{decode_sample, encode_sample};
//! assert_eq!(encode_sample(0), 0xFF);
//! assert_eq!(decode_sample(0x80), 32124);
//! assert_eq!(decode_sample(encode_sample(-8)), -8);
//! ```

use crate::frame::{MulawFrame, PcmFrame};
use crate::time::FRAME_SAMPLES;

/// The bias added to the 14-bit magnitude before the segment search (132 in 16-bit units).
const BIAS_14: u16 = 33;

/// The largest biased 14-bit magnitude; louder samples clip to the top code of their sign.
const CLIP_14: u16 = 0x1FFF;

/// Every µ-law code decoded to 16-bit linear PCM, indexed by the code.
const DECODE_TABLE: [i16; 256] = build_decode_table();

/// The µ-law code for every 14-bit input `x >> 2`, indexed by its low 14 bits as unsigned.
const ENCODE_TABLE: [u8; 1 << 14] = build_encode_table();

/// Decodes one µ-law code to 16-bit linear PCM (range −32124..=32124).
pub const fn decode_sample(code: u8) -> i16 {
    DECODE_TABLE[code as usize]
}

/// Encodes one 16-bit linear PCM sample to µ-law, exactly as the G.191 reference encoder does.
pub fn encode_sample(pcm: i16) -> u8 {
    // `pcm >> 2` is in -8192..=8191; masking to 14 bits maps it one-to-one onto the table.
    ENCODE_TABLE[((pcm >> 2) as u16 & 0x3FFF) as usize]
}

/// Decodes `min(src.len(), dst.len())` codes from `src` into `dst`; returns that count.
pub fn decode_into(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (out, &code) in dst[..n].iter_mut().zip(&src[..n]) {
        *out = decode_sample(code);
    }
    n
}

/// Encodes `min(src.len(), dst.len())` samples from `src` into `dst`; returns that count.
pub fn encode_into(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len());
    for (out, &pcm) in dst[..n].iter_mut().zip(&src[..n]) {
        *out = encode_sample(pcm);
    }
    n
}

/// Decodes one 20 ms µ-law frame to linear PCM.
pub fn decode_frame(frame: &MulawFrame) -> PcmFrame {
    let mut pcm = [0i16; FRAME_SAMPLES];
    decode_into(&frame.0, &mut pcm);
    PcmFrame(pcm)
}

/// Encodes one 20 ms linear PCM frame to µ-law.
pub fn encode_frame(frame: &PcmFrame) -> MulawFrame {
    let mut codes = [0u8; FRAME_SAMPLES];
    encode_into(&frame.0, &mut codes);
    MulawFrame(codes)
}

/// The quantisation step, in 16-bit units, of the segment a µ-law code belongs to
/// (8 for the segment around zero, doubling up to 1024 for the loudest).
pub const fn step_size(code: u8) -> i16 {
    8 << ((!code >> 4) & 0x07)
}

/// The reference decoder, evaluated once per code at compile time.
const fn decode_arithmetic(code: u8) -> i16 {
    let inverted = !code;
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = (inverted & 0x0F) as i16;
    let step = 8i16 << exponent;
    // At most 16384 + 15 * 1024 + 512 - 132 = 32124, so this fits in i16.
    let magnitude = (0x80i16 << exponent) + step * mantissa + step / 2 - 132;
    if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// The reference encoder on a 14-bit sample `x14 = x >> 2` (range −8192..=8191).
const fn encode_arithmetic(x14: i16) -> u8 {
    let (sign, magnitude) = if x14 < 0 {
        // One's complement, as the reference does: !x14 is in 0..=8191.
        (0x00u8, !x14 as u16)
    } else {
        (0x80u8, x14 as u16)
    };
    let mut biased = magnitude + BIAS_14;
    if biased > CLIP_14 {
        biased = CLIP_14;
    }
    // Segment 1..=8: one more than the bit length of `biased >> 6` (which is below 128).
    let segment = 1 + (16 - (biased >> 6).leading_zeros()) as u8;
    let mantissa = ((biased >> segment) & 0x0F) as u8;
    sign | ((8 - segment) << 4) | (15 - mantissa)
}

const fn build_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = decode_arithmetic(code as u8);
        code += 1;
    }
    table
}

const fn build_encode_table() -> [u8; 1 << 14] {
    let mut table = [0u8; 1 << 14];
    let mut index = 0;
    while index < (1 << 14) {
        // Sign-extend the 14-bit index back to the value of `x >> 2`.
        let x14 = if index >= (1 << 13) {
            index as i16 - (1 << 14)
        } else {
            index as i16
        };
        table[index] = encode_arithmetic(x14);
        index += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_reference_values() {
        let expected = [
            (0x00, -32124),
            (0x01, -31100),
            (0x0F, -16764),
            (0x10, -15996),
            (0x7E, -8),
            (0x7F, 0),
            (0x80, 32124),
            (0x81, 31100),
            (0xFE, 8),
            (0xFF, 0),
        ];
        for (code, linear) in expected {
            assert_eq!(decode_sample(code), linear, "code {code:#04x}");
        }
    }

    #[test]
    fn zero_and_minus_one_take_the_two_zero_codes() {
        assert_eq!(encode_sample(0), 0xFF);
        assert_eq!(encode_sample(-1), 0x7F);
        assert_eq!(encode_sample(i16::MAX), 0x80);
        assert_eq!(encode_sample(i16::MIN), 0x00);
    }

    #[test]
    fn encode_table_matches_arithmetic_for_every_sample() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(encode_sample(x), encode_arithmetic(x >> 2), "x = {x}");
        }
    }

    #[test]
    fn negative_magnitude_uses_ones_complement() {
        // The bias-0x84 encoder with `-x` sends 0x00 here; the reference sends 0x01.
        assert_eq!(encode_sample(-31612), 0x01);
    }

    #[test]
    fn step_size_doubles_per_segment() {
        assert_eq!(step_size(0xFF), 8);
        assert_eq!(step_size(0x7F), 8);
        assert_eq!(step_size(0xEF), 16);
        assert_eq!(step_size(0x80), 1024);
        assert_eq!(step_size(0x00), 1024);
    }

    #[test]
    fn slice_functions_stop_at_the_shorter_slice() {
        let mut pcm = [7i16; 3];
        assert_eq!(decode_into(&[0x80, 0x00, 0xFF, 0x7E], &mut pcm), 3);
        assert_eq!(pcm, [32124, -32124, 0]);
        let mut codes = [0u8; 4];
        assert_eq!(encode_into(&[0, -1], &mut codes), 2);
        assert_eq!(codes, [0xFF, 0x7F, 0, 0]);
    }

    #[test]
    fn frame_round_trip_keeps_reconstruction_levels() {
        let mut pcm = PcmFrame::SILENCE;
        for (i, s) in pcm.0.iter_mut().enumerate() {
            *s = decode_sample(i as u8);
        }
        let codes = encode_frame(&pcm);
        assert_eq!(decode_frame(&codes), pcm);
        assert_eq!(decode_frame(&MulawFrame::SILENCE), PcmFrame::SILENCE);
    }
}
