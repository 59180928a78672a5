//! µ-law against the ITU-T G.191 STL golden vectors, plus property tests of the codec.
//!
//! The vectors live outside the repository in `shared/data/g711-stl/` beside it (CI clones the
//! repository with `shared/` next to it). Each file is 65,536 little-endian 16-bit words:
//! `sweep.src` is a sweep through every 16-bit input, `sweep-r.u` the reference encoder's code
//! for each (low byte), `sweep-r.u-u` those codes decoded by the reference decoder.

use std::path::PathBuf;

use handset_engine::codec::{decode_into, decode_sample, encode_into, encode_sample, step_size};
use proptest::prelude::*;

const WORDS: usize = 65_536;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/g711-stl")
}

/// Reads one vector file as 65,536 little-endian words, failing with the path if it is missing.
fn read_words(name: &str) -> Vec<u16> {
    let path = vector_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read G.711 golden vector {} ({e}); the STL vectors must be in \
             shared/data/g711-stl/ beside the repository",
            path.display()
        )
    });
    assert_eq!(
        bytes.len(),
        WORDS * 2,
        "{} is {} bytes, expected {}",
        path.display(),
        bytes.len(),
        WORDS * 2
    );
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect()
}

#[test]
fn encoder_matches_stl_on_all_65536_sweep_samples() {
    let src = read_words("sweep.src");
    let codes = read_words("sweep-r.u");
    let mut mismatches = Vec::new();
    for (&x, &code) in src.iter().zip(&codes) {
        assert!(code <= 0xFF, "sweep-r.u word {code:#06x} is not a byte");
        let got = encode_sample(x as i16);
        if got != code as u8 {
            mismatches.push((x as i16, code as u8, got));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {WORDS} differ, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    // The sweep covers every 16-bit value, so this is exhaustive.
    let mut seen = vec![false; WORDS];
    for &x in &src {
        seen[x as usize] = true;
    }
    assert!(
        seen.iter().all(|&s| s),
        "sweep.src does not cover every i16"
    );
}

#[test]
fn slice_encoder_matches_stl_sweep() {
    let src: Vec<i16> = read_words("sweep.src").iter().map(|&x| x as i16).collect();
    let codes: Vec<u8> = read_words("sweep-r.u").iter().map(|&c| c as u8).collect();
    let mut out = vec![0u8; WORDS];
    assert_eq!(encode_into(&src, &mut out), WORDS);
    assert!(out == codes, "slice encoder differs from sweep-r.u");
}

#[test]
fn decoder_matches_stl_for_every_code() {
    let codes = read_words("sweep-r.u");
    let decoded = read_words("sweep-r.u-u");
    let mut checked = [false; 256];
    for (&code, &linear) in codes.iter().zip(&decoded) {
        let code = code as u8;
        assert_eq!(decode_sample(code), linear as i16, "code {code:#04x}");
        checked[code as usize] = true;
    }
    assert!(
        checked.iter().all(|&c| c),
        "the sweep does not reach all 256 codes: missing {:?}",
        (0..256).filter(|&c| !checked[c]).collect::<Vec<_>>()
    );
    let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
    let mut pcm = vec![0i16; WORDS];
    assert_eq!(decode_into(&bytes, &mut pcm), WORDS);
    assert!(
        pcm.iter().zip(&decoded).all(|(&a, &b)| a == b as i16),
        "slice decoder differs from sweep-r.u-u"
    );
}

#[test]
fn two_zero_codes_and_reencode_identity_except_0x7f() {
    assert_eq!(decode_sample(0x7F), 0);
    assert_eq!(decode_sample(0xFF), 0);
    assert_eq!(encode_sample(0), 0xFF);
    for code in 0..=255u8 {
        let again = encode_sample(decode_sample(code));
        if code == 0x7F {
            assert_eq!(again, 0xFF, "0x7F decodes to 0, which re-encodes to 0xFF");
        } else {
            assert_eq!(again, code, "enc(dec({code:#04x}))");
        }
    }
}

#[test]
fn reference_decode_table_values() {
    let table = [
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
    for (code, linear) in table {
        assert_eq!(decode_sample(code), linear, "code {code:#04x}");
    }
}

proptest! {
    #[test]
    fn round_trip_error_is_within_the_quantisation_step(x in any::<i16>()) {
        let code = encode_sample(x);
        let error = (i32::from(decode_sample(code)) - i32::from(x)).abs();
        let step = i32::from(step_size(code));
        if x.unsigned_abs() <= 32124 {
            // Half a step, plus the 2 LSBs the 14-bit reference drops and its one's complement.
            prop_assert!(error <= step / 2 + 4, "x {} code {:#04x} error {} step {}", x, code, error, step);
        } else {
            // Beyond the loudest reconstruction level the encoder clips.
            prop_assert!(error <= 32768 - 32124, "x {} clipped error {}", x, error);
        }
    }

    #[test]
    fn slice_api_equals_per_sample(pcm in proptest::collection::vec(any::<i16>(), 0..400),
                                   codes in proptest::collection::vec(any::<u8>(), 0..400),
                                   room in 0usize..400) {
        let mut out = vec![0u8; room];
        let n = encode_into(&pcm, &mut out);
        prop_assert_eq!(n, pcm.len().min(room));
        for i in 0..n {
            prop_assert_eq!(out[i], encode_sample(pcm[i]));
        }
        let mut lin = vec![0i16; room];
        let n = decode_into(&codes, &mut lin);
        prop_assert_eq!(n, codes.len().min(room));
        for i in 0..n {
            prop_assert_eq!(lin[i], decode_sample(codes[i]));
        }
    }
}
