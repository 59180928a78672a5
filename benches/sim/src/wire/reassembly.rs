//! Reading a capture back: each packet decoded (Ethernet, Linux cooked or raw IP; IPv4 or
//! IPv6; TCP), each server→client stream reassembled by sequence number, its HTTP response
//! head skipped, and its WebSocket frames parsed into messages, each timed by when it became
//! readable and judged with the simulator's shape check.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Cursor, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{CaptureContents, Connection, WireError, WireKind, WireMessage};
use crate::client::{ServerEvent, check_server_message, stream_sid_of};

/// An HTTP response head longer than this is not one a server sends before a WebSocket.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// A server message longer than this is not a Media Streams message.
const MAX_MESSAGE: u64 = 1 << 20;
/// Out-of-order segments held per stream before it is given up.
const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
enum Phase {
    Http,
    WebSocket,
    Done,
}

/// One direction of one TCP connection being reassembled and parsed.
#[derive(Debug)]
struct Flow {
    /// Sequence number of stream offset 0.
    base: u32,
    /// The next offset expected in sequence.
    next: i64,
    /// Segments beyond a gap: offset → (capture time, bytes).
    pending: BTreeMap<i64, (Duration, Vec<u8>)>,
    /// In-sequence bytes not yet parsed, starting at offset `buf_start`.
    buf: Vec<u8>,
    buf_start: i64,
    /// (end offset, time those bytes were in sequence), for the bytes in `buf`.
    chunks: VecDeque<(i64, Duration)>,
    phase: Phase,
    /// A fragmented data message: (is text, bytes so far).
    partial: Option<(bool, Vec<u8>)>,
    decoded: Vec<u8>,
    conn: Connection,
}

impl Flow {
    fn new(base: u32, server: SocketAddr, client: SocketAddr) -> Self {
        Self {
            base,
            next: 0,
            pending: BTreeMap::new(),
            buf: Vec::new(),
            buf_start: 0,
            chunks: VecDeque::new(),
            phase: Phase::Http,
            partial: None,
            decoded: Vec::new(),
            conn: Connection {
                server,
                client,
                websocket: false,
                stream_sid: None,
                messages: Vec::new(),
                problem: None,
            },
        }
    }

    fn give_up(&mut self, why: String) {
        if self.conn.problem.is_none() {
            self.conn.problem = Some(why);
        }
        self.stop();
    }

    /// Reads nothing more of this stream.
    fn stop(&mut self) {
        self.phase = Phase::Done;
        self.pending.clear();
        self.buf.clear();
        self.chunks.clear();
    }

    /// A segment with `payload` at sequence number `seq`, captured at `at`.
    fn segment(&mut self, at: Duration, seq: u32, payload: &[u8]) {
        if matches!(self.phase, Phase::Done) || payload.is_empty() {
            return;
        }
        // Offsets are signed 32-bit distances from the base, so a retransmission of bytes
        // before the base (or a stream over 2 GiB) cannot be mistaken for new data.
        let start = i64::from(seq.wrapping_sub(self.base).cast_signed());
        let end = start + payload.len() as i64;
        if end <= self.next {
            return; // duplicate or retransmission of bytes already in sequence
        }
        if start > self.next {
            if self.pending.len() >= MAX_PENDING {
                self.give_up(format!(
                    "more than {MAX_PENDING} segments beyond a gap at byte {}",
                    self.next
                ));
                return;
            }
            let keep = self
                .pending
                .get(&start)
                .is_none_or(|(_, held)| held.len() < payload.len());
            if keep {
                let first = self.pending.get(&start).map_or(at, |(t, _)| (*t).min(at));
                self.pending.insert(start, (first, payload.to_vec()));
            }
            return;
        }
        self.append(at, &payload[(self.next - start) as usize..]);
        // Held segments now in sequence became readable with this packet.
        while let Some((&held_start, _)) = self.pending.first_key_value() {
            if held_start > self.next {
                break;
            }
            let Some((_, (_, bytes))) = self.pending.pop_first() else {
                break;
            };
            let held_end = held_start + bytes.len() as i64;
            if held_end > self.next {
                let from = (self.next - held_start) as usize;
                self.append(at, &bytes[from..]);
            }
        }
        self.parse();
    }

    fn append(&mut self, at: Duration, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.next += bytes.len() as i64;
        self.chunks.push_back((self.next, at));
    }

    /// When the byte at `offset` (in `buf`) was in sequence.
    fn time_of(&self, offset: i64) -> Duration {
        let i = self.chunks.partition_point(|(end, _)| *end <= offset);
        self.chunks
            .get(i)
            .or(self.chunks.back())
            .map_or(Duration::ZERO, |c| c.1)
    }

    fn parse(&mut self) {
        let mut pos = 0usize;
        loop {
            match self.phase {
                Phase::Done => return,
                Phase::Http => {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut response = httparse::Response::new(&mut headers);
                    let parsed = match response.parse(&self.buf[pos..]) {
                        Ok(httparse::Status::Complete(len)) => Ok(Some((len, response.code))),
                        Ok(httparse::Status::Partial) => Ok(None),
                        Err(e) => Err(e),
                    };
                    match parsed {
                        Ok(Some((len, Some(101)))) => {
                            pos += len;
                            self.conn.websocket = true;
                            self.phase = Phase::WebSocket;
                        }
                        Ok(Some(_)) => {
                            // A webhook answer, not a Media Stream: nothing more to read.
                            self.stop();
                            return;
                        }
                        Ok(None) if self.buf.len() - pos > MAX_HTTP_HEAD => {
                            self.give_up("no end to the HTTP response head".to_owned());
                            return;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.give_up(format!("not an HTTP response: {e}"));
                            return;
                        }
                    }
                }
                Phase::WebSocket => {
                    let mut cursor = Cursor::new(&self.buf[pos..]);
                    let parsed = FrameHeader::parse(&mut cursor);
                    let head = cursor.position() as usize;
                    let (header, len) = match parsed {
                        Ok(Some(h)) => h,
                        Ok(None) => break,
                        Err(e) => {
                            let at = self.buf_start + pos as i64;
                            self.give_up(format!("bad WebSocket frame at byte {at}: {e}"));
                            return;
                        }
                    };
                    if len > MAX_MESSAGE {
                        self.give_up(format!("a {len}-byte WebSocket frame"));
                        return;
                    }
                    if header.mask.is_some() {
                        self.give_up("a masked frame from the server".to_owned());
                        return;
                    }
                    let total = head + len as usize;
                    if self.buf.len() - pos < total {
                        break;
                    }
                    let last = self.buf_start + (pos + total) as i64 - 1;
                    let at = self.time_of(last);
                    let body = pos + head..pos + total;
                    pos += total;
                    match header.opcode {
                        OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => {
                            self.give_up("a new message inside a fragmented one".to_owned());
                            return;
                        }
                        OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                            let text = kind == Data::Text;
                            if header.is_final {
                                let bytes = self.buf[body].to_vec();
                                self.message(at, text, &bytes);
                            } else {
                                self.partial = Some((text, self.buf[body].to_vec()));
                            }
                        }
                        OpCode::Data(Data::Continue) => {
                            let Some((text, mut bytes)) = self.partial.take() else {
                                self.give_up(
                                    "a continuation frame with nothing to continue".to_owned(),
                                );
                                return;
                            };
                            bytes.extend_from_slice(&self.buf[body]);
                            if header.is_final {
                                self.message(at, text, &bytes);
                            } else {
                                self.partial = Some((text, bytes));
                            }
                        }
                        OpCode::Control(Control::Close) => {
                            self.phase = Phase::Done;
                        }
                        OpCode::Control(_) | OpCode::Data(Data::Reserved(_)) => {}
                    }
                }
            }
        }
        self.buf.drain(..pos);
        self.buf_start += pos as i64;
        while self
            .chunks
            .front()
            .is_some_and(|(end, _)| *end <= self.buf_start)
        {
            self.chunks.pop_front();
        }
    }

    fn message(&mut self, at: Duration, text: bool, bytes: &[u8]) {
        let kind = if !text {
            WireKind::Malformed("binary frame")
        } else if let Ok(text) = std::str::from_utf8(bytes) {
            if self.conn.stream_sid.is_none() {
                self.conn.stream_sid = stream_sid_of(text);
            }
            let sid = self.conn.stream_sid.as_deref().unwrap_or("");
            match check_server_message(text, sid, &mut self.decoded) {
                Ok(ServerEvent::Media) => WireKind::Media(self.decoded.len()),
                Ok(ServerEvent::Mark(_)) => WireKind::Mark,
                Ok(ServerEvent::Clear) => WireKind::Clear,
                Err(what) => WireKind::Malformed(what),
            }
        } else {
            WireKind::Malformed("not UTF-8")
        };
        self.conn.messages.push(WireMessage { at, kind });
    }
}

/// Reads a pcap capture (Ethernet, Linux cooked v1/v2 or raw IP) and returns every
/// server→client connection from one of `server_ports` with its messages.
pub fn read_pcap(input: impl Read, server_ports: &[u16]) -> Result<CaptureContents, WireError> {
    let mut reader = PcapReader::new(input).map_err(|e| {
        WireError::Malformed(format!(
            "not a pcap file ({e}); tcpdump -w writes pcap, not pcapng"
        ))
    })?;
    let header = reader.header();
    let datalink = header.datalink;
    let mut contents = CaptureContents::default();
    let mut flows: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut all: Vec<Flow> = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet
            .map_err(|e| WireError::Malformed(format!("packet {}: {e}", contents.packets + 1)))?;
        contents.packets += 1;
        if (packet.data.len() as u64) < u64::from(packet.orig_len) {
            contents.unreadable += 1;
            continue;
        }
        let sliced = match datalink {
            DataLink::ETHERNET => SlicedPacket::from_ethernet(&packet.data),
            DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(&packet.data),
            DataLink::LINUX_SLL2 => {
                // SLL2: a 20-byte header starting with the EtherType of what follows.
                let Some((head, rest)) = packet.data.split_at_checked(20) else {
                    contents.unreadable += 1;
                    continue;
                };
                SlicedPacket::from_ether_type(
                    EtherType(u16::from_be_bytes([head[0], head[1]])),
                    rest,
                )
            }
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(&packet.data),
            other => {
                return Err(WireError::Malformed(format!(
                    "link type {other:?} is not supported (capture on an Ethernet-like interface such as lo, or on any)"
                )));
            }
        };
        let Ok(sliced) = sliced else {
            contents.unreadable += 1;
            continue;
        };
        let (Some(net), Some(TransportSlice::Tcp(tcp))) = (&sliced.net, &sliced.transport) else {
            contents.unreadable += 1;
            continue;
        };
        let (src, dst): (IpAddr, IpAddr) = match net {
            NetSlice::Ipv4(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Ipv6(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Arp(_) => {
                contents.unreadable += 1;
                continue;
            }
        };
        if !server_ports.is_empty() && !server_ports.contains(&tcp.source_port()) {
            contents.unreadable += 1;
            continue;
        }
        let server = SocketAddr::new(src, tcp.source_port());
        let client = SocketAddr::new(dst, tcp.destination_port());
        let key = (server, client);
        let seq = tcp.sequence_number();
        if tcp.syn() {
            // A SYN-ACK: the stream's bytes start after it. A new one on a known pair of
            // addresses is a new connection unless nothing was received yet.
            let base = seq.wrapping_add(1);
            match flows.get(&key).map(|&i| &mut all[i]) {
                Some(flow) if flow.next == 0 && flow.pending.is_empty() => flow.base = base,
                _ => {
                    flows.insert(key, all.len());
                    all.push(Flow::new(base, server, client));
                }
            }
        }
        let index = *flows.entry(key).or_insert_with(|| {
            all.push(Flow::new(seq, server, client));
            all.len() - 1
        });
        all[index].segment(packet.timestamp, seq, tcp.payload());
    }
    contents.connections = all
        .into_iter()
        .map(|mut f| {
            if f.conn.problem.is_none() && (!f.pending.is_empty() || f.partial.is_some()) {
                f.conn.problem = Some(format!(
                    "the capture ends with a gap at byte {} or a message cut short",
                    f.next
                ));
            }
            f.conn
        })
        .collect();
    Ok(contents)
}

/// Reads the pcap file at `path`.
pub fn read_pcap_file(path: &Path, server_ports: &[u16]) -> Result<CaptureContents, WireError> {
    let file = std::fs::File::open(path).map_err(|e| WireError::Read {
        path: path.display().to_string(),
        what: e.to_string(),
    })?;
    read_pcap(std::io::BufReader::new(file), server_ports).map_err(|e| match e {
        WireError::Malformed(what) => WireError::Read {
            path: path.display().to_string(),
            what,
        },
        other => other,
    })
}
