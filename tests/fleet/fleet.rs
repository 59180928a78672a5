//! The fleet's processes: what the script passes in, a fresh database, both `handset`
//! instances (started, signalled, restarted, reaped) and, when a test fails, their logs.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use handset_shell::store::{Store, StoreOptions};
use tokio::time::Instant;

use crate::requests::get;
use crate::{HOW, IDS, TOKEN};

/// What the script passes in.
pub(crate) struct Setup {
    handset: PathBuf,
    pub(crate) haproxy: String,
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
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("/readyz")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One `handset` process.
pub(crate) struct Instance {
    id: &'static str,
    pub(crate) port: u16,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("instance running");
        i32::try_from(child.id()).unwrap()
    }
}

/// Two instances, haproxy in front, and the database they share.
pub(crate) struct Fleet {
    pub(crate) setup: Setup,
    /// Data directories, logs and the haproxy configuration.
    pub(crate) dir: Option<tempfile::TempDir>,
    database_url: String,
    /// Variables every instance gets on top of the fleet's.
    extra: Vec<(String, String)>,
    pub(crate) instances: Vec<Instance>,
    pub(crate) haproxy: Option<Child>,
    pub(crate) haproxy_log: PathBuf,
    pub(crate) lb_port: u16,
    pub(crate) stats_port: u16,
    /// The shared store, read as the instances wrote it.
    pub(crate) store: Store,
    /// The same database, for the columns the store does not return.
    pub(crate) db: sqlx::AnyPool,
}

impl Fleet {
    /// Starts both instances (with `extra` variables) on a fresh database and haproxy in front,
    /// and waits until haproxy counts both up.
    pub(crate) async fn start(extra: &[(&str, &str)]) -> Self {
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

    pub(crate) fn instance(&self, id: &str) -> &Instance {
        &self.instances[Self::index(id)]
    }

    /// The other instance's id.
    pub(crate) fn other(id: &str) -> &'static str {
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

    /// SIGKILL to instance `id`, and its end reaped.
    pub(crate) fn kill9(&mut self, id: &str) {
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
    pub(crate) fn sigterm(&self, id: &str) {
        let pid = self.instance(id).pid();
        // SAFETY: a plain kill(2) of our own child.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to instance {id}");
    }

    /// Whether instance `id` is still running.
    pub(crate) fn running(&mut self, id: &str) -> bool {
        let inst = &mut self.instances[Self::index(id)];
        inst.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits (bounded) for instance `id` to exit; its status.
    pub(crate) async fn wait_exit(&mut self, id: &str, limit: Duration) -> ExitStatus {
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
    pub(crate) async fn restart(&mut self, id: &str) {
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
