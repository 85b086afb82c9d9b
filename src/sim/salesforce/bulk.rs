//! Bulk API 2.0 ingest jobs, as Salesforce runs them:
//!
//! - `POST /jobs/ingest` creates a job (`Open`);
//! - `PUT /jobs/ingest/{id}/batches` takes the CSV, once: a second upload
//!   is refused with "Found multiple contents";
//! - `PATCH /jobs/ingest/{id}` with `UploadComplete` queues it, `Aborted`
//!   stops it; other transitions answer `INVALIDJOBSTATE`;
//! - processing is asynchronous: after `bulk_start_ms` the job is
//!   `InProgress` and works through 10,000-record batches, `bulk_batch_ms`
//!   each, spending one of the org's daily bulk batches per batch; then
//!   `JobComplete` (or `Failed`: a header naming an unknown field, the
//!   daily batches spent, an injected failure part-way);
//! - `successfulResults/` (`sf__Id`, `sf__Created`), `failedResults/`
//!   (`sf__Id`, `sf__Error` as `CODE:message:fields --`) and
//!   `unprocessedrecords/` answer CSV in no particular order, echoing the
//!   uploaded values; the first two only once the job has ended.
//!
//! In the CSV an empty cell leaves a field alone and `#N/A` clears it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use super::{Shared, State, chance, dropped, error, gate, ok, with_usage};

/// The largest upload, after Salesforce's base64 encoding.
const MAX_UPLOAD_BASE64: usize = 150 << 20;
/// Records per internal batch.
const BATCH: usize = 10_000;

/// One ingest job.
#[derive(Debug, Clone)]
pub struct IngestJob {
    pub id: String,
    pub object: String,
    pub operation: String,
    pub external_id: Option<String>,
    pub state: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub uploaded: bool,
    pub processed: usize,
    pub successful: Vec<Vec<String>>,
    pub failed: Vec<Vec<String>>,
    /// Index of the first row not processed (when the job stopped early).
    pub stopped_at: Option<usize>,
    pub error_message: Option<String>,
}

impl IngestJob {
    fn info(&self, version: &str) -> Value {
        json!({
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": "005000000000001AAA",
            "createdDate": super::store::sf_time(self.created),
            "systemModstamp": super::store::sf_time(chrono::Utc::now()),
            "state": self.state,
            "externalIdFieldName": self.external_id,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": version.trim_start_matches('v').parse::<f64>().unwrap_or(60.0),
            "contentUrl": format!("services/data/{version}/jobs/ingest/{}/batches", self.id),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "jobType": "V2Ingest",
            "numberRecordsProcessed": self.processed,
            "numberRecordsFailed": self.failed.len(),
            "retries": 0,
            "totalProcessingTime": 0,
            "errorMessage": self.error_message,
        })
    }

    fn ended(&self) -> bool {
        matches!(self.state.as_str(), "JobComplete" | "Failed" | "Aborted")
    }
}

pub(super) fn invalid(s: &State, code: &str, message: &str) -> Response {
    with_usage(s, error(StatusCode::BAD_REQUEST, code, message))
}

pub(super) fn not_found(s: &State, id: &str) -> Response {
    with_usage(
        s,
        error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("The requested resource does not exist: job {id}"),
        ),
    )
}

pub(super) async fn create(
    AxState(s): AxState<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let operation = body["operation"].as_str().unwrap_or("");
    if !matches!(
        operation,
        "insert" | "update" | "upsert" | "delete" | "hardDelete"
    ) {
        return invalid(
            &s,
            "INVALIDJOB",
            &format!("InvalidJob : Invalid operation: {operation:?}"),
        );
    }
    let object = body["object"].as_str().unwrap_or("");
    let known = s
        .org
        .lock()
        .ok()
        .and_then(|o| o.object(object).map(|o| o.name.clone()));
    let Some(object) = known else {
        return invalid(
            &s,
            "INVALIDJOB",
            &format!("InvalidJob : Invalid object: {object}"),
        );
    };
    let external_id = body["externalIdFieldName"].as_str().map(str::to_string);
    if operation == "upsert" && external_id.is_none() {
        return invalid(
            &s,
            "INVALIDJOB",
            "InvalidJob : External ID was blank for upsert",
        );
    }
    let id = format!(
        "750{:0>12}AAA",
        s.job_seq.fetch_add(1, Ordering::SeqCst) + 1
    );
    let job = IngestJob {
        id: id.clone(),
        object,
        operation: operation.into(),
        external_id,
        state: "Open".into(),
        created: chrono::Utc::now(),
        header: Vec::new(),
        rows: Vec::new(),
        uploaded: false,
        processed: 0,
        successful: Vec::new(),
        failed: Vec::new(),
        stopped_at: None,
        error_message: None,
    };
    let info = job.info(&version);
    if let Ok(mut jobs) = s.jobs.lock() {
        jobs.insert(id, job);
    }
    ok(&s, info)
}

pub(super) async fn info(
    AxState(s): AxState<Shared>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let info = s
        .jobs
        .lock()
        .ok()
        .and_then(|j| j.get(&id).map(|j| j.info(&version)));
    match info {
        Some(i) => ok(&s, i),
        None => not_found(&s, &id),
    }
}

pub(super) async fn upload(
    AxState(s): AxState<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    if body.len() * 4 / 3 > MAX_UPLOAD_BASE64 {
        return with_usage(
            &s,
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "EXCEEDED_QUOTA",
                "the job data exceeds 150 MB after base64 encoding",
            ),
        );
    }
    let parsed = parse_csv(&body);
    let lost = {
        let Ok(mut jobs) = s.jobs.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "jobs lock",
            );
        };
        let Some(job) = jobs.get_mut(&id) else {
            return not_found(&s, &id);
        };
        if job.uploaded {
            return invalid(
                &s,
                "BULK_API_ERROR",
                &format!(
                    "Found multiple contents for job: <{id}>, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure the job contents are only uploaded ONCE."
                ),
            );
        }
        if job.state != "Open" {
            return invalid(
                &s,
                "INVALIDJOBSTATE",
                &format!(
                    "Job {id} is {}: data can be uploaded only to an Open job",
                    job.state
                ),
            );
        }
        let (header, rows) = match parsed {
            Ok(p) => p,
            Err(e) => {
                return invalid(&s, "ClientInputError", &format!("ClientInputError : {e}"));
            }
        };
        job.header = header;
        job.rows = rows;
        job.uploaded = true;
        s.faults.lock().is_ok_and(|f| chance(f.lost_after_write))
    };
    if lost {
        return dropped();
    }
    with_usage(&s, StatusCode::CREATED.into_response())
}

fn parse_csv(bytes: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut r = csv::ReaderBuilder::new().from_reader(bytes);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| format!("the CSV header is unreadable: {e}"))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| format!("line {}: {e}", i + 2))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((header, rows))
}

pub(super) async fn set_state(
    AxState(s): AxState<Shared>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let to = body["state"].as_str().unwrap_or("");
    let (info, start) = {
        let Ok(mut jobs) = s.jobs.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "jobs lock",
            );
        };
        let Some(job) = jobs.get_mut(&id) else {
            return not_found(&s, &id);
        };
        let start = match (job.state.as_str(), to) {
            ("Open", "UploadComplete") => {
                job.state = "UploadComplete".into();
                true
            }
            ("Open" | "UploadComplete" | "InProgress", "Aborted") => {
                job.state = "Aborted".into();
                false
            }
            (from, to) => {
                return invalid(
                    &s,
                    "INVALIDJOBSTATE",
                    &format!("Invalid job state transition from {from} to {to}"),
                );
            }
        };
        (job.info(&version), start)
    };
    if start {
        tokio::spawn(process(s.clone(), id));
    }
    if s.faults.lock().is_ok_and(|f| chance(f.lost_after_write)) {
        return dropped();
    }
    ok(&s, info)
}

/// Work through a queued job, batch by batch, as Salesforce does.
async fn process(s: Arc<State>, id: String) {
    let (start_ms, batch_ms, daily) = (
        s.config.bulk_start_ms,
        s.config.bulk_batch_ms,
        s.config.bulk_batches,
    );
    tokio::time::sleep(std::time::Duration::from_millis(start_ms)).await;
    let Some((object, operation, external_id, header, rows)) =
        s.jobs.lock().ok().and_then(|mut j| {
            let job = j.get_mut(&id)?;
            if job.state != "UploadComplete" {
                return None;
            }
            job.state = "InProgress".into();
            Some((
                job.object.clone(),
                job.operation.clone(),
                job.external_id.clone(),
                job.header.clone(),
                std::mem::take(&mut job.rows),
            ))
        })
    else {
        return;
    };
    let finish = |state: &str,
                  stopped_at: Option<usize>,
                  message: Option<String>,
                  rows: Vec<Vec<String>>| {
        if let Ok(mut j) = s.jobs.lock()
            && let Some(job) = j.get_mut(&id)
        {
            if job.state != "Aborted" {
                job.state = state.into();
            }
            job.stopped_at = stopped_at.or(job.stopped_at);
            job.error_message = message.or(job.error_message.take());
            job.rows = rows;
        }
    };
    // A header naming a field the object lacks fails the whole job.
    let unknown: Option<String> = s.org.lock().ok().and_then(|o| {
        let obj = o.object(&object)?;
        header.iter().find(|h| obj.field(h).is_none()).cloned()
    });
    if let Some(f) = unknown {
        finish(
            "Failed",
            Some(0),
            Some(format!("InvalidBatch : Field name not found : {f}")),
            rows,
        );
        return;
    }
    // An injected failure stops the job part-way, after some batches.
    let fail_at = s
        .faults
        .lock()
        .ok()
        .filter(|f| chance(f.job_failure))
        .map(|_| rand::random_range(0..rows.len().div_ceil(BATCH).max(1)));
    for (n, start) in (0..rows.len()).step_by(BATCH).enumerate() {
        tokio::time::sleep(std::time::Duration::from_millis(batch_ms)).await;
        let aborted = s
            .jobs
            .lock()
            .map(|j| j.get(&id).is_none_or(|j| j.state == "Aborted"))
            .unwrap_or(true);
        if aborted {
            finish("Aborted", Some(start), None, rows);
            return;
        }
        if fail_at == Some(n) {
            finish(
                "Failed",
                Some(start),
                Some("InternalServerError : the job failed while processing (emulated)".into()),
                rows,
            );
            return;
        }
        if s.bulk_used.fetch_add(1, Ordering::SeqCst) >= daily {
            finish(
                "Failed",
                Some(start),
                Some("ExceededQuota : the org's daily Bulk API batch allocation is spent".into()),
                rows,
            );
            return;
        }
        let end = (start + BATCH).min(rows.len());
        let records: Vec<serde_json::Map<String, Value>> = rows[start..end]
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                m.insert("attributes".into(), json!({"type": object}));
                for (h, v) in header.iter().zip(r) {
                    match v.as_str() {
                        "" => {}
                        "#N/A" => {
                            m.insert(h.clone(), Value::Null);
                        }
                        v => {
                            m.insert(h.clone(), json!(v));
                        }
                    }
                }
                m
            })
            .collect();
        let results = match s.org.lock() {
            Ok(mut org) => org.bulk(&object, &operation, external_id.as_deref(), &records),
            Err(_) => return,
        };
        if let Ok(mut j) = s.jobs.lock()
            && let Some(job) = j.get_mut(&id)
        {
            for (r, res) in rows[start..end].iter().zip(results) {
                match res {
                    Ok((rid, created)) => {
                        let mut line = vec![rid, created.to_string()];
                        line.extend(r.iter().cloned());
                        job.successful.push(line);
                    }
                    Err(e) => {
                        let fields: Vec<String> = e["fields"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|f| f.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let mut line = vec![
                            String::new(),
                            format!(
                                "{}:{}:{} --",
                                e["statusCode"].as_str().unwrap_or("UNKNOWN_EXCEPTION"),
                                e["message"].as_str().unwrap_or(""),
                                fields.join(",")
                            ),
                        ];
                        line.extend(r.iter().cloned());
                        job.failed.push(line);
                    }
                }
                job.processed += 1;
            }
        }
    }
    finish("JobComplete", None, None, rows);
}

fn csv_reply(s: &State, header: Vec<String>, mut rows: Vec<Vec<String>>) -> Response {
    rows.shuffle(&mut rand::rng());
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = w.write_record(&header);
    for r in &rows {
        let _ = w.write_record(r);
    }
    let body = w.into_inner().unwrap_or_default();
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/csv"),
    );
    with_usage(s, r)
}

pub(super) async fn results(
    AxState(s): AxState<Shared>,
    Path((_, id, which)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let job = s.jobs.lock().ok().and_then(|j| j.get(&id).cloned());
    let Some(job) = job else {
        return not_found(&s, &id);
    };
    let with = |first: &[&str]| -> Vec<String> {
        first
            .iter()
            .map(|x| x.to_string())
            .chain(job.header.iter().cloned())
            .collect()
    };
    match which.as_str() {
        "successfulResults" | "failedResults" if !job.ended() => invalid(
            &s,
            "INVALIDJOBSTATE",
            &format!(
                "Job {id} is {}: results are available once it has ended",
                job.state
            ),
        ),
        "successfulResults" => csv_reply(&s, with(&["sf__Id", "sf__Created"]), job.successful),
        "failedResults" => csv_reply(&s, with(&["sf__Id", "sf__Error"]), job.failed),
        "unprocessedrecords" => {
            let rest = match (job.state.as_str(), job.stopped_at) {
                (_, Some(at)) => job.rows.get(at..).map(<[_]>::to_vec).unwrap_or_default(),
                ("Open" | "UploadComplete" | "Aborted", None) => job.rows.clone(),
                _ => Vec::new(),
            };
            csv_reply(&s, with(&[]), rest)
        }
        _ => not_found(&s, &id),
    }
}

/// The org's daily Bulk API batches: (max, used).
pub(super) fn batches(s: &State) -> (u64, u64) {
    (s.config.bulk_batches, s.bulk_used.load(Ordering::SeqCst))
}

/// Every job, for tests: id → (state, rows uploaded, successful, failed).
pub(super) fn summary(s: &State) -> BTreeMap<String, IngestJob> {
    s.jobs.lock().map(|j| j.clone()).unwrap_or_default()
}
