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

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use handset_engine::agent::echo::GREETING;
use handset_shell::store::{CallRecord, JobState, RecordingJob, Store, StoreOptions};
use handset_sim::{self as sim, CallOutcome, CallPlan, ReceivedKind};
use http_body_util::Full;
use sqlx::Row as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod support;
use support::fakes::{MediaServer, Offers, transcriber, unix_ms, wav};
use support::{
    Reply, after_silence, best_correlation, heard_between, played_bytes, speech, try_send,
    twilio_sign,
};

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

/// What the script passes in.
struct Setup {
    handset: PathBuf,
    haproxy: String,
    database_url: String,
}

fn setup() -> Setup {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{name} is not set: {HOW}"))
    };
    let database_url = var("FLEET_DATABASE_URL");
    assert!(
        database_url.starts_with("postgres"),
        "FLEET_DATABASE_URL must be a postgres:// URL: {HOW}"
    );
    let handset = PathBuf::from(var("HANDSET_BIN"));
    assert!(
        handset.is_file(),
        "HANDSET_BIN={} is not a file: {HOW}",
        handset.display()
    );
    Setup {
        handset,
        haproxy: std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".to_owned()),
        database_url,
    }
}

/// A new, empty database on the server `admin` names; its URL.
async fn fresh_database(admin: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("handset_fleet_{:016x}", rand::random::<u64>());
    let pool = sqlx::AnyPool::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("FLEET_DATABASE_URL is not reachable ({e}): {HOW}"));
    // The name is ours: a fixed prefix and hex digits.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create the fleet's database");
    pool.close().await;
    use sqlx::ConnectOptions as _;
    admin
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("FLEET_DATABASE_URL is a PostgreSQL URL")
        .database(&name)
        .to_url_lossy()
        .to_string()
}

/// `N` distinct loopback ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// The last `n` lines of a log, without the health checks' request lines.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("/readyz")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET url`, or why not.
async fn get(url: &str) -> Result<Reply, String> {
    try_send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The instance that answered (`X-Handset-Instance`).
fn instance_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-handset-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Handset-Instance header: {reply:?}"))
        .to_owned()
}

/// `prefix` and 32 random hex digits: a Twilio SID no earlier run used.
fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// Polls `check` every 100 ms until it gives a value; panics with `what` after `limit`.
async fn wait_for<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `handset` process.
struct Instance {
    id: &'static str,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("instance running");
        i32::try_from(child.id()).unwrap()
    }
}

/// Two instances, haproxy in front, and the database they share.
struct Fleet {
    setup: Setup,
    /// Data directories, logs and the haproxy configuration.
    dir: Option<tempfile::TempDir>,
    database_url: String,
    /// Variables every instance gets on top of the fleet's.
    extra: Vec<(String, String)>,
    instances: Vec<Instance>,
    haproxy: Option<Child>,
    haproxy_log: PathBuf,
    lb_port: u16,
    stats_port: u16,
    /// The shared store, read as the instances wrote it.
    store: Store,
    /// The same database, for the columns the store does not return.
    db: sqlx::AnyPool,
}

impl Fleet {
    /// Starts both instances (with `extra` variables) on a fresh database and haproxy in front,
    /// and waits until haproxy counts both up.
    async fn start(extra: &[(&str, &str)]) -> Self {
        let setup = setup();
        let database_url = fresh_database(&setup.database_url).await;
        let store = Store::open(&StoreOptions::new(database_url.clone()))
            .await
            .expect("the fleet's database opens");
        let db = sqlx::AnyPool::connect(&database_url).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("handset-fleet-")
            .tempdir()
            .unwrap();
        let [lb_port, stats_port, port_a, port_b] = free_ports();
        let instances = IDS
            .iter()
            .zip([port_a, port_b])
            .map(|(&id, port)| Instance {
                id,
                port,
                data_dir: dir.path().join(id),
                log: dir.path().join(format!("{id}.log")),
                child: None,
            })
            .collect();
        let haproxy_log = dir.path().join("haproxy.log");
        let mut fleet = Self {
            setup,
            dir: Some(dir),
            database_url,
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            instances,
            haproxy: None,
            haproxy_log,
            lb_port,
            stats_port,
            store,
            db,
        };
        for i in 0..IDS.len() {
            fleet.spawn(i);
        }
        fleet.start_haproxy();
        for i in 0..IDS.len() {
            fleet.wait_ready(i).await;
        }
        for id in IDS {
            fleet.wait_lb(id, "UP").await;
        }
        fleet
    }

    fn index(id: &str) -> usize {
        IDS.iter()
            .position(|i| *i == id)
            .unwrap_or_else(|| panic!("no instance {id:?}"))
    }

    fn instance(&self, id: &str) -> &Instance {
        &self.instances[Self::index(id)]
    }

    /// The other instance's id.
    fn other(id: &str) -> &'static str {
        IDS[1 - Self::index(id)]
    }

    /// Starts instance `i` (again), its log appended to.
    fn spawn(&mut self, i: usize) {
        let inst = &self.instances[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&inst.log)
            .unwrap();
        let mut cmd = Command::new(&self.setup.handset);
        cmd.env_clear()
            .env("BIND", "127.0.0.1")
            .env("PORT", inst.port.to_string())
            .env("INSTANCE_ID", inst.id)
            .env("DATA_DIR", &inst.data_dir)
            .env("DATABASE_URL", &self.database_url)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("PUBLIC_URL", format!("http://127.0.0.1:{}", self.lb_port))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("RECORDING_LEASE", "5")
            .env("DRAIN_TIMEOUT", "60")
            .env("ENGINE_WORKERS", "1")
            .envs(self.extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.setup.handset.display()));
        self.instances[i].child = Some(child);
    }

    fn start_haproxy(&mut self) {
        let dir = self.dir.as_ref().unwrap().path();
        let [a, b] = [self.instances[0].port, self.instances[1].port];
        let config = format!(
            "global\n\
             \x20   maxconn 1000\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout tunnel 1h\n\
             \x20   timeout check 3s\n\
             frontend fleet\n\
             \x20   bind 127.0.0.1:{lb}\n\
             \x20   default_backend handset\n\
             backend handset\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /readyz\n\
             \x20   default-server inter 200ms fall 1 rise 2\n\
             \x20   server a 127.0.0.1:{a} check\n\
             \x20   server b 127.0.0.1:{b} check\n\
             listen stats\n\
             \x20   bind 127.0.0.1:{stats}\n\
             \x20   stats enable\n\
             \x20   stats uri /stats\n",
            lb = self.lb_port,
            stats = self.stats_port,
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(&self.haproxy_log).unwrap();
        let child = Command::new(&self.setup.haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}: {HOW}", self.setup.haproxy));
        self.haproxy = Some(child);
    }

    /// Waits until instance `i` answers `/readyz` with 200 (directly, not through haproxy).
    async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let inst = &mut self.instances[i];
            if let Some(status) = inst.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "instance {} exited while starting ({status}):\n{}",
                    inst.id,
                    tail(&inst.log, 40)
                );
            }
            if get(&inst.url("/readyz"))
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {} not ready within 60 s:\n{}",
                inst.id,
                tail(&inst.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// haproxy's view of server `id`: `UP`, `DOWN` (or a transition such as `UP 1/2`).
    async fn lb_status(&self, id: &str) -> Option<String> {
        let csv = get(&format!("http://127.0.0.1:{}/stats;csv", self.stats_port))
            .await
            .ok()?
            .body;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let status = header.iter().position(|c| *c == "status")?;
        lines.find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.first() == Some(&"handset") && fields.get(1) == Some(&id))
                .then(|| fields.get(status).map(|s| (*s).to_owned()))
                .flatten()
        })
    }

    /// Waits until haproxy shows server `id` as exactly `want` (`UP` or `DOWN`).
    async fn wait_lb(&mut self, id: &str, want: &str) {
        if let Some(status) = self.haproxy.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "haproxy exited ({status}):\n{}",
                tail(&self.haproxy_log, 40)
            );
        }
        let what = format!("haproxy shows server {id} {want}");
        wait_for(Duration::from_secs(20), &what, async || {
            (self.lb_status(id).await.as_deref() == Some(want)).then_some(())
        })
        .await;
    }

    /// `http://127.0.0.1:<lb>` + `path`: also the fleet's `PUBLIC_URL`.
    fn lb_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.lb_port)
    }

    /// POSTs `params` to `path` at `base` (the load balancer's or an instance's origin),
    /// signed as Twilio signs it: over the public URL.
    async fn post_signed(&self, base: &str, path: &str, params: &[(&str, String)]) -> Reply {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let signature = twilio_sign(TOKEN, &self.lb_url(path), &pairs);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().copied())
            .finish();
        let request = http::Request::post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        try_send(request)
            .await
            .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"))
    }

    /// The same signed callback through the load balancer until both instances have answered
    /// it (round robin: twice). Every answer must be a success.
    async fn deliver_to_both(&self, path: &str, params: &[(&str, String)]) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut answered = BTreeSet::new();
        while answered.len() < IDS.len() {
            assert!(
                replies.len() < 6,
                "{path}: six deliveries through the load balancer all landed on {answered:?}"
            );
            let reply = self.post_signed(&self.lb_url(""), path, params).await;
            assert!(
                (200..300).contains(&reply.status),
                "{path}: {} {}",
                reply.status,
                reply.body
            );
            answered.insert(instance_of(&reply));
            replies.push(reply);
        }
        replies
    }

    /// Places a call through the load balancer as Twilio does: the signed voice webhook, then
    /// (in a task) the signed Media Stream to the `<Stream url>` of its TwiML, which is the load
    /// balancer too; returns once the stream has started on some instance.
    async fn place_call(&self, audio: Arc<Vec<i16>>, duration: Duration) -> Call {
        let call_sid = new_sid("CA");
        let params = [
            ("AccountSid", ACCOUNT.to_owned()),
            ("ApiVersion", "2010-04-01".to_owned()),
            ("CallSid", call_sid.clone()),
            ("CallStatus", "ringing".to_owned()),
            ("Direction", "inbound".to_owned()),
            ("From", "+15550001111".to_owned()),
            ("To", "+15550002222".to_owned()),
        ];
        let reply = self
            .post_signed(&self.lb_url(""), "/webhook/incoming_call", &params)
            .await;
        assert_eq!(reply.status, 200, "voice webhook: {}", reply.body);
        let webhook = instance_of(&reply);
        let target = sim::parse_twiml(&reply.body).expect("TwiML with <Connect><Stream>");
        assert_eq!(
            target.url,
            self.lb_url("/ws/twilio-media").replace("http", "ws")
        );
        let mut plan = CallPlan::new(self.lb_url("/webhook/incoming_call"));
        plan.auth_token = Some(TOKEN.to_owned());
        plan.call_sid.clone_from(&call_sid);
        plan.audio = audio;
        plan.duration = duration;
        let mut task = tokio::spawn(async move { sim::run_stream(&plan, &target).await });
        let deadline = Instant::now() + Duration::from_secs(15);
        let record = loop {
            if let Some(record) = self.store.call(&call_sid).await.unwrap() {
                break record;
            }
            if task.is_finished() {
                panic!(
                    "call {call_sid}: the stream ended before it started: {:?}",
                    (&mut task).await
                );
            }
            assert!(
                Instant::now() < deadline,
                "call {call_sid}: no stream started within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Call {
            call_sid,
            webhook,
            stream: record.instance,
            task,
        }
    }

    /// The call's record.
    async fn call(&self, call_sid: &str) -> CallRecord {
        self.store
            .call(call_sid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no calls row for {call_sid}"))
    }

    /// Waits until recording job `sid` is in `state`.
    async fn wait_job(&self, sid: &str, state: JobState, limit: Duration) -> RecordingJob {
        let what = format!("recording {sid} {}", state.as_str());
        wait_for(limit, &what, async || {
            self.store
                .recording(sid)
                .await
                .unwrap()
                .filter(|job| job.state == state)
        })
        .await
    }

    /// What instance `id` logged with `message` and these `fields` (its JSON log lines).
    fn logged(&self, id: &str, message: &str, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.instance(id).log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["message"] == message && fields.iter().all(|(k, want)| v[k] == *want))
            .collect()
    }

    /// For each copy of a callback received (a `message` line with these `fields`), the
    /// instance that received it and whether its copy was the one stored (the `new` field).
    ///
    /// Logs leave each instance from a thread of their own, so a line may reach the file a
    /// moment after the reply it describes: this waits (up to 10 s) for `expected` copies and
    /// returns what was logged by then.
    async fn copies(
        &self,
        message: &str,
        fields: &[(&str, &str)],
        expected: usize,
    ) -> Vec<(&'static str, bool)> {
        let read = || -> Vec<(&'static str, bool)> {
            IDS.into_iter()
                .flat_map(|id| {
                    self.logged(id, message, fields)
                        .into_iter()
                        .map(move |v| (id, v["new"].as_bool().expect("a `new` field")))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let copies = read();
            if copies.len() >= expected || Instant::now() >= deadline {
                return copies;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether instance `id` saved recording `sid` in its `DATA_DIR`.
    fn has_recording(&self, id: &str, sid: &str) -> bool {
        self.instance(id)
            .data_dir
            .join(format!("recordings/{sid}.wav"))
            .is_file()
    }

    /// SIGKILL to instance `id`, and its end reaped.
    fn kill9(&mut self, id: &str) {
        let inst = &mut self.instances[Self::index(id)];
        let mut child = inst.child.take().expect("instance running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    /// SIGTERM to instance `id`.
    fn sigterm(&self, id: &str) {
        let pid = self.instance(id).pid();
        // SAFETY: a plain kill(2) of our own child.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to instance {id}");
    }

    /// Whether instance `id` is still running.
    fn running(&mut self, id: &str) -> bool {
        let inst = &mut self.instances[Self::index(id)];
        inst.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits (bounded) for instance `id` to exit; its status.
    async fn wait_exit(&mut self, id: &str, limit: Duration) -> ExitStatus {
        let inst = &mut self.instances[Self::index(id)];
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = inst.child.as_mut().unwrap().try_wait().unwrap() {
                inst.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} still running {limit:?} after its calls ended:\n{}",
                tail(&inst.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts instance `id` again (same port, data directory and settings) and waits until it
    /// is ready and haproxy counts it up.
    async fn restart(&mut self, id: &str) {
        let i = Self::index(id);
        assert!(self.instances[i].child.is_none(), "{id} is still running");
        self.spawn(i);
        self.wait_ready(i).await;
        self.wait_lb(id, "UP").await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self
            .instances
            .iter_mut()
            .filter_map(|i| i.child.as_mut())
            .chain(self.haproxy.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut err = std::io::stderr().lock();
            for inst in &self.instances {
                let _ = writeln!(
                    err,
                    "---- instance {} (last lines of {}):\n{}",
                    inst.id,
                    inst.log.display(),
                    tail(&inst.log, 60)
                );
            }
            let _ = writeln!(err, "---- haproxy:\n{}", tail(&self.haproxy_log, 20));
            if let Some(dir) = self.dir.take() {
                let _ = writeln!(
                    err,
                    "---- the fleet's files are kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// A call placed through the load balancer whose stream is running.
struct Call {
    call_sid: String,
    /// The instance that answered the voice webhook.
    webhook: String,
    /// The instance the stream runs on.
    stream: String,
    task: JoinHandle<Result<CallOutcome, sim::SimError>>,
}

impl Call {
    /// Waits for the simulated call to end (its plan's duration, then `stop`).
    async fn finish(self) -> CallOutcome {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the call ends")
            .unwrap()
            .unwrap_or_else(|e| panic!("call {}: {e}", self.call_sid))
    }
}

/// `delivered` copies of one callback were received, by both instances, and exactly one of
/// them was stored.
fn assert_copies_stored_once(copies: &[(&str, bool)], delivered: usize) {
    assert_eq!(
        copies.len(),
        delivered,
        "every copy was received: {copies:?}"
    );
    let instances: BTreeSet<&str> = copies.iter().map(|(id, _)| *id).collect();
    assert_eq!(instances.len(), IDS.len(), "by both instances: {copies:?}");
    let stored = copies.iter().filter(|(_, new)| *new).count();
    assert_eq!(stored, 1, "stored once: {copies:?}");
}

/// A call that ended normally: every server message well formed, closed by the server with
/// 1000 after the caller's `stop`, every mark sent played and echoed back.
fn assert_normal_end(outcome: &CallOutcome) {
    assert!(
        outcome.malformed.is_empty(),
        "malformed messages: {:?}",
        outcome.malformed
    );
    assert_eq!(outcome.metrics.failure, None, "{:?}", outcome.close);
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1000),
        "{:?}",
        outcome.close
    );
    assert_eq!(outcome.subprotocol.as_deref(), Some("audio.twilio.com"));
    let p = &outcome.playback;
    assert!(p.marks_received > 0, "{p:?}");
    assert_eq!(p.marks_played + p.marks_cleared, p.marks_received, "{p:?}");
}

/// The greeting was heard byte for byte (µ-law 0x7F and 0xFF are both zero).
fn assert_greeting_heard(outcome: &CallOutcome) {
    let norm = |b: u8| if b == 0x7F { 0xFF } else { b };
    let heard = played_bytes(outcome);
    assert!(
        heard.len() >= GREETING.len(),
        "only {} bytes played",
        heard.len()
    );
    assert!(
        heard[..GREETING.len()]
            .iter()
            .zip(GREETING)
            .all(|(a, b)| *a == norm(*b)),
        "the greeting played verbatim"
    );
    assert!(
        outcome.mark_names.iter().any(|m| m == "a1"),
        "the greeting's mark: {:?}",
        outcome.mark_names
    );
}

/// After the caller's `clip` ended at `spoken_end`, what played was that speech; returns the
/// correlation.
fn assert_echoed(
    outcome: &CallOutcome,
    clip: &[i16],
    spoken_end: Duration,
    until: Duration,
) -> f64 {
    let echo = heard_between(outcome, spoken_end, until);
    assert!(
        echo.len() >= clip.len() * 3 / 4,
        "echo of {} samples for a {}-sample utterance",
        echo.len(),
        clip.len()
    );
    let corr = best_correlation(clip, &echo, 12_000);
    assert!(
        corr > 0.7,
        "the echo correlates with the caller's speech: {corr:.3}"
    );
    corr
}

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

/// A recording callback's parameters for a recording served by `media`.
fn recording_params(media: &MediaServer, sid: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", ACCOUNT.to_owned()),
        ("CallSid", new_sid("CA")),
        ("RecordingSid", sid.to_owned()),
        (
            "RecordingUrl",
            format!("{}{}", media.base, recording_path(sid)),
        ),
        ("RecordingDuration", "1".to_owned()),
        ("RecordingStatus", "completed".to_owned()),
    ]
}

/// Where Twilio serves recording `sid` (without the `.wav` Handset appends).
fn recording_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}")
}

/// How many transcriptions of `sid` the fake agent made.
fn transcriptions(offers: &Offers, sid: &str) -> usize {
    offers
        .lock()
        .unwrap()
        .iter()
        .filter(|(offer, _)| offer["recordingSid"] == sid)
        .count()
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
