//! Signed webhooks: verify, persist, acknowledge, then land in micro-batches.
//!
//! Accepting a delivery (`POST /webhooks/<source>`):
//! 1. a body over `max_body_bytes` is refused with 413, nothing kept;
//! 2. the signature is checked (HMAC-SHA256 with the source's secret,
//!    constant-time compare) and a signed timestamp must be within
//!    `tolerance_seconds`: otherwise 401, nothing kept;
//! 3. a signed body that is not JSON or not the preset's shape, and each
//!    event in it without an id, goes to `ferry.quarantine` with the reason
//!    and its text (the sender signed it; a 4xx would drop it for good);
//! 4. each event in the body becomes a canonical envelope and is written to
//!    the lake's inbox, `_ferry/webhooks/<source>/inbox/<sha256(identity)>.json`,
//!    write-once: an event already received is a duplicate and is not kept
//!    twice. The identity is the vendor's whole one (HubSpot: portal,
//!    subscription and event id; Stripe: account and event id; Typeform:
//!    form and event id), not the event id alone;
//! 5. only then the sender gets 200. If the lake cannot take the event, the
//!    answer is 503: vendors retry 5xx, and drop a 4xx delivery for good.
//!
//! Duplicates are recognized for `DEDUPE_RETENTION` (vendors redeliver
//! within a day or three); older ids are forgotten, so the memory is bounded.
//! An inbox file that does not parse is moved to
//! `_ferry/webhooks/<source>/quarantine/` and the rest still land.
//!
//! A background task lands the inbox every `flush` interval as one Parquet
//! file in `<source>.events`, records the landed ids in
//! `_ferry/webhooks/<source>/landed/`, then deletes those inbox files. A
//! crash after acknowledging loses nothing (the inbox is in the lake); a
//! crash between landing and recording can land a batch twice, which the
//! `latest_by` macro removes by `event_id`.

pub mod config;

pub mod reconcile;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::{WebhookPreset, WebhookSpec};
use crate::error::{Error, Result};
use crate::lake::land::Rejected;
use crate::lake::layout::{META, RunId, StreamRef};
use crate::lake::log::{put_once, ts_array, ts_type};
use crate::lake::{Lake, Lander};

type HmacSha256 = Hmac<Sha256>;

/// Version of the envelope's columns.
pub const SCHEMA_VERSION: i64 = 1;

/// The canonical event envelope every webhook source lands.
pub fn envelope_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("source_system", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, true),
        Field::new("contact_id", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
        Field::new("fired_at", ts_type(), true),
        Field::new("received_at", ts_type(), false),
        Field::new("schema_version", DataType::Int64, false),
    ]))
}

/// One event as received.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub event_id: String,
    /// The vendor's whole identity of the event (deduplication key); not a
    /// column of `<source>.events`.
    #[serde(default)]
    pub identity: String,
    pub event_type: Option<String>,
    pub source_system: String,
    pub account_id: Option<String>,
    pub contact_id: Option<String>,
    pub payload: String,
    pub fired_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    TooLarge,
    BadSignature(String),
    /// The lake could not take the events: 503, so the vendor retries.
    Unavailable(String),
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::TooLarge => "body too large".into(),
            Refused::BadSignature(m) | Refused::Unavailable(m) => m.clone(),
        }
    }
}

/// How long an event's identity is remembered for deduplication.
pub const DEDUPE_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(7);

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        HmacSha256::new_from_slice(b"")
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    })
}

/// Sign `message` (for tests and senders): raw HMAC-SHA256 bytes.
pub fn sign(secret: &str, message: &[u8]) -> Vec<u8> {
    let mut m = mac(secret);
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn check_time(ts: i64, tolerance: u64, now: DateTime<Utc>) -> std::result::Result<(), Refused> {
    if (now.timestamp() - ts).unsigned_abs() > tolerance {
        return Err(Refused::BadSignature(format!(
            "timestamp is {} s away from now (tolerance {tolerance} s): a replay or a wrong clock",
            now.timestamp() - ts
        )));
    }
    Ok(())
}

/// Verify a delivery's signature for the source's preset.
pub fn verify(
    spec: &WebhookSpec,
    method: &str,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> std::result::Result<(), Refused> {
    let bad = |m: &str| Refused::BadSignature(m.to_string());
    let secret = spec.secret.expose();
    match spec.preset {
        WebhookPreset::Hubspot => {
            let sig = header(headers, "x-hubspot-signature-v3")
                .ok_or_else(|| bad("missing X-HubSpot-Signature-v3"))?;
            let ts = header(headers, "x-hubspot-request-timestamp")
                .ok_or_else(|| bad("missing X-HubSpot-Request-Timestamp"))?;
            let ms: i64 = ts
                .parse()
                .map_err(|_| bad("X-HubSpot-Request-Timestamp is not a number"))?;
            check_time(ms / 1000, spec.tolerance_seconds, now)?;
            let given = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .map_err(|_| bad("X-HubSpot-Signature-v3 is not base64"))?;
            let mut m = mac(secret);
            m.update(method.as_bytes());
            m.update(url.as_bytes());
            m.update(body);
            m.update(ts.as_bytes());
            m.verify_slice(&given)
                .map_err(|_| bad("signature mismatch"))
        }
        WebhookPreset::Stripe => {
            let sig = header(headers, "stripe-signature")
                .ok_or_else(|| bad("missing Stripe-Signature"))?;
            let mut t = None;
            let mut v1 = Vec::new();
            for part in sig.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = Some(v.to_string()),
                    Some(("v1", v)) => v1.push(v.to_string()),
                    _ => {}
                }
            }
            let t = t.ok_or_else(|| bad("Stripe-Signature has no t="))?;
            let ts: i64 = t
                .parse()
                .map_err(|_| bad("Stripe-Signature t= is not a number"))?;
            check_time(ts, spec.tolerance_seconds, now)?;
            for candidate in v1 {
                let Ok(given) = hex::decode(&candidate) else {
                    continue;
                };
                let mut m = mac(secret);
                m.update(t.as_bytes());
                m.update(b".");
                m.update(body);
                if m.verify_slice(&given).is_ok() {
                    return Ok(());
                }
            }
            Err(bad("signature mismatch"))
        }
        WebhookPreset::Typeform => {
            let sig = header(headers, "typeform-signature")
                .ok_or_else(|| bad("missing Typeform-Signature"))?;
            let b64 = sig
                .strip_prefix("sha256=")
                .ok_or_else(|| bad("Typeform-Signature must start with sha256="))?;
            let given = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad("Typeform-Signature is not base64"))?;
            let mut m = mac(secret);
            m.update(body);
            m.verify_slice(&given)
                .map_err(|_| bad("signature mismatch"))
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn from_epoch(v: &Value, millis: bool) -> Option<DateTime<Utc>> {
    let n = v.as_i64().or_else(|| v.as_str()?.parse().ok())?;
    if millis {
        Utc.timestamp_millis_opt(n).single()
    } else {
        Utc.timestamp_opt(n, 0).single()
    }
}

fn from_iso(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A verified body's events, and what of it is not an event.
#[derive(Debug, Default)]
pub struct Events {
    pub events: Vec<Envelope>,
    /// Signed but unusable: a body that is not JSON or not the preset's
    /// shape, an event that is not an object or has no id. Quarantined with
    /// the reason and the text as sent; the sender still gets 200 (a 4xx is
    /// dropped by the vendor for good).
    pub rejected: Vec<Rejected>,
}

/// A body as text for quarantine: as sent when it is UTF-8, else base64
/// (said in the reason) so no byte is lost.
fn body_text(body: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(body) {
        Ok(t) => (t.to_string(), ""),
        Err(_) => (
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(body)
            ),
            " (not UTF-8: kept as base64)",
        ),
    }
}

/// Turn a verified body into envelopes; what is not an event goes to
/// [`Events::rejected`].
pub fn envelopes(spec: &WebhookSpec, body: &[u8], now: DateTime<Utc>) -> Events {
    let origin = format!("POST /webhooks/{}", spec.name);
    let whole = |reason: String| {
        let (record, note) = body_text(body);
        Events {
            events: Vec::new(),
            rejected: vec![Rejected {
                origin: Some(origin.clone()),
                reason: format!(
                    "{reason}{note}; the sender (the vendor) signed it, so it was kept here instead of refused"
                ),
                record,
            }],
        }
    };
    // HubSpot sends an array of events: each is read from its own text, so
    // a quarantined event keeps the text as sent.
    let texts: Vec<&serde_json::value::RawValue> = match serde_json::from_slice(body) {
        Ok(t) if spec.preset == WebhookPreset::Hubspot => t,
        _ => match serde_json::from_slice::<&serde_json::value::RawValue>(body) {
            Ok(t) if t.get().trim_start().starts_with('{') => vec![t],
            Ok(_) => {
                return whole(match spec.preset {
                    WebhookPreset::Hubspot => {
                        "the body is not an array of events (or one event object)".into()
                    }
                    _ => "the body is not a JSON object (one event)".into(),
                });
            }
            Err(e) => return whole(format!("the body is not JSON ({e})")),
        },
    };
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let events: Vec<(Value, &str)> = texts
        .into_iter()
        .map(|t| {
            // A RawValue is valid JSON: it parses again (a depth past
            // serde_json's limit was refused in the first parse).
            (
                serde_json::from_str(t.get()).unwrap_or(Value::Null),
                t.get(),
            )
        })
        .collect();
    let mut out = Events {
        events: Vec::with_capacity(events.len()),
        rejected: Vec::new(),
    };
    for (i, (e, sent)) in events.into_iter().enumerate() {
        let origin = if array {
            format!("{origin} event {}", i + 1)
        } else {
            origin.clone()
        };
        if !e.is_object() {
            out.rejected.push(Rejected {
                origin: Some(origin),
                reason: "an event that is not a JSON object".into(),
                record: sent.to_string(),
            });
            continue;
        }
        // What else, besides the event id, the vendor's identity of an
        // event includes: HubSpot numbers events per subscription.
        let scope = match spec.preset {
            WebhookPreset::Hubspot => text(&e["subscriptionId"]).unwrap_or_default(),
            WebhookPreset::Stripe => String::new(),
            WebhookPreset::Typeform => text(&e["form_response"]["form_id"]).unwrap_or_default(),
        };
        let (id, kind, account, contact, fired) = match spec.preset {
            WebhookPreset::Hubspot => (
                text(&e["eventId"]),
                text(&e["subscriptionType"]),
                text(&e["portalId"]),
                text(&e["subscriptionType"])
                    .filter(|t| t.starts_with("contact."))
                    .and_then(|_| text(&e["objectId"])),
                from_epoch(&e["occurredAt"], true),
            ),
            WebhookPreset::Stripe => (
                text(&e["id"]),
                text(&e["type"]),
                text(&e["account"]),
                text(&e["data"]["object"]["customer"]),
                from_epoch(&e["created"], false),
            ),
            WebhookPreset::Typeform => (
                text(&e["event_id"]),
                text(&e["event_type"]),
                text(&e["form_response"]["form_id"]),
                text(&e["form_response"]["hidden"]["contact_id"])
                    .or_else(|| text(&e["form_response"]["hidden"]["email"])),
                from_iso(&e["form_response"]["submitted_at"]),
            ),
        };
        let Some(id) = id else {
            let field = match spec.preset {
                WebhookPreset::Hubspot => "eventId",
                WebhookPreset::Stripe => "id",
                WebhookPreset::Typeform => "event_id",
            };
            out.rejected.push(Rejected {
                origin: Some(origin),
                reason: format!("an event without an id ({field}), so it cannot be deduplicated"),
                record: sent.to_string(),
            });
            continue;
        };
        let identity = format!(
            "{}\u{1f}{}\u{1f}{scope}\u{1f}{id}",
            spec.name,
            account.as_deref().unwrap_or_default()
        );
        out.events.push(Envelope {
            identity,
            event_id: id,
            event_type: kind,
            source_system: format!("{:?}", spec.preset).to_lowercase(),
            account_id: account,
            contact_id: contact,
            payload: e.to_string(),
            fired_at: fired,
            received_at: now,
        });
    }
    out
}

fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn inbox(source: &str) -> Path {
    Path::from_iter([META, "webhooks", source, "inbox"])
}

fn landed_prefix(source: &str) -> Path {
    Path::from_iter([META, "webhooks", source, "landed"])
}

/// Identity hashes received within [`DEDUPE_RETENTION`], with when.
#[derive(Default)]
struct Seen {
    hashes: HashSet<String>,
    order: std::collections::VecDeque<(DateTime<Utc>, String)>,
}

impl Seen {
    fn insert(&mut self, hash: String, at: DateTime<Utc>) {
        if self.hashes.insert(hash.clone()) {
            self.order.push_back((at, hash));
        }
    }

    fn forget_before(&mut self, cutoff: DateTime<Utc>) {
        while self.order.front().is_some_and(|(t, _)| *t < cutoff) {
            if let Some((_, h)) = self.order.pop_front() {
                self.hashes.remove(&h);
            }
        }
    }

    fn contains(&self, hash: &str) -> bool {
        self.hashes.contains(hash)
    }
}

/// One webhook source's receiver: the inbox, the landing loop's state.
pub struct Receiver {
    pub spec: WebhookSpec,
    lake: Lake,
    /// Hashes of event identities received (inbox or landed) lately.
    seen: Mutex<Seen>,
    /// Serializes landing rounds.
    landing: tokio::sync::Mutex<()>,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: usize,
    pub duplicates: usize,
    /// Signed parts that are not events, kept in `ferry.quarantine`.
    pub quarantined: usize,
}

impl Receiver {
    /// Open a receiver, loading the ids already landed or waiting in the inbox.
    pub async fn open(spec: WebhookSpec, lake: Lake) -> Result<Receiver> {
        let mut seen = Seen::default();
        let cutoff = Utc::now() - DEDUPE_RETENTION;
        let store = lake.store().clone();
        let listed: Vec<_> = match store
            .list(Some(&landed_prefix(&spec.name)))
            .try_collect()
            .await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut listed: Vec<_> = listed
            .into_iter()
            .filter(|o| o.last_modified >= cutoff)
            .collect();
        listed.sort_by_key(|o| o.last_modified);
        for o in listed {
            let bytes = store.get(&o.location).await?.bytes().await?;
            match serde_json::from_slice::<Vec<String>>(&bytes) {
                Ok(ids) => ids
                    .into_iter()
                    .for_each(|h| seen.insert(h, o.last_modified)),
                Err(e) => tracing::warn!(
                    source = %spec.name,
                    "ignoring an unreadable landed-ids record {} ({e}); events it lists may be landed again if redelivered",
                    o.location
                ),
            }
        }
        let pending: Vec<_> = match store.list(Some(&inbox(&spec.name))).try_collect().await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for o in pending {
            if let Some(name) = o.location.filename().and_then(|n| n.strip_suffix(".json")) {
                seen.insert(name.to_string(), o.last_modified);
            }
        }
        Ok(Receiver {
            spec,
            lake,
            seen: Mutex::new(seen),
            landing: tokio::sync::Mutex::new(()),
        })
    }

    /// Verify and persist one delivery. `Ok` means every event in it is
    /// durable in the lake (or was received before).
    pub async fn accept(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> std::result::Result<Accepted, Refused> {
        if body.len() > self.spec.max_body_bytes {
            return Err(Refused::TooLarge);
        }
        let now = Utc::now();
        verify(&self.spec, method, url, headers, body, now)?;
        let Events { events, rejected } = envelopes(&self.spec, body, now);
        let mut result = Accepted {
            accepted: 0,
            duplicates: 0,
            quarantined: rejected.len(),
        };
        if let Ok(mut s) = self.seen.lock() {
            s.forget_before(now - DEDUPE_RETENTION);
        }
        for e in events {
            let hash = id_hash(&e.identity);
            if self.seen.lock().map(|s| s.contains(&hash)).unwrap_or(false) {
                result.duplicates += 1;
                continue;
            }
            let bytes = serde_json::to_vec(&e).map_err(|x| {
                Refused::Unavailable(format!(
                    "ferry could not encode the event ({x}); a ferry bug, please report it"
                ))
            })?;
            let path = inbox(&self.spec.name).join(format!("{hash}.json"));
            match put_once(self.lake.store().as_ref(), &path, bytes).await {
                Ok(()) => result.accepted += 1,
                Err(Error::Storage(object_store::Error::AlreadyExists { .. })) => {
                    result.duplicates += 1
                }
                Err(err) => {
                    tracing::error!(source = %self.spec.name, "cannot persist a webhook event: {err}");
                    return Err(Refused::Unavailable(
                        "the lake is unavailable; nothing of this delivery is lost if it is retried".into(),
                    ));
                }
            }
            if let Ok(mut s) = self.seen.lock() {
                s.insert(hash, now);
            }
        }
        if !rejected.is_empty() {
            // Durable in ferry.quarantine before the 200, like the events.
            let stored = match StreamRef::new(&self.spec.name, "events") {
                Ok(stream) => {
                    Lander::new(self.lake.clone(), RunId::new())
                        .reject(&stream, &rejected)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(err) = stored {
                tracing::error!(source = %self.spec.name, "cannot quarantine a webhook delivery: {err}");
                return Err(Refused::Unavailable(
                    "the lake is unavailable; nothing of this delivery is lost if it is retried"
                        .into(),
                ));
            }
            crate::metrics::extracted(
                &format!("{}.events", self.spec.name),
                0,
                rejected.len() as u64,
            );
            for r in &rejected {
                tracing::warn!(source = %self.spec.name, "quarantined part of a signed delivery ({}): {}", r.origin.as_deref().unwrap_or_default(), r.reason);
            }
        }
        Ok(result)
    }

    /// Land everything in the inbox as one file; returns the events landed.
    pub async fn land(&self) -> Result<usize> {
        let _one = self.landing.lock().await;
        let store = self.lake.store().clone();
        let listed: Vec<_> = match store
            .list(Some(&inbox(&self.spec.name)))
            .try_collect()
            .await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        if listed.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(listed.len());
        let mut hashes = Vec::with_capacity(listed.len());
        let mut landed = Vec::with_capacity(listed.len());
        // Read 16 at a time: on an object store each read is a round trip.
        let locations: Vec<Path> = listed.iter().map(|o| o.location.clone()).collect();
        let bodies: Vec<object_store::Result<bytes::Bytes>> = futures::stream::iter(locations)
            .map(|location| {
                let store = store.clone();
                async move { store.get(&location).await?.bytes().await }
            })
            .buffered(16)
            .collect()
            .await;
        for (o, bytes) in listed.iter().zip(bodies) {
            let bytes = bytes?;
            let e: Envelope = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(err) => {
                    // One bad file must not stop every later event landing.
                    let name = o.location.filename().unwrap_or("event.json").to_string();
                    let to =
                        Path::from_iter([META, "webhooks", &self.spec.name, "quarantine", &name]);
                    tracing::error!(
                        source = %self.spec.name,
                        "inbox file {} does not parse ({err}); moved to {to}",
                        o.location
                    );
                    match put_once(store.as_ref(), &to, bytes.to_vec()).await {
                        Ok(()) | Err(Error::Storage(object_store::Error::AlreadyExists { .. })) => {
                            store.delete(&o.location).await?;
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            };
            landed.push(o.clone());
            events.push(e);
            hashes.push(
                o.location
                    .filename()
                    .unwrap_or_default()
                    .trim_end_matches(".json")
                    .to_string(),
            );
        }
        if events.is_empty() {
            return Ok(0);
        }
        let batch = envelope_batch(&events)?;
        let run_id = RunId::new();
        let stream = StreamRef::new(&self.spec.name, "events")?;
        let landed_report = Lander::new(self.lake.clone(), run_id.clone())
            .land_batches(&stream, Default::default(), [batch])
            .await?;
        crate::metrics::extracted(
            &stream.to_string(),
            landed_report.rows,
            landed_report.rejected,
        );
        // Landed: remember the ids, then empty those inbox files.
        let record = landed_prefix(&self.spec.name).join(format!("{run_id}.json"));
        put_once(
            store.as_ref(),
            &record,
            serde_json::to_vec(&hashes).unwrap_or_default(),
        )
        .await?;
        for o in &landed {
            match store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(events.len())
    }

    /// Land every `every` until `stop` fires, then once more.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {
                    if let Err(e) = self.land().await {
                        tracing::error!(source = %self.spec.name, "landing webhook events failed: {e}");
                    }
                    return;
                }
            }
            if let Err(e) = self.land().await {
                tracing::error!(source = %self.spec.name, "landing webhook events failed (kept in the inbox, retried): {e}");
            }
        }
    }
}

/// Envelopes as one Arrow batch.
pub fn envelope_batch(events: &[Envelope]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&Envelope) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(events.iter().map(f).collect::<Vec<_>>()))
    };
    let fired: ArrayRef = Arc::new(
        arrow::array::TimestampMicrosecondArray::from(
            events
                .iter()
                .map(|e| e.fired_at.map(|t| t.timestamp_micros()))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    );
    let cols: Vec<ArrayRef> = vec![
        s(&|e| Some(e.event_id.clone())),
        s(&|e| e.event_type.clone()),
        s(&|e| Some(e.source_system.clone())),
        s(&|e| e.account_id.clone()),
        s(&|e| e.contact_id.clone()),
        s(&|e| Some(e.payload.clone())),
        fired,
        ts_array(events.iter().map(|e| e.received_at)),
        Arc::new(Int64Array::from(vec![SCHEMA_VERSION; events.len()])),
    ];
    Ok(RecordBatch::try_new(envelope_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: every event id ever received stayed in memory (and was
    /// loaded at every start), so a busy receiver grew without bound.
    #[test]
    fn dedupe_memory_forgets_identities_past_the_retention() {
        let mut seen = Seen::default();
        let t0 = Utc::now() - DEDUPE_RETENTION - chrono::TimeDelta::hours(1);
        for i in 0..1000 {
            seen.insert(format!("old{i}"), t0);
        }
        seen.insert("fresh".into(), Utc::now());
        seen.insert("fresh".into(), Utc::now());
        seen.forget_before(Utc::now() - DEDUPE_RETENTION);
        assert_eq!((seen.hashes.len(), seen.order.len()), (1, 1));
        assert!(seen.contains("fresh") && !seen.contains("old3"));
    }

    fn spec(preset: WebhookPreset) -> WebhookSpec {
        WebhookSpec {
            name: "hooks".into(),
            preset,
            secret: crate::project::Secret::new("whsec"),
            max_body_bytes: 1000,
            tolerance_seconds: 300,
            public_url: None,
            reconcile: None,
        }
    }

    #[test]
    fn presets_verify_their_signatures() {
        let now = Utc::now();
        let body = br#"{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {"object": {"customer": "cus_9"}}}"#;
        let t = now.timestamp().to_string();
        let sig = hex::encode(sign(
            "whsec",
            format!("{t}.{}", String::from_utf8_lossy(body)).as_bytes(),
        ));
        let mut h = HeaderMap::new();
        h.insert(
            "stripe-signature",
            format!("t={t},v1={sig}").parse().unwrap(),
        );
        assert_eq!(
            verify(&spec(WebhookPreset::Stripe), "POST", "", &h, body, now),
            Ok(())
        );
        // Tampered body, wrong secret, stale timestamp: refused.
        assert!(verify(&spec(WebhookPreset::Stripe), "POST", "", &h, b"{}", now).is_err());
        let later = now + chrono::Duration::seconds(301);
        assert!(
            matches!(verify(&spec(WebhookPreset::Stripe), "POST", "", &h, body, later), Err(Refused::BadSignature(m)) if m.contains("replay"))
        );
        let env = envelopes(&spec(WebhookPreset::Stripe), body, now).events;
        assert_eq!(
            (env[0].event_id.as_str(), env[0].contact_id.as_deref()),
            ("evt_1", Some("cus_9"))
        );

        let b64 = base64::engine::general_purpose::STANDARD.encode(sign("whsec", body));
        let mut h = HeaderMap::new();
        h.insert(
            "typeform-signature",
            format!("sha256={b64}").parse().unwrap(),
        );
        assert_eq!(
            verify(&spec(WebhookPreset::Typeform), "POST", "", &h, body, now),
            Ok(())
        );
        h.insert("typeform-signature", "sha256=AAAA".parse().unwrap());
        assert!(verify(&spec(WebhookPreset::Typeform), "POST", "", &h, body, now).is_err());

        let ms = now.timestamp_millis().to_string();
        let url = "https://hooks.example.com/webhooks/hooks";
        let mut msg = Vec::new();
        msg.extend_from_slice(b"POST");
        msg.extend_from_slice(url.as_bytes());
        msg.extend_from_slice(body);
        msg.extend_from_slice(ms.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(sign("whsec", &msg));
        let mut h = HeaderMap::new();
        h.insert("x-hubspot-signature-v3", b64.parse().unwrap());
        h.insert("x-hubspot-request-timestamp", ms.parse().unwrap());
        assert_eq!(
            verify(&spec(WebhookPreset::Hubspot), "POST", url, &h, body, now),
            Ok(())
        );
        assert!(
            verify(
                &spec(WebhookPreset::Hubspot),
                "POST",
                "https://elsewhere/x",
                &h,
                body,
                now
            )
            .is_err()
        );
    }
}
