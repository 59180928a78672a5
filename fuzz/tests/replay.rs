//! Replays every committed fuzz input through the same target functions the fuzzers run, on
//! stable Rust with no fuzzing runtime, so CI catches regressions the fuzzers once explored.
//!
//! Inputs live in `corpus/<target>/` (the minimized corpus) and `regressions/<target>/`
//! (inputs that once failed and are fixed). Inputs for open findings live in
//! `regressions/open/<target>/` and are replayed only by the ignored test
//! `open_findings_still_reproduce`.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs every file under `<base>/<target>/`; returns (files run, failures).
fn replay(base: &str) -> (usize, Vec<String>) {
    let mut run = 0;
    let mut failures = Vec::new();
    for (name, target) in handset_fuzz::TARGETS {
        for file in inputs(&root().join(base).join(name)) {
            let data = fs::read(&file).unwrap();
            run += 1;
            if panic::catch_unwind(|| target(&data)).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    (run, failures)
}

#[test]
fn corpus_and_fixed_regressions_replay_cleanly() {
    let (corpus, mut failures) = replay("corpus");
    let (regressions, more) = replay("regressions");
    failures.extend(more);
    eprintln!("replayed {corpus} corpus inputs and {regressions} regression inputs");
    assert!(
        corpus > 0,
        "no corpus found under {}",
        root().join("corpus").display()
    );
    for (name, _) in handset_fuzz::TARGETS {
        assert!(
            !inputs(&root().join("corpus").join(name)).is_empty(),
            "empty corpus for {name}"
        );
    }
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "open findings: each input still fails until the product is fixed"]
fn open_findings_still_reproduce() {
    let (run, failures) = replay("regressions/open");
    eprintln!("{} of {run} open findings reproduce", failures.len());
    assert_eq!(
        failures.len(),
        run,
        "some open findings no longer fail: move them"
    );
}
