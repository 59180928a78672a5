//! `handset`: the Handset server binary.
//!
//! Parses the command line (`serve` is the default subcommand; `call` starts an outbound call
//! through Twilio's REST API, see [`handset_shell::twilio`]; `trace` draws a call's timeline;
//! the call simulator is a binary of its own, `handset-sim`), builds the [`Config`] from the
//! environment with the typed flags in place of their variables, initialises `tracing` (text
//! or JSON), binds, and runs [`handset_shell::serve`] until SIGTERM or Ctrl-C. A configuration
//! error prints one clear line to stderr and exits with status 2. `anyhow` is used here only.
//!
//! Before anything else the soft open-files limit is raised to the hard limit (every connection
//! is a descriptor; the default `MAX_CONNECTIONS` is derived from the limit after this).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use handset_engine::driver::{CpuLatency, Scheduling};
use handset_shell::{AppState, Config, LogFormat, config};

/// Realtime voice media engine for Twilio Media Streams.
#[derive(Debug, Parser)]
#[command(name = "handset", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options for `serve` when no subcommand is given.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (default).
    Serve(ServeArgs),
    /// Render a call's Chrome trace JSON (from TRACE_DIR) as an SVG timeline.
    Trace(TraceArgs),
    /// Import the JSON-lines files of earlier versions (recordings.jsonl, call_status.jsonl,
    /// recordings-status.jsonl) into the store (DATABASE_URL, or SQLite under DATA_DIR).
    /// `serve` does this by itself at start for its own DATA_DIR.
    MigrateData(MigrateArgs),
    /// Start an outbound call through Twilio's REST API (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN
    /// or an API key, PUBLIC_URL): Twilio fetches this server's voice webhook, so the call
    /// runs the same agent path as an inbound one. Prints the CallSid.
    Call(CallArgs),
}

/// `handset call --to +1… [--from +1…] [--param k=v]…`.
#[derive(Debug, Args)]
struct CallArgs {
    /// Who to call: an E.164 number (+15550002222), a sip: or a client: address.
    #[arg(long)]
    to: String,
    /// The caller ID [env: TWILIO_FROM].
    #[arg(long)]
    from: Option<String>,
    /// An extra parameter the agent sees in its start's customParameters, NAME=VALUE
    /// (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
}

fn parse_param(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{value:?} is not NAME=VALUE"))
}

/// `handset migrate-data [DIR]`.
#[derive(Debug, Args)]
struct MigrateArgs {
    /// The directory holding the files [default: DATA_DIR].
    dir: Option<PathBuf>,
}

/// `handset trace FILE`.
#[derive(Debug, Args)]
struct TraceArgs {
    /// The trace file (Chrome trace event JSON, as written for traced calls).
    file: PathBuf,
    /// Where to write the SVG [default: FILE with .svg].
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Flags override the environment variable named in each help line.
#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Port to listen on [env: PORT, default 3000].
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind [env: BIND, default 0.0.0.0].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Log format [env: LOG_FORMAT, default text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Directory for the durable event logs [env: DATA_DIR, default ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Json,
    Text,
}

impl ServeArgs {
    /// The flags, typed as parsed, each in place of its variable.
    fn overrides(&self) -> config::Overrides {
        config::Overrides {
            port: self.port,
            bind: self.bind,
            log_format: self.log_format.map(|format| match format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Text => LogFormat::Text,
            }),
            data_dir: self.data_dir.clone(),
        }
    }
}

fn main() -> ExitCode {
    let files_before = config::open_files_limit();
    let files_raised = rlimit::increase_nofile_limit(u64::MAX);
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Trace(args)) => return trace(&args),
        Some(Command::MigrateData(args)) => return migrate_data(&args),
        Some(Command::Call(args)) => return call(args),
        None => cli.serve,
    };
    let config = match Config::from_vars_with(config::environment(), &args.overrides()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handset: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of `main`: dropping it writes out what the log thread still holds.
    let _log_flush = init_tracing(config.log_format, config.log_color);
    match files_raised {
        Ok(now) if Some(now) != files_before => tracing::info!(
            from = files_before,
            to = now,
            "raised the open-files limit to the hard limit"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(
            error = %err,
            limit = files_before,
            "cannot raise the open-files limit"
        ),
    }
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "fatal");
            eprintln!("handset: {err:#}");
            // A store that cannot be opened or migrated is a start-up error, like a bad config.
            if matches!(
                err.downcast_ref::<handset_shell::StateError>(),
                Some(handset_shell::StateError::Store(_))
            ) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Builds a tokio runtime; a failure is said on stderr and becomes exit status 1.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("handset: cannot start the runtime: {err}");
        ExitCode::FAILURE
    })
}

/// `handset migrate-data`: imports the old JSON-lines files; exit 2 if the store cannot be
/// opened, 1 if the import fails.
fn migrate_data(args: &MigrateArgs) -> ExitCode {
    let config = match Config::from_vars(config::environment()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handset: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let dir = args.dir.clone().unwrap_or_else(|| config.data_dir.clone());
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let store = match handset_shell::store::Store::open(&config.store_options()).await {
            Ok(store) => store,
            Err(err) => {
                eprintln!("handset: cannot open the store: {err}");
                return ExitCode::from(2);
            }
        };
        match handset_shell::store::import_jsonl(&store, &dir).await {
            Ok(report) => {
                println!(
                    "imported from {}: {} recordings, {} call statuses, {} recording progress lines, {} skipped lines ({} files renamed to *.imported)",
                    dir.display(),
                    report.recordings,
                    report.call_statuses,
                    report.progress,
                    report.skipped_lines,
                    report.files.len()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("handset: import failed (nothing was written): {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `handset call`: asks Twilio for the call and prints its CallSid; exit 2 on a bad argument
/// or configuration, 1 when Twilio cannot be reached or refuses.
fn call(args: CallArgs) -> ExitCode {
    let config = match Config::from_vars(config::environment()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handset: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let Some(public_url) = &config.public_url else {
        eprintln!(
            "handset: configuration error: PUBLIC_URL is not set (the new call fetches its voice webhook there)"
        );
        return ExitCode::from(2);
    };
    if !config.twilio.is_usable() {
        eprintln!(
            "handset: configuration error: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET) must be set"
        );
        return ExitCode::from(2);
    }
    let request = handset_shell::twilio::Outbound {
        to: args.to,
        from: args.from,
        params: args.params.into_iter().collect(),
    };
    let new_call = match request.to_new_call(public_url, config.twilio.from.as_deref()) {
        Ok(call) => call,
        Err(err) => {
            eprintln!("handset call: {err}");
            return ExitCode::from(2);
        }
    };
    let client = match handset_shell::twilio::TwilioClient::new(&config.twilio) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("handset call: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handset: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client.create_call(&new_call)) {
        Ok(call_sid) => {
            println!("{call_sid}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handset call: {err}");
            ExitCode::FAILURE
        }
    }
}

fn trace(args: &TraceArgs) -> ExitCode {
    let json = match std::fs::read_to_string(&args.file) {
        Ok(json) => json,
        Err(err) => {
            eprintln!("handset: cannot read {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let svg = match handset_shell::trace_svg::render(&json) {
        Ok(svg) => svg,
        Err(err) => {
            eprintln!("handset: {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| args.file.with_extension("svg"));
    if let Err(err) = std::fs::write(&out, svg) {
        eprintln!("handset: cannot write {}: {err}", out.display());
        return ExitCode::FAILURE;
    }
    println!("{}", out.display());
    ExitCode::SUCCESS
}

/// Logs go to stderr from a thread of their own (`tracing-appender`): a thread that logs (the
/// socket writers on the egress thread, among others) hands the line over and goes on, so a
/// slow reader of stderr (a full pipe to a log collector) cannot hold a media thread. When the
/// log thread falls 128,000 lines behind, new lines are dropped rather than waited for.
fn init_tracing(
    format: LogFormat,
    color: config::LogColor,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = color.is_on(std::io::stderr().is_terminal());
    let (stderr, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("handset-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(handset_shell::log_line::OneLine::new(stderr, ansi));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    flush
}

async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context as _;

    // Listen for SIGTERM and Ctrl-C before anything else, so a signal during start-up (while the
    // data directory is read, say) ends the process cleanly instead of killing it.
    let shutdown = shutdown_signal();
    tracing::info!(
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "handset starting"
    );
    let listen = config.listen;
    let (state, startup) = AppState::new(config).await?;
    let listener = handset_shell::server::listen(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let config = &state.config;
    tracing::info!(
        listen = %local,
        public_url = config.public_url.as_ref().map(ToString::to_string),
        deploy_id = config.deploy_id.as_deref(),
        instance = %config.instance_id,
        data_dir = %config.data_dir.display(),
        database = ?state.store.dialect(),
        recordings_stored = startup.counts.recordings,
        recordings_pending = startup.counts.recordings_pending,
        call_statuses_stored = startup.counts.call_statuses,
        max_connections = config.max_connections,
        open_files_limit = config::open_files_limit(),
        version = env!("CARGO_PKG_VERSION"),
        "handset listening"
    );
    if !startup.imported.files.is_empty() {
        tracing::info!(
            files = startup.imported.files.len(),
            recordings = startup.imported.recordings,
            call_statuses = startup.imported.call_statuses,
            progress = startup.imported.progress,
            skipped_lines = startup.imported.skipped_lines,
            "imported the JSON-lines files of an earlier version into the store"
        );
    }
    if config.signature_checks() {
        tracing::info!("X-Twilio-Signature checks are on");
    } else {
        tracing::warn!(
            "SIGNATURE CHECKS ARE OFF: TWILIO_AUTH_TOKEN is not set, so anyone can call the webhooks"
        );
    }
    if config.public_url.is_none() {
        tracing::warn!(
            "PUBLIC_URL is not set: public URLs are rebuilt from X-Forwarded-*/Host headers"
        );
    }

    match state.engine.scheduling() {
        Scheduling::Normal => {}
        Scheduling::Realtime(priority) => tracing::info!(
            priority,
            workers = state.engine.workers(),
            egress = ?state.egress.scheduling(),
            "engine media threads run under SCHED_FIFO"
        ),
        Scheduling::Refused(priority, reason) => tracing::warn!(
            priority,
            reason = %reason,
            "ENGINE_REALTIME_PRIORITY refused by the OS: engine media threads run at normal priority. Grant CAP_SYS_NICE (docker --cap-add SYS_NICE; Kubernetes securityContext.capabilities.add: [SYS_NICE]) or an RLIMIT_RTPRIO of at least this priority (ulimit -r), or unset ENGINE_REALTIME_PRIORITY"
        ),
    }
    match state.engine.cpu_latency() {
        CpuLatency::Default => {}
        CpuLatency::Held(latency) => tracing::info!(
            latency_us = latency.as_micros() as u64,
            "CPU wake-up latency held (PM QoS) while the server runs"
        ),
        CpuLatency::Refused(latency, reason) => tracing::warn!(
            latency_us = latency.as_micros() as u64,
            reason = %reason,
            "ENGINE_CPU_LATENCY_US refused by the OS (the device is root's): CPUs may take milliseconds to wake from idle; run as root or unset ENGINE_CPU_LATENCY_US"
        ),
    }
    if state.twilio.is_some() && config.public_url.is_some() {
        tracing::info!(
            "drain: calls still live at DRAIN_TIMEOUT are handed over through the Twilio REST API"
        );
    } else {
        tracing::info!(
            "drain: calls still live at DRAIN_TIMEOUT are handed over by closing their streams (the <Connect action> redirects them); set TWILIO_ACCOUNT_SID and PUBLIC_URL to hand them over through the Twilio REST API"
        );
    }

    // Recorded messages: every instance works the store's job queue; a draining instance
    // stops claiming, so the others take what is left.
    let recordings = handset_shell::recording::RecordingConfig::from_config(config)
        .context("cannot start the recording worker")?;
    tokio::spawn(handset_shell::recording::run(
        recordings,
        state.store.clone(),
        state.recording_stored.clone(),
        state.draining.subscribe(),
    ));
    // Keeps `/healthz` and `/readyz` current: a write every few seconds, every second while
    // the store refuses writes, so a full disk and its recovery are noticed without traffic.
    tokio::spawn(handset_shell::store::keep_probing(
        state.store.clone(),
        state.config.instance_id.clone(),
    ));

    if let Some(port) = state.config.health_port {
        let addr = std::net::SocketAddr::new(listen.ip(), port);
        let health = handset_shell::server::listen(addr)
            .with_context(|| format!("cannot listen on {addr} (HEALTH_PORT)"))?;
        tracing::info!(listen = %health.local_addr()?, "health listener: /healthz, /readyz, /metrics, /version");
        tokio::spawn(handset_shell::server::serve_health(health, state.clone()));
    }
    handset_shell::serve(listener, state.clone(), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives in between is not lost.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(sig) => Some(sig),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for {name}");
                None
            }
        };
        let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C");
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            let received = |sig: &mut Option<tokio::signal::unix::Signal>| {
                let sig = sig.take();
                async move {
                    match sig {
                        Some(mut sig) => {
                            sig.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                () = received(&mut interrupt) => tracing::info!("Ctrl-C received"),
                () = received(&mut terminate) => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received");
    }
}
