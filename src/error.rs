//! The crate-wide error type.
//!
//! Every error says whose move it is ([`Party`]): the user's (bad config, bad
//! SQL, bad input), a vendor's (5xx, a spent daily budget, refused
//! credentials), the storage's (the lake's object store failed), or ferry's
//! own (a bug: please report it), and whether running again without a change
//! can help ([`Error::retryable`]). Messages name the file, line, key or
//! record involved and what to do about it.

use std::path::PathBuf;

/// `Result` with ferry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The user: fix the config, the SQL or the input, then run again.
    User,
    /// A vendor API (down, rate limited, refusing the credentials).
    Vendor,
    /// The lake's storage (object store, local disk).
    Storage,
    /// ferry itself: a bug.
    Ferry,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ferry.toml` (or `secrets.toml`) is malformed or inconsistent.
    #[error("{file}:{line}:{column}: {key}: {message}", file = .file.display())]
    Config {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path, for example `lake.url`.
        key: String,
        message: String,
    },

    /// The project folder itself is unusable (missing `ferry.toml`, not writable...).
    #[error("{0}")]
    Project(String),

    /// A name given by the user (source, stream) is not a valid identifier.
    #[error("invalid {what} name {name:?}: {why}")]
    InvalidName {
        what: &'static str,
        name: String,
        why: &'static str,
    },

    /// A vendor API failed or refused. `retryable`: running again later,
    /// unchanged, may succeed (5xx, timeouts, the daily budget); otherwise a
    /// person must act first (refused credentials: fix the token or scopes).
    #[error("{vendor}: {message}")]
    Vendor {
        vendor: String,
        message: String,
        retryable: bool,
    },

    /// Input records that cannot be landed as a whole (not per-row problems:
    /// those are quarantined).
    #[error("{0}")]
    Input(String),

    /// The command did its work, but rows or files were refused on the way
    /// (quarantined, refused by the CRM): they are where the message says.
    /// Exit code 3; `--allow-rejects` makes it a success.
    #[error("{0}")]
    Rejected(String),

    /// A batch broke a stream's frozen schema. The batch is in quarantine.
    #[error(
        "stream {stream} has schema = \"freeze\" and a batch of {rows} rows does not match it: {changes}. \
         The batch was quarantined to {quarantine} (query it with: select * from ferry.quarantine). \
         Set schema = \"evolve\" for this stream in ferry.toml to accept the change."
    )]
    SchemaFrozen {
        stream: String,
        rows: usize,
        changes: String,
        quarantine: String,
    },

    /// The lake's object store failed.
    #[error("lake storage: {0}")]
    Storage(#[from] object_store::Error),

    /// A lake URL could not be turned into an object store.
    #[error("lake URL {url:?}: {message}")]
    LakeUrl { url: String, message: String },

    /// DataFusion rejected a query or a plan.
    #[error("{}", query_message(.0))]
    Query(#[from] datafusion::error::DataFusionError),

    /// A Delta table (persisted model or seed) could not be read or written.
    #[error("table: {0}")]
    Table(String),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Another error with what ferry was doing around it; keeps who must act.
    #[error("{message}")]
    Context {
        message: String,
        party: Party,
        retryable: bool,
    },

    /// Lake state written by ferry could not be read back. This is a bug or
    /// outside tampering with the lake's `_ferry/` folder.
    #[error(
        "internal error: {0}. This is a bug in ferry; please report it with the command you ran"
    )]
    Internal(String),
}

/// A query error's text; past the memory limit, what to change.
fn query_message(e: &datafusion::error::DataFusionError) -> String {
    let mut text = e.to_string();
    if !matches!(
        e.find_root(),
        datafusion::error::DataFusionError::ResourcesExhausted(_)
    ) {
        return text;
    }
    // DataFusion's own advice names its settings, not ferry's.
    if let Some(at) = text.find(" Consider increasing") {
        let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
        text.replace_range(at..end, "");
    }
    let s = crate::engine::memory::settings();
    let hint = if text.contains("disk space") {
        "the spill files reached their limit: raise [engine] max_spill, or free space in the spill folder"
    } else if !s.spill || text.contains("DiskManager is disabled") {
        "spilling is off ([engine] spill = false): turn it on, or raise [engine] memory_limit"
    } else {
        "this step could not spill enough (a hash join's build side cannot spill at all): raise [engine] memory_limit, or run fewer models at once (--threads)"
    };
    format!(
        "{text}. The query needed more memory than the engine allows ({}); {hint} (ferry.toml [engine], README \"Memory and spilling\")",
        s.describe()
    )
}

impl Error {
    /// Who has to act on this error.
    pub fn party(&self) -> Party {
        match self {
            Error::Config { .. }
            | Error::Project(_)
            | Error::InvalidName { .. }
            | Error::Input(_)
            | Error::Rejected(_)
            | Error::SchemaFrozen { .. }
            | Error::LakeUrl { .. } => Party::User,
            Error::Vendor { .. } => Party::Vendor,
            Error::Storage(_) | Error::Io { .. } => Party::Storage,
            Error::Query(e) => match e.find_root() {
                datafusion::error::DataFusionError::Internal(_) => Party::Ferry,
                datafusion::error::DataFusionError::ObjectStore(_)
                | datafusion::error::DataFusionError::IoError(_) => Party::Storage,
                _ => Party::User,
            },
            Error::Arrow(_) | Error::Parquet(_) | Error::Table(_) => Party::User,
            Error::Context { party, .. } => *party,
            Error::Internal(_) => Party::Ferry,
        }
    }

    /// Whether running the same thing again can succeed without a change.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Vendor { retryable, .. } | Error::Context { retryable, .. } => *retryable,
            other => other.party() == Party::Storage,
        }
    }

    /// Who must act, in words for the CLI, the sync log and alerts.
    pub fn who_acts(&self) -> &'static str {
        match (self.party(), self.retryable()) {
            (Party::User, _) => "fix the project or input, then run again",
            (Party::Vendor, true) => "the vendor failed; running again later may succeed",
            (Party::Vendor, false) => {
                "the vendor refused; fix the credentials or account, then run again"
            }
            (Party::Storage, _) => "the lake's storage failed; running again may succeed",
            (Party::Ferry, _) => "this looks like a bug in ferry; please report it",
        }
    }

    /// The same error, its message rewritten by `f` (to say which stream,
    /// file or record it is about); who must act is kept.
    pub fn context(self, f: impl FnOnce(String) -> String) -> Error {
        match self {
            Error::Input(m) => Error::Input(f(m)),
            Error::Vendor {
                vendor,
                message,
                retryable,
            } => Error::Vendor {
                vendor,
                message: f(message),
                retryable,
            },
            other => Error::Context {
                party: other.party(),
                retryable: other.retryable(),
                message: f(other.to_string()),
            },
        }
    }

    /// A file the user named or wrote (an input to land, a model, a project
    /// file) that cannot be read: the user's to fix, not a storage failure
    /// that running again may cure.
    pub(crate) fn user_file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        let hint = match source.kind() {
            std::io::ErrorKind::NotFound => "check the path",
            std::io::ErrorKind::PermissionDenied => "check the file's permissions",
            _ => "check that it is a readable file",
        };
        Error::Input(format!("{}: {source}; {hint}", path.display()))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
