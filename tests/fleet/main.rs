//! The fleet test: two real `handset` processes (instances `a` and `b`) sharing one PostgreSQL
//! database, behind a real load balancer (Debian's haproxy: `balance roundrobin`, WebSocket
//! upgrades, health checks on `/readyz` every 200 ms), driven the way Twilio drives them:
//! every webhook and every WebSocket handshake signed, calls played in real time by the call
//! simulator (`handset_sim`) through the load balancer.
//!
//! Run it with `bash scripts/fleet-test.sh`, which starts a throwaway PostgreSQL cluster,
//! installs haproxy if missing, builds `handset` and runs these tests with `--ignored`, passing
//! `FLEET_DATABASE_URL` (a server on which each test creates a fresh database), `HANDSET_BIN`
//! and `HAPROXY_BIN`. Each test starts its own fleet: both instances with
//! `PUBLIC_URL` = the load balancer, `RECORDING_LEASE=5`, `DRAIN_TIMEOUT=60`, JSON logs in a
//! temporary directory (their tails are printed, and the directory kept, when a test fails).
//!
//! What is checked (where a request landed: the `X-Handset-Instance` answer header; where a
//! stream ran: the `calls` table):
//!
//! - [`calls_across_instances_and_callbacks_stored_once`]: a call whose voice webhook is
//!   answered by one instance and whose stream runs on the other hears the built-in echo
//!   agent's greeting byte for byte, then its own speech echoed, with every mark played and
//!   echoed back and a normal close (1000, `completed`); a caller talking over the greeting is
//!   barged in on (a `clear`, the rest of the greeting dropped). The call-status and
//!   stream-status callbacks, each delivered through the load balancer until both instances
//!   have answered it, are stored once (one row; the instances' logs show each copy received
//!   and exactly one stored); the `<Connect action>` gets the same answer from both (read from
//!   the end reason the other instance stored: `<Hangup/>`).
//! - [`a_recording_is_done_once_and_survives_the_kill_of_its_worker`]: one recording callback
//!   POSTed (signed) to both instances at once makes one job (both take their copy, one
//!   stores it, both workers are woken), downloaded once from the fake media server and
//!   transcribed once by the fake agent, by one instance. Then a download is held open by the
//!   fake media server; the instance holding that job (`recordings.lease_owner`) is killed with
//!   SIGKILL; the other downloads it again only once the dead one's lease has expired, and
//!   finishes it (two downloads, one transcription, `transcribed`). The killed instance is
//!   restarted, rejoins the load balancer and does not do the job again.
//! - [`sigterm_drains_one_instance_while_the_other_takes_the_new_calls`]: SIGTERM to the
//!   instance running two live calls: its `/readyz` turns 503 (`draining`), haproxy marks it
//!   down, new calls placed through the load balancer run only on the other instance, the live
//!   calls go on (the caller's speech is still echoed) to a normal end (1000, `completed`,
//!   never 1001), and the process then exits with status 0.
//!
//! The calls run with the built-in echo agent (no `AGENT_URL`), so what is heard is Handset's
//! own media path; the recording test's fleet is started with `AGENT_URL` pointing at the fake
//! transcriber instead (it places no calls) and `TWILIO_API_URL` at the plain-http fake media
//! server on loopback (recordings are downloaded only from the configured Twilio API). Every wait is bounded, and no bound is tighter than seconds.
//!
//! This file holds the three tests; what they share is in modules: [`fleet`] starts and stops
//! the processes (what the script passes in, the fresh database, both instances), [`haproxy`]
//! runs the load balancer and reads its view of the instances, [`requests`] sends what Twilio
//! sends (signed webhooks, calls through the load balancer, callbacks to both instances), and
//! [`checks`] reads what the fleet did (its database, logs and files) and asserts on it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use handset_engine::agent::echo::GREETING;
use handset_shell::store::JobState;
use handset_sim::ReceivedKind;
use sqlx::Row as _;

#[path = "../support/mod.rs"]
mod support;

mod checks;
mod fleet;
mod haproxy;
mod requests;

use checks::{
    assert_copies_stored_once, assert_echoed, assert_greeting_heard, assert_normal_end,
    transcriptions, wait_for,
};
use fleet::Fleet;
use requests::{Call, get, instance_of, new_sid, recording_params, recording_path};
use support::fakes::{MediaServer, transcriber, unix_ms, wav};
use support::{after_silence, heard_between, speech};

/// The fleet's `TWILIO_AUTH_TOKEN`: every request below is signed with it.
const TOKEN: &str = "fleet-auth-token";
/// The simulator's `AccountSid`.
const ACCOUNT: &str = "AC00000000000000000000000000000000";
/// The instances' `INSTANCE_ID`s (also their haproxy server names).
const IDS: [&str; 2] = ["a", "b"];
/// How to run these tests.
const HOW: &str = "run `bash scripts/fleet-test.sh`: it starts PostgreSQL, installs haproxy, \
                   builds handset and runs this test with FLEET_DATABASE_URL, HANDSET_BIN and \
                   HAPROXY_BIN set";

#[ignore = "needs PostgreSQL and haproxy: run scripts/fleet-test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_instances_and_callbacks_stored_once() {
    let fleet = Fleet::start(&[]).await;
    let clip = speech();
    let clip_len = Duration::from_millis(clip.len() as u64 / 8);

    // Silence while the greeting plays, then speech: greeting, echo, marks.
    let lead = Duration::from_secs(2);
    let call = fleet
        .place_call(after_silence(lead, &clip), Duration::from_millis(7_500))
        .await;
    let (call_sid, webhook, stream) = (
        call.call_sid.clone(),
        call.webhook.clone(),
        call.stream.clone(),
    );
    assert_ne!(
        webhook, stream,
        "round robin: the webhook and the stream on different instances"
    );
    let outcome = call.finish().await;
    assert_normal_end(&outcome);
    assert_greeting_heard(&outcome);
    let corr = assert_echoed(
        &outcome,
        &clip,
        lead + clip_len,
        Duration::from_millis(7_500),
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a2"),
        "the echo's mark: {:?}",
        outcome.mark_names
    );
    assert_eq!(outcome.playback.clears, 0, "nobody talked over the agent");
    let record = fleet.call(&call_sid).await;
    assert_eq!(record.instance, stream);
    assert_eq!(record.end_reason.as_deref(), Some("completed"));
    println!(
        "echo call: webhook on {webhook}, stream on {stream}, echo correlation {corr:.2}: {:?}",
        outcome.playback
    );

    // Talking over the greeting: a barge-in clears it.
    let onset = Duration::from_millis(300);
    let barge = fleet
        .place_call(after_silence(onset, &clip), Duration::from_secs(5))
        .await;
    let (barge_sid, barge_webhook, barge_stream) = (
        barge.call_sid.clone(),
        barge.webhook.clone(),
        barge.stream.clone(),
    );
    assert_ne!(barge_webhook, barge_stream);
    let outcome = barge.finish().await;
    assert_normal_end(&outcome);
    let clears = support::clears_at(&outcome);
    assert_eq!(clears.len(), 1, "one clear: {:?}", outcome.received);
    assert!(
        clears[0] > onset && clears[0] < onset + clip_len,
        "the clear came while the caller spoke: {:?}",
        clears[0]
    );
    // The greeting paused when the onset was held (`ONSET_PAUSE_MS`), before the check
    // confirmed it: no agent audio in the last 60 ms before the clear.
    let paused = outcome
        .received
        .iter()
        .filter(|r| {
            r.at + Duration::from_millis(60) > clears[0]
                && r.at < clears[0]
                && matches!(r.kind, ReceivedKind::Media(_))
        })
        .count();
    assert_eq!(paused, 0, "the greeting paused before the clear");
    let heard = heard_between(&outcome, Duration::ZERO, onset + clip_len).len();
    assert!(
        heard < GREETING.len(),
        "heard {heard} of {} greeting samples",
        GREETING.len()
    );
    assert_eq!(
        fleet.call(&barge_sid).await.end_reason.as_deref(),
        Some("completed")
    );
    println!(
        "barge-in call: webhook on {barge_webhook}, stream on {barge_stream}, clear at {:?}",
        clears[0]
    );

    // Twilio's callbacks for the first call, each delivered to both instances: stored once.
    let stream_sid = fleet.call(&call_sid).await.stream_sid;
    for (sequence, status) in [("1", "in-progress"), ("2", "completed")] {
        let params = [
            ("AccountSid", ACCOUNT.to_owned()),
            ("CallSid", call_sid.clone()),
            ("CallStatus", status.to_owned()),
            ("SequenceNumber", sequence.to_owned()),
            ("CallDuration", "8".to_owned()),
        ];
        let deliveries = fleet.deliver_to_both("/webhook/call_status", &params).await;
        let copies = fleet
            .copies(
                "call status",
                &[("call_sid", &call_sid), ("call_status", status)],
                deliveries.len(),
            )
            .await;
        assert_copies_stored_once(&copies, deliveries.len());
    }
    let statuses = fleet.store.call_statuses(&call_sid).await.unwrap();
    let statuses: Vec<&str> = statuses.iter().map(|s| s.call_status.as_str()).collect();
    assert_eq!(statuses, ["in-progress", "completed"], "each stored once");
    for event in ["stream-started", "stream-stopped"] {
        let params = [
            ("AccountSid", ACCOUNT.to_owned()),
            ("CallSid", call_sid.clone()),
            ("StreamSid", stream_sid.clone()),
            ("StreamEvent", event.to_owned()),
            ("StreamName", stream_sid.clone()),
            ("Timestamp", "2025-01-01T00:00:00.000Z".to_owned()),
        ];
        let deliveries = fleet
            .deliver_to_both("/webhook/stream_status", &params)
            .await;
        let copies = fleet
            .copies(
                "stream status",
                &[("call_sid", &call_sid), ("event", event)],
                deliveries.len(),
            )
            .await;
        assert_copies_stored_once(&copies, deliveries.len());
    }
    assert_eq!(
        fleet.store.stream_statuses(&call_sid).await.unwrap(),
        ["stream-started", "stream-stopped"],
        "each stored once"
    );
    // The `<Connect action>`: the same answer wherever it lands, read from the end reason the
    // other instance stored (the caller hung up: `<Hangup/>`, no voicemail prompt).
    let params = [
        ("AccountSid", ACCOUNT.to_owned()),
        ("CallSid", call_sid.clone()),
        ("CallStatus", "in-progress".to_owned()),
    ];
    let answers = fleet
        .deliver_to_both("/webhook/stream_ended", &params)
        .await;
    assert!(
        answers.iter().all(|a| a.body == answers[0].body),
        "{answers:?}"
    );
    assert!(
        answers[0].body.contains("<Hangup />") && !answers[0].body.contains("<Record"),
        "{}",
        answers[0].body
    );
    let record = fleet.call(&call_sid).await;
    assert_eq!(
        (record.instance.as_str(), record.end_reason.as_deref()),
        (stream.as_str(), Some("completed")),
        "the call's record is untouched"
    );
}

#[ignore = "needs PostgreSQL and haproxy: run scripts/fleet-test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_done_once_and_survives_the_kill_of_its_worker() {
    let media = MediaServer::start(wav(8_000)).await;
    let (agent_url, offers) = transcriber().await;
    // The fake media server is the instances' Twilio API (plain http is allowed on loopback):
    // recordings are downloaded only from there.
    let mut fleet = Fleet::start(&[
        ("AGENT_URL", agent_url.as_str()),
        ("TWILIO_API_URL", media.base.as_str()),
    ])
    .await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
    );
    let poll_twice = Duration::from_millis(2_500);

    // One callback POSTed to both instances at once: both workers are woken for it.
    let sid = new_sid("RE");
    let params = recording_params(&media, &sid);
    let (url_a, url_b) = (fleet.instance("a").url(""), fleet.instance("b").url(""));
    let (ra, rb) = tokio::join!(
        fleet.post_signed(&url_a, "/webhook/handle_recording", &params),
        fleet.post_signed(&url_b, "/webhook/handle_recording", &params),
    );
    for (id, reply) in [("a", &ra), ("b", &rb)] {
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        assert_eq!(instance_of(reply), id);
    }
    let copies = fleet
        .copies("recording stored", &[("recording_sid", &sid)], 2)
        .await;
    assert_copies_stored_once(&copies, 2);
    let job = fleet
        .wait_job(&sid, JobState::Transcribed, Duration::from_secs(30))
        .await;
    tokio::time::sleep(poll_twice).await;
    let downloads = media.downloads_of(&format!("{}.wav", recording_path(&sid)));
    assert_eq!(downloads.len(), 1, "downloaded once: {downloads:?}");
    assert_eq!(downloads[0].auth.as_deref(), Some(basic.as_str()));
    assert_eq!(transcriptions(&offers, &sid), 1, "transcribed once");
    let job_now = fleet.store.recording(&sid).await.unwrap().unwrap();
    assert_eq!(job_now.state, JobState::Transcribed);
    assert_eq!(job.claims, 1, "claimed once");
    assert_eq!(
        job.transcript.as_deref(),
        Some(format!("message {sid} of 16000 bytes").as_str())
    );
    let holders: Vec<&str> = IDS
        .into_iter()
        .filter(|id| fleet.has_recording(id, &sid))
        .collect();
    assert_eq!(holders.len(), 1, "saved by one instance: {holders:?}");
    println!("raced recording: done by {}", holders[0]);

    // A download held open by the media server: its worker is killed mid-job.
    let sid = new_sid("RE");
    let wav_path = format!("{}.wav", recording_path(&sid));
    media.hold_next(&wav_path);
    let reply = fleet
        .post_signed(
            &fleet.lb_url(""),
            "/webhook/handle_recording",
            &recording_params(&media, &sid),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let owner = wait_for(
        Duration::from_secs(15),
        "the download is held and the job leased",
        async || {
            let job = fleet.store.recording(&sid).await.unwrap()?;
            (media.downloads_of(&wav_path).len() == 1)
                .then_some(job.lease_owner)
                .flatten()
        },
    )
    .await;
    let holder = owner.split('/').next().unwrap().to_owned();
    let survivor = Fleet::other(&holder);
    fleet.kill9(&holder);
    let killed_at = unix_ms();
    // The dead holder's lease, as it last renewed it: nobody else may take the job before.
    let row = sqlx::query(
        "SELECT lease_owner, lease_until_unix_ms FROM recordings WHERE recording_sid = $1",
    )
    .bind(&sid)
    .fetch_one(&fleet.db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), owner, "still the holder's lease");
    let lease_until = u64::try_from(row.get::<i64, _>(1)).unwrap();
    let job = fleet
        .wait_job(&sid, JobState::Transcribed, Duration::from_secs(40))
        .await;
    tokio::time::sleep(poll_twice).await;
    let downloads = media.downloads_of(&wav_path);
    assert_eq!(downloads.len(), 2, "fetched again once: {downloads:?}");
    assert!(
        downloads[1].at_unix_ms >= lease_until,
        "taken over after the lease ({lease_until}), not at {}",
        downloads[1].at_unix_ms
    );
    assert_eq!(downloads[1].auth.as_deref(), Some(basic.as_str()));
    assert_eq!(transcriptions(&offers, &sid), 1, "transcribed once");
    assert_eq!(job.claims, 2, "the holder's claim and the survivor's");
    assert_eq!(
        job.transcript.as_deref(),
        Some(format!("message {sid} of 16000 bytes").as_str())
    );
    assert!(
        fleet.has_recording(survivor, &sid),
        "{survivor} finished it"
    );
    assert!(
        !fleet.has_recording(&holder, &sid),
        "{holder} died before saving it"
    );
    println!(
        "killed {holder} holding the job: {survivor} fetched it {} ms after the kill (lease until +{} ms)",
        downloads[1].at_unix_ms.saturating_sub(killed_at),
        lease_until.saturating_sub(killed_at)
    );

    // The killed instance comes back, serves through the load balancer, and leaves the
    // finished job alone.
    fleet.restart(&holder).await;
    let mut answered = BTreeSet::new();
    for _ in 0..6 {
        let reply = get(&fleet.lb_url("/healthz")).await.unwrap();
        assert_eq!(reply.status, 200);
        answered.insert(instance_of(&reply));
        if answered.len() == IDS.len() {
            break;
        }
    }
    assert_eq!(answered.len(), IDS.len(), "both serve again: {answered:?}");
    tokio::time::sleep(poll_twice).await;
    assert_eq!(media.downloads_of(&wav_path).len(), 2);
    assert_eq!(transcriptions(&offers, &sid), 1);
    let job = fleet.store.recording(&sid).await.unwrap().unwrap();
    assert_eq!((job.state, job.claims), (JobState::Transcribed, 2));
}

#[ignore = "needs PostgreSQL and haproxy: run scripts/fleet-test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_one_instance_while_the_other_takes_the_new_calls() {
    let mut fleet = Fleet::start(&[]).await;
    let clip = speech();
    let clip_len = Duration::from_millis(clip.len() as u64 / 8);
    // Long calls whose caller speaks once the drain has begun.
    let lead = Duration::from_secs(6);
    let long = Duration::from_secs(12);

    // Calls through the load balancer until two streams run on one instance (round robin
    // alternates webhook and stream, so two calls are normally enough).
    let mut live: Vec<Call> = Vec::new();
    let draining = loop {
        assert!(live.len() < 4, "no two streams on one instance");
        let call = fleet.place_call(after_silence(lead, &clip), long).await;
        live.push(call);
        if let Some(id) = IDS
            .into_iter()
            .find(|id| live.iter().filter(|c| c.stream == *id).count() >= 2)
        {
            break id;
        }
    };
    let other = Fleet::other(draining);

    fleet.sigterm(draining);
    let reply = wait_for(
        Duration::from_secs(10),
        "the drained instance's /readyz answers 503",
        async || {
            get(&fleet.instance(draining).url("/readyz"))
                .await
                .ok()
                .filter(|r| r.status == 503)
        },
    )
    .await;
    assert!(reply.body.contains("draining"), "{}", reply.body);
    fleet.wait_lb(draining, "DOWN").await;
    assert_eq!(fleet.lb_status(other).await.as_deref(), Some("UP"));

    // New calls through the load balancer (a greeting heard in silence): webhook and stream
    // on the other instance only.
    let mut new_calls = Vec::new();
    for _ in 0..2 {
        let call = fleet
            .place_call(Arc::new(Vec::new()), Duration::from_secs(4))
            .await;
        assert_eq!(
            (call.webhook.as_str(), call.stream.as_str()),
            (other, other),
            "a new call landed on the draining instance"
        );
        new_calls.push(call);
    }
    assert!(
        fleet.running(draining),
        "the draining instance waits for its live calls"
    );
    for call in new_calls {
        let sid = call.call_sid.clone();
        let outcome = call.finish().await;
        assert_normal_end(&outcome);
        assert_greeting_heard(&outcome);
        assert_eq!(fleet.call(&sid).await.instance, other);
    }

    // The live calls go on to their normal end; the caller's speech is still echoed.
    for call in live {
        let (sid, stream) = (call.call_sid.clone(), call.stream.clone());
        let outcome = call.finish().await;
        assert_normal_end(&outcome);
        assert_greeting_heard(&outcome);
        let corr = assert_echoed(&outcome, &clip, lead + clip_len, long);
        println!("live call on {stream} during the drain: echo correlation {corr:.2}");
        let record = fleet.call(&sid).await;
        assert_eq!(
            (record.instance.as_str(), record.end_reason.as_deref()),
            (stream.as_str(), Some("completed"))
        );
    }
    let status = fleet.wait_exit(draining, Duration::from_secs(20)).await;
    assert!(status.success(), "{draining} exited with {status}");
    println!("drained {draining}: exited with {status}; {other} took the new calls");
}
