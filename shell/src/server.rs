//! The accept loop, per-connection tasks and graceful shutdown (mini-redis style).
//!
//! [`serve`] takes a bound listener, the shared [`AppState`] and a shutdown future. Each accepted
//! TCP connection gets a task running hyper's HTTP/1.1 server with upgrades enabled (the Media
//! Streams WebSocket is an upgrade) and a header read timeout (`HEADER_READ_TIMEOUT`: a client
//! that dribbles its request line and headers is disconnected without an answer). Shutdown fans out through a
//! `watch` channel: every connection task is told to finish its in-flight request and close, and
//! `serve` returns once every task has dropped its `mpsc` sender (or after the configured
//! `DRAIN_TIMEOUT`, [`Config::drain_timeout`](crate::config::Config::drain_timeout)).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use handset_engine::driver::{Engine, EngineConfig, StartError, SystemClock};

use crate::config::Config;
use crate::metrics::ShellMetrics;
use crate::signature::Verifier;
use crate::store::{RecordingEvent, Reloaded, Store, StoreError};
use crate::tokens::StreamTokens;

/// Recording events buffered for the transcription consumer.
pub const RECORDING_QUEUE: usize = 256;

/// Number of live media calls, shown by `/healthz`. The WebSocket layer holds one
/// [`ActiveCallGuard`] per bridged call.
#[derive(Clone, Debug, Default)]
pub struct ActiveCalls(Arc<AtomicUsize>);

impl ActiveCalls {
    /// Counts one more call until the guard is dropped.
    pub fn enter(&self) -> ActiveCallGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveCallGuard(self.0.clone())
    }

    /// Calls currently counted.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decrements [`ActiveCalls`] when dropped.
#[derive(Debug)]
pub struct ActiveCallGuard(Arc<AtomicUsize>);

impl Drop for ActiveCallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the request handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Validated configuration.
    pub config: Config,
    /// Signature verifier; `None` when no auth token is configured (checks off).
    pub verifier: Option<Verifier>,
    /// Outstanding single-use stream tokens.
    pub tokens: StreamTokens,
    /// Durable event logs.
    pub store: Arc<Store>,
    /// Live media calls.
    pub active_calls: ActiveCalls,
    /// Stored recordings handed on for transcription.
    pub recordings: mpsc::Sender<RecordingEvent>,
    /// The media engine's worker threads.
    pub engine: Engine,
    /// Set to true when the server starts draining: media streams finish within
    /// `config.drain_timeout`, then close with 1001.
    pub draining: watch::Sender<bool>,
    /// The shell's counters for `/metrics`.
    pub metrics: Arc<ShellMetrics>,
    /// What `/metrics` encodes: a collector over `metrics` and the engine's counters.
    pub metrics_registry: prometheus_client::registry::Registry,
    /// Source of per-request ids for log correlation.
    pub(crate) request_ids: AtomicU64,
}

/// What [`AppState::new`] hands back besides the state.
#[derive(Debug)]
pub struct Startup {
    /// Receives every recording stored from now on, for transcription.
    pub recordings: mpsc::Receiver<RecordingEvent>,
    /// What was read back from `DATA_DIR`.
    pub reloaded: Reloaded,
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The data directory could not be opened.
    #[error("cannot open the data directory: {0}")]
    Store(#[from] StoreError),
    /// The media engine could not start.
    #[error("cannot start the media engine: {0}")]
    Engine(#[from] StartError),
}

impl AppState {
    /// Opens the store under `config.data_dir`, starts the media engine and builds the shared
    /// state.
    pub fn new(config: Config) -> Result<(Arc<Self>, Startup), StateError> {
        let (store, reloaded) = Store::open(&config.data_dir)?;
        let engine = Engine::start(
            EngineConfig {
                workers: config.engine_workers,
                ..EngineConfig::default()
            },
            Arc::new(SystemClock::new()),
        )?;
        let (tx, rx) = mpsc::channel(RECORDING_QUEUE);
        let active_calls = ActiveCalls::default();
        let metrics = Arc::new(ShellMetrics::default());
        let metrics_registry = crate::metrics::registry(
            Arc::clone(engine.counters()),
            Arc::clone(&metrics),
            active_calls.clone(),
        );
        let state = Self {
            verifier: config.auth_token.clone().map(Verifier::new),
            tokens: StreamTokens::new(config.stream_token_ttl, config.stream_token_capacity),
            store: Arc::new(store),
            active_calls,
            recordings: tx,
            engine,
            draining: watch::channel(false).0,
            metrics,
            metrics_registry,
            request_ids: AtomicU64::new(1),
            config,
        };
        Ok((
            Arc::new(state),
            Startup {
                recordings: rx,
                reloaded,
            },
        ))
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then drains open connections.
///
/// Accept errors (e.g. too many open files) are logged and retried after a short pause; they
/// never end the server.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (notify_tx, notify_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let mut notify = notify_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        crate::routes::handle(&state, req, peer).await,
                    )
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = notify.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }

    tracing::info!(
        active_calls = state.active_calls.count(),
        "shutting down: draining open connections and calls"
    );
    drop(listener);
    let _ = notify_tx.send(true);
    let _ = state.draining.send(true);
    drop(done_tx);
    let drain_timeout = state.config.drain_timeout;
    if tokio::time::timeout(drain_timeout, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain_timeout, "connections still open after the drain timeout");
    }
    // Media streams are upgraded connections hyper no longer tracks: wait for them too (each
    // closes itself with 1001 once the drain timeout passes).
    let deadline =
        tokio::time::Instant::now() + state.config.drain_timeout + Duration::from_secs(2);
    while state.active_calls.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
