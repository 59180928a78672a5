//! The scrape: one `prometheus-client` collector that reads the engine's and the shell's
//! counters when `/metrics` is asked, and the text encoding of its answer.

use super::*;

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
