//! The operating tables ferry keeps beside the route's own logs: each is
//! append-only, one write-once Parquet file per record set, read back
//! through the catalog like any other table.
//!
//! | table | folder | one file per |
//! |---|---|---|
//! | `ferry.run_stages` | `_ferry/run_stages/` | route run (its stages with rows, calls, 429s) |
//! | `ferry.schedule_runs` | `_ferry/schedule_runs/<schedule>/` | scheduled run |
//! | `ferry.alerts` | `_ferry/alerts/log/` | alert sent (trigger or resolve, per channel) |
//!
//! Rows are plain serde structs decoded into the table's Arrow schema, so a
//! field and its column cannot drift apart silently: a mismatch fails the
//! write, and the tests write every table.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path;
use serde::Serialize;

use super::Lake;
use super::layout::META;
use super::log::{encode, put_once, ts_type};
use crate::error::{Error, Result};

pub const RUN_STAGES: &str = "run_stages";
pub const SCHEDULE_RUNS: &str = "schedule_runs";
pub const ALERTS: &str = "alerts/log";

pub fn prefix(table: &str) -> Path {
    Path::from_iter(std::iter::once(META).chain(table.split('/')))
}

/// One stage of a route run.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub run_id: String,
    pub command: String,
    /// The schedule that ran it, if any.
    pub schedule: Option<String>,
    pub stage: String,
    /// `ok`, `failed`, `skipped` or `stopped`.
    pub status: String,
    pub seconds: f64,
    pub detail: String,
    /// Rows extracted, built or sent, by stage.
    pub rows: i64,
    pub rejected: i64,
    pub api_calls: i64,
    pub rate_limited: i64,
    pub started_at: String,
}

pub fn run_stages_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("stage", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("api_calls", DataType::Int64, false),
        Field::new("rate_limited", DataType::Int64, false),
        Field::new("started_at", ts_type(), false),
    ]))
}

/// One run of a schedule.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRunRow {
    pub schedule: String,
    pub run_id: String,
    /// The fire time this run covered (missed ones included).
    pub due_at: String,
    /// `success`, `failed` or `stopped`.
    pub status: String,
    pub error: Option<String>,
    /// Rows that moved: extracted plus sent to a vendor.
    pub rows_moved: i64,
    pub rejected: i64,
    pub attempted: i64,
    pub api_calls: i64,
    pub rate_limited: i64,
    /// The vendor refused the credentials.
    pub auth_refused: bool,
    pub host: String,
    pub lease_generation: i64,
    pub seconds: f64,
    pub started_at: String,
    pub finished_at: String,
}

pub fn schedule_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("schedule", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("due_at", ts_type(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("rows_moved", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("attempted", DataType::Int64, false),
        Field::new("api_calls", DataType::Int64, false),
        Field::new("rate_limited", DataType::Int64, false),
        Field::new("auth_refused", DataType::Boolean, false),
        Field::new("host", DataType::Utf8, false),
        Field::new("lease_generation", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("started_at", ts_type(), false),
        Field::new("finished_at", ts_type(), false),
    ]))
}

/// One alert delivery.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub at: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    pub rule: String,
    pub pipeline: String,
    /// `trigger` or `resolve`.
    pub action: String,
    /// The incident's key: one incident, one key, until it resolves.
    pub dedup_key: String,
    pub summary: String,
    pub details: String,
    pub owner: Option<String>,
    pub next_action: String,
    pub channel: String,
    pub delivered: bool,
    pub error: Option<String>,
}

pub fn alerts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("at", ts_type(), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("dedup_key", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("details", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, true),
        Field::new("next_action", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("delivered", DataType::Boolean, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Write `rows` as one new Parquet file `name` under the table's folder.
pub async fn append<T: Serialize>(
    lake: &Lake,
    table: &str,
    schema: SchemaRef,
    name: &str,
    rows: &[T],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(|e| Error::Internal(format!("{table}: {e}")))?;
    decoder
        .serialize(rows)
        .map_err(|e| Error::Internal(format!("{table}: a row does not fit the table: {e}")))?;
    let batch = decoder
        .flush()
        .map_err(|e| Error::Internal(format!("{table}: {e}")))?
        .ok_or_else(|| Error::Internal(format!("{table}: no rows decoded")))?;
    let path = Path::from_iter(prefix(table).parts().chain(std::iter::once(
        format!("{name}.parquet").as_str().into(),
    )));
    put_once(lake.store().as_ref(), &path, encode(schema, &[batch])?).await
}

/// An RFC 3339 UTC timestamp, as the tables store them.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
