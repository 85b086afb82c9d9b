//! A local Salesforce org: the REST API ferry's Salesforce destination
//! uses, following Salesforce's published contract:
//!
//! - `POST /services/oauth2/token`: the refresh-token grant and the JWT
//!   bearer grant (RS256, `iss` the client id, `sub` the username, `aud`
//!   the login host, `exp` at most 3 minutes ahead); the reply carries
//!   `instance_url`, and every other call goes to that host;
//! - `GET /services/data/vXX.X/sobjects/{object}/describe`;
//! - `GET /services/data/vXX.X/query?q=` and `queryAll` (a SOQL subset:
//!   fields, `WHERE` with `=`, `!=`, `<`, `>`, `IN`, `AND` on text, numbers,
//!   booleans and datetimes, `ORDER BY`, `LIMIT`, `SELECT COUNT()`), paged
//!   by `nextRecordsUrl`;
//! - sObject Collections: `POST|PATCH|DELETE /services/data/vXX.X/composite/sobjects`
//!   and `PATCH .../composite/sobjects/{object}/{externalIdField}` (upsert),
//!   at most 200 records, per-record results `{id, success, created, errors}`;
//! - Bulk API 2.0 ingest jobs ([`bulk`]) and query jobs ([`query`]), with
//!   their states and asynchronous timing;
//! - `GET /services/data/vXX.X/limits`.
//!
//! Like Salesforce: errors are `[{"message", "errorCode", "fields"}]`; an
//! unknown field or a value of the wrong type refuses the whole request
//! (400) while required fields, validation rules, unique and external-ID
//! duplicates refuse single records; an expired session answers 401
//! `INVALID_SESSION_ID`; every reply carries `Sforce-Limit-Info:
//! api-usage=N/MAX`, and past the daily budget calls answer 403
//! `REQUEST_LIMIT_EXCEEDED`. Faults can be injected: 503s, dropped
//! connections, and writes applied whose reply is lost.

#![allow(clippy::result_large_err)] // handlers return ready HTTP responses as errors

pub mod bulk;
pub mod query;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Form, Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
pub use store::{Check, FieldDef, Org, Record, Rule};

/// Injected faults, each a share of calls between 0 and 1.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answered 503 `SERVER_UNAVAILABLE` before anything is applied.
    pub server_error: f64,
    /// The connection drops before anything is applied.
    pub dropped: f64,
    /// A write is applied, then its reply is lost.
    pub lost_after_write: f64,
    /// Answered after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// A Bulk job fails part-way (`Failed`, the rest unprocessed).
    pub job_failure: f64,
}

/// A connected app allowed to log in.
#[derive(Debug, Clone)]
pub struct ConnectedApp {
    pub client_id: String,
    pub client_secret: String,
    /// Accepted by the refresh-token grant.
    pub refresh_token: String,
    /// The certificate's public key (PEM) that verifies JWT assertions.
    pub public_key_pem: Option<String>,
    /// The user a JWT's `sub` must name.
    pub username: String,
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub app: ConnectedApp,
    /// API requests per 24 hours (`DailyApiRequests`).
    pub daily: u64,
    /// Records per query page (Salesforce: 2,000).
    pub query_page: usize,
    /// Bulk API batches per 24 hours (`DailyBulkApiBatches`: 15,000).
    pub bulk_batches: u64,
    /// From `UploadComplete` to `InProgress`, in milliseconds.
    pub bulk_start_ms: u64,
    /// Processing time of each 10,000-record batch, in milliseconds.
    pub bulk_batch_ms: u64,
    /// Rows per page of a query job's results when the call names no
    /// `maxRecords`.
    pub query_results_page: usize,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            app: ConnectedApp {
                client_id: "ferry-sim-client".into(),
                client_secret: "ferry-sim-secret".into(),
                refresh_token: "ferry-sim-refresh".into(),
                public_key_pem: None,
                username: "ferry@example.com".into(),
            },
            daily: 15_000,
            query_page: 2_000,
            bulk_batches: 15_000,
            bulk_start_ms: 300,
            bulk_batch_ms: 100,
            query_results_page: 50_000,
            faults: Faults::default(),
        }
    }
}

struct State {
    config: SimConfig,
    org: Mutex<Org>,
    tokens: Mutex<std::collections::BTreeSet<String>>,
    used: AtomicU64,
    calls: AtomicU64,
    logins: AtomicU64,
    faults: Mutex<Faults>,
    /// Query results not yet read, by locator.
    cursors: Mutex<std::collections::BTreeMap<String, Vec<Value>>>,
    base: Mutex<String>,
    /// Bulk API 2.0 ingest jobs by id.
    jobs: Mutex<std::collections::BTreeMap<String, bulk::IngestJob>>,
    job_seq: AtomicU64,
    /// Bulk batches spent today.
    bulk_used: AtomicU64,
    /// Bulk API 2.0 query jobs by id.
    query_jobs: Mutex<std::collections::BTreeMap<String, query::QueryJob>>,
    /// Query jobs created today.
    query_jobs_used: AtomicU64,
}

/// A running emulator.
pub struct RunningSim {
    pub addr: SocketAddr,
    state: Arc<State>,
    handle: JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT` (the login host and the instance).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Run `f` on the org (tests plant records, define fields and rules).
    pub fn with_org<T>(&self, f: impl FnOnce(&mut Org) -> T) -> Option<T> {
        self.state.org.lock().ok().map(|mut o| f(&mut o))
    }

    /// Live records of `object`.
    pub fn records(&self, object: &str) -> Vec<Record> {
        self.with_org(|o| {
            o.object(object)
                .map(|s| s.records.values().filter(|r| !r.deleted).cloned().collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// API calls answered (logins excluded), and logins.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.state.calls.load(Ordering::SeqCst),
            self.state.logins.load(Ordering::SeqCst),
        )
    }

    /// Every Bulk ingest job the org has seen, by id.
    pub fn jobs(&self) -> std::collections::BTreeMap<String, bulk::IngestJob> {
        bulk::summary(&self.state)
    }

    /// Every Bulk ingest job's state and records processed, by id
    /// (without copying the jobs' rows).
    pub fn job_states(&self) -> std::collections::BTreeMap<String, (String, usize)> {
        self.state
            .jobs
            .lock()
            .map(|j| {
                j.iter()
                    .map(|(id, j)| (id.clone(), (j.state.clone(), j.processed)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Bulk batches per day, and spent.
    /// Every Bulk API 2.0 query job: id → (state, SOQL).
    pub fn query_jobs(&self) -> std::collections::BTreeMap<String, (String, String)> {
        query::summary(&self.state)
    }

    /// Bulk API 2.0 query jobs created (deleted ones included).
    pub fn query_jobs_created(&self) -> u64 {
        self.state.query_jobs_used.load(Ordering::SeqCst)
    }

    pub fn bulk_batches(&self) -> (u64, u64) {
        bulk::batches(&self.state)
    }

    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.state.faults.lock() {
            *f = faults;
        }
    }

    /// Every session ends (as when a session times out): calls answer 401
    /// `INVALID_SESSION_ID` until the client logs in again.
    pub fn expire_sessions(&self) {
        if let Ok(mut t) = self.state.tokens.lock() {
            t.clear();
        }
    }

    pub fn stop(self) {
        self.handle.abort();
    }
}

/// Start the emulator on `addr` (port 0 picks a free port).
pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<RunningSim> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let faults = Mutex::new(config.faults.clone());
    let state = Arc::new(State {
        config,
        org: Mutex::new(Org::default()),
        tokens: Mutex::new(Default::default()),
        used: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        logins: AtomicU64::new(0),
        faults,
        cursors: Mutex::new(Default::default()),
        base: Mutex::new(format!("http://{addr}")),
        jobs: Mutex::new(Default::default()),
        job_seq: AtomicU64::new(0),
        bulk_used: AtomicU64::new(0),
        query_jobs: Mutex::new(Default::default()),
        query_jobs_used: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data/{version}/limits", get(limits))
        .route(
            "/services/data/{version}/sobjects/{object}/describe",
            get(describe),
        )
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/queryAll", get(query_all))
        .route("/services/data/{version}/query/{locator}", get(query_more))
        .route(
            "/services/data/{version}/composite/sobjects",
            post(insert).patch(update).delete(delete),
        )
        .route(
            "/services/data/{version}/composite/sobjects/{object}/{field}",
            patch(upsert),
        )
        .route("/services/data/{version}/jobs/query", post(query::create))
        .route(
            "/services/data/{version}/jobs/query/{id}",
            get(query::info).patch(query::abort).delete(query::delete),
        )
        .route(
            "/services/data/{version}/jobs/query/{id}/results",
            get(query::results),
        )
        .route("/services/data/{version}/jobs/ingest", post(bulk::create))
        .route(
            "/services/data/{version}/jobs/ingest/{id}",
            get(bulk::info).patch(bulk::set_state),
        )
        .route(
            "/services/data/{version}/jobs/ingest/{id}/batches",
            axum::routing::put(bulk::upload),
        )
        .route(
            "/services/data/{version}/jobs/ingest/{id}/{which}/",
            get(bulk::results),
        )
        .route(
            "/services/data/{version}/jobs/ingest/{id}/{which}",
            get(bulk::results),
        )
        // Bulk uploads reach 150 MB.
        .layer(axum::extract::DefaultBodyLimit::max(160 << 20))
        .with_state(state.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("salesforce emulator stopped: {e}");
        }
    });
    Ok(RunningSim {
        addr,
        state,
        handle,
    })
}

type Shared = Arc<State>;

/// Salesforce's error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!([{"message": message, "errorCode": code, "fields": []}])),
    )
        .into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn dropped() -> Response {
    let broken = futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "emulated dropped connection",
        ))
    });
    Response::new(Body::from_stream(broken))
}

fn chance(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

/// Session, faults and the daily budget for one call.
async fn gate(s: &State, headers: &HeaderMap) -> std::result::Result<(), Response> {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| s.tokens.lock().is_ok_and(|set| set.contains(t))) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        ));
    }
    let f = s.faults.lock().map(|f| f.clone()).unwrap_or_default();
    if chance(f.slow) {
        tokio::time::sleep(std::time::Duration::from_millis(f.slow_ms)).await;
    }
    if chance(f.dropped) {
        return Err(dropped());
    }
    if chance(f.server_error) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_UNAVAILABLE",
            "Server temporarily unavailable (emulated)",
        ));
    }
    if s.used.load(Ordering::SeqCst) >= s.config.daily {
        return Err(with_usage(
            s,
            error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ),
        ));
    }
    s.used.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn with_usage(s: &State, mut r: Response) -> Response {
    let used = s.used.load(Ordering::SeqCst).min(s.config.daily);
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={used}/{}", s.config.daily)) {
        r.headers_mut().insert("sforce-limit-info", v);
    }
    r
}

fn ok(s: &State, body: Value) -> Response {
    with_usage(s, (StatusCode::OK, Json(body)).into_response())
}

fn refused(s: &State, e: store::RequestError) -> Response {
    with_usage(s, error(StatusCode::BAD_REQUEST, e.code, &e.message))
}

async fn token(
    AxState(s): AxState<Shared>,
    Form(form): Form<std::collections::BTreeMap<String, String>>,
) -> Response {
    let app = &s.config.app;
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let accepted = match grant {
        "refresh_token" => {
            if form.get("client_id") != Some(&app.client_id)
                || form.get("client_secret") != Some(&app.client_secret)
            {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            if form.get("refresh_token") != Some(&app.refresh_token) {
                return oauth_error("invalid_grant", "expired access/refresh token");
            }
            true
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some(pem) = &app.public_key_pem else {
                return oauth_error(
                    "invalid_grant",
                    "no certificate is uploaded for this connected app",
                );
            };
            let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) else {
                return oauth_error(
                    "invalid_grant",
                    "the connected app's certificate is unreadable",
                );
            };
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            v.set_audience(&[
                s.base.lock().map(|b| b.clone()).unwrap_or_default(),
                "https://login.salesforce.com".into(),
                "https://test.salesforce.com".into(),
            ]);
            v.set_issuer(&[&app.client_id]);
            let assertion = form.get("assertion").map(String::as_str).unwrap_or("");
            match jsonwebtoken::decode::<Value>(assertion, &key, &v) {
                Ok(t) => {
                    if t.claims["sub"].as_str() != Some(app.username.as_str()) {
                        return oauth_error("invalid_grant", "user hasn't approved this consumer");
                    }
                    let exp = t.claims["exp"].as_i64().unwrap_or(0);
                    if exp > chrono::Utc::now().timestamp() + 300 {
                        return oauth_error(
                            "invalid_grant",
                            "expiration time is too far in the future",
                        );
                    }
                    true
                }
                Err(e) => return oauth_error("invalid_grant", &format!("invalid assertion: {e}")),
            }
        }
        other => {
            return oauth_error(
                "unsupported_grant_type",
                &format!("grant type not supported: {other}"),
            );
        }
    };
    if !accepted {
        return oauth_error("invalid_grant", "authentication failure");
    }
    s.logins.fetch_add(1, Ordering::SeqCst);
    let access = format!("00D000000000001!{}", uuid::Uuid::new_v4().simple());
    if let Ok(mut t) = s.tokens.lock() {
        t.insert(access.clone());
    }
    let instance = s.base.lock().map(|b| b.clone()).unwrap_or_default();
    Json(json!({
        "access_token": access,
        "instance_url": instance,
        "id": format!("{instance}/id/00D000000000001/005000000000001"),
        "token_type": "Bearer",
        "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
        "signature": "emulated",
    }))
    .into_response()
}

async fn limits(AxState(s): AxState<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let used = s.used.load(Ordering::SeqCst);
    ok(
        &s,
        json!({
            "DailyApiRequests": {"Max": s.config.daily, "Remaining": s.config.daily.saturating_sub(used)},
            "DailyBulkApiBatches": {
                "Max": s.config.bulk_batches,
                "Remaining": s.config.bulk_batches.saturating_sub(s.bulk_used.load(Ordering::SeqCst)),
            },
            "DailyBulkV2QueryJobs": {
                "Max": query::DAILY_QUERY_JOBS,
                "Remaining": query::DAILY_QUERY_JOBS.saturating_sub(s.query_jobs_used.load(Ordering::SeqCst)),
            },
        }),
    )
}

async fn describe(
    AxState(s): AxState<Shared>,
    Path((_, object)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let found = s
        .org
        .lock()
        .ok()
        .and_then(|o| o.object(&object).map(|o| o.describe()));
    match found {
        Some(d) => ok(&s, d),
        None => with_usage(
            &s,
            error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!(
                    "The requested resource does not exist: sObject type '{object}' is not supported."
                ),
            ),
        ),
    }
}

async fn run_query(s: &State, q: Option<String>, all: bool) -> Response {
    let soql = q.unwrap_or_default();
    if soql.len() > 100_000 {
        return refused(
            s,
            store::RequestError {
                code: "MALFORMED_QUERY",
                message: "SOQL statements cannot be longer than 100,000 characters".into(),
            },
        );
    }
    let result = s.org.lock().map_err(|_| ()).map(|o| o.query(&soql, all));
    let count = store::parse_soql(&soql).is_ok_and(|q| q.is_count());
    match result {
        Ok(Ok((_, records))) if count => ok(
            s,
            json!({"totalSize": records.len(), "done": true, "records": []}),
        ),
        Ok(Ok((_, records))) => page(s, records),
        Ok(Err(e)) => refused(s, e),
        Err(()) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN_EXCEPTION",
            "org lock",
        ),
    }
}

fn page(s: &State, mut records: Vec<Value>) -> Response {
    let total = records.len();
    let rest = if records.len() > s.config.query_page {
        records.split_off(s.config.query_page)
    } else {
        Vec::new()
    };
    let mut body = json!({"totalSize": total, "done": rest.is_empty(), "records": records});
    if !rest.is_empty() {
        let locator = format!(
            "01g{}-{}",
            uuid::Uuid::new_v4().simple(),
            s.config.query_page
        );
        body["nextRecordsUrl"] = json!(format!("/services/data/v60.0/query/{locator}"));
        if let Ok(mut c) = s.cursors.lock() {
            c.insert(locator, rest);
        }
    }
    ok(s, body)
}

#[derive(serde::Deserialize)]
struct Q {
    q: Option<String>,
}

async fn query(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Query<Q>) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    run_query(&s, q.q, false).await
}

async fn query_all(
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<Q>,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    run_query(&s, q.q, true).await
}

async fn query_more(
    AxState(s): AxState<Shared>,
    Path((_, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let rest = s.cursors.lock().ok().and_then(|mut c| c.remove(&locator));
    match rest {
        Some(records) => {
            let n = records.len();
            let mut r = page(&s, records);
            // totalSize is the whole query's; close enough for ferry, which pages by nextRecordsUrl.
            let _ = n;
            r.headers_mut().remove("content-length");
            r
        }
        None => with_usage(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY_LOCATOR",
                "invalid query locator",
            ),
        ),
    }
}

/// `{"allOrNone": bool, "records": [...]}`, at most 200 records.
fn collection(
    s: &State,
    body: &Value,
) -> std::result::Result<(bool, Vec<serde_json::Map<String, Value>>), Response> {
    let Some(records) = body["records"].as_array() else {
        return Err(refused(
            s,
            store::RequestError {
                code: "JSON_PARSER_ERROR",
                message: "The request body must have a records list".into(),
            },
        ));
    };
    if records.len() > 200 {
        return Err(refused(
            s,
            store::RequestError {
                code: "EXCEEDED_ID_LIMIT",
                message: "record limit reached. cannot submit more than 200 records into this call"
                    .into(),
            },
        ));
    }
    let mut out = Vec::new();
    for r in records {
        match r.as_object() {
            Some(m) => out.push(m.clone()),
            None => {
                return Err(refused(
                    s,
                    store::RequestError {
                        code: "JSON_PARSER_ERROR",
                        message: "each record must be an object".into(),
                    },
                ));
            }
        }
    }
    Ok((body["allOrNone"].as_bool().unwrap_or(false), out))
}

/// Per-record results, as Salesforce writes them; all-or-none rolls back
/// every record when one fails.
fn results(
    s: &State,
    before: Option<Org>,
    all_or_none: bool,
    outcomes: Vec<store::Result1>,
    upsert: bool,
) -> Response {
    let failed = outcomes.iter().any(|o| o.is_err());
    if all_or_none
        && failed
        && let (Some(before), Ok(mut org)) = (before, s.org.lock())
    {
        *org = before;
    }
    let body: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok((id, created)) if !(all_or_none && failed) => {
                let mut v = json!({"id": id, "success": true, "errors": []});
                if upsert {
                    v["created"] = json!(created);
                }
                v
            }
            Ok(_) => json!({"success": false, "errors": [store::record_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records were valid and the request was using AllOrNone header", &[])]}),
            Err(e) => json!({"success": false, "errors": [e]}),
        })
        .collect();
    let f = s.faults.lock().map(|f| f.clone()).unwrap_or_default();
    if chance(f.lost_after_write) {
        return dropped();
    }
    ok(s, Value::Array(body))
}

/// One sObject Collections write: the session and faults, the request's
/// records, `write` on the org (a copy kept for an all-or-none rollback),
/// and the per-record results.
async fn write(
    s: &State,
    headers: &HeaderMap,
    body: &Value,
    upsert: bool,
    write: impl FnOnce(
        &mut Org,
        &[serde_json::Map<String, Value>],
    ) -> std::result::Result<Vec<store::Result1>, store::RequestError>,
) -> Response {
    if let Err(r) = gate(s, headers).await {
        return r;
    }
    let (aon, records) = match collection(s, body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (before, out) = {
        let Ok(mut org) = s.org.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "org lock",
            );
        };
        let before = aon.then(|| org.clone());
        (before, write(&mut org, &records))
    };
    match out {
        Ok(o) => results(s, before, aon, o, upsert),
        Err(e) => refused(s, e),
    }
}

async fn insert(
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    write(&s, &headers, &body, false, |org, records| {
        let object = records
            .first()
            .and_then(|r| r["attributes"]["type"].as_str())
            .unwrap_or("")
            .to_string();
        org.insert(&object, records)
    })
    .await
}

async fn update(
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    write(&s, &headers, &body, false, |org, records| {
        org.update(records)
    })
    .await
}

async fn upsert(
    AxState(s): AxState<Shared>,
    Path((_, object, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    write(&s, &headers, &body, true, |org, records| {
        org.upsert(&object, &field, records)
    })
    .await
}

async fn delete(
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = gate(&s, &headers).await {
        return r;
    }
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let ids: Vec<String> = params
        .iter()
        .find(|(k, _)| k == "ids")
        .map(|(_, v)| {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if ids.len() > 200 {
        return refused(
            &s,
            store::RequestError {
                code: "EXCEEDED_ID_LIMIT",
                message: "record limit reached. cannot submit more than 200 records into this call"
                    .into(),
            },
        );
    }
    let aon = params.iter().any(|(k, v)| k == "allOrNone" && v == "true");
    let (before, out) = {
        let Ok(mut org) = s.org.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                "org lock",
            );
        };
        let before = aon.then(|| org.clone());
        (before, org.delete(&ids))
    };
    results(&s, before, aon, out, false)
}
