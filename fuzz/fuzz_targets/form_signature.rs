//! libFuzzer entry point for `handset_fuzz::form_signature`; the checks live in the library so the
//! stable replay test (tests/replay.rs) runs exactly the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handset_fuzz::form_signature::run(data));
