//! The emulator's HTTP routes and HubSpot's reply shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::store::{Crm, PropertyDef, Record, matches};
use super::{Budget, Limited, State};

type Shared = Arc<State>;

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/crm/v3/objects/{kind}", get(list))
        .route("/crm/v3/objects/{kind}/search", post(search))
        .route("/crm/v3/objects/{kind}/batch/{op}", post(batch))
        .route(
            "/crm/v3/properties/{kind}",
            get(properties).post(create_property),
        )
        .route("/oauth/v1/token", post(oauth_token))
        .route(
            "/crm/v4/associations/{from}/{to}/batch/read",
            post(associations),
        )
        .route(
            "/crm/v4/objects/{from}/{id}/associations/{to}",
            get(association_page),
        )
        .route("/crm/v3/lists", post(create_list))
        .route(
            "/crm/v3/lists/object-type-id/{type_id}/name/{name}",
            get(list_by_name),
        )
        .route(
            "/crm/v3/lists/{id}/memberships/{verb}",
            axum::routing::put(memberships),
        )
        .with_state(state)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// HubSpot's error body.
fn error(status: StatusCode, category: &str, message: &str, errors: Vec<Value>) -> Response {
    let mut body = json!({
        "status": "error",
        "message": message,
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "category": category,
    });
    if !errors.is_empty() {
        body["errors"] = Value::Array(errors);
    }
    (status, Json(body)).into_response()
}

fn rate_limited(policy: &str) -> Response {
    let message = match policy {
        "DAILY" => "You have reached your daily limit.",
        "SECONDLY" => "You have reached your secondly limit.",
        _ => "You have reached your ten_secondly_rolling limit.",
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "policyName": policy,
        })),
    )
        .into_response()
}

/// Auth, faults and limits for one call. `Ok` carries the budget for the
/// rate-limit headers (none for search, as on HubSpot).
async fn gate(s: &State, headers: &HeaderMap, search: bool) -> Result<Option<Budget>, Response> {
    s.stats.calls.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| s.tokens.lock().is_ok_and(|set| set.contains(t)));
    if !valid {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            vec![],
        ));
    }
    let f = s.faults();
    let f = &f;
    if f.slow > 0.0 && rand::random::<f64>() < f.slow {
        tokio::time::sleep(Duration::from_millis(f.slow_ms)).await;
    }
    if f.dropped > 0.0 && rand::random::<f64>() < f.dropped {
        return Err(dropped());
    }
    if f.server_error > 0.0 && rand::random::<f64>() < f.server_error {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "INTERNAL_ERROR",
            "The server encountered a temporary error (emulated).",
            vec![],
        ));
    }
    if f.rate_limited > 0.0 && rand::random::<f64>() < f.rate_limited {
        s.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
        return Err(rate_limited("TEN_SECONDLY_ROLLING"));
    }
    match s.take(search) {
        Ok(b) => Ok((!search).then_some(b)),
        Err(l) => {
            s.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
            Err(rate_limited(match l {
                Limited::TenSecondly => "TEN_SECONDLY_ROLLING",
                Limited::Daily => "DAILY",
                Limited::Search => "SECONDLY",
            }))
        }
    }
}

/// A reply whose connection drops after the status line.
fn dropped() -> Response {
    let broken = futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "emulated dropped connection",
        ))
    });
    Response::new(Body::from_stream(broken))
}

/// `200 OK` with a proxy's HTML page instead of JSON.
fn garbled() -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/html")],
        "<html><body><h1>Service temporarily unavailable</h1></body></html>",
    )
        .into_response()
}

fn chance(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

/// `POST /crm/v4/associations/{from}/{to}/batch/read`: for each input id,
/// the associated records of type `to`.
async fn associations(
    AxState(s): AxState<Shared>,
    Path((from, to)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let Some(inputs) = body["inputs"].as_array() else {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "inputs is required",
                vec![],
            ),
            budget,
        );
    };
    if inputs.len() > 1000 {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "at most 1000 inputs",
                vec![],
            ),
            budget,
        );
    }
    let Ok(crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    if !crm.types.contains_key(&from) || !crm.types.contains_key(&to) {
        return with_budget(
            &s,
            unknown_type(if crm.types.contains_key(&from) {
                &to
            } else {
                &from
            }),
            budget,
        );
    }
    let started = now();
    let mut results = Vec::new();
    let page = s.config.association_page.max(1);
    for i in inputs {
        let id = match &i["id"] {
            Value::String(x) => x.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        let Some(id) = id else { continue };
        let linked = linked(&crm, &from, id, &to);
        if !linked.is_empty() {
            let mut r = json!({"from": {"id": id.to_string()}, "to": linked.iter().take(page).cloned().collect::<Vec<_>>()});
            if linked.len() > page {
                r["paging"] = json!({"next": {"after": page.to_string(),
                    "link": format!("/crm/v4/objects/{from}/{id}/associations/{to}?after={page}")}});
            }
            results.push(r);
        }
    }
    with_budget(
        &s,
        batch_reply(StatusCode::OK, results, vec![], started),
        budget,
    )
}

/// The associations of one record to records of type `to`, in id order.
fn linked(crm: &Crm, from: &str, id: u64, to: &str) -> Vec<Value> {
    crm.associations
        .get(&(from.to_string(), id))
        .map(|set| {
            set.iter()
                .filter(|(t, _)| t == to)
                .map(|(_, to_id)| {
                    json!({
                        "toObjectId": to_id,
                        "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 1, "label": null}],
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /crm/v4/objects/{from}/{id}/associations/{to}?after=&limit=`: one
/// record's associations, paged (what a batch read's `paging` points to).
async fn association_page(
    AxState(s): AxState<Shared>,
    Path((from, id, to)): Path<(String, u64, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(500)
        .clamp(1, 500)
        .min(s.config.association_page.max(1));
    let Ok(crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let all = linked(&crm, &from, id, &to);
    let page: Vec<Value> = all.iter().skip(after).take(limit).cloned().collect();
    let mut body = json!({ "results": page });
    if after.saturating_add(limit) < all.len() {
        let next = after + limit;
        body["paging"] = json!({"next": {"after": next.to_string(),
            "link": format!("/crm/v4/objects/{from}/{id}/associations/{to}?after={next}")}});
    }
    with_budget(&s, Json(body).into_response(), budget)
}

/// `POST /oauth/v1/token` with `grant_type=refresh_token`: a new access token
/// for the configured OAuth app, as HubSpot's token endpoint answers it.
async fn oauth_token(
    AxState(s): AxState<Shared>,
    axum::extract::Form(form): axum::extract::Form<BTreeMap<String, String>>,
) -> Response {
    let bad = |status: &str, message: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": status, "message": message,
                        "correlationId": uuid::Uuid::new_v4().to_string()})),
        )
            .into_response()
    };
    let Some(app) = &s.config.oauth else {
        return bad("BAD_CLIENT_ID", "missing or invalid client_id");
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return bad("BAD_GRANT_TYPE", "grant_type must be refresh_token");
    }
    if form.get("client_id") != Some(&app.client_id) {
        return bad("BAD_CLIENT_ID", "missing or invalid client_id");
    }
    if form.get("client_secret") != Some(&app.client_secret) {
        return bad("BAD_CLIENT_SECRET", "missing or invalid client_secret");
    }
    if form.get("refresh_token") != Some(&app.refresh_token) {
        return bad("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
    }
    let token = format!("sim-access-{}", uuid::Uuid::new_v4().simple());
    if let Ok(mut set) = s.tokens.lock() {
        set.insert(token.clone());
    }
    s.stats.token_refreshes.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "token_type": "bearer",
        "refresh_token": app.refresh_token,
        "access_token": token,
        "expires_in": 1800,
    }))
    .into_response()
}

fn with_budget(s: &State, mut r: Response, b: Option<Budget>) -> Response {
    if let Some(b) = b {
        let h = r.headers_mut();
        let mut set = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        };
        set("x-hubspot-ratelimit-max", s.config.ten_secondly.to_string());
        set("x-hubspot-ratelimit-remaining", b.remaining.to_string());
        set("x-hubspot-ratelimit-interval-milliseconds", "10000".into());
        set("x-hubspot-ratelimit-daily", s.config.daily.to_string());
        set(
            "x-hubspot-ratelimit-daily-remaining",
            b.daily_remaining.to_string(),
        );
    }
    r
}

fn unknown_type(kind: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "OBJECT_TYPE_NOT_FOUND",
        &format!("Unable to infer object type from: {kind}"),
        vec![],
    )
}

fn split_props(q: Option<&String>) -> Vec<String> {
    q.map(|p| {
        p.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

async fn list(
    AxState(s): AxState<Shared>,
    Path(kind): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    if limit == 0 || limit > 100 {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 100",
                vec![],
            ),
            budget,
        );
    }
    let after: u64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let archived = q.get("archived").is_some_and(|a| a == "true");
    let props = split_props(q.get("properties"));
    let Ok(crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let Some(t) = crm.types.get(&kind) else {
        return with_budget(&s, unknown_type(&kind), budget);
    };
    let page: Vec<&Record> = t
        .records
        .range(after + 1..)
        .map(|(_, r)| r)
        .filter(|r| r.archived == archived)
        .take(limit + 1)
        .collect();
    let mut body = json!({
        "results": page.iter().take(limit).map(|r| r.to_json(Some(&props).filter(|p| !p.is_empty()).map(|p| p.as_slice()))).collect::<Vec<_>>(),
    });
    if page.len() > limit {
        let next = page[limit - 1].id.to_string();
        body["paging"] = json!({"next": {"after": next, "link": format!("/crm/v3/objects/{kind}?after={next}")}});
    }
    with_budget(&s, Json(body).into_response(), budget)
}

async fn search(
    AxState(s): AxState<Shared>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = gate(&s, &headers, true).await {
        return r;
    }
    if chance(s.faults().garbled) {
        return garbled();
    }
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    if limit > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "limit must be at most 200",
            vec![],
        );
    }
    let after: usize = match &body["after"] {
        Value::String(a) => a.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
        _ => 0,
    };
    if after + limit > 10_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "There was a problem with the request. Search results are limited to 10,000 per query: narrow your filters.",
            vec![],
        );
    }
    let groups = body["filterGroups"].as_array().cloned().unwrap_or_default();
    if groups.len() > 6 {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "at most 6 filterGroups",
            vec![],
        );
    }
    let props: Vec<String> = body["properties"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Ok(mut crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    // Search reads its index, which lags writes (list and batch read do not).
    crm.settle_index();
    let crm = &*crm;
    let Some(t) = crm.types.get(&kind) else {
        return unknown_type(&kind);
    };
    let mut hits = Vec::new();
    for r in t
        .records
        .values()
        .filter_map(|r| crm.indexed(&kind, r))
        .filter(|r| !r.archived)
    {
        let mut ok = groups.is_empty();
        for g in &groups {
            let filters = g["filters"].as_array().cloned().unwrap_or_default();
            let mut all = true;
            for f in &filters {
                match matches(r, f) {
                    Ok(m) => all &= m,
                    Err(e) => {
                        return error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &e, vec![]);
                    }
                }
            }
            ok |= all;
        }
        if ok {
            hits.push(r);
        }
    }
    if let Some(sort) = body["sorts"].as_array().and_then(|a| a.first()) {
        let name = sort["propertyName"]
            .as_str()
            .unwrap_or("hs_object_id")
            .to_string();
        let desc = sort["direction"].as_str() == Some("DESCENDING");
        hits.sort_by(|a, b| {
            let va = a.properties.get(&name).cloned().unwrap_or_default();
            let vb = b.properties.get(&name).cloned().unwrap_or_default();
            let o = match (va.parse::<f64>(), vb.parse::<f64>()) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                _ => va.cmp(&vb),
            }
            .then(a.id.cmp(&b.id));
            if desc { o.reverse() } else { o }
        });
    }
    let total = hits.len();
    let page: Vec<Value> = hits
        .iter()
        .skip(after)
        .take(limit)
        .map(|r| r.to_json(Some(props.as_slice()).filter(|p| !p.is_empty())))
        .collect();
    let mut out = json!({"total": total, "results": page});
    if after + limit < total {
        out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    Json(out).into_response()
}

async fn properties(
    AxState(s): AxState<Shared>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let Some(t) = crm.types.get(&kind) else {
        return with_budget(&s, unknown_type(&kind), budget);
    };
    let results: Vec<&PropertyDef> = t.properties.values().collect();
    with_budget(
        &s,
        Json(json!({"results": results})).into_response(),
        budget,
    )
}

async fn create_property(
    AxState(s): AxState<Shared>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(name) = body["name"].as_str() else {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "name is required",
                vec![],
            ),
            budget,
        );
    };
    let def = PropertyDef {
        name: name.to_string(),
        label: body["label"].as_str().unwrap_or(name).to_string(),
        kind: body["type"].as_str().unwrap_or("string").to_string(),
        field_type: body["fieldType"].as_str().unwrap_or("text").to_string(),
        has_unique_value: body["hasUniqueValue"].as_bool().unwrap_or(false),
    };
    let Ok(mut crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let t = crm.types.entry(kind).or_default();
    if t.properties.contains_key(name) {
        return with_budget(
            &s,
            error(
                StatusCode::CONFLICT,
                "OBJECT_ALREADY_EXISTS",
                &format!("A property named '{name}' already exists."),
                vec![],
            ),
            budget,
        );
    }
    t.define(def.clone());
    with_budget(
        &s,
        (StatusCode::CREATED, Json(json!(def))).into_response(),
        budget,
    )
}

/// Check and convert an input's properties; `Err` is a whole-batch 400.
fn clean_properties(
    defs: &BTreeMap<String, PropertyDef>,
    raw: &Value,
) -> Result<BTreeMap<String, String>, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = raw.as_object() else {
        return Ok(out);
    };
    for (k, v) in map {
        let Some(def) = defs.get(k) else {
            return Err(json!({
                "message": format!("Property \"{k}\" does not exist"),
                "code": "PROPERTY_DOESNT_EXIST",
                "context": {"propertyName": [k]},
            }));
        };
        let text = match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(json!({
                    "message": format!("Property values must be strings: {k}"),
                    "code": "INVALID_OPTION",
                    "context": {"propertyName": [k]},
                }));
            }
        };
        if !text.is_empty() {
            if k == "email" && (!text.contains('@') || text.contains(' ') || text.ends_with('@')) {
                return Err(json!({
                    "message": format!("Email address {text} is invalid"),
                    "code": "INVALID_EMAIL",
                    "context": {"propertyName": [k]},
                }));
            }
            if def.kind == "number" && text.parse::<f64>().is_err() {
                return Err(json!({
                    "message": format!("{text} was not a valid number."),
                    "code": "INVALID_INTEGER",
                    "context": {"propertyName": [k]},
                }));
            }
        }
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// [`clean_properties`], then HubSpot's normalization of stored values.
fn clean(
    defs: &BTreeMap<String, PropertyDef>,
    raw: &Value,
    normalize: bool,
) -> Result<BTreeMap<String, String>, Value> {
    let mut p = clean_properties(defs, raw)?;
    if normalize && let Some(e) = p.get_mut("email") {
        *e = e.trim().to_lowercase();
    }
    Ok(p)
}

/// An input's `objectWriteTraceId`, if it carries one.
fn trace_id(input: &Value) -> Option<String> {
    match &input["objectWriteTraceId"] {
        Value::String(t) => Some(t.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn with_trace(mut result: Value, trace: Option<String>) -> Value {
    if let Some(t) = trace {
        result["objectWriteTraceId"] = json!(t);
    }
    result
}

/// A bad input: with an `objectWriteTraceId`, HubSpot reports it alone (a
/// 207 entry) and writes the rest; without one, or for an unknown property
/// (which fails every input alike), the whole batch is refused.
fn input_error(input: &Value, detail: Value) -> Result<Value, Value> {
    let trace = trace_id(input);
    match trace {
        Some(t) if detail["code"].as_str() != Some("PROPERTY_DOESNT_EXIST") => Ok(json!({
            "status": "error",
            "category": "VALIDATION_ERROR",
            "message": detail["message"],
            "context": {"objectWriteTraceId": [t]},
            "errors": [detail],
            "links": {},
        })),
        _ => Err(detail),
    }
}

fn unique_props(defs: &BTreeMap<String, PropertyDef>) -> Vec<String> {
    defs.values()
        .filter(|d| d.has_unique_value && d.name != "hs_object_id")
        .map(|d| d.name.clone())
        .collect()
}

/// Which record (other than `except`) already holds a unique value in `props`.
fn unique_clash(
    crm: &Crm,
    kind: &str,
    props: &BTreeMap<String, String>,
    except: Option<u64>,
) -> Option<u64> {
    let defs = &crm.types.get(kind)?.properties;
    for p in unique_props(defs) {
        if let Some(v) = props.get(&p).filter(|v| !v.is_empty())
            && let Some(id) = crm.find_by(kind, &p, v)
            && Some(id) != except
        {
            return Some(id);
        }
    }
    None
}

fn new_record(crm: &mut Crm, kind: &str, props: BTreeMap<String, String>) -> Record {
    crm.create(kind, props)
}

fn apply(crm: &mut Crm, kind: &str, id: u64, props: BTreeMap<String, String>) -> Option<Record> {
    let at = Utc::now();
    crm.types.get_mut(kind)?.modify(id, |r| {
        for (k, v) in props {
            if v.is_empty() {
                r.properties.remove(&k);
            } else {
                r.properties.insert(k, v);
            }
        }
        r.updated_at = at;
        let stamp = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        r.properties
            .insert("lastmodifieddate".into(), stamp.clone());
        r.properties.insert("hs_lastmodifieddate".into(), stamp);
        r.clone()
    })
}

/// The properties a write reply shows: those written, the id property, and
/// HubSpot's defaults.
fn written(props: &BTreeMap<String, String>, id_property: Option<&str>) -> Vec<String> {
    let mut names: BTreeSet<String> = props.keys().cloned().collect();
    names.extend(id_property.map(str::to_string));
    for d in ["createdate", "lastmodifieddate", "hs_object_id"] {
        names.insert(d.to_string());
    }
    names.into_iter().collect()
}

fn not_found(ids: &[String]) -> Value {
    json!({
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some records: not found",
        "context": {"ids": ids},
        "errors": [],
        "links": {},
    })
}

fn batch_reply(
    status: StatusCode,
    results: Vec<Value>,
    errors: Vec<Value>,
    started: String,
) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": now(),
    });
    if errors.is_empty() {
        (status, Json(body)).into_response()
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        (StatusCode::MULTI_STATUS, Json(body)).into_response()
    }
}

async fn batch(
    AxState(s): AxState<Shared>,
    Path((kind, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if op == "read" && chance(s.faults().garbled) {
        return garbled();
    }
    if op != "read" && chance(s.faults().write_error) {
        return error(
            StatusCode::BAD_GATEWAY,
            "INTERNAL_ERROR",
            "The server encountered a temporary error (emulated); nothing was written.",
            vec![],
        );
    }
    let reply = run_batch(&s, &kind, &op, body.map(|b| b.0).unwrap_or(Value::Null));
    if op != "read"
        && reply.status().is_success()
        && (chance(s.faults().lost_after_write) || s.take_lost_write())
    {
        // Written, but the reply never arrives.
        return dropped();
    }
    with_budget(&s, reply, budget)
}

fn run_batch(s: &State, kind: &str, op: &str, body: Value) -> Response {
    let started = now();
    let normalize = s.config.normalize;
    let bad = |msg: &str, errors: Vec<Value>| {
        error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", msg, errors)
    };
    let Some(inputs) = body["inputs"].as_array() else {
        return bad("Invalid input JSON: inputs is required", vec![]);
    };
    if inputs.len() > 100 {
        return bad(
            &format!("Too many inputs: {} (the limit is 100)", inputs.len()),
            vec![],
        );
    }
    let Ok(mut crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let Some(defs) = crm.types.get(kind).map(|t| t.properties.clone()) else {
        return unknown_type(kind);
    };
    let id_property = body["idProperty"].as_str().map(str::to_string);
    let resolve = |crm: &Crm, raw: &Value, idp: Option<&str>| -> Option<u64> {
        let id = match raw {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        match idp {
            Some(p) if p != "hs_object_id" => crm.find_by(kind, p, &id),
            _ => crm.find_by(kind, "hs_object_id", &id),
        }
    };
    match op {
        "read" => {
            let props: Vec<String> = body["properties"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let mut results = Vec::new();
            let mut missing = Vec::new();
            for i in inputs {
                // As HubSpot does, an email that is a contact's secondary
                // address (`hs_additional_emails`) finds that contact, which
                // comes back under its primary email.
                let secondary = || {
                    let v = i["id"].as_str()?.trim().to_lowercase();
                    (id_property.as_deref() == Some("email"))
                        .then(|| crm.types.get(kind))
                        .flatten()?
                        .records
                        .values()
                        .find(|r| {
                            !r.archived
                                && r.properties.get("hs_additional_emails").is_some_and(|a| {
                                    a.split(';').any(|e| e.trim().eq_ignore_ascii_case(&v))
                                })
                        })
                        .map(|r| r.id)
                };
                match resolve(&crm, &i["id"], id_property.as_deref()).or_else(secondary) {
                    Some(id) => {
                        if let Some(r) = crm.types.get(kind).and_then(|t| t.records.get(&id)) {
                            results
                                .push(r.to_json(Some(props.as_slice()).filter(|p| !p.is_empty())));
                        }
                    }
                    None => missing.push(
                        i["id"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| i["id"].to_string()),
                    ),
                }
            }
            let errors = if missing.is_empty() {
                vec![]
            } else {
                vec![not_found(&missing)]
            };
            batch_reply(StatusCode::OK, results, errors, started)
        }
        "create" => {
            let mut cleaned = Vec::new();
            let mut errors = Vec::new();
            for i in inputs {
                match clean(&defs, &i["properties"], normalize) {
                    Ok(p) => cleaned.push((trace_id(i), p)),
                    Err(e) => match input_error(i, e) {
                        Ok(per_input) => errors.push(per_input),
                        Err(whole) => return bad("Property values were not valid", vec![whole]),
                    },
                }
            }
            let mut seen = BTreeSet::new();
            for (_, p) in &cleaned {
                if let Some(existing) = unique_clash(&crm, kind, p, None) {
                    return error(
                        StatusCode::CONFLICT,
                        "CONFLICT",
                        &format!("Contact already exists. Existing ID: {existing}"),
                        vec![],
                    );
                }
                for u in unique_props(&defs) {
                    if let Some(v) = p.get(&u).filter(|v| !v.is_empty())
                        && !seen.insert((u.clone(), v.to_lowercase()))
                    {
                        return bad(&format!("Duplicate {u} in batch input: {v}"), vec![]);
                    }
                }
            }
            let results = cleaned
                .into_iter()
                .map(|(trace, p)| {
                    let wanted = written(&p, None);
                    let r = new_record(&mut crm, kind, p);
                    crm.wrote(kind, r.id, None);
                    with_trace(r.to_json(Some(&wanted)), trace)
                })
                .collect();
            batch_reply(StatusCode::CREATED, results, errors, started)
        }
        "update" => {
            let mut results = Vec::new();
            let mut errors = Vec::new();
            for i in inputs {
                let props = match clean(&defs, &i["properties"], normalize) {
                    Ok(p) => p,
                    Err(e) => match input_error(i, e) {
                        Ok(per_input) => {
                            errors.push(per_input);
                            continue;
                        }
                        Err(whole) => return bad("Property values were not valid", vec![whole]),
                    },
                };
                let idp = i["idProperty"].as_str().or(id_property.as_deref());
                let Some(id) = resolve(&crm, &i["id"], idp) else {
                    let mut e = not_found(&[i["id"].as_str().unwrap_or_default().to_string()]);
                    if let Some(t) = trace_id(i) {
                        e["context"]["objectWriteTraceId"] = json!([t]);
                    }
                    errors.push(e);
                    continue;
                };
                if let Some(other) = unique_clash(&crm, kind, &props, Some(id)) {
                    errors.push(json!({
                        "status": "error", "category": "CONFLICT",
                        "message": format!("Another record already has this value. Existing ID: {other}"),
                        "context": {"ids": [id.to_string()]}, "errors": [], "links": {},
                    }));
                    continue;
                }
                // HubSpot need not echo idProperty's value.
                let wanted = written(&props, idp.filter(|_| !normalize));
                let before = crm
                    .types
                    .get(kind)
                    .and_then(|t| t.records.get(&id))
                    .cloned();
                if let Some(r) = apply(&mut crm, kind, id, props) {
                    crm.wrote(kind, id, before);
                    results.push(with_trace(r.to_json(Some(&wanted)), trace_id(i)));
                }
            }
            batch_reply(StatusCode::OK, results, errors, started)
        }
        "upsert" => {
            let mut seen = BTreeSet::new();
            let mut plan = Vec::new();
            let mut errors = Vec::new();
            for i in inputs {
                let props = match clean(&defs, &i["properties"], normalize) {
                    Ok(p) => p,
                    Err(e) => match input_error(i, e) {
                        Ok(per_input) => {
                            errors.push(per_input);
                            continue;
                        }
                        Err(whole) => return bad("Property values were not valid", vec![whole]),
                    },
                };
                let Some(idp) = i["idProperty"].as_str().or(id_property.as_deref()) else {
                    return bad("idProperty is required for upsert", vec![]);
                };
                if !defs.get(idp).is_some_and(|d| d.has_unique_value) {
                    return bad(
                        &format!(
                            "{idp} is not a unique property: upsert needs a property with unique values"
                        ),
                        vec![],
                    );
                }
                let Some(value) = i["id"].as_str().map(str::to_string) else {
                    return bad("each upsert input needs an id", vec![]);
                };
                if !seen.insert(value.to_lowercase()) {
                    return bad(
                        &format!("Duplicate IDs found in batch input: {value}"),
                        vec![],
                    );
                }
                let value = if normalize && idp == "email" {
                    value.trim().to_lowercase()
                } else {
                    value
                };
                plan.push((idp.to_string(), value, props, trace_id(i)));
            }
            let mut results = Vec::new();
            for (idp, value, mut props, trace) in plan {
                // HubSpot need not echo idProperty's value in the reply.
                let wanted = written(&props, Some(idp.as_str()).filter(|_| !normalize));
                match crm.find_by(kind, &idp, &value) {
                    Some(id) => {
                        let before = crm
                            .types
                            .get(kind)
                            .and_then(|t| t.records.get(&id))
                            .cloned();
                        if let Some(r) = apply(&mut crm, kind, id, props) {
                            crm.wrote(kind, id, before);
                            let mut j = r.to_json(Some(&wanted));
                            j["new"] = json!(false);
                            results.push(with_trace(j, trace));
                        }
                    }
                    None => {
                        if idp != "hs_object_id" {
                            props.insert(idp.clone(), value.clone());
                        }
                        let r = new_record(&mut crm, kind, props);
                        crm.wrote(kind, r.id, None);
                        let mut j = r.to_json(Some(&wanted));
                        j["new"] = json!(true);
                        results.push(with_trace(j, trace));
                    }
                }
            }
            batch_reply(StatusCode::OK, results, errors, started)
        }
        "archive" => {
            for i in inputs {
                if let Some(id) = resolve(&crm, &i["id"], None) {
                    let before = crm
                        .types
                        .get(kind)
                        .and_then(|t| t.records.get(&id))
                        .cloned();
                    if let Some(t) = crm.types.get_mut(kind) {
                        t.modify(id, |r| {
                            r.archived = true;
                            r.updated_at = Utc::now();
                        });
                    }
                    crm.wrote(kind, id, before);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        other => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("No route for batch/{other}"),
            vec![],
        ),
    }
}

/// `POST /crm/v3/lists`: `{name, objectTypeId, processingType}`; a name
/// already taken (case-insensitively) is refused.
async fn create_list(
    AxState(s): AxState<Shared>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let (Some(name), Some(type_id)) = (body["name"].as_str(), body["objectTypeId"].as_str()) else {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "name and objectTypeId are required",
                vec![],
            ),
            budget,
        );
    };
    let processing = body["processingType"]
        .as_str()
        .unwrap_or("MANUAL")
        .to_string();
    let Ok(mut crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    if !crm
        .types
        .contains_key(super::store::kind_of_type_id(type_id))
    {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Unknown objectTypeId {type_id}"),
                vec![],
            ),
            budget,
        );
    }
    if crm
        .lists
        .values()
        .any(|l| l.name.eq_ignore_ascii_case(name))
    {
        return with_budget(
            &s,
            error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("A list named '{name}' already exists."),
                vec![],
            ),
            budget,
        );
    }
    let id = crm.next_id();
    let list = super::store::List {
        id,
        name: name.to_string(),
        object_type_id: type_id.to_string(),
        processing_type: processing,
        members: BTreeSet::new(),
    };
    let out = json!({"list": list.to_json()});
    crm.lists.insert(id, list);
    drop(crm);
    if chance(s.faults().lost_after_write) || s.take_lost_write() {
        return dropped();
    }
    with_budget(&s, Json(out).into_response(), budget)
}

/// `GET /crm/v3/lists/object-type-id/{type}/name/{name}`: 404 if none.
async fn list_by_name(
    AxState(s): AxState<Shared>,
    Path((type_id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let found = s.crm.lock().ok().and_then(|crm| {
        crm.lists
            .values()
            .find(|l| l.object_type_id == type_id && l.name.eq_ignore_ascii_case(&name))
            .map(|l| l.to_json())
    });
    match found {
        Some(l) => with_budget(&s, Json(json!({"list": l})).into_response(), budget),
        None => with_budget(
            &s,
            error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("List with name {name} does not exist"),
                vec![],
            ),
            budget,
        ),
    }
}

/// `PUT /crm/v3/lists/{id}/memberships/add|remove` with a JSON array of
/// record ids. Like HubSpot: ids that name no live record come back in
/// `recordIdsMissing`; ids already members (or already absent) are in
/// neither list; a `DYNAMIC` list refuses; at most 100,000 ids.
async fn memberships(
    AxState(s): AxState<Shared>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let budget = match gate(&s, &headers, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", m, vec![]);
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let Some(ids) = body.as_array() else {
        return with_budget(&s, bad("the body must be an array of record ids"), budget);
    };
    if ids.len() > 100_000 {
        return with_budget(&s, bad("at most 100,000 record ids per request"), budget);
    }
    if verb != "add" && verb != "remove" {
        return with_budget(
            &s,
            error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                "no such resource",
                vec![],
            ),
            budget,
        );
    }
    let Ok(mut crm) = s.crm.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "lock",
            vec![],
        );
    };
    let Some(list) = id
        .parse::<u64>()
        .ok()
        .and_then(|i| crm.lists.get(&i))
        .cloned()
    else {
        return with_budget(
            &s,
            error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("List {id} does not exist"),
                vec![],
            ),
            budget,
        );
    };
    if list.processing_type == "DYNAMIC" {
        return with_budget(
            &s,
            bad(&format!(
                "List {id} is DYNAMIC: its memberships cannot be changed by the API"
            )),
            budget,
        );
    }
    let kind = super::store::kind_of_type_id(&list.object_type_id).to_string();
    if verb == "add" {
        crm.membership_adds_sent += ids.len() as u64;
    }
    let (mut changed, mut missing) = (Vec::new(), Vec::new());
    let mut members = list.members.clone();
    for v in ids {
        let raw = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let Some(rid) = raw.parse::<u64>().ok().filter(|r| {
            crm.types
                .get(&kind)
                .and_then(|t| t.records.get(r))
                .is_some_and(|rec| !rec.archived)
        }) else {
            missing.push(raw);
            continue;
        };
        let did = if verb == "add" {
            members.insert(rid)
        } else {
            members.remove(&rid)
        };
        if did {
            changed.push(rid.to_string());
        }
    }
    if let Some(l) = crm.lists.get_mut(&list.id) {
        l.members = members;
    }
    drop(crm);
    if chance(s.faults().lost_after_write) || s.take_lost_write() {
        return dropped();
    }
    let field = if verb == "add" {
        "recordIdsAdded"
    } else {
        "recordIdsRemoved"
    };
    with_budget(
        &s,
        Json(json!({field: changed, "recordIdsMissing": missing})).into_response(),
        budget,
    )
}
