//! The recording path over loopback: a fake Twilio media server that fails twice before it
//! serves the WAV (checked for Basic auth with the account SID and auth token), a fake agent
//! that transcribes the `recording` message, and a restart between the download and the
//! transcription: the job queue is read back from the store, nothing is lost and nothing is
//! fetched twice. Two workers on one store (two instances) race for a job and do it once; a
//! worker that dies holding a job loses it to another once its lease expires. The fake
//! Twilio is the configured `TWILIO_API_URL`; a callback naming any other host or port is
//! refused without a connection (a listener there sees none), and a slow download does not
//! hold up the next recording.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use handset_shell::recording::{self, RecordingConfig, Retry};
use handset_shell::store::{JobState, RecordingEvent, Store, StoreOptions};
use handset_shell::twilio::TwilioClient;
use handset_shell::{PublicUrl, Secret, TwilioRestConfig};
use tokio::net::TcpListener;

mod support;
use support::fakes::{MediaServer, transcriber, watcher, wav};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";

/// A worker whose Twilio API is `api` (the fake's `http://127.0.0.1:port`).
fn config(dir: &Path, api: &str, agent: Option<String>) -> RecordingConfig {
    // No TWILIO_ACCOUNT_SID: the auth token goes with the callback's AccountSid, as before.
    let twilio = TwilioClient::new(&TwilioRestConfig {
        account_sid: None,
        auth_token: Some(Secret::new(TOKEN)),
        api_url: PublicUrl::parse("TWILIO_API_URL", api).unwrap(),
        ..TwilioRestConfig::default()
    })
    .unwrap();
    RecordingConfig {
        data_dir: dir.to_path_buf(),
        twilio,
        max_download: recording::max_download(Duration::from_secs(120)),
        agent: agent.map(|url| (url, None)),
        retry: Retry {
            attempts: 4,
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        timeout: Duration::from_secs(5),
        owner: format!("test/{:08x}", rand::random::<u32>()),
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(50),
    }
}

async fn open(dir: &Path) -> Store {
    Store::open(&StoreOptions::sqlite_in(dir)).await.unwrap()
}

fn event(base: &str, sid: &str) -> RecordingEvent {
    RecordingEvent {
        received_unix_ms: 1,
        call_sid: format!("CA{sid}"),
        account_sid: ACCOUNT.to_owned(),
        recording_sid: sid.to_owned(),
        recording_url: format!("{base}/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}"),
        duration_secs: Some(2),
        digits: None,
    }
}

/// Works due jobs until none is due or one comes round again; returns what each claim did.
async fn run_once(config: &RecordingConfig, store: &Store) -> Vec<(String, JobState)> {
    let mut done: Vec<(String, JobState)> = Vec::new();
    let work = async {
        while let Some((sid, state)) = recording::work_one(config, store).await.unwrap() {
            let again = done.iter().any(|(s, _)| *s == sid);
            done.push((sid, state));
            if again {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("recording jobs finish");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_fetched_with_retries_once_and_transcribed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let body = wav(16_000);
    let path1 = format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE1.wav");
    let media = MediaServer::start(body.clone()).await;
    media.fail(&path1, 2);
    let base = media.base.clone();
    let store = open(dir).await;
    for (n, sid) in ["RE1", "RE2"].into_iter().enumerate() {
        let mut rec = event(&base, sid);
        rec.received_unix_ms = n as u64 + 1;
        assert!(store.insert_recording(&rec, 1).await.unwrap());
    }

    // First run: the agent is down, so both are fetched but not transcribed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("ws://{}/agent", dead.local_addr().unwrap());
    drop(dead);
    let done = run_once(&config(dir, &base, Some(dead_url)), &store).await;
    assert_eq!(
        done[..2],
        [
            ("RE1".to_owned(), JobState::Fetched),
            ("RE2".to_owned(), JobState::Fetched)
        ]
    );

    let requests: Vec<(String, Option<String>)> = media
        .downloads()
        .into_iter()
        .map(|d| (d.path, d.auth))
        .collect();
    let count = |p: &str| requests.iter().filter(|(path, _)| path == p).count();
    assert_eq!(count(&path1), 3, "failed twice, then fetched");
    assert_eq!(count(&path1.replace("RE1", "RE2")), 1);
    let basic = format!("Basic {}", BASE64.encode(format!("{ACCOUNT}:{TOKEN}")));
    assert!(
        requests
            .iter()
            .all(|(_, a)| a.as_deref() == Some(basic.as_str())),
        "{requests:?}"
    );
    let re1 = store.recording("RE1").await.unwrap().unwrap();
    assert_eq!(re1.state, JobState::Fetched);
    assert_eq!(re1.file.as_deref(), Some("recordings/RE1.wav"));
    assert!(re1.error.unwrap().contains("transcription failed"));
    let saved = std::fs::read(dir.join("recordings/RE1.wav")).unwrap();
    assert_eq!(saved, body, "saved as downloaded");
    store.close().await;

    // Restart: the queue is read back; both still need transcribing, neither is fetched again
    // (once their retry time, at most the 100 ms backoff cap, has come).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let store = open(dir).await;
    assert_eq!(
        store.counts().await.unwrap().recordings_pending,
        2,
        "nothing lost"
    );
    let (agent_url, offers) = transcriber().await;
    let done = run_once(&config(dir, &base, Some(agent_url)), &store).await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().all(|(_, s)| *s == JobState::Transcribed),
        "{done:?}"
    );
    assert_eq!(media.downloads().len(), 4, "nothing fetched twice");
    let offers = offers.lock().unwrap().clone();
    assert_eq!(offers.len(), 2);
    let (offer, bytes) = &offers[0];
    assert_eq!(offer["recordingSid"], "RE1");
    assert_eq!(offer["callSid"], "CARE1");
    assert_eq!(offer["duration_s"], 2);
    assert_eq!(offer["audio"]["sample_rate"], 8_000);
    assert_eq!(*bytes, 32_000);
    let re1 = store.recording("RE1").await.unwrap().unwrap();
    assert_eq!(re1.state, JobState::Transcribed);
    assert_eq!(
        re1.transcript.as_deref(),
        Some("message RE1 of 32000 bytes")
    );
    assert_eq!(
        store.recording("RE2").await.unwrap().unwrap().state,
        JobState::Transcribed
    );

    // A third start has nothing left to do.
    let store = open(dir).await;
    assert_eq!(store.counts().await.unwrap().recordings_pending, 0);
    assert!(run_once(&config(dir, &base, None), &store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_never_downloads_is_marked_failed_after_bounded_retries() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let path = format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE9.wav");
    let media = MediaServer::start(wav(800)).await;
    media.fail(&path, 100);
    let base = media.base.clone();
    let store = open(dir).await;
    store
        .insert_recording(&event(&base, "RE9"), 1)
        .await
        .unwrap();
    let done = run_once(&config(dir, &base, None), &store).await;
    assert_eq!(done, [("RE9".to_owned(), JobState::Failed)]);
    assert_eq!(media.downloads().len(), 4, "bounded: 4 attempts");
    let job = store.recording("RE9").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.as_deref().unwrap().contains("503"));
    assert!(
        run_once(&config(dir, &base, None), &store).await.is_empty(),
        "not retried forever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_for_a_recording_fetch_and_transcribe_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let media = MediaServer::start(wav(8_000)).await;
    let base = media.base.clone();
    let (agent_url, offers) = transcriber().await;
    let a = open(dir).await;
    let b = open(dir).await;
    a.insert_recording(&event(&base, "RE5"), 1).await.unwrap();
    let (ca, cb) = (
        config(dir, &base, Some(agent_url.clone())),
        config(dir, &base, Some(agent_url)),
    );
    let (ra, rb) = tokio::join!(run_once(&ca, &a), run_once(&cb, &b));
    let all = [ra, rb].concat();
    assert_eq!(all, [("RE5".to_owned(), JobState::Transcribed)]);
    assert_eq!(media.downloads().len(), 1, "fetched once");
    assert_eq!(offers.lock().unwrap().len(), 1, "transcribed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_dead_instance_is_finished_by_another_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let media = MediaServer::start(wav(8_000)).await;
    let base = media.base.clone();
    let (agent_url, offers) = transcriber().await;
    let store = open(dir).await;
    store
        .insert_recording(&event(&base, "RE6"), 1)
        .await
        .unwrap();
    // An instance claims the job with a one-second lease, then dies without a word.
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as u64;
    let dead = store
        .claim_recording("dead/0", now, now + 1_000, true)
        .await
        .unwrap();
    assert!(dead.is_some());
    let live = config(dir, &base, Some(agent_url));
    assert!(
        run_once(&live, &store).await.is_empty(),
        "leased: not taken yet"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        run_once(&live, &store).await,
        [("RE6".to_owned(), JobState::Transcribed)]
    );
    let job = store.recording("RE6").await.unwrap().unwrap();
    assert_eq!(job.claims, 2);
    assert_eq!(media.downloads().len(), 1);
    assert_eq!(offers.lock().unwrap().len(), 1);
    // The dead instance's late write is refused.
    assert!(
        !store
            .update_recording("RE6", "dead/0", &handset_shell::store::JobUpdate::Kept, now)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_url_on_another_host_or_path_is_never_fetched_and_the_job_fails() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let media = MediaServer::start(wav(800)).await;
    let api = media.base.clone();
    let (foreign, connections) = watcher().await;
    let foreign_https = foreign.replace("http://", "https://");
    let api_host = api.replace("http://", "https://");
    let store = open(dir).await;
    let path = |sid: &str| format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}");
    let cases = [
        // Another port on the same loopback host, in plain http and in https.
        ("RE10", format!("{foreign}{}", path("RE10"))),
        ("RE11", format!("{foreign_https}{}", path("RE11"))),
        // The API's host and port with another scheme, path, recording, or with credentials.
        ("RE12", format!("{api_host}{}", path("RE12"))),
        ("RE13", format!("{api}{}/../../../../x", path("RE13"))),
        ("RE14", format!("{api}{}", path("RE99"))),
        (
            "RE15",
            format!(
                "{}{}",
                api.replace("http://", "http://user:pw@"),
                path("RE15")
            ),
        ),
    ];
    for (n, (sid, url)) in cases.iter().enumerate() {
        let mut rec = event(&api, sid);
        rec.recording_url = url.clone();
        rec.received_unix_ms = n as u64 + 1;
        store.insert_recording(&rec, 1).await.unwrap();
    }
    let done = run_once(&config(dir, &api, None), &store).await;
    assert_eq!(done.len(), cases.len(), "{done:?}");
    assert!(done.iter().all(|(_, s)| *s == JobState::Failed), "{done:?}");
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "the foreign host saw no connection"
    );
    assert!(
        media.downloads().is_empty(),
        "nothing fetched: {:?}",
        media.downloads()
    );
    for (sid, _) in &done {
        let job = store.recording(sid).await.unwrap().unwrap();
        let error = job.error.unwrap_or_default();
        assert!(error.contains("refused"), "{sid}: {error}");
        assert!(!error.contains(TOKEN), "{error}");
    }
    // The same recording at the API's own address is fetched.
    let good = event(&api, "RE7");
    store.insert_recording(&good, 10).await.unwrap();
    assert_eq!(
        run_once(&config(dir, &api, None), &store).await,
        [("RE7".to_owned(), JobState::Fetched)]
    );
    assert_eq!(media.downloads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_never_answers_does_not_hold_up_the_next_recording() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The API accepts connections: one download stalls (a tarpit: no answer at all), the other
    // is served.
    let media = MediaServer::start(wav(800)).await;
    media.hold_next(&format!(
        "/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE1.wav"
    ));
    let api = media.base.clone();
    let store = open(dir).await;
    for (n, sid) in ["RE1", "RE2"].into_iter().enumerate() {
        let mut rec = event(&api, sid);
        rec.received_unix_ms = n as u64 + 1; // the stalled one is first in the queue
        store.insert_recording(&rec, 1).await.unwrap();
    }
    let mut cfg = config(dir, &api, None);
    cfg.timeout = Duration::from_secs(3600);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(recording::run(cfg, store.clone(), Arc::default(), stop_rx));
    // RE2 is fetched while RE1 is still stuck.
    let fetched = async {
        loop {
            let job = store.recording("RE2").await.unwrap().unwrap();
            if job.state == JobState::Fetched {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fetched)
        .await
        .expect("the second recording is fetched while the first stalls");
    assert_eq!(
        store.recording("RE1").await.unwrap().unwrap().state,
        JobState::Pending
    );
    let _ = stop_tx.send(true);
    worker.abort();
}
