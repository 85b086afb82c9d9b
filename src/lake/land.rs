//! Append-only landing: record batches or JSON records in, Parquet out.
//!
//! For each batch of a `source.stream`, [`Lander`] plans it against the
//! stream's schema ([`super::schema`]), stores a new schema version first if
//! the batch adds columns (harmless if the data never follows: readers see the
//! column as null), then writes the rows, with `_ferry_run_id` and
//! `_ferry_loaded_at`, into write-once Parquet files of up to
//! [`Lander::target_file_bytes`]. When every file is durable, one ingestion
//! log file records them (`ferry.ingestions`). A crash before that leaves
//! whole files only; at worst a file is readable but unlogged, and the next
//! extract re-lands that range (duplicates removable by primary key).
//!
//! With `schema = "freeze"`, a batch that would change the schema is written
//! to quarantine whole (as JSON rows with the reason) and the call fails with
//! [`Error::SchemaFrozen`] after landing every conforming batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use serde_json::{Map, Value};

use super::Lake;
use super::json;
use super::layout::{self, RunId, StreamRef};
use super::log::{self, Ingestion, QuarantinedRow};
use super::schema;
use crate::error::{Error, Result};
use crate::project::{SchemaMode, StreamOptions};

/// JSON records are converted (and, under `freeze`, judged) in blocks of this many.
pub const JSON_BATCH_ROWS: usize = 10_000;

/// A record refused before landing (bad JSON, not an object), with its origin.
pub type Rejected = QuarantinedRow;

/// What one landing call did.
#[derive(Debug, Clone, Default)]
pub struct LandReport {
    /// Files written, landed and quarantined, as logged in `ferry.ingestions`.
    pub files: Vec<Ingestion>,
    /// Rows landed.
    pub rows: u64,
    /// Rows quarantined (bad records, or batches refused by a frozen schema).
    pub rejected: u64,
    /// Parquet bytes written for landed rows.
    pub bytes: u64,
    /// Schema changes and other things the user should know.
    pub warnings: Vec<String>,
    /// The stream schema version after the call.
    pub schema_version: u64,
}

/// Lands batches for one run. Cheap to create; share one per run (or clones
/// of it) so file sequence numbers stay unique.
#[derive(Clone)]
pub struct Lander {
    lake: Lake,
    run_id: RunId,
    seq: std::sync::Arc<AtomicU64>,
    /// The input file being landed, recorded in `ferry.ingestions.source_file`.
    origin: Option<String>,
    /// Roll to a new file once the current one holds about this many bytes.
    pub target_file_bytes: usize,
}

/// One Parquet file being filled.
struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
    rows: u64,
    warnings: Vec<String>,
}

impl Lander {
    pub fn new(lake: Lake, run_id: RunId) -> Lander {
        Lander {
            lake,
            run_id,
            seq: std::sync::Arc::new(AtomicU64::new(1)),
            origin: None,
            target_file_bytes: 128 * 1024 * 1024,
        }
    }

    /// The same run (sharing file sequence numbers), recording `origin` (an
    /// input file's path) as the source of what it lands.
    pub fn for_file(&self, origin: &str) -> Lander {
        Lander {
            lake: self.lake.clone(),
            run_id: self.run_id.clone(),
            seq: self.seq.clone(),
            origin: Some(origin.to_string()),
            target_file_bytes: self.target_file_bytes,
        }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Land JSON records (objects), streaming: records are converted in
    /// blocks of [`JSON_BATCH_ROWS`]. Non-objects are quarantined with the
    /// reason; so are `Err` items (records the caller could not parse).
    pub async fn land_json<I>(
        &self,
        stream: &StreamRef,
        options: StreamOptions,
        records: I,
    ) -> Result<LandReport>
    where
        I: IntoIterator<Item = Result<Value, Rejected>>,
        I::IntoIter: Send,
    {
        let pieces = JsonBlocks {
            records: records.into_iter().enumerate(),
            done: false,
            pending: Default::default(),
        };
        self.land_pieces(stream, options, pieces).await
    }

    /// Land pieces already converted ([`Piece::from_records`]), in order.
    pub async fn land_prepared(
        &self,
        stream: &StreamRef,
        options: StreamOptions,
        pieces: Vec<Piece>,
    ) -> Result<LandReport> {
        self.land_pieces(stream, options, pieces.into_iter().map(Ok))
            .await
    }

    /// Land record batches. Batches may differ in schema; see the module docs.
    pub async fn land_batches(
        &self,
        stream: &StreamRef,
        options: StreamOptions,
        batches: impl IntoIterator<Item = RecordBatch, IntoIter: Send>,
    ) -> Result<LandReport> {
        let pieces = batches.into_iter().map(|b| Ok(Piece::Batch(b)));
        self.land_pieces(stream, options, pieces).await
    }

    /// Land pieces (batches and refused records) as an iterator makes them.
    pub async fn land_pieces(
        &self,
        stream: &StreamRef,
        options: StreamOptions,
        pieces: impl Iterator<Item = Result<Piece>> + Send,
    ) -> Result<LandReport> {
        let mut report = LandReport::default();
        let mut frozen_errors: Vec<(usize, String, String)> = Vec::new();
        let outcome = self
            .land_loop(stream, options, pieces, &mut report, &mut frozen_errors)
            .await;
        // Every file that became durable is logged, even when the call failed
        // part-way (a storage error after some files were written).
        let logged = self.log(&report.files).await;
        outcome?;
        logged?;
        if let Some((rows, changes, path)) = frozen_errors.into_iter().next() {
            return Err(Error::SchemaFrozen {
                stream: stream.to_string(),
                rows,
                changes,
                quarantine: path,
            });
        }
        Ok(report)
    }

    async fn land_loop(
        &self,
        stream: &StreamRef,
        options: StreamOptions,
        pieces: impl Iterator<Item = Result<Piece>> + Send,
        report: &mut LandReport,
        frozen_errors: &mut Vec<(usize, String, String)>,
    ) -> Result<()> {
        let started_at = Utc::now();
        let store = self.lake.store().clone();
        let mut current = schema::load(store.as_ref(), stream).await?;
        let mut open: Option<OpenFile> = None;
        let mut rejected: Vec<Rejected> = Vec::new();

        for piece in pieces {
            let batch = match piece? {
                Piece::Batch(b) => b,
                Piece::Rejected(r) => {
                    rejected.push(r);
                    continue;
                }
            };
            if batch.num_rows() == 0 {
                continue;
            }
            // Plan; if the schema must grow, store the new version first. A
            // concurrent writer may have stored that version: reload, re-plan.
            let plan = loop {
                let plan = schema::plan(current.as_ref(), &batch.schema())?;
                if options.schema == SchemaMode::Freeze
                    && current.is_some()
                    && plan.changes_schema()
                {
                    break Err(plan);
                }
                if plan.new_columns.is_empty() {
                    break Ok(plan);
                }
                let next = plan.evolve(current.as_ref());
                if schema::save(store.as_ref(), stream, &next).await? {
                    for change in &plan.type_changes {
                        tracing::warn!(stream = %stream, "{change}");
                    }
                    if let Some(f) = open.take() {
                        self.finish(stream, f, started_at, next.version - 1, report)
                            .await?;
                    }
                    current = Some(next);
                    break Ok(plan);
                }
                current = schema::load(store.as_ref(), stream).await?;
            };
            let plan = match plan {
                Ok(p) => p,
                Err(p) => {
                    let reason = format!(
                        "schema of {stream} is frozen; this batch would change it: {}",
                        p.describe_changes()
                    );
                    let rows = log::batch_to_json_rows(&batch)?
                        .into_iter()
                        .map(|record| QuarantinedRow {
                            origin: None,
                            reason: reason.clone(),
                            record,
                        })
                        .collect::<Vec<_>>();
                    let entry = self.quarantine(stream, &rows, Some(&reason)).await?;
                    tracing::error!(stream = %stream, rows = rows.len(), path = %entry.path, "{reason}");
                    frozen_errors.push((rows.len(), p.describe_changes(), entry.path.clone()));
                    report.rejected += entry.rejected_rows;
                    report.files.push(entry);
                    continue;
                }
            };
            let stream_schema = current
                .as_ref()
                .ok_or_else(|| Error::Internal("stream schema missing after planning".into()))?;
            let data_fields = stream_schema.fields()?;
            let table_schema = stream_schema.table_schema()?;
            let mut columns = schema::align(&batch, &plan, &data_fields)?;
            columns.extend(self.ferry_columns(batch.num_rows(), started_at));
            let aligned = RecordBatch::try_new(table_schema.clone(), columns)?;

            let file = match open.as_mut() {
                Some(f) if f.schema == table_schema => f,
                _ => {
                    if let Some(f) = open.take() {
                        self.finish(stream, f, started_at, stream_schema.version, report)
                            .await?;
                    }
                    open.insert(OpenFile {
                        writer: ArrowWriter::try_new(
                            Vec::new(),
                            table_schema.clone(),
                            Some(log::writer_properties()),
                        )?,
                        schema: table_schema.clone(),
                        rows: 0,
                        warnings: Vec::new(),
                    })
                }
            };
            file.writer.write(&aligned)?;
            file.rows += aligned.num_rows() as u64;
            file.warnings.extend(plan.type_changes.iter().cloned());
            file.warnings.extend(plan.dropped.iter().cloned());
            if file.writer.bytes_written() + file.writer.in_progress_size()
                >= self.target_file_bytes
                && let Some(f) = open.take()
            {
                self.finish(stream, f, started_at, stream_schema.version, report)
                    .await?;
            }
        }
        let version = current.as_ref().map(|s| s.version).unwrap_or(0);
        if let Some(f) = open.take() {
            self.finish(stream, f, started_at, version, report).await?;
        }
        report.schema_version = version;
        if !rejected.is_empty() {
            let entry = self.quarantine(stream, &rejected, None).await?;
            report.rejected += entry.rejected_rows;
            report.files.push(entry);
        }
        Ok(())
    }

    fn ferry_columns(&self, rows: usize, at: DateTime<Utc>) -> [ArrayRef; 2] {
        [
            Arc::new(StringArray::from(vec![self.run_id.as_str(); rows])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![at.timestamp_micros(); rows])
                    .with_timezone("UTC"),
            ),
        ]
    }

    /// Close a file, write it once, and note it in the report.
    async fn finish(
        &self,
        stream: &StreamRef,
        file: OpenFile,
        started_at: DateTime<Utc>,
        version: u64,
        report: &mut LandReport,
    ) -> Result<()> {
        if file.rows == 0 {
            return Ok(());
        }
        let fingerprint = schema::fingerprint(&file.schema);
        let bytes = file.writer.into_inner()?;
        let path = layout::raw_file(stream, started_at, &self.run_id, self.next_seq());
        let size = bytes.len() as u64;
        log::put_once(self.lake.store().as_ref(), &path, bytes).await?;
        tracing::info!(stream = %stream, rows = file.rows, bytes = size, path = %path, "landed");
        report.rows += file.rows;
        report.bytes += size;
        report.warnings.extend(file.warnings.iter().cloned());
        report.files.push(Ingestion {
            run_id: self.run_id.clone(),
            stream: stream.clone(),
            path: path.to_string(),
            status: "landed",
            source_file: self.origin.clone(),
            rows: file.rows,
            rejected_rows: 0,
            bytes: size,
            schema_fingerprint: fingerprint,
            schema_version: version,
            warnings: file.warnings,
            error: None,
            started_at,
            landed_at: Utc::now(),
        });
        Ok(())
    }

    /// Write rows to quarantine and return their (not yet logged) entry.
    async fn quarantine(
        &self,
        stream: &StreamRef,
        rows: &[QuarantinedRow],
        error: Option<&str>,
    ) -> Result<Ingestion> {
        let at = Utc::now();
        let batch = log::quarantine_batch(&self.run_id, stream, at, rows)?;
        let bytes = log::encode(batch.schema(), &[batch])?;
        let path = layout::quarantine_file(stream, at, &self.run_id, self.next_seq());
        let size = bytes.len() as u64;
        log::put_once(self.lake.store().as_ref(), &path, bytes).await?;
        tracing::warn!(stream = %stream, rows = rows.len(), path = %path, "rows quarantined");
        Ok(Ingestion {
            run_id: self.run_id.clone(),
            stream: stream.clone(),
            path: path.to_string(),
            status: "quarantined",
            source_file: self.origin.clone(),
            rows: 0,
            rejected_rows: rows.len() as u64,
            bytes: size,
            schema_fingerprint: schema::fingerprint(&log::quarantine_schema()),
            schema_version: 0,
            warnings: Vec::new(),
            error: Some(
                error
                    .map(str::to_string)
                    .unwrap_or_else(|| summarize_reasons(rows)),
            ),
            started_at: at,
            landed_at: Utc::now(),
        })
    }

    /// Append entries to the ingestion log (one write-once file).
    async fn log(&self, entries: &[Ingestion]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let batch = log::ingestions_batch(entries)?;
        let bytes = log::encode(batch.schema(), &[batch])?;
        let path = layout::ingestions_file(Utc::now(), &self.run_id, self.next_seq());
        log::put_once(self.lake.store().as_ref(), &path, bytes).await
    }

    /// Record in `ferry.ingestions` that this lander's input file was refused
    /// whole (for example, a header that does not match), with the reason.
    pub async fn reject_file(&self, stream: &StreamRef, error: &str) -> Result<()> {
        let now = Utc::now();
        self.log(&[Ingestion {
            run_id: self.run_id.clone(),
            stream: stream.clone(),
            path: self.origin.clone().unwrap_or_default(),
            status: "rejected",
            source_file: self.origin.clone(),
            rows: 0,
            rejected_rows: 0,
            bytes: 0,
            schema_fingerprint: String::new(),
            schema_version: 0,
            warnings: Vec::new(),
            error: Some(error.to_string()),
            started_at: now,
            landed_at: now,
        }])
        .await
    }

    /// Quarantine rows that never made it to a batch and log the entry.
    pub async fn reject(&self, stream: &StreamRef, rows: &[Rejected]) -> Result<LandReport> {
        let mut report = LandReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let entry = self.quarantine(stream, rows, None).await?;
        report.rejected = entry.rejected_rows;
        report.files.push(entry);
        self.log(&report.files).await?;
        Ok(report)
    }
}

impl LandReport {
    /// Rows landed plus rows rejected.
    pub fn total(&self) -> u64 {
        self.rows + self.rejected
    }
}

fn summarize_reasons(rows: &[QuarantinedRow]) -> String {
    match rows.first() {
        Some(first) if rows.len() == 1 => first.reason.clone(),
        Some(first) => format!("{} rows rejected; first: {}", rows.len(), first.reason),
        None => String::new(),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One item of a landing: a batch, or a record refused before it.
pub enum Piece {
    Batch(RecordBatch),
    Rejected(Rejected),
}

impl Piece {
    /// A page of JSON records as one batch of its objects (columnar at once,
    /// so a buffered page holds about its JSON's size, not a tree of
    /// values), plus a refusal for each record that is not an object.
    /// `seen` counts records before these, to number the refused ones.
    pub fn from_records(records: Vec<Value>, seen: &mut u64) -> Result<Vec<Piece>> {
        let mut objects = Vec::with_capacity(records.len());
        let mut out = Vec::new();
        for record in records {
            *seen += 1;
            match record {
                Value::Object(m) => objects.push(m),
                other => out.push(Piece::Rejected(QuarantinedRow {
                    origin: Some(format!("record {seen}")),
                    reason: format!("expected a JSON object, got {}", json_kind(&other)),
                    record: other.to_string(),
                })),
            }
        }
        if !objects.is_empty() {
            out.insert(0, Piece::Batch(json::to_batch(objects)?));
        }
        Ok(out)
    }

    /// A page decoded by [`json::decode_records`], as
    /// [`Piece::from_records`] makes it from the parsed records.
    pub fn from_decoded(decoded: json::Decoded, seen: &mut u64) -> Vec<Piece> {
        let before = *seen;
        *seen += decoded.records as u64;
        let mut out: Vec<Piece> = decoded.batch.into_iter().map(Piece::Batch).collect();
        let mut refused: Vec<(usize, QuarantinedRow)> = decoded
            .others
            .into_iter()
            .map(|(i, other)| {
                let reason = format!("expected a JSON object, got {}", json_kind(&other));
                (i, reason, other.to_string())
            })
            .chain(
                decoded
                    .invalid
                    .into_iter()
                    .map(|(i, why, text)| (i, format!("not valid JSON: {why}"), text)),
            )
            .map(|(i, reason, record)| {
                let origin = Some(format!("record {}", before + i as u64 + 1));
                (
                    i,
                    QuarantinedRow {
                        origin,
                        reason,
                        record,
                    },
                )
            })
            .collect();
        refused.sort_by_key(|(i, _)| *i);
        out.extend(refused.into_iter().map(|(_, r)| Piece::Rejected(r)));
        out
    }

    /// Rows this piece lands (a refused record counts as one).
    pub fn rows(&self) -> usize {
        match self {
            Piece::Batch(b) => b.num_rows(),
            Piece::Rejected(_) => 1,
        }
    }
}

/// Groups JSON records into record batches of [`JSON_BATCH_ROWS`].
struct JsonBlocks<I> {
    records: std::iter::Enumerate<I>,
    done: bool,
    pending: std::collections::VecDeque<Rejected>,
}

impl<I: Iterator<Item = Result<Value, Rejected>>> Iterator for JsonBlocks<I> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        if let Some(r) = self.pending.pop_front() {
            return Some(Ok(Piece::Rejected(r)));
        }
        if self.done {
            return None;
        }
        let mut block: Vec<Map<String, Value>> = Vec::with_capacity(JSON_BATCH_ROWS);
        while block.len() < JSON_BATCH_ROWS {
            match self.records.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some((_, Ok(Value::Object(m)))) => block.push(m),
                Some((i, Ok(other))) => self.pending.push_back(QuarantinedRow {
                    origin: Some(format!("record {}", i + 1)),
                    reason: format!("expected a JSON object, got {}", json_kind(&other)),
                    record: other.to_string(),
                }),
                Some((_, Err(r))) => self.pending.push_back(r),
            }
        }
        if block.is_empty() {
            return self.pending.pop_front().map(|r| Ok(Piece::Rejected(r)));
        }
        Some(json::to_batch(block).map(Piece::Batch))
    }
}
