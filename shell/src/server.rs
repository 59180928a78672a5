//! The accept loop, per-connection tasks and graceful shutdown (mini-redis style).
//!
//! [`serve`] takes a bound listener, the shared [`AppState`] and a shutdown future. Each accepted
//! TCP connection gets a task running hyper's HTTP/1.1 server with upgrades enabled (the Media
//! Streams WebSocket is an upgrade) and a header read timeout (`HEADER_READ_TIMEOUT`: a client
//! that dribbles its request line and headers is disconnected without an answer). The task
//! waits for the connection's first byte before it builds hyper's connection, so an idle
//! connection holds a few hundred bytes rather than hyper's buffers (16 KiB).
//!
//! At most `MAX_CONNECTIONS` ([`Config::max_connections`](crate::config::Config::max_connections))
//! are open at once, counted from accept until the socket closes (an upgraded media stream
//! counts until it ends). Beyond that a new connection is accepted, sent a bare 503 with one
//! non-blocking write, and closed: the listener's backlog keeps moving, so a healthy client
//! is refused at once instead of waiting behind a flood, and the refusal costs one descriptor
//! for a moment. Refusals and accept errors are counted in `/metrics` and logged at most once
//! every 10 s; an accept error (out of descriptors) pauses the loop for 100 ms instead of
//! spinning. [`listen`] asks for a backlog of
//! [`LISTEN_BACKLOG`], so a burst waits in the kernel rather than having its SYNs dropped.
//!
//! After a flood, glibc's malloc would keep the freed buffers of thousands of connections
//! (RSS stayed near its peak). Every 10 s the accept loop looks whether 1,000 connections have
//! closed since the high-water mark, and if so has
//! `malloc_trim` hand the free memory back.
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
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::conn::CountedStream;
use crate::state::AppState;

/// Binds `addr` with a listen backlog of [`LISTEN_BACKLOG`] (tokio's `TcpListener::bind` uses
/// 128), so a burst of new connections waits in the kernel's queue for the accept loop instead
/// of having its SYNs dropped and retried a second or more later.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's bind does: a restarted server can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listen backlog [`listen`] asks for (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

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
    let builder = http_builder(&state.config);
    let max_connections = state.config.max_connections as u64;
    let refusal = refusal(&state.config.instance_id);
    let mut refusals = Throttle::default();
    let mut accept_errors = Throttle::default();
    tokio::pin!(shutdown);

    // Until `shutdown`: serve. Then drain: keep serving HTTP (`/readyz` answers 503, Twilio's
    // callbacks for live calls still land), refuse new media streams, and stop once no call
    // is live, or when the drain deadline has passed and the bridge has closed the rest.
    let mut drain_until: Option<tokio::time::Instant> = None;
    // Made once, so a steady stream of new connections cannot keep resetting it.
    let mut drain_poll = tokio::time::interval(DRAIN_POLL);
    drain_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory_check = tokio::time::interval(MEMORY_CHECK);
    memory_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut after_flood = AfterFlood::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if state.metrics.open_connections() >= max_connections => {
                    refuse(stream, &refusal);
                    state.metrics.connection_refused();
                    if let Some(more) = refusals.note() {
                        tracing::warn!(
                            max_connections,
                            refused_since_last_line = more,
                            "refusing connections: MAX_CONNECTIONS are open (answered 503)"
                        );
                    }
                    continue;
                }
                Ok(pair) => pair,
                // The peer gave up before its connection was accepted: nothing to do.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    state.metrics.accept_error();
                    if let Some(more) = accept_errors.note() {
                        tracing::warn!(
                            error = %e,
                            failed_since_last_line = more,
                            open_connections = state.metrics.open_connections(),
                            "accept failed; pausing the accept loop"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
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
            _ = memory_check.tick() => {
                let open = state.metrics.open_connections();
                if let Some(high_water) = after_flood.closed_enough(open) {
                    tracing::info!(
                        from = high_water,
                        to = open,
                        "open connections fell: returning freed memory to the system"
                    );
                    tokio::task::spawn_blocking(release_freed_memory);
                }
                continue;
            }
        };
        after_flood.admitted(state.metrics.open_connections() + 1);
        let _ = stream.set_nodelay(true);
        let stream = CountedStream::new(stream, Arc::clone(&state.metrics));
        let state = state.clone();
        let builder = builder.clone();
        let notify = notify_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            connection(state, &builder, stream, peer, notify).await;
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

/// hyper's HTTP/1.1 server settings for both listeners: keep-alive, and the request head
/// within `HEADER_READ_TIMEOUT`.
fn http_builder(config: &Config) -> Arc<http1::Builder> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    Arc::new(builder)
}

/// Most connections the health listener ([`serve_health`]) holds open at once.
pub const HEALTH_MAX_CONNECTIONS: usize = 32;

/// Serves the health listener (`HEALTH_PORT`) for the life of the process: `/healthz`,
/// `/readyz`, `/metrics` and `/version` only (404 for anything else), with its own small cap
/// ([`HEALTH_MAX_CONNECTIONS`], the same bare 503 beyond it) and outside `MAX_CONNECTIONS`. An
/// orchestrator's probes on this port keep reaching a server whose main port is held at its
/// cap by a flood, so a flood takes the instance out of rotation (readiness) without getting
/// it restarted (liveness), live calls and all. Keep the port private to the pod or host.
pub async fn serve_health(listener: TcpListener, state: Arc<AppState>) {
    let open = Arc::new(AtomicUsize::new(0));
    let refusal = refusal(&state.config.instance_id);
    let builder = http_builder(&state.config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= HEALTH_MAX_CONNECTIONS {
            refuse(stream, &refusal);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (state, open, builder) = (state.clone(), open.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let response = match req.uri().path() {
                        "/healthz" | "/readyz" | "/metrics" | "/version" => {
                            crate::routes::handle(&state, req, peer).await
                        }
                        _ => crate::routes::HttpError::NotFound.into_response(),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serves one connection: waits (at most `HEADER_READ_TIMEOUT`) for its first byte, then runs
/// hyper on it with what is left of that timeout for the rest of the request head.
async fn connection(
    state: Arc<AppState>,
    builder: &http1::Builder,
    stream: CountedStream,
    peer: SocketAddr,
    mut notify: watch::Receiver<bool>,
) {
    let timeout = state.config.header_read_timeout;
    let started = tokio::time::Instant::now();
    // `peek`, not `readable`: a freshly accepted stream reports itself readable once before
    // anything has arrived, and `peek` goes back to waiting when the socket says it is empty.
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(timeout, stream.tcp().peek(&mut first)) => {
            if !matches!(peeked, Ok(Ok(1..))) {
                // Nothing within the header timeout, the client closed, or a socket error:
                // closed without an answer, as hyper closes a slow request head.
                return;
            }
        }
        _ = notify.changed() => return,
    }
    let mut builder = builder.clone();
    builder.header_read_timeout(
        timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1)),
    );
    // Boxed: while the task waits above, it holds only this pointer's worth of hyper.
    Box::pin(serve_http(state, &builder, stream, peer, notify)).await;
}

/// Runs hyper's HTTP/1.1 server (with upgrades) on one connection until it ends or, once the
/// drain is over, its in-flight request is answered.
async fn serve_http(
    state: Arc<AppState>,
    builder: &http1::Builder,
    stream: CountedStream,
    peer: SocketAddr,
    mut notify: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let state = state.clone();
        // Boxed: hyper keeps the handler's future inside the connection, so unboxed its size
        // (several KiB) would be held by every open connection, even between requests.
        Box::pin(async move {
            Ok::<_, std::convert::Infallible>(crate::routes::handle(&state, req, peer).await)
        })
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
}

/// The answer to a connection beyond `MAX_CONNECTIONS`, built once.
fn refusal(instance_id: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\nx-handset-instance: {instance_id}\r\n\r\n"
    )
    .into_bytes()
}

/// Refuses a connection: one non-blocking write of `answer` (a fresh socket's send buffer
/// takes it whole; if not, the peer gets less), then close. Never waits on the peer, and reads
/// nothing: a request already sent makes the close a reset.
fn refuse(stream: TcpStream, answer: &[u8]) {
    // Out of the reactor, still non-blocking: a write straight to the socket.
    if let Ok(stream) = stream.into_std() {
        let _ = (&stream).write(answer);
    }
}

/// Accept errors that concern one connection that is already gone, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// Rate-limits one kind of log line: the first event logs, then at most one line per
/// [`LOG_EVERY`], saying how many events it stands for.
#[derive(Debug, Default)]
struct Throttle {
    next: Option<tokio::time::Instant>,
    since: u64,
}

impl Throttle {
    /// Notes an event; `Some(n)` when a line should be logged now (`n` events since the last
    /// line, this one included).
    fn note(&mut self) -> Option<u64> {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.since))
    }
}

/// The high-water mark of open connections since memory was last released.
#[derive(Debug, Default)]
struct AfterFlood {
    high_water: u64,
}

impl AfterFlood {
    /// Notes that `open` connections are open after an accept.
    fn admitted(&mut self, open: u64) {
        self.high_water = self.high_water.max(open);
    }

    /// `Some(high-water mark)` when at least [`RELEASE_AFTER_CLOSED`] connections have closed
    /// since it was reached (the mark then starts again from `open`).
    fn closed_enough(&mut self, open: u64) -> Option<u64> {
        let high_water = self.high_water;
        if high_water.saturating_sub(open) < RELEASE_AFTER_CLOSED {
            return None;
        }
        self.high_water = open;
        Some(high_water)
    }
}

/// Hands memory that is free but still held by the allocator back to the system. glibc's malloc
/// keeps freed memory inside its heaps (only the top of a heap is trimmed by itself), so after
/// thousands of connections closed, the process would stay at its flood size. Elsewhere a
/// no-op.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps under their locks and madvises free
    // pages; it takes no pointer and touches no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the accept loop checks whether connections have fallen enough to release memory.
const MEMORY_CHECK: Duration = Duration::from_secs(10);

/// Connections that must have closed since the high-water mark before freed memory is released:
/// an HTTP connection holds about 15 KiB, so this is some 15 MiB.
const RELEASE_AFTER_CLOSED: u64 = 1_000;

/// Refusals and accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after an accept error (out of descriptors), so it neither
/// spins nor floods the log while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a draining server checks whether its last call has ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// How long open HTTP connections get to finish their request once the drain is over.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_released_once_enough_connections_closed_since_the_high_water_mark() {
        let mut flood = AfterFlood::default();
        assert_eq!(flood.closed_enough(0), None);
        for open in 1..=1_500 {
            flood.admitted(open);
        }
        assert_eq!(flood.closed_enough(1_000), None, "only 500 closed");
        assert_eq!(flood.closed_enough(400), Some(1_500), "1,100 closed");
        // The mark starts again from what is open: a slow decline counts from there.
        assert_eq!(flood.closed_enough(0), None);
        flood.admitted(1_200);
        assert_eq!(flood.closed_enough(200), Some(1_200));
        assert_eq!(flood.closed_enough(200), None);
    }
}
