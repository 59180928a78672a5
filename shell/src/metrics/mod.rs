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

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
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

mod collector;

pub use collector::{encode, registry};

#[cfg(test)]
mod tests;
