//! HubSpot as a sync destination: the CRM v3 objects API.
//!
//! - properties: `GET /crm/v3/properties/{object}` (checked once per run);
//! - lookups: `POST .../batch/read` with `idProperty` for a unique match
//!   property, else `POST .../search` with an `IN` filter, paged, within the
//!   search endpoint's own 4 requests per second;
//! - writes: `POST .../batch/{upsert,create,update,archive}`, at most 100
//!   inputs per call, values as strings.
//!
//! Replies are matched back to records by CRM id or by the match property's
//! value (never by position: HubSpot does not promise the order of results).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::{Call, CallError, Client, RateLimiter, Vendor};
use crate::sync::config::Destination as DestinationConfig;
use crate::sync::destination::{Destination, Existing, Op, Outcome, Outgoing, Refusal, Written};

/// HubSpot's rate-limit conventions.
pub const VENDOR: Vendor = Vendor {
    name: "hubspot",
    max_header: "x-hubspot-ratelimit-max",
    remaining_header: "x-hubspot-ratelimit-remaining",
    daily_remaining_header: "x-hubspot-ratelimit-daily-remaining",
    is_daily: |body| body["policyName"].as_str() == Some("DAILY"),
};

/// One HubSpot account: the client (with the account's rate budget) and the
/// search endpoint's budget, shared by every sync to the account.
pub struct Account {
    pub client: Client,
    search: Arc<RateLimiter>,
}

impl Account {
    pub fn new(config: &DestinationConfig) -> Result<Account> {
        // The account's budget is shared with every other user of the same
        // account in this process (other syncs, the HubSpot extractor).
        let key = crate::http::account_key("hubspot", &config.url, &config.auth);
        let limiter = crate::http::account_budget(
            &key,
            config.requests_per_10s,
            Duration::from_secs(10),
            Some(config.daily_limit),
        );
        let search =
            crate::http::account_budget(&format!("{key} search"), 4, Duration::from_secs(1), None);
        let client = Client::new(
            &config.url,
            config.auth.clone(),
            VENDOR,
            limiter,
            config.retry,
        )
        .map_err(Error::Input)?;
        Ok(Account { client, search })
    }
}

/// HubSpot for one sync: the shared account plus the sync's own budget.
pub struct HubSpot {
    account: Arc<Account>,
    own: Option<RateLimiter>,
}

impl HubSpot {
    pub fn new(account: Arc<Account>, requests_per_10s: Option<usize>) -> HubSpot {
        HubSpot {
            account,
            own: requests_per_10s.map(|n| RateLimiter::new(n, Duration::from_secs(10), None)),
        }
    }

    async fn send(&self, mut call: Call<'_>) -> Result<Value, CallError> {
        if let Some(own) = &self.own {
            call = call.limited_by(own);
        }
        Ok(self.account.client.send(call).await?.body)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn record(v: &Value) -> Option<Existing> {
    let id = text(&v["id"])?;
    let properties = v["properties"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| text(v).map(|t| (k.clone(), t)))
                .collect()
        })
        .unwrap_or_default();
    let created_at = v["createdAt"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    Some(Existing {
        id,
        properties,
        created_at,
    })
}

/// The ids a 207 error entry is about.
fn error_ids(e: &Value) -> Vec<String> {
    e["context"]["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default()
}

#[async_trait]
impl Destination for HubSpot {
    fn max_batch(&self) -> usize {
        100
    }

    async fn prepare(
        &self,
        object: &str,
        key_property: &str,
        properties: &[String],
    ) -> Result<bool> {
        let body = self
            .send(Call::get(format!("/crm/v3/properties/{object}")))
            .await
            .map_err(|e| match e {
                CallError::Rejected { .. } => Error::Input(format!(
                    "HubSpot has no object type {object:?} ({}): use contacts, companies, deals or a custom object's type id",
                    e.message()
                )),
                other => call_error(other),
            })?;
        let defs: HashMap<String, bool> = body["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| {
                        Some((
                            d["name"].as_str()?.to_string(),
                            d["hasUniqueValue"].as_bool().unwrap_or(false),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for p in properties.iter().map(String::as_str).chain([key_property]) {
            if !defs.contains_key(p) {
                let mut names: Vec<&String> = defs.keys().collect();
                names.sort_by_key(|n| strsim::levenshtein(n, p));
                return Err(Error::Input(format!(
                    "HubSpot {object} has no property {p:?}{}: create it in HubSpot (Settings → Properties) or fix the mapping",
                    names
                        .first()
                        .map(|n| format!(" (did you mean {n:?}?)"))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(defs.get(key_property).copied().unwrap_or(false) || key_property == "hs_object_id")
    }

    async fn lookup(
        &self,
        object: &str,
        key_property: &str,
        unique: bool,
        keys: &[String],
        properties: &[String],
    ) -> Result<HashMap<String, Vec<Existing>>, CallError> {
        let mut props: Vec<&str> = properties.iter().map(String::as_str).collect();
        props.push(key_property);
        let mut found: HashMap<String, Vec<Existing>> = HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        if unique {
            for chunk in keys.chunks(100) {
                let body = json!({
                    "idProperty": key_property,
                    "properties": props,
                    "inputs": chunk.iter().map(|k| json!({"id": k})).collect::<Vec<_>>(),
                });
                let reply = self
                    .send(Call::post(
                        format!("/crm/v3/objects/{object}/batch/read"),
                        &body,
                        true,
                    ))
                    .await?;
                for r in reply["results"].as_array().into_iter().flatten() {
                    if let Some(e) = record(r)
                        && let Some(k) = e.properties.get(key_property)
                    {
                        found.entry(k.to_lowercase()).or_default().push(e);
                    }
                }
            }
            return Ok(found);
        }
        for chunk in keys.chunks(100) {
            let mut after: Option<String> = None;
            loop {
                let mut body = json!({
                    "filterGroups": [{"filters": [{
                        "propertyName": key_property,
                        "operator": "IN",
                        "values": chunk,
                    }]}],
                    "properties": props,
                    "limit": 200,
                });
                if let Some(a) = &after {
                    body["after"] = json!(a);
                }
                let call = Call::post(format!("/crm/v3/objects/{object}/search"), &body, true)
                    .limited_by(&self.account.search);
                let reply = self.send(call).await?;
                for r in reply["results"].as_array().into_iter().flatten() {
                    if let Some(e) = record(r)
                        && let Some(k) = e.properties.get(key_property)
                    {
                        found.entry(k.to_lowercase()).or_default().push(e);
                    }
                }
                match reply["paging"]["next"]["after"].as_str() {
                    Some(a) => after = Some(a.to_string()),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    async fn write(
        &self,
        object: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Vec<Outcome>, CallError> {
        let props = |r: &Outgoing| json!(r.properties);
        let (path, inputs): (&str, Vec<Value>) = match op {
            Op::Upsert => (
                "upsert",
                rows.iter()
                    .map(|r| json!({"id": r.key, "idProperty": key_property, "properties": props(r)}))
                    .collect(),
            ),
            Op::Create => (
                "create",
                rows.iter()
                    .map(|r| {
                        let mut p = r.properties.clone();
                        p.insert(key_property.to_string(), r.key.clone());
                        json!({"properties": p})
                    })
                    .collect(),
            ),
            Op::Update => (
                "update",
                rows.iter()
                    .map(|r| json!({"id": r.id, "properties": props(r)}))
                    .collect(),
            ),
            Op::UpdateByKey => (
                "update",
                rows.iter()
                    .map(|r| json!({"id": r.key, "idProperty": key_property, "properties": props(r)}))
                    .collect(),
            ),
            Op::Archive => (
                "archive",
                rows.iter().map(|r| json!({"id": r.id})).collect(),
            ),
        };
        let mut body = json!({ "inputs": inputs });
        if op == Op::Upsert || op == Op::UpdateByKey {
            body["idProperty"] = json!(key_property);
        }
        let reply = self
            .send(Call::post(
                format!("/crm/v3/objects/{object}/batch/{path}"),
                &body,
                op != Op::Create,
            ))
            .await?;
        if op == Op::Archive {
            // 204: every input archived (unknown ids are already gone).
            return Ok(rows
                .iter()
                .map(|r| Outcome {
                    key: r.key.clone(),
                    result: Ok(Written {
                        id: r.id.clone().unwrap_or_default(),
                        created: false,
                    }),
                })
                .collect());
        }
        // Match results back: by id for updates by id, else by the key property.
        let by_id = op == Op::Update;
        let index: HashMap<String, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let k = if by_id {
                    r.id.clone().unwrap_or_default()
                } else {
                    r.key.to_lowercase()
                };
                (k, i)
            })
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
        for r in reply["results"].as_array().into_iter().flatten() {
            let Some(e) = record(r) else { continue };
            let k = if by_id {
                Some(e.id.clone())
            } else {
                e.properties.get(key_property).map(|v| v.to_lowercase())
            };
            if let Some(&i) = k.as_ref().and_then(|k| index.get(k)) {
                let created = match op {
                    Op::Create => true,
                    Op::Upsert => r["new"].as_bool().unwrap_or(false),
                    _ => false,
                };
                outcomes[i] = Some(Outcome {
                    key: rows[i].key.clone(),
                    result: Ok(Written { id: e.id, created }),
                });
            }
        }
        for err in reply["errors"].as_array().into_iter().flatten() {
            let category = err["category"].as_str().unwrap_or("ERROR").to_string();
            let message = err["message"].as_str().unwrap_or("refused").to_string();
            for id in error_ids(err) {
                let k = if by_id { id.clone() } else { id.to_lowercase() };
                if let Some(&i) = index.get(&k)
                    && outcomes[i].is_none()
                {
                    outcomes[i] = Some(Outcome {
                        key: rows[i].key.clone(),
                        result: Err(Refusal {
                            category: category.clone(),
                            message: message.clone(),
                            response: Some(err.to_string()),
                            transient: false,
                        }),
                    });
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| Outcome {
                    key: rows[i].key.clone(),
                    result: Err(Refusal {
                        category: "NO_RESULT".into(),
                        message: "the reply did not mention this record; it is not confirmed and will be sent again".into(),
                        response: None,
                        transient: true,
                    }),
                })
            })
            .collect())
    }

    fn usage(&self) -> (u64, u64) {
        let s = &self.account.client.stats;
        (
            s.calls.load(std::sync::atomic::Ordering::SeqCst),
            s.rate_limited.load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// A call error that ends a sync step, as ferry's error.
pub fn call_error(e: CallError) -> Error {
    match e {
        CallError::Auth { .. } => Error::Input(format!(
            "HubSpot refused the credentials ({}). No further calls were made. \
             Check the token (or OAuth app) in [destinations] and its scopes (crm.objects.*.read/write)",
            e.message()
        )),
        CallError::DailyLimit => Error::Input(
            "HubSpot's daily API budget is spent. Progress so far is saved; run `ferry sync` again after it resets (midnight in the account's time zone)".into(),
        ),
        other => Error::Input(format!("HubSpot: {}", other.message())),
    }
}
