//! The bad-input matrix: every hostile or broken input the server can meet on its HTTP routes
//! and its Media Streams WebSocket, each sent over a real TCP socket to a real server started
//! in-process, each with its defined outcome (a status, a close code, or "the call goes on and
//! the input is dropped"), while a healthy Twilio-emulating call runs alongside the whole time
//! and must hear exactly what an undisturbed call hears, with zero malformed messages, nothing
//! dropped and its server-side pacer never starved.
//!
//! Each case is a test of its own (`harness = false`, libtest-mimic; see [`main`]), and so is
//! the healthy call: `cargo test --test bad_input` runs them all in about 40 s, a filter runs
//! some (`cargo test --test bad_input ws::`), `-- --list` lists them.
//!
//! The cases come in families, a module each ([`Family`]); a family's table (its `CASES`) is
//! the specification of its cases, and its `run_case` knows how to send each of its
//! [`Input`]s and returns what was observed on the wire; [`Expect::check`] compares:
//!
//! - [`http`]: requests to the HTTP routes (bodies, signatures, methods, paths, headers);
//! - [`ws_upgrade`]: WebSocket upgrades on the media path that are refused;
//! - [`ws::start`]: the Media Streams WebSocket before and at `start`;
//! - [`ws::messages`]: messages a running call drops, and the call goes on;
//! - [`ws::connection`]: frames and the connection itself under a running call;
//! - [`healthy`]: the healthy call beside them all, and what it must hear;
//! - [`case`]: what the families share: the [`Case`], its [`Input`], [`Expect`] and
//!   [`Observed`], and the checks; [`ws`] holds what the WebSocket families share.
//!
//! A new case is a row in its family's table, with a new [`Input`] variant and its arm in the
//! family's `run_case` unless an existing one fits: [`Input::RawFrames`] writes hand-made
//! WebSocket frames ([`ws_frame`](ws::connection::ws_frame)) under a running call. Each case
//! uses its own call number (`100 +` its index in the list of every family's cases), so cases
//! run side by side.
//! Short limits come from the server's configuration variables (`WS_START_TIMEOUT`,
//! `WS_IDLE_TIMEOUT`, `WS_WRITE_TIMEOUT`, `HEADER_READ_TIMEOUT`), so the whole matrix runs in
//! seconds. Nothing is timed: waits are bounded only so a broken server fails instead of
//! hanging.

#[path = "../support/mod.rs"]
mod support;

mod case;
mod healthy;
mod http;
mod ws;
mod ws_upgrade;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use handset_engine::agent::echo::GREETING;
use handset_sim::CallOutcome;
use libtest_mimic::{Arguments, Failed, Trial};

use case::{Case, Expect, Input, Observed, check_counted};
use healthy::{HEALTHY, HEALTHY_LENGTH, healthy_audio};
use support::{Logs, TestServer, call_sid};

/// Server limits for the run (seconds, except the message size in bytes).
const LIMITS: &[(&str, &str)] = &[
    ("WS_START_TIMEOUT", "1"),
    ("WS_IDLE_TIMEOUT", "3"),
    ("WS_WRITE_TIMEOUT", "1"),
    ("WS_MAX_MESSAGE_BYTES", "65536"),
    ("HEADER_READ_TIMEOUT", "1"),
];

/// Upper bound on any single wait, so a server that never answers fails the test.
const PATIENCE: Duration = Duration::from_secs(15);

/// Server `media` messages in the greeting: the agent's last partial frame is padded.
fn greeting_frames() -> u64 {
    GREETING.len().div_ceil(160) as u64
}

/// A family of cases: its rows of the matrix, and how its inputs are sent.
#[derive(Clone, Copy, Debug)]
enum Family {
    Http,
    WsUpgrade,
    WsStart,
    WsMessages,
    WsConnection,
}

impl Family {
    /// Every family, in the order its cases are listed (and numbered).
    const ALL: [Self; 5] = [
        Self::Http,
        Self::WsUpgrade,
        Self::WsStart,
        Self::WsMessages,
        Self::WsConnection,
    ];

    /// The family's rows of the matrix.
    fn cases(self) -> &'static [Case] {
        match self {
            Self::Http => http::CASES,
            Self::WsUpgrade => ws_upgrade::CASES,
            Self::WsStart => ws::start::CASES,
            Self::WsMessages => ws::messages::CASES,
            Self::WsConnection => ws::connection::CASES,
        }
    }

    /// Sends `input`, one of the family's, as call `n`; returns what was observed on the wire.
    async fn run_case(self, server: &TestServer, input: Input, n: u32) -> Observed {
        match self {
            Self::Http => http::run_case(server, input, n).await,
            Self::WsUpgrade => ws_upgrade::run_case(server, input).await,
            Self::WsStart => ws::start::run_case(server, input, n).await,
            Self::WsMessages => ws::messages::run_case(server, input, n).await,
            Self::WsConnection => ws::connection::run_case(server, input, n).await,
        }
    }
}

/// The matrix: every family's cases, family by family, each with its family.
fn cases() -> Vec<(Family, &'static Case)> {
    Family::ALL
        .into_iter()
        .flat_map(|family| family.cases().iter().map(move |case| (family, case)))
        .collect()
}

/// One reported test per case, and the healthy call's: `cargo test --test bad_input` runs them
/// all, `cargo test --test bad_input ws::` only the WebSocket cases (without the healthy call),
/// `cargo test --test bad_input -- --list` lists them.
///
/// The server runs on a tokio runtime of its own, as `handset` does; each case's client runs
/// on its own single-threaded runtime on a test thread, and the healthy caller on a thread and
/// runtime of its own, so neither the attacking clients nor the healthy caller can delay the
/// server's tasks by sharing its runtime (the machine's cores they do share, as a real server
/// shares them with its own hostile traffic).
///
/// The healthy trial is last in the list and libtest-mimic hands trials to its test threads in
/// list order, so it starts only once every case has started (with `--test-threads 1`: once
/// every case has finished); it then waits for the cases still running, stops the healthy
/// caller after its current call and checks every call it made.
fn main() -> ExitCode {
    let args = Arguments::from_args();
    let cases = cases();
    let names: Vec<&'static str> = cases.iter().map(|(_, c)| c.name).chain([HEALTHY]).collect();
    let runs = |name: &'static str| {
        let probe = Trial::test(name, || Ok(()));
        !args.list && !args.is_filtered_out(&probe) && !args.is_ignored(&probe)
    };
    let cases_selected = cases.iter().filter(|(_, c)| runs(c.name)).count();
    let healthy_selected = runs(HEALTHY);
    let matrix = (cases_selected > 0 || healthy_selected).then(|| {
        Arc::new(Matrix::start(
            cases_selected,
            healthy_selected,
            args.nocapture,
        ))
    });
    let trials = names
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let matrix = matrix.clone();
            let case = cases.get(i).copied();
            Trial::test(name, move || {
                let matrix = matrix.as_deref().expect("started when any trial runs");
                match case {
                    Some((family, case)) => matrix.run_case(family, case, i),
                    None => matrix.check_healthy(),
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(matrix) = matrix {
        let Ok(matrix) = Arc::try_unwrap(matrix) else {
            panic!("the matrix is still shared after the run")
        };
        matrix.stop();
    }
    conclusion.exit_code()
}

/// The server, the healthy caller and the count of cases still to finish (the healthy
/// trial's own methods are in [`healthy`]).
struct Matrix {
    /// The server's own runtime.
    runtime: tokio::runtime::Runtime,
    server: Arc<TestServer>,
    logs: Logs,
    /// The healthy caller's thread (`None` when its trial is filtered out, or once joined).
    healthy: Mutex<Option<std::thread::JoinHandle<Vec<CallOutcome>>>>,
    /// Asks the healthy caller to stop after its current call.
    stop_healthy: Arc<AtomicBool>,
    /// Print the healthy calls' timing (`--nocapture`).
    report_timing: bool,
    /// Selected cases not finished yet.
    cases_left: Mutex<usize>,
    case_finished: Condvar,
}

impl Matrix {
    /// Starts the server on its own runtime and, when its trial is selected, the healthy
    /// caller: calls back to back, each 6 s, until [`Matrix::check_healthy`] stops it.
    fn start(cases: usize, healthy: bool, report_timing: bool) -> Self {
        let logs = Logs::capture();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("server")
            .build()
            .expect("the server's runtime");
        let server = Arc::new(runtime.block_on(TestServer::start(LIMITS)));
        let stop_healthy = Arc::new(AtomicBool::new(false));
        let healthy = healthy.then(|| {
            let (server, stop) = (server.clone(), stop_healthy.clone());
            #[allow(clippy::disallowed_methods)] // the healthy caller's own thread
            std::thread::spawn(move || {
                client_runtime().block_on(async move {
                    let mut outcomes = Vec::new();
                    let mut n = 2;
                    while !stop.load(Ordering::Relaxed) {
                        outcomes.push(
                            support::twilio_call(&server, n, healthy_audio(), HEALTHY_LENGTH).await,
                        );
                        n += 1;
                    }
                    outcomes
                })
            })
        });
        Self {
            runtime,
            server,
            logs,
            healthy: Mutex::new(healthy),
            stop_healthy,
            report_timing,
            cases_left: Mutex::new(cases),
            case_finished: Condvar::new(),
        }
    }

    /// One case's trial: its input sent and its outcome checked, on a runtime of its own.
    fn run_case(&self, family: Family, case: &Case, i: usize) -> Result<(), Failed> {
        // Counted as finished however it ends (a panic is the trial's failure).
        let _finished = CaseFinished(self);
        let n = 100 + i as u32;
        let (seen, wrong) = client_runtime().block_on(async {
            let seen = family.run_case(&self.server, case.input, n).await;
            let mut wrong = case.expect.check(&seen);
            if let Expect::CallContinues(counted) = case.expect {
                wrong.extend(check_counted(&self.logs, &call_sid(n), counted).await);
            }
            (seen, wrong)
        });
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "expected {:?}: not {}; saw {seen:?}",
            case.expect,
            wrong.join(", ")
        )
        .into())
    }

    /// Stops the healthy caller if its trial did not, then the server.
    fn stop(self) {
        self.stop_healthy.store(true, Ordering::Relaxed);
        if let Some(caller) = self
            .healthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = caller.join();
        }
        let Ok(server) = Arc::try_unwrap(self.server) else {
            panic!("the server is still shared")
        };
        self.runtime.block_on(server.stop());
    }
}

/// Counts a case as finished when dropped.
struct CaseFinished<'a>(&'a Matrix);

impl Drop for CaseFinished<'_> {
    fn drop(&mut self) {
        *self
            .0
            .cases_left
            .lock()
            .unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.case_finished.notify_all();
    }
}

/// A client's runtime: one thread, the caller's own.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}
