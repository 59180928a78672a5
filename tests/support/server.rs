//! The real server, started in-process on a loopback port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use handset_shell::sim::CallPlan;
use handset_shell::{AppState, Config};

use super::{TOKEN, call_sid};

/// A server running in-process on a loopback port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state (tokens, active calls, configuration).
    pub state: Arc<AppState>,
    /// The data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handset-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

impl TestServer {
    /// Starts a server with signature checks on, two engine workers and `extra` variables
    /// (which win over these defaults).
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_in(temp_dir("support"), extra).await
    }

    /// [`Self::start`] on `data_dir`: a second server on another's directory shares its
    /// embedded store, as a second instance of a fleet shares the database.
    pub async fn start_in(data_dir: PathBuf, extra: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = data_dir.display().to_string();
        let traces = data_dir.join("traces").display().to_string();
        let public = format!("http://{addr}");
        let mut vars: Vec<(&str, &str)> = vec![
            ("DATA_DIR", dir.as_str()),
            ("PUBLIC_URL", public.as_str()),
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("ENGINE_WORKERS", "2"),
            ("TRACE_DIR", traces.as_str()),
            ("DRAIN_TIMEOUT", "10"),
        ];
        vars.extend_from_slice(extra);
        let config = Config::from_vars(vars).expect("test config is valid");
        let (state, _startup) = AppState::new(config).await.expect("server state builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(handset_shell::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            data_dir,
            stop: Some(stop),
            task,
        }
    }

    /// `http://127.0.0.1:port` + `path` (also the public URL signatures are checked against).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Where calls opted in with `?trace=1` leave their timelines.
    pub fn trace_dir(&self) -> PathBuf {
        self.data_dir.join("traces")
    }

    /// A simulator plan for call `n` (CallSid [`call_sid`]) against this server's voice
    /// webhook, signed with [`TOKEN`].
    pub fn plan(&self, n: u32) -> CallPlan {
        let mut plan = CallPlan::new(self.url("/webhook/incoming_call"));
        plan.auth_token = Some(TOKEN.to_owned());
        plan.call_sid = call_sid(n);
        plan
    }

    /// The `<Stream url>` the server writes into its TwiML.
    pub fn stream_url(&self) -> String {
        format!("ws://{}/ws/twilio-media", self.addr)
    }

    /// Signals shutdown, waits for `serve` to return and removes the data directory.
    pub async fn stop(mut self) {
        self.drain();
        self.task.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// Signals shutdown (what SIGTERM does) without waiting: the server starts draining.
    pub fn drain(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether `serve` has returned within `limit` (after [`Self::drain`]).
    pub async fn stopped_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }

    /// Waits (bounded by `limit`) until no media call is active; returns the count left.
    /// Callers assert it is 0.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        while self.state.active_calls.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.active_calls.count()
    }
}
