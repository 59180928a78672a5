//! Fuzz targets for Handset, as plain functions over a byte slice.
//!
//! Each module's `run(data)` is one target: it drives a public API with the input and asserts
//! the API's documented invariants (panicking on a violation), not only the absence of panics.
//! The libFuzzer binaries in `fuzz_targets/` call these functions, and so does the stable replay
//! test in `tests/replay.rs`, which feeds every committed corpus file through them.
//!
//! Assumptions: the engine is sans-IO, so the time-driven targets build their own virtual clock
//! from one real `Instant` taken at the start of each input; only differences matter.

pub mod form_signature;
pub mod jitter_ops;
pub mod media_stream;
pub mod pacer_ops;

/// One fuzz target: checks one input, panicking on a violated invariant.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and tools.
pub const TARGETS: [(&str, Target); 4] = [
    ("media_stream", media_stream::run),
    ("form_signature", form_signature::run),
    ("jitter_ops", jitter_ops::run),
    ("pacer_ops", pacer_ops::run),
];

/// An arbitrary origin for a virtual clock: the engine only sees differences from it.
#[allow(clippy::disallowed_methods)] // the fuzz harness, not the engine, reads the clock once
fn epoch() -> std::time::Instant {
    std::time::Instant::now()
}
