//! µ-law helpers the jitter buffer needs without decoding to linear PCM: a loudness test (to pick
//! frames that are safe to drop when shrinking the delay) and a 6 dB-step attenuation (to fade a
//! repeated frame during concealment).
//!
//! A G.711 µ-law byte is the bitwise inverse of `sign | exponent(3 bits) | mantissa(4 bits)`. The
//! magnitude is roughly `(mantissa·8 + 132)·2^exponent − 132` (14-bit scale), so the 7-bit
//! magnitude code `!byte & 0x7F` is a logarithmic loudness (0 for both zero codes 0xFF and 0x7F),
//! and lowering the exponent by one halves the magnitude (−6 dB). Both are exact enough for
//! concealment and silence detection; neither is used where bit-exact G.711 matters.

use crate::frame::{MULAW_SILENCE, MulawFrame};
use crate::time::FRAME_SAMPLES;

/// Frames whose mean magnitude code is at or below this are "quiet". Code 16 is exponent 1,
/// mantissa 0: 132 on the 14-bit scale (about −36 dBFS); voiced speech averages codes of 50 and
/// more, so a frame averaging at or below 16 is background noise or silence.
pub(super) const QUIET_MEAN_CODE: u32 = 16;

/// The sum of the magnitude codes of a frame (0 for silence, at most 127·160).
pub(super) fn loudness(frame: &MulawFrame) -> u32 {
    frame.0.iter().map(|&b| u32::from(!b & 0x7F)).sum()
}

/// Whether the frame is quiet enough to drop without an audible cut.
pub(super) fn is_quiet(frame: &MulawFrame) -> bool {
    loudness(frame) <= QUIET_MEAN_CODE * FRAME_SAMPLES as u32
}

/// Attenuates one µ-law byte by `halvings` × 6 dB. Magnitudes that reach zero become
/// [`MULAW_SILENCE`].
pub(super) fn attenuate_byte(byte: u8, halvings: u32) -> u8 {
    let code = !byte;
    let sign = code & 0x80;
    let exponent = u32::from((code >> 4) & 0x07);
    let mantissa = code & 0x0F;
    let (exponent, mantissa) = if halvings <= exponent {
        (exponent - halvings, mantissa)
    } else {
        // Below exponent 0 the magnitude is linear in the mantissa (mantissa·8), so the
        // remaining halvings shift the mantissa.
        let rest = halvings - exponent;
        (0, mantissa.checked_shr(rest).unwrap_or(0))
    };
    if exponent == 0 && mantissa == 0 {
        return MULAW_SILENCE;
    }
    // `exponent` is at most 7 here, so the cast cannot truncate.
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// `frame` attenuated by `halvings` × 6 dB.
pub(super) fn attenuate(frame: &MulawFrame, halvings: u32) -> MulawFrame {
    let mut out = *frame;
    for b in &mut out.0 {
        *b = attenuate_byte(*b, halvings);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magnitude of a µ-law byte on the 14-bit scale (the G.711 expansion without sign).
    fn magnitude(byte: u8) -> i32 {
        let code = !byte;
        let exponent = i32::from((code >> 4) & 0x07);
        let mantissa = i32::from(code & 0x0F);
        (((mantissa << 3) + 0x84) << exponent) - 0x84
    }

    #[test]
    fn both_zero_codes_are_silent_and_loud_codes_are_not_quiet() {
        assert_eq!(magnitude(0xFF), 0);
        assert_eq!(magnitude(0x7F), 0);
        assert!(is_quiet(&MulawFrame::SILENCE));
        assert!(is_quiet(&MulawFrame([0x7F; FRAME_SAMPLES])));
        assert!(!is_quiet(&MulawFrame([0x80; FRAME_SAMPLES])));
        assert!(!is_quiet(&MulawFrame([0xC0; FRAME_SAMPLES])));
        assert_eq!(loudness(&MulawFrame([0x80; FRAME_SAMPLES])), 127 * 160);
    }

    #[test]
    fn each_halving_roughly_halves_the_magnitude_and_keeps_the_sign() {
        for byte in 0..=255u8 {
            let m0 = magnitude(byte);
            let once = attenuate_byte(byte, 1);
            let m1 = magnitude(once);
            assert!(m1 <= m0, "byte {byte:#04x}: {m1} > {m0}");
            // Within one exponent step of a true halving (the 132 bias makes it inexact).
            assert!((m1 - m0 / 2).abs() <= 70, "byte {byte:#04x}: {m0} -> {m1}");
            if m1 != 0 {
                assert_eq!(once & 0x80, byte & 0x80, "sign of {byte:#04x}");
            }
        }
    }

    #[test]
    fn enough_halvings_reach_silence_and_zero_halvings_is_identity() {
        for byte in 0..=255u8 {
            assert_eq!(attenuate_byte(byte, 12), MULAW_SILENCE, "{byte:#04x}");
            let same = attenuate_byte(byte, 0);
            assert_eq!(magnitude(same), magnitude(byte), "{byte:#04x}");
        }
        assert_eq!(attenuate_byte(0x00, 40), MULAW_SILENCE);
    }
}
