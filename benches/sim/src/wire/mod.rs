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
//! messages, at their wire times, to a second [`CallObserver`](super::observer::CallObserver),
//! so the wire figures use the observer's definitions (bursts, send-ahead lead, interval
//! error, underruns) unchanged.
//!
//! The files follow those steps: `capture` runs tcpdump, `reassembly` reads the capture back
//! into connections and their messages, and `metrics` joins them to the calls; this file holds
//! what they share (the messages and connections read, and the error).

use std::net::SocketAddr;
use std::time::Duration;

mod capture;
mod metrics;
mod reassembly;
#[cfg(test)]
mod tests;

pub use capture::{Capture, CaptureStats, filter};
pub use metrics::{WireCallMetrics, WireGroup, join};
pub use reassembly::{read_pcap, read_pcap_file};

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
