//! A Media Streams server with known pacing faults, and the checker for the wire calibration
//! (`scripts/wire-calibration.sh`).
//!
//! `serve` answers any voice-webhook POST with `<Connect><Stream url="ws://…/stream">`, accepts
//! the WebSocket, reads `connected` and `start`, then sends [`FRAMES`] `media` messages of 160
//! bytes, one every 20 ms on absolute deadlines (`clock_nanosleep` on `CLOCK_MONOTONIC`, then a
//! spin for the last millisecond), with
//! the frames in [`DELAYS`] held back by known amounts. For every frame it logs the
//! `CLOCK_REALTIME` just before and just after its `write`, in ns: the kernel's capture
//! timestamp of that frame must lie between the two.
//!
//! `check` reads that log and `handset-sim`'s `report.json` (run with `--wire-capture`) and
//! checks, per call: the wire saw every frame, and each frame's wire time lies inside its write
//! window (exact: the kernel stamps a loopback packet inside the `write` that sends it); every
//! wire interval error equals the injected delay difference, up to where inside their writes
//! the two packets were stamped, wherever the server kept its schedule (intervals next to a
//! write that started late or took unusually long are listed as excused; more than 5 % excused
//! fails as too busy a machine); and the simulator's
//! own figures (read after its process was stopped and resumed) are visibly worse. The checker
//! lives here because the server owns the delay schedule.
//!
//! ```text
//! cargo run --example delay_server -- serve --port 3190 --log server.log
//! cargo run --example delay_server -- check --log server.log --report sim-report/report.json
//! ```
#![allow(clippy::disallowed_methods)] // a test server: it reads clocks, sleeps and owns threads

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, WebSocket};

/// Frames sent per stream (8 s).
const FRAMES: u64 = 400;
/// Frame period.
const PERIOD_NS: u64 = 20_000_000;
/// Frames held back, and by how much (µs).
const DELAYS: &[(u64, u64)] = &[
    (50, 3_000),
    (100, 7_000),
    (150, 1_000),
    (200, 12_000),
    (250, 500),
    (300, 5_000),
    (350, 2_000),
];
/// The first frame goes this long after `start` arrives.
const FIRST_FRAME_NS: u64 = 200_000_000;
/// The last part of each wait is spent spinning.
const SPIN_NS: u64 = 1_000_000;
/// Agreement required between the wire and the truth, µs.
const TOLERANCE_US: f64 = 100.0;

fn delay_us(frame: u64) -> u64 {
    DELAYS
        .iter()
        .find(|(f, _)| *f == frame)
        .map_or(0, |(_, d)| *d)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until 1 ms before `ns` (`CLOCK_MONOTONIC`), then spins to it: a wake-up from sleep
/// can be hundreds of µs late on a busy machine, and the calibration needs the writes on time.
fn sleep_until_monotonic(ns: u64) {
    sleep_abs(ns.saturating_sub(SPIN_NS));
    while clock_ns(libc::CLOCK_MONOTONIC) < ns {
        std::hint::spin_loop();
    }
}

fn sleep_abs(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is valid; a null remainder is allowed with TIMER_ABSTIME.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
}

type Log = Arc<Mutex<std::fs::File>>;

/// One Media Stream: read `connected`/`start`, then send the frames on schedule.
fn stream(tcp: TcpStream, read_ahead: Vec<u8>, log: Log) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let writer_tcp = tcp.try_clone()?;
    let mut reader = WebSocket::from_partially_read(tcp, read_ahead, Role::Server, None);
    let stream_sid = loop {
        let Message::Text(text) = reader.read()? else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str())?;
        if v["event"] == "start" {
            break v["start"]["streamSid"]
                .as_str()
                .context("start without streamSid")?
                .to_owned();
        }
    };
    // Keep reading (and answer the close) on another thread so the client never blocks.
    std::thread::spawn(move || while reader.read().is_ok() {});
    let mut writer = WebSocket::from_raw_socket(writer_tcp, Role::Server, None);
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFF_u8; 160]);
    let text = format!(
        r#"{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}"#
    );
    let t0 = clock_ns(libc::CLOCK_MONOTONIC) + FIRST_FRAME_NS;
    let mut lines = Vec::with_capacity(FRAMES as usize);
    for k in 0..FRAMES {
        sleep_until_monotonic(t0 + k * PERIOD_NS + delay_us(k) * 1_000);
        let before = clock_ns(libc::CLOCK_REALTIME);
        writer.send(Message::text(text.as_str()))?;
        let after = clock_ns(libc::CLOCK_REALTIME);
        lines.push(format!(
            "{stream_sid} {k} {before} {after} {}\n",
            delay_us(k)
        ));
    }
    let mut file = log
        .lock()
        .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
    for line in lines {
        file.write_all(line.as_bytes())?;
    }
    file.flush()?;
    Ok(())
}

async fn handle(
    mut req: Request<Incoming>,
    port: u16,
    log: Log,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let Some(key) = key else {
        let twiml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://127.0.0.1:{port}/stream"/></Connect></Response>"#
        );
        return Ok(Response::builder()
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(twiml)))
            .unwrap_or_default());
    };
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .is_some_and(|p| p.as_bytes() == b"audio.twilio.com");
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(&mut req).await {
            Ok(u) => u,
            Err(e) => return eprintln!("delay_server: upgrade: {e}"),
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() else {
            return eprintln!("delay_server: not a TCP stream");
        };
        let read_ahead = parts.read_buf.to_vec();
        let tcp = match parts.io.into_inner().into_std() {
            Ok(t) => t,
            Err(e) => return eprintln!("delay_server: {e}"),
        };
        if let Err(e) = tcp.set_nonblocking(false) {
            return eprintln!("delay_server: {e}");
        }
        std::thread::spawn(move || {
            if let Err(e) = stream(tcp, read_ahead, log) {
                eprintln!("delay_server: stream: {e:#}");
            }
        });
    });
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
    if offered {
        res = res.header("sec-websocket-protocol", "audio.twilio.com");
    }
    Ok(res.body(Full::default()).unwrap_or_default())
}

async fn serve(port: u16, log_path: &str) -> anyhow::Result<()> {
    let log: Log = Arc::new(Mutex::new(
        std::fs::File::create(log_path).with_context(|| format!("create {log_path}"))?,
    ));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("delay_server: listening on 127.0.0.1:{port}, log {log_path}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let log = log.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, port, log.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

/// One frame as the server logged it.
struct Sent {
    before: u64,
    after: u64,
    delay_us: u64,
}

fn summary(label: &str, mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return format!("{label}: no samples");
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "{label}: n {} p50 {:.3} p99 {:.3} max {:.3}",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

fn check(log_path: &str, report_path: &str) -> anyhow::Result<()> {
    let mut sent: HashMap<String, Vec<Sent>> = HashMap::new();
    let log = std::fs::read_to_string(log_path).with_context(|| format!("read {log_path}"))?;
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [sid, k, before, after, delay] = f[..] else {
            bail!("bad log line {line:?}");
        };
        let frames = sent.entry(sid.to_owned()).or_default();
        if k.parse::<usize>()? != frames.len() {
            bail!("log out of order at {line:?}");
        }
        frames.push(Sent {
            before: before.parse()?,
            after: after.parse()?,
            delay_us: delay.parse()?,
        });
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report_path).with_context(|| format!("read {report_path}"))?,
    )?;
    let groups = report["groups"]
        .as_array()
        .context("no groups in the report")?;
    let mut failures = Vec::new();
    let mut calls = 0;
    for g in groups {
        for call in g["per_call"].as_array().into_iter().flatten() {
            let sid = call["stream_sid"].as_str().unwrap_or_default();
            let Some(frames) = sent.get(sid) else {
                failures.push(format!("call {sid}: not in the server log"));
                continue;
            };
            calls += 1;
            let wire = &call["wire"];
            if wire.is_null() {
                failures.push(format!("call {sid}: not found in the wire capture"));
                continue;
            }
            let wire_at: Vec<u64> = serde_json::from_value(wire["media_at_ns"].clone())
                .context("wire.media_at_ns (run with --timeline-calls ≥ calls)")?;
            let media_read = call["media_received"].as_u64().unwrap_or(0);
            println!(
                "call {sid}: server sent {}, wire saw {}, simulator read {media_read}",
                frames.len(),
                wire_at.len()
            );
            if wire_at.len() != frames.len() || media_read != frames.len() as u64 {
                failures.push(format!("call {sid}: media counts differ"));
                continue;
            }
            // 1. Every wire time inside its write window.
            let mut outside_us: f64 = 0.0;
            let mut position = Vec::new();
            for (s, at) in frames.iter().zip(&wire_at) {
                let below = s.before.saturating_sub(*at) as f64 / 1e3;
                let above = at.saturating_sub(s.after) as f64 / 1e3;
                outside_us = outside_us.max(below).max(above);
                position.push(*at as f64 / 1e3 - s.before as f64 / 1e3);
            }
            let windows: Vec<f64> = frames
                .iter()
                .map(|s| (s.after - s.before) as f64 / 1e3)
                .collect();
            println!("  {}", summary("write window (µs)", windows));
            println!("  {}", summary("wire time − write start (µs)", position));
            println!("  furthest wire time outside its write window: {outside_us:.1} µs");
            if outside_us > TOLERANCE_US {
                failures.push(format!(
                    "call {sid}: a wire time lies {outside_us:.1} µs outside its write window"
                ));
            }
            // 2. Wire interval errors equal the injected delays.
            let intervals: Vec<(u64, f64)> = serde_json::from_value(wire["intervals"].clone())?;
            if intervals.len() != frames.len() - 1 {
                failures.push(format!(
                    "call {sid}: {} wire intervals for {} frames",
                    intervals.len(),
                    frames.len()
                ));
            }
            // Compared where the server kept its word: both writes started on schedule and
            // took a usual time. Where a write was slow (the kernel may have sent the frame
            // anywhere inside it) or started late, the injected delay is not what went out;
            // those intervals are excused and listed (check 1 already bounds their wire times).
            let mut took: Vec<u64> = frames.iter().map(|s| s.after - s.before).collect();
            took.sort_unstable();
            let usual_ns = took[took.len() / 2];
            let slow = |s: &Sent| s.after - s.before > usual_ns + (TOLERANCE_US * 1e3) as u64;
            // A kept interval's two writes started within TOLERANCE_US of their schedule and
            // each took at most `usual + TOLERANCE_US`; the kernel stamps each packet somewhere
            // inside its write. So its wire interval can differ from the planned one by the
            // start error plus the difference of the two stamp positions: at most
            // `TOLERANCE_US + usual + TOLERANCE_US`. (The exact check is the write window above.)
            let bound_us = 2.0 * TOLERANCE_US + usual_ns as f64 / 1e3;
            let mut worst_us: f64 = 0.0;
            let mut compared = 0;
            let mut excused = Vec::new();
            for (k, error_ms) in &intervals {
                let k = *k as usize;
                let injected_ms = frames[k].delay_us.abs_diff(frames[k - 1].delay_us) as f64 / 1e3;
                let off = (error_ms - injected_ms).abs() * 1e3;
                let wrote_ms = (frames[k].before - frames[k - 1].before) as f64 / 1e6;
                let planned_ms =
                    20.0 + (frames[k].delay_us as f64 - frames[k - 1].delay_us as f64) / 1e3;
                let late_us = (wrote_ms - planned_ms).abs() * 1e3;
                let kept = late_us <= TOLERANCE_US && !slow(&frames[k]) && !slow(&frames[k - 1]);
                if kept {
                    compared += 1;
                    worst_us = worst_us.max(off);
                } else if off > bound_us {
                    excused.push(format!(
                        "frame {k}: off by {off:.0} µs; writes took {:.0} and {:.0} µs (usual {:.0}), start {late_us:.0} µs off schedule",
                        (frames[k - 1].after - frames[k - 1].before) as f64 / 1e3,
                        (frames[k].after - frames[k].before) as f64 / 1e3,
                        usual_ns as f64 / 1e3
                    ));
                }
                if injected_ms > 0.0 || off > bound_us {
                    println!(
                        "  frame {k:>3}: injected {injected_ms:>6.3} ms, wire {error_ms:>6.3} ms, app {}",
                        app_interval(call, k as u64)
                            .map_or("–".to_owned(), |a| format!("{a:.3} ms"))
                    );
                }
            }
            println!(
                "  wire interval error vs injected: worst difference {worst_us:.1} µs (bound {bound_us:.1} µs) over {compared} of {} intervals; {} excused:",
                intervals.len(),
                excused.len()
            );
            for e in &excused {
                println!("    {e}");
            }
            if worst_us > bound_us {
                failures.push(format!(
                    "call {sid}: a wire interval error differs from the injected delay by {worst_us:.1} µs"
                ));
            }
            if excused.len() * 20 > intervals.len() {
                failures.push(format!(
                    "call {sid}: the server missed its schedule on {} intervals; the machine is too busy to calibrate",
                    excused.len()
                ));
            }
            // 3. The simulator's own figures are visibly worse.
            let app: Vec<(u64, f64)> = serde_json::from_value(call["intervals"].clone())?;
            let app_off: Vec<f64> = app
                .iter()
                .map(|(k, e)| {
                    let k = *k as usize;
                    let injected = frames[k].delay_us.abs_diff(frames[k - 1].delay_us) as f64 / 1e3;
                    (e - injected).abs()
                })
                .collect();
            let bad = app_off.iter().filter(|d| **d > 1.0).count();
            println!(
                "  {}",
                summary(
                    "simulator-read interval error minus injected (ms)",
                    app_off.clone()
                )
            );
            println!(
                "  simulator-read: {bad} of {} intervals more than 1 ms off; app p99 {} ms, wire p99 {} ms",
                app.len(),
                call["interval_error"]["p99_ms"],
                wire["interval_error"]["p99_ms"]
            );
            if bad * 10 < app.len() {
                failures.push(format!(
                    "call {sid}: the simulator's own figures are not visibly worse ({bad} of {} intervals off by > 1 ms); was it stopped?",
                    app.len()
                ));
            }
        }
    }
    if calls == 0 {
        failures.push("no calls of the server log in the report".to_owned());
    }
    if failures.is_empty() {
        println!("wire calibration: PASS ({calls} calls, tolerance {TOLERANCE_US} µs)");
        Ok(())
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        bail!("wire calibration failed ({} problems)", failures.len())
    }
}

fn app_interval(call: &serde_json::Value, k: u64) -> Option<f64> {
    call["intervals"]
        .as_array()?
        .iter()
        .find(|s| s[0].as_u64() == Some(k))?[1]
        .as_f64()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("serve") => {
            let port = flag("--port")
                .unwrap_or_else(|| "3190".to_owned())
                .parse()?;
            let log = flag("--log").unwrap_or_else(|| "delay-server.log".to_owned());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(serve(port, &log))
        }
        Some("check") => {
            let log = flag("--log").context("check needs --log FILE")?;
            let report = flag("--report").context("check needs --report report.json")?;
            check(&log, &report)
        }
        _ => bail!(
            "usage: delay_server serve [--port P] [--log FILE] | check --log FILE --report report.json"
        ),
    }
}
