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
//! The schemas of the route's own logs live here too (`ferry.runs`,
//! `ferry.model_runs`, `ferry.sync_log`, `ferry.sync_runs`,
//! `ferry.extract_runs`; their writers are in the stages), so the engine's
//! catalog registers every ferry table without importing a stage.
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
    let path = Path::from_iter(
        prefix(table)
            .parts()
            .chain(std::iter::once(format!("{name}.parquet").as_str().into())),
    );
    put_once(lake.store().as_ref(), &path, encode(schema, &[batch])?).await
}

/// An RFC 3339 UTC timestamp, as the tables store them.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Schema of `ferry.runs`.
pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("models", DataType::Int64, false),
        Field::new("succeeded", DataType::Int64, false),
        Field::new("failed", DataType::Int64, false),
        Field::new("skipped", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("started_at", ts_type(), false),
        Field::new("finished_at", ts_type(), false),
    ]))
}

/// Schema of `ferry.model_runs`.
pub fn model_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("materialized", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("seconds", DataType::Float64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("started_at", ts_type(), false),
        Field::new("finished_at", ts_type(), false),
    ]))
}

/// Schema of `ferry.sync_log`.
pub fn sync_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("sync", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, true),
        // create | update | upsert | archive | skip | forget | reject | snapshot
        Field::new("operation", DataType::Utf8, false),
        // ok | rejected | failed | unknown (the write's fate is not known:
        // settled by a read before the record is written again) | not_sent
        // (logged to be sent, then the run stopped first)
        Field::new("status", DataType::Utf8, false),
        Field::new("crm_id", DataType::Utf8, true),
        // Whether this sync created the record (mirror archives only those).
        Field::new("created", DataType::Boolean, false),
        // Hash of the mapped model values this outcome is about.
        Field::new("hash", DataType::Utf8, true),
        // The properties sent, as JSON (the dead letter's payload).
        Field::new("payload", DataType::Utf8, true),
        Field::new("error_category", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        // The vendor's reply for a rejected record, as JSON.
        Field::new("response", DataType::Utf8, true),
        Field::new("attempts", DataType::Int64, false),
        Field::new("at", ts_type(), false),
    ]))
}

/// Schema of `ferry.sync_runs`.
pub fn sync_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("sync", DataType::Utf8, false),
        Field::new("mode", DataType::Utf8, false),
        // success | partial (some rows failed or were rejected) | stopped | failed
        Field::new("status", DataType::Utf8, false),
        Field::new("created", DataType::Int64, false),
        Field::new("updated", DataType::Int64, false),
        Field::new("archived", DataType::Int64, false),
        Field::new("unchanged", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("failed", DataType::Int64, false),
        Field::new("api_calls", DataType::Int64, false),
        Field::new("rate_limited", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("seconds", DataType::Float64, false),
        Field::new("started_at", ts_type(), false),
        Field::new("finished_at", ts_type(), false),
    ]))
}

/// Schema of `ferry.extract_runs`: one row per stream per `ferry extract`.
pub fn extract_runs_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        // ok | failed
        Field::new("status", DataType::Utf8, false),
        Field::new("pages", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("quarantined", DataType::Int64, false),
        Field::new("rejected_files", DataType::Int64, false),
        // The stream's cursor before and after (JSON); after = before on failure.
        Field::new("cursor_before", DataType::Utf8, true),
        Field::new("cursor_after", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        // user | vendor | storage | ferry: who must act on the error.
        Field::new("error_party", DataType::Utf8, true),
        Field::new("retryable", DataType::Boolean, true),
        Field::new("seconds", DataType::Float64, false),
        Field::new("started_at", ts_type(), false),
    ]))
}
