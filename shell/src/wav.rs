//! 16-bit PCM WAV files (Twilio recordings, the simulator's audio), read with `hound`.

use std::io::Cursor;

/// The samples of a 16-bit integer PCM WAV held in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcm16 {
    /// Sample rate, Hz.
    pub rate: u32,
    /// Channels, interleaved in `samples`.
    pub channels: u16,
    /// Interleaved samples.
    pub samples: Vec<i16>,
}

impl Pcm16 {
    /// Reads a RIFF/WAVE file of 16-bit integer PCM (plain or `WAVE_FORMAT_EXTENSIBLE`). Any
    /// other format, and a file cut short, is refused with the reason.
    pub fn read(bytes: &[u8]) -> Result<Self, String> {
        let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
        let spec = reader.spec();
        if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
            return Err(format!(
                "{:?} samples of {} bits; need 16-bit PCM",
                spec.sample_format, spec.bits_per_sample
            ));
        }
        let samples = reader
            .into_samples::<i16>()
            .collect::<Result<Vec<i16>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            rate: spec.sample_rate,
            channels: spec.channels,
            samples,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A WAV of `samples` in `channels` interleaved channels at `rate`, `bits` per sample.
    pub(crate) fn wav(rate: u32, channels: u16, bits: u16, samples: &[i16]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for s in samples {
            if bits == 8 {
                writer.write_sample(*s as i8).unwrap();
            } else {
                writer.write_sample(*s).unwrap();
            }
        }
        writer.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn reads_16_bit_pcm_and_refuses_other_formats_and_cut_files() {
        let w = wav(8_000, 1, 16, &[1, -2, 3]);
        assert_eq!(
            Pcm16::read(&w),
            Ok(Pcm16 {
                rate: 8_000,
                channels: 1,
                samples: vec![1, -2, 3]
            })
        );
        let stereo = Pcm16::read(&wav(16_000, 2, 16, &[1, 2, 3, 4])).unwrap();
        assert_eq!(
            (stereo.rate, stereo.channels, stereo.samples.len()),
            (16_000, 2, 4)
        );
        assert!(
            Pcm16::read(&wav(8_000, 1, 8, &[1]))
                .unwrap_err()
                .contains("8 bits")
        );
        assert!(Pcm16::read(b"not a wav").is_err());
        assert!(Pcm16::read(b"RIFF").is_err());
        assert!(Pcm16::read(&w[..w.len() - 1]).is_err(), "a cut sample");
    }
}
