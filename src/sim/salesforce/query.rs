//! Bulk API 2.0 query jobs, as Salesforce runs them:
//!
//! - `POST /jobs/query` with `{"operation": "query" | "queryAll", "query"}`
//!   checks the SOQL at once (an unknown field or object answers 400) and
//!   refuses what Bulk 2.0 queries do not take: `COUNT()`, `ORDER BY`,
//!   `LIMIT`; each job spends one of the org's daily query jobs
//!   (`DailyBulkV2QueryJobs`, 10,000 per 24 hours);
//! - the job is `UploadComplete`, then after `bulk_start_ms` `InProgress`,
//!   when the query runs (its rows are those of that moment, not of the
//!   job's creation), then `JobComplete` after `bulk_batch_ms` per 10,000
//!   rows; `PATCH` with `Aborted` stops it;
//! - `GET /jobs/query/{id}/results?maxRecords=&locator=` answers CSV only
//!   once the job is complete (before, 400 `INVALIDJOBSTATE`), a page of at
//!   most `maxRecords` rows (default `query_results_page`) with
//!   `Sforce-NumberOfRecords` and `Sforce-Locator` (the next page's
//!   opaque locator, `null` after the last); an unknown locator answers
//!   400 `INVALID_LOCATOR`; `DELETE /jobs/query/{id}` removes the job.
//!
//! Null values are empty cells; booleans `true`/`false`; numbers and times
//! as text.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::bulk::{invalid, not_found};
use super::{Shared, State, dropped, error, gate, ok, with_usage};

/// Query jobs per 24 hours (`DailyBulkV2QueryJobs`).
pub const DAILY_QUERY_JOBS: u64 = 10_000;
/// Rows per processing step.
const CHUNK: usize = 10_000;

/// One query job.
#[derive(Debug, Clone)]
pub struct QueryJob {
    pub id: String,
    pub operation: String,
    pub object: String,
    pub query: String,
    pub state: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub error_message: Option<String>,
}

impl QueryJob {
    fn info(&self, version: &str) -> Value {
        json!({
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": "005000000000001AAA",
            "createdDate": super::store::sf_time(self.created),
            "systemModstamp": super::store::sf_time(chrono::Utc::now()),
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": version.trim_start_matches('v').parse::<f64>().unwrap_or(60.0),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "jobType": "V2Query",
            "numberRecordsProcessed": if self.state == "JobComplete" { self.rows.len() } else { 0 },
            "retries": 0,
            "totalProcessingTime": 0,
            "errorMessage": self.error_message,
        })
    }
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
    if !matches!(operation, "query" | "queryAll") {
        return invalid(
            &s,
            "INVALIDJOB",
            &format!("InvalidJob : Invalid operation: {operation:?}"),
        );
    }
    let query = body["query"].as_str().unwrap_or("").to_string();
    let parsed = match super::store::parse_soql(&query) {
        Ok(q) => q,
        Err(e) => return invalid(&s, e.code, &e.message),
    };
    let unsupported = if parsed.is_count() {
        Some("Aggregate Relationships (COUNT()) are not supported in Bulk API 2.0 queries")
    } else if parsed.order.is_some() {
        Some("ORDER BY is not supported in Bulk API 2.0 queries")
    } else if parsed.limit.is_some() {
        Some("LIMIT is not supported in Bulk API 2.0 queries")
    } else {
        None
    };
    if let Some(why) = unsupported {
        return invalid(&s, "API_ERROR", why);
    }
    // The query is checked now (fields, object); it runs later.
    let checked = s
        .org
        .lock()
        .map_err(|_| ())
        .map(|o| o.query_rows(&format!("{query} LIMIT 0"), false));
    let object = match checked {
        Ok(Ok(_)) => parsed.from.clone(),
        Ok(Err(e)) => return invalid(&s, e.code, &e.message),
        Err(()) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "org lock",
            );
        }
    };
    if s.query_jobs_used.fetch_add(1, Ordering::SeqCst) >= DAILY_QUERY_JOBS {
        return invalid(
            &s,
            "EXCEEDED_QUOTA",
            "The org's daily allocation of Bulk API 2.0 query jobs (DailyBulkV2QueryJobs) is spent",
        );
    }
    let id = format!(
        "750{:0>12}QQQ",
        s.job_seq.fetch_add(1, Ordering::SeqCst) + 1
    );
    let job = QueryJob {
        id: id.clone(),
        operation: operation.into(),
        object,
        query,
        state: "UploadComplete".into(),
        created: chrono::Utc::now(),
        header: Vec::new(),
        rows: Vec::new(),
        error_message: None,
    };
    let info = job.info(&version);
    if let Ok(mut jobs) = s.query_jobs.lock() {
        jobs.insert(id.clone(), job);
    }
    tokio::spawn(process(s.clone(), id));
    if s.faults
        .lock()
        .is_ok_and(|f| super::chance(f.lost_after_write))
    {
        return dropped();
    }
    ok(&s, info)
}

/// Run the query when the job starts, then take the time its size takes.
async fn process(s: Arc<State>, id: String) {
    tokio::time::sleep(std::time::Duration::from_millis(s.config.bulk_start_ms)).await;
    let Some((query, all)) = s.query_jobs.lock().ok().and_then(|mut j| {
        let job = j.get_mut(&id)?;
        if job.state != "UploadComplete" {
            return None;
        }
        job.state = "InProgress".into();
        Some((job.query.clone(), job.operation == "queryAll"))
    }) else {
        return;
    };
    let result = s
        .org
        .lock()
        .map_err(|_| ())
        .map(|o| o.query_rows(&query, all));
    let (header, rows) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            finish(&s, &id, "Failed", Some(e.message), (Vec::new(), Vec::new()));
            return;
        }
        Err(()) => return,
    };
    let failed = s.faults.lock().is_ok_and(|f| super::chance(f.job_failure));
    for _ in 0..rows.len().div_ceil(CHUNK).max(1) {
        tokio::time::sleep(std::time::Duration::from_millis(s.config.bulk_batch_ms)).await;
        let aborted = s
            .query_jobs
            .lock()
            .map(|j| j.get(&id).is_none_or(|j| j.state == "Aborted"))
            .unwrap_or(true);
        if aborted {
            return;
        }
    }
    if failed {
        finish(
            &s,
            &id,
            "Failed",
            Some("InternalServerError : the query job failed while processing (emulated)".into()),
            (Vec::new(), Vec::new()),
        );
        return;
    }
    finish(&s, &id, "JobComplete", None, (header, rows));
}

fn finish(
    s: &State,
    id: &str,
    state: &str,
    message: Option<String>,
    (header, rows): (Vec<String>, Vec<Vec<String>>),
) {
    if let Ok(mut j) = s.query_jobs.lock()
        && let Some(job) = j.get_mut(id)
        && job.state != "Aborted"
    {
        job.state = state.into();
        job.error_message = message;
        job.header = header;
        job.rows = rows;
    }
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
        .query_jobs
        .lock()
        .ok()
        .and_then(|j| j.get(&id).map(|j| j.info(&version)));
    match info {
        Some(i) => ok(&s, i),
        None => not_found(&s, &id),
    }
}

pub(super) async fn abort(
    AxState(s): AxState<Shared>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let Ok(mut jobs) = s.query_jobs.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN_EXCEPTION",
            "jobs lock",
        );
    };
    let Some(job) = jobs.get_mut(&id) else {
        drop(jobs);
        return not_found(&s, &id);
    };
    let to = body["state"].as_str().unwrap_or("");
    if to != "Aborted" || !matches!(job.state.as_str(), "UploadComplete" | "InProgress") {
        let msg = format!("Invalid job state transition from {} to {to}", job.state);
        drop(jobs);
        return invalid(&s, "INVALIDJOBSTATE", &msg);
    }
    job.state = "Aborted".into();
    let info = job.info(&version);
    drop(jobs);
    ok(&s, info)
}

pub(super) async fn delete(
    AxState(s): AxState<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let gone = s.query_jobs.lock().ok().and_then(|mut j| j.remove(&id));
    match gone {
        Some(_) => with_usage(&s, StatusCode::NO_CONTENT.into_response()),
        None => not_found(&s, &id),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ResultsQuery {
    locator: Option<String>,
    #[serde(rename = "maxRecords")]
    max_records: Option<String>,
}

/// The opaque locator of the page starting at row `at`.
fn locator(id: &str, at: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{id}:{at}"))
}

fn offset(id: &str, locator: &str) -> Option<usize> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(locator)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (job, at) = text.split_once(':')?;
    (job == id).then(|| at.parse().ok()).flatten()
}

pub(super) async fn results(
    AxState(s): AxState<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<ResultsQuery>,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let max = match q.max_records.as_deref().map(str::parse::<usize>) {
        None => s.config.query_results_page,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return invalid(
                &s,
                "INVALID_MAXRECORDS",
                "maxRecords must be a positive integer",
            );
        }
    };
    let start = match q.locator.as_deref() {
        None | Some("") => 0,
        Some(l) => match offset(&id, l) {
            Some(at) => at,
            None => return invalid(&s, "INVALID_LOCATOR", &format!("Invalid locator: {l}")),
        },
    };
    let page = {
        let Ok(jobs) = s.query_jobs.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "jobs lock",
            );
        };
        let Some(job) = jobs.get(&id) else {
            drop(jobs);
            return not_found(&s, &id);
        };
        if job.state != "JobComplete" {
            let msg = format!(
                "Job {id} is {}: results are available once it is JobComplete",
                job.state
            );
            drop(jobs);
            return invalid(&s, "INVALIDJOBSTATE", &msg);
        }
        let end = start.saturating_add(max).min(job.rows.len());
        let mut w = csv::WriterBuilder::new()
            .quote_style(csv::QuoteStyle::Always)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let _ = w.write_record(&job.header);
        for r in job.rows.get(start..end).unwrap_or_default() {
            let _ = w.write_record(r);
        }
        let next = (end < job.rows.len()).then(|| locator(&id, end));
        (
            w.into_inner().unwrap_or_default(),
            end.saturating_sub(start),
            next,
        )
    };
    let (body, n, next) = page;
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv"),
    );
    if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
        h.insert("sforce-numberofrecords", v);
    }
    if let Ok(v) = HeaderValue::from_str(next.as_deref().unwrap_or("null")) {
        h.insert("sforce-locator", v);
    }
    with_usage(&s, r)
}

/// Every query job, for tests: id → (state, query).
pub(super) fn summary(s: &State) -> std::collections::BTreeMap<String, (String, String)> {
    s.query_jobs
        .lock()
        .map(|j| {
            j.iter()
                .map(|(id, job)| (id.clone(), (job.state.clone(), job.query.clone())))
                .collect()
        })
        .unwrap_or_default()
}
