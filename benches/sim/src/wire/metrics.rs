//! The wire figures: each call's stream found in the capture and measured by a second
//! observer fed the wire times ([`join`]), per call ([`WireCallMetrics`]) and per group
//! ([`WireGroup`]).

use std::collections::HashMap;

use serde::Serialize;

use super::{CaptureContents, CaptureStats, Connection, WireKind};
use crate::observer::{CallMetrics, CallObserver};
use crate::stats::{Histogram, Summary};

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
