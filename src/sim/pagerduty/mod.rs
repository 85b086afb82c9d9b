//! An emulator of the PagerDuty Events API v2
//! (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>):
//! `POST /v2/enqueue` takes alert events (`trigger`, `acknowledge`,
//! `resolve`) for one service, keyed by its 32-character routing key, and
//! keeps incidents open by `dedup_key`.
//!
//! The contract it follows:
//!
//! - The body must be a JSON object whose `routing_key` is the configured
//!   32-character key; anything else is 400 with
//!   `{"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid routing key"]}`.
//! - `event_action` is `trigger`, `acknowledge` or `resolve`.
//! - A trigger needs a `payload` object with `summary` (1 to 1024
//!   characters), `source` (non-empty) and `severity` (`critical`, `error`,
//!   `warning` or `info`); `component`, `group`, `class` and `timestamp` are
//!   optional strings, `custom_details` any JSON. Its `dedup_key` is optional
//!   (at most 255 characters; absent or empty: one is generated, a UUID v7).
//! - An acknowledge or resolve needs a `dedup_key` (1 to 255 characters).
//! - Any other problem is 400 with the same body, every problem found named
//!   in `errors` (for example `'payload.summary' is missing or blank`).
//! - Accepted events are 202
//!   `{"status": "success", "message": "Event processed", "dedup_key": "..."}`.
//!   A trigger for a key already open is deduplicated into the same
//!   incident; an acknowledge leaves it open; a resolve closes it. An
//!   acknowledge or resolve for a key that is not open is still 202, as
//!   PagerDuty answers it.
//!
//! Misbehaviours, for testing a client's retries: the next
//! [`PagerDutyConfig::rate_limit_next`] posts are answered 429
//! `{"status": "throttle exceeded", ...}` with no `Retry-After` header (as
//! PagerDuty does), then the next [`PagerDutyConfig::fail_next`] posts 500
//! with an HTML body (settable while running with
//! [`RunningPagerDuty::set_rate_limit_next`] and
//! [`RunningPagerDuty::set_fail_next`]). Both come before the body is looked
//! at. [`RunningPagerDuty::events`] holds the accepted events, each with its
//! `dedup_key` filled in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The routing (integration) key the emulator takes unless told otherwise.
pub const DEFAULT_ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

const ROUTING_KEY_LEN: usize = 32;
const MAX_SUMMARY: usize = 1024;
const MAX_DEDUP_KEY: usize = 255;
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct PagerDutyConfig {
    /// The service's routing key (32 characters); events must carry it.
    pub routing_key: String,
    /// Answer the next N posts 500 with an HTML body.
    pub fail_next: usize,
    /// Answer the next N posts 429 (before any 500s).
    pub rate_limit_next: usize,
}

impl Default for PagerDutyConfig {
    fn default() -> Self {
        PagerDutyConfig {
            routing_key: DEFAULT_ROUTING_KEY.to_string(),
            fail_next: 0,
            rate_limit_next: 0,
        }
    }
}

struct Inner {
    routing_key: String,
    fail_next: usize,
    rate_limit_next: usize,
    events: Vec<Value>,
    /// Dedup keys triggered and not resolved, in the order first triggered.
    open: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

enum Fault {
    Limited,
    Failed,
}

enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

fn invalid(errors: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": errors,
        })),
    )
        .into_response()
}

fn throttled() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({
            "status": "throttle exceeded",
            "message": "Requests for this service are arriving too quickly. Please retry later.",
        })),
    )
        .into_response()
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html("<html><body>Internal Server Error</body></html>"),
    )
        .into_response()
}

/// A required non-empty string in the payload, at most `max` characters.
fn required(p: &Map<String, Value>, field: &str, max: Option<usize>, errors: &mut Vec<String>) {
    match p.get(field) {
        Some(Value::String(s)) if !s.is_empty() => {
            if let Some(max) = max.filter(|m| s.chars().count() > *m) {
                errors.push(format!(
                    "'payload.{field}' must be at most {max} characters"
                ));
            }
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {
            errors.push(format!("'payload.{field}' is missing or blank"));
        }
        Some(_) => errors.push(format!("'payload.{field}' must be a string")),
    }
}

fn check_payload(p: &Map<String, Value>, errors: &mut Vec<String>) {
    required(p, "summary", Some(MAX_SUMMARY), errors);
    required(p, "source", None, errors);
    match p.get("severity") {
        None | Some(Value::Null) => errors.push("'payload.severity' is missing or blank".into()),
        Some(Value::String(s)) if s.is_empty() => {
            errors.push("'payload.severity' is missing or blank".into());
        }
        Some(Value::String(s)) if SEVERITIES.contains(&s.as_str()) => {}
        Some(_) => errors.push(
            "'payload.severity' is invalid (must be one of critical, error, warning or info)"
                .into(),
        ),
    }
    for field in ["component", "group", "class", "timestamp"] {
        if p.get(field).is_some_and(|v| !v.is_null() && !v.is_string()) {
            errors.push(format!("'payload.{field}' must be a string"));
        }
    }
}

/// The event's action and its dedup key (`None`: generate one), or every
/// problem found. The routing key is checked before this.
fn validate(
    event: &Map<String, Value>,
) -> std::result::Result<(Action, Option<String>), Vec<String>> {
    let mut errors = Vec::new();
    let action = match event.get("event_action") {
        None | Some(Value::Null) => {
            errors.push("'event_action' is missing or blank".to_string());
            None
        }
        Some(v) => match v.as_str() {
            Some("trigger") => Some(Action::Trigger),
            Some("acknowledge") => Some(Action::Acknowledge),
            Some("resolve") => Some(Action::Resolve),
            Some("") => {
                errors.push("'event_action' is missing or blank".to_string());
                None
            }
            _ => {
                errors.push(
                    "'event_action' is invalid (must be one of trigger, acknowledge or resolve)"
                        .to_string(),
                );
                None
            }
        },
    };
    let dedup = match event.get("dedup_key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k)) if k.is_empty() => Ok(None),
        Some(Value::String(k)) if k.chars().count() > MAX_DEDUP_KEY => Err(format!(
            "'dedup_key' must be at most {MAX_DEDUP_KEY} characters"
        )),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(_) => Err("'dedup_key' must be a string".to_string()),
    };
    match (&action, &dedup) {
        (_, Err(e)) => errors.push(e.clone()),
        (Some(Action::Acknowledge | Action::Resolve), Ok(None)) => {
            errors.push("'dedup_key' is missing or blank".to_string());
        }
        _ => {}
    }
    if let Some(Action::Trigger) = action {
        match event.get("payload") {
            Some(Value::Object(p)) => check_payload(p, &mut errors),
            None | Some(Value::Null) => errors.push("'payload' is missing".to_string()),
            Some(_) => errors.push("'payload' must be an object".to_string()),
        }
    }
    match (action, dedup) {
        (Some(action), Ok(dedup)) if errors.is_empty() => Ok((action, dedup)),
        _ => Err(errors),
    }
}

async fn enqueue(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    let fault = s.lock().map(|mut st| {
        let fault = if st.rate_limit_next > 0 {
            st.rate_limit_next -= 1;
            Some(Fault::Limited)
        } else if st.fail_next > 0 {
            st.fail_next -= 1;
            Some(Fault::Failed)
        } else {
            None
        };
        (fault, st.routing_key.clone())
    });
    let routing_key = match fault {
        Ok((None, key)) => key,
        Ok((Some(Fault::Limited), _)) => return throttled(),
        Ok((Some(Fault::Failed), _)) | Err(_) => return server_error(),
    };
    let mut event = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return invalid(vec!["Event object must be a JSON object".to_string()]),
        Err(_) => return invalid(vec!["Event object is not valid JSON".to_string()]),
    };
    let key_ok = event
        .get("routing_key")
        .and_then(Value::as_str)
        .is_some_and(|k| k.chars().count() == ROUTING_KEY_LEN && k == routing_key);
    if !key_ok {
        return invalid(vec!["Invalid routing key".to_string()]);
    }
    let (action, dedup) = match validate(&event) {
        Ok(v) => v,
        Err(errors) => return invalid(errors),
    };
    let dedup_key = dedup.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    event.insert("dedup_key".to_string(), Value::String(dedup_key.clone()));
    match s.lock() {
        Ok(mut st) => {
            match action {
                Action::Trigger => {
                    if !st.open.contains(&dedup_key) {
                        st.open.push(dedup_key.clone());
                    }
                }
                Action::Acknowledge => {}
                Action::Resolve => st.open.retain(|k| k != &dedup_key),
            }
            st.events.push(Value::Object(event));
        }
        Err(_) => return server_error(),
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "success",
            "message": "Event processed",
            "dedup_key": dedup_key,
        })),
    )
        .into_response()
}

/// A running PagerDuty Events API emulator.
pub struct RunningPagerDuty {
    pub addr: SocketAddr,
    state: Shared,
    handle: JoinHandle<()>,
}

impl RunningPagerDuty {
    /// The events endpoint to post to.
    pub fn url(&self) -> String {
        format!("http://{}/v2/enqueue", self.addr)
    }

    /// Every accepted event, in the order it arrived, with its `dedup_key`.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }

    /// Dedup keys triggered and not resolved (acknowledged ones included),
    /// in the order first triggered.
    pub fn open_incidents(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.open.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` posts 500.
    pub fn set_fail_next(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.fail_next = n;
        }
    }

    /// Answer the next `n` posts 429.
    pub fn set_rate_limit_next(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.rate_limit_next = n;
        }
    }

    pub fn stop(self) {
        self.handle.abort();
    }
}

/// Start the emulator on `addr` (port 0 picks a free port).
pub async fn start(config: PagerDutyConfig, addr: SocketAddr) -> Result<RunningPagerDuty> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state: Shared = Arc::new(Mutex::new(Inner {
        routing_key: config.routing_key,
        fail_next: config.fail_next,
        rate_limit_next: config.rate_limit_next,
        events: Vec::new(),
        open: Vec::new(),
    }));
    let app = Router::new()
        .route("/v2/enqueue", post(enqueue))
        .with_state(state.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("PagerDuty emulator stopped: {e}");
        }
    });
    Ok(RunningPagerDuty {
        addr,
        state,
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pagerduty(config: PagerDutyConfig) -> RunningPagerDuty {
        start(config, ([127, 0, 0, 1], 0).into()).await.unwrap()
    }

    fn trigger(dedup_key: Option<&str>) -> Value {
        let mut event = json!({
            "routing_key": DEFAULT_ROUTING_KEY,
            "event_action": "trigger",
            "payload": {
                "summary": "Sync to HubSpot failed",
                "source": "ferry",
                "severity": "error",
                "custom_details": {"rows": 3},
            },
        });
        if let Some(k) = dedup_key {
            event["dedup_key"] = json!(k);
        }
        event
    }

    #[tokio::test]
    async fn accepts_a_trigger_after_throttle_and_failure() {
        let pd = pagerduty(PagerDutyConfig {
            fail_next: 1,
            rate_limit_next: 1,
            ..PagerDutyConfig::default()
        })
        .await;
        let c = reqwest::Client::new();
        let r = c.post(pd.url()).json(&trigger(None)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert!(r.headers().get("retry-after").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "throttle exceeded");
        let r = c.post(pd.url()).json(&trigger(None)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 500);
        assert!(r.text().await.unwrap().starts_with("<html>"));
        let r = c.post(pd.url()).json(&trigger(None)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "success");
        assert_eq!(body["message"], "Event processed");
        let key = body["dedup_key"].as_str().unwrap().to_string();
        assert_eq!(key.len(), 32);
        let events = pd.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["dedup_key"], key.as_str());
        assert_eq!(events[0]["payload"]["custom_details"]["rows"], 3);
        assert_eq!(pd.open_incidents(), vec![key]);
        pd.stop();
    }

    #[tokio::test]
    async fn rejects_bad_events_with_pagerduty_error_bodies() {
        let pd = pagerduty(PagerDutyConfig::default()).await;
        let c = reqwest::Client::new();
        let post = |body: String| c.post(pd.url()).body(body).send();

        let mut wrong_key = trigger(None);
        wrong_key["routing_key"] = json!("short");
        let r = post(wrong_key.to_string()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["Invalid routing key"],
            })
        );

        let mut bad = trigger(None);
        bad["payload"]["summary"] = json!("");
        bad["payload"]["severity"] = json!("fatal");
        let r = post(bad.to_string()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "invalid event");
        let errors = body["errors"].to_string();
        assert!(
            errors.contains("'payload.summary' is missing or blank"),
            "{errors}"
        );
        assert!(errors.contains("'payload.severity' is invalid"), "{errors}");

        let resolve = json!({"routing_key": DEFAULT_ROUTING_KEY, "event_action": "resolve"});
        let r = post(resolve.to_string()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"], json!(["'dedup_key' is missing or blank"]));

        let r = post("not json".to_string()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);

        assert!(pd.events().is_empty());
        pd.stop();
    }

    #[tokio::test]
    async fn trigger_twice_then_resolve_closes_one_incident() {
        let pd = pagerduty(PagerDutyConfig::default()).await;
        let c = reqwest::Client::new();
        for _ in 0..2 {
            let r = c
                .post(pd.url())
                .json(&trigger(Some("sync-hubspot")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["dedup_key"], "sync-hubspot");
        }
        assert_eq!(pd.open_incidents(), vec!["sync-hubspot".to_string()]);
        let resolve = json!({
            "routing_key": DEFAULT_ROUTING_KEY,
            "event_action": "resolve",
            "dedup_key": "sync-hubspot",
        });
        let r = c.post(pd.url()).json(&resolve).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        assert!(pd.open_incidents().is_empty());
        // Resolving what is not open is still accepted.
        let r = c.post(pd.url()).json(&resolve).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(pd.events().len(), 4);
        pd.stop();
    }
}
