//! Fixed-size 20 ms frames and inbound media validation.
//!
//! Frames are plain `Copy` arrays so they cross rings and queues without allocation.

use crate::time::{FRAME_SAMPLES, WIDEBAND_FRAME_SAMPLES};

/// µ-law silence: the code for linear 0.
pub const MULAW_SILENCE: u8 = 0xFF;

/// One 20 ms frame of 8 kHz µ-law, exactly as it travels to and from Twilio.
#[derive(Clone, Copy, Eq, PartialEq)]
pub struct MulawFrame(pub [u8; FRAME_SAMPLES]);

impl MulawFrame {
    /// A frame of µ-law silence.
    pub const SILENCE: Self = Self([MULAW_SILENCE; FRAME_SAMPLES]);

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8; FRAME_SAMPLES] {
        &self.0
    }
}

impl std::fmt::Debug for MulawFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MulawFrame({:02x?}..)", &self.0[..4])
    }
}

/// One 20 ms frame of 8 kHz linear PCM.
#[derive(Clone, Copy, Eq, PartialEq)]
pub struct PcmFrame(pub [i16; FRAME_SAMPLES]);

impl PcmFrame {
    /// A frame of digital silence.
    pub const SILENCE: Self = Self([0; FRAME_SAMPLES]);
}

impl std::fmt::Debug for PcmFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PcmFrame({:?}..)", &self.0[..4])
    }
}

/// One 20 ms frame of 16 kHz linear PCM: what the agent hears.
#[derive(Clone, Copy, Eq, PartialEq)]
pub struct WidebandFrame(pub [i16; WIDEBAND_FRAME_SAMPLES]);

impl WidebandFrame {
    /// A frame of digital silence.
    pub const SILENCE: Self = Self([0; WIDEBAND_FRAME_SAMPLES]);
}

impl std::fmt::Debug for WidebandFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WidebandFrame({:?}..)", &self.0[..4])
    }
}

/// Identifies a playback mark. The shell maps it to the `mark.name` string on the wire.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct MarkId(pub u64);

/// One validated inbound `media` message from Twilio.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct InboundMedia {
    /// Twilio's `media.chunk`: starts at 1 and counts media messages.
    pub chunk: u64,
    /// Twilio's `media.timestamp`: milliseconds since the stream started.
    pub timestamp_ms: u64,
    /// The 20 ms of µ-law audio.
    pub payload: MulawFrame,
}

/// Why an inbound `media` message was rejected. Each one is a counted drop, never a panic.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum MediaError {
    /// `media.chunk` was not a decimal integer.
    #[error("media.chunk is not a decimal integer")]
    BadChunk,
    /// `media.payload` could not be decoded (not base64).
    #[error("media payload is not valid base64")]
    Encoding,
    /// `media.timestamp` was not a decimal integer.
    #[error("media.timestamp is not a decimal integer")]
    BadTimestamp,
    /// The decoded payload was not one 20 ms frame.
    #[error("media payload is {got} bytes, expected 160")]
    PayloadLength {
        /// Bytes received.
        got: usize,
    },
}

impl InboundMedia {
    /// Validates the fields of a `media` message as they appear on the wire (Twilio sends the
    /// numbers as JSON strings). `payload` is the base64-decoded µ-law.
    pub fn parse(chunk: &str, timestamp: &str, payload: &[u8]) -> Result<Self, MediaError> {
        let chunk = parse_decimal(chunk).ok_or(MediaError::BadChunk)?;
        let timestamp_ms = parse_decimal(timestamp).ok_or(MediaError::BadTimestamp)?;
        let payload: [u8; FRAME_SAMPLES] = payload
            .try_into()
            .map_err(|_| MediaError::PayloadLength { got: payload.len() })?;
        Ok(Self {
            chunk,
            timestamp_ms,
            payload: MulawFrame(payload),
        })
    }
}

/// Parses a plain decimal integer: ASCII digits only, 1 to 19 of them (no sign, no spaces).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_twilio_media_fields() {
        let m = InboundMedia::parse("2", "5", &[0x7F; 160]).unwrap();
        assert_eq!((m.chunk, m.timestamp_ms), (2, 5));
    }

    #[test]
    fn rejects_bad_media_fields() {
        let p = [0u8; 160];
        assert_eq!(InboundMedia::parse("x", "5", &p), Err(MediaError::BadChunk));
        assert_eq!(
            InboundMedia::parse("-1", "5", &p),
            Err(MediaError::BadChunk)
        );
        assert_eq!(InboundMedia::parse("", "5", &p), Err(MediaError::BadChunk));
        assert_eq!(
            InboundMedia::parse("1", " 5", &p),
            Err(MediaError::BadTimestamp)
        );
        assert_eq!(
            InboundMedia::parse("1", "99999999999999999999", &p),
            Err(MediaError::BadTimestamp)
        );
        assert_eq!(
            InboundMedia::parse("1", "5", &p[..159]),
            Err(MediaError::PayloadLength { got: 159 })
        );
    }
}
