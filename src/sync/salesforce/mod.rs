//! Salesforce as a reverse-sync destination, through sObject Collections
//! (200 records per call, `allOrNone: false`):
//!
//! - upsert by an external-ID field: `PATCH /composite/sobjects/{object}/{field}`;
//! - create: `POST /composite/sobjects`; update by `Id`: `PATCH /composite/sobjects`;
//! - delete (mirror): `DELETE /composite/sobjects?ids=...`;
//! - lookups by SOQL (`SELECT Id, ... WHERE key IN (...)`), paged by
//!   `nextRecordsUrl`, and fields from `describe`.
//!
//! Results come back one per record, in request order: `{id, success,
//! created, errors: [{statusCode, message, fields}]}`. Per-record errors
//! (`REQUIRED_FIELD_MISSING`, `FIELD_CUSTOM_VALIDATION_EXCEPTION`,
//! `DUPLICATE_VALUE`, ...) are refusals with their code and fields; a whole
//! request refused (`INVALID_FIELD`, a value of the wrong type) is split by
//! the syncer unless it names the object or a field, which every row shares.
//! Logins are OAuth (JWT bearer or refresh token, in [`crate::http`]); the
//! token reply's `instance_url` is where calls go, and an
//! `INVALID_SESSION_ID` logs in again once. The org's daily request limit is
//! read from `Sforce-Limit-Info` on every reply and `403
//! REQUEST_LIMIT_EXCEEDED` stops the run like HubSpot's daily 429.

pub mod bulk;
pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::{Call, CallError, Client, RateLimiter, Vendor};
use crate::sync::config::Destination as DestinationConfig;
use crate::sync::destination::{
    AuthProblem, Capabilities, Destination, Existing, Fate, Lookup, Op, Outcome, Outgoing, Refusal,
    SecretFn, SharedBudget, Written,
};

/// Salesforce's conventions: no per-window headers; the daily usage in
/// `Sforce-Limit-Info`; a spent day is `403 REQUEST_LIMIT_EXCEEDED`.
pub const VENDOR: Vendor = Vendor {
    name: "salesforce",
    max_header: "",
    remaining_header: "",
    daily_remaining_header: "",
    is_daily: |body| {
        body.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["errorCode"].as_str() == Some("REQUEST_LIMIT_EXCEEDED"))
        })
    },
    daily_remaining: |h| {
        h.get("sforce-limit-info")?
            .to_str()
            .ok()
            .and_then(limit_info)
    },
    instance_url_from_token: true,
};

/// `api-usage=18/15000` (possibly among other entries) → requests left today.
pub fn limit_info(v: &str) -> Option<u64> {
    let usage = v
        .split([',', ';'])
        .map(str::trim)
        .find_map(|part| part.strip_prefix("api-usage="))?;
    let (used, max) = usage.split_once('/')?;
    let (used, max) = (
        used.trim().parse::<u64>().ok()?,
        max.trim().parse::<u64>().ok()?,
    );
    Some(max.saturating_sub(used))
}

/// Records per sObject Collections call.
pub const COLLECTION_SIZE: usize = 200;

/// Keys per lookup query: the GET's URL stays well under Salesforce's
/// 16,384-character limit.
const KEYS_PER_QUERY: usize = 100;

/// The credentials of a Salesforce destination: a `[jwt]` table or an
/// `[oauth]` refresh token.
pub fn auth(
    d: &config::SalesforceDestination,
    url: Option<&str>,
    secret: &SecretFn<'_>,
) -> std::result::Result<crate::http::Auth, AuthProblem> {
    login_auth(url, d.jwt.as_ref(), d.oauth.as_ref(), secret)
}

/// A Salesforce login (a destination's or a source's): the login host,
/// and a `[jwt]` or `[oauth]` table.
pub fn login_auth(
    url: Option<&str>,
    jwt: Option<&crate::sync::config::JwtSection>,
    oauth: Option<&crate::sync::config::OAuthSection>,
    secret: &SecretFn<'_>,
) -> std::result::Result<crate::http::Auth, AuthProblem> {
    let login = url
        .map(str::to_string)
        .unwrap_or_else(|| "https://login.salesforce.com".into())
        .trim_end_matches('/')
        .to_string();
    let token_url = format!("{login}/services/oauth2/token");
    let s = |k: &str, v: &String| secret(k, v).map_err(AuthProblem::Secret);
    match (jwt, oauth) {
        (Some(_), Some(_)) => Err(AuthProblem::Config(
            "give either [jwt] or [oauth], not both".into(),
        )),
        (None, None) => Err(AuthProblem::Config(
            "no credentials: add a [jwt] table (client_id, username, private_key = \"${SALESFORCE_PRIVATE_KEY}\") or an [oauth] table (client_id, client_secret, refresh_token)".into(),
        )),
        (Some(j), None) => Ok(crate::http::Auth::JwtBearer(crate::http::JwtBearer {
            token_url,
            client_id: s("jwt.client_id", &j.client_id)?.expose().to_string(),
            username: s("jwt.username", &j.username)?.expose().to_string(),
            audience: login,
            private_key: s("jwt.private_key", &j.private_key)?,
        })),
        (None, Some(o)) => Ok(crate::http::Auth::OAuth(crate::http::OAuthConfig {
            token_url: o.token_url.clone().unwrap_or(token_url),
            client_id: s("oauth.client_id", &o.client_id)?.expose().to_string(),
            client_secret: s("oauth.client_secret", &o.client_secret)?,
            refresh_token: s("oauth.refresh_token", &o.refresh_token)?,
        })),
    }
}

/// One org: the client (its base becomes the instance after login) and
/// the account's budget, shared by every sync to it.
pub struct Account {
    client: Client,
    version: String,
    key: String,
    daily_limit: u64,
    retry: crate::http::RetryPolicy,
    /// Rows in a run from which Bulk API 2.0 jobs carry them.
    bulk_threshold: usize,
    /// The org's bulk batches left today (`DailyBulkApiBatches`), as last
    /// read from `/limits` less what this process has spent since.
    bulk_batches: Mutex<Option<u64>>,
}

impl Account {
    pub fn new(config: &DestinationConfig) -> Result<Account> {
        let key = crate::http::account_key("salesforce", &config.url, &config.auth);
        let limiter = crate::http::account_budget(
            &key,
            config.requests_per_10s,
            Duration::from_secs(10),
            Some(config.daily_limit),
        );
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
            version: config.api_version.clone(),
            key,
            daily_limit: config.daily_limit,
            retry: config.retry,
            bulk_threshold: config.bulk_threshold,
            bulk_batches: Mutex::new(None),
        })
    }
}

/// An [`Account`] as the syncer holds it.
pub struct Shared(pub Arc<Account>);

impl crate::sync::destination::Account for Shared {
    fn destination(&self, sync: &crate::sync::config::Sync) -> Box<dyn Destination> {
        Box::new(Salesforce {
            account: self.0.clone(),
            own: sync
                .requests_per_10s
                .map(|n| RateLimiter::new(n, Duration::from_secs(10), None)),
        })
    }
}

/// Salesforce for one sync.
pub struct Salesforce {
    account: Arc<Account>,
    own: Option<RateLimiter>,
}

fn soql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        // Salesforce prints doubles as 42.0: a whole number reads as 42.
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        other => Some(other.to_string()),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Salesforce {
    fn path(&self, rest: &str) -> String {
        format!("/services/data/{}{rest}", self.account.version)
    }

    async fn send(&self, mut call: Call<'_>) -> Result<Value, CallError> {
        if let Some(own) = &self.own {
            call = call.limited_by(own);
        }
        Ok(self.account.client.send(call).await?.body)
    }

    /// Every page of a SOQL query.
    async fn query(&self, soql: &str) -> Result<Vec<Value>, CallError> {
        let q: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        let mut next = Some(self.path(&format!("/query?q={q}")));
        let mut out = Vec::new();
        while let Some(path) = next.take() {
            let reply = self.send(Call::get(path)).await?;
            let records = reply["records"].as_array().ok_or_else(|| CallError::Transient {
                message: "Salesforce's query reply has no records list; it is not evidence of anything".into(),
                attempts: 1,
            })?;
            out.extend(records.iter().cloned());
            if reply["done"].as_bool() == Some(false) {
                let url = reply["nextRecordsUrl"].as_str().ok_or_else(|| CallError::Transient {
                    message: "Salesforce's query reply says it is not done but gives no nextRecordsUrl".into(),
                    attempts: 1,
                })?;
                next = Some(url.to_string());
            }
        }
        Ok(out)
    }

    async fn describe(&self, object: &str) -> Result<Value> {
        let path = self.path(&format!("/sobjects/{object}/describe"));
        self.send(Call::get(path)).await.map_err(|e| match e {
            CallError::Rejected { status: 404, .. } => Error::Input(format!(
                "Salesforce has no object {object:?} (or this user cannot see it): check object in [syncs]"
            )),
            e => self.stop_error(e),
        })
    }
}

/// One record of a Collections request: `attributes.type` and the values
/// (an empty string clears: Salesforce wants null).
fn record(object: &str, o: &Outgoing, extra: &[(&str, String)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("attributes".into(), json!({"type": object}));
    for (k, v) in extra {
        m.insert((*k).into(), json!(v));
    }
    for (k, v) in &o.properties {
        m.insert(k.clone(), if v.is_empty() { Value::Null } else { json!(v) });
    }
    Value::Object(m)
}

/// The fate of each record from a Collections reply (one result per
/// record, in request order). A record the reply does not account for is
/// unknown: the write may have happened.
fn outcomes(rows: &[Outgoing], reply: &Value, op: Op) -> Vec<Outcome> {
    let results = reply.as_array();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let fate = match results.and_then(|a| a.get(i)) {
                None => Fate::Unknown("Salesforce's reply does not account for this record".into()),
                Some(res) if res["success"].as_bool() == Some(true) => match text(&res["id"]) {
                    Some(id) => Fate::Written(Written {
                        id,
                        created: match op {
                            Op::Create => true,
                            Op::Upsert => res["created"].as_bool().unwrap_or(false),
                            _ => false,
                        },
                    }),
                    None => Fate::Unknown("Salesforce reported success without an id".into()),
                },
                Some(res) => {
                    let first = &res["errors"][0];
                    let code = first["statusCode"].as_str().unwrap_or("UNKNOWN_ERROR");
                    let fields: Vec<String> = first["fields"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|f| f.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let message = first["message"].as_str().unwrap_or("refused").to_string();
                    Fate::Refused(Refusal {
                        category: code.to_string(),
                        message: if fields.is_empty() {
                            message
                        } else {
                            format!("{message} (fields: {})", fields.join(", "))
                        },
                        response: Some(res.to_string()),
                        transient: matches!(
                            code,
                            "UNABLE_TO_LOCK_ROW"
                                | "SERVER_UNAVAILABLE"
                                | "REQUEST_RUNNING_TOO_LONG"
                        ),
                    })
                }
            };
            Outcome {
                key: r.key.clone(),
                fate,
            }
        })
        .collect()
}

#[async_trait]
impl Destination for Salesforce {
    fn audiences(&self) -> Option<&dyn crate::sync::destination::Audiences> {
        Some(self)
    }

    fn jobs(&self) -> Option<&dyn crate::sync::destination::Jobs> {
        Some(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vendor: "Salesforce",
            // No update by external id without creating: update looks ids up.
            ops: &[Op::Upsert, Op::Create, Op::Update, Op::Archive],
            max_batch: COLLECTION_SIZE,
            // A REST request body is at most 50 MB; stay well under.
            max_bytes: Some(40 << 20),
            max_in_flight: usize::MAX,
            id_columns: &["Id", "id"],
        }
    }

    fn refuses_every_row(&self, error: &CallError) -> bool {
        let CallError::Rejected { body, .. } = error else {
            return false;
        };
        body.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                matches!(
                    e["errorCode"].as_str(),
                    Some(
                        "INVALID_FIELD"
                            | "INVALID_TYPE"
                            | "NOT_FOUND"
                            | "INSUFFICIENT_ACCESS_OR_READONLY"
                    )
                )
            })
        })
    }

    fn budgets(&self) -> Vec<SharedBudget> {
        vec![SharedBudget {
            key: self.account.key.clone(),
            limiter: self.account.client.limiter().clone(),
            daily_limit: Some(self.account.daily_limit),
        }]
    }

    fn stop_error(&self, e: CallError) -> Error {
        let vendor = |message: String, retryable: bool| Error::Vendor {
            vendor: "Salesforce".into(),
            message,
            retryable,
        };
        match e {
            CallError::Auth { .. } => vendor(
                format!(
                    "{} ({}). No further calls were made. Check [jwt] or [oauth] in [destinations], \
                     the connected app's policies (pre-authorized users for JWT) and the user's access",
                    crate::http::REFUSED_CREDENTIALS,
                    e.message()
                ),
                false,
            ),
            CallError::DailyLimit => vendor(
                "the org's daily API request limit is spent (REQUEST_LIMIT_EXCEEDED). Progress so far is saved; \
                 run `ferry sync` again once the rolling 24-hour window frees requests"
                    .into(),
                true,
            ),
            e @ CallError::Transient { .. } => vendor(e.message(), true),
            e @ CallError::Rejected { .. } => Error::Input(format!("Salesforce: {}", e.message())),
        }
    }

    async fn prepare(
        &self,
        object: &str,
        key_property: &str,
        properties: &[String],
    ) -> Result<bool> {
        // The org's 24-hour budget as it stands, before the first write.
        let limits = self
            .send(Call::get(self.path("/limits")))
            .await
            .map_err(|e| self.stop_error(e))?;
        if let Some(left) = limits["DailyApiRequests"]["Remaining"].as_u64() {
            let limiter = self.account.client.limiter();
            limiter.observe(None, None, Some(left));
            if left == 0 {
                limiter.exhaust_daily();
                return Err(self.stop_error(CallError::DailyLimit));
            }
        }
        if let (Some(left), Ok(mut b)) = (
            limits["DailyBulkApiBatches"]["Remaining"].as_u64(),
            self.account.bulk_batches.lock(),
        ) {
            *b = Some(left);
        }
        let d = self.describe(object).await?;
        let fields: HashMap<String, &Value> = d["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| Some((f["name"].as_str()?.to_lowercase(), f)))
                    .collect()
            })
            .unwrap_or_default();
        for p in properties.iter().chain([&key_property.to_string()]) {
            let Some(f) = fields.get(&p.to_lowercase()) else {
                let names: Vec<String> = fields.keys().cloned().collect();
                return Err(Error::Input(format!(
                    "Salesforce {object} has no field {p:?}{}: create it (custom fields end in __c) or fix [syncs.*.fields]",
                    crate::models::project::suggest(&p.to_lowercase(), &names)
                )));
            };
            if p != key_property
                && f["updateable"].as_bool() == Some(false)
                && f["createable"].as_bool() == Some(false)
            {
                return Err(Error::Input(format!(
                    "Salesforce {object}.{p} cannot be written (it is read-only or a formula): map another field"
                )));
            }
        }
        let key = fields[&key_property.to_lowercase()];
        // Upsert needs an external-ID field (or Id); a unique one matches
        // at most one record.
        Ok(key["type"].as_str() == Some("id")
            || (key["externalId"].as_bool() == Some(true) && key["unique"].as_bool() == Some(true)))
    }

    async fn lookup(
        &self,
        object: &str,
        key_property: &str,
        _unique: bool,
        keys: &[String],
        properties: &[String],
    ) -> Result<Lookup, CallError> {
        let mut fields = vec!["Id".to_string(), "CreatedDate".to_string()];
        for f in properties.iter().chain([&key_property.to_string()]) {
            if !fields.iter().any(|x| x.eq_ignore_ascii_case(f)) {
                fields.push(f.clone());
            }
        }
        let mut lookup = Lookup::default();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|k| soql_literal(k)).collect();
            let soql = format!(
                "SELECT {} FROM {object} WHERE {key_property} IN ({})",
                fields.join(", "),
                list.join(", ")
            );
            for r in self.query(&soql).await? {
                let Some(id) = text(&r["Id"]) else { continue };
                let obj = r.as_object();
                let get = |name: &str| {
                    obj.and_then(|m| {
                        m.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .and_then(|(_, v)| text(v))
                    })
                };
                let Some(key) = get(key_property) else {
                    continue;
                };
                let props: BTreeMap<String, String> = properties
                    .iter()
                    .chain([&key_property.to_string()])
                    .filter_map(|p| get(p).map(|v| (p.clone(), v)))
                    .collect();
                lookup
                    .found
                    .entry(self.normalize_key(&key))
                    .or_default()
                    .push(Existing {
                        id,
                        properties: props,
                        created_at: get("CreatedDate").as_deref().and_then(parse_time),
                    });
            }
        }
        Ok(lookup)
    }

    async fn write(
        &self,
        object: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Vec<Outcome>, CallError> {
        let records = |extra: &dyn Fn(&Outgoing) -> Vec<(&'static str, String)>| -> Value {
            json!({
                "allOrNone": false,
                "records": rows.iter().map(|r| record(object, r, &extra(r))).collect::<Vec<_>>(),
            })
        };
        // The key property's value, under its own name.
        let key = |r: &Outgoing| {
            r.properties
                .get(key_property)
                .cloned()
                .unwrap_or_else(|| r.key.clone())
        };
        let reply = match op {
            Op::Upsert => {
                let body = json!({
                    "allOrNone": false,
                    "records": rows.iter().map(|r| {
                        let mut v = record(object, r, &[]);
                        v[key_property] = json!(key(r));
                        v
                    }).collect::<Vec<_>>(),
                });
                let path = self.path(&format!("/composite/sobjects/{object}/{key_property}"));
                // Upsert by key is safe to resend.
                self.send(Call {
                    method: reqwest::Method::PATCH,
                    ..Call::post(path, &body, true)
                })
                .await?
            }
            Op::Create => {
                let body = json!({
                    "allOrNone": false,
                    "records": rows.iter().map(|r| {
                        let mut v = record(object, r, &[]);
                        if !key_property.eq_ignore_ascii_case("Id") {
                            v[key_property] = json!(key(r));
                        }
                        v
                    }).collect::<Vec<_>>(),
                });
                self.send(Call::post(self.path("/composite/sobjects"), &body, false))
                    .await?
            }
            Op::Update | Op::UpdateByKey => {
                let body = records(&|r: &Outgoing| vec![("Id", r.id.clone().unwrap_or_default())]);
                self.send(Call {
                    method: reqwest::Method::PATCH,
                    ..Call::post(self.path("/composite/sobjects"), &body, true)
                })
                .await?
            }
            Op::Archive => {
                let ids: Vec<String> = rows.iter().filter_map(|r| r.id.clone()).collect();
                let path = self.path(&format!(
                    "/composite/sobjects?ids={}&allOrNone=false",
                    ids.join(",")
                ));
                self.send(Call {
                    method: reqwest::Method::DELETE,
                    ..Call::get(path)
                })
                .await?
            }
        };
        let mut out = outcomes(rows, &reply, op);
        // A record already deleted is archived, as far as the sync cares.
        if op == Op::Archive {
            for (o, r) in out.iter_mut().zip(rows) {
                if let Fate::Refused(f) = &o.fate
                    && f.category == "ENTITY_IS_DELETED"
                {
                    o.fate = Fate::Written(Written {
                        id: r.id.clone().unwrap_or_default(),
                        created: false,
                    });
                }
            }
        }
        Ok(out)
    }

    fn usage(&self) -> (u64, u64) {
        let s = &self.account.client.stats;
        (
            s.calls.load(std::sync::atomic::Ordering::SeqCst),
            s.rate_limited.load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// Audiences as campaigns: a `Campaign` found by `Name` (SOQL) or created
/// active, and its `CampaignMember`s, one per contact or lead. Adding a
/// member twice is refused `DUPLICATE_VALUE` ("Already a campaign
/// member."), which is what ferry wanted; removing reads the member ids by
/// SOQL, then deletes them.
#[async_trait]
impl crate::sync::destination::Audiences for Salesforce {
    fn max_members(&self) -> usize {
        KEYS_PER_QUERY
    }

    async fn audience(
        &self,
        _object: &str,
        name: &str,
        create: bool,
    ) -> Result<Option<String>, CallError> {
        let found = self
            .query(&format!(
                "SELECT Id FROM Campaign WHERE Name = {}",
                soql_literal(name)
            ))
            .await?;
        if let Some(id) = found.first().and_then(|r| text(&r["Id"])) {
            return Ok(Some(id));
        }
        if !create {
            return Ok(None);
        }
        let body = json!({
            "allOrNone": true,
            "records": [{"attributes": {"type": "Campaign"}, "Name": name, "IsActive": true}],
        });
        // Not resent blind: a lost reply fails the run; the next finds it by name.
        let reply = self
            .send(Call::post(self.path("/composite/sobjects"), &body, false))
            .await?;
        match &reply[0] {
            r if r["success"].as_bool() == Some(true) => Ok(text(&r["id"])),
            r => Err(CallError::Rejected {
                status: 400,
                body: json!([{"errorCode": r["errors"][0]["statusCode"], "message": format!(
                    "cannot create campaign {name:?}: {}", r["errors"][0]["message"].as_str().unwrap_or("refused")
                )}]),
            }),
        }
    }

    async fn add(
        &self,
        audience: &str,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError> {
        let who = member_field(object)?;
        let body = json!({
            "allOrNone": false,
            "records": ids.iter().map(|id| json!({
                "attributes": {"type": "CampaignMember"},
                "CampaignId": audience,
                who: id,
            })).collect::<Vec<_>>(),
        });
        // Safe to resend: a member added twice is refused DUPLICATE_VALUE.
        let reply = self
            .send(Call::post(self.path("/composite/sobjects"), &body, true))
            .await?;
        let rows: Vec<Outgoing> = ids
            .iter()
            .map(|id| Outgoing::new(id.clone(), Some(id.clone()), BTreeMap::new()))
            .collect();
        Ok(outcomes(&rows, &reply, Op::Create)
            .into_iter()
            .map(|o| {
                let fate = match o.fate {
                    Fate::Written(_) => Fate::Written(Written {
                        id: o.key.clone(),
                        created: true,
                    }),
                    Fate::Refused(r) if r.category == "DUPLICATE_VALUE" => Fate::Written(Written {
                        id: o.key.clone(),
                        created: false,
                    }),
                    other => other,
                };
                (o.key, fate)
            })
            .collect())
    }

    async fn remove(
        &self,
        audience: &str,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError> {
        let who = member_field(object)?;
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in ids.chunks(KEYS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|k| soql_literal(k)).collect();
            let soql = format!(
                "SELECT Id, {who} FROM CampaignMember WHERE CampaignId = {} AND {who} IN ({})",
                soql_literal(audience),
                list.join(", ")
            );
            for r in self.query(&soql).await? {
                if let (Some(m), Some(w)) = (text(&r["Id"]), text(&r[who])) {
                    members.entry(w).or_default().push(m);
                }
            }
        }
        let member_ids: Vec<String> = members.values().flatten().cloned().collect();
        let mut refused: HashMap<String, Refusal> = HashMap::new();
        for chunk in member_ids.chunks(COLLECTION_SIZE) {
            let path = self.path(&format!(
                "/composite/sobjects?ids={}&allOrNone=false",
                chunk.join(",")
            ));
            let reply = self
                .send(Call {
                    method: reqwest::Method::DELETE,
                    ..Call::get(path)
                })
                .await?;
            let rows: Vec<Outgoing> = chunk
                .iter()
                .map(|id| Outgoing::new(id.clone(), Some(id.clone()), BTreeMap::new()))
                .collect();
            for o in outcomes(&rows, &reply, Op::Archive) {
                match o.fate {
                    Fate::Refused(r) if r.category != "ENTITY_IS_DELETED" => {
                        refused.insert(o.key, r);
                    }
                    Fate::Unknown(why) => {
                        refused.insert(o.key, Refusal::no_result(why));
                    }
                    _ => {}
                }
            }
        }
        Ok(ids
            .iter()
            .map(|id| {
                let failed = members
                    .get(id)
                    .and_then(|ms| ms.iter().find_map(|m| refused.get(m)));
                let fate = match failed {
                    Some(r) => Fate::Refused(r.clone()),
                    // Not (or no longer) a member: removed.
                    None => Fate::Written(Written {
                        id: id.clone(),
                        created: false,
                    }),
                };
                (id.clone(), fate)
            })
            .collect())
    }
}

/// The `CampaignMember` field that names a record of `object`.
fn member_field(object: &str) -> Result<&'static str, CallError> {
    match object.to_ascii_lowercase().as_str() {
        "contact" => Ok("ContactId"),
        "lead" => Ok("LeadId"),
        _ => Err(CallError::Rejected {
            status: 400,
            body: json!([{"errorCode": "INVALID_TYPE", "message": format!(
                "campaign members are Contacts or Leads, not {object}: set object = \"Contact\" or \"Lead\""
            )}]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limit_info_reads_the_usage() {
        assert_eq!(limit_info("api-usage=18/15000"), Some(14982));
        assert_eq!(limit_info("api-usage=15001/15000"), Some(0));
        assert_eq!(
            limit_info("per-app-api-usage=2/250(appName=x), api-usage=3/10"),
            Some(7)
        );
        assert_eq!(limit_info("api-usage=x/10"), None);
    }

    proptest! {
        /// Any header value: no panic.
        #[test]
        fn limit_info_never_panics(v in ".{0,80}") {
            let _ = limit_info(&v);
        }

        /// Any reply shape: every row gets one outcome, and only a
        /// success with an id is written.
        #[test]
        fn outcomes_account_for_every_row(reply in prop_oneof![
            Just(json!(null)),
            Just(json!({"message": "x"})),
            prop::collection::vec(prop_oneof![
                Just(json!({"success": true, "id": "003A"})),
                Just(json!({"success": true})),
                Just(json!({"success": false, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "dup", "fields": ["Email"]}]})),
                Just(json!({"success": false})),
                Just(json!(7)),
            ], 0..6).prop_map(Value::Array),
        ], n in 0usize..5) {
            let rows: Vec<Outgoing> = (0..n).map(|i| Outgoing::new(format!("k{i}"), None, BTreeMap::new())).collect();
            let out = outcomes(&rows, &reply, Op::Upsert);
            prop_assert_eq!(out.len(), n);
            for (i, o) in out.iter().enumerate() {
                if let Fate::Written(w) = &o.fate {
                    prop_assert_eq!(&reply[i]["id"], &json!(w.id));
                }
            }
        }
    }
}
