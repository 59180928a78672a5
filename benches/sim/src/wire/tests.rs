//! The capture read back from hand-made pcap files: frames split across segments and several
//! in one, retransmissions and reordering, control frames, fragments, webhooks and bad
//! messages, other link and IP types, bad captures, and the join to the calls.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

use super::*;
use crate::observer::CallMetrics;

const SERVER: u16 = 3117;
const CLIENT: u16 = 40_001;
const SID: &str = "MZ1";

/// An unmasked server frame: FIN + opcode, then the 7- or 16-bit length.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=65_535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn media(bytes: usize) -> Vec<u8> {
    let payload = STANDARD.encode(vec![0xFF_u8; bytes]);
    frame(
        1,
        true,
        format!(r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"{payload}"}}}}"#)
            .as_bytes(),
    )
}

fn mark() -> Vec<u8> {
    frame(
        1,
        true,
        format!(r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":"m"}}}}"#).as_bytes(),
    )
}

fn clear() -> Vec<u8> {
    frame(
        1,
        true,
        format!(r#"{{"event":"clear","streamSid":"{SID}"}}"#).as_bytes(),
    )
}

const HANDSHAKE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";

/// A segment: capture time (µs), TCP sequence number, SYN flag, payload.
type Seg = (u64, u32, bool, Vec<u8>);

fn pcap(datalink: DataLink, segments: &[Seg], ports: (u16, u16)) -> Vec<u8> {
    let header = PcapHeader {
        datalink,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (us, seq, syn, payload) in segments {
        let mut data = Vec::new();
        let (src, dst) = ([127, 0, 0, 1], [127, 0, 0, 1]);
        match datalink {
            DataLink::ETHERNET => {
                let b = PacketBuilder::ethernet2([0; 6], [0; 6])
                    .ipv4(src, dst, 64)
                    .tcp(ports.0, ports.1, *seq, 65_535);
                let b = if *syn { b.syn().ack(1) } else { b.ack(1) };
                b.write(&mut data, payload).unwrap();
            }
            DataLink::LINUX_SLL2 => {
                let mut sll2 = vec![0u8; 20];
                sll2[..2].copy_from_slice(&0x86dd_u16.to_be_bytes());
                data.extend_from_slice(&sll2);
                let b =
                    PacketBuilder::ipv6([0; 16], [0; 16], 64).tcp(ports.0, ports.1, *seq, 65_535);
                let b = if *syn { b.syn().ack(1) } else { b.ack(1) };
                b.write(&mut data, payload).unwrap();
            }
            other => panic!("{other:?}"),
        }
        let packet = PcapPacket::new(Duration::from_micros(*us), data.len() as u32, &data);
        writer.write_packet(&packet).unwrap();
    }
    writer.into_writer()
}

fn read(segments: &[Seg]) -> CaptureContents {
    read_pcap(
        pcap(DataLink::ETHERNET, segments, (SERVER, CLIENT)).as_slice(),
        &[SERVER],
    )
    .unwrap()
}

fn kinds(c: &Connection) -> Vec<(u64, WireKind)> {
    c.messages
        .iter()
        .map(|m| (m.at.as_micros() as u64, m.kind))
        .collect()
}

#[test]
fn frames_split_across_segments_and_several_in_one_are_timed_by_their_last_byte() {
    let isn = 1_000u32;
    let m1 = media(160); // 16-bit length (> 125 bytes)
    let m2 = mark();
    let m3 = media(80);
    let mut both = m1.clone();
    both.extend_from_slice(&m2);
    // m3 split in three; its last byte comes at 4_000 µs.
    let (a, rest) = m3.split_at(1);
    let (b, c) = rest.split_at(10);
    let mut s = isn + 1;
    let mut segs = vec![(10, isn, true, Vec::new())];
    for (us, bytes) in [
        (100, HANDSHAKE.to_vec()),
        (1_000, both),
        (2_000, a.to_vec()),
        (3_000, b.to_vec()),
        (4_000, c.to_vec()),
        (5_000, clear()),
    ] {
        let len = bytes.len() as u32;
        segs.push((us, s, false, bytes));
        s += len;
    }
    let got = read(&segs);
    assert_eq!(got.packets, 7);
    assert_eq!(got.connections.len(), 1);
    let conn = &got.connections[0];
    assert!(conn.websocket);
    assert_eq!(conn.problem, None);
    assert_eq!(conn.stream_sid.as_deref(), Some(SID));
    assert_eq!(conn.client.port(), CLIENT);
    assert_eq!(
        kinds(conn),
        [
            (1_000, WireKind::Media(160)),
            (1_000, WireKind::Mark),
            (4_000, WireKind::Media(80)),
            (5_000, WireKind::Clear)
        ]
    );
}

#[test]
fn retransmissions_and_out_of_order_segments_are_reassembled_once() {
    let isn = u32::MAX - 50; // the sequence numbers wrap inside the stream
    let mut bytes = HANDSHAKE.to_vec();
    let m = [media(160), media(160), media(160)];
    let offsets: Vec<usize> = m
        .iter()
        .scan(bytes.len(), |at, f| {
            let start = *at;
            *at += f.len();
            Some(start)
        })
        .collect();
    for f in &m {
        bytes.extend_from_slice(f);
    }
    let seq = |off: usize| isn.wrapping_add(1).wrapping_add(off as u32);
    let part = |from: usize, to: usize| bytes[from..to].to_vec();
    let (o1, o2) = (offsets[1], offsets[2]);
    let segs = vec![
        (10, isn, true, Vec::new()),
        (100, seq(0), false, part(0, o1)),
        // the first frame again (a retransmission), a little later
        (150, seq(offsets[0]), false, part(offsets[0], o1)),
        // frame 3 arrives before frame 2
        (300, seq(o2), false, part(o2, bytes.len())),
        (400, seq(o1), false, part(o1, o2)),
        // a retransmission overlapping what is already in sequence
        (500, seq(o1 + 10), false, part(o1 + 10, bytes.len())),
    ];
    let got = read(&segs);
    let conn = &got.connections[0];
    assert_eq!(conn.problem, None);
    assert_eq!(
        kinds(conn),
        [
            (100, WireKind::Media(160)),
            // frame 2 completed at 400; frame 3 became readable then too
            (400, WireKind::Media(160)),
            (400, WireKind::Media(160)),
        ]
    );
}

#[test]
fn control_frames_fragments_webhooks_and_bad_messages() {
    // A webhook connection (200 + TwiML) on another client port is not a stream.
    let webhook = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec();
    let mut stream = HANDSHAKE.to_vec();
    stream.extend(frame(0x9, true, b"ping"));
    let text = format!(r#"{{"event":"clear","streamSid":"{SID}"}}"#);
    let (x, y) = text.as_bytes().split_at(7);
    stream.extend(frame(1, false, x));
    stream.extend(frame(0xA, true, b""));
    stream.extend(frame(0, true, y));
    stream.extend(frame(2, true, b"\x01\x02"));
    stream.extend(frame(1, true, br#"{"event":"clear","streamSid":"MZ2"}"#));
    stream.extend(frame(
        1,
        true,
        br#"{"event":"media","streamSid":"MZ1","media":{"payload":"@@"}}"#,
    ));
    stream.extend(frame(0x8, true, b"\x03\xe8"));
    stream.extend(media(160)); // after the close: ignored
    let mut file = pcap(
        DataLink::ETHERNET,
        &[(10, 7, false, webhook)],
        (SERVER, 40_000),
    );
    let more = pcap(
        DataLink::ETHERNET,
        &[(20, 9, false, stream)],
        (SERVER, CLIENT),
    );
    file.extend_from_slice(&more[24..]); // same header: append the records
    let got = read_pcap(file.as_slice(), &[SERVER]).unwrap();
    assert_eq!(got.connections.len(), 2);
    assert!(!got.connections[0].websocket);
    assert!(got.connections[0].messages.is_empty());
    let conn = &got.connections[1];
    assert_eq!(
        kinds(conn),
        [
            (20, WireKind::Clear),
            (20, WireKind::Malformed("binary frame")),
            (20, WireKind::Malformed("wrong streamSid")),
            (20, WireKind::Malformed("bad media payload")),
        ]
    );
}

#[test]
fn linux_cooked_v2_and_ipv6_are_read() {
    let mut bytes = HANDSHAKE.to_vec();
    bytes.extend(media(160));
    let got = read_pcap(
        pcap(
            DataLink::LINUX_SLL2,
            &[(7, 1, false, bytes)],
            (SERVER, CLIENT),
        )
        .as_slice(),
        &[SERVER],
    )
    .unwrap();
    assert_eq!(kinds(&got.connections[0]), [(7, WireKind::Media(160))]);
    assert_eq!(got.connections[0].client.ip(), IpAddr::from([0u16; 8]));
}

#[test]
fn a_bad_capture_is_a_clear_error_not_a_panic() {
    let err = read_pcap(&b"not a capture at all"[..], &[SERVER]).unwrap_err();
    assert!(err.to_string().contains("not a pcap file"), "{err}");
    let mut file = pcap(
        DataLink::ETHERNET,
        &[(1, 1, false, HANDSHAKE.to_vec())],
        (SERVER, CLIENT),
    );
    file.truncate(file.len() - 10);
    let err = read_pcap(file.as_slice(), &[SERVER]).unwrap_err();
    assert!(err.to_string().contains("packet 1"), "{err}");
    // A stream that is not HTTP, and a frame that is not WebSocket, are reported per stream.
    let got = read(&[(1, 1, false, b"\x89garbage\r\n\r\n".to_vec())]);
    assert!(got.connections[0].problem.is_some());
    let mut bad = HANDSHAKE.to_vec();
    bad.extend_from_slice(&[0x83, 0x00]); // reserved opcode
    let got = read(&[(1, 1, false, bad)]);
    let problem = got.connections[0].problem.clone().unwrap();
    assert!(problem.contains("bad WebSocket frame"), "{problem}");
}

#[test]
fn join_measures_interval_error_at_wire_times_with_the_observer() {
    // 20 ms frames; the 5th is 3 ms late.
    let mut bytes = HANDSHAKE.to_vec();
    let mut segs = Vec::new();
    let mut seq = 1u32 + bytes.len() as u32;
    segs.push((0, 1, false, std::mem::take(&mut bytes)));
    for k in 0..10u64 {
        let f = media(160);
        let late = if k == 4 { 3_000 } else { 0 };
        segs.push((1_000_000 + k * 20_000 + late, seq, false, f.clone()));
        seq += f.len() as u32;
    }
    let got = read(&segs);
    let mut calls = vec![CallMetrics {
        local_port: Some(CLIENT),
        stream_sid: SID.to_owned(),
        media_received: 9,
        ..CallMetrics::default()
    }];
    let group = join(&mut calls, &got, CaptureStats::default(), |_| true);
    assert_eq!((group.calls_found, group.calls_missing), (1, 0));
    assert_eq!(group.media, 10);
    assert_eq!(group.media_mismatches, 1, "the simulator read 9");
    let wire = calls[0].wire.as_ref().unwrap();
    assert_eq!(wire.intervals.len(), 9);
    let late: Vec<_> = wire.intervals.iter().filter(|(_, e)| *e > 0.0).collect();
    assert_eq!(late, [&(4, 3.0), &(5, 3.0)]);
    assert_eq!(wire.media_at_ns[4], 1_083_000_000);
    assert_eq!(group.interval_error.max_ms, 3.0);
    // A call whose port is not in the capture is missing.
    let mut other = vec![CallMetrics {
        local_port: Some(1),
        stream_sid: SID.to_owned(),
        ..CallMetrics::default()
    }];
    let group = join(&mut other, &got, CaptureStats::default(), |_| false);
    assert_eq!(group.calls_missing, 1);
    assert!(!group.complete());
}

#[test]
fn the_filter_names_every_port() {
    let f = filter(&[3117, 8765]);
    assert!(f.contains("src port 3117 or src port 8765"), "{f}");
}
