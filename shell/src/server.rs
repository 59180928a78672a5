//! The accept loop, per-connection tasks and graceful shutdown (mini-redis style).
//!
//! [`serve`] takes a bound listener, the shared [`AppState`] and a shutdown future. Each accepted
//! TCP connection gets a task running hyper's HTTP/1.1 server with upgrades enabled (the Media
//! Streams WebSocket is an upgrade) and a header read timeout (`HEADER_READ_TIMEOUT`: a client
//! that dribbles its request line and headers is disconnected without an answer).
//!
//! Shutdown is a drain, for rolling deploys: when the shutdown future completes the server
//! keeps accepting and answering HTTP, but `/readyz` answers 503 (the load balancer stops
//! sending new calls) and new media streams are refused (their calls are redirected to another
//! instance). Live calls go on until they end or `DRAIN_TIMEOUT`
//! ([`Config::drain_timeout`](crate::config::Config::drain_timeout)) passes, when the bridge
//! closes them with 1001 and their `<Connect action>` redirects them too. Once no call is
//! live the listener closes and every connection task is told, through a `watch` channel, to
//! finish its in-flight request; `serve` returns when they have (or after a short grace).

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
use crate::store::{Counts, ImportReport, Store, StoreError};
use crate::tokens::StreamTokens;
use crate::twilio::{TwilioClient, TwilioError};

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
    /// Single-use stream tokens, in the store.
    pub tokens: StreamTokens,
    /// The durable state shared with the other instances (and whether it takes writes:
    /// [`Store::health`]).
    pub store: Store,
    /// Live media calls.
    pub active_calls: ActiveCalls,
    /// Wakes this instance's recording worker when a recording callback was stored here
    /// (the other instances' workers find it on their next poll).
    pub recording_stored: Arc<tokio::sync::Notify>,
    /// The media engine's worker threads.
    pub engine: Engine,
    /// Set to true when the server starts draining: media streams finish within
    /// `config.drain_timeout`, then close with 1001.
    pub draining: watch::Sender<bool>,
    /// The shell's counters for `/metrics`.
    pub metrics: Arc<ShellMetrics>,
    /// The Twilio REST client, when `TWILIO_ACCOUNT_SID` and credentials are configured
    /// (`POST /calls`, ending or redirecting calls that have no live stream).
    pub twilio: Option<TwilioClient>,
    /// What `/metrics` encodes: a collector over `metrics` and the engine's counters.
    pub metrics_registry: prometheus_client::registry::Registry,
    /// Source of per-request ids for log correlation.
    pub(crate) request_ids: AtomicU64,
}

impl AppState {
    /// Whether `MAX_CALLS` media calls are running: the one capacity check, made by the
    /// voice webhook, by stream admission and by `/readyz`.
    pub fn at_capacity(&self) -> bool {
        let max = self.config.max_calls;
        max > 0 && self.active_calls.count() >= max
    }

    /// Whether the instance takes new calls: not draining, the store takes writes, below
    /// `MAX_CALLS`. `Err` names what is wrong.
    pub fn ready(&self) -> Result<(), &'static str> {
        if *self.draining.borrow() {
            Err("draining")
        } else if self.store.health().status().is_err() {
            Err("store degraded")
        } else if self.at_capacity() {
            Err("at MAX_CALLS")
        } else {
            Ok(())
        }
    }
}

/// What [`AppState::new`] found besides the state.
#[derive(Debug)]
pub struct Startup {
    /// JSON-lines files of earlier versions imported from `DATA_DIR` (usually none).
    pub imported: ImportReport,
    /// What the store holds.
    pub counts: Counts,
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store could not be opened, migrated or read.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The media engine could not start.
    #[error("cannot start the media engine: {0}")]
    Engine(#[from] StartError),
    /// The Twilio REST client could not be built.
    #[error("cannot build the twilio rest client: {0}")]
    Twilio(#[from] TwilioError),
}

impl AppState {
    /// Opens the store (`DATABASE_URL`, or SQLite under `DATA_DIR`) and runs its migrations,
    /// imports any JSON-lines files of earlier versions, starts the media engine and builds
    /// the shared state.
    pub async fn new(config: Config) -> Result<(Arc<Self>, Startup), StateError> {
        let twilio = match config.twilio.is_usable() {
            true => Some(TwilioClient::new(&config.twilio)?),
            false => None,
        };
        let store = Store::open(&config.store_options()).await?;
        let imported = crate::store::import_jsonl(&store, &config.data_dir).await?;
        let counts = store.counts().await?;
        let engine = Engine::start(
            EngineConfig {
                workers: config.engine_workers,
                ..EngineConfig::default()
            },
            Arc::new(SystemClock::new()),
        )?;
        let active_calls = ActiveCalls::default();
        let metrics = Arc::new(ShellMetrics::default());
        let metrics_registry = crate::metrics::registry(
            Arc::clone(engine.counters()),
            Arc::clone(&metrics),
            active_calls.clone(),
            Arc::clone(store.health()),
        );
        let state = Self {
            verifier: config.auth_token.clone().map(Verifier::new),
            tokens: StreamTokens::new(store.clone(), config.stream_token_ttl),
            store,
            active_calls,
            recording_stored: Arc::default(),
            engine,
            draining: watch::channel(false).0,
            metrics,
            metrics_registry,
            twilio,
            request_ids: AtomicU64::new(1),
            config,
        };
        Ok((Arc::new(state), Startup { imported, counts }))
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

    // Until `shutdown`: serve. Then drain: keep serving HTTP (`/readyz` answers 503, Twilio's
    // callbacks for live calls still land), refuse new media streams, and stop once no call
    // is live, or when the drain deadline has passed and the bridge has closed the rest.
    let mut drain_until: Option<tokio::time::Instant> = None;
    // Made once, so a steady stream of new connections cannot keep resetting it.
    let mut drain_poll = tokio::time::interval(DRAIN_POLL);
    drain_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            () = &mut shutdown, if drain_until.is_none() => {
                let _ = state.draining.send(true);
                let timeout = state.config.drain_timeout;
                tracing::info!(
                    active_calls = state.active_calls.count(),
                    ?timeout,
                    "draining: /readyz answers 503, new streams are refused, live calls go on"
                );
                drain_until = Some(
                    tokio::time::Instant::now()
                        + timeout
                        + state.config.ws_write_timeout
                        + Duration::from_secs(3),
                );
                continue;
            }
            _ = drain_poll.tick(), if drain_until.is_some() => {
                let live = state.active_calls.count();
                if live == 0 {
                    break;
                }
                if drain_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    tracing::warn!(active_calls = live, "calls still live after the drain timeout");
                    break;
                }
                continue;
            }
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

    tracing::info!("drained: closing the listener and open connections");
    drop(listener);
    let _ = notify_tx.send(true);
    let _ = state.draining.send(true);
    drop(done_tx);
    if tokio::time::timeout(CONNECTION_GRACE, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?CONNECTION_GRACE, "connections still open after the grace period");
    }
    Ok(())
}

/// How often a draining server checks whether its last call has ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// How long open HTTP connections get to finish their request once the drain is over.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);
