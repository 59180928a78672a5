//! The store's contract, run against SQLite by default and against PostgreSQL when
//! `DATABASE_URL` names one (each test in a database of its own).

use super::testing::TestStore;
use super::*;

const T0: u64 = 1_700_000_000_000;

fn recording(sid: &str, received: u64) -> RecordingEvent {
    RecordingEvent {
        received_unix_ms: received,
        call_sid: "CA1".into(),
        account_sid: "AC1".into(),
        recording_sid: sid.into(),
        recording_url: format!("https://api.twilio.com/rec/{sid}"),
        duration_secs: Some(7),
        digits: Some("#".into()),
    }
}

#[tokio::test]
async fn opening_twice_runs_the_migrations_once() {
    let db = TestStore::new().await;
    let again = db.reopen().await;
    again.ping().await.unwrap();
    assert_eq!(again.counts().await.unwrap(), Counts::default());
    // The health probe's upsert, first and again, from two instances.
    let limit = Duration::from_secs(5);
    for (store, at) in [(&again, T0), (&again, T0 + 1), (&db.store, T0 + 2)] {
        store.probe("a", at, limit).await;
        assert_eq!(store.check(limit).await, Ok(()));
    }
    assert_eq!(again.health().errors(Trouble::Failed), 0);
}

#[tokio::test]
async fn a_retried_status_callback_is_stored_once() {
    let db = TestStore::new().await;
    let event = CallStatusEvent {
        received_unix_ms: T0,
        call_sid: "CA1".into(),
        call_status: "completed".into(),
        sequence_number: Some(3),
        duration_secs: Some(42),
    };
    assert!(db.store.insert_call_status(&event).await.unwrap());
    let other = db.reopen().await;
    assert!(!other.insert_call_status(&event).await.unwrap());
    let ringing = CallStatusEvent {
        call_status: "ringing".into(),
        sequence_number: None,
        duration_secs: None,
        ..event.clone()
    };
    assert!(other.insert_call_status(&ringing).await.unwrap());
    assert_eq!(
        db.store.call_statuses("CA1").await.unwrap(),
        vec![ringing, event]
    );

    let stream = StreamStatusEvent {
        received_unix_ms: T0,
        stream_sid: "MZ1".into(),
        stream_event: "stream-stopped".into(),
        call_sid: "CA1".into(),
        stream_error: None,
    };
    assert!(db.store.insert_stream_status(&stream).await.unwrap());
    assert!(!other.insert_stream_status(&stream).await.unwrap());
    assert_eq!(
        db.store.stream_statuses("CA1").await.unwrap(),
        vec!["stream-stopped".to_owned()]
    );
}

#[tokio::test]
async fn call_records_keep_the_end_reason_of_the_current_stream() {
    let db = TestStore::new().await;
    let start = CallRecord {
        call_sid: "CA1".into(),
        account_sid: "AC1".into(),
        stream_sid: "MZ1".into(),
        instance: "a".into(),
        started_unix_ms: T0,
        ..CallRecord::default()
    };
    db.store.call_started(&start).await.unwrap();
    assert_eq!(db.store.call("CA1").await.unwrap(), Some(start.clone()));
    db.store
        .call_ended("CA1", "MZ1", "a", T0 + 5, "agent_hangup", None)
        .await
        .unwrap();
    let ended = db.store.call("CA1").await.unwrap().unwrap();
    assert_eq!(ended.ended_unix_ms, Some(T0 + 5));
    assert_eq!(ended.end_reason.as_deref(), Some("agent_hangup"));

    // The call streams again (redirected after a drain) on another instance; a late end
    // write for the old stream must not overwrite the new one's record.
    let again = CallRecord {
        stream_sid: "MZ2".into(),
        instance: "b".into(),
        started_unix_ms: T0 + 10,
        ..start
    };
    db.store.call_started(&again).await.unwrap();
    db.store
        .call_ended("CA1", "MZ1", "a", T0 + 11, "going_away", None)
        .await
        .unwrap();
    assert_eq!(db.store.call("CA1").await.unwrap(), Some(again));

    // A stream refused before it started still leaves its reason.
    db.store
        .call_ended("CA2", "MZ9", "b", T0, "draining", None)
        .await
        .unwrap();
    let refused = db.store.call("CA2").await.unwrap().unwrap();
    assert_eq!(refused.end_reason.as_deref(), Some("draining"));
    assert_eq!(db.store.call("CA3").await.unwrap(), None);

    // A transfer keeps its target, then its outcome.
    let transfer =
        crate::ending::check_transfer("+15557654321", Some("+15550001111"), Some(20), &[]).unwrap();
    let start4 = CallRecord {
        call_sid: "CA4".into(),
        stream_sid: "MZ4".into(),
        instance: "a".into(),
        ..CallRecord::default()
    };
    db.store.call_started(&start4).await.unwrap();
    db.store
        .call_ended("CA4", "MZ4", "a", T0, "transfer", Some(&transfer))
        .await
        .unwrap();
    db.store.transfer_ended("CA4", "no-answer").await.unwrap();
    let record = db.reopen().await.call("CA4").await.unwrap().unwrap();
    assert_eq!(record.transfer, Some(transfer));
    assert_eq!(record.transfer_status.as_deref(), Some("no-answer"));
}

#[tokio::test]
async fn a_recording_is_one_job_and_two_instances_never_hold_it_at_once() {
    let db = TestStore::new().await;
    let other = db.reopen().await;
    assert!(
        db.store
            .insert_recording(&recording("RE1", T0), T0)
            .await
            .unwrap()
    );
    assert!(
        !other
            .insert_recording(&recording("RE1", T0), T0)
            .await
            .unwrap()
    );

    let lease = T0 + 30_000;
    let (a, b) = tokio::join!(
        db.store.claim_recording("a", T0, lease, true),
        other.claim_recording("b", T0, lease, true)
    );
    let claimed: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(claimed.len(), 1, "exactly one instance claims the job");
    let job = &claimed[0];
    assert_eq!(job.event, recording("RE1", T0));
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.claims, 1);
    let owner = job.lease_owner.clone().unwrap();
    let stranger = if owner == "a" { "b" } else { "a" };

    // Nobody else gets it while the lease holds.
    assert_eq!(
        other
            .claim_recording(stranger, lease - 1, lease + 1, true)
            .await
            .unwrap(),
        None
    );
    assert!(
        !other
            .update_recording("RE1", stranger, &JobUpdate::Kept, T0)
            .await
            .unwrap()
    );

    // The holder dies; once the lease expires another instance takes the job over, and the
    // old holder's late writes are refused.
    let taken = other
        .claim_recording(stranger, lease, lease + 30_000, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.claims, 2);
    assert!(
        !db.store
            .update_recording(
                "RE1",
                &owner,
                &JobUpdate::Failed { error: "x".into() },
                lease
            )
            .await
            .unwrap()
    );
    assert!(
        other
            .update_recording(
                "RE1",
                stranger,
                &JobUpdate::Fetched {
                    file: "recordings/RE1.wav".into()
                },
                lease
            )
            .await
            .unwrap()
    );
    assert!(
        other
            .update_recording(
                "RE1",
                stranger,
                &JobUpdate::Transcribed {
                    transcript: "hello".into()
                },
                lease + 1
            )
            .await
            .unwrap()
    );
    let done = db.store.recording("RE1").await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Transcribed);
    assert_eq!(done.transcript.as_deref(), Some("hello"));
    assert_eq!(done.file.as_deref(), Some("recordings/RE1.wav"));
    assert_eq!(done.lease_owner, None);
    assert_eq!(
        db.store
            .claim_recording("a", lease * 2, lease * 3, true)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn jobs_are_claimed_oldest_first_and_a_released_job_waits_for_its_retry_time() {
    let db = TestStore::new().await;
    db.store
        .insert_recording(&recording("RE2", T0 + 1), T0)
        .await
        .unwrap();
    db.store
        .insert_recording(&recording("RE1", T0), T0)
        .await
        .unwrap();
    let first = db
        .store
        .claim_recording("a", T0, T0 + 100_000, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event.recording_sid, "RE1");
    let second = db
        .store
        .claim_recording("a", T0, T0 + 100_000, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.event.recording_sid, "RE2");
    assert!(
        db.store
            .update_recording(
                "RE1",
                "a",
                &JobUpdate::Released {
                    retry_at_unix_ms: T0 + 5_000,
                    error: "download answered status 503".into()
                },
                T0 + 1
            )
            .await
            .unwrap()
    );
    assert_eq!(
        db.store
            .claim_recording("a", T0 + 4_999, T0 + 9_000, true)
            .await
            .unwrap(),
        None
    );
    let again = db
        .store
        .claim_recording("a", T0 + 5_000, T0 + 9_000, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.event.recording_sid, "RE1");
    assert_eq!(again.state, JobState::Pending);
    assert_eq!(again.error.as_deref(), Some("download answered status 503"));
    assert_eq!(db.store.counts().await.unwrap().recordings_pending, 2);
}

#[tokio::test]
async fn a_fetched_job_waits_for_an_instance_that_transcribes() {
    let db = TestStore::new().await;
    db.store
        .insert_recording(&recording("RE1", T0), T0)
        .await
        .unwrap();
    db.store
        .claim_recording("a", T0, T0 + 100, false)
        .await
        .unwrap()
        .unwrap();
    let file = JobUpdate::Fetched {
        file: "recordings/RE1.wav".into(),
    };
    assert!(
        db.store
            .update_recording("RE1", "a", &file, T0)
            .await
            .unwrap()
    );
    assert!(
        db.store
            .update_recording("RE1", "a", &JobUpdate::Kept, T0)
            .await
            .unwrap()
    );
    assert_eq!(
        db.store.recording("RE1").await.unwrap().unwrap().state,
        JobState::Fetched
    );
    assert_eq!(
        db.store
            .claim_recording("a", T0 + 1, T0 + 100, false)
            .await
            .unwrap(),
        None
    );
    let job = db
        .store
        .claim_recording("b", T0 + 1, T0 + 100, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Fetched);
    assert_eq!(job.file.as_deref(), Some("recordings/RE1.wav"));
}

#[tokio::test]
async fn jsonl_files_are_imported_once_with_their_progress() {
    let db = TestStore::new().await;
    let dir = tempfile::tempdir().unwrap();
    let line = |v: serde_json::Value| format!("{v}\n");
    let mut recordings = String::new();
    for (sid, at) in [("RE1", 1), ("RE2", 2), ("RE3", 3)] {
        recordings.push_str(&line(serde_json::to_value(recording(sid, at)).unwrap()));
    }
    recordings.push_str(r#"{"received_unix_ms":4,"call_s"#);
    std::fs::write(dir.path().join("recordings.jsonl"), recordings).unwrap();
    std::fs::write(
        dir.path().join("call_status.jsonl"),
        line(serde_json::json!({"received_unix_ms": 5, "call_sid": "CA1",
            "call_status": "completed", "sequence_number": 2, "duration_secs": 9})),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recordings-status.jsonl"),
        [
            line(
                serde_json::json!({"recording_sid": "RE1", "call_sid": "CA1",
                "status": "fetched", "at_unix_ms": 6, "attempts": 1,
                "file": "recordings/RE1.wav"}),
            ),
            line(
                serde_json::json!({"recording_sid": "RE1", "call_sid": "CA1",
                "status": "transcribed", "at_unix_ms": 7, "attempts": 0,
                "transcript": "hi"}),
            ),
            line(
                serde_json::json!({"recording_sid": "RE2", "call_sid": "CA1",
                "status": "failed", "at_unix_ms": 8, "attempts": 6, "error": "gone"}),
            ),
        ]
        .concat(),
    )
    .unwrap();

    let report = import_jsonl(&db.store, dir.path()).await.unwrap();
    assert_eq!(report.files.len(), 3);
    assert_eq!(
        (report.recordings, report.call_statuses, report.progress),
        (3, 1, 2)
    );
    assert_eq!(report.skipped_lines, 1);
    for name in import::FILES {
        assert!(!dir.path().join(name).exists());
        assert!(dir.path().join(format!("{name}.imported")).exists());
    }
    let re1 = db.store.recording("RE1").await.unwrap().unwrap();
    assert_eq!(
        (re1.state, re1.transcript.as_deref()),
        (JobState::Transcribed, Some("hi"))
    );
    let re2 = db.store.recording("RE2").await.unwrap().unwrap();
    assert_eq!(
        (re2.state, re2.error.as_deref()),
        (JobState::Failed, Some("gone"))
    );
    let re3 = db.store.recording("RE3").await.unwrap().unwrap();
    assert_eq!(re3.state, JobState::Pending);
    assert_eq!(db.store.call_statuses("CA1").await.unwrap().len(), 1);

    // Nothing left to import; the same files again import nothing new.
    assert_eq!(
        import_jsonl(&db.store, dir.path()).await.unwrap(),
        ImportReport::default()
    );
    for name in import::FILES {
        std::fs::rename(
            dir.path().join(format!("{name}.imported")),
            dir.path().join(name),
        )
        .unwrap();
    }
    let again = import_jsonl(&db.store, dir.path()).await.unwrap();
    assert_eq!(
        (again.recordings, again.call_statuses, again.progress),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_database_is_a_clear_error() {
    let err = Store::open(&StoreOptions::new("mysql://x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Scheme { .. }), "{err}");
    let mut options = StoreOptions::new("postgres://handset@127.0.0.1:9/handset");
    options.acquire_timeout = Duration::from_secs(2);
    let err = Store::open(&options).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot connect to the Postgres database"),
        "{err}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Store::open(&StoreOptions::sqlite_in(file.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
}

/// SQLite only: a database that may not grow (`max_page_count`, on the pool's one connection)
/// answers `SQLITE_FULL`, as a full disk does. (That the probe fails too on a real full disk,
/// and that the pool recovers once space is freed, is `scripts/disk-full-test.sh`.)
#[tokio::test]
async fn a_full_database_refuses_writes_whole_and_the_health_follows_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::sqlite_in(dir.path());
    options.max_connections = 1;
    let store = Store::open(&options).await.unwrap();
    let limit = Duration::from_secs(5);
    store.probe("test", T0, limit).await;
    assert_eq!(store.health().status(), Ok(()));
    let event = |n: u64| CallStatusEvent {
        received_unix_ms: T0 + n,
        call_sid: format!("CA{n:032x}"),
        call_status: "completed".into(),
        sequence_number: Some(n),
        duration_secs: Some(n),
    };
    assert!(store.insert_call_status(&event(0)).await.unwrap());

    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let grow = |pages: i64| sqlx::AssertSqlSafe(format!("PRAGMA max_page_count = {pages}"));
    sqlx::query(grow(pages)).execute(&store.pool).await.unwrap();
    let mut stored = 1;
    let refused = loop {
        assert!(stored < 100_000, "the database never filled up");
        match store.insert_call_status(&event(stored)).await {
            Ok(new) => {
                assert!(new);
                stored += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(Trouble::of(&refused), Trouble::DiskFull, "{refused}");
    assert_eq!(store.health().status(), Err(Trouble::DiskFull));
    assert_eq!(store.health().errors(Trouble::DiskFull), 1);
    // Reads still work, and say nothing about writes; nor does a retried callback that was
    // stored before (it writes nothing).
    store.ping().await.unwrap();
    assert_eq!(store.counts().await.unwrap().call_statuses, stored);
    assert!(!store.insert_call_status(&event(0)).await.unwrap());
    assert_eq!(store.check(limit).await, Err(Trouble::DiskFull));
    // The refused callback left nothing behind.
    assert!(
        store
            .call_statuses(&event(stored).call_sid)
            .await
            .unwrap()
            .is_empty()
    );

    // Room again: the next write that commits clears it.
    sqlx::query(grow(1_073_741_823))
        .execute(&store.pool)
        .await
        .unwrap();
    store.probe("test", T0 + 1, limit).await;
    assert_eq!(store.check(limit).await, Ok(()));
    assert!(store.insert_call_status(&event(stored)).await.unwrap());
    assert_eq!(store.counts().await.unwrap().call_statuses, stored + 1);
}

/// SQLite only: below `min_free_bytes` on the database's file system the store counts as full
/// before any write fails, and a write that commits does not clear it; above, it is healthy.
/// (No file system can be filled here: the floors are set beyond and below any real one.)
#[tokio::test]
async fn free_space_below_the_floor_counts_as_a_full_disk_whatever_the_writes_do() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(5);
    let mut options = StoreOptions::sqlite_in(dir.path());
    options.min_free_bytes = u64::MAX;
    let store = Store::open(&options).await.unwrap();
    let free = store.health().free_bytes().expect("measured at open");
    assert!(free > 0 && free < u64::MAX, "{free}");
    assert_eq!(store.health().status(), Err(Trouble::DiskFull));
    store.probe("test", T0, limit).await;
    assert_eq!(store.check(limit).await, Err(Trouble::DiskFull));
    // Writes still commit (the floor warns before they fail), and no statement failed.
    let probes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_probe")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(probes, 1);
    assert_eq!(store.health().errors(Trouble::DiskFull), 0);

    options.min_free_bytes = 1;
    let roomy = Store::open(&options).await.unwrap();
    roomy.probe("test", T0 + 1, limit).await;
    assert_eq!(roomy.check(limit).await, Ok(()));
    assert!(roomy.health().free_bytes().is_some());

    options.min_free_bytes = 0;
    let unmeasured = Store::open(&options).await.unwrap();
    assert_eq!(unmeasured.check(limit).await, Ok(()));
    assert_eq!(unmeasured.health().free_bytes(), None);
}
