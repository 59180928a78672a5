//! The real server, started in-process on a loopback port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use handset_shell::{AppState, Config};
use handset_sim::CallPlan;

use super::{TOKEN, call_sid};

/// How a [`TestServer`] is set up besides the variables its caller passes.
///
/// By default a server is set up as Twilio reaches it: `PUBLIC_URL` is its own address and
/// [`TOKEN`] its auth token, so signatures are always checked; it also gets two engine workers
/// and `TRACE_DIR` inside its data directory, which is a fresh one.
#[derive(Debug, Default)]
pub struct Options {
    bare: bool,
    data_dir: Option<PathBuf>,
}

impl Options {
    /// Only `DATA_DIR` and `DRAIN_TIMEOUT` are set: unless the caller's variables say
    /// otherwise, there is no auth token (signature checks are off) and no `PUBLIC_URL` (TwiML
    /// URLs follow each request's `Host` and forwarded headers).
    pub fn bare() -> Self {
        Self {
            bare: true,
            data_dir: None,
        }
    }

    /// On `data_dir` instead of a fresh directory: a restart on the same embedded store, or a
    /// second instance of a fleet sharing it as it shares the database.
    pub fn in_dir(self, data_dir: PathBuf) -> Self {
        Self {
            data_dir: Some(data_dir),
            ..self
        }
    }
}

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handset-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// A server running in-process on a loopback port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state (tokens, active calls, store, configuration).
    pub state: Arc<AppState>,
    /// The data directory (removed by [`TestServer::stop`], kept by
    /// [`TestServer::shutdown`]).
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// [`Self::start_with`] the default [`Options`]: as Twilio reaches it, on a fresh data
    /// directory.
    pub async fn start(vars: &[(&str, &str)]) -> Self {
        Self::start_with(Options::default(), vars).await
    }

    /// Starts a server set up by `options`, with `vars` on top (they win over what `options`
    /// sets). `DRAIN_TIMEOUT` is 10 s unless `vars` say otherwise.
    pub async fn start_with(options: Options, vars: &[(&str, &str)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data_dir = options.data_dir.unwrap_or_else(|| temp_dir("e2e"));
        let dir = data_dir.display().to_string();
        let traces = data_dir.join("traces").display().to_string();
        let public = format!("http://{addr}");
        let mut all: Vec<(&str, &str)> = vec![("DATA_DIR", dir.as_str()), ("DRAIN_TIMEOUT", "10")];
        if !options.bare {
            all.extend([
                ("PUBLIC_URL", public.as_str()),
                ("TWILIO_AUTH_TOKEN", TOKEN),
                ("ENGINE_WORKERS", "2"),
                ("TRACE_DIR", traces.as_str()),
            ]);
        }
        all.extend_from_slice(vars);
        let config = Config::from_vars(all).expect("test config is valid");
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

    /// `http://127.0.0.1:port` + `path` (also the public URL signatures are checked against,
    /// unless started bare).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Where calls opted in with `?trace=1` leave their timelines (its `TRACE_DIR` unless
    /// started bare).
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

    /// Signals shutdown and waits for `serve` to return; keeps the data directory and returns
    /// it.
    pub async fn shutdown(mut self) -> PathBuf {
        self.drain();
        self.task.await.unwrap().unwrap();
        self.data_dir
    }

    /// [`Self::shutdown`], then removes the data directory.
    pub async fn stop(self) {
        let dir = self.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
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
