//! The WebSocket family of frames and of the connection itself under a running call
//! (`ws::`): a message or frame over the limit, a frame header claiming 2^62 bytes, frames
//! a client library refuses to send (written raw with [`ws_frame`]), a silent, reset or
//! never-reading peer; each closed with its code or dropped.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{finish_closed, released, running_call};
use crate::PATIENCE;
use crate::case::{Case, Expect, Input, Observed, case};
use crate::support::{
    self, Ending, Logs, TOKEN, TestServer, call_sid, media, open_call, open_call_over, read_raw,
    silence_payload, status_of, stream_sid, twilio_sign,
};

/// The family's rows of the matrix.
pub(crate) static CASES: &[Case] = &[
    case(
        "ws::message_of_70000_bytes",
        Input::OversizeMessage,
        Expect::Close(1009),
    ),
    case("ws::frame_of_1_mib", Input::HugeFrame, Expect::Close(1009)),
    case(
        "ws::frame_header_claiming_2_pow_62_bytes",
        Input::AbsurdFrameLength,
        Expect::Close(1009),
    ),
    case(
        "ws::half_open_silent_past_ws_idle_timeout",
        Input::HalfOpen,
        Expect::Close(1001),
    ),
    case(
        "ws::abrupt_tcp_reset_mid_call",
        Input::AbruptReset,
        Expect::CallDropped,
    ),
    case(
        "ws::close_frame_instead_of_stop",
        Input::RawFrames(|_| ws_frame(0x88, &1000u16.to_be_bytes(), true)),
        Expect::Close(1000),
    ),
    case(
        "ws::reserved_opcode",
        Input::RawFrames(|_| ws_frame(0x83, b"x", true)),
        Expect::Close(1002),
    ),
    case(
        "ws::rsv1_bit_set",
        Input::RawFrames(|_| ws_frame(0xC1, br#"{"event":"mark"}"#, true)),
        Expect::Close(1002),
    ),
    case(
        "ws::unmasked_client_frame",
        Input::RawFrames(|_| ws_frame(0x81, br#"{"event":"x"}"#, false)),
        Expect::Close(1002),
    ),
    case(
        "ws::text_frame_not_utf8",
        Input::RawFrames(|_| ws_frame(0x81, &[0xFF, 0xFE, 0x80], true)),
        Expect::Close(1007),
    ),
    case(
        "ws::peer_stops_reading",
        Input::StopsReading,
        Expect::PeerStalled,
    ),
];

/// Sends a frame- or connection-level `input` under call `n` and returns what was observed.
pub(crate) async fn run_case(server: &TestServer, input: Input, n: u32) -> Observed {
    match input {
        Input::OversizeMessage => {
            let mut ws = running_call(server, n).await;
            let big = format!(r#"{{"event":"media","x":"{}"}}"#, "A".repeat(70_000));
            let _ = ws.send(Message::text(big)).await;
            finish_closed(ws, Some(n)).await
        }
        Input::HugeFrame => {
            let mut ws = running_call(server, n).await;
            let _ = ws.send(Message::binary(vec![0u8; 1 << 20])).await;
            finish_closed(ws, Some(n)).await
        }
        Input::AbsurdFrameLength => {
            let mut tcp = raw_upgrade(server).await;
            // Text frame, masked, 64-bit length 2^62, mask key, no payload.
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            tcp.write_all(&frame).await.unwrap();
            let mut bytes = Vec::new();
            let mut buf = [0u8; 256];
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while let Ok(Ok(k)) =
                tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
                    .await
            {
                if k == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..k]);
            }
            Observed {
                ending: Some(Ending {
                    close: close_code_in(&bytes),
                    ..Ending::default()
                }),
                call_released: true,
                ..Observed::default()
            }
        }
        Input::HalfOpen => {
            let ws = running_call(server, n).await;
            finish_closed(ws, Some(n)).await
        }
        Input::AbruptReset => {
            let mut ws = open_call(server, n).await;
            assert!(support::read_media(&mut ws, 1, PATIENCE).await);
            // SO_LINGER 0: closing sends RST instead of FIN.
            let tcp = ws.into_inner();
            tcp.set_zero_linger().unwrap();
            drop(tcp);
            Observed {
                ending: Some(Ending::default()),
                call_released: released(n).await,
                ..Observed::default()
            }
        }
        Input::StopsReading => stops_reading(server, n).await,
        Input::RawFrames(frames) => {
            let mut ws = running_call(server, n).await;
            // Under tungstenite, which has flushed everything it was given.
            let _ = ws.get_mut().write_all(&frames(&stream_sid(n))).await;
            finish_closed(ws, Some(n)).await
        }
        other => unreachable!("not a frame or connection input: {other:?}"),
    }
}

/// A caller that completes `start` then never reads again while it keeps sending speech (so
/// the server has echoes to send). Its receive buffer is tiny, so the server's writes block.
async fn stops_reading(server: &TestServer, n: u32) -> Observed {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    // A small MSS keeps the server's send buffer small (Linux sizes it from the MSS; loopback's
    // 64 KiB MSS would let it absorb minutes of audio before a write blocks).
    let mss: libc::c_int = 536;
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of!(mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG");
    let tcp = socket.connect(server.addr).await.unwrap();
    let ws = open_call_over(server, n, tcp).await;
    let (mut sink, _unread) = ws.split();
    let sid = stream_sid(n);
    let speech = speech_payloads();
    let mut sent_until_error = true;
    let deadline = tokio::time::Instant::now() + 4 * PATIENCE;
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    let mut chunk = 0u64;
    // Talk in real time for about 10 s (the longest utterance the echo agent records), then
    // pause for 12 s while the echo plays, and again: one ~10 s echo is usually more than the
    // socket buffers hold, but how much the kernel buffers (send-buffer autotuning) and how
    // the VAD splits the talk vary, so the caller keeps the echoes coming until the server's
    // writes block. Marks are never echoed either, since nothing is read.
    let talk = speech.len() * 7;
    let cycle = talk + 600;
    loop {
        interval.tick().await;
        if tokio::time::Instant::now() > deadline {
            sent_until_error = false;
            break;
        }
        let i = chunk as usize % cycle;
        let payload = if i < talk {
            speech[i % speech.len()].clone()
        } else {
            silence_payload()
        };
        if sink.send(media(&sid, chunk, &payload)).await.is_err() {
            break;
        }
        chunk += 1;
    }
    let stall_logged = !Logs::capture()
        .find("WS peer stopped reading: closing", &call_sid(n))
        .is_empty();
    Observed {
        stall_logged,
        ending: Some(Ending {
            timed_out: !sent_until_error,
            dropped: sent_until_error,
            ..Ending::default()
        }),
        call_released: released(n).await,
        ..Observed::default()
    }
}

fn speech_payloads() -> Vec<String> {
    use base64::Engine as _;
    include_bytes!("../../data/hello-world.ulaw")
        .chunks(160)
        .filter(|c| c.len() == 160)
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect()
}

/// A raw WebSocket handshake (signed) on a fresh connection; returns the socket after the 101.
async fn raw_upgrade(server: &TestServer) -> TcpStream {
    let sig = twilio_sign(TOKEN, &server.stream_url(), &[]);
    let req = format!(
        "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Twilio-Signature: {sig}\r\n\r\n",
        server.addr
    );
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_raw(&mut tcp, PATIENCE).await;
    assert_eq!(status_of(&head), 101, "{head}");
    tcp
}

/// One WebSocket frame from the client, whatever its first byte says (FIN, the RSV bits and the
/// opcode: `0x81` a final text frame, `0x83` the reserved opcode 3, `0xC1` a text frame with
/// RSV1 set, `0x88` a close), masked as a client must unless `masked` is false.
pub(crate) fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = frame_head(first, if masked { 0x80 } else { 0 }, payload.len());
    if masked {
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// The first byte, then the mask bit and the payload length (7 bits, or 126 and 16 bits, or
/// 127 and 64 bits).
fn frame_head(first: u8, mask_bit: u8, len: usize) -> Vec<u8> {
    let mut head = vec![first];
    match u16::try_from(len) {
        Ok(short) if short < 126 => head.push(mask_bit | short as u8),
        Ok(medium) => {
            head.push(mask_bit | 126);
            head.extend_from_slice(&medium.to_be_bytes());
        }
        Err(_) => {
            head.push(mask_bit | 127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    head
}

/// The close code in the first server close frame found in `bytes` (unmasked server frames).
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0F;
        let (len, header) = match bytes[i + 1] & 0x7F {
            126 if i + 4 <= bytes.len() => (
                usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]])),
                4,
            ),
            127 => return None,
            n => (usize::from(n), 2),
        };
        let body = i + header;
        if opcode == 0x8 && len >= 2 && body + 2 <= bytes.len() {
            return Some(u16::from_be_bytes([bytes[body], bytes[body + 1]]));
        }
        i = body + len;
    }
    None
}
