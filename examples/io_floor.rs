//! The I/O floor: what N calls' WebSocket messages cost with no media work at all.
//!
//! Opens N loopback WebSocket pairs (tokio-tungstenite, one task per side, like Handset's shell
//! and the simulator) and has each side send one ~400-byte text message (the size of a Twilio
//! `media` message) every 20 ms on its own timer, with the pairs' 20 ms phases spread evenly
//! over the cycle, while reading everything the other side sends. Nothing is parsed, decoded or
//! resampled. After a ramp and a settling second it reads this process's CPU time from
//! `/proc/self/stat` over a measurement window and prints it with the messages received, so the
//! cost of the socket work alone (syscalls, epoll, task wake-ups, timers, WebSocket framing) for
//! both ends of N calls can be compared with a real run of the server and the simulator.
//!
//! ```text
//! cargo run --release --example io_floor -- 200 500 1000   # N values; 10 s window each
//! IO_FLOOR_SECONDS=20 IO_FLOOR_THREADS=2 cargo run --release --example io_floor -- 1000
//! ```
//!
//! Assumes Linux (`/proc`) and enough file descriptors for 2·N sockets (`ulimit -n`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// One message every 20 ms each way per pair.
const PERIOD: Duration = Duration::from_millis(20);
/// Bytes per message (a Twilio `media` message with its base64 payload is 380–400 bytes).
const MESSAGE_BYTES: usize = 400;

/// Both ends use the server's socket settings (shell/src/bridge/mod.rs): a 2 KiB read buffer
/// (tungstenite zero-fills the free part of its read buffer before every read, so its 128 KiB
/// default would measure memset, not I/O) and an 8 KiB write buffer.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (read by the
/// simulator's own process sampler).
fn cpu_seconds() -> f64 {
    handset_sim::procfs::sample(0).map_or(0.0, |s| s.cpu_ms as f64 / 1000.0)
}

/// Sends one message per tick (first at `start`) and counts what it reads, until `end`.
async fn run_side<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    start: Instant,
    end: Instant,
    received: Arc<AtomicU64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let text: String = std::iter::repeat_n('A', MESSAGE_BYTES).collect();
    let payload = tokio_tungstenite::tungstenite::Utf8Bytes::from(text);
    let mut tick = tokio::time::interval_at(start, PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= end {
                    break;
                }
                if tx.send(Message::Text(payload.clone())).await.is_err() {
                    break;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(_))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    let _ = tx.close().await;
}

async fn measure(n: usize, window: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(200);
    // Ramp: connections open as fast as they can; timers start after the ramp, with phases
    // spread over 20 ms.
    let ramp = Duration::from_millis(200 + n as u64 * 2);
    let end = t0 + ramp + Duration::from_secs(1) + window + Duration::from_millis(500);
    let mut tasks = Vec::with_capacity(2 * n);
    for i in 0..n {
        let phase = PERIOD * i as u32 / n as u32;
        let start = t0 + ramp + phase;
        let client = tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            tokio_tungstenite::client_async_with_config(
                format!("ws://{addr}/"),
                stream,
                Some(ws_config()),
            )
            .await
            .map(|(ws, _)| ws)
            .map_err(std::io::Error::other)
        });
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let server = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
            .await
            .map_err(std::io::Error::other)?;
        let client = client.await.map_err(std::io::Error::other)??;
        // The server side sends half a period out of phase with the client, as a pacer would.
        let (r1, r2) = (Arc::clone(&received), Arc::clone(&received));
        tasks.push(tokio::spawn(run_side(client, start, end, r1)));
        tasks.push(tokio::spawn(run_side(server, start + PERIOD / 2, end, r2)));
    }
    tokio::time::sleep_until(t0 + ramp + Duration::from_secs(1)).await;
    let (cpu0, msgs0, wall0) = (
        cpu_seconds(),
        received.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (cpu1, msgs1, wall1) = (
        cpu_seconds(),
        received.load(Ordering::Relaxed),
        Instant::now(),
    );
    let wall = (wall1 - wall0).as_secs_f64();
    let cpu = (cpu1 - cpu0) / wall;
    let rate = (msgs1 - msgs0) as f64 / wall;
    let expected = 2.0 * n as f64 / PERIOD.as_secs_f64();
    println!(
        "| {n} | {:.1} | {:.3} | {:.0} | {:.0} | {:.2} |",
        cpu * 100.0,
        cpu * 100.0 / n as f64,
        rate,
        expected,
        cpu * 1e6 / rate.max(1.0),
    );
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![200, 500, 1000]
    } else {
        ns
    };
    let seconds: u64 = std::env::var("IO_FLOOR_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let threads: usize = std::env::var("IO_FLOOR_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    println!(
        "tokio worker threads: {threads}; window {seconds} s per row; both ends of every pair in this process"
    );
    println!(
        "| pairs | CPU (% of a core) | per pair (% of a core) | messages received /s | expected /s | CPU µs per message |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in ns {
        runtime.block_on(measure(n, Duration::from_secs(seconds)))?;
    }
    Ok(())
}
