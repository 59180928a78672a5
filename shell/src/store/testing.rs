//! A fresh store per test: a temporary SQLite file, or, when `DATABASE_URL` names a
//! PostgreSQL server, a new database on it (so the same tests run against both).

use sqlx::Row as _;

use super::{Store, StoreOptions};

/// A store of its own for one test.
pub(crate) struct TestStore {
    /// The store.
    pub(crate) store: Store,
    /// Its URL, to open a second pool on it (a second instance).
    url: String,
    /// Holds the SQLite file's directory for the test's life.
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// A new, migrated, empty store.
    pub(crate) async fn new() -> Self {
        match std::env::var("DATABASE_URL") {
            Ok(admin) if admin.starts_with("postgres") => {
                sqlx::any::install_default_drivers();
                let name = format!("handset_test_{:016x}", rand::random::<u64>());
                let pool = sqlx::AnyPool::connect(&admin)
                    .await
                    .expect("DATABASE_URL reachable");
                // The name is ours: a fixed prefix and hex digits.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create a test database");
                pool.close().await;
                let url = with_database(&admin, &name);
                let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
                Self {
                    store,
                    url,
                    _dir: None,
                }
            }
            _ => {
                let dir = tempfile::tempdir().unwrap();
                let options = StoreOptions::sqlite_in(dir.path());
                let store = Store::open(&options).await.unwrap();
                Self {
                    store,
                    url: options.url,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A second, independent pool on the same database, as another instance would have.
    pub(crate) async fn reopen(&self) -> Store {
        Store::open(&StoreOptions::new(self.url.clone()))
            .await
            .unwrap()
    }

    /// The token digest stored for `call_sid`.
    pub(crate) async fn stored_token_digest(&self, call_sid: &str) -> String {
        sqlx::query("SELECT token_sha256 FROM stream_tokens WHERE call_sid = $1")
            .bind(call_sid)
            .fetch_one(&self.store.pool)
            .await
            .unwrap()
            .get(0)
    }
}

/// `url` with its database name replaced by `name` (sqlx parses and writes the URL).
fn with_database(url: &str, name: &str) -> String {
    use sqlx::ConnectOptions as _;
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .expect("DATABASE_URL is a PostgreSQL URL")
        .database(name)
        .to_url_lossy()
        .to_string()
}
