//! Errors of the store, the spool and the writer.

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL {0:?}: expected postgres://... or sqlite://PATH")]
    UnsupportedUrl(String),
    #[error("cannot create the folder for the SQLite file {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration { version: i64, name: &'static str, source: sqlx::Error },
    #[error("the database has migration {0}, newer than this build knows; refusing to run against it")]
    SchemaTooNew(i64),
    #[error("{field} = {value} does not fit the database column")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("the database holds an invalid value in {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
    #[error("invalid pagination cursor")]
    BadCursor,
    #[error("cannot encode attempts as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreError {
    /// A low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl(_) | StoreError::CreateDir { .. } => "config",
            StoreError::Database(_) => "database",
            StoreError::Migration { .. } | StoreError::SchemaTooNew(_) => "migration",
            StoreError::OutOfRange { .. } | StoreError::Json(_) => "record",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::BadCursor => "cursor",
        }
    }
}

/// What can go wrong with the local spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the spool is full ({bytes} of {max} bytes)")]
    Full { bytes: u64, max: u64 },
    #[error("cannot encode a record for the spool: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SpoolError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> SpoolError {
        SpoolError::Io { path: path.display().to_string(), source }
    }
}

/// What can go wrong starting or closing the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Closing could neither write nor spool everything; the records are lost.
    #[error("{lost} usage records could be neither written nor spooled at shutdown")]
    Lost { lost: usize },
    #[error("the writer task ended abnormally: {0}")]
    Task(String),
}
