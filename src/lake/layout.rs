//! Names and paths in the lake. Every object ferry writes is named here.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::project::check_identifier;

/// Folder of landed vendor data.
pub const RAW: &str = "raw";
/// Folder of ferry's own state and logs.
pub const META: &str = "_ferry";

/// Column every landed row carries: the run that landed it.
pub const RUN_ID_COLUMN: &str = "_ferry_run_id";
/// Column every landed row carries: when it was landed (UTC).
pub const LOADED_AT_COLUMN: &str = "_ferry_loaded_at";

/// One run of ferry: `YYYYMMDDTHHMMSSZ-<8 hex>`, sortable by start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    pub fn new() -> RunId {
        let now = Utc::now();
        let rand = uuid::Uuid::new_v4().simple().to_string();
        RunId(format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &rand[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `source.stream` pair: the table `<source>.<stream>` and the folder
/// `raw/<source>/<stream>/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamRef {
    pub source: String,
    pub stream: String,
}

impl StreamRef {
    pub fn new(source: &str, stream: &str) -> Result<StreamRef> {
        check_identifier(source).map_err(|why| Error::InvalidName {
            what: "source",
            name: source.into(),
            why,
        })?;
        if source == crate::project::RESERVED_SCHEMA {
            return Err(Error::InvalidName {
                what: "source",
                name: source.into(),
                why: "is reserved for ferry's own tables",
            });
        }
        check_identifier(stream).map_err(|why| Error::InvalidName {
            what: "stream",
            name: stream.into(),
            why,
        })?;
        Ok(StreamRef {
            source: source.into(),
            stream: stream.into(),
        })
    }

    /// Parse `source.stream`.
    pub fn parse(s: &str) -> Result<StreamRef> {
        let (source, stream) = s.split_once('.').ok_or_else(|| {
            Error::Input(format!(
                "{s:?} is not a stream: write <source>.<stream>, for example crm.contacts"
            ))
        })?;
        StreamRef::new(source, stream)
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.source, self.stream)
    }
}

fn file_name(run_id: &RunId, seq: u64) -> String {
    format!("{run_id}-{seq:05}.parquet")
}

fn day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// `raw/<source>/<stream>/`
pub fn raw_prefix(stream: &StreamRef) -> Path {
    Path::from_iter([RAW, &stream.source, &stream.stream])
}

/// `raw/<source>/<stream>/dt=YYYY-MM-DD/<run_id>-<seq>.parquet`
pub fn raw_file(stream: &StreamRef, at: DateTime<Utc>, run_id: &RunId, seq: u64) -> Path {
    Path::from_iter([
        RAW,
        &stream.source,
        &stream.stream,
        &format!("dt={}", day(at)),
        &file_name(run_id, seq),
    ])
}

/// `_ferry/ingestions/`
pub fn ingestions_prefix() -> Path {
    Path::from_iter([META, "ingestions"])
}

/// `_ferry/ingestions/dt=YYYY-MM-DD/<run_id>-<seq>.parquet`
pub fn ingestions_file(at: DateTime<Utc>, run_id: &RunId, seq: u64) -> Path {
    Path::from_iter([
        META,
        "ingestions",
        &format!("dt={}", day(at)),
        &file_name(run_id, seq),
    ])
}

/// `_ferry/<table>/`: one of ferry's own append-only tables (`runs`, `model_runs`).
pub fn meta_prefix(table: &str) -> Path {
    Path::from_iter([META, table])
}

/// `_ferry/<table>/dt=YYYY-MM-DD/<run_id>-<seq>.parquet`
pub fn meta_file(table: &str, at: DateTime<Utc>, run_id: &RunId, seq: u64) -> Path {
    Path::from_iter([
        META,
        table,
        &format!("dt={}", day(at)),
        &file_name(run_id, seq),
    ])
}

/// `_ferry/quarantine/`
pub fn quarantine_prefix() -> Path {
    Path::from_iter([META, "quarantine"])
}

/// `_ferry/quarantine/<source>/<stream>/dt=YYYY-MM-DD/<run_id>-<seq>.parquet`
pub fn quarantine_file(stream: &StreamRef, at: DateTime<Utc>, run_id: &RunId, seq: u64) -> Path {
    Path::from_iter([
        META,
        "quarantine",
        &stream.source,
        &stream.stream,
        &format!("dt={}", day(at)),
        &file_name(run_id, seq),
    ])
}

/// `_ferry/schemas/<source>/<stream>/`
pub fn schema_prefix(stream: &StreamRef) -> Path {
    Path::from_iter([META, "schemas", &stream.source, &stream.stream])
}

/// `_ferry/schemas/<source>/<stream>/v<NNNNNNNN>.json`
pub fn schema_file(stream: &StreamRef, version: u64) -> Path {
    Path::from_iter([
        META,
        "schemas",
        &stream.source,
        &stream.stream,
        &format!("v{version:08}.json"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn paths_follow_the_documented_layout() {
        let s = StreamRef::parse("crm.contacts").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let run = RunId("20261124T100000Z-abcdef01".into());
        assert_eq!(
            raw_file(&s, at, &run, 3).as_ref(),
            "raw/crm/contacts/dt=2026-11-24/20261124T100000Z-abcdef01-00003.parquet"
        );
        assert_eq!(
            schema_file(&s, 2).as_ref(),
            "_ferry/schemas/crm/contacts/v00000002.json"
        );
        assert_eq!(
            quarantine_file(&s, at, &run, 1).as_ref(),
            "_ferry/quarantine/crm/contacts/dt=2026-11-24/20261124T100000Z-abcdef01-00001.parquet"
        );
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(StreamRef::parse("crm").is_err());
        assert!(StreamRef::parse("CRM.contacts").is_err());
        assert!(StreamRef::parse("crm.con-tacts").is_err());
        assert!(StreamRef::parse("ferry.x").is_err());
        assert!(StreamRef::parse("crm.contacts.x").is_err());
    }

    #[test]
    fn run_ids_sort_by_time_and_differ() {
        let a = RunId::new();
        let b = RunId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), "20261124T100000Z-abcdef01".len());
    }
}
