//! Persistence over SQLite or PostgreSQL.
//!
//! Architecture invariant: this module is the only code in Stella that speaks SQL. Callers
//! see domain types and [`StoreError`], never rows or driver types.
//!
//! One SQL text serves both databases through sqlx's `Any` driver: placeholders are `$1,
//! $2, …` (SQLite binds `$N` by position), values are `i64`, `String` or `Option` of those,
//! times are unix milliseconds in `*_at_ms` columns and JSON documents are TEXT. The schema
//! lives in `migrations/sqlite` and `migrations/postgres`, kept in step by hand and applied
//! on [`Store::connect`].
//!
//! Every statement that writes goes through [`Store::writer`]: on SQLite a pool of its own
//! with one connection, so writers queue in this process (woken the moment the one
//! before them commits) instead of in SQLite's busy handler, which sleeps 1 to 100 ms
//! between tries and left most of a busy server idle. Reads use the other connections
//! and never wait for a writer (WAL). Write transactions that read before they write
//! still begin with `BEGIN IMMEDIATE`, for whatever else may hold the file. On
//! PostgreSQL the writer is the one pool.

mod agents;
mod audit;
mod console;
mod deployments;
mod drift;
mod environments;
mod error;
mod events;
mod logs;
pub mod notify;
mod offline;
mod promotions;
mod registries;
mod releases;
mod rollouts;
mod routers;
mod runs;
mod scans;
mod settlements;
mod targets;
mod tenants;
mod tokens;
mod users;
mod variables;
mod webhooks;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};

pub use audit::MAX_APPEND_BATCH;
pub use console::ConsoleSession;
pub use deployments::{DesiredPayload, ResultOutcome, StoredResult, TaskResultRecord};
pub use environments::ConfigGeneration;
pub use error::StoreError;
pub use promotions::PromotionUpdate;
pub use rollouts::{StepTask, StepTaskResult};
pub use scans::{EnvironmentVerdict, ScanLink, ScanReportRef, VerdictUpdate};
pub use settlements::NewSettlement;

use error::database;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Set on every SQLite connection: wait for locks instead of failing, enforce foreign
/// keys, and fsync only at checkpoints (safe with WAL: a crash loses at most the last
/// commits, never consistency).
const SQLITE_CONNECTION_PRAGMAS: [&str; 3] = [
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = NORMAL",
];

/// Readers on SQLite. Each connection runs on a thread of its own, and a read waits
/// more for that thread to wake than for the file: more connections keep more reads in
/// flight (`bench decisions`: 8 decided about 13 % more per second than 4; 16 no more
/// than 8).
const SQLITE_DEFAULT_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Which database a [`Store`] speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An SQLite file (WAL); the embedded single-node default.
    Sqlite,
    /// A PostgreSQL database, possibly shared by many server replicas.
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `sqlite:…`, `postgres:…` or `postgresql:…`.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::UnsupportedUrl {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach the database.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub url: String,
    /// Pool size; 8 readers for SQLite and 10 for PostgreSQL when `None`.
    pub max_connections: Option<u32>,
}

impl StoreConfig {
    /// A config for `url` with the default pool size.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            max_connections: None,
        }
    }
}

impl fmt::Debug for StoreConfig {
    // The URL may carry a password: show only its scheme.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.url.split_once(':').map_or("", |(scheme, _)| scheme);
        f.debug_struct("StoreConfig")
            .field("url", &format_args!("{scheme}:…"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A pool of connections to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads (and on PostgreSQL, writes too).
    pool: AnyPool,
    /// Writes: on SQLite one connection, on PostgreSQL a clone of `pool`.
    writer: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` with the default pool size and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(&StoreConfig::new(url)).await
    }

    /// Connects as `config` says and applies pending migrations.
    pub async fn connect_with(config: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&config.url)?;
        let options = AnyConnectOptions::from_str(&config.url)
            .map_err(database("parsing the database url"))?;
        let (pool, writer, migrator) = match backend {
            Backend::Sqlite => {
                let (pool, writer) =
                    sqlite_pools(&config.url, options, config.max_connections).await?;
                (pool, writer, &SQLITE_MIGRATOR)
            }
            Backend::Postgres => {
                let pool = postgres_pool(options, config.max_connections).await?;
                (pool.clone(), pool, &POSTGRES_MIGRATOR)
            }
        };
        // PostgreSQL: the migrator holds an advisory lock, so replicas starting together
        // apply each migration once.
        migrator.run(&writer).await.map_err(StoreError::Migrate)?;
        tracing::debug!(%backend, "store connected and migrated");
        Ok(Store {
            pool,
            writer,
            backend,
        })
    }

    /// Which database this store speaks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool
            .execute("SELECT 1")
            .await
            .map_err(database("pinging the database"))?;
        Ok(())
    }

    /// Closes every connection; later calls on any clone of this store fail.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// Where statements that write go (see the module's documentation).
    fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Whether `query` (one text column; `$1` is bound to `now_ms`) finds a row, read on
    /// the readers' pool. A poller asks first, so that with nothing to claim, the usual
    /// case, it takes no write lock (on SQLite a write transaction takes it even when it
    /// changes nothing).
    async fn any_due(
        &self,
        query: &str,
        now_ms: i64,
        op: &'static str,
    ) -> Result<bool, StoreError> {
        let found = sqlx::query_scalar::<_, String>(query)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(database(op))?;
        Ok(found.is_some())
    }

    /// Begins a transaction that holds the write lock from its first statement on SQLite
    /// (`BEGIN IMMEDIATE`); PostgreSQL's row locks need no such care.
    async fn begin_write(&self, op: &'static str) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
        .map_err(database(op))
    }
}

/// The readers' pool and the writer's (one connection) of a SQLite database.
async fn sqlite_pools(
    url: &str,
    options: AnyConnectOptions,
    max_connections: Option<u32>,
) -> Result<(AnyPool, AnyPool), StoreError> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory {
        // Every connection to an in-memory database is a database of its own: keep one,
        // forever, for reads and writes alike.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
            .connect_with(options)
            .await
            .map_err(database("opening the sqlite database"))?;
        return Ok((pool.clone(), pool));
    }

    // WAL is a property of the database file: set it once, before the pool exists, because
    // switching needs an exclusive lock that the busy timeout does not wait for.
    let mut conn = sqlx::AnyConnection::connect_with(&options)
        .await
        .map_err(database("opening the sqlite database"))?;
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(&mut conn)
        .await
        .map_err(database("enabling the sqlite write-ahead log"))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%journal_mode, "sqlite refused the write-ahead log");
    }
    conn.close()
        .await
        .map_err(database("opening the sqlite database"))?;

    // No ping before each acquire (sqlx's default): a connection to a local file does
    // not go stale, and the ping was a round trip to the connection's thread per
    // statement.
    let readers = AnyPoolOptions::new()
        .max_connections(max_connections.unwrap_or(SQLITE_DEFAULT_MAX_CONNECTIONS))
        .test_before_acquire(false)
        .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
        .connect_with(options.clone())
        .await
        .map_err(database("opening the sqlite database"))?;
    // Kept open: a write never waits for a connection to be opened. Its acquire timeout
    // bounds the wait behind other writers, like the busy timeout did.
    let writer = AnyPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
        .connect_with(options)
        .await
        .map_err(database("opening the sqlite database"))?;
    Ok((readers, writer))
}

async fn sqlite_pragmas(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    for pragma in SQLITE_CONNECTION_PRAGMAS {
        conn.execute(pragma).await?;
    }
    Ok(())
}

async fn postgres_pool(
    options: AnyConnectOptions,
    max_connections: Option<u32>,
) -> Result<AnyPool, StoreError> {
    AnyPoolOptions::new()
        .max_connections(max_connections.unwrap_or(POSTGRES_DEFAULT_MAX_CONNECTIONS))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(database("connecting to postgresql"))
}

/// `($1, $2), ($3, $4)`: the `VALUES` of a multi-row `INSERT` of `rows` rows of `columns`
/// values each, numbered from `$1` row by row.
pub(super) fn value_rows(rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// Whether `text` may be the start of an id: at least 8 characters, hex digits and `-`
/// only (so nothing in it is a `LIKE` wildcard).
pub(super) fn is_id_prefix(text: &str) -> bool {
    text.len() >= 8 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The one row a prefix lookup found (it reads at most two): `NotFound` for none,
/// `Conflict` (entity `prefix_entity`) for several.
pub(super) fn only_match<R>(
    rows: Vec<R>,
    entity: &'static str,
    prefix_entity: &'static str,
    prefix: &str,
) -> Result<R, StoreError> {
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        (Some(_), Some(_)) => Err(StoreError::Conflict {
            entity: prefix_entity,
            key: prefix.to_owned(),
        }),
        (None, _) => Err(StoreError::NotFound {
            entity,
            key: prefix.to_owned(),
        }),
    }
}
