//! A generic vendor REST API for tests, demos and benchmarks: the same
//! records behind every pagination style ferry's declarative REST source
//! supports, every auth scheme, a parent → child endpoint, an
//! `updated_since` filter, and a per-second rate limit with 429 and
//! `Retry-After`.
#![allow(clippy::result_large_err)] // handlers return ready HTTP responses as errors
//!
//! Endpoints (records are `{"id", "name", "email", "updated_at", "account": {...}, "tags": [...]}`):
//!
//! | path | pagination |
//! |---|---|
//! | `GET /cursor/items?cursor=&limit=` | `{"data": [...], "meta": {"next_cursor": "..."}}` (absent at the end) |
//! | `GET /next_url/items?page=` | `{"results": [...], "next": "<absolute URL>"}` (`null` at the end) |
//! | `GET /link/items?page=` | a JSON array; `Link: <url>; rel="next"` |
//! | `GET /offset/items?offset=&limit=` | `{"items": [...], "total": N}` |
//! | `GET /page/items?page=&per_page=` | `{"records": [...], "page": n, "total_pages": m}` |
//! | `GET /sequences` | `{"data": [{"id": 1, "name": ...}]}` (no paging) |
//! | `GET /sequences/{id}/steps` | `{"data": [{"id", "sequence_id", "step"}]}` |
//! | `POST /oauth/token` | client credentials → `{"access_token", "token_type", "expires_in"}` |
//! | `GET /api/v1/{collection}?cursor=&limit=&updated_since=` | a [`Collection`] (e.g. `ferry demo`'s generated touches): `{"data": [...], "meta": {"next_cursor": "..."}}` |
//!
//! Every list endpoint takes `updated_since` (RFC 3339; records with
//! `updated_at >= updated_since`, in `updated_at` then `id` order).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How clients must authenticate.
#[derive(Debug, Clone, Default)]
pub enum RestAuth {
    #[default]
    None,
    Bearer(String),
    /// A header name and key.
    ApiKeyHeader(String, String),
    /// A query parameter name and key.
    ApiKeyQuery(String, String),
    Basic(String, String),
    /// Client id and secret for `POST /oauth/token`; issued tokens are bearer tokens.
    OAuth2(String, String),
}

/// A named set of records served at `GET /api/v1/{name}` with cursor
/// pagination and an `updated_since` filter. Records are held in
/// `updated_at` order, so a filter is a binary search and a page is built
/// only when asked for (ten million generated touches need no JSON in memory).
pub trait Collection: Send + Sync {
    fn name(&self) -> &str;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// When record `i` last changed; non-decreasing in `i`.
    fn updated_at(&self, i: usize) -> DateTime<Utc>;
    /// Record `i` as the API serves it.
    fn record(&self, i: usize) -> Value;
}

/// The collections an emulator serves.
#[derive(Clone, Default)]
pub struct Collections(pub Vec<Arc<dyn Collection>>);

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|c| (c.name().to_string(), c.len())))
            .finish()
    }
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Extra record sets at `/api/v1/{name}`.
    pub collections: Collections,
    /// Records behind `/…/items`.
    pub records: usize,
    /// Parent records behind `/sequences` (each has 3 steps).
    pub sequences: usize,
    pub auth: RestAuth,
    /// Requests per second (0: unlimited); over it, 429 with `Retry-After: 1`.
    pub per_second: usize,
    /// Largest page a client may ask for; a larger `limit` or `per_page`
    /// is quietly capped to it, as many APIs do.
    pub max_page: usize,
    /// `/page/items` answers a page past the last with the last page again
    /// (many APIs clamp `page`), instead of an empty one.
    pub clamp_page: bool,
    /// `/offset/items` ignores `offset` and always answers from the start,
    /// as an API that does not know the parameter would.
    pub ignore_offset: bool,
    /// `/next_url/items` gives root-relative next links (`/next_url/items?page=2`).
    pub relative_links: bool,
    /// `/offset/items` answers 400 for an offset past the last record.
    pub offset_past_end_400: bool,
    /// Every record whose id is a multiple of this (0: none) comes with a
    /// lone surrogate in its `name` (`"\ud800"`), as JavaScript's
    /// `JSON.stringify` writes a string cut inside a surrogate pair: text
    /// shaped like JSON that no strict parser accepts.
    pub lone_surrogate_every: u64,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            collections: Collections::default(),
            records: 250,
            sequences: 4,
            auth: RestAuth::None,
            per_second: 0,
            max_page: 100,
            clamp_page: true,
            ignore_offset: false,
            relative_links: false,
            offset_past_end_400: false,
            lone_surrogate_every: 0,
        }
    }
}

struct State {
    config: RestConfig,
    /// Overrides of `updated_at` (touched records), by id.
    touched: Mutex<BTreeMap<u64, DateTime<Utc>>>,
    tokens: Mutex<Vec<String>>,
    window: Mutex<Vec<Instant>>,
    calls: AtomicU64,
    limited: AtomicU64,
    base: String,
}

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

impl State {
    fn updated_at(&self, id: u64) -> DateTime<Utc> {
        self.touched
            .lock()
            .ok()
            .and_then(|t| t.get(&id).copied())
            .unwrap_or_else(|| epoch() + ChronoDuration::seconds(id as i64))
    }

    fn record(&self, id: u64) -> Value {
        let every = self.config.lone_surrogate_every;
        let name = if every > 0 && id.is_multiple_of(every) {
            format!("Person {id} {LONE_SURROGATE}")
        } else {
            format!("Person {id}")
        };
        json!({
            "id": id,
            "name": name,
            "email": format!("person{id}@example.com"),
            "score": (id * 7) % 100,
            "updated_at": self.updated_at(id).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "account": {"domain": format!("co{}.example", id % 50), "size": (id % 5) * 100},
            "tags": ["gtm", if id.is_multiple_of(2) { "even" } else { "odd" }],
        })
    }

    /// Ids in `updated_at`, `id` order, filtered by `updated_since`.
    fn ids(&self, since: Option<&str>) -> std::result::Result<Ids, Response> {
        let since = match since {
            Some(s) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| bad(&format!("updated_since: not an RFC 3339 time: {s}")))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let n = self.config.records as u64;
        let untouched = self.touched.lock().map(|t| t.is_empty()).unwrap_or(false);
        if untouched {
            // Record i was updated at epoch + i seconds: the order is the id order.
            let first = since
                .map(|s| (s - epoch()).num_seconds().max(1) as u64)
                .map(|f| {
                    let t = epoch() + ChronoDuration::seconds(f as i64);
                    if t < since.unwrap_or(t) { f + 1 } else { f }
                })
                .unwrap_or(1);
            return Ok(Ids::Range(first.max(1), n + 1));
        }
        let mut ids: Vec<(DateTime<Utc>, u64)> = (1..=n)
            .map(|id| (self.updated_at(id), id))
            .filter(|(t, _)| since.is_none_or(|s| *t >= s))
            .collect();
        ids.sort();
        Ok(Ids::List(ids.into_iter().map(|(_, id)| id).collect()))
    }

    fn check(
        &self,
        headers: &HeaderMap,
        query: &BTreeMap<String, String>,
    ) -> std::result::Result<(), Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        let ok = match &self.config.auth {
            RestAuth::None => true,
            RestAuth::Bearer(t) => header("authorization") == format!("Bearer {t}"),
            RestAuth::ApiKeyHeader(h, k) => header(h) == k,
            RestAuth::ApiKeyQuery(q, k) => query.get(q) == Some(k),
            RestAuth::Basic(u, p) => {
                use base64::Engine;
                let want = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                header("authorization") == format!("Basic {want}")
            }
            RestAuth::OAuth2(..) => {
                let got = header("authorization")
                    .strip_prefix("Bearer ")
                    .unwrap_or("")
                    .to_string();
                self.tokens.lock().is_ok_and(|t| t.contains(&got))
            }
        };
        if !ok {
            return Err((
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "unauthorized"})),
            )
                .into_response());
        }
        if self.config.per_second > 0 {
            let now = Instant::now();
            let mut w = self.window.lock().map_err(|_| bad("lock"))?;
            w.retain(|t| now.duration_since(*t) < Duration::from_secs(1));
            if w.len() >= self.config.per_second {
                self.limited.fetch_add(1, Ordering::SeqCst);
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "rate limited"})),
                )
                    .into_response();
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return Err(r);
            }
            w.push(now);
        }
        Ok(())
    }
}

fn bad(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

type Shared = Arc<State>;
type Q = Query<BTreeMap<String, String>>;

fn num(
    q: &BTreeMap<String, String>,
    k: &str,
    default: usize,
) -> std::result::Result<usize, Response> {
    match q.get(k) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| bad(&format!("{k} must be a number"))),
    }
}

/// Record ids in serving order, without materializing the common case.
enum Ids {
    /// `start..end`.
    Range(u64, u64),
    List(Vec<u64>),
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::Range(a, b) => b.saturating_sub(*a) as usize,
            Ids::List(v) => v.len(),
        }
    }

    fn page(&self, from: usize, size: usize) -> Vec<u64> {
        match self {
            Ids::Range(a, b) => (a + from as u64..*b).take(size).collect(),
            Ids::List(v) => v.iter().skip(from).take(size).copied().collect(),
        }
    }
}

/// Stands for a lone surrogate in a record until [`reply`] writes it.
const LONE_SURROGATE: &str = "__sim_lone_surrogate__";

/// A JSON reply, with [`LONE_SURROGATE`] written as the escape `\ud800`
/// (serde_json cannot write one).
fn reply(body: Value) -> Response {
    let text = body.to_string();
    let text = if text.contains(LONE_SURROGATE) {
        text.replace(LONE_SURROGATE, "\\ud800")
    } else {
        text
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

fn page_of(s: &State, ids: &Ids, from: usize, size: usize) -> Vec<Value> {
    ids.page(from, size)
        .into_iter()
        .map(|id| s.record(id))
        .collect()
}

async fn cursor(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let ids = match s.ids(q.get("updated_since").map(String::as_str)) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let limit = match num(&q, "limit", 25) {
        Ok(l) => l.min(s.config.max_page).max(1),
        Err(r) => return r,
    };
    // The cursor is opaque to clients: the next position, encoded.
    let from = match q.get("cursor") {
        None => 0,
        Some(c) => match c.strip_prefix("pos_").and_then(|p| p.parse::<usize>().ok()) {
            Some(p) => p,
            None => return bad("invalid cursor"),
        },
    };
    let data = page_of(&s, &ids, from, limit);
    let mut body = json!({"data": data, "meta": {}});
    if from + limit < ids.len() {
        body["meta"]["next_cursor"] = json!(format!("pos_{}", from + limit));
    }
    reply(body)
}

fn passthrough(q: &BTreeMap<String, String>, skip: &[&str]) -> String {
    q.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| {
            format!(
                "&{}={}",
                k,
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect()
}

async fn next_url(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let ids = match s.ids(q.get("updated_since").map(String::as_str)) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let page = match num(&q, "page", 1) {
        Ok(p) => p.max(1),
        Err(r) => return r,
    };
    let size = 20;
    let data = page_of(&s, &ids, (page - 1) * size, size);
    let next = (page * size < ids.len()).then(|| {
        format!(
            "{}/next_url/items?page={}{}",
            if s.config.relative_links {
                ""
            } else {
                s.base.as_str()
            },
            page + 1,
            passthrough(&q, &["page"])
        )
    });
    reply(json!({"results": data, "next": next}))
}

async fn link(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let ids = match s.ids(q.get("updated_since").map(String::as_str)) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let page = match num(&q, "page", 1) {
        Ok(p) => p.max(1),
        Err(r) => return r,
    };
    let size = 30;
    let data = page_of(&s, &ids, (page - 1) * size, size);
    let mut r = reply(Value::Array(data));
    if page * size < ids.len() {
        let next = format!(
            "<{}/link/items?page={}{}>; rel=\"next\"",
            s.base,
            page + 1,
            passthrough(&q, &["page"])
        );
        if let Ok(v) = HeaderValue::from_str(&next) {
            r.headers_mut().insert("link", v);
        }
    }
    r
}

async fn offset(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let ids = match s.ids(q.get("updated_since").map(String::as_str)) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (offset, limit) = match (num(&q, "offset", 0), num(&q, "limit", 50)) {
        (Ok(o), Ok(l)) => (o, l.min(s.config.max_page).max(1)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let offset = if s.config.ignore_offset { 0 } else { offset };
    if s.config.offset_past_end_400 && offset >= ids.len() && offset > 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("offset {offset} is past the last record")})),
        )
            .into_response();
    }
    reply(json!({"items": page_of(&s, &ids, offset, limit), "total": ids.len()}))
}

async fn paged(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let ids = match s.ids(q.get("updated_since").map(String::as_str)) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (page, per) = match (num(&q, "page", 1), num(&q, "per_page", 50)) {
        (Ok(p), Ok(n)) => (p.max(1), n.min(s.config.max_page).max(1)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let total_pages = ids.len().div_ceil(per).max(1);
    let page = if s.config.clamp_page {
        page.min(total_pages)
    } else {
        page
    };
    reply(json!({
        "records": page_of(&s, &ids, (page - 1) * per, per),
        "page": page,
        "total_pages": total_pages,
    }))
}

async fn sequences(AxState(s): AxState<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let data: Vec<Value> = (1..=s.config.sequences)
        .map(|i| json!({"id": i, "name": format!("Sequence {i}")}))
        .collect();
    Json(json!({ "data": data })).into_response()
}

async fn steps(
    AxState(s): AxState<Shared>,
    Path(id): Path<usize>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    if id == 0 || id > s.config.sequences {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such sequence"})),
        )
            .into_response();
    }
    let data: Vec<Value> = (1..=3)
        .map(|n| json!({"id": id * 100 + n, "sequence_id": id, "step": n}))
        .collect();
    Json(json!({ "data": data })).into_response()
}

async fn collection(
    AxState(s): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    if let Err(r) = s.check(&headers, &q) {
        return r;
    }
    let Some(c) = s.config.collections.0.iter().find(|c| c.name() == name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no collection {name}")})),
        )
            .into_response();
    };
    let limit = match num(&q, "limit", 100) {
        Ok(l) => l.min(s.config.max_page).max(1),
        Err(r) => return r,
    };
    let first = match q.get("updated_since") {
        None => 0,
        Some(v) => match DateTime::parse_from_rfc3339(v) {
            Ok(t) => {
                let t = t.with_timezone(&Utc);
                // First record with updated_at >= t (updated_at is sorted).
                let (mut lo, mut hi) = (0, c.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if c.updated_at(mid) < t {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
            Err(_) => return bad(&format!("updated_since: not an RFC 3339 time: {v}")),
        },
    };
    let from = match q.get("cursor") {
        None => first,
        Some(cur) => match cur
            .strip_prefix("pos_")
            .and_then(|p| p.parse::<usize>().ok())
        {
            Some(p) => p.max(first),
            None => return bad("invalid cursor"),
        },
    };
    let end = (from + limit).min(c.len());
    let data: Vec<Value> = (from..end).map(|i| c.record(i)).collect();
    let mut body = json!({"data": data, "meta": {}});
    if end < c.len() {
        body["meta"]["next_cursor"] = json!(format!("pos_{end}"));
    }
    Json(body).into_response()
}

async fn oauth(
    AxState(s): AxState<Shared>,
    axum::extract::Form(form): axum::extract::Form<BTreeMap<String, String>>,
) -> Response {
    let RestAuth::OAuth2(id, secret) = &s.config.auth else {
        return bad("oauth is not enabled");
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id") != Some(id)
        || form.get("client_secret") != Some(secret)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = format!("rest-{}", uuid::Uuid::new_v4().simple());
    if let Ok(mut t) = s.tokens.lock() {
        t.push(token.clone());
    }
    Json(json!({"access_token": token, "token_type": "bearer", "expires_in": 3600})).into_response()
}

/// A running REST emulator.
pub struct RunningRest {
    pub addr: SocketAddr,
    state: Shared,
    handle: JoinHandle<()>,
}

impl RunningRest {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered and 429s sent.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.state.calls.load(Ordering::SeqCst),
            self.state.limited.load(Ordering::SeqCst),
        )
    }

    /// Mark records as changed now (their `updated_at` moves forward).
    pub fn touch(&self, ids: &[u64], at: DateTime<Utc>) {
        if let Ok(mut t) = self.state.touched.lock() {
            for id in ids {
                t.insert(*id, at);
            }
        }
    }

    /// The record as the API serves it (with `lone_surrogate_every`, its
    /// name holds a marker where the reply has `\ud800`).
    pub fn record(&self, id: u64) -> Value {
        self.state.record(id)
    }

    pub fn stop(self) {
        self.handle.abort();
    }
}

/// Start the emulator on `addr` (port 0 picks a free port).
pub async fn start(config: RestConfig, addr: SocketAddr) -> Result<RunningRest> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state = Arc::new(State {
        config,
        touched: Mutex::new(BTreeMap::new()),
        tokens: Mutex::new(Vec::new()),
        window: Mutex::new(Vec::new()),
        calls: AtomicU64::new(0),
        limited: AtomicU64::new(0),
        base: format!("http://{addr}"),
    });
    let app = Router::new()
        .route("/cursor/items", get(cursor))
        .route("/next_url/items", get(next_url))
        .route("/link/items", get(link))
        .route("/offset/items", get(offset))
        .route("/page/items", get(paged))
        .route("/sequences", get(sequences))
        .route("/sequences/{id}/steps", get(steps))
        .route("/oauth/token", post(oauth))
        .route("/api/v1/{name}", get(collection))
        .with_state(state.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("REST emulator stopped: {e}");
        }
    });
    Ok(RunningRest {
        addr,
        state,
        handle,
    })
}
