//! SIGTERM with calls in progress, against the real `handset` binary over real sockets: the
//! instance drains (`/readyz` answers 503 at once while `/healthz` stays 200 and HTTP is still
//! served), active calls go on until `DRAIN_TIMEOUT` and are then closed with 1001, the process
//! exits 0 (after which connections are refused), and a recording callback acknowledged before
//! the signal is still in the store when a second process opens the same `DATA_DIR`.
//!
//! Signature checks are off (no `TWILIO_AUTH_TOKEN`): signing is covered elsewhere, and the
//! listen port is only known once the server has started.

#![cfg(unix)]
// A test of the whole process: it reads its stderr on a thread and bounds its waits on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handset_sim::{CallPlan, run_call};

/// How long calls may go on after SIGTERM.
const DRAIN: Duration = Duration::from_secs(2);
/// Upper bound on any wait, so a broken server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    /// Reads the child's stderr into `lines` until it closes.
    reader: Option<std::thread::JoinHandle<()>>,
    addr: String,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

/// Starts `handset` on a free loopback port with `dir` as its data directory; returns once it
/// is listening.
fn start(dir: &std::path::Path) -> Server {
    spawn(dir, "handset listening")
}

/// Starts `handset` like [`start`]; returns once it has logged `message`. `addr` is the listen
/// address only when `message` is the listening line.
fn spawn(dir: &std::path::Path, message: &'static str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handset"))
        .env_clear()
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "json"])
        .env("DATA_DIR", dir)
        .env("DRAIN_TIMEOUT", DRAIN.as_secs().to_string())
        .env("ENGINE_WORKERS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    let listen = (json["message"] == message)
                        .then(|| json["listen"].as_str().unwrap_or_default().to_owned());
                    lines.lock().unwrap().push(json);
                    if let Some(listen) = listen {
                        let _ = tx.send(listen);
                    }
                }
            }
        })
    };
    let addr = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the server logs {message:?}"));
    Server {
        child,
        reader: Some(reader),
        addr,
        lines,
    }
}

impl Server {
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Every line the process wrote is read once its stderr closes.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

/// One HTTP/1.1 request on a fresh connection; the whole answer as text.
fn http(addr: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn active_calls(addr: &str) -> u64 {
    let reply = http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let body = &reply[reply.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    serde_json::from_str::<serde_json::Value>(body).unwrap()["active_calls"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_until_the_timeout_then_exits_and_keeps_recordings() {
    let dir = std::env::temp_dir().join(format!(
        "handset-shutdown-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut server = start(&dir);
    let addr = server.addr.clone();

    // Two calls that would go on for 60 s.
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let mut plan = CallPlan::new(format!("http://{addr}/webhook/incoming_call"));
            plan.call_sid = format!("CA{:032x}", 0x5000 + i);
            plan.duration = Duration::from_secs(60);
            plan.record_playback = false;
            // The call returns as soon as the server's close frame is read.
            tokio::spawn(async move { (run_call(plan).await, Instant::now()) })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while active_calls(&addr) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active_calls(&addr), 2, "both calls are up");

    // A recording callback, acknowledged before the signal (its download fails: nothing
    // listens on port 9, which only costs a status line).
    let body = "AccountSid=AC00000000000000000000000000000001&CallSid=CA00000000000000000000000000000001\
                &RecordingSid=RE00000000000000000000000000000001\
                &RecordingUrl=http%3A%2F%2F127.0.0.1%3A9%2Frec&RecordingDuration=3";
    let reply = http(
        &addr,
        &format!(
            "POST /webhook/handle_recording HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let signalled = Instant::now();
    server.sigterm();

    // Draining: not ready for new calls, still alive and still answering HTTP.
    let mut ready = String::new();
    while !ready.starts_with("HTTP/1.1 503") && Instant::now() < signalled + PATIENCE {
        ready = http(
            &addr,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
    }
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("draining"), "{ready}");
    let health = http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""draining":true"#), "{health}");

    // The calls went on until the drain timeout, then were closed with 1001.
    for call in calls {
        let (outcome, ended) = call.await.unwrap();
        let outcome = outcome.expect("call ran");
        let closed = ended - signalled;
        let (code, reason) = outcome.close.expect("the server closed the stream");
        assert_eq!(code, 1001, "{reason}");
        assert_eq!(reason, "server shutting down");
        assert!(
            closed >= DRAIN,
            "closed {closed:?} after SIGTERM: before DRAIN_TIMEOUT"
        );
        assert!(outcome.malformed.is_empty(), "{:?}", outcome.malformed);
    }
    assert_eq!(server.wait(), Some(0), "graceful exit");
    assert_eq!(server.logged("SIGTERM received").len(), 1);
    assert_eq!(server.logged("stopped").len(), 1);
    let refused = std::net::TcpStream::connect(&addr).err().map(|e| e.kind());
    assert_eq!(
        refused,
        Some(std::io::ErrorKind::ConnectionRefused),
        "the listener is closed once the process has exited"
    );

    // A second process reads the recording back from the same data directory.
    let mut second = start(&dir);
    let listening = second.logged("handset listening");
    assert_eq!(
        listening[0]["recordings_stored"].as_u64(),
        Some(1),
        "{listening:?}"
    );
    assert!(dir.join("handset.db").exists(), "the embedded store");
    // Serving (so its signal handler is installed) before it is told to stop.
    assert_eq!(active_calls(&second.addr), 0);
    second.sigterm();
    assert_eq!(second.wait(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_during_start_up_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("handset-startup-{}", std::process::id()));
    // The first line is logged once the signal handlers are in place, before the data
    // directory is read and the port bound.
    let mut server = spawn(&dir, "handset starting");
    server.sigterm();
    assert_eq!(
        server.wait(),
        Some(0),
        "graceful exit, not killed by the signal"
    );
    assert_eq!(server.logged("SIGTERM received").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
