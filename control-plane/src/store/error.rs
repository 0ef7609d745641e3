//! The store's one error type.

/// Why a store operation failed.
///
/// `Display` never repeats the source; log the whole chain (`{:#}` through `anyhow`, or
/// walk `source()`) where the error is handled.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No row with this key.
    #[error("{entity} {key:?} not found")]
    NotFound {
        /// What was looked for, e.g. `agent`.
        entity: &'static str,
        /// The id or name that was looked for.
        key: String,
    },
    /// A row with this unique key already exists.
    #[error("{entity} {key:?} already exists")]
    Conflict {
        /// What could not be created, e.g. `user`.
        entity: &'static str,
        /// The key that is already taken.
        key: String,
    },
    /// The database refused or could not run a statement.
    #[error("database error while {op}")]
    Database {
        /// What the store was doing, e.g. `enrolling an agent`.
        op: &'static str,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations could not be applied.
    #[error("could not apply database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded; the database holds something this version of
    /// Stella did not write.
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// Which value, e.g. `agent labels`.
        what: &'static str,
        /// Which row and what is wrong with it.
        detail: String,
    },
    /// The database URL names neither SQLite nor PostgreSQL.
    #[error("unsupported database url scheme {scheme:?}, expected sqlite: or postgres:")]
    UnsupportedUrl {
        /// The scheme found (the rest of the URL may hold a password and is not kept).
        scheme: String,
    },
}

impl StoreError {
    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether this is [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Wraps a driver error with what the store was doing.
pub(super) fn database(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

/// Like [`database`], but a unique violation becomes [`StoreError::Conflict`].
pub(super) fn unique<'a>(
    op: &'static str,
    entity: &'static str,
    key: &'a str,
) -> impl FnOnce(sqlx::Error) -> StoreError + 'a {
    move |source| match &source {
        sqlx::Error::Database(e) if e.is_unique_violation() => StoreError::Conflict {
            entity,
            key: key.to_owned(),
        },
        _ => StoreError::Database { op, source },
    }
}
