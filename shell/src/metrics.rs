//! `GET /metrics`: what an on-call engineer needs, in the Prometheus/OpenMetrics text format.
//!
//! Two kinds of numbers are exposed, both kept in relaxed atomics so that recording never locks
//! or allocates:
//!
//! - the engine's [`EngineCounters`], written by the media workers on the hot path (frames,
//!   jitter and queue drops, VAD transitions, the outbound lateness and barge-in latency
//!   histograms, worker wake-ups);
//! - the shell's own [`ShellMetrics`], written by the HTTP handlers and the WebSocket tasks
//!   (requests by route and status, signature failures, WebSocket messages, closes and bad
//!   input, calls started and ended), and the accept loop (open connections, connections refused
//!   at `MAX_CONNECTIONS`, accept errors).
//!
//! At scrape time a `prometheus-client` [`Collector`] reads both and encodes them with the
//! crate's text encoder (never hand-formatted). Every label set is a fixed, small enumeration
//! (routes are the route patterns, unknown paths are `other`; statuses are HTTP status codes), so
//! cardinality is bounded whatever clients send.
//!
//! Assumption: `/metrics` is served on the public listener. It holds no secrets or call data,
//! but it does reveal traffic levels, so deployments that expose the port publicly should set
//! `METRICS_TOKEN`: then a scrape needs `Authorization: Bearer <token>` (compared in constant
//! time over SHA-256 digests, so neither content nor length leaks), and gets 401 otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handset_engine::driver::{
    AtomicHistogram, EngineCounters, HistogramSnapshot, OUTBOUND_LATENESS_BOUNDS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::active_calls::ActiveCalls;
use crate::config::Secret;
use crate::media_stream::{CloseReason, MEDIA_STREAM_PATH};
use crate::onset_check::CheckerCounters;
use crate::store::{Health, Trouble};

/// `Content-Type` of a `/metrics` answer (what the `prometheus-client` text encoder writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `route` label of an HTTP request: the route pattern, never the raw path.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RouteLabel {
    /// `/webhook/incoming_call`.
    IncomingCall,
    /// `/webhook/stream_ended`.
    StreamEnded,
    /// `/webhook/handle_recording`.
    HandleRecording,
    /// `/webhook/call_status`.
    CallStatus,
    /// `/webhook/stream_status`.
    StreamStatus,
    /// `/ws/twilio-media`.
    MediaStream,
    /// `/healthz`.
    Healthz,
    /// `/version`.
    Version,
    /// `/metrics`.
    Metrics,
    /// Any other path.
    Other,
}

impl RouteLabel {
    const ALL: [Self; 10] = [
        Self::IncomingCall,
        Self::StreamEnded,
        Self::HandleRecording,
        Self::CallStatus,
        Self::StreamStatus,
        Self::MediaStream,
        Self::Healthz,
        Self::Version,
        Self::Metrics,
        Self::Other,
    ];

    /// The label of a request path (exact match; anything else is [`RouteLabel::Other`]).
    pub fn of_path(path: &str) -> Self {
        match path {
            "/webhook/incoming_call" => Self::IncomingCall,
            "/webhook/stream_ended" => Self::StreamEnded,
            "/webhook/handle_recording" => Self::HandleRecording,
            "/webhook/call_status" => Self::CallStatus,
            "/webhook/stream_status" => Self::StreamStatus,
            MEDIA_STREAM_PATH => Self::MediaStream,
            "/healthz" => Self::Healthz,
            "/version" => Self::Version,
            "/metrics" => Self::Metrics,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IncomingCall => "/webhook/incoming_call",
            Self::StreamEnded => "/webhook/stream_ended",
            Self::HandleRecording => "/webhook/handle_recording",
            Self::CallStatus => "/webhook/call_status",
            Self::StreamStatus => "/webhook/stream_status",
            Self::MediaStream => MEDIA_STREAM_PATH,
            Self::Healthz => "/healthz",
            Self::Version => "/version",
            Self::Metrics => "/metrics",
            Self::Other => "other",
        }
    }
}

/// Where a signature check failed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum SignatureTransport {
    /// A webhook (HTTP request).
    Http,
    /// The Media Streams WebSocket upgrade.
    WebSocket,
}

/// Kinds of bad WebSocket input the shell drops and counts (the `kind` label of
/// `handset_ws_errors_total`; the stream goes on).
const WS_ERROR_KINDS: [&str; 8] = [
    "malformed",
    "bad_media",
    "binary",
    "unknown_event",
    "wrong_stream",
    "before_start",
    "extra_start",
    "unknown_mark",
];
/// Where `bad_media` sits in [`WS_ERROR_KINDS`]: the shell owns that count, and
/// `handset_frames_dropped_total{stage="invalid_media"}` reads the same one.
const BAD_MEDIA: usize = 1;
const _: () = assert!(matches!(WS_ERROR_KINDS[BAD_MEDIA].as_bytes(), b"bad_media"));

/// Every [`CloseReason`], in label order.
const CLOSE_REASONS: [CloseReason; 18] = [
    CloseReason::AgentHangup,
    CloseReason::AgentFailed,
    CloseReason::Completed,
    CloseReason::GoingAway,
    CloseReason::NoStart,
    CloseReason::Stalled,
    CloseReason::Draining,
    CloseReason::EngineRefused,
    CloseReason::Busy,
    CloseReason::Transfer,
    CloseReason::Idle,
    CloseReason::InvalidToken,
    CloseReason::InvalidStart,
    CloseReason::TooBig,
    CloseReason::UnsupportedFormat,
    CloseReason::StoreUnavailable,
    CloseReason::ProtocolError,
    CloseReason::InvalidUtf8,
];

/// Lowest and highest status code counted per route; others count as 599.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
const STATUSES: usize = (STATUS_MAX - STATUS_MIN + 1) as usize;

/// The shell's own counters. Every method is a relaxed atomic add: no lock, no allocation.
#[derive(Debug)]
pub struct ShellMetrics {
    /// Requests by route and status, indexed `[route][status − 100]`.
    http: Box<[[AtomicU64; STATUSES]]>,
    /// Signature failures: webhooks, WebSocket upgrades.
    signature_failures: [AtomicU64; 2],
    /// WebSocket text and binary messages read.
    ws_messages_in: AtomicU64,
    /// WebSocket messages written (media, mark, clear; close frames excluded).
    ws_messages_out: AtomicU64,
    /// Bad input dropped, by [`WS_ERROR_KINDS`].
    ws_errors: [AtomicU64; WS_ERROR_KINDS.len()],
    /// Close frames sent, by [`CLOSE_REASONS`].
    ws_closes: [AtomicU64; CLOSE_REASONS.len()],
    /// Caller frames refused because a call's inbound ring was full.
    inbound_ring_full: AtomicU64,
    /// Media calls bridged to the engine.
    calls_started: AtomicU64,
    /// Media calls ended, by [`CLOSE_REASONS`].
    calls_ended: [AtomicU64; CLOSE_REASONS.len()],
    /// Client connections open now (HTTP and upgraded media streams).
    connections_open: AtomicU64,
    /// Connections refused at `MAX_CONNECTIONS`.
    connections_refused: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    accept_errors: AtomicU64,
    /// How late each outbound frame's bytes reached the kernel after their pacer deadline.
    outbound_write_lateness: AtomicHistogram,
}

impl Default for ShellMetrics {
    fn default() -> Self {
        Self {
            http: (0..RouteLabel::ALL.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            signature_failures: Default::default(),
            ws_messages_in: AtomicU64::new(0),
            ws_messages_out: AtomicU64::new(0),
            ws_errors: Default::default(),
            ws_closes: Default::default(),
            inbound_ring_full: AtomicU64::new(0),
            calls_started: AtomicU64::new(0),
            calls_ended: Default::default(),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            outbound_write_lateness: AtomicHistogram::new(&OUTBOUND_LATENESS_BOUNDS),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn close_index(reason: CloseReason) -> usize {
    CLOSE_REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

impl ShellMetrics {
    /// Counts one answered HTTP request.
    pub fn http_request(&self, route: RouteLabel, status: u16) {
        let r = RouteLabel::ALL
            .iter()
            .position(|x| *x == route)
            .unwrap_or(0);
        let s = usize::from(status.clamp(STATUS_MIN, STATUS_MAX) - STATUS_MIN);
        add(&self.http[r][s], 1);
    }

    /// Counts one failed signature check.
    pub fn signature_failure(&self, transport: SignatureTransport) {
        add(&self.signature_failures[transport as usize], 1);
    }

    /// Counts one WebSocket message written to Twilio.
    pub fn ws_message_out(&self) {
        add(&self.ws_messages_out, 1);
    }

    /// Records how late an outbound frame's bytes were handed to the kernel (the socket write
    /// that carried them returned) after the frame's pacer deadline.
    pub fn outbound_written(&self, late: Duration) {
        self.outbound_write_lateness.record(late);
    }

    /// Counts one close frame sent, by reason.
    pub fn ws_close(&self, reason: CloseReason) {
        add(&self.ws_closes[close_index(reason)], 1);
    }

    /// Counts one media call bridged to the engine.
    pub fn call_started(&self) {
        add(&self.calls_started, 1);
    }

    /// Counts one media call ended, by the reason its stream was closed.
    pub fn call_ended(&self, reason: CloseReason) {
        add(&self.calls_ended[close_index(reason)], 1);
    }

    /// Counts one client connection opened (the accept loop admits it).
    pub fn connection_opened(&self) {
        add(&self.connections_open, 1);
    }

    /// Counts one client connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        load(&self.connections_open)
    }

    /// Counts one connection refused at `MAX_CONNECTIONS`.
    pub fn connection_refused(&self) {
        add(&self.connections_refused, 1);
    }

    /// Counts one failed `accept`.
    pub fn accept_error(&self) {
        add(&self.accept_errors, 1);
    }

    /// Adds what a stream counted since `published`, then records it as published. Called
    /// now and then while a stream runs and once when it ends.
    pub fn publish_stream(&self, now: &StreamCounters, published: &mut StreamCounters) {
        let p = *published;
        add(
            &self.ws_messages_in,
            (now.messages + now.binary) - (p.messages + p.binary),
        );
        let kinds = [
            (now.malformed, p.malformed),
            (now.bad_media, p.bad_media),
            (now.binary, p.binary),
            (now.unknown_events, p.unknown_events),
            (now.wrong_stream, p.wrong_stream),
            (now.before_start, p.before_start),
            (now.extra_start, p.extra_start),
            (now.unknown_marks, p.unknown_marks),
        ];
        for (counter, (now, before)) in self.ws_errors.iter().zip(kinds) {
            add(counter, now.saturating_sub(before));
        }
        add(
            &self.inbound_ring_full,
            now.ring_full.saturating_sub(p.ring_full),
        );
        *published = *now;
    }
}

/// Whether a scrape may read `/metrics`: always without a configured token, else only with
/// `Authorization: Bearer <token>`. Constant time in the token's content and length.
pub fn authorized(token: Option<&Secret>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else {
        return true;
    };
    // The scheme is case-insensitive (RFC 9110); the token is compared exactly.
    let Some(offered) = authorization.and_then(|h| {
        let (scheme, rest) = h.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"Bearer ").then_some(rest)
    }) else {
        return false;
    };
    let want = Sha256::digest(token.expose().as_bytes());
    let got = Sha256::digest(offered);
    bool::from(want.ct_eq(&got))
}

/// Builds the registry a scrape encodes: one collector reading the counters at scrape time.
pub fn registry(
    engine: Arc<EngineCounters>,
    shell: Arc<ShellMetrics>,
    active_calls: ActiveCalls,
    store: Arc<Health>,
    onset_check: Option<Arc<CheckerCounters>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HandsetCollector {
        engine,
        shell,
        active_calls,
        store,
        onset_check,
    }));
    registry
}

/// Encodes `registry` in the text format (the body of a `/metrics` answer).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Reads the engine's and the shell's counters at scrape time.
#[derive(Debug)]
struct HandsetCollector {
    engine: Arc<EngineCounters>,
    shell: Arc<ShellMetrics>,
    active_calls: ActiveCalls,
    store: Arc<Health>,
    /// The onset check's thread, when `ONSET_CHECK` is on.
    onset_check: Option<Arc<CheckerCounters>>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    metric.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn seconds_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Duration,
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Counter)?;
    metric.encode_counter::<NoLabelSet, _, u64>(&value.as_secs_f64(), None)
}

fn labelled_counter<'l>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'l str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        metric
            .encode_family(&[(label, value)])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    let n = snapshot.bounds.len();
    let mut buckets = [(0.0, 0); handset_engine::driver::MAX_BUCKETS + 1];
    for (i, bucket) in buckets.iter_mut().enumerate().take(n) {
        *bucket = (snapshot.bounds[i].as_secs_f64(), snapshot.counts[i]);
    }
    buckets[n] = (f64::INFINITY, snapshot.counts[n]);
    metric.encode_histogram::<NoLabelSet>(
        snapshot.sum.as_secs_f64(),
        snapshot.count,
        &buckets[..=n],
        None,
    )
}

impl Collector for HandsetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &self.engine;
        let s = &self.shell;
        let enc = &mut encoder;

        let active = self.active_calls.count() as u64;
        enc.encode_descriptor(
            "handset_active_calls",
            "Media calls bridged to the engine now.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&active)?;
        enc.encode_descriptor(
            "handset_open_connections",
            "Client connections open now (HTTP, and media streams upgraded from them).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&load(&s.connections_open))?;
        counter(
            enc,
            "handset_connections_refused",
            "Connections refused because MAX_CONNECTIONS were open (answered 503 and closed).",
            None,
            load(&s.connections_refused),
        )?;
        counter(
            enc,
            "handset_accept_errors",
            "Failed accepts of new connections (e.g. out of file descriptors).",
            None,
            load(&s.accept_errors),
        )?;
        counter(
            enc,
            "handset_calls_started",
            "Media calls bridged to the engine.",
            None,
            load(&s.calls_started),
        )?;
        labelled_counter(
            enc,
            "handset_calls_ended",
            "Media calls ended, by the reason their stream was closed.",
            "reason",
            CLOSE_REASONS
                .iter()
                .zip(&s.calls_ended)
                .map(|(r, c)| (r.label(), load(c))),
        )?;

        counter(
            enc,
            "handset_frames_in",
            "Caller media frames accepted by the calls' jitter buffers.",
            None,
            load(&e.frames_in),
        )?;
        counter(
            enc,
            "handset_frames_out",
            "Agent media frames handed to the socket writers for Twilio.",
            None,
            load(&e.frames_out),
        )?;
        counter(
            enc,
            "handset_frames_concealed",
            "Caller playout slots concealed because no frame arrived in time.",
            None,
            load(&e.frames_concealed),
        )?;
        counter(
            enc,
            "handset_frames_expanded",
            "Caller playout slots concealed while their frame was held up in transit; the frames behind them played later instead of late.",
            None,
            load(&e.frames_expanded),
        )?;
        counter(
            enc,
            "handset_frames_late",
            "Caller frames dropped as late (slot already played) or backwards.",
            None,
            load(&e.frames_late),
        )?;
        counter(
            enc,
            "handset_frames_duplicate",
            "Caller frames dropped as duplicates.",
            None,
            load(&e.frames_duplicate),
        )?;
        labelled_counter(
            enc,
            "handset_frames_dropped",
            "Frames and messages dropped, by where: jitter buffer full, agent playback queue full, a stream's outbound queue full (wire or reports), caller ring full, invalid media message.",
            "stage",
            [
                ("jitter_overflow", load(&e.jitter_overflow)),
                ("playback_queue_full", load(&e.playback_dropped)),
                ("outbound_queue_full", load(&e.sink_full)),
                ("inbound_ring_full", load(&s.inbound_ring_full)),
                ("invalid_media", load(&s.ws_errors[BAD_MEDIA])),
            ],
        )?;
        histogram(
            enc,
            "handset_outbound_lateness",
            "How late each outbound frame was released after its pacer deadline.",
            &e.outbound_lateness.snapshot(),
        )?;
        histogram(
            enc,
            "handset_outbound_write_lateness",
            "How late each outbound frame's bytes were handed to the kernel (the socket write returned) after its pacer deadline: the release above plus the hand-off to the socket writer and the write.",
            &s.outbound_write_lateness.snapshot(),
        )?;
        histogram(
            enc,
            "handset_barge_in_latency",
            "Caller speech onset (arrival of its first frame) to the clear handed to the socket.",
            &e.barge_in_latency.snapshot(),
        )?;
        counter(
            enc,
            "handset_barge_ins",
            "Barge-ins: caller speech over agent playback flushed it.",
            None,
            load(&e.barge_ins),
        )?;
        counter(
            enc,
            "handset_echo_onsets",
            "Caller speech onsets during agent playback held as the agent's own echo: no barge-in.",
            None,
            load(&e.echo_onsets),
        )?;
        labelled_counter(
            enc,
            "handset_onset_checks",
            "Caller speech onsets during agent playback held for the second-stage check (Silero VAD), by outcome: held, confirmed (a barge-in), rejected (the utterance ended unconfirmed: no barge-in), unchecked (the check's queue was full: barged in at once).",
            "outcome",
            [
                ("held", load(&e.onsets_checked)),
                ("confirmed", load(&e.onsets_confirmed)),
                ("rejected", load(&e.onsets_rejected)),
                ("unchecked", load(&e.onsets_unchecked)),
            ],
        )?;
        counter(
            enc,
            "handset_onset_pauses_expired",
            "Held onsets whose check was still undecided when the playback pause ran out (ONSET_PAUSE_MS): the agent's audio resumed while the onset stayed held.",
            None,
            load(&e.onset_pauses_expired),
        )?;
        if let Some(c) = &self.onset_check {
            counter(
                enc,
                "handset_onset_check_model_runs",
                "Silero VAD runs (32 ms chunks) of the onset check.",
                None,
                load(&c.chunks),
            )?;
            counter(
                enc,
                "handset_onset_check_errors",
                "Silero VAD runs that failed; each let its onset barge in.",
                None,
                load(&c.errors),
            )?;
        }
        labelled_counter(
            enc,
            "handset_vad_transitions",
            "Caller voice activity transitions: speech started, speech ended, and speech dismissed (an utterance outside agent playback that the onset check never confirmed ended as not speech).",
            "transition",
            [
                ("speech_started", load(&e.speech_started)),
                ("speech_ended", load(&e.speech_ended)),
                ("speech_dismissed", load(&e.speech_dismissed)),
            ],
        )?;

        labelled_counter(
            enc,
            "handset_ws_errors",
            "Bad Media Streams WebSocket input dropped (the stream goes on), by kind.",
            "kind",
            WS_ERROR_KINDS
                .iter()
                .zip(&s.ws_errors)
                .map(|(k, c)| (*k, load(c))),
        )?;
        labelled_counter(
            enc,
            "handset_ws_closes",
            "Media Streams WebSocket close frames sent, by reason.",
            "reason",
            CLOSE_REASONS
                .iter()
                .zip(&s.ws_closes)
                .map(|(r, c)| (r.label(), load(c))),
        )?;
        labelled_counter(
            enc,
            "handset_ws_messages",
            "Media Streams WebSocket messages, by direction.",
            "direction",
            [
                ("in", load(&s.ws_messages_in)),
                ("out", load(&s.ws_messages_out)),
            ],
        )?;

        {
            let mut metric = enc.encode_descriptor(
                "handset_http_requests",
                "HTTP requests answered, by route pattern and status.",
                None,
                MetricType::Counter,
            )?;
            for (route, statuses) in RouteLabel::ALL.iter().zip(s.http.iter()) {
                for (i, c) in statuses.iter().enumerate() {
                    let n = load(c);
                    if n == 0 {
                        continue;
                    }
                    let status = (STATUS_MIN as usize + i).to_string();
                    metric
                        .encode_family(&[("route", route.as_str()), ("status", status.as_str())])?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        let degraded = u64::from(self.store.status().is_err());
        enc.encode_descriptor(
            "handset_store_degraded",
            "1 while the store refuses writes (the latest write or probe failed, or the free \
             space under the SQLite database is below STORE_MIN_FREE_MB), else 0.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&degraded)?;
        if let Some(free) = self.store.free_bytes() {
            enc.encode_descriptor(
                "handset_store_free_bytes",
                "Free space on the SQLite database's file system, measured every second.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&free)?;
        }
        labelled_counter(
            enc,
            "handset_store_errors",
            "Failed store statements, by kind: disk_full, timeout, unreachable, error.",
            "kind",
            Trouble::ALL
                .iter()
                .map(|t| (t.label(), self.store.errors(*t))),
        )?;
        labelled_counter(
            enc,
            "handset_signature_failures",
            "Twilio signature checks failed, by transport (webhook or WebSocket upgrade).",
            "transport",
            [
                ("http", load(&s.signature_failures[0])),
                ("ws", load(&s.signature_failures[1])),
            ],
        )?;

        counter(
            enc,
            "handset_engine_wakeups",
            "Engine worker wake-ups.",
            None,
            load(&e.wakeups),
        )?;
        counter(
            enc,
            "handset_engine_late_wakeups",
            "Engine worker wake-ups more than 1 ms after their deadline.",
            None,
            load(&e.late_wakeups),
        )?;
        seconds_counter(
            enc,
            "handset_engine_wakeup_lateness",
            "Total lateness of engine worker wake-ups.",
            Duration::from_micros(load(&e.lateness_us)),
        )?;
        histogram(
            enc,
            "handset_engine_wakeup_busy",
            "How long each engine worker wake-up's work took, from waking to sleeping again.",
            &e.wake_busy.snapshot(),
        )?;
        Ok(())
    }
}

/// Counters for one stream's socket, logged when it ends.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamCounters {
    /// Text messages received.
    pub messages: u64,
    /// Malformed JSON or missing fields.
    pub malformed: u64,
    /// Media with invalid base64 or the wrong payload size.
    pub bad_media: u64,
    /// Binary frames (Twilio sends only text).
    pub binary: u64,
    /// Unknown events, ignored.
    pub unknown_events: u64,
    /// Messages for another streamSid.
    pub wrong_stream: u64,
    /// Messages before `start` (other than `connected`).
    pub before_start: u64,
    /// Extra `start` messages.
    pub extra_start: u64,
    /// Frames refused because the engine's ring was full (media faster than real time).
    pub ring_full: u64,
    /// Mark echoes with names we never sent.
    pub unknown_marks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(shell: &Arc<ShellMetrics>, engine: &Arc<EngineCounters>) -> String {
        encode(&registry(
            Arc::clone(engine),
            Arc::clone(shell),
            ActiveCalls::default(),
            Arc::default(),
            None,
        ))
    }

    /// The value of the sample line starting with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn routes_are_labelled_by_pattern_and_unknown_paths_are_other() {
        assert_eq!(
            RouteLabel::of_path("/webhook/incoming_call").as_str(),
            "/webhook/incoming_call"
        );
        for path in ["/", "/webhook/incoming_call/x", "/HEALTHZ", "/%2e%2e/etc"] {
            assert_eq!(RouteLabel::of_path(path), RouteLabel::Other, "{path}");
        }
        for route in RouteLabel::ALL {
            if route != RouteLabel::Other {
                assert_eq!(RouteLabel::of_path(route.as_str()), route);
            }
        }
    }

    #[test]
    fn http_requests_are_counted_by_route_and_status() {
        let shell = Arc::new(ShellMetrics::default());
        let engine = Arc::new(EngineCounters::default());
        shell.http_request(RouteLabel::Healthz, 200);
        shell.http_request(RouteLabel::Healthz, 200);
        shell.http_request(RouteLabel::Other, 404);
        shell.http_request(RouteLabel::IncomingCall, 9_999);
        let text = scrape(&shell, &engine);
        assert_eq!(
            sample(
                &text,
                "handset_http_requests_total{route=\"/healthz\",status=\"200\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_http_requests_total{route=\"other\",status=\"404\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_http_requests_total{route=\"/webhook/incoming_call\",status=\"599\"}"
            ),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn stream_counters_are_published_as_deltas() {
        let shell = Arc::new(ShellMetrics::default());
        let engine = Arc::new(EngineCounters::default());
        let mut published = StreamCounters::default();
        let mut now = StreamCounters {
            messages: 10,
            malformed: 2,
            ring_full: 1,
            ..StreamCounters::default()
        };
        shell.publish_stream(&now, &mut published);
        now.messages = 15;
        now.malformed = 3;
        now.binary = 1;
        shell.publish_stream(&now, &mut published);
        shell.publish_stream(&now, &mut published);
        let text = scrape(&shell, &engine);
        assert_eq!(
            sample(&text, "handset_ws_messages_total{direction=\"in\"}"),
            Some(16.0)
        );
        assert_eq!(
            sample(&text, "handset_ws_errors_total{kind=\"malformed\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "handset_ws_errors_total{kind=\"binary\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_frames_dropped_total{stage=\"inbound_ring_full\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn engine_histograms_are_exposed_cumulatively_in_seconds() {
        let shell = Arc::new(ShellMetrics::default());
        let engine = Arc::new(EngineCounters::default());
        engine.outbound_lateness.record(Duration::from_micros(50));
        engine.outbound_lateness.record(Duration::from_millis(3));
        engine.outbound_lateness.record(Duration::from_secs(1));
        let text = scrape(&shell, &engine);
        assert_eq!(
            sample(&text, "handset_outbound_lateness_seconds_count"),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_outbound_lateness_seconds_bucket{le=\"0.0001\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_outbound_lateness_seconds_bucket{le=\"0.005\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "handset_outbound_lateness_seconds_bucket{le=\"+Inf\"}"
            ),
            Some(3.0)
        );
        let sum = sample(&text, "handset_outbound_lateness_seconds_sum").unwrap();
        assert!((sum - 1.00305).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(&text, "handset_barge_in_latency_seconds_count"),
            Some(0.0)
        );
        assert!(text.contains("# TYPE handset_barge_in_latency_seconds histogram"));
        assert!(text.contains("# UNIT handset_barge_in_latency_seconds seconds"));
    }

    #[test]
    fn every_close_reason_has_its_own_label() {
        let shell = ShellMetrics::default();
        for reason in CLOSE_REASONS {
            shell.ws_close(reason);
        }
        let mut labels: Vec<_> = CLOSE_REASONS.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CLOSE_REASONS.len());
        assert!(shell.ws_closes.iter().all(|c| load(c) == 1));
    }

    #[test]
    fn bearer_token_is_required_only_when_configured() {
        assert!(authorized(None, None));
        let token = Secret::new("s3cret");
        assert!(authorized(Some(&token), Some(b"Bearer s3cret")));
        assert!(!authorized(Some(&token), None));
        assert!(!authorized(Some(&token), Some(b"Bearer s3cre")));
        assert!(!authorized(Some(&token), Some(b"Bearer s3cret ")));
        assert!(authorized(Some(&token), Some(b"bearer s3cret")));
        assert!(!authorized(Some(&token), Some(b"Bearer S3CRET")));
        assert!(!authorized(Some(&token), Some(b"Bearer")));
        assert!(!authorized(Some(&token), Some(b"Basic s3cret")));
        assert!(!authorized(Some(&token), Some(b"s3cret")));
    }
}
