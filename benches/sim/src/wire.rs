//! Outbound pacing measured at the wire, outside the simulator's own scheduling.
//!
//! With `--wire-capture IFACE`, `tcpdump` runs while each group of calls (or capacity step)
//! runs and writes the server's TCP segments that carry payload, from the target's port, to a
//! pcap file ([`Capture`]). The kernel timestamps each packet when the interface transmits it
//! (on loopback, inside the server's `write`), so a simulator that is late to read a message,
//! or stopped, cannot shift those times.
//!
//! After the group, [`read_pcap`] reassembles every server→client TCP stream by sequence
//! number (duplicates and retransmissions dropped, out-of-order segments held until the gap
//! fills), skips the `101 Switching Protocols` response, and parses the server's WebSocket
//! frames (text messages, fragmented or not; control frames skipped). A message's time is the
//! capture time of the packet that carried its last byte, or, if that byte came before a gap,
//! of the packet that filled the gap (when the message became readable). Each message is
//! judged with the same shape check as the simulator's reader.
//!
//! [`join`] finds each call's stream by the client's port and `streamSid` and feeds its
//! messages, at their wire times, to a second [`CallObserver`], so the wire figures use the
//! observer's definitions (bursts, send-ahead lead, interval error, underruns) unchanged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Cursor, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::client::{ServerEvent, check_server_message, stream_sid_of};
use super::observer::{CallMetrics, CallObserver};
use super::stats::{Histogram, Summary};

/// tcpdump's kernel buffer, KiB (`-B`): several seconds of a thousand calls' messages, so a
/// briefly descheduled tcpdump drops nothing.
const CAPTURE_BUFFER_KIB: &str = "262144";
/// How long tcpdump may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to tcpdump to write out what the kernel still holds before it is stopped.
const SETTLE: Duration = Duration::from_millis(500);
/// How long tcpdump may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP response head longer than this is not one a server sends before a WebSocket.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// A server message longer than this is not a Media Streams message.
const MAX_MESSAGE: u64 = 1 << 20;
/// Out-of-order segments held per stream before it is given up.
const MAX_PENDING: usize = 10_000;

/// Why the wire capture could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// tcpdump could not be started.
    #[error("wire capture: cannot run tcpdump: {0} (install it, e.g. `apt-get install tcpdump`)")]
    Missing(std::io::Error),
    /// tcpdump started but did not capture.
    #[error(
        "wire capture: tcpdump refused to capture on {iface:?} (it needs root or CAP_NET_RAW): {stderr}"
    )]
    Refused {
        /// The interface.
        iface: String,
        /// What tcpdump said.
        stderr: String,
    },
    /// The capture file could not be read.
    #[error("wire capture {path}: {what}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        what: String,
    },
    /// The capture file is not a capture this code can read.
    #[error("wire capture: {0}")]
    Malformed(String),
}

/// The BPF filter: TCP segments from one of `ports` that carry payload, plus SYN-ACKs (they
/// mark where each connection's byte stream starts). IPv6 only without extension headers.
pub fn filter(ports: &[u16]) -> String {
    let ports = ports
        .iter()
        .map(|p| format!("src port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    format!(
        "tcp and ({ports}) and ((ip and ((ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0 or (tcp[13] & 0x02) != 0)) or (ip6 and ip6[6] = 6 and ((ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) != 0 or (ip6[53] & 0x02) != 0)))"
    )
}

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: tokio::process::Child,
    path: PathBuf,
    stderr: tokio::task::JoinHandle<String>,
}

/// What tcpdump reported when it stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStats {
    /// The pcap file.
    pub file: String,
    /// "packets captured", as tcpdump counts them.
    pub captured: Option<u64>,
    /// "packets dropped by kernel": anything above 0 means messages are missing.
    pub dropped: Option<u64>,
}

impl Capture {
    /// Starts tcpdump on `iface`, writing the server's segments from `ports` to `path`, and
    /// waits until it listens.
    pub async fn start(iface: &str, ports: &[u16], path: &Path) -> Result<Self, WireError> {
        let mut command = tokio::process::Command::new("tcpdump");
        command.args(["-i", iface, "-s", "0", "-B", CAPTURE_BUFFER_KIB, "-U", "-n"]);
        command.args(["--time-stamp-precision", "nano"]);
        if is_root() {
            // tcpdump would otherwise drop to its own user and may not write to `path`.
            command.args(["-Z", "root"]);
        }
        command
            .arg("-w")
            .arg(path)
            .arg(filter(ports))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(WireError::Missing)?;
        let Some(stderr) = child.stderr.take() else {
            return Err(WireError::Missing(std::io::Error::other("no stderr pipe")));
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let ready = line.contains("listening on");
                said.push(line);
                if ready {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !listening {
            let _ = child.kill().await;
            return Err(WireError::Refused {
                iface: iface.to_owned(),
                stderr: said.join("; "),
            });
        }
        let stderr = tokio::spawn(async move {
            let mut rest = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        });
        Ok(Self {
            child,
            path: path.to_owned(),
            stderr,
        })
    }

    /// Lets tcpdump write out what it still holds, stops it with SIGINT and reads its counts.
    pub async fn stop(mut self) -> Result<CaptureStats, WireError> {
        tokio::time::sleep(SETTLE).await;
        interrupt(&self.child);
        let exited = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            let _ = self.child.kill().await;
        }
        let said = self.stderr.await.unwrap_or_default();
        let count = |what: &str| {
            said.lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        };
        Ok(CaptureStats {
            file: self.path.display().to_string(),
            captured: count("packets captured"),
            dropped: count("packets dropped by kernel"),
        })
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

#[cfg(unix)]
fn interrupt(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill has no memory preconditions; `pid` is our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
}

#[cfg(not(unix))]
fn interrupt(_child: &tokio::process::Child) {}

/// A server message as it crossed the wire.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct WireMessage {
    /// Capture time of the packet that completed it, since the Unix epoch.
    pub at: Duration,
    /// What it was.
    pub kind: WireKind,
}

/// What a server message on the wire was.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum WireKind {
    /// `media` with this many µ-law bytes.
    Media(usize),
    /// `mark`.
    Mark,
    /// `clear`.
    Clear,
    /// Not one of the documented shapes (as the simulator's reader judges it).
    Malformed(&'static str),
}

/// One server→client TCP connection found in the capture.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The server's address.
    pub server: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// Whether the server answered `101 Switching Protocols` (a Media Stream).
    pub websocket: bool,
    /// The `streamSid` of its first message that has one.
    pub stream_sid: Option<String>,
    /// Its server messages, in order.
    pub messages: Vec<WireMessage>,
    /// Why the stream could not be read to its end, if so.
    pub problem: Option<String>,
}

/// Everything read from a capture.
#[derive(Clone, Debug, Default)]
pub struct CaptureContents {
    /// Packets in the file.
    pub packets: u64,
    /// Packets that were not TCP from a server port, or were cut short by the snap length.
    pub unreadable: u64,
    /// Connections, in the order their first segment was captured.
    pub connections: Vec<Connection>,
}

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

/// One call measured at the wire.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WireCallMetrics {
    /// `media` messages on the wire.
    pub media: u64,
    /// `mark` messages on the wire.
    pub marks: u64,
    /// `clear` messages on the wire.
    pub clears: u64,
    /// Messages that were not a documented shape.
    pub malformed: u64,
    /// Whether the wire saw a different number of `media` than the simulator read.
    pub media_mismatch: bool,
    /// Playback bursts (observer definition, wire times).
    pub bursts: u64,
    /// Send-ahead lead messages.
    pub lead_messages: u64,
    /// Outbound frame interval error at the wire.
    pub interval_error: Summary,
    /// Underruns at the wire.
    pub underruns: u64,
    /// Why the stream could not be read to its end, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Wire time of every `media`, ns since the Unix epoch (timeline calls only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_at_ns: Vec<u64>,
    /// Every interval-error sample: (index of the later `media`, error in ms) (timeline calls
    /// only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<(u64, f64)>,
    /// Interval-error samples, for aggregation.
    #[serde(skip)]
    pub interval_hist: Histogram,
}

/// A group's wire figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WireGroup {
    /// What tcpdump reported.
    pub capture: CaptureStats,
    /// Packets read from the file.
    pub packets: u64,
    /// Calls whose stream was found in the capture.
    pub calls_found: usize,
    /// Calls with a stream socket whose stream was not found.
    pub calls_missing: usize,
    /// Calls whose `media` count differs between the wire and the simulator.
    pub media_mismatches: usize,
    /// `media` messages on the wire.
    pub media: u64,
    /// Outbound frame interval error at the wire, over all calls found.
    pub interval_error: Summary,
    /// Underruns at the wire.
    pub underruns: u64,
    /// Merged interval-error histogram.
    #[serde(skip)]
    pub interval_hist: Histogram,
}

impl WireGroup {
    /// Whether every call was found and nothing was dropped.
    pub fn complete(&self) -> bool {
        self.calls_missing == 0 && self.capture.dropped.unwrap_or(0) == 0
    }

    /// What is wrong with the capture, for warnings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = self.capture.dropped.filter(|d| *d > 0) {
            out.push(format!("tcpdump dropped {d} packets"));
        }
        if self.calls_missing > 0 {
            out.push(format!(
                "{} calls not found in the capture",
                self.calls_missing
            ));
        }
        if self.media_mismatches > 0 {
            out.push(format!(
                "{} calls with a different media count at the wire than read by the simulator",
                self.media_mismatches
            ));
        }
        out
    }
}

/// Finds each call's stream in `contents` (by client port and `streamSid`), measures it with a
/// second [`CallObserver`] fed the wire times, and stores the result in the call's
/// [`CallMetrics::wire`]. Calls with `detail(i)` keep every sample. Returns the group figures.
pub fn join(
    calls: &mut [CallMetrics],
    contents: &CaptureContents,
    capture: CaptureStats,
    detail: impl Fn(usize) -> bool,
) -> WireGroup {
    let mut by_port: HashMap<u16, Vec<&Connection>> = HashMap::new();
    for c in contents.connections.iter().filter(|c| c.websocket) {
        by_port.entry(c.client.port()).or_default().push(c);
    }
    // Wire times become instants on one arbitrary base: only differences matter.
    let epoch = contents
        .connections
        .iter()
        .flat_map(|c| c.messages.first())
        .map(|m| m.at)
        .min()
        .unwrap_or_default();
    let base = crate::clock::now();
    let mut group = WireGroup {
        capture,
        packets: contents.packets,
        ..WireGroup::default()
    };
    let payload = vec![0xFF_u8; 64 * 1024];
    for (i, call) in calls.iter_mut().enumerate() {
        let Some(port) = call.local_port else {
            continue;
        };
        let conn = by_port.get(&port).and_then(|cs| {
            cs.iter()
                .filter(|c| c.stream_sid.as_deref() == Some(call.stream_sid.as_str()))
                .max_by_key(|c| c.messages.len())
        });
        let Some(conn) = conn else {
            group.calls_missing += 1;
            continue;
        };
        group.calls_found += 1;
        let mut observer = CallObserver::new(base, false, false);
        let keep = detail(i);
        if keep {
            observer.keep_intervals();
        }
        let mut wire = WireCallMetrics {
            problem: conn.problem.clone(),
            ..WireCallMetrics::default()
        };
        for m in &conn.messages {
            let at = base + m.at.saturating_sub(epoch);
            match m.kind {
                WireKind::Media(len) => {
                    wire.media += 1;
                    if keep {
                        wire.media_at_ns
                            .push(u64::try_from(m.at.as_nanos()).unwrap_or(u64::MAX));
                    }
                    observer.on_media(at, &payload[..len.min(payload.len())]);
                }
                WireKind::Mark => {
                    wire.marks += 1;
                    observer.on_mark(at);
                }
                WireKind::Clear => {
                    wire.clears += 1;
                    observer.on_clear(at);
                }
                WireKind::Malformed(_) => wire.malformed += 1,
            }
        }
        let m = observer.finish(&[], &[], false);
        wire.media_mismatch = wire.media != call.media_received;
        wire.bursts = m.bursts;
        wire.lead_messages = m.lead_messages;
        wire.interval_error = m.interval_error;
        wire.underruns = m.underruns;
        wire.intervals = m.intervals;
        wire.interval_hist = m.interval_hist;
        group.media += wire.media;
        group.underruns += wire.underruns;
        group.media_mismatches += usize::from(wire.media_mismatch);
        group.interval_hist.merge(&wire.interval_hist);
        call.wire = Some(wire);
    }
    group.interval_error = group.interval_hist.summary();
    group
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use etherparse::PacketBuilder;
    use pcap_file::TsResolution;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

    use super::*;

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
                    let b = PacketBuilder::ipv6([0; 16], [0; 16], 64)
                        .tcp(ports.0, ports.1, *seq, 65_535);
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
}
