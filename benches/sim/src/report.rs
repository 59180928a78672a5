//! Aggregating calls into a report: per scenario and server, a row of numbers, a Markdown table
//! for people and JSON for programs.
//!
//! Percentiles over a group of calls come from merged per-call histograms (interval error,
//! buffer depth, send lateness) or from all per-call samples (response, barge-in, stale audio,
//! DTMF → `clear`). Server figures come from `/proc` samples taken while the group ran: CPU
//! as % of one core over the group's wall time, memory as peak `VmRSS` and, per call, the peak
//! above the server's idle `VmRSS` divided by the number of calls.

use std::fmt::Write as _;

use serde::Serialize;

use super::observer::CallMetrics;
use super::stats::{Histogram, Summary};
use super::wire::WireGroup;

/// Process figures over a group of calls.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// CPU used while the group ran, % of one core.
    pub cpu_percent: Option<f64>,
    /// `VmRSS` before the group started, KiB.
    pub rss_idle_kib: Option<u64>,
    /// Peak `VmRSS` while the group ran, KiB.
    pub rss_peak_kib: Option<u64>,
    /// (peak − idle) / calls, KiB.
    pub kib_per_call: Option<f64>,
}

/// One scenario against one server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupReport {
    /// Scenario name.
    pub scenario: String,
    /// Server name.
    pub target: String,
    /// Calls placed.
    pub calls: usize,
    /// Calls that failed (see [`CallMetrics::failure`]).
    pub failed: usize,
    /// Wall time of the group, s.
    pub wall_s: f64,
    /// Outbound frame interval error over all calls.
    pub interval_error: Summary,
    /// Twilio buffer depth when `media` arrived.
    pub depth: Summary,
    /// Underruns over all calls.
    pub underruns: u64,
    /// Calls with at least one underrun.
    pub calls_with_underruns: usize,
    /// Stream start → first agent audio heard.
    pub first_audio: Summary,
    /// Caller stops → first agent audio heard.
    pub response: Summary,
    /// Utterances never answered.
    pub unanswered: u64,
    /// Barge-ins (utterances over agent audio).
    pub barge_ins: u64,
    /// Barge-ins without a `clear` before the caller stopped.
    pub barge_ins_missed: u64,
    /// Onset → `clear` received.
    pub barge_in_latency: Summary,
    /// Onset → the agent audio playing at the onset stopped.
    pub silenced: Summary,
    /// Agent audio heard after the onset.
    pub stale_audio: Summary,
    /// `clear`s not explained by speech or DTMF.
    pub false_barge_ins: u64,
    /// Agent audio not prompted by caller speech.
    pub unprompted_playbacks: u64,
    /// DTMF keys sent.
    pub dtmf_sent: u64,
    /// DTMF key → `clear`.
    pub dtmf_clear: Summary,
    /// Caller frames sent.
    pub frames_sent: u64,
    /// Caller frames skipped on purpose.
    pub frames_skipped: u64,
    /// Caller frames that could not be written.
    pub send_errors: u64,
    /// Outbound `media` messages received.
    pub media_received: u64,
    /// Malformed server messages.
    pub malformed: u64,
    /// Marks received / echoed as played / echoed because of a `clear`.
    pub marks: [u64; 3],
    /// `clear`s received.
    pub clears: u64,
    /// How late the simulator wrote caller frames (its own scheduling overhead).
    pub sim_send_lateness: Summary,
    /// The server process.
    pub server: Usage,
    /// The simulator process.
    pub simulator: Usage,
    /// The same calls measured at the wire (with `--wire-capture`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireGroup>,
    /// Every call.
    pub per_call: Vec<CallMetrics>,
    /// Merged interval-error histogram, for the picture.
    #[serde(skip)]
    pub interval_hist: Histogram,
}

fn summary_of(values: impl Iterator<Item = f64>) -> (Summary, Histogram) {
    let mut h = Histogram::new();
    for v in values {
        h.record_us((v * 1000.0).round().max(0.0) as u64);
    }
    (h.summary(), h)
}

impl GroupReport {
    /// Aggregates `calls`.
    pub fn aggregate(scenario: &str, target: &str, calls: Vec<CallMetrics>, wall_s: f64) -> Self {
        let mut interval = Histogram::new();
        let mut depth = Histogram::new();
        let mut lateness = Histogram::new();
        for c in &calls {
            interval.merge(&c.interval_hist);
            depth.merge(&c.depth_hist);
            lateness.merge(&c.lateness_hist);
        }
        let sum = |f: fn(&CallMetrics) -> u64| calls.iter().map(f).sum::<u64>();
        let barge = || calls.iter().flat_map(|c| c.barge_ins.iter());
        let mut marks = [0; 3];
        for c in &calls {
            for (m, n) in marks.iter_mut().zip(c.marks) {
                *m += n;
            }
        }
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            calls: calls.len(),
            failed: calls.iter().filter(|c| c.failure.is_some()).count(),
            wall_s,
            interval_error: interval.summary(),
            depth: depth.summary(),
            underruns: sum(|c| c.underruns),
            calls_with_underruns: calls.iter().filter(|c| c.underruns > 0).count(),
            first_audio: summary_of(calls.iter().filter_map(|c| c.first_audio_ms)).0,
            response: summary_of(calls.iter().flat_map(|c| c.responses_ms.iter().copied())).0,
            unanswered: sum(|c| c.unanswered),
            barge_ins: barge().count() as u64,
            barge_ins_missed: barge().filter(|b| b.latency_ms.is_none()).count() as u64,
            barge_in_latency: summary_of(barge().filter_map(|b| b.latency_ms)).0,
            silenced: summary_of(barge().filter_map(|b| b.silenced_ms)).0,
            stale_audio: summary_of(barge().map(|b| b.stale_ms)).0,
            false_barge_ins: sum(|c| c.false_barge_ins),
            unprompted_playbacks: sum(|c| c.unprompted_playbacks),
            dtmf_sent: sum(|c| c.dtmf_sent),
            dtmf_clear: summary_of(calls.iter().flat_map(|c| c.dtmf_clear_ms.iter().copied())).0,
            frames_sent: sum(|c| c.frames_sent),
            frames_skipped: sum(|c| c.frames_skipped),
            send_errors: sum(|c| c.send_errors),
            media_received: sum(|c| c.media_received),
            malformed: sum(|c| c.malformed),
            marks,
            clears: sum(|c| c.clears),
            sim_send_lateness: lateness.summary(),
            server: Usage::default(),
            simulator: Usage::default(),
            wire: None,
            per_call: calls,
            interval_hist: interval,
        }
    }

    /// Response latencies of every call, ms.
    pub fn response_samples(&self) -> Vec<f64> {
        self.per_call
            .iter()
            .flat_map(|c| c.responses_ms.iter().copied())
            .collect()
    }

    /// Barge-in latencies of every call, ms.
    pub fn barge_in_samples(&self) -> Vec<f64> {
        self.per_call
            .iter()
            .flat_map(|c| c.barge_ins.iter().filter_map(|b| b.latency_ms))
            .collect()
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn trio(s: &Summary) -> String {
    if s.count == 0 {
        "–".to_owned()
    } else {
        format!("{:.2} / {:.2} / {:.2}", s.p50_ms, s.p99_ms, s.max_ms)
    }
}

fn duo(s: &Summary) -> String {
    if s.count == 0 {
        "–".to_owned()
    } else {
        format!("{:.0} / {:.0}", s.p50_ms, s.p99_ms)
    }
}

/// The wire columns' cells: interval error and underruns at the wire, and how complete the
/// capture was.
fn wire_cells(wire: Option<&WireGroup>) -> String {
    wire.map_or_else(
        || " – | – | – |".to_owned(),
        |w| {
            let mut note = format!("{}/{}", w.calls_found, w.calls_found + w.calls_missing);
            if w.media_mismatches > 0 {
                let _ = write!(note, ", {} count mismatches", w.media_mismatches);
            }
            if let Some(d) = w.capture.dropped.filter(|d| *d > 0) {
                let _ = write!(note, ", {d} dropped");
            }
            format!(" {} | {} | {note} |", trio(&w.interval_error), w.underruns)
        },
    )
}

const WIRE_HEAD: &str =
    " wire interval error p50 / p99 / max (ms) | wire underruns | calls at wire |";
const WIRE_RULE: &str = "---|---:|---|";

/// The groups as Markdown tables: quality first, then cost. With a wire capture, the wire
/// figures stand next to the simulator's.
pub fn table(groups: &[GroupReport]) -> String {
    let has_wire = groups.iter().any(|g| g.wire.is_some());
    let mut out = String::new();
    out.push_str("| scenario | server | calls | failed | interval error p50 / p99 / max (ms) |");
    if has_wire {
        out.push_str(WIRE_HEAD);
    }
    out.push_str(" underruns | depth p50 (ms) | first audio p50 (ms) | response p50 / p99 (ms) | barge-in p50 / p99 (ms) (n) | silenced p50 / p99 (ms) | stale p50 (ms) | false barge-ins | unprompted | DTMF→clear p50 (ms) | malformed |\n");
    out.push_str("|---|---|---:|---:|---|");
    if has_wire {
        out.push_str(WIRE_RULE);
    }
    out.push_str("---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|\n");
    for g in groups {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |{} {} | {} | {} | {} | {} ({}{}) | {} | {} | {} | {} | {} | {} |",
            g.scenario,
            g.target,
            g.calls,
            g.failed,
            trio(&g.interval_error),
            if has_wire {
                wire_cells(g.wire.as_ref())
            } else {
                String::new()
            },
            g.underruns,
            if g.depth.count == 0 {
                "–".to_owned()
            } else {
                format!("{:.0}", g.depth.p50_ms)
            },
            if g.first_audio.count == 0 {
                "–".to_owned()
            } else {
                format!("{:.0}", g.first_audio.p50_ms)
            },
            duo(&g.response),
            duo(&g.barge_in_latency),
            g.barge_ins,
            if g.barge_ins_missed > 0 {
                format!(", {} missed", g.barge_ins_missed)
            } else {
                String::new()
            },
            duo(&g.silenced),
            if g.stale_audio.count == 0 {
                "–".to_owned()
            } else {
                format!("{:.0}", g.stale_audio.p50_ms)
            },
            g.false_barge_ins,
            g.unprompted_playbacks,
            if g.dtmf_clear.count == 0 {
                format!("– ({} keys)", g.dtmf_sent)
            } else {
                format!("{:.1}", g.dtmf_clear.p50_ms)
            },
            g.malformed,
        );
    }
    out.push('\n');
    out.push_str("| scenario | server | calls | wall (s) | server CPU (% of a core) | server RSS idle → peak (MiB) | server KiB per call | sim CPU (%) | sim send lateness p50 / p99 / max (ms) | media in | frames out (skipped) |\n");
    out.push_str("|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|\n");
    for g in groups {
        let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} | {} → {} | {} | {} | {} | {} | {} ({}) |",
            g.scenario,
            g.target,
            g.calls,
            g.wall_s,
            opt(g.server.cpu_percent, 1),
            mib(g.server.rss_idle_kib),
            mib(g.server.rss_peak_kib),
            opt(g.server.kib_per_call, 1),
            opt(g.simulator.cpu_percent, 1),
            trio(&g.sim_send_lateness),
            g.media_received,
            g.frames_sent,
            g.frames_skipped,
        );
    }
    out
}

/// One step of capacity mode.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityStep {
    /// Concurrent calls.
    pub calls: usize,
    /// Whether no limit broke.
    pub clean: bool,
    /// Which limit broke, if any.
    pub broke: Option<String>,
    /// The step's aggregate (per-call details dropped).
    pub group: GroupReport,
}

/// Capacity mode's result for one server.
#[derive(Clone, Debug, Serialize)]
pub struct CapacityReport {
    /// Server name.
    pub target: String,
    /// Pacing limit: interval error p99, ms.
    pub pacing_limit_ms: f64,
    /// Where the limit was read: `"app"` (when the simulator read the messages) or `"wire"`.
    pub paced_by: &'static str,
    /// Highest concurrency with no limit broken (0 if the first step broke).
    pub highest_clean: usize,
    /// `highest_clean` / CPU cores of this machine.
    pub calls_per_core: f64,
    /// Cores counted.
    pub cores: usize,
    /// Server KiB per call at the highest clean step.
    pub server_kib_per_call: Option<f64>,
    /// Every step, in order.
    pub steps: Vec<CapacityStep>,
}

/// Capacity steps as a Markdown table.
pub fn capacity_table(reports: &[CapacityReport]) -> String {
    let has_wire = reports
        .iter()
        .any(|r| r.steps.iter().any(|s| s.group.wire.is_some()));
    let mut out = String::new();
    out.push_str("| server | calls | clean | interval error p50 / p99 / max (ms) |");
    if has_wire {
        out.push_str(WIRE_HEAD);
    }
    out.push_str(" underruns | failed | server CPU (%) | server KiB per call | sim CPU (%) | sim send lateness p99 (ms) | broke |\n");
    out.push_str("|---|---:|---|---|");
    if has_wire {
        out.push_str(WIRE_RULE);
    }
    out.push_str("---:|---:|---:|---:|---:|---:|---|\n");
    for r in reports {
        for s in &r.steps {
            let g = &s.group;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |{} {} | {} | {} | {} | {} | {:.2} | {} |",
                r.target,
                s.calls,
                if s.clean { "yes" } else { "no" },
                trio(&g.interval_error),
                if has_wire {
                    wire_cells(g.wire.as_ref())
                } else {
                    String::new()
                },
                g.underruns,
                g.failed,
                opt(g.server.cpu_percent, 1),
                opt(g.server.kib_per_call, 1),
                opt(g.simulator.cpu_percent, 1),
                g.sim_send_lateness.p99_ms,
                s.broke.as_deref().unwrap_or(""),
            );
        }
    }
    for r in reports {
        let _ = writeln!(
            out,
            "\n**{}**: highest clean concurrency {} on {} cores = {:.0} calls per core (pacing read at the {}); server {} KiB per call at that step.",
            r.target,
            r.highest_clean,
            r.cores,
            r.calls_per_core,
            if r.paced_by == "wire" {
                "wire"
            } else {
                "simulator"
            },
            opt(r.server_kib_per_call, 1)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::BargeIn;

    fn call(responses: &[f64], underruns: u64, failed: bool) -> CallMetrics {
        let mut interval_hist = Histogram::new();
        interval_hist.record_us(1_000);
        CallMetrics {
            responses_ms: responses.to_vec(),
            underruns,
            failure: failed.then(|| "boom".to_owned()),
            barge_ins: vec![BargeIn {
                onset_ms: 300.0,
                latency_ms: if failed { None } else { Some(120.0) },
                silenced_ms: if failed { None } else { Some(80.0) },
                stale_ms: 100.0,
            }],
            marks: [3, 2, 1],
            interval_hist,
            ..CallMetrics::default()
        }
    }

    #[test]
    fn aggregation_counts_and_merges_every_call() {
        let g = GroupReport::aggregate(
            "single",
            "handset",
            vec![call(&[500.0, 700.0], 0, false), call(&[900.0], 2, true)],
            3.0,
        );
        assert_eq!((g.calls, g.failed), (2, 1));
        assert_eq!((g.underruns, g.calls_with_underruns), (2, 1));
        assert_eq!(g.response.count, 3);
        // Above 20 ms the buckets are 1 ms wide: the percentile is the bucket's upper edge.
        assert!((700.0..=701.0).contains(&g.response.p50_ms));
        assert_eq!(g.response.max_ms, 900.0);
        assert_eq!((g.barge_ins, g.barge_ins_missed), (2, 1));
        assert_eq!(g.barge_in_latency.count, 1);
        assert_eq!(g.marks, [6, 4, 2]);
        assert_eq!(g.interval_error.count, 2);
        assert_eq!(g.interval_error.max_ms, 1.0);
        let text = table(&[g]);
        assert!(text.contains("| single | handset | 2 | 1 |"), "{text}");
        assert!(
            text.contains("120 / 120 (2, 1 missed) | 80 / 80 |"),
            "{text}"
        );
    }

    #[test]
    fn report_serialises_to_json_with_per_call_details() {
        let g = GroupReport::aggregate("hold", "peer", vec![call(&[], 0, false)], 1.0);
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["scenario"], "hold");
        assert_eq!(json["per_call"][0]["marks"][0], 3);
        assert!(json["per_call"][0].get("interval_hist").is_none());
        assert!(json["interval_error"]["p99_ms"].is_number());
    }
}
