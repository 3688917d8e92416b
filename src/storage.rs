//! Opening a SQL pool for a room that owns tables: SQLite (a file, WAL) or PostgreSQL, chosen by
//! the URL, with that room's own migrations applied. The ledger (`migrations/ledger`) and Dial's
//! store (`migrations/dial`) may share one database: their versions never collide, and each
//! migrator ignores the other's rows in `_sqlx_migrations`.

use std::str::FromStr;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;

/// A room's migrations, one set per backend.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Migrations {
    /// The set for the backend of `url`, told to leave other rooms' versions alone.
    pub fn for_url(&self, url: &str) -> Migrator {
        let set = if is_sqlite(url) {
            &self.sqlite
        } else {
            &self.postgres
        };
        let mut m = Migrator::with_migrations(set.iter().cloned().collect());
        m.set_ignore_missing(true);
        m
    }
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
}

/// Opens a pool on `url` (creating a SQLite file and its directory if needed) and applies
/// `migrations` for its backend. Safe to call more than once on one database.
pub async fn open(url: &str, migrations: &Migrations) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let sqlite = is_sqlite(url);
    let migrator = migrations.for_url(url);
    if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        // Only the scheme: the rest may hold a password.
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(DbError::UnsupportedUrl(format!("{scheme}:…")));
    }
    let url = if sqlite {
        sqlite_url(url)?
    } else {
        url.to_owned()
    };
    let options = AnyConnectOptions::from_str(&url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 8 } else { 16 })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL lets readers run beside the writer; FULL makes each commit durable
                    // before we act on it (a payment state is written before its side effect).
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

fn sqlite_url(url: &str) -> Result<String, DbError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(DbError::UnsupportedUrl(format!(
            "{url} (the ledger must be a file: it is the durable record)"
        )));
    }
    if let Some(dir) = std::path::Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Database(sqlx::Error::Io(e)))?;
    }
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// `$1, $2, …` placeholders for `n` values starting at `from` (both backends accept `$N`).
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}
