//! A sync's state in the lake, all under `_ferry/`:
//!
//! - `sync_log/<sync>/g<generation>-<run_id>-<seq>.parquet`: `ferry.sync_log`, one row per
//!   record per run (what was done, the outcome, the CRM id, the error). A
//!   file is written after the CRM confirmed (or refused) its batch, so a
//!   row with `status = 'ok'` is always true of the CRM.
//! - `sync_state/<sync>/snapshot-g<generation>.parquet`: the confirmed state
//!   as of the end of the run that held lease generation `<generation>` (key,
//!   hash of the mapped values, CRM id, whether this sync created the
//!   record). The state at any moment is the newest snapshot plus the `ok`
//!   rows of log files of later generations, so a crash between batches
//!   loses nothing and the next run resumes from the last confirmed batch.
//!   Generations grow with each lease, whatever the machines' clocks say.
//!   (Snapshots named `snapshot-<micros>` come from before generations and
//!   are read by time.)
//! - `sync_state/<sync>/lease`: the run holding the sync ([`crate::lake::lease`]).
//! - `sync_runs/<sync>/<run_id>.parquet`: `ferry.sync_runs`, one summary row per run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::error::Result;
use crate::lake::Lake;
use crate::lake::layout::{META, RunId};
use crate::lake::log::{encode, put_once, ts_array};

/// `_ferry/sync_log/`
pub use crate::lake::tables::{sync_log_schema as log_schema, sync_runs_schema as runs_schema};

pub fn log_root() -> Path {
    Path::from_iter([META, "sync_log"])
}

/// `_ferry/sync_log/<sync>/`
pub fn log_prefix(sync: &str) -> Path {
    Path::from_iter([META, "sync_log", sync])
}

/// `_ferry/sync_runs/`
pub fn runs_root() -> Path {
    Path::from_iter([META, "sync_runs"])
}

/// `_ferry/sync_state/<sync>/`
pub fn state_prefix(sync: &str) -> Path {
    Path::from_iter([META, "sync_state", sync])
}

/// One row of `ferry.sync_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub key: Option<String>,
    pub operation: &'static str,
    pub status: &'static str,
    pub crm_id: Option<String>,
    pub created: bool,
    pub hash: Option<String>,
    pub payload: Option<String>,
    pub error_category: Option<String>,
    pub error_message: Option<String>,
    pub response: Option<String>,
    pub attempts: i64,
    /// The row's time, if not the moment it is logged: an `unknown` write
    /// is logged at the time its first attempt was sent, from which on the
    /// CRM may hold its effect.
    pub at: Option<DateTime<Utc>>,
}

impl LogRow {
    pub fn ok(key: &str, operation: &'static str, crm_id: Option<String>, created: bool) -> LogRow {
        LogRow {
            key: Some(key.to_string()),
            operation,
            status: "ok",
            crm_id,
            created,
            hash: None,
            payload: None,
            error_category: None,
            error_message: None,
            response: None,
            attempts: 1,
            at: None,
        }
    }

    pub fn error(
        key: Option<&str>,
        operation: &'static str,
        status: &'static str,
        category: &str,
        message: &str,
    ) -> LogRow {
        LogRow {
            key: key.map(str::to_string),
            operation,
            status,
            crm_id: None,
            created: false,
            hash: None,
            payload: None,
            error_category: Some(category.to_string()),
            error_message: Some(message.to_string()),
            response: None,
            attempts: 1,
            at: None,
        }
    }
}

/// Encode log rows with their run, sync and time.
pub fn log_batch(
    run_id: &str,
    sync: &str,
    rows: &[LogRow],
    at: DateTime<Utc>,
) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&LogRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; rows.len()])),
        Arc::new(StringArray::from(vec![sync; rows.len()])),
        s(&|r| r.key.clone()),
        s(&|r| Some(r.operation.to_string())),
        s(&|r| Some(r.status.to_string())),
        s(&|r| r.crm_id.clone()),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.created).collect::<Vec<_>>(),
        )),
        s(&|r| r.hash.clone()),
        s(&|r| r.payload.clone()),
        s(&|r| r.error_category.clone()),
        s(&|r| r.error_message.clone()),
        s(&|r| r.response.clone()),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        )),
        ts_array(rows.iter().map(|r| r.at.unwrap_or(at))),
    ];
    Ok(RecordBatch::try_new(log_schema(), cols)?)
}

/// Appends a run's outcomes to `ferry.sync_log`, one write-once file per call.
pub struct LogWriter {
    lake: Lake,
    sync: String,
    run_id: RunId,
    seq: AtomicU64,
    lease: Option<Arc<crate::lake::lease::Lease>>,
    generation: u64,
}

impl LogWriter {
    /// A writer for a run holding `lease` (none in a dry run, which writes nothing).
    pub fn new(
        lake: Lake,
        sync: &str,
        run_id: RunId,
        lease: Option<Arc<crate::lake::lease::Lease>>,
    ) -> LogWriter {
        let generation = lease.as_ref().map_or(0, |l| l.generation());
        LogWriter {
            lake,
            sync: sync.to_string(),
            run_id,
            seq: AtomicU64::new(0),
            lease,
            generation,
        }
    }

    /// The generation of the run's lease.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fails if the run's lease was lost.
    pub fn check(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }

    /// Make `rows` durable. Returns once the file is in the lake. Refuses
    /// if the run no longer holds its lease (another run took over).
    pub async fn append(&self, rows: &[LogRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.check()?;
        let batch = log_batch(self.run_id.as_str(), &self.sync, rows, Utc::now())?;
        let bytes = encode(log_schema(), &[batch])?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let path = log_prefix(&self.sync).join(format!(
            "g{:012}-{}-{seq:06}.parquet",
            self.generation, self.run_id
        ));
        put_once(self.lake.store().as_ref(), &path, bytes).await
    }
}

/// The newest snapshot of a sync: the last generation it covers, or (for
/// snapshots from before generations) the time it covers up to.
#[derive(Debug, Clone, PartialEq)]
pub enum Snapshot {
    Generation(Path, u64),
    Time(Path, i64),
}

/// The newest snapshot of a sync, if any.
pub async fn latest_snapshot(lake: &Lake, sync: &str) -> Result<Option<Snapshot>> {
    let listed = match lake
        .store()
        .list_with_delimiter(Some(&state_prefix(sync)))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let by_generation = listed
        .objects
        .iter()
        .filter_map(|o| {
            let name = o.location.filename()?;
            name.starts_with("snapshot-g")
                .then(|| generation_of(name))
                .flatten()
                .map(|g| (o.location.clone(), g))
        })
        .max_by_key(|(_, g)| *g);
    if let Some((p, g)) = by_generation {
        return Ok(Some(Snapshot::Generation(p, g)));
    }
    Ok(latest_timed_snapshot(lake, sync)
        .await?
        .map(|(p, m)| Snapshot::Time(p, m)))
}

async fn latest_timed_snapshot(lake: &Lake, sync: &str) -> Result<Option<(Path, i64)>> {
    let listed = match lake
        .store()
        .list_with_delimiter(Some(&state_prefix(sync)))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(listed
        .objects
        .iter()
        .filter_map(|o| {
            let name = o.location.filename()?;
            let micros = name
                .strip_prefix("snapshot-")?
                .strip_suffix(".parquet")?
                .parse::<i64>()
                .ok()?;
            Some((o.location.clone(), micros))
        })
        .max_by_key(|(_, m)| *m))
}

/// Path of the snapshot written at the end of generation `generation`.
pub fn snapshot_path(sync: &str, generation: u64) -> Path {
    state_prefix(sync).join(format!("snapshot-g{generation:012}.parquet"))
}

/// Delete snapshots older than the newest two (the newest is what the next
/// run reads; the one before it is kept for inspection).
pub async fn prune_snapshots(lake: &Lake, sync: &str) -> Result<()> {
    let listed = match lake
        .store()
        .list_with_delimiter(Some(&state_prefix(sync)))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut snaps: Vec<Path> = listed
        .objects
        .into_iter()
        .map(|o| o.location)
        .filter(|p| p.filename().is_some_and(|n| n.starts_with("snapshot-")))
        .collect();
    snaps.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    for old in snaps.iter().rev().skip(2) {
        lake.store().delete(old).await?;
    }
    Ok(())
}

/// One `ferry.sync_runs` row.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub mode: String,
    pub status: String,
    pub counts: [i64; 6],
    pub api_calls: i64,
    pub rate_limited: i64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// Append a run summary to `ferry.sync_runs`.
pub async fn record_run(lake: &Lake, sync: &str, run_id: &RunId, row: &RunRow) -> Result<()> {
    let finished = Utc::now();
    let seconds = (finished - row.started_at).num_milliseconds() as f64 / 1000.0;
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id.as_str()])),
        Arc::new(StringArray::from(vec![sync])),
        Arc::new(StringArray::from(vec![row.mode.as_str()])),
        Arc::new(StringArray::from(vec![row.status.as_str()])),
    ];
    for c in row.counts {
        cols.push(Arc::new(Int64Array::from(vec![c])));
    }
    cols.push(Arc::new(Int64Array::from(vec![row.api_calls])));
    cols.push(Arc::new(Int64Array::from(vec![row.rate_limited])));
    cols.push(Arc::new(StringArray::from(vec![row.error.clone()])));
    cols.push(Arc::new(Float64Array::from(vec![seconds])));
    cols.push(ts_array(std::iter::once(row.started_at)));
    cols.push(ts_array(std::iter::once(finished)));
    let batch = RecordBatch::try_new(runs_schema(), cols)?;
    let path = runs_root().join(sync).join(format!("{run_id}.parquet"));
    put_once(
        lake.store().as_ref(),
        &path,
        encode(runs_schema(), &[batch])?,
    )
    .await
}

/// `_ferry/sync_state/<sync>/lease`: the lease that keeps two runs of one
/// sync apart (see [`crate::lake::lease`]).
pub fn lease_path(sync: &str) -> Path {
    state_prefix(sync).join("lease")
}

/// A lock file an older ferry (before leases) holds while it syncs: while
/// one is there, an older binary may be running this sync, so a newer one
/// refuses (`--break-lock` removes it).
pub async fn refuse_legacy_lock(lake: &Lake, sync: &str, force: bool) -> Result<()> {
    let path = state_prefix(sync).join("lock");
    match lake.store().head(&path).await {
        Ok(_) if force => {
            lake.store().delete(&path).await?;
            Ok(())
        }
        Ok(_) => Err(crate::error::Error::Input(format!(
            "sync {sync}: {path} is the lock of an older ferry, which may be running this sync now. \
             Upgrade every ferry that syncs to this lake; once none of them runs, run again with --break-lock"
        ))),
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The generation in a state file's name (`g<generation>-...` or
/// `snapshot-g<generation>.parquet`); `None` for files named before
/// generations (by time).
fn generation_of(name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix("snapshot-g")
        .or_else(|| name.strip_prefix('g'))?;
    rest.split(['-', '.']).next()?.parse().ok()
}

/// The generation a sync's first lease starts at: one past any generation
/// its state files already carry.
pub async fn first_generation(lake: &Lake, sync: &str) -> Result<u64> {
    let mut max = 0u64;
    for prefix in [log_prefix(sync), state_prefix(sync)] {
        let listed: Vec<object_store::ObjectMeta> =
            match futures::TryStreamExt::try_collect(lake.store().list(Some(&prefix))).await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
        for o in listed {
            if let Some(g) = o.location.filename().and_then(generation_of) {
                max = max.max(g);
            }
        }
    }
    Ok(max + 1)
}

/// Log files of a sync written by runs after generation `after`.
pub async fn log_files_after(lake: &Lake, sync: &str, after: u64) -> Result<Vec<Path>> {
    let listed: Vec<object_store::ObjectMeta> = match futures::TryStreamExt::try_collect(
        lake.store().list(Some(&log_prefix(sync))),
    )
    .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(listed
        .into_iter()
        .filter(|o| {
            o.location
                .filename()
                .and_then(generation_of)
                .is_some_and(|g| g > after)
        })
        .map(|o| o.location)
        .collect())
}

/// An asynchronous write job (a Salesforce Bulk job) recorded in the lake
/// after it was opened and before its rows were uploaded, so a run killed
/// from then on resumes it (`_ferry/sync_state/<sync>/jobs/job-<id>.parquet`).
/// The job's settings are in the file's metadata; its rows are the file's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub job: String,
    pub object: String,
    /// `upsert` or `update`.
    pub operation: String,
    pub key_property: String,
    pub run_id: String,
    pub opened_at: DateTime<Utc>,
}

/// One row of a recorded job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub key: String,
    pub crm_id: Option<String>,
    pub hash: Option<String>,
    /// The properties sent, as JSON.
    pub payload: String,
    /// The sync created this record in an earlier run.
    pub created: bool,
    /// The write may create the record (an upsert of a row new to the sync).
    pub may_create: bool,
}

fn jobs_prefix(sync: &str) -> Path {
    state_prefix(sync).join("jobs")
}

fn job_path(sync: &str, job: &str) -> Path {
    jobs_prefix(sync).join(format!("job-{job}.parquet"))
}

fn job_schema(meta: Option<String>) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("crm_id", DataType::Utf8, true),
        Field::new("hash", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
        Field::new("created", DataType::Boolean, false),
        Field::new("may_create", DataType::Boolean, false),
    ];
    let schema = Schema::new(fields);
    Arc::new(match meta {
        Some(m) => schema.with_metadata([("ferry.job".to_string(), m)].into()),
        None => schema,
    })
}

/// Record `job` and its rows, durably. Write-once: a job is recorded once.
pub async fn record_job(
    lake: &Lake,
    sync: &str,
    record: &JobRecord,
    rows: &[JobRow],
) -> Result<()> {
    let meta = serde_json::to_string(record)
        .map_err(|e| crate::error::Error::Internal(format!("job record: {e}")))?;
    let schema = job_schema(Some(meta));
    let s = |f: &dyn Fn(&JobRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let b = |f: &dyn Fn(&JobRow) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            s(&|r| Some(r.key.clone())),
            s(&|r| r.crm_id.clone()),
            s(&|r| r.hash.clone()),
            s(&|r| Some(r.payload.clone())),
            b(&|r| r.created),
            b(&|r| r.may_create),
        ],
    )?;
    let bytes = encode(schema, &[batch])?;
    put_once(lake.store().as_ref(), &job_path(sync, &record.job), bytes).await
}

/// Jobs recorded and not yet settled, oldest first.
pub async fn open_jobs(lake: &Lake, sync: &str) -> Result<Vec<(JobRecord, Vec<JobRow>)>> {
    use arrow::array::{Array, AsArray};
    let listed: Vec<object_store::ObjectMeta> =
        match futures::TryStreamExt::try_collect(lake.store().list(Some(&jobs_prefix(sync)))).await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    let mut out = Vec::new();
    for o in listed {
        if !o
            .location
            .filename()
            .is_some_and(|n| n.starts_with("job-") && n.ends_with(".parquet"))
        {
            continue;
        }
        let bytes = lake.store().get(&o.location).await?.bytes().await?;
        let bad = |why: String| crate::error::Error::Context {
            message: format!(
                "the Bulk job record {} is unreadable ({why}); ferry cannot tell whether its rows were processed. \
                     Check the job in Salesforce (Setup → Bulk Data Load Jobs), then delete the file to send its rows again",
                o.location
            ),
            party: crate::error::Party::Storage,
            retryable: false,
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| bad(e.to_string()))?;
        let record: JobRecord = reader
            .schema()
            .metadata()
            .get("ferry.job")
            .and_then(|m| serde_json::from_str(m).ok())
            .ok_or_else(|| bad("no job settings in its metadata".into()))?;
        let mut rows = Vec::new();
        for batch in reader.build().map_err(|e| bad(e.to_string()))? {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let col = |i: usize| batch.column(i).as_string::<i32>().clone();
            let (key, id, hash, payload) = (col(0), col(1), col(2), col(3));
            let created = batch.column(4).as_boolean().clone();
            let may = batch.column(5).as_boolean().clone();
            for i in 0..batch.num_rows() {
                let opt =
                    |a: &arrow::array::StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
                rows.push(JobRow {
                    key: key.value(i).to_string(),
                    crm_id: opt(&id),
                    hash: opt(&hash),
                    payload: payload.value(i).to_string(),
                    created: created.value(i),
                    may_create: may.value(i),
                });
            }
        }
        out.push((record, rows));
    }
    out.sort_by_key(|(r, _)| r.opened_at);
    Ok(out)
}

/// A job whose outcomes are logged (or that never ran): its record goes.
pub async fn settle_job(lake: &Lake, sync: &str, job: &str) -> Result<()> {
    match lake.store().delete(&job_path(sync, job)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a revertible run's write replaced, for one record: written to
/// `_ferry/sync_revert/<sync>/<run_id>/<uuid>.parquet` before the batch is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousRow {
    pub key: String,
    pub crm_id: Option<String>,
    /// The record existed before the run wrote it.
    pub existed: bool,
    /// The replaced values as a JSON object (`""`: empty); `None` when the
    /// CRM could not say (its search had not caught up with the record).
    pub previous: Option<String>,
}

fn previous_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("crm_id", DataType::Utf8, true),
        Field::new("existed", DataType::Boolean, false),
        Field::new("previous", DataType::Utf8, true),
    ]))
}

/// `_ferry/sync_revert/`
pub fn revert_root() -> Path {
    Path::from_iter([META, "sync_revert"])
}

/// Record `rows` durably (write-once) for `run_id` of `sync`.
pub async fn record_previous(
    lake: &Lake,
    sync: &str,
    run_id: &RunId,
    rows: &[PreviousRow],
) -> Result<()> {
    let schema = previous_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| Some(r.key.clone())).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.crm_id.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.existed).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.previous.clone()).collect::<Vec<_>>(),
            )),
        ],
    )?;
    let path = revert_root()
        .join(sync)
        .join(run_id.as_str())
        .join(format!("{}.parquet", uuid::Uuid::new_v4().simple()));
    put_once(lake.store().as_ref(), &path, encode(schema, &[batch])?).await
}

/// The sync whose revertible run `run_id` is, if it recorded anything.
pub async fn sync_of_revertible_run(lake: &Lake, run_id: &str) -> Result<Option<String>> {
    let listed: Vec<object_store::ObjectMeta> =
        match futures::TryStreamExt::try_collect(lake.store().list(Some(&revert_root()))).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    Ok(listed.into_iter().find_map(|o| {
        let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
        // _ferry / sync_revert / <sync> / <run_id> / <file>
        match parts.as_slice() {
            [_, _, name, run, _] if run == run_id => Some(name.clone()),
            _ => None,
        }
    }))
}

/// What run `run_id` of `sync` recorded its writes replaced.
pub async fn previous_values(lake: &Lake, sync: &str, run_id: &str) -> Result<Vec<PreviousRow>> {
    use arrow::array::{Array, AsArray};
    let prefix = revert_root().join(sync).join(run_id);
    let listed: Vec<object_store::ObjectMeta> =
        match futures::TryStreamExt::try_collect(lake.store().list(Some(&prefix))).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    let mut rows = Vec::new();
    for o in listed {
        let bytes = lake.store().get(&o.location).await?.bytes().await?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
            .build()?;
        for batch in reader {
            let batch = batch?;
            let key = batch.column(0).as_string::<i32>();
            let id = batch.column(1).as_string::<i32>();
            let existed = batch.column(2).as_boolean();
            let previous = batch.column(3).as_string::<i32>();
            for i in 0..batch.num_rows() {
                rows.push(PreviousRow {
                    key: key.value(i).to_string(),
                    crm_id: (!id.is_null(i)).then(|| id.value(i).to_string()),
                    existed: existed.value(i),
                    previous: (!previous.is_null(i)).then(|| previous.value(i).to_string()),
                });
            }
        }
    }
    Ok(rows)
}
