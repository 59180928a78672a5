//! What the engine reports about a call besides the wire: its events (logged), its timeline
//! (written to `TRACE_DIR`) and its final counters (the `WS stop` line).
//!
//! They travel a queue of their own ([`REPORT_QUEUE`]) to the stream's reader task, on the
//! main runtime: the socket queue carries only what goes on the wire, a socket that stops
//! reading delays or drops none of them, and no log line is formatted on the egress thread
//! that writes frames on their deadlines.

use handset_engine::agent::CallInfo;
use handset_engine::call::{CallEvent, CallStats, Trace};

use super::marks::MarkName;

/// Reports queued per call between the engine and the reader: events come a few a second
/// (a played mark every 100 ms of playback, speech starts and ends), the timeline and the
/// final counters once.
pub(super) const REPORT_QUEUE: usize = 64;

/// One report from the engine.
#[derive(Debug)]
pub(super) enum Report {
    /// A call event, logged.
    Event(CallEvent),
    /// The call's timeline, once, just before [`Report::Ended`], when the call is traced.
    Trace(Box<Trace>),
    /// The call is over: its final counters.
    Ended(Box<CallStats>),
}

/// The reader's handling of one call's reports.
pub(super) struct Reports {
    id: u64,
    info: CallInfo,
    /// Where the timeline goes, when the call is traced.
    trace_dir: Option<std::path::PathBuf>,
    /// The final counters, once they came.
    ended: Option<Box<CallStats>>,
}

impl Reports {
    pub(super) fn new(id: u64, info: CallInfo, trace_dir: Option<std::path::PathBuf>) -> Self {
        Self {
            id,
            info,
            trace_dir,
            ended: None,
        }
    }

    /// Whether the final counters came.
    pub(super) fn ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Logs an event, writes the timeline (off the runtime's threads), keeps the counters.
    pub(super) fn take(&mut self, report: Report) {
        match report {
            Report::Event(event) => log_event(self.id, &self.info, &event),
            Report::Trace(trace) => {
                if let Some(dir) = self.trace_dir.clone() {
                    let (call_sid, id) = (self.info.call_sid.clone(), self.id);
                    tokio::task::spawn_blocking(move || write_trace(&dir, &call_sid, &trace, id));
                }
            }
            Report::Ended(stats) => self.ended = Some(stats),
        }
    }

    /// The call's `WS stop` line: the engine's final counters (its last line about the call
    /// but `WS closed`). When they never came (the engine was stopping) a warning says so.
    pub(super) fn log_stop(&self) {
        let (id, info) = (self.id, &self.info);
        let Some(stats) = &self.ended else {
            tracing::warn!(id, call_sid = %info.call_sid, stream_sid = %info.stream_sid, "call ended without the engine's final counters");
            return;
        };
        tracing::info!(
            id,
            call_sid = %info.call_sid,
            stream_sid = %info.stream_sid,
            media_in = stats.media_in,
            frames_out = stats.frames_out,
            concealed = stats.jitter.concealed,
            expanded = stats.jitter.expanded,
            late = stats.jitter.late,
            duplicate = stats.media_duplicate,
            barge_ins = stats.barge_ins,
            echo_onsets = stats.echo_onsets,
            echo_breakthroughs = stats.echo_breakthroughs,
            onsets_rejected = stats.onsets_rejected,
            speech_dismissed = stats.speech_dismissed,
            marks_played = stats.marks_played,
            underruns = stats.pacer.underruns,
            late_wakeups = stats.pacer.late_wakeups,
            "WS stop"
        );
    }
}

/// Writes a call's timeline as `<dir>/<CallSid>.json` (Chrome trace format).
fn write_trace(dir: &std::path::Path, call_sid: &str, trace: &Trace, id: u64) {
    // CallSids are `CA` + hex; anything else is reduced to a safe file name.
    let name: String = call_sid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    let path = dir.join(format!(
        "{}.json",
        if name.is_empty() { "call" } else { &name }
    ));
    // Written beside it and renamed, so a reader of the directory never sees half a file.
    let partial = path.with_extension("json.partial");
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&partial, crate::chrome_trace::to_json(trace, call_sid)))
        .and_then(|()| std::fs::rename(&partial, &path));
    match result {
        Ok(()) => {
            tracing::info!(id, call_sid, path = %path.display(), events = trace.events().len(), dropped = trace.dropped(), "TRACE written")
        }
        Err(e) => tracing::warn!(id, call_sid, error = %e, "TRACE not written"),
    }
}

fn log_event(id: u64, info: &CallInfo, event: &CallEvent) {
    let call_sid = info.call_sid.as_str();
    match event {
        CallEvent::BargeIn(i) => tracing::info!(
            id,
            call_sid,
            onset_ms = i.onset.map(|o| o.as_millis()),
            heard_ms = i.heard.as_millis() as u64,
            sent_ms = i.sent.as_millis() as u64,
            dropped_ms = i.dropped.as_millis() as u64,
            "BARGE_IN"
        ),
        CallEvent::PlaybackCleared(i) => {
            tracing::info!(id, call_sid, heard_ms = i.heard.as_millis() as u64, "CLEAR")
        }
        CallEvent::MarkPlayed(m) => tracing::info!(id, call_sid, mark = %MarkName::of(*m), "MARK"),
        CallEvent::MarkCleared(m) => {
            tracing::info!(id, call_sid, mark = %MarkName::of(*m), "MARK cleared");
        }
        // Keys may be a PIN or a card number: the line says that one was pressed, never which.
        CallEvent::Dtmf(_) => tracing::info!(id, call_sid, "DTMF key"),
        CallEvent::SpeechStarted { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_STARTED");
        }
        CallEvent::SpeechEnded { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_ENDED");
        }
        CallEvent::SpeechDismissed { at } => {
            tracing::info!(id, call_sid, at_ms = at.as_millis(), "SPEECH_DISMISSED");
        }
        CallEvent::PlaybackFinished { played } => {
            tracing::debug!(
                id,
                call_sid,
                played_ms = played.as_millis() as u64,
                "playback finished"
            );
        }
        _ => {}
    }
}
