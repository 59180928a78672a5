//! The server's log lines, captured in memory, for counters that are only logged.

use std::sync::Arc;
use std::time::Duration;

/// Server log lines captured in memory (JSON, one object per line) for counters that are only
/// logged, such as the per-call `WS stop` and `WS input dropped` lines.
#[derive(Clone)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs the capturing subscriber for this test process (once) and returns it.
    pub fn capture() -> Self {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Self(Arc::default());
            let sink = logs.0.clone();
            tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
                .with_writer(move || LogWriter(sink.clone()))
                .init();
            logs
        })
        .clone()
    }

    /// The fields of every line logged with `message` for `call_sid`.
    pub fn find(&self, message: &str, call_sid: &str) -> Vec<serde_json::Value> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("fields").cloned())
            .filter(|f| f["message"] == message && f["call_sid"] == call_sid)
            .collect()
    }

    /// [`Logs::find`], waiting (bounded by `limit`) for at least one line.
    pub async fn wait_for(
        &self,
        message: &str,
        call_sid: &str,
        limit: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let found = self.find(message, call_sid);
            if !found.is_empty() || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Times the server's pacer found call `call_sid`'s queue empty when a frame was due (its `WS
/// stop` line; `logs` must have been captured before the call ended). This, not the simulated
/// caller's own underruns, is what says a call was played without a gap: on a loaded machine
/// the caller's receive times carry the scheduler's delays of the test process itself.
pub async fn pacer_underruns(logs: &Logs, call_sid: &str) -> u64 {
    let stop = logs
        .wait_for("WS stop", call_sid, Duration::from_secs(10))
        .await;
    assert_eq!(stop.len(), 1, "one WS stop line for {call_sid}: {stop:?}");
    stop[0]["underruns"]
        .as_u64()
        .unwrap_or_else(|| panic!("WS stop carries underruns: {}", stop[0]))
}
