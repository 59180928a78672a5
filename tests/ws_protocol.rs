//! The Media Streams WebSocket at the protocol level, over real sockets against the real server
//! (in-process, loopback):
//!
//! - frames that break RFC 6455 — an unknown opcode, reserved bits set, a text frame that is not
//!   UTF-8, an unmasked client frame — written as raw bytes after a real signed upgrade, close
//!   the stream with 1002 (1007 for the UTF-8 case), exactly one close frame, and are counted as
//!   `protocol_error` / `invalid_utf8` in `/metrics`, before `start` and during a call;
//! - binary frames before `start` count toward the 50-message cap;
//! - a caller whose socket stops reading is closed, logged and counted as `stalled` within
//!   `WS_WRITE_TIMEOUT` plus the few seconds of audio the server's kernel may hold (and what
//!   the caller's own receive buffer takes) — not the minutes an autotuned send buffer absorbed;
//! - a caller that echoed marks (as Twilio does) and then stops reading, on a socket whose
//!   kernel buffers are left to autotune, is closed as `stalled` once its echoes have stopped
//!   for `WS_WRITE_TIMEOUT` + 5 s, by that sign (`sign="mark echoes stopped"`);
//! - a caller that reads slowly, with pauses longer than what the kernel holds but shorter
//!   than `WS_WRITE_TIMEOUT`, is never cut.
//!
//! The audio comes from a fake remote agent (`AGENT_URL`) that sends as much as Handset takes,
//! so the server always has audio to write. Waits are bounded only so that a broken server
//! fails instead of hanging; outcomes are asserted, not timings (the time to notice a stalled
//! reader is printed).

#![allow(clippy::disallowed_methods)] // the stall test prints how long detection took

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use support::{
    Logs, TestServer, Ws, call_sid, media, open_call, open_call_over, silence_payload, stream_sid,
    ws_connect,
};

/// Upper bound on any wait (generous: a correct server needs a fraction of it).
const PATIENCE: Duration = Duration::from_secs(60);

/// A client frame: `first` is the first header byte (FIN, RSV1–3, opcode) as written;
/// `masked` false leaves the mask bit clear (a protocol violation from a client).
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let key = [0x37u8, 0xFA, 0x21, 0x3D];
    let mut frame = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// What the server sent after a bad frame, read as raw WebSocket frames until the connection
/// ended.
#[derive(Debug, Default)]
struct RawEnding {
    /// The code of every close frame received, in order.
    closes: Vec<u16>,
    /// The reason of the first close frame.
    reason: String,
    /// The connection ended (EOF or reset) within [`PATIENCE`].
    ended: bool,
}

/// Reads server frames (unmasked) from `tcp` until EOF, a reset, or [`PATIENCE`].
async fn read_raw_frames(tcp: &mut TcpStream) -> RawEnding {
    let mut seen = RawEnding::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // Parse every complete frame in `buf`.
        loop {
            if buf.len() < 2 {
                break;
            }
            let opcode = buf[0] & 0x0F;
            let (len, header) = match buf[1] & 0x7F {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < header + len {
                break;
            }
            let payload = &buf[header..header + len];
            if opcode == 0x8 {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                if seen.closes.is_empty() {
                    seen.reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                }
                seen.closes.push(code);
            }
            buf.drain(..header + len);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.ended = true;
                return seen;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return seen,
        }
    }
}

/// The value of the `/metrics` sample that starts with `prefix` (name and labels), 0 if absent.
async fn metric(server: &TestServer, prefix: &str) -> f64 {
    let reply = support::send(
        http::Request::get(server.url("/metrics"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One frame that breaks the protocol, and the close it must get.
struct BadFrame {
    what: &'static str,
    bytes: Vec<u8>,
    code: u16,
}

fn bad_frames() -> Vec<BadFrame> {
    let event = br#"{"event":"hologram","streamSid":"x"}"#;
    vec![
        BadFrame {
            what: "reserved data opcode 0x3",
            bytes: client_frame(0x80 | 0x3, event, true),
            code: 1002,
        },
        BadFrame {
            what: "RSV1 set on a text frame",
            bytes: client_frame(0x80 | 0x40 | 0x1, event, true),
            code: 1002,
        },
        BadFrame {
            what: "text frame that is not UTF-8",
            bytes: client_frame(0x81, b"{\"event\":\"\xC3\x28\xFF\"}", true),
            code: 1007,
        },
        BadFrame {
            what: "unmasked client text frame",
            bytes: client_frame(0x81, event, false),
            code: 1002,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_during_a_call_close_with_1002_or_1007_and_are_counted() {
    let logs = Logs::capture();
    let server = TestServer::start(&[]).await;
    for (i, bad) in bad_frames().into_iter().enumerate() {
        let n = 100 + i as u32;
        let ws = open_call(&server, n).await;
        // The call is running (the greeting is being written) when the bad frame arrives.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while server.state.active_calls.count() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut tcp = ws.into_inner();
        tcp.write_all(&bad.bytes).await.unwrap();
        let seen = read_raw_frames(&mut tcp).await;
        assert_eq!(seen.closes, vec![bad.code], "{}: one close frame", bad.what);
        assert!(seen.ended, "{}: the server ended the connection", bad.what);
        let line = logs
            .wait_for("WS protocol error: closing", &call_sid(n), PATIENCE)
            .await;
        assert_eq!(line.len(), 1, "{}: one log line", bad.what);
        // The line says what was wrong in fixed words, never the peer's bytes.
        let logged = line[0].to_string();
        assert!(
            !logged.contains("hologram") && !logged.contains('\u{FFFD}'),
            "{logged}"
        );
        assert!(
            !logs
                .wait_for("WS stop", &call_sid(n), PATIENCE)
                .await
                .is_empty(),
            "{}: the call's WS stop line",
            bad.what
        );
    }
    assert_eq!(server.wait_idle(PATIENCE).await, 0);
    for (reason, n) in [("protocol_error", 3.0), ("invalid_utf8", 1.0)] {
        let ended = format!("handset_calls_ended_total{{reason=\"{reason}\"}}");
        let closes = format!("handset_ws_closes_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&server, &ended).await, n, "{ended}");
        assert_eq!(metric(&server, &closes).await, n, "{closes}");
    }
    assert_eq!(
        metric(&server, "handset_calls_ended_total{reason=\"completed\"}").await,
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_before_start_close_with_1002_or_1007_and_are_counted() {
    let server = TestServer::start(&[]).await;
    for bad in bad_frames() {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut tcp = ws_connect(&server, tcp).await.into_inner();
        tcp.write_all(&bad.bytes).await.unwrap();
        let seen = read_raw_frames(&mut tcp).await;
        assert_eq!(seen.closes, vec![bad.code], "{}: one close frame", bad.what);
        assert!(seen.ended, "{}: the server ended the connection", bad.what);
    }
    for (reason, n) in [("protocol_error", 3.0), ("invalid_utf8", 1.0)] {
        let closes = format!("handset_ws_closes_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&server, &closes).await, n, "{closes}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_before_start_count_toward_the_cap() {
    // Long enough that only the cap can close the stream within the test.
    let server = TestServer::start(&[("WS_START_TIMEOUT", "600")]).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut ws = ws_connect(&server, tcp).await;
    for i in 0..50u8 {
        ws.send(Message::binary(vec![i; 8])).await.unwrap();
    }
    // Fifty are tolerated: the stream is still read (a ping is answered).
    ws.send(Message::Ping(b"still-there".to_vec().into()))
        .await
        .unwrap();
    let mut pong = false;
    while !pong {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => pong = true,
            Ok(Some(Ok(_))) => {}
            other => panic!("stream ended after 50 binary frames: {other:?}"),
        }
    }
    // The fifty-first closes it.
    ws.send(Message::binary(vec![0u8; 8])).await.unwrap();
    let ending = support::read_to_end(&mut ws, PATIENCE).await;
    assert_eq!(ending.close, Some(1008), "{ending:?}");
    assert_eq!(ending.reason, "expected start message");
    assert_eq!(
        metric(&server, "handset_ws_closes_total{reason=\"no_start\"}").await,
        1.0
    );
    assert_eq!(
        metric(&server, "handset_ws_errors_total{kind=\"binary\"}").await,
        51.0
    );
    server.stop().await;
}

/// A server whose calls are answered by [`talkative_agent`], with this `WS_WRITE_TIMEOUT` (s).
async fn talkative_server(write_timeout: &str) -> TestServer {
    let agent = talkative_agent().await;
    TestServer::start(&[
        ("AGENT_URL", agent.as_str()),
        ("WS_WRITE_TIMEOUT", write_timeout),
    ])
    .await
}

/// Opens call `n` from a socket whose receive buffer is fixed at 4 KiB (as on a peer that sets
/// `SO_RCVBUF`), so what the server's writes meet is what Handset controls.
async fn open_call_with_small_window(server: &TestServer, n: u32) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    open_call_over(server, n, tcp).await
}

/// A remote agent that, once its call starts, sends 8 kHz audio as fast as Handset takes it
/// (reading and ignoring whatever Handset sends), so the call always has audio to play.
async fn talkative_agent() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                // Wait for `start`, then keep reading in the background.
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() {
                        break;
                    }
                }
                tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
                let format = r#"{"type":"audio_format","encoding":"pcm16le","sample_rate":8000,"channels":1}"#;
                if tx.send(Message::text(format)).await.is_err() {
                    return;
                }
                let second: Vec<u8> = (0..8000)
                    .flat_map(|i| {
                        let phase = i as f32 * 440.0 / 8000.0 * std::f32::consts::TAU;
                        ((phase.sin() * 8_000.0) as i16).to_le_bytes()
                    })
                    .collect();
                for _ in 0..600 {
                    if tx.send(Message::binary(second.clone())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Waits for call `n` to be closed as stalled: logged once (the line is returned), its `WS
/// stop` line written, released, and counted in `calls_ended` and `ws_closes`.
async fn closed_as_stalled(logs: &Logs, server: &TestServer, n: u32) -> serde_json::Value {
    let stall = logs
        .wait_for("WS peer stopped reading: closing", &call_sid(n), PATIENCE)
        .await;
    assert_eq!(stall.len(), 1, "the stall is noticed and logged once");
    assert!(
        !logs
            .wait_for("WS stop", &call_sid(n), PATIENCE)
            .await
            .is_empty(),
        "the call's WS stop line"
    );
    assert_eq!(server.wait_idle(PATIENCE).await, 0, "the call is released");
    for counter in ["handset_calls_ended_total", "handset_ws_closes_total"] {
        assert_eq!(
            metric(server, &format!("{counter}{{reason=\"stalled\"}}")).await,
            1.0,
            "{counter}"
        );
    }
    stall[0].clone()
}

/// Sends `media` silence for `sid` in real time until told to stop (or the socket fails).
fn caller_talks(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    sid: String,
) -> tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>> {
    let (stop_tx, mut stop_rx) =
        tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
    tokio::spawn(async move {
        let payload = silence_payload();
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        let mut chunk = 0u64;
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if sink.send(media(&sid, chunk, &payload)).await.is_err() {
                        return;
                    }
                    chunk += 1;
                }
                done = &mut stop_rx => {
                    let stop = format!(r#"{{"event":"stop","sequenceNumber":"9","streamSid":"{sid}","stop":{{"accountSid":"AC1","callSid":"CA1"}}}}"#);
                    let _ = sink.send(Message::text(stop)).await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    // Keep the sink (and so the socket) until the server closes.
                    std::future::pending::<()>().await;
                }
            }
        }
    });
    stop_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_is_closed_logged_and_counted() {
    let logs = Logs::capture();
    let server = talkative_server("2").await;
    let n = 200;
    // The caller's receive buffer is fixed (as on a peer that sets SO_RCVBUF), so what is
    // measured is what Handset controls: its own queue and its socket's send buffer. Left to
    // autotune, a Linux receiver that is not read keeps growing its buffer toward `tcp_rmem`'s
    // maximum (here a default loopback client held 465 KB, everything sent, after 25 s, and
    // its window was still open); no server setting can bound the peer's kernel. Before the
    // server bounded its own send buffer, this caller was noticed only after minutes.
    let ws = open_call_with_small_window(&server, n).await;
    let stopped_reading = Instant::now();
    let (sink, unread) = ws.split();
    let _talking = caller_talks(sink, stream_sid(n));

    let stall = closed_as_stalled(&logs, &server, n).await;
    eprintln!(
        "stalled reader noticed {:.1} s after it stopped reading (WS_WRITE_TIMEOUT 2 s)",
        stopped_reading.elapsed().as_secs_f64()
    );
    assert_eq!(stall["sign"], "write deadline", "{stall}");
    // The server lets go of the connection: reading now finds its end.
    let mut unread = unread;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match unread.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reads_slowly_but_keeps_up_is_never_cut() {
    let logs = Logs::capture();
    let server = talkative_server("10").await;
    let n = 300;
    // A small receive buffer, so the pauses below outlast what the two kernels hold (the
    // server's send buffer is ~4 s of audio) and the server's writes really wait.
    let ws = open_call_with_small_window(&server, n).await;
    let (sink, mut stream) = ws.split();
    let talking = caller_talks(sink, stream_sid(n));

    // Read in 300 ms clumps (a long round trip) for 24 s, with two 7 s pauses: the longest a
    // frame can wait is 7 s, under the 10 s WS_WRITE_TIMEOUT whatever the kernels hold.
    let mut media = 0u64;
    let mut closed = None;
    for step in 0..80 {
        let pause = if step == 20 || step == 50 {
            Duration::from_secs(7)
        } else {
            Duration::from_millis(300)
        };
        tokio::time::sleep(pause).await;
        while let Ok(next) = tokio::time::timeout(Duration::from_millis(1), stream.next()).await {
            match next {
                Some(Ok(Message::Text(t))) if t.contains(r#""event":"media""#) => media += 1,
                Some(Ok(Message::Close(frame))) => closed = Some(frame),
                None | Some(Err(_)) => closed = Some(None),
                Some(Ok(_)) => {}
            }
            if closed.is_some() {
                break;
            }
        }
        assert!(closed.is_none(), "cut at step {step}: {closed:?}");
    }
    assert!(media > 250, "audio flowed: {media} frames");
    assert!(
        logs.find("WS peer stopped reading: closing", &call_sid(n))
            .is_empty()
    );
    // The caller hangs up; the stream ends normally.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let _ = talking.send(done_tx);
    let _ = done_rx.await;
    let mut code = None;
    let _ = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Close(frame) = msg {
                code = frame.map(|f| u16::from(f.code));
                return;
            }
        }
    })
    .await;
    assert_eq!(code, Some(1000));
    assert_eq!(server.wait_idle(PATIENCE).await, 0);
    assert_eq!(
        metric(&server, "handset_calls_ended_total{reason=\"completed\"}").await,
        1.0
    );
    assert_eq!(
        metric(&server, "handset_calls_ended_total{reason=\"stalled\"}").await,
        0.0
    );
    server.stop().await;
}

/// A caller that plays the agent's audio and echoes its marks, as Twilio does, and then stops
/// reading, on a socket left to the kernel's defaults (its receive buffer autotuned while it
/// read fast): no write of the server's waits yet, since that buffer takes megabytes, but
/// the mark echoes stop, and the server closes the stream as stalled within
/// `WS_WRITE_TIMEOUT` plus the mark-echo grace (5 s), logged, counted and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_mark_echoes_stop_is_closed_whatever_its_buffers_hold() {
    let logs = Logs::capture();
    let server = talkative_server("2").await;
    let n = 400;
    let ws = open_call(&server, n).await;
    let (sink, mut stream) = ws.split();
    let sid = stream_sid(n);
    // Read everything and echo each mark for 3 s, then stop reading (the socket stays open).
    let echoer = tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let echo_sid = sid.clone();
        let mut sink = sink;
        let sender = tokio::spawn(async move {
            let payload = silence_payload();
            let mut interval = tokio::time::interval(Duration::from_millis(20));
            let mut chunk = 0u64;
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        if sink.send(media(&echo_sid, chunk, &payload)).await.is_err() {
                            return;
                        }
                        chunk += 1;
                    }
                    Some(name) = rx.recv() => {
                        let echo = serde_json::json!({"event": "mark", "streamSid": echo_sid,
                            "mark": {"name": name}});
                        if sink.send(Message::text(echo.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut echoed = 0u64;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, stream.next()).await {
            if let Message::Text(text) = msg {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                if value["event"] == "mark" {
                    tx.send(value["mark"]["name"].as_str().unwrap().to_owned())
                        .unwrap();
                    echoed += 1;
                }
            }
        }
        // Keep the unread stream (and the talking sender) alive: the socket stays open.
        (echoed, stream, sender, tx)
    });
    let (echoed, unread, _sender, _tx) = echoer.await.unwrap();
    let stopped_reading = Instant::now();
    assert!(
        echoed > 5,
        "the caller echoed marks while it read ({echoed})"
    );

    let stall = closed_as_stalled(&logs, &server, n).await;
    eprintln!(
        "a caller whose mark echoes stopped was noticed {:.1} s after it stopped reading \
         (WS_WRITE_TIMEOUT 2 s + 5 s grace)",
        stopped_reading.elapsed().as_secs_f64()
    );
    assert_eq!(stall["sign"], "mark echoes stopped", "{stall}");
    drop(unread);
    server.stop().await;
}
