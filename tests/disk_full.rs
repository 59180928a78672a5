//! A full disk under the embedded SQLite store: the real `handset` binary with `DATA_DIR` on a
//! small tmpfs, driven with signed webhooks until the disk is full, then freed again.
//!
//! Run it with `bash scripts/disk-full-test.sh`, which mounts the tmpfs (as root, or in a user
//! and mount namespace), builds `handset` and runs this test with `--ignored`, passing
//! `DISK_FULL_DIR` (the empty mount point) and `HANDSET_BIN`.
//!
//! What is checked, in order:
//!
//! 1. The instance starts on the tmpfs and is ready. A filler file then takes all the free
//!    space but [`HEADROOM`], which is enough for the WAL to cross SQLite's automatic checkpoint
//!    (1000 pages) before the disk is full, so both ways a full disk shows up are exercised: a
//!    checkpoint that cannot grow the database file, and a commit that cannot grow the WAL.
//! 2. Signed webhooks that write, in turn: the voice webhook (a stream token), call-status,
//!    stream-status and recording callbacks, one at a time, until [`FAILURES`] in a row are
//!    answered 500. Each answer is noted: acknowledged (2xx) or refused (500; any other status
//!    fails the test).
//! 3. While the disk is full: `/healthz` says `degraded` with `store_error` `disk_full`,
//!    `/readyz` answers 503 (`store degraded`), `/metrics` has `handset_store_degraded 1` and
//!    `handset_store_free_bytes` below [`MIN_FREE_MB`]. (Without that floor a probe's small
//!    write can commit between refused webhooks and turn `/readyz` 200 while the disk is full.)
//! 4. The filler is deleted, and no request is sent but `/readyz`: it turns 200 by itself (the
//!    store's probe), and `/healthz` says `ok`. The time this took is printed.
//! 5. [`AFTER`] more webhooks, all acknowledged.
//! 6. The instance is killed with SIGKILL (no clean close, no checkpoint) and started again on
//!    the same directory: it is ready, takes more webhooks (all acknowledged), and stops on
//!    SIGTERM with status 0.
//! 7. The database file, opened directly: `PRAGMA integrity_check` is `ok`, and for each kind
//!    of webhook the rows stored are exactly the ones acknowledged: every 2xx is there, and no
//!    refused one left a row behind.
//!
//! Every wait is bounded (seconds, never tighter); nothing is timed but the printed numbers.

#![allow(clippy::disallowed_methods)] // Instant::now: the recovery time printed for the report.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use sqlx::Row as _;

mod support;
use support::{Reply, call_sid, stream_sid, try_send, twilio_sign};

/// The instance's `TWILIO_AUTH_TOKEN`: every webhook below is signed with it.
const TOKEN: &str = "disk-full-auth-token";
/// Free space left beside the filler when the webhooks start.
const HEADROOM: u64 = 6 << 20;
/// The instance's `STORE_MIN_FREE_MB`: well under [`HEADROOM`], so it is ready when the
/// webhooks start.
const MIN_FREE_MB: u64 = 1;
/// Refusals in a row after which the disk counts as full.
const FAILURES: usize = 40;
/// Most webhooks sent while filling (the disk must be full well before).
const MAX_POSTS: u32 = 50_000;
/// Webhooks sent after the space is freed, and again after the restart.
const AFTER: u32 = 40;
/// How to run this test.
const HOW: &str = "run `bash scripts/disk-full-test.sh`: it mounts a small tmpfs and runs this \
                   test with DISK_FULL_DIR and HANDSET_BIN set";

/// The webhooks that write, one table each.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
enum Hook {
    /// `/webhook/incoming_call`: a stream token (`stream_tokens`, by CallSid).
    Voice,
    /// `/webhook/call_status` (`call_status_events`, by CallSid).
    CallStatus,
    /// `/webhook/stream_status` (`stream_status_events`, by StreamSid).
    StreamStatus,
    /// `/webhook/handle_recording` (`recordings`, by RecordingSid).
    Recording,
}

const HOOKS: [Hook; 4] = [
    Hook::Voice,
    Hook::CallStatus,
    Hook::StreamStatus,
    Hook::Recording,
];

fn recording_sid(n: u32) -> String {
    format!("RE{n:032x}")
}

impl Hook {
    /// Webhook number `n` (its kind is `n` mod 4).
    fn nth(n: u32) -> Self {
        HOOKS[n as usize % HOOKS.len()]
    }

    fn path(self) -> &'static str {
        match self {
            Self::Voice => "/webhook/incoming_call",
            Self::CallStatus => "/webhook/call_status",
            Self::StreamStatus => "/webhook/stream_status",
            Self::Recording => "/webhook/handle_recording",
        }
    }

    /// The key of webhook `n` in its table.
    fn key(self, n: u32) -> String {
        match self {
            Self::Voice | Self::CallStatus => call_sid(n),
            Self::StreamStatus => stream_sid(n),
            Self::Recording => recording_sid(n),
        }
    }

    /// The form Twilio would send for webhook `n`.
    fn params(self, n: u32) -> Vec<(&'static str, String)> {
        let account = (
            "AccountSid",
            "AC00000000000000000000000000000000".to_owned(),
        );
        match self {
            Self::Voice => vec![
                account,
                ("CallSid", call_sid(n)),
                ("CallStatus", "ringing".to_owned()),
                ("From", "+15550001111".to_owned()),
                ("To", "+15550002222".to_owned()),
            ],
            Self::CallStatus => vec![
                account,
                ("CallSid", call_sid(n)),
                ("CallStatus", "completed".to_owned()),
                ("SequenceNumber", "3".to_owned()),
                ("CallDuration", "42".to_owned()),
            ],
            Self::StreamStatus => vec![
                account,
                ("CallSid", call_sid(n)),
                ("StreamSid", stream_sid(n)),
                ("StreamEvent", "stream-stopped".to_owned()),
            ],
            Self::Recording => vec![
                account,
                ("CallSid", call_sid(n)),
                ("RecordingSid", recording_sid(n)),
                // Not Twilio's API: the worker refuses it without a request (no network).
                (
                    "RecordingUrl",
                    format!("https://recordings.invalid/{}", recording_sid(n)),
                ),
                ("RecordingDuration", "7".to_owned()),
            ],
        }
    }

    fn table(self) -> &'static str {
        match self {
            Self::Voice => "stream_tokens",
            Self::CallStatus => "call_status_events",
            Self::StreamStatus => "stream_status_events",
            Self::Recording => "recordings",
        }
    }
}

/// What the client was told, per kind of webhook.
#[derive(Debug, Default)]
struct Tally {
    /// Keys answered 2xx.
    acked: [BTreeSet<String>; 4],
    /// Keys answered 500.
    refused: [BTreeSet<String>; 4],
}

impl Tally {
    fn acked(&self) -> usize {
        self.acked.iter().map(BTreeSet::len).sum()
    }

    fn refused(&self) -> usize {
        self.refused.iter().map(BTreeSet::len).sum()
    }
}

/// One `handset` process.
struct Instance {
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Instance {
    fn new(bin: PathBuf, data_dir: PathBuf, log: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            bin,
            data_dir,
            log,
            port,
            child: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts the process (again), its log appended to.
    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .env_clear()
            .env("BIND", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("INSTANCE_ID", "diskfull")
            .env("DATA_DIR", &self.data_dir)
            .env("STORE_MIN_FREE_MB", MIN_FREE_MB.to_string())
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("PUBLIC_URL", self.url(""))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("ENGINE_WORKERS", "1")
            .env("DRAIN_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// The last `n` lines of the log, without the health checks.
    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("/readyz") && !l.contains("/healthz"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    async fn get(&self, path: &str) -> Result<Reply, String> {
        try_send(
            http::Request::get(self.url(path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Waits (bounded) until `/readyz` answers 200; how long that took.
    async fn wait_ready(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.get("/readyz").await.is_ok_and(|r| r.status == 200) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "not ready within {limit:?}; log:\n{}\n/healthz: {:?}",
            self.tail(40),
            self.get("/healthz").await.map(|r| r.body)
        );
    }

    /// POSTs webhook `n`, signed over the public URL.
    async fn post(&self, n: u32) -> Reply {
        let hook = Hook::nth(n);
        let params = hook.params(n);
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let signature = twilio_sign(TOKEN, &self.url(hook.path()), &pairs);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().copied())
            .finish();
        let request = http::Request::post(self.url(hook.path()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        try_send(request).await.unwrap_or_else(|e| {
            panic!(
                "POST {} (webhook {n}): {e}; log:\n{}",
                hook.path(),
                self.tail(40)
            )
        })
    }

    /// POSTs webhook `n` and notes the answer; whether it was acknowledged.
    async fn post_and_tally(&self, n: u32, tally: &mut Tally) -> bool {
        let hook = Hook::nth(n);
        let reply = self.post(n).await;
        let i = hook as usize;
        match reply.status {
            200..=299 => {
                tally.acked[i].insert(hook.key(n));
                true
            }
            500 => {
                tally.refused[i].insert(hook.key(n));
                false
            }
            other => panic!(
                "{} (webhook {n}) answered {other}: {}\nlog:\n{}",
                hook.path(),
                reply.body,
                self.tail(40)
            ),
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.as_ref().expect("running").id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "signal {signal} to handset");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        while start.elapsed() < limit {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("handset still running {limit:?} after the signal");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fills the file system of `path` until ENOSPC, then gives `headroom` bytes back.
fn fill(path: &Path, headroom: u64) {
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(headroom)).unwrap();
    file.sync_all().unwrap();
}

/// Free bytes on the file system of `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) with a valid C string and an out-parameter it fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut stat) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    stat.f_bavail * stat.f_frsize
}

/// The keys stored in `hook`'s table.
async fn stored(pool: &sqlx::AnyPool, hook: Hook) -> BTreeSet<String> {
    let sql = match hook {
        Hook::Voice => "SELECT call_sid FROM stream_tokens",
        Hook::CallStatus => "SELECT call_sid FROM call_status_events",
        Hook::StreamStatus => "SELECT stream_sid FROM stream_status_events",
        Hook::Recording => "SELECT recording_sid FROM recordings",
    };
    sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a small tmpfs: run scripts/disk-full-test.sh"]
async fn a_full_disk_refuses_webhooks_with_500_and_loses_nothing_acknowledged() {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{name} is not set: {HOW}"))
    };
    let mount = PathBuf::from(var("DISK_FULL_DIR"));
    let bin = PathBuf::from(var("HANDSET_BIN"));
    assert!(
        bin.is_file(),
        "HANDSET_BIN={} is not a file: {HOW}",
        bin.display()
    );
    let size = free_bytes(&mount);
    assert!(
        size > HEADROOM + (1 << 20) && size < 256 << 20,
        "DISK_FULL_DIR={} has {size} bytes free: a fresh tmpfs of 16 MiB or so is wanted ({HOW})",
        mount.display()
    );
    let data_dir = mount.join("data");
    let filler = mount.join("filler");
    let logs = tempfile::Builder::new()
        .prefix("handset-disk-full-")
        .tempdir()
        .unwrap();
    let mut server = Instance::new(bin, data_dir.clone(), logs.path().join("handset.log"));
    // 1. Start, then take all the space but the headroom.
    server.spawn();
    server.wait_ready(Duration::from_secs(60)).await;
    fill(&filler, HEADROOM);
    let free_at_start = free_bytes(&mount);

    // 2. Webhooks until the disk is full.
    let mut tally = Tally::default();
    let mut n = 0;
    let mut in_a_row = 0;
    let mut first_refusal = None;
    while in_a_row < FAILURES {
        n += 1;
        assert!(
            n < MAX_POSTS,
            "{MAX_POSTS} webhooks and the disk is not full ({} acknowledged)",
            tally.acked()
        );
        if server.post_and_tally(n, &mut tally).await {
            in_a_row = 0;
        } else {
            in_a_row += 1;
            first_refusal.get_or_insert(n);
        }
    }
    let acked_before_full = tally.acked();
    let refused = tally.refused();
    let wal = std::fs::metadata(data_dir.join("handset.db-wal")).map_or(0, |m| m.len());
    let db = std::fs::metadata(data_dir.join("handset.db")).map_or(0, |m| m.len());

    // 3. Degraded while full.
    let health = server.get("/healthz").await.unwrap();
    let health_json: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health_json["status"], "degraded", "{}", health.body);
    assert_eq!(health_json["store"], "degraded", "{}", health.body);
    assert_eq!(health_json["store_error"], "disk_full", "{}", health.body);
    let ready = server.get("/readyz").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    let ready_json: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(ready_json["reason"], "store degraded", "{}", ready.body);
    assert_eq!(ready_json["store_error"], "disk_full", "{}", ready.body);
    let metrics = server.get("/metrics").await.unwrap();
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "handset_store_degraded 1"),
        "{}",
        metrics.body
    );
    let free_when_full: u64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("handset_store_free_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no handset_store_free_bytes:\n{}", metrics.body));
    assert!(
        free_when_full < MIN_FREE_MB << 20,
        "{free_when_full} B free when full"
    );
    let disk_full_errors = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("handset_store_errors_total{kind=\"disk_full\"} "))
        .unwrap_or("?")
        .to_owned();

    // 4. Free the space; the instance notices on its own (nothing but /readyz is sent).
    let freed = Instant::now();
    std::fs::remove_file(&filler).unwrap();
    let recovery = server.wait_ready(Duration::from_secs(30)).await;
    let recovered_in = freed.elapsed();
    let health = server.get("/healthz").await.unwrap();
    let health_json: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(health_json["status"], "ok", "{}", health.body);
    assert!(health_json.get("store_error").is_none(), "{}", health.body);

    // 5. Webhooks are taken again.
    for _ in 0..AFTER {
        n += 1;
        assert!(
            server.post_and_tally(n, &mut tally).await,
            "webhook {n} refused after the space was freed; log:\n{}",
            server.tail(40)
        );
    }

    // 6. SIGKILL, restart on the same directory, more webhooks, SIGTERM.
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await;
    server.spawn();
    server.wait_ready(Duration::from_secs(60)).await;
    for _ in 0..AFTER {
        n += 1;
        assert!(
            server.post_and_tally(n, &mut tally).await,
            "webhook {n} refused after the restart; log:\n{}",
            server.tail(40)
        );
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit {status:?} after SIGTERM; log:\n{}",
        server.tail(40)
    );

    // 7. Acknowledged == stored, per table, and an intact file.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", data_dir.join("handset.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let check: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(check, "ok");
    let mut stored_total = 0;
    for hook in HOOKS {
        let i = hook as usize;
        let rows = stored(&pool, hook).await;
        stored_total += rows.len();
        let lost: Vec<_> = tally.acked[i].difference(&rows).collect();
        let extra: Vec<_> = rows.difference(&tally.acked[i]).collect();
        assert!(
            lost.is_empty(),
            "{}: {} acknowledged but not stored: {lost:?}",
            hook.table(),
            lost.len()
        );
        assert!(
            extra.is_empty(),
            "{}: {} stored but never acknowledged (refused with 500, yet written): {extra:?}",
            hook.table(),
            extra.len()
        );
    }
    pool.close().await;
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let degraded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("store degraded"))
        .collect();
    // The first two: the floor, then the first refused write.
    let first_degraded = degraded
        .iter()
        .take(2)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            let fields = v.as_object_mut().unwrap();
            for noise in ["timestamp", "level", "target", "threadId", "threadName"] {
                fields.remove(noise);
            }
            v.to_string()
        })
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        !log.contains("panicked"),
        "a panic in the log:\n{}",
        server.tail(40)
    );
    println!(
        "disk full: tmpfs {size} B, {free_at_start} B free when the webhooks started; \
         first 500 at webhook {}, {acked_before_full} acknowledged before the disk was full \
         (then {FAILURES} refused in a row; {refused} refused in all); {free_when_full} B free, \
         WAL {wal} B, database {db} B when full; /readyz 200 again {:.0} ms after the filler was deleted \
         (first 200 seen {:.0} ms after the first poll); {} acknowledged in all, {stored_total} \
         stored; {disk_full_errors} disk_full statement errors while full (webhooks and \
         probes); \"store degraded\" logged {} times, first: {first_degraded}",
        first_refusal.unwrap_or(0),
        recovered_in.as_secs_f64() * 1e3,
        recovery.as_secs_f64() * 1e3,
        tally.acked(),
        degraded.len(),
    );
    assert_eq!(stored_total, tally.acked());
}
