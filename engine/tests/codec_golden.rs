//! µ-law against the ITU-T G.191 STL golden vectors, plus property tests of the codec.
//!
//! The STL's G.711 test vectors are three files of 65,536 little-endian 16-bit words: `sweep.src`
//! is every 16-bit value in order (−32768 … 32767), `sweep-r.u` the reference encoder's code for
//! each (in the low byte, high byte zero), `sweep-r.u-u` those codes decoded by the reference
//! decoder. The input is generated here and the codec's outputs, laid out the same way, are
//! compared with the CRC-32 (IEEE) of the reference files, so the check needs nothing outside
//! the repository. When the files themselves are in `../shared/data/g711-stl/` beside the
//! repository (CI has them), the tests also compare element by element, which names the first
//! samples that differ. Each test says on stderr which comparison ran.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use handset_engine::codec::{decode_into, decode_sample, encode_into, encode_sample, step_size};
use proptest::prelude::*;

const WORDS: usize = 65_536;

/// CRC-32 (IEEE) of `sweep.src`: every i16 from −32768 to 32767, little-endian.
const SWEEP_SRC_CRC: u32 = 0xc8ba_7682;
/// CRC-32 (IEEE) of `sweep-r.u`: the reference µ-law code of each sweep sample, one per word.
const SWEEP_CODES_CRC: u32 = 0xcd17_0e15;
/// CRC-32 (IEEE) of `sweep-r.u-u`: each code of `sweep-r.u` decoded by the reference decoder.
const SWEEP_DECODED_CRC: u32 = 0x6364_1c01;

/// The STL sweep: every 16-bit value in order.
fn sweep() -> Vec<i16> {
    (i16::MIN..=i16::MAX).collect()
}

/// CRC-32 (IEEE) of 16-bit words written little-endian, as the STL files store them.
fn crc_of_words(words: impl IntoIterator<Item = u16>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for w in words {
        hasher.update(&w.to_le_bytes());
    }
    hasher.finalize()
}

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/g711-stl")
}

/// The three STL files, if they are beside the repository.
struct StlVectors {
    src: Vec<u16>,
    codes: Vec<u16>,
    decoded: Vec<u16>,
}

/// Reads the STL files when `../shared/data/g711-stl/` exists, and says on stderr which
/// comparison the calling test runs: with `eprintln!` (shown with a failure or `--nocapture`),
/// and once per run straight to stderr, past the test harness's capture, so a passing run's log
/// says it too. A directory that exists but holds a short or unreadable file fails the test:
/// CI's copy must be whole.
fn stl_vectors(test: &str) -> Option<StlVectors> {
    static ANNOUNCED: Once = Once::new();
    let dir = vector_dir();
    let present = dir.is_dir();
    let which = if present {
        format!(
            "CRC-32 check and element-by-element comparison with the STL files in {}",
            dir.display()
        )
    } else {
        format!(
            "CRC-32 check against the known STL outputs ({} not present, \
             no element-by-element comparison)",
            dir.display()
        )
    };
    eprintln!("{test}: {which}");
    ANNOUNCED.call_once(|| {
        let _ = writeln!(std::io::stderr(), "codec_golden: {which}");
    });
    if !present {
        return None;
    }
    Some(StlVectors {
        src: read_words(&dir, "sweep.src"),
        codes: read_words(&dir, "sweep-r.u"),
        decoded: read_words(&dir, "sweep-r.u-u"),
    })
}

/// Reads one vector file as 65,536 little-endian words, failing with the path if it is unreadable.
fn read_words(dir: &Path, name: &str) -> Vec<u16> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read G.711 golden vector {} ({e})", path.display()));
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
fn generated_sweep_is_the_stl_input() {
    let src = sweep();
    assert_eq!(src.len(), WORDS);
    let crc = crc_of_words(src.iter().map(|&x| x as u16));
    assert_eq!(
        crc, SWEEP_SRC_CRC,
        "generated sweep has CRC {crc:08x}, sweep.src has {SWEEP_SRC_CRC:08x}"
    );
    if let Some(stl) = stl_vectors("generated_sweep_is_the_stl_input") {
        assert_eq!(
            crc_of_words(stl.src.iter().copied()),
            SWEEP_SRC_CRC,
            "sweep.src CRC"
        );
        assert!(
            src.iter().zip(&stl.src).all(|(&a, &b)| a as u16 == b),
            "generated sweep differs from sweep.src"
        );
    }
}

#[test]
fn encoder_matches_stl_on_all_65536_sweep_samples() {
    let src = sweep();
    let codes: Vec<u8> = src.iter().map(|&x| encode_sample(x)).collect();
    let crc = crc_of_words(codes.iter().map(|&c| u16::from(c)));
    assert_eq!(
        crc, SWEEP_CODES_CRC,
        "encoded sweep has CRC {crc:08x}, sweep-r.u has {SWEEP_CODES_CRC:08x}"
    );
    let Some(stl) = stl_vectors("encoder_matches_stl_on_all_65536_sweep_samples") else {
        return;
    };
    assert_eq!(
        crc_of_words(stl.codes.iter().copied()),
        SWEEP_CODES_CRC,
        "sweep-r.u CRC"
    );
    let mut mismatches = Vec::new();
    for (&x, &code) in stl.src.iter().zip(&stl.codes) {
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
}

#[test]
fn slice_encoder_matches_stl_sweep() {
    let src = sweep();
    let mut out = vec![0u8; WORDS];
    assert_eq!(encode_into(&src, &mut out), WORDS);
    let crc = crc_of_words(out.iter().map(|&c| u16::from(c)));
    assert_eq!(
        crc, SWEEP_CODES_CRC,
        "slice-encoded sweep has CRC {crc:08x}, sweep-r.u has {SWEEP_CODES_CRC:08x}"
    );
    if let Some(stl) = stl_vectors("slice_encoder_matches_stl_sweep") {
        let codes: Vec<u8> = stl.codes.iter().map(|&c| c as u8).collect();
        assert!(out == codes, "slice encoder differs from sweep-r.u");
    }
}

#[test]
fn decoder_matches_stl_for_every_code() {
    // The codes to decode: the reference file's when present, else the encoder's, which the
    // encoder tests hold to the reference's CRC.
    let stl = stl_vectors("decoder_matches_stl_for_every_code");
    let codes: Vec<u8> = match &stl {
        Some(stl) => stl.codes.iter().map(|&c| c as u8).collect(),
        None => sweep().into_iter().map(encode_sample).collect(),
    };
    let decoded: Vec<i16> = codes.iter().map(|&c| decode_sample(c)).collect();
    let crc = crc_of_words(decoded.iter().map(|&x| x as u16));
    assert_eq!(
        crc, SWEEP_DECODED_CRC,
        "decoded codes have CRC {crc:08x}, sweep-r.u-u has {SWEEP_DECODED_CRC:08x}"
    );
    let mut checked = [false; 256];
    for &code in &codes {
        checked[code as usize] = true;
    }
    assert!(
        checked.iter().all(|&c| c),
        "the sweep does not reach all 256 codes: missing {:?}",
        (0..256).filter(|&c| !checked[c]).collect::<Vec<_>>()
    );
    let mut pcm = vec![0i16; WORDS];
    assert_eq!(decode_into(&codes, &mut pcm), WORDS);
    assert!(
        pcm == decoded,
        "slice decoder differs from per-sample decoder"
    );
    if let Some(stl) = stl {
        assert_eq!(
            crc_of_words(stl.decoded.iter().copied()),
            SWEEP_DECODED_CRC,
            "sweep-r.u-u CRC"
        );
        for (&code, &linear) in codes.iter().zip(&stl.decoded) {
            assert_eq!(decode_sample(code), linear as i16, "code {code:#04x}");
        }
    }
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
