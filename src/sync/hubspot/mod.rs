//! HubSpot as a sync destination: the CRM v3 objects API.
//!
//! - properties: `GET /crm/v3/properties/{object}` (checked once per run);
//! - lookups: `POST .../batch/read` with `idProperty` for a unique match
//!   property, else `POST .../search` with an `IN` filter, paged, within the
//!   search endpoint's own 4 requests per second;
//! - writes: `POST .../batch/{upsert,create,update,archive}`, at most 100
//!   inputs per call, values as strings.
//!
//! Every write input carries an `objectWriteTraceId` (its position in the
//! batch), which HubSpot echoes on results and per-input errors; replies are
//! matched back by it first, then by CRM id (updates) or by the match
//! property's normalized value (HubSpot lower-cases emails and need not echo
//! `idProperty`), then by position when the reply has one result per input.
//! A record none of these place is [`Fate::Unknown`], never a guess.

pub mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::{Call, CallError, Client, RateLimiter, Vendor};
use crate::sync::config::Destination as DestinationConfig;
use crate::sync::destination::{
    Capabilities, Destination, Existing, Fate, Lookup, Op, Outcome, Outgoing, Refusal,
    SharedBudget, Written, normalize_key,
};

/// How far HubSpot's clock may be ahead of ferry's when judging whether a
/// record was created after ferry's first attempt to create it.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// HubSpot's rate-limit conventions.
pub const VENDOR: Vendor = Vendor {
    name: "hubspot",
    max_header: "x-hubspot-ratelimit-max",
    remaining_header: "x-hubspot-ratelimit-remaining",
    daily_remaining_header: "x-hubspot-ratelimit-daily-remaining",
    is_daily: |body| body["policyName"].as_str() == Some("DAILY"),
    daily_remaining: |_| None,
    instance_url_from_token: false,
};

/// One HubSpot account: the client (with the account's rate budget) and the
/// search endpoint's budget, shared by every sync to the account.
pub struct Account {
    pub client: Client,
    search: Arc<RateLimiter>,
    search_lag: Duration,
    /// Names the account across processes (its shared budgets).
    key: String,
    daily_limit: u64,
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
        Ok(Account {
            client,
            search,
            search_lag: config.search_lag,
            key,
            daily_limit: config.daily_limit,
        })
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

    /// The account's rate budget (shared by every user of the account).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        self.account.client.limiter()
    }

    /// The search endpoint's own budget (4 per second per account).
    pub fn search_limiter(&self) -> &Arc<RateLimiter> {
        &self.account.search
    }

    async fn send(&self, call: Call<'_>) -> Result<Value, CallError> {
        Ok(self.reply(call).await?.body)
    }

    async fn reply(&self, mut call: Call<'_>) -> Result<crate::http::Reply, CallError> {
        if let Some(own) = &self.own {
            call = call.limited_by(own);
        }
        self.account.client.send(call).await
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
    context_list(e, "ids")
}

fn context_list(e: &Value, name: &str) -> Vec<String> {
    e["context"][name]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default()
}

/// A reply that must carry a `results` array; anything else is unreadable.
fn results<'a>(reply: &'a Value, what: &str) -> Result<&'a Vec<Value>, CallError> {
    reply["results"]
        .as_array()
        .ok_or_else(|| CallError::Transient {
            message: format!(
                "HubSpot's {what} reply has no results list; it is not evidence of anything, so nothing is written on it"
            ),
            attempts: 1,
        })
}

/// An [`Account`] as the syncer holds it: each sync's [`HubSpot`] shares it.
pub struct Shared(pub Arc<Account>);

impl crate::sync::destination::Account for Shared {
    fn destination(&self, sync: &crate::sync::config::Sync) -> Box<dyn Destination> {
        Box::new(HubSpot::new(self.0.clone(), sync.requests_per_10s))
    }
}

#[async_trait]
impl Destination for HubSpot {
    fn audiences(&self) -> Option<&dyn crate::sync::destination::Audiences> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vendor: "HubSpot",
            ops: &[
                Op::Upsert,
                Op::Create,
                Op::Update,
                Op::UpdateByKey,
                Op::Archive,
            ],
            // Batch endpoints take 100 inputs; HubSpot bounds requests by
            // count, not size (values are capped per property).
            max_batch: 100,
            max_bytes: None,
            max_in_flight: usize::MAX,
            id_columns: &["id", "hs_object_id"],
        }
    }

    fn budgets(&self) -> Vec<SharedBudget> {
        vec![
            SharedBudget {
                key: self.account.key.clone(),
                limiter: self.limiter().clone(),
                daily_limit: Some(self.account.daily_limit),
            },
            // Search has its own budget per account: shared the same way.
            SharedBudget {
                key: format!("{} search", self.account.key),
                limiter: self.search_limiter().clone(),
                daily_limit: None,
            },
        ]
    }

    fn stop_error(&self, e: CallError) -> Error {
        call_error(e)
    }

    fn refuses_every_row(&self, error: &CallError) -> bool {
        let CallError::Rejected { status, body } = error else {
            return false;
        };
        let codes = |b: &Value| -> Vec<String> {
            b["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["code"].as_str().map(str::to_string))
                .collect()
        };
        // An unknown property or object type, a missing scope, or a
        // redirect off HubSpot's host fails every row the same way.
        (300..400).contains(status)
            || body["category"].as_str() == Some("REDIRECT_REFUSED")
            || codes(body).iter().any(|c| c == "PROPERTY_DOESNT_EXIST")
            || body["message"]
                .as_str()
                .is_some_and(|m| m.contains("PROPERTY_DOESNT_EXIST"))
    }

    fn search_lag(&self, unique: bool) -> Duration {
        // Unique keys are looked up by batch read, which sees writes at once.
        if unique {
            Duration::ZERO
        } else {
            self.account.search_lag
        }
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
    ) -> Result<Lookup, CallError> {
        let mut props: Vec<&str> = properties.iter().map(String::as_str).collect();
        props.push(key_property);
        let mut found: HashMap<String, Vec<Existing>> = HashMap::new();
        let mut unresolved = HashMap::new();
        if keys.is_empty() {
            return Ok(Lookup { found, unresolved });
        }
        let add = |found: &mut HashMap<String, Vec<Existing>>, r: &Value| {
            if let Some(e) = record(r)
                && let Some(k) = e.properties.get(key_property)
            {
                let list = found.entry(normalize_key(k)).or_default();
                if !list.iter().any(|x| x.id == e.id) {
                    list.push(e);
                }
            }
        };
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
                for r in results(&reply, "batch read")? {
                    add(&mut found, r);
                }
                // Every key must be accounted for: found, or named as not
                // found. A key the reply is silent about is not "absent".
                let absent: std::collections::HashSet<String> = reply["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["category"].as_str() == Some("OBJECT_NOT_FOUND"))
                    .flat_map(error_ids)
                    .map(|k| normalize_key(&k))
                    .collect();
                // (HubSpot may answer a key with a record under another
                // primary value, a secondary email: that key stays unresolved
                // rather than failing its whole batch every run.)
                for k in chunk.iter().map(|k| normalize_key(k)) {
                    if !found.contains_key(&k) && !absent.contains(&k) {
                        unresolved.insert(
                            k,
                            "HubSpot's batch read neither returned a record with this value nor reported it missing \
                             (it may be a secondary value of another record): check it in HubSpot"
                                .to_string(),
                        );
                    }
                }
            }
            return Ok(Lookup { found, unresolved });
        }
        for chunk in keys.chunks(100) {
            let mut after: Option<String> = None;
            let mut pages = 0u32;
            loop {
                pages += 1;
                // 100 keys, at most 10,000 results per query: 50 pages of 200.
                if pages > 60 {
                    return Err(CallError::Transient {
                        message: "HubSpot search kept paging past 10,000 results for 100 keys"
                            .into(),
                        attempts: 1,
                    });
                }
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
                for r in results(&reply, "search")? {
                    add(&mut found, r);
                }
                match reply["paging"]["next"]["after"].as_str() {
                    Some(a) if after.as_deref() == Some(a) => {
                        return Err(CallError::Transient {
                            message: format!(
                                "HubSpot search returned the same next page ({a}) twice"
                            ),
                            attempts: 1,
                        });
                    }
                    Some(a) => after = Some(a.to_string()),
                    None => break,
                }
            }
        }
        Ok(Lookup { found, unresolved })
    }

    async fn write(
        &self,
        object: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Vec<Outcome>, CallError> {
        let props = |r: &Outgoing| json!(r.properties);
        let (path, mut inputs): (&str, Vec<Value>) = match op {
            // The key is also sent as a property, so the reply's record
            // carries it even when HubSpot does not echo `idProperty`.
            Op::Upsert => (
                "upsert",
                rows.iter()
                    .map(|r| {
                        let mut p = r.properties.clone();
                        p.entry(key_property.to_string())
                            .or_insert_with(|| r.key.clone());
                        json!({"id": r.key, "idProperty": key_property, "properties": p})
                    })
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
        if op != Op::Archive {
            // HubSpot echoes it on results and per-input errors, so each
            // outcome finds its input whatever HubSpot did to the key.
            for (i, input) in inputs.iter_mut().enumerate() {
                input["objectWriteTraceId"] = json!(i.to_string());
            }
        }
        let mut body = json!({ "inputs": inputs });
        if op == Op::Upsert || op == Op::UpdateByKey {
            body["idProperty"] = json!(key_property);
        }
        let reply = self
            .reply(Call::post(
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
                    fate: Fate::Written(Written {
                        id: r.id.clone().unwrap_or_default(),
                        created: false,
                    }),
                })
                .collect());
        }
        // A retried call may have been applied by an earlier attempt.
        let retried_since = (reply.attempts > 1).then_some(reply.first_sent);
        Ok(match_reply(
            op,
            key_property,
            rows,
            &reply.body,
            retried_since,
        ))
    }

    fn usage(&self) -> (u64, u64) {
        let s = &self.account.client.stats;
        (
            s.calls.load(std::sync::atomic::Ordering::SeqCst),
            s.rate_limited.load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// Match a 2xx write reply back to its inputs; see the module docs.
fn match_reply(
    op: Op,
    key_property: &str,
    rows: &[Outgoing],
    body: &Value,
    retried_since: Option<DateTime<Utc>>,
) -> Vec<Outcome> {
    let by_id = op == Op::Update;
    let index: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let k = if by_id {
                r.id.clone().unwrap_or_default()
            } else {
                normalize_key(&r.key)
            };
            (k, i)
        })
        .collect();
    let trace = |v: &Value| -> Option<usize> {
        text(&v["objectWriteTraceId"])
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|i| *i < rows.len())
    };
    let mut fates: Vec<Option<Fate>> = vec![None; rows.len()];
    let listed = body["results"].as_array();
    let results = listed.map(Vec::as_slice).unwrap_or(&[]);
    let errors = body["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut unplaced = Vec::new();
    for (pos, r) in results.iter().enumerate() {
        let Some(e) = record(r) else { continue };
        let slot = trace(r).or_else(|| {
            let k = if by_id {
                Some(e.id.clone())
            } else {
                e.properties.get(key_property).map(|v| normalize_key(v))
            };
            k.and_then(|k| index.get(&k).copied())
        });
        let created = match op {
            Op::Create => true,
            Op::Upsert => {
                r["new"].as_bool().unwrap_or(false)
                    || (match (rows_pending(rows, slot), retried_since) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    })
                    .zip(e.created_at)
                    .is_some_and(|(since, at)| at + CLOCK_SKEW >= since)
            }
            _ => false,
        };
        let fate = Fate::Written(Written {
            id: e.id.clone(),
            created,
        });
        match slot {
            Some(i) if fates[i].is_none() => fates[i] = Some(fate),
            Some(_) => {}
            None => unplaced.push((pos, fate)),
        }
    }
    // Position is evidence only when nothing in the reply could be placed
    // otherwise (no trace ids, no keys), it has exactly one result per
    // input and no errors: HubSpot keeps the inputs' order then. A reply
    // that places some results and not others may be in any order.
    if !unplaced.is_empty()
        && unplaced.len() == results.len()
        && results.len() == rows.len()
        && errors.is_empty()
    {
        for (pos, fate) in unplaced {
            if fates[pos].is_none() {
                fates[pos] = Some(fate);
            }
        }
    }
    for err in errors {
        let category = err["category"].as_str().unwrap_or("ERROR").to_string();
        let message = err["message"].as_str().unwrap_or("refused").to_string();
        let mut slots: Vec<usize> = context_list(err, "objectWriteTraceId")
            .iter()
            .filter_map(|t| t.parse::<usize>().ok())
            .filter(|i| *i < rows.len())
            .collect();
        if slots.is_empty() {
            slots = error_ids(err)
                .iter()
                .filter_map(|id| {
                    let k = if by_id { id.clone() } else { normalize_key(id) };
                    index.get(&k).copied()
                })
                .collect();
        }
        for i in slots {
            if fates[i].is_none() {
                fates[i] = Some(Fate::Refused(Refusal {
                    category: category.clone(),
                    message: message.clone(),
                    response: Some(err.to_string()),
                    transient: false,
                }));
            }
        }
    }
    fates
        .into_iter()
        .zip(rows)
        .map(|(f, r)| Outcome {
            key: r.key.clone(),
            fate: f.unwrap_or_else(|| {
                Fate::Unknown(if listed.is_none() {
                    "HubSpot answered 2xx without a results list".into()
                } else {
                    "HubSpot's 2xx reply did not mention this record".into()
                })
            }),
        })
        .collect()
}

fn rows_pending(rows: &[Outgoing], slot: Option<usize>) -> Option<DateTime<Utc>> {
    slot.and_then(|i| rows.get(i)).and_then(|r| r.pending_since)
}

/// The credentials of a HubSpot destination: a private-app `token` or an
/// `[oauth]` refresh token.
pub fn auth(
    d: &config::HubspotDestination,
    url: Option<&str>,
    secret: &crate::sync::destination::SecretFn<'_>,
) -> std::result::Result<crate::http::Auth, crate::sync::destination::AuthProblem> {
    use crate::sync::destination::AuthProblem;
    match (&d.token, &d.oauth) {
        (Some(_), Some(_)) => Err(AuthProblem::Config(
            "give either token or [oauth], not both".into(),
        )),
        (None, None) => Err(AuthProblem::Config(
            "no credentials: add token = \"${HUBSPOT_TOKEN}\" (a private-app token) or an [oauth] table".into(),
        )),
        (Some(t), None) => Ok(crate::http::Auth::Bearer(
            secret("token", t).map_err(AuthProblem::Secret)?,
        )),
        (None, Some(o)) => {
            let base = url.unwrap_or("https://api.hubapi.com");
            let s = |k: &str, v: &String| {
                secret(&format!("oauth.{k}"), v).map_err(AuthProblem::Secret)
            };
            Ok(crate::http::Auth::OAuth(crate::http::OAuthConfig {
                token_url: o
                    .token_url
                    .clone()
                    .unwrap_or_else(|| format!("{}/oauth/v1/token", base.trim_end_matches('/'))),
                client_id: s("client_id", &o.client_id)?.expose().to_string(),
                client_secret: s("client_secret", &o.client_secret)?,
                refresh_token: s("refresh_token", &o.refresh_token)?,
            }))
        }
    }
}

/// A call error that ends a sync step, as ferry's error.
pub fn call_error(e: CallError) -> Error {
    let vendor = |message: String, retryable: bool| Error::Vendor {
        vendor: "HubSpot".into(),
        message,
        retryable,
    };
    match e {
        CallError::Auth { .. } => vendor(
            format!(
                "refused the credentials ({}). No further calls were made. \
                 Check the token (or OAuth app) in [destinations] and its scopes (crm.objects.*.read/write)",
                e.message()
            ),
            false,
        ),
        CallError::DailyLimit => vendor(
            "the daily API budget is spent. Progress so far is saved; run `ferry sync` again after it resets (midnight in the account's time zone)".into(),
            true,
        ),
        e @ CallError::Transient { .. } => vendor(e.message(), true),
        e @ CallError::Rejected { .. } => Error::Input(format!("HubSpot: {}", e.message())),
    }
}

/// HubSpot's object type ids, as the Lists API names them.
fn object_type_id(object: &str) -> String {
    match object {
        "contacts" => "0-1".into(),
        "companies" => "0-2".into(),
        "deals" => "0-3".into(),
        "tickets" => "0-5".into(),
        other => other.to_string(),
    }
}

/// Record ids per membership call (ferry's choice, well under what the
/// Lists API takes).
const LIST_MEMBERS_PER_CALL: usize = 1_000;

/// Audiences as HubSpot lists (Lists API v3): a `MANUAL` list found by
/// name (`GET /crm/v3/lists/object-type-id/{type}/name/{name}`) or created
/// (`POST /crm/v3/lists`); members added and removed by record id
/// (`PUT /crm/v3/lists/{id}/memberships/add|remove`). Ids the reply lists
/// in `recordIdsMissing` do not exist.
#[async_trait]
impl crate::sync::destination::Audiences for HubSpot {
    fn max_members(&self) -> usize {
        LIST_MEMBERS_PER_CALL
    }

    async fn audience(
        &self,
        object: &str,
        name: &str,
        create: bool,
    ) -> Result<Option<String>, CallError> {
        let type_id = object_type_id(object);
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let found = self
            .send(Call::get(format!(
                "/crm/v3/lists/object-type-id/{type_id}/name/{}",
                encoded.replace('+', "%20")
            )))
            .await;
        let list = match found {
            Ok(v) => v,
            Err(CallError::Rejected { status: 404, .. }) if create => {
                let body = serde_json::json!({
                    "name": name,
                    "objectTypeId": type_id,
                    "processingType": "MANUAL",
                });
                // Not resent blind: a lost reply fails the run, and the
                // next run finds the list by name.
                self.send(Call::post("/crm/v3/lists", &body, false)).await?
            }
            Err(CallError::Rejected { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let l = &list["list"];
        if l["processingType"].as_str().is_some_and(|t| t == "DYNAMIC") {
            return Err(CallError::Rejected {
                status: 400,
                body: serde_json::json!({"message": format!(
                    "HubSpot list {name:?} is an active (DYNAMIC) list, whose members HubSpot decides: name a static list, or a new one for ferry to create"
                )}),
            });
        }
        match text(&l["listId"]) {
            Some(id) => Ok(Some(id)),
            None => Err(CallError::Transient {
                message: format!("HubSpot's list reply has no listId: {list}"),
                attempts: 1,
            }),
        }
    }

    async fn add(
        &self,
        audience: &str,
        _object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError> {
        self.membership(audience, "add", ids).await
    }

    async fn remove(
        &self,
        audience: &str,
        _object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError> {
        self.membership(audience, "remove", ids).await
    }
}

impl HubSpot {
    async fn membership(
        &self,
        list: &str,
        verb: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError> {
        let body = serde_json::json!(ids);
        let reply = self
            .send(Call {
                method: reqwest::Method::PUT,
                ..Call::post(
                    format!("/crm/v3/lists/{list}/memberships/{verb}"),
                    &body,
                    true,
                )
            })
            .await?;
        if !reply.is_object() {
            return Err(CallError::Transient {
                message: format!("HubSpot's membership reply is not an object: {reply}"),
                attempts: 1,
            });
        }
        let missing: std::collections::HashSet<String> = reply["recordIdsMissing"]
            .as_array()
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default();
        Ok(ids
            .iter()
            .map(|id| {
                let fate = if missing.contains(id) {
                    Fate::Refused(Refusal {
                        category: "OBJECT_NOT_FOUND".into(),
                        message: format!("HubSpot has no record {id} to {verb}"),
                        response: None,
                        transient: false,
                    })
                } else {
                    Fate::Written(Written {
                        id: id.clone(),
                        created: false,
                    })
                };
                (id.clone(), fate)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(n: usize) -> Vec<Outgoing> {
        (0..n)
            .map(|i| {
                Outgoing::new(
                    format!("P{i}@Example.com"),
                    Some(i.to_string()),
                    Default::default(),
                )
            })
            .collect()
    }

    /// Loosely HubSpot-shaped replies: results and errors whose fields may
    /// be missing, of the wrong type, or out of range.
    fn reply() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "[0-9]{0,3}".prop_map(Value::String),
            "\\PC{0,10}".prop_map(Value::String),
        ];
        let result = (scalar.clone(), scalar.clone(), scalar.clone(), any::<Option<bool>>(), scalar.clone())
            .prop_map(|(id, email, trace, new, created)| {
                json!({"id": id, "properties": {"email": email}, "objectWriteTraceId": trace, "new": new, "createdAt": created})
            });
        let error = (scalar.clone(), prop::collection::vec(scalar, 0..3)).prop_map(|(cat, ids)| {
            json!({"category": cat, "message": "m", "context": {"ids": ids.clone(), "objectWriteTraceId": ids}})
        });
        (
            prop::option::of(prop::collection::vec(result, 0..8)),
            prop::collection::vec(error, 0..3),
        )
            .prop_map(|(results, errors)| {
                let mut b = json!({"status": "COMPLETE", "errors": errors});
                if let Some(r) = results {
                    b["results"] = Value::Array(r);
                }
                b
            })
    }

    proptest! {
        /// Fuzz target: any reply gives exactly one outcome per input, in
        /// input order, and never panics.
        #[test]
        fn any_write_reply_gives_one_outcome_per_input(body in reply(), n in 0usize..6, op in 0u8..4) {
            let op = [Op::Upsert, Op::Create, Op::Update, Op::UpdateByKey][op as usize];
            let rows = rows(n);
            let out = match_reply(op, "email", &rows, &body, Some(Utc::now()));
            prop_assert_eq!(out.len(), n);
            for (o, r) in out.iter().zip(&rows) {
                prop_assert_eq!(&o.key, &r.key);
            }
        }

        /// Results in any order, keys lower-cased and no trace ids: each
        /// input still finds its own result.
        #[test]
        fn normalized_and_shuffled_results_match_their_inputs(n in 1usize..20, seed in any::<u64>()) {
            let rows = rows(n);
            let mut results: Vec<Value> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"id": format!("{}", 100 + i), "properties": {"email": r.key.to_lowercase()}, "new": true}))
                .collect();
            let len = results.len();
            for i in 0..len {
                let j = (seed as usize).wrapping_mul(31).wrapping_add(i * 17) % len;
                results.swap(i, j);
            }
            let out = match_reply(Op::Upsert, "email", &rows, &json!({"results": results}), None);
            for (i, o) in out.iter().enumerate() {
                match &o.fate {
                    Fate::Written(w) => prop_assert_eq!(&w.id, &format!("{}", 100 + i)),
                    other => prop_assert!(false, "{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_reply_without_results_leaves_every_record_unknown() {
        let out = match_reply(
            Op::Create,
            "email",
            &rows(3),
            &json!({"status": "COMPLETE"}),
            None,
        );
        assert!(out.iter().all(|o| matches!(o.fate, Fate::Unknown(_))));
    }
}
