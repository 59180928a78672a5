//! What the request handlers and media streams share ([`AppState`]), built once at start: the
//! configuration, the store, the media engine and its socket writers, the Twilio REST client
//! and the counters `/metrics` reads.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use handset_engine::driver::{Engine, EngineConfig, Scheduling, StartError, SystemClock};
use tokio::sync::watch;

use crate::active_calls::ActiveCalls;
use crate::config::Config;
use crate::metrics::ShellMetrics;
use crate::signature::Verifier;
use crate::store::{Counts, ImportReport, Store, StoreError};
use crate::tokens::StreamTokens;
use crate::twilio::{TwilioClient, TwilioError};

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
    /// The thread that writes engine output to the media sockets.
    pub egress: crate::egress::Egress,
    /// The second stage on barge-in onsets (`ONSET_CHECK`), when on.
    pub onset_check: Option<crate::onset_check::Checker>,
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
    /// The egress thread could not start.
    #[error("cannot start the egress thread: {0}")]
    Egress(std::io::Error),
    /// The onset check's model could not be loaded or its thread started.
    #[error("cannot start the onset check: {0}")]
    OnsetCheck(anyhow::Error),
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
                realtime_priority: config.engine_realtime_priority,
                cpu_wake_latency: config.engine_cpu_latency,
                ..EngineConfig::default()
            },
            Arc::new(SystemClock::new()),
        )?;
        // The socket writers run just below the engine's priority (and on the default
        // scheduler when the engine does).
        let egress = crate::egress::Egress::start(match engine.scheduling() {
            Scheduling::Realtime(p) => Some(p.saturating_sub(1).max(1)),
            Scheduling::Normal | Scheduling::Refused(..) => None,
        })
        .map_err(StateError::Egress)?;
        let onset_check = if config.onset_check {
            Some(crate::onset_check::Checker::start().map_err(StateError::OnsetCheck)?)
        } else {
            None
        };
        let active_calls = ActiveCalls::default();
        let metrics = Arc::new(ShellMetrics::default());
        let metrics_registry = crate::metrics::registry(
            Arc::clone(engine.counters()),
            Arc::clone(&metrics),
            active_calls.clone(),
            Arc::clone(store.health()),
            onset_check.as_ref().map(|c| Arc::clone(c.counters())),
        );
        let state = Self {
            verifier: config.auth_token.clone().map(Verifier::new),
            tokens: StreamTokens::new(store.clone(), config.stream_token_ttl),
            store,
            active_calls,
            recording_stored: Arc::default(),
            engine,
            egress,
            onset_check,
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
