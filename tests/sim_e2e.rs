//! `handset-sim` end to end: a short simulated call against the real server on loopback, run
//! through the same entry point as the command line, and the report's fields checked: the JSON
//! on disk, the Markdown table and the picture.

use std::net::SocketAddr;
use std::time::Duration;

use handset_shell::{AppState, Config};
use handset_sim::runner::{self, Scenario, SimArgs};
use tokio::sync::oneshot;

const TOKEN: &str = "sim-e2e-auth-token";

async fn start_server() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "handset-sim-e2e-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let public = format!("http://{addr}");
    let config = Config::from_vars([
        ("DATA_DIR", dir.display().to_string().as_str()),
        ("PUBLIC_URL", public.as_str()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("ENGINE_WORKERS", "1"),
    ])
    .unwrap();
    let (state, _startup) = AppState::new(config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(handset_shell::serve(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_simulated_call_reports_pacing_latency_marks_and_server_usage() {
    let (addr, stop) = start_server().await;
    let out = std::env::temp_dir().join(format!("handset-sim-report-{}", rand::random::<u64>()));
    let mut args = SimArgs::defaults();
    args.scenario = vec![Scenario::Single];
    args.targets = vec![format!("handset=http://{addr}/webhook/incoming_call")];
    // The server runs in this process: its /proc is ours.
    args.server_pids = vec![std::process::id().to_string()];
    args.auth_token = Some(TOKEN.to_owned());
    args.duration = Some(6.5);
    args.out = out.clone();
    let report = runner::run(args).await.expect("the run completes");
    let _ = stop.send(());

    assert_eq!(report.groups.len(), 1);
    let g = &report.groups[0];
    assert_eq!(
        (g.scenario.as_str(), g.target.as_str()),
        ("single", "handset")
    );
    assert_eq!((g.calls, g.failed), (1, 0), "{:?}", g.per_call[0].failure);
    let call = &g.per_call[0];
    assert_eq!(call.frames_sent, 325, "6.5 s of 20 ms frames");
    assert_eq!(call.malformed, 0);
    assert_eq!(call.close_code, Some(1000));
    // The greeting and the echo were heard, and the echo answered the one utterance.
    assert!(call.first_audio_ms.is_some());
    assert_eq!(call.responses_ms.len(), 1, "{call:?}");
    assert_eq!(call.unanswered, 0);
    assert!(call.bursts >= 2, "greeting and echo: {}", call.bursts);
    assert!(call.lead_messages >= 1, "Handset sends a lead");
    assert!(g.interval_error.count > 100, "{:?}", g.interval_error);
    assert!(g.interval_error.p50_ms <= g.interval_error.p99_ms);
    assert!(g.interval_error.p99_ms <= g.interval_error.max_ms);
    assert!(g.depth.count > 100);
    // Every mark came back exactly once.
    let [received, played, cleared] = call.marks;
    assert!(received > 10);
    assert_eq!(played + cleared, received);
    assert_eq!(call.false_barge_ins, 0, "silence and one utterance");
    assert!(call.barge_ins.is_empty());
    assert!(g.server.rss_peak_kib.is_some() && g.server.cpu_percent.is_some());
    assert!(g.simulator.cpu_percent.is_some());
    assert_eq!(g.sim_send_lateness.count, 325);
    let timeline = call.timeline.as_ref().expect("first calls keep a timeline");
    assert_eq!(timeline.speech.len(), 1);
    assert!(timeline.played.len() >= 2);

    // What was written matches.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let group = &json["groups"][0];
    for key in [
        "interval_error",
        "depth",
        "response",
        "barge_in_latency",
        "stale_audio",
        "server",
        "simulator",
        "sim_send_lateness",
    ] {
        assert!(group.get(key).is_some(), "report.json has {key}");
    }
    assert_eq!(group["per_call"][0]["frames_sent"], 325);
    assert!(group["interval_error"]["p99_ms"].as_f64().is_some());
    let table = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(table.contains("| single | handset | 1 | 0 |"), "{table}");
    let svg = std::fs::read_to_string(out.join("single.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("handset · call 1"));
    let _ = std::fs::remove_dir_all(&out);
    tokio::time::sleep(Duration::from_millis(50)).await;
}
