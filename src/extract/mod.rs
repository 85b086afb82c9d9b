//! Extraction: vendor data into the lake, incrementally.
//!
//! A [`Source`] knows one vendor's API; the runner ([`extract`]) gives it a
//! [`StreamRun`] per stream to push pages into. `StreamRun` buffers records,
//! lands them through the [`Lander`] in files of up to 10,000 rows, and
//! persists the stream's cursor only **after** the data it covers is durable
//! in the lake (`_ferry/extract_state/<source>/<stream>.json`). A crash
//! re-extracts at most what was pushed after the last persisted cursor;
//! duplicates that causes are removed downstream by primary key (the
//! `latest_by` macro in `sql/macros/`).
//!
//! Every stream's attempt, successful or not, is a row in
//! `ferry.extract_runs` (`_ferry/extract_runs/`), written after the stream's
//! data: a failure is never invisible.

pub mod config;
pub mod files;
pub mod hubspot;
pub mod rest;
pub mod salesforce;
pub mod webhook;

use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::lake::layout::{META, RunId, StreamRef};
use crate::lake::{Lake, Lander};
use crate::project::{Project, StreamOptions};
use config::SourceSpec;

/// Rows landed per file.
pub const FLUSH_ROWS: usize = 10_000;

/// Pages decoded at once behind the fetching task.
const DECODING: usize = 4;

type Decoded = crate::lake::json::Decoded;

/// Append one stream attempt to `ferry.extract_runs`.
pub use crate::lake::tables::extract_runs_schema;

async fn record_attempt(
    lake: &Lake,
    run_id: &RunId,
    stream: &StreamRef,
    summary: &StreamSummary,
    before: Option<&Value>,
    error: Option<&Error>,
    started_at: chrono::DateTime<Utc>,
) -> Result<()> {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    let one = |v: Option<String>| -> ArrayRef { std::sync::Arc::new(StringArray::from(vec![v])) };
    let int = |v: u64| -> ArrayRef {
        std::sync::Arc::new(Int64Array::from(vec![i64::try_from(v).unwrap_or(i64::MAX)]))
    };
    let after = if error.is_some() {
        before.cloned()
    } else {
        summary.cursor.clone().or_else(|| before.cloned())
    };
    let party = error.map(|e| {
        match e.party() {
            crate::error::Party::User => "user",
            crate::error::Party::Vendor => "vendor",
            crate::error::Party::Storage => "storage",
            crate::error::Party::Ferry => "ferry",
        }
        .to_string()
    });
    let cols: Vec<ArrayRef> = vec![
        one(Some(run_id.to_string())),
        one(Some(stream.source.clone())),
        one(Some(stream.stream.clone())),
        one(Some(
            if error.is_some() { "failed" } else { "ok" }.to_string(),
        )),
        int(summary.pages),
        int(summary.rows),
        int(summary.quarantined),
        int(summary.rejected_files.len() as u64),
        one(before.map(Value::to_string)),
        one(after.map(|v| v.to_string())),
        one(error.map(|e| e.to_string())),
        one(party),
        std::sync::Arc::new(BooleanArray::from(vec![error.map(Error::retryable)])),
        std::sync::Arc::new(Float64Array::from(vec![summary.seconds])),
        crate::lake::log::ts_array(std::iter::once(started_at)),
    ];
    let batch = arrow::record_batch::RecordBatch::try_new(extract_runs_schema(), cols)?;
    let bytes = crate::lake::log::encode(extract_runs_schema(), &[batch])?;
    let path = Path::from_iter([
        META,
        "extract_runs",
        &format!("{run_id}-{}.{}.parquet", stream.source, stream.stream),
    ]);
    crate::lake::log::put_once(lake.store().as_ref(), &path, bytes).await
}

/// A vendor API that can extract named streams.
///
/// Contract: `extract` pushes every record of `stream` it fetches into `run`
/// (page by page, with the bytes fetched), may call
/// [`StreamRun::checkpoint`] with a cursor that covers everything pushed so
/// far (only when the API returns records in cursor order), and returns the
/// cursor for the next run (or `None` for full loads). On error it returns
/// at once; what was pushed and checkpointed stays valid.
#[async_trait]
pub trait Source: Send + Sync {
    /// Streams, in extraction order (parents before children).
    fn streams(&self) -> Vec<String>;

    async fn extract(&self, stream: &str, run: &mut StreamRun<'_>) -> Result<Option<Value>>;
}

/// `_ferry/extract_state/<source>/<stream>.json`
pub fn state_path(stream: &StreamRef) -> Path {
    Path::from_iter([
        META,
        "extract_state",
        &stream.source,
        &format!("{}.json", stream.stream),
    ])
}

/// The stream's persisted cursor.
pub async fn load_cursor(lake: &Lake, stream: &StreamRef) -> Result<Option<Value>> {
    match lake.store().get(&state_path(stream)).await {
        Ok(g) => {
            let bytes = g.bytes().await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Internal(format!("{} is not valid JSON: {e}", state_path(stream)))
            })?;
            Ok(v.get("cursor").cloned().filter(|c| !c.is_null()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn save_cursor(
    lake: &Lake,
    stream: &StreamRef,
    cursor: &Value,
    run_id: &RunId,
) -> Result<()> {
    let body = json!({
        "cursor": cursor,
        "run_id": run_id.as_str(),
        "saved_at": Utc::now().to_rfc3339(),
    });
    // A single put replaces the object atomically: readers see the old or the new state.
    lake.store()
        .put(
            &state_path(stream),
            PutPayload::from(body.to_string().into_bytes()),
        )
        .await?;
    Ok(())
}

/// What one stream's extraction did.
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub stream: String,
    pub pages: u64,
    pub rows: u64,
    pub bytes: u64,
    pub quarantined: u64,
    /// Files skipped because the same content was landed before.
    pub skipped_files: u64,
    /// Files refused whole, with the reason.
    pub rejected_files: Vec<String>,
    pub seconds: f64,
    pub cursor: Option<Value>,
    /// The stream failed: why (what landed before the failure stays; the
    /// cursor did not move).
    pub error: Option<String>,
}

impl StreamSummary {
    /// Rows or files the stream refused: quarantined rows, refused files.
    pub fn rejects(&self) -> u64 {
        self.quarantined + self.rejected_files.len() as u64
    }
}

/// What one extraction did: every stream tried, failed ones included.
#[derive(Debug, Default)]
pub struct Extraction {
    /// In the order they ran; a failed stream has `error` set.
    pub streams: Vec<StreamSummary>,
    /// A stop was asked for and the remaining streams were left for the next run.
    pub stopped: bool,
    /// The failed streams' errors, in order.
    pub errors: Vec<Error>,
}

impl Extraction {
    /// The extraction as a result: the first failed stream's error, naming
    /// the others.
    pub fn into_result(mut self) -> Result<(Vec<StreamSummary>, bool)> {
        if self.errors.is_empty() {
            return Ok((self.streams, self.stopped));
        }
        let first = self.errors.remove(0);
        if self.errors.is_empty() {
            return Err(first);
        }
        let others: Vec<String> = self
            .streams
            .iter()
            .filter(|s| s.error.is_some())
            .skip(1)
            .map(|s| s.stream.clone())
            .collect();
        Err(first.context(|m| format!("{m}; also failed: {}", others.join(", "))))
    }
}

/// Pages waiting to land: converted to Arrow as they arrive.
#[derive(Default)]
struct Buffered {
    pieces: Vec<crate::lake::land::Piece>,
    rows: usize,
    /// Records converted so far, to number refused ones.
    seen: u64,
}

impl Buffered {
    fn add_decoded(&mut self, decoded: Decoded) {
        let pieces = crate::lake::land::Piece::from_decoded(decoded, &mut self.seen);
        self.rows += pieces.iter().map(|p| p.rows()).sum::<usize>();
        self.pieces.extend(pieces);
    }

    fn add(&mut self, records: Vec<Value>) -> Result<()> {
        let pieces = crate::lake::land::Piece::from_records(records, &mut self.seen)?;
        self.rows += pieces.iter().map(|p| p.rows()).sum::<usize>();
        self.pieces.extend(pieces);
        Ok(())
    }

    /// The pieces so far, as they were pushed.
    fn take(&mut self) -> Vec<crate::lake::land::Piece> {
        self.rows = 0;
        std::mem::take(&mut self.pieces)
    }
}

/// `pieces` with consecutive batches of one schema concatenated (pages of an
/// API mostly share one): the lake then plans and writes one batch per
/// flush, as it would for a file drop. Run by the landing task, off the
/// fetching loop.
fn concatenated(pieces: Vec<crate::lake::land::Piece>) -> Result<Vec<crate::lake::land::Piece>> {
    use crate::lake::land::Piece;
    let mut out: Vec<Piece> = Vec::new();
    let mut run: Vec<arrow::record_batch::RecordBatch> = Vec::new();
    let close =
        |run: &mut Vec<arrow::record_batch::RecordBatch>, out: &mut Vec<Piece>| -> Result<()> {
            if let Some(first) = run.first() {
                let batch = arrow::compute::concat_batches(&first.schema(), run.iter())?;
                out.push(Piece::Batch(batch));
                run.clear();
            }
            Ok(())
        };
    for piece in pieces {
        match piece {
            Piece::Batch(b) => {
                if run.first().is_some_and(|f| f.schema() != b.schema()) {
                    close(&mut run, &mut out)?;
                }
                run.push(b);
            }
            rejected => out.push(rejected),
        }
    }
    close(&mut run, &mut out)?;
    Ok(out)
}

/// One stream being extracted: buffers pages, lands them, persists cursors.
pub struct StreamRun<'a> {
    lake: &'a Lake,
    lander: &'a Lander,
    stream: StreamRef,
    options: StreamOptions,
    start_cursor: Option<Value>,
    /// Pages fetched and not landed yet, each already a record batch.
    buffer: Buffered,
    siblings: std::collections::BTreeMap<StreamRef, Buffered>,
    pending: Option<Value>,
    /// The landing of the previous full buffer, running while the next
    /// pages are fetched (at most one: memory stays bounded and files and
    /// cursors land in order). Its result is the rows it quarantined.
    landing: Option<tokio::task::JoinHandle<Result<u64>>>,
    /// Pages being decoded on the blocking pool, in order, while the next
    /// are fetched (at most [`DECODING`]).
    decoding: std::collections::VecDeque<tokio::task::JoinHandle<Result<Decoded>>>,
    /// The largest cursor value the decoded pages held.
    decoded_cursor: Option<Value>,
    summary: StreamSummary,
    progress: Option<indicatif::ProgressBar>,
}

impl<'a> StreamRun<'a> {
    /// The cursor the previous run left (where to start).
    pub fn cursor(&self) -> Option<&Value> {
        self.start_cursor.as_ref()
    }

    pub fn stream(&self) -> &StreamRef {
        &self.stream
    }

    /// Rows of the same source landed so far (for child streams that read
    /// their parents' keys).
    pub fn lake(&self) -> &Lake {
        self.lake
    }

    /// One fetched page.
    pub async fn push(&mut self, records: Vec<Value>, bytes: usize) -> Result<()> {
        self.summary.pages += 1;
        self.summary.bytes += bytes as u64;
        self.summary.rows += records.len() as u64;
        self.show_progress();
        self.buffer.add(records)?;
        self.flush_if_full().await
    }

    fn show_progress(&self) {
        if let Some(p) = &self.progress {
            p.set_message(format!(
                "{}: {} pages, {} rows",
                self.stream,
                crate::console::thousands(self.summary.pages),
                crate::console::thousands(self.summary.rows)
            ));
        }
    }

    async fn flush_if_full(&mut self) -> Result<()> {
        if self.buffer.rows >= FLUSH_ROWS {
            self.flush_behind().await?;
        }
        Ok(())
    }

    /// One fetched page's records as JSON text (an array): decoded into
    /// columns on the blocking pool while the next page is fetched. With
    /// `cursor`, the page's largest value at that path is kept for
    /// [`StreamRun::decoded_cursor`].
    pub async fn push_json(
        &mut self,
        text: bytes::Bytes,
        bytes: usize,
        cursor: Option<&str>,
    ) -> Result<()> {
        self.summary.pages += 1;
        self.summary.bytes += bytes as u64;
        let cursor = cursor.map(str::to_string);
        self.decoding
            .push_back(tokio::task::spawn_blocking(move || {
                decode(&text, cursor.as_deref())
            }));
        while self.decoding.len() > DECODING {
            self.next_decoded().await?;
        }
        self.flush_if_full().await
    }

    /// A page's records as JSON text, decoded now and not pushed yet
    /// (pagination that reads the records first).
    pub async fn decode_now(
        &mut self,
        text: bytes::Bytes,
        cursor: Option<&str>,
    ) -> Result<Decoded> {
        let cursor = cursor.map(str::to_string);
        tokio::task::spawn_blocking(move || decode(&text, cursor.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("a decoding task failed: {e}")))?
    }

    /// One fetched page, decoded by [`StreamRun::decode_now`].
    pub async fn push_decoded(&mut self, decoded: Decoded, bytes: usize) -> Result<()> {
        self.summary.pages += 1;
        self.summary.bytes += bytes as u64;
        self.drain_decoding().await?;
        self.add_decoded(decoded)?;
        self.flush_if_full().await
    }

    /// Every page pushed so far decoded: the largest cursor value their
    /// records held (since the last call).
    pub async fn decoded_cursor(&mut self) -> Result<Option<Value>> {
        self.drain_decoding().await?;
        Ok(self.decoded_cursor.take())
    }

    async fn next_decoded(&mut self) -> Result<()> {
        if let Some(task) = self.decoding.pop_front() {
            let decoded = task
                .await
                .map_err(|e| Error::Internal(format!("a decoding task failed: {e}")))??;
            self.add_decoded(decoded)?;
        }
        Ok(())
    }

    /// Wait for every page being decoded; the pages that decoded are kept
    /// even when one failed (its error is returned, the first one).
    async fn drain_decoding(&mut self) -> Result<()> {
        let mut first = Ok(());
        while !self.decoding.is_empty() {
            if let Err(e) = self.next_decoded().await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    fn add_decoded(&mut self, mut decoded: Decoded) -> Result<()> {
        if let Some(c) = decoded.cursor.take()
            && self
                .decoded_cursor
                .as_ref()
                .is_none_or(|b| cursor_after(&c, b))
        {
            self.decoded_cursor = Some(c);
        }
        self.summary.rows += decoded.records as u64;
        self.show_progress();
        self.buffer.add_decoded(decoded);
        Ok(())
    }

    /// Land records into a sibling stream of the same source (for example
    /// HubSpot associations), now.
    /// They land with the stream's own buffer, before its cursor moves.
    pub async fn push_sibling(&mut self, stream: &str, records: Vec<Value>) -> Result<()> {
        let sibling = StreamRef::new(&self.stream.source, stream)?;
        let buffer = self.siblings.entry(sibling).or_default();
        buffer.add(records)?;
        if buffer.rows >= FLUSH_ROWS {
            self.flush_behind().await?;
        }
        Ok(())
    }

    /// Land one input file's records and rejected rows now, recorded with
    /// the file's path in `ferry.ingestions`.
    pub async fn land_file(
        &mut self,
        origin: &str,
        records: Vec<Value>,
        rejected: Vec<crate::lake::Rejected>,
        bytes: usize,
    ) -> Result<crate::lake::LandReport> {
        self.flush().await?;
        let lander = self.lander.for_file(origin);
        let items = records
            .into_iter()
            .map(Ok)
            .chain(rejected.into_iter().map(Err))
            .collect::<Vec<_>>();
        let report = lander.land_json(&self.stream, self.options, items).await?;
        self.count_file(&report, bytes);
        Ok(report)
    }

    /// Land one input file's records as they are read (file drops): the
    /// file is never held in memory whole.
    pub async fn land_file_records<I>(
        &mut self,
        origin: &str,
        records: I,
        bytes: usize,
    ) -> Result<crate::lake::LandReport>
    where
        I: IntoIterator<Item = std::result::Result<Value, crate::lake::Rejected>>,
        I::IntoIter: Send,
    {
        self.flush().await?;
        let lander = self.lander.for_file(origin);
        let report = lander
            .land_json(&self.stream, self.options, records)
            .await?;
        self.count_file(&report, bytes);
        Ok(report)
    }

    /// Land one input file's pieces as they are decoded (JSONL drops).
    pub async fn land_file_pieces(
        &mut self,
        origin: &str,
        pieces: impl Iterator<Item = Result<crate::lake::land::Piece>> + Send,
        bytes: usize,
    ) -> Result<crate::lake::LandReport> {
        self.flush().await?;
        let lander = self.lander.for_file(origin);
        let report = lander
            .land_pieces(&self.stream, self.options, pieces)
            .await?;
        self.count_file(&report, bytes);
        Ok(report)
    }

    /// Land one input file's record batches (Parquet drops).
    pub async fn land_file_batches(
        &mut self,
        origin: &str,
        batches: impl IntoIterator<Item = arrow::record_batch::RecordBatch, IntoIter: Send>,
        bytes: usize,
    ) -> Result<crate::lake::LandReport> {
        self.flush().await?;
        let lander = self.lander.for_file(origin);
        let report = lander
            .land_batches(&self.stream, self.options, batches)
            .await?;
        self.count_file(&report, bytes);
        Ok(report)
    }

    fn count_file(&mut self, report: &crate::lake::LandReport, bytes: usize) {
        self.summary.pages += 1;
        self.summary.rows += report.rows;
        self.summary.bytes += bytes as u64;
        self.summary.quarantined += report.rejected;
    }

    /// Record that an input file was refused whole (nothing landed).
    pub async fn reject_file(&mut self, origin: &str, error: &str) -> Result<()> {
        self.summary.rejected_files.push(error.to_string());
        self.lander
            .for_file(origin)
            .reject_file(&self.stream, error)
            .await
    }

    /// A file skipped because its content was landed before.
    pub fn skipped_file(&mut self) {
        self.summary.skipped_files += 1;
    }

    /// Declare columns of this stream (`sibling`: of a sibling stream)
    /// before any value arrives, for connectors that know them: a column
    /// null in every record so far, or a stream with no records yet, still
    /// reads with the declared type.
    pub async fn declare(
        &mut self,
        sibling: Option<&str>,
        columns: &[(String, arrow::datatypes::DataType)],
    ) -> Result<()> {
        let stream = match sibling {
            Some(s) => StreamRef::new(&self.stream.source, s)?,
            None => self.stream.clone(),
        };
        crate::lake::schema::declare(self.lake.store().as_ref(), &stream, columns).await
    }

    /// `cursor` covers everything pushed so far; it is persisted once that is landed.
    pub fn checkpoint(&mut self, cursor: Value) {
        self.pending = Some(cursor);
    }

    /// Land everything pushed so far and persist the pending cursor, now.
    async fn flush(&mut self) -> Result<()> {
        // What decoded lands; a page that did not fails the stream, and
        // then the cursor must not move.
        if let Err(e) = self.drain_decoding().await {
            self.pending = None;
            self.flush_behind().await?;
            self.settle().await?;
            return Err(e);
        }
        self.flush_behind().await?;
        self.settle().await
    }

    /// Wait for the landing in the background, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.landing.take() {
            let quarantined = task
                .await
                .map_err(|e| Error::Internal(format!("a landing task failed: {e}")))??;
            self.summary.quarantined += quarantined;
        }
        Ok(())
    }

    /// Start landing the buffers (and then persisting the pending cursor)
    /// in the background, once the previous landing is done: decoding and
    /// writing Parquet on one core while the next pages are fetched (and
    /// their JSON parsed) on another.
    async fn flush_behind(&mut self) -> Result<()> {
        // A cursor covers every page pushed before it: those still being
        // decoded land with it.
        if self.pending.is_some() {
            self.drain_decoding().await?;
        }
        self.settle().await?;
        let records = self.buffer.take();
        let siblings: Vec<(StreamRef, Vec<crate::lake::land::Piece>)> = self
            .siblings
            .iter_mut()
            .map(|(s, b)| (s.clone(), b.take()))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let cursor = self.pending.take();
        if records.is_empty() && siblings.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let (lake, lander) = (self.lake.clone(), self.lander.clone());
        let (stream, options) = (self.stream.clone(), self.options);
        self.landing = Some(tokio::spawn(async move {
            // Every buffer concatenated before any lands: a failure lands
            // nothing, as it did when this ran before the task.
            let records = concatenated(records)?;
            let siblings = siblings
                .into_iter()
                .map(|(s, p)| concatenated(p).map(|p| (s, p)))
                .collect::<Result<Vec<_>>>()?;
            let mut quarantined = 0;
            if !records.is_empty() {
                let report = lander.land_prepared(&stream, options, records).await?;
                quarantined += report.rejected;
            }
            for (sibling, pieces) in siblings {
                lander.land_prepared(&sibling, options, pieces).await?;
            }
            if let Some(c) = cursor {
                save_cursor(&lake, &stream, &c, lander.run_id()).await?;
            }
            Ok(quarantined)
        }));
        Ok(())
    }
}

/// Extract the selected streams (`source` or `source.stream`; all when empty).
pub async fn extract(
    project: &Project,
    lake: &Lake,
    selection: &[String],
    report: impl FnMut(&StreamSummary),
) -> Result<Vec<StreamSummary>> {
    extract_until(project, lake, selection, report, || false)
        .await?
        .into_result()
        .map(|(done, _)| done)
}

/// [`extract`], checking `stop` before each stream: when it says so, the
/// streams done are returned with `stopped` and the rest are left for the
/// next run (each stream's cursor is committed after its data, so nothing
/// is lost). A stream that fails does not stop the others: it is in the
/// result with its error (and in `ferry.extract_runs`). `Err` is for what
/// no stream can get past: the configuration, the lake's storage.
pub async fn extract_until(
    project: &Project,
    lake: &Lake,
    selection: &[String],
    mut report: impl FnMut(&StreamSummary),
    stop: impl Fn() -> bool,
) -> Result<Extraction> {
    if project.extract.is_empty() {
        return Err(Error::Input(
            "no extraction sources in ferry.toml: give a [sources.<name>] a type (rest), a url and streams"
                .into(),
        ));
    }
    let mut chosen: Vec<(&SourceSpec, Vec<String>)> = Vec::new();
    for spec in project.extract.values() {
        let streams = spec.streams();
        let picked: Vec<String> = if selection.is_empty() {
            streams
        } else {
            streams
                .into_iter()
                .filter(|s| {
                    selection
                        .iter()
                        .any(|x| x == spec.name() || *x == format!("{}.{s}", spec.name()))
                })
                .collect()
        };
        if !picked.is_empty() {
            chosen.push((spec, picked));
        }
    }
    for want in selection {
        let known = project.extract.values().any(|s| {
            s.name() == want
                || s.streams()
                    .iter()
                    .any(|t| *want == format!("{}.{t}", s.name()))
        });
        if !known {
            let all: Vec<String> = project
                .extract
                .values()
                .flat_map(|s| {
                    s.streams()
                        .into_iter()
                        .map(move |t| format!("{}.{t}", s.name()))
                })
                .collect();
            return Err(Error::Input(format!(
                "nothing to extract matches {want:?}: sources and streams are {}",
                all.join(", ")
            )));
        }
    }
    let run_id = RunId::new();
    let lander = Lander::new(lake.clone(), run_id);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut stopped = false;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (spec, streams) in chosen {
        // A HubSpot account's budget is shared with every other ferry
        // process that uses it (a sync running meanwhile), through the lake.
        let mut member = None;
        let source: Box<dyn Source> = match spec {
            SourceSpec::Rest { .. } => Box::new(rest::RestSource::new(spec)?),
            SourceSpec::Files { .. } => Box::new(files::FileSource::new(spec, &project.dir)?),
            SourceSpec::Salesforce { .. } => Box::new(salesforce::SalesforceSource::new(spec)?),
            SourceSpec::Hubspot { url, auth, .. } => {
                let hs = hubspot::HubspotSource::new(spec)?;
                if !matches!(auth, crate::http::Auth::Missing(_)) {
                    let key = crate::http::account_key("hubspot", url, auth);
                    let window =
                        crate::http::shared::join(lake, &key, hs.limiter().clone(), None).await?;
                    let search = crate::http::shared::join(
                        lake,
                        &format!("{key} search"),
                        hs.search_limiter().clone(),
                        None,
                    )
                    .await?;
                    member = Some((window, search));
                }
                Box::new(hs)
            }
        };
        for name in streams {
            if stop() {
                tracing::info!(source = spec.name(), stream = %name, "stopping before this stream");
                stopped = true;
                break;
            }
            let stream = StreamRef::new(spec.name(), &name)?;
            let started = Instant::now();
            let started_at = Utc::now();
            let start_cursor = load_cursor(lake, &stream).await?;
            let before = start_cursor.clone();
            let progress = tty.then(crate::console::spinner);
            let mut run = StreamRun {
                lake,
                lander: &lander,
                options: project.stream_options(spec.name(), &name),
                stream: stream.clone(),
                start_cursor,
                buffer: Buffered::default(),
                siblings: Default::default(),
                pending: None,
                landing: None,
                decoding: Default::default(),
                decoded_cursor: None,
                summary: StreamSummary {
                    stream: stream.to_string(),
                    ..Default::default()
                },
                progress,
            };
            let result = source.extract(&name, &mut run).await;
            if let Some(p) = &run.progress {
                p.finish_and_clear();
            }
            // Whatever was fetched lands, even when the stream failed part-way;
            // the cursor moves only on success.
            match result {
                Ok(cursor) => {
                    if let Some(c) = &cursor {
                        run.pending = Some(c.clone());
                    }
                    run.flush().await?;
                    run.summary.cursor = cursor;
                }
                Err(e) => {
                    run.pending = None;
                    let flushed = run.flush().await;
                    run.summary.seconds = started.elapsed().as_secs_f64();
                    let rows = run.summary.rows;
                    let e = e.context(|m| {
                        format!(
                            "{stream}: {m} ({rows} rows landed before the failure; the cursor was not moved, so the next run fetches them again)"
                        )
                    });
                    if let Err(r) = record_attempt(
                        lake,
                        lander.run_id(),
                        &stream,
                        &run.summary,
                        before.as_ref(),
                        Some(&e),
                        started_at,
                    )
                    .await
                    {
                        tracing::warn!(stream = %stream, "could not record the failed attempt in ferry.extract_runs: {r}");
                    }
                    flushed?;
                    run.summary.error = Some(e.to_string());
                    report(&run.summary);
                    out.push(run.summary);
                    errors.push(e);
                    continue;
                }
            }
            run.summary.seconds = started.elapsed().as_secs_f64();
            record_attempt(
                lake,
                lander.run_id(),
                &stream,
                &run.summary,
                before.as_ref(),
                None,
                started_at,
            )
            .await?;
            report(&run.summary);
            out.push(run.summary);
        }
        if let Some((window, search)) = member {
            window.leave().await;
            search.leave().await;
        }
        if stopped {
            break;
        }
    }
    Ok(Extraction {
        streams: out,
        stopped,
        errors,
    })
}

/// The value at a dotted path (`""` is the value itself).
pub fn at_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, k| match v {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Decode a page's records (JSON text of an array), naming who must act
/// when it is not one.
fn decode(text: &[u8], cursor: Option<&str>) -> Result<Decoded> {
    let after = |a: &Value, b: &Value| cursor_after(a, b);
    // The client checked the text's shape only. A record that is not valid
    // JSON inside (a lone surrogate, as JavaScript's JSON.stringify writes
    // it; a number out of range) goes to quarantine with the reason and its
    // text, and the page's other records land; text that does not split
    // into records at all fails, as a reply that is not JSON fails a call.
    let unreadable = |e: String| Error::Vendor {
        vendor: "the API".into(),
        message: format!(
            "a page's records are not valid JSON ({e}); nothing of that page was landed and the cursor did not move"
        ),
        retryable: true,
    };
    let text = std::str::from_utf8(text).map_err(|e| unreadable(e.to_string()))?;
    crate::lake::json::decode_records_lenient(
        text,
        cursor.map(|c| (c, &after as &crate::lake::json::After)),
    )
    .map_err(|e| unreadable(e.to_string()))
}

/// Whether cursor value `a` is after `b` (numbers numerically, else as text).
pub fn cursor_after(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => text(a) > text(b),
    }
}

/// A JSON scalar as text (strings unquoted).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: one record with a lone surrogate (or a number out of
    /// range) failed its whole page, every retry alike, so the stream could
    /// not get past it. It now goes to quarantine with its text and the
    /// reason; the page's other records land, with the cursor they hold.
    #[test]
    fn records_the_clients_check_let_through_go_to_quarantine_and_the_rest_lands() {
        for bad in [r#"{"a":"\ud800","n":9}"#, r#"{"a":1e400,"n":9}"#] {
            let text = format!(r#"[{{"a":"x","n":1}},{bad},7,{{"a":"y","n":3}}]"#);
            // The client accepted the reply: the record fails in decoding.
            let body = bytes::Bytes::from(format!(r#"{{"results":{text}}}"#));
            assert!(crate::http::split_at(&body, "results").is_ok(), "{text}");
            let d = decode(text.as_bytes(), Some("n")).unwrap();
            assert_eq!(d.records, 4);
            assert_eq!(d.batch.as_ref().map(|b| b.num_rows()), Some(2), "{bad}");
            // A lone surrogate's record keeps its cursor (read with U+FFFD);
            // a number out of range makes the record unreadable, cursor too.
            let cursor = if bad.contains("ud800") { 9 } else { 3 };
            assert_eq!(d.cursor, Some(serde_json::json!(cursor)), "{bad}");
            assert_eq!(d.others.iter().map(|o| o.0).collect::<Vec<_>>(), [2]);
            assert_eq!(d.invalid.len(), 1, "{bad}");
            assert_eq!((d.invalid[0].0, d.invalid[0].2.as_str()), (1, bad));
            let mut seen = 10;
            let pieces = crate::lake::land::Piece::from_decoded(d, &mut seen);
            let refused: Vec<String> = pieces
                .iter()
                .filter_map(|p| match p {
                    crate::lake::land::Piece::Rejected(r) => Some(format!(
                        "{} {}",
                        r.origin.clone().unwrap_or_default(),
                        r.reason
                    )),
                    _ => None,
                })
                .collect();
            assert_eq!(refused.len(), 2, "{refused:?}");
            assert!(
                refused[0].starts_with("record 12 not valid JSON: "),
                "{refused:?}"
            );
            assert!(
                refused[1].starts_with("record 13 expected a JSON object"),
                "{refused:?}"
            );
            assert_eq!(seen, 14);
        }
        // Text that does not split into records still fails the call.
        for text in [r#"[{"a":1},"#, r#"{"a":1}"#] {
            match decode(text.as_bytes(), None) {
                Err(Error::Vendor { retryable, .. }) => assert!(retryable, "{text}"),
                other => panic!("{text}: {:?}", other.map(|d| d.records)),
            }
        }
    }
}
