//! Tests of `/metrics`: names, labels, values after real recordings, and the token check.

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
