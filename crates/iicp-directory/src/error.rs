//! Errors of the directory crate. Protocol error codes sent to peers are data
//! ([`iicp_proto::error::ErrorCode`]); these types are for the embedding program.

/// A storage back end failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite database reported an error.
    #[error("sqlite storage error")]
    Sqlite(#[source] rusqlite::Error),
    /// The database schema is newer than this build understands.
    #[error("database schema version {found} is newer than the supported version {supported}")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {what}")]
    Corrupt {
        /// What could not be decoded (never contains secrets).
        what: &'static str,
    },
    /// A blocking storage task was cancelled or panicked.
    #[error("storage task failed")]
    Task,
    /// Filesystem error (opening or creating the database).
    #[error("storage I/O error")]
    Io(#[source] std::io::Error),
    /// PostgreSQL reported an error (a statement, a transaction or a lost connection).
    #[error("postgresql storage error")]
    Postgres(#[source] tokio_postgres::Error),
    /// No connection to PostgreSQL could be opened. `target` is the database URL with
    /// its password replaced by `***`.
    #[error("could not connect to PostgreSQL at {target}")]
    Connect {
        /// The database URL, password redacted.
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database URL does not parse. `target` has its password replaced by `***`.
    #[error("invalid PostgreSQL URL {target}")]
    BadUrl {
        /// The database URL, password redacted.
        target: String,
    },
    /// The group-commit transaction that held this write failed and was rolled back:
    /// the write is not stored. Every write of that transaction gets this error.
    #[error("the group commit holding this write failed; nothing of it was stored")]
    GroupCommit(#[source] std::sync::Arc<StoreError>),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        StoreError::Postgres(err)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Sqlite(err)
    }
}

/// Building or serving a directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The store could not be opened, read or written.
    #[error("directory storage failed")]
    Store(#[from] StoreError),
    /// The configured public URL is not an `http(s)://host[:port]` URL.
    #[error("public URL must be an absolute http or https URL")]
    PublicUrl,
    /// The HTTP client used for liveness probes could not be created.
    #[error("could not create the probe HTTP client")]
    HttpClient(#[source] iicp_transport::http::client::HttpClientError),
    /// A socket operation of `serve` failed.
    #[error("directory listener failed")]
    Io(#[from] std::io::Error),
}
