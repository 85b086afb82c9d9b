//! What the user writes for reverse syncs: `[destinations.<name>]` profiles
//! (the account and its credentials, shared by every sync to it) and
//! `[syncs.<name>]` (one model → one CRM object).
//!
//! ```toml
//! [destinations.hubspot]
//! type = "hubspot"
//! token = "${HUBSPOT_TOKEN}"
//!
//! [syncs.contact_scores]
//! model = "contact_scores"
//! destination = "hubspot"
//! object = "contacts"
//! mode = "upsert"
//! match = { column = "email", property = "email" }
//!
//! [syncs.contact_scores.fields]
//! lead_score = "ferry_lead_score"
//! persona = { property = "persona", policy = "if_empty" }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::http::{Auth, RetryPolicy};

/// The kinds of destination ferry can write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Hubspot,
    Salesforce,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Hubspot => "hubspot",
            DestinationKind::Salesforce => "salesforce",
        }
    }

    pub fn vendor(self) -> &'static str {
        match self {
            DestinationKind::Hubspot => "HubSpot",
            DestinationKind::Salesforce => "Salesforce",
        }
    }

    /// Records per write call at most (HubSpot's batch endpoints: 100;
    /// Salesforce's sObject Collections: 200).
    pub fn max_batch(self) -> usize {
        match self {
            DestinationKind::Hubspot => 100,
            DestinationKind::Salesforce => crate::sync::salesforce::COLLECTION_SIZE,
        }
    }
}

/// One `[destinations.<name>]` table, parsed: the settings every
/// destination shares and its vendor's own.
#[derive(Debug, Clone)]
pub struct DestinationSection {
    pub kind: DestinationKind,
    pub calls: CallSettings,
    pub vendor: VendorSection,
}

/// The settings a destination's type owns (each refuses the others').
#[derive(Debug, Clone)]
pub enum VendorSection {
    Hubspot(crate::sync::hubspot::config::HubspotDestination),
    Salesforce(crate::sync::salesforce::config::SalesforceDestination),
}

/// How ferry calls a destination, whatever its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSettings {
    /// API base URL; HubSpot's is the default (`https://api.hubapi.com`).
    /// For Salesforce, the login host (`https://login.salesforce.com`, or
    /// `https://test.salesforce.com` for a sandbox); calls then go to the
    /// instance the login names. Point it at an emulator to work locally.
    #[serde(default)]
    pub url: Option<String>,
    /// Requests per rolling 10 seconds for the whole account (HubSpot
    /// Free/Starter: 100; Professional/Enterprise: 190).
    /// Salesforce has no short window (its limit is the 24-hour one):
    /// 1,000 by default, to stay polite.
    #[serde(default)]
    pub requests_per_10s: Option<usize>,
    /// Requests per day for the whole account (HubSpot Free/Starter:
    /// 250,000; Salesforce: 15,000 by default, more per license, and
    /// ferry follows the org's `Sforce-Limit-Info`).
    #[serde(default)]
    pub daily_limit: Option<u64>,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Attempts per call for transient failures (5xx, timeouts, dropped
    /// connections), the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry backoff in milliseconds; doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// How long the CRM's search may miss a fresh write (HubSpot's index
    /// lags writes by seconds, occasionally longer). A create whose reply
    /// was lost is settled by a search only this long after it was sent;
    /// until then the record waits (it is never created twice).
    #[serde(default = "default_search_lag_seconds")]
    pub search_lag_seconds: u64,
}

/// The keys of [`CallSettings`].
const CALL_SETTINGS: &[&str] = &[
    "url",
    "requests_per_10s",
    "daily_limit",
    "max_in_flight",
    "max_attempts",
    "backoff_initial_ms",
    "backoff_max_ms",
    "timeout_seconds",
    "search_lag_seconds",
];

impl DestinationSection {
    /// Parse one `[destinations.<name>]` table (targets already laid over
    /// it), without I/O. The error is `(key within the table, message)`.
    pub fn parse(mut table: toml::Table) -> Result<DestinationSection, (String, String)> {
        let kind = match table.remove("type") {
            Some(toml::Value::String(k)) if k == "hubspot" => DestinationKind::Hubspot,
            Some(toml::Value::String(k)) if k == "salesforce" => DestinationKind::Salesforce,
            Some(other) => {
                return Err((
                    ".type".into(),
                    format!(
                        "type = {other} is not a destination type: use \"hubspot\" or \"salesforce\""
                    ),
                ));
            }
            None => {
                return Err((
                    String::new(),
                    "a destination needs type = \"hubspot\" or \"salesforce\"".into(),
                ));
            }
        };
        let mut calls = toml::Table::new();
        for k in CALL_SETTINGS {
            if let Some(v) = table.remove(*k) {
                calls.insert(k.to_string(), v);
            }
        }
        let located = |e: serde_path_to_error::Error<toml::de::Error>| {
            let r = crate::project::Refused::from(e);
            match &r.unknown {
                Some(f) if r.at.is_empty() => {
                    let hint = match kind {
                        DestinationKind::Salesforce if f == "token" => {
                            ": Salesforce logs in with a [jwt] table (client_id, username, private_key) or an [oauth] refresh token"
                        }
                        DestinationKind::Hubspot
                            if ["api_version", "jwt", "bulk_threshold"].contains(&f.as_str()) =>
                        {
                            ": it belongs to type = \"salesforce\""
                        }
                        _ => "",
                    };
                    (
                        format!(".{f}"),
                        format!(
                            "`{f}` is not a {} setting{hint}; ferry does not ignore it",
                            kind.as_str()
                        ),
                    )
                }
                Some(f) => (format!("{}.{f}", r.at), r.message),
                None => (r.at, r.message),
            }
        };
        let calls: CallSettings =
            serde_path_to_error::deserialize(toml::Value::Table(calls)).map_err(located)?;
        let vendor = match kind {
            DestinationKind::Hubspot => VendorSection::Hubspot(
                serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(located)?,
            ),
            DestinationKind::Salesforce => VendorSection::Salesforce(
                serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(located)?,
            ),
        };
        Ok(DestinationSection {
            kind,
            calls,
            vendor,
        })
    }
}

/// `[destinations.<name>.jwt]`: a connected app's JWT bearer flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The connected app's consumer key.
    pub client_id: String,
    /// The user ferry acts as.
    pub username: String,
    /// The private key (PEM) of the certificate uploaded to the app,
    /// usually `"${SALESFORCE_PRIVATE_KEY}"`.
    pub private_key: String,
}

/// `[destinations.<name>.oauth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Token endpoint; HubSpot's `<url>/oauth/v1/token` by default.
    #[serde(default)]
    pub token_url: Option<String>,
}

fn default_max_in_flight() -> usize {
    8
}
fn default_max_attempts() -> u32 {
    6
}
fn default_backoff_initial_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_timeout_seconds() -> u64 {
    30
}
fn default_search_lag_seconds() -> u64 {
    30
}

/// A resolved destination profile (secrets interpolated).
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub kind: DestinationKind,
    /// The API's base URL (Salesforce: the login host).
    pub url: String,
    /// Salesforce's API version (`v60.0`).
    pub api_version: String,
    pub auth: Auth,
    pub requests_per_10s: usize,
    pub daily_limit: u64,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    pub search_lag: Duration,
    /// Salesforce: rows per run from which Bulk API 2.0 carries them.
    pub bulk_threshold: usize,
}

/// Rows in a run from which Salesforce syncs use Bulk API 2.0 (measured:
/// `benches/sync.rs`, `salesforce_break_even`).
pub const DEFAULT_BULK_THRESHOLD: usize = 2_000;

impl Destination {
    pub(crate) fn resolve(
        name: &str,
        d: &DestinationSection,
        auth: Auth,
    ) -> Result<Destination, String> {
        let s = &d.calls;
        if s.requests_per_10s == Some(0) || s.max_in_flight == 0 || s.max_attempts == 0 {
            return Err(
                "requests_per_10s, max_in_flight and max_attempts must be at least 1".into(),
            );
        }
        let (api_version, bulk_threshold) = match &d.vendor {
            VendorSection::Salesforce(sf) => (sf.api_version.clone(), sf.bulk_threshold),
            VendorSection::Hubspot(_) => (None, None),
        };
        let (default_url, default_daily, default_window) = match d.kind {
            DestinationKind::Hubspot => ("https://api.hubapi.com", 250_000, 100),
            DestinationKind::Salesforce => ("https://login.salesforce.com", 15_000, 1_000),
        };
        let api_version = api_version.unwrap_or_else(|| "v60.0".into());
        let well_formed = api_version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            });
        if !well_formed {
            return Err(format!(
                "api_version = {api_version:?} is not a Salesforce API version; write it as \"v60.0\""
            ));
        }
        Ok(Destination {
            name: name.to_string(),
            kind: d.kind,
            url: s
                .url
                .clone()
                .unwrap_or_else(|| default_url.into())
                .trim_end_matches('/')
                .to_string(),
            api_version,
            auth,
            requests_per_10s: s.requests_per_10s.unwrap_or(default_window),
            daily_limit: s.daily_limit.unwrap_or(default_daily),
            max_in_flight: s.max_in_flight,
            retry: RetryPolicy {
                max_attempts: s.max_attempts,
                initial: Duration::from_millis(s.backoff_initial_ms),
                max: Duration::from_millis(s.backoff_max_ms.max(s.backoff_initial_ms)),
                timeout: Duration::from_secs(s.timeout_seconds.max(1)),
            },
            search_lag: Duration::from_secs(s.search_lag_seconds),
            bulk_threshold: bulk_threshold.unwrap_or(DEFAULT_BULK_THRESHOLD),
        })
    }
}

/// What a sync does with the model's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Create records that do not exist, update those that do.
    #[default]
    Upsert,
    /// Only update records that exist; never create.
    Update,
    /// Only create records that do not exist; never touch existing ones.
    Insert,
    /// Upsert, and archive records this sync created once they leave the model.
    Mirror,
    /// Keep a CRM audience (a HubSpot list, a Salesforce campaign's
    /// members) equal to the model's keys: add who joins, remove who leaves.
    Audience,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Upsert => "upsert",
            Mode::Update => "update",
            Mode::Insert => "insert",
            Mode::Mirror => "mirror",
            Mode::Audience => "audience",
        }
    }
}

/// Who owns a CRM field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The model owns the field: its value is written, a null clears it.
    #[default]
    Overwrite,
    /// The CRM's users own the field: written only where the CRM value is
    /// empty, so a rep's input is never replaced.
    IfEmpty,
    /// Written like `overwrite`, but a null in the model never clears a value.
    SkipNulls,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Overwrite => "overwrite",
            Policy::IfEmpty => "if_empty",
            Policy::SkipNulls => "skip_nulls",
        }
    }
}

/// A field mapping: a property name, or a property with its policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSection {
    Property(String),
    Full {
        property: String,
        #[serde(default)]
        policy: Policy,
    },
}

/// `match = { column = "...", property = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchKey {
    /// The model column holding the key.
    pub column: String,
    /// The CRM property it matches (`email`, a custom unique property, or a
    /// non-unique one such as `domain`, which ferry looks up before writing).
    pub property: String,
}

/// One `[syncs.<name>]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// The model (or any table `ferry query` can read) whose rows are synced.
    pub model: String,
    /// A `[destinations.<name>]` profile.
    pub destination: String,
    /// CRM object type: `contacts`, `companies`, `deals`, or a custom object's type id.
    pub object: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(rename = "match")]
    pub match_key: MatchKey,
    /// Model column → CRM property (or `{ property, policy }`).
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSection>,
    /// Records per API call (at most 100 for HubSpot).
    /// Records per call; default and cap: the destination's maximum
    /// (HubSpot 100, Salesforce Collections 200).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// `mirror` refuses to archive more than this share of the synced records.
    #[serde(default = "default_max_delete_pct")]
    pub max_delete_pct: f64,
    /// This sync's own share of the account's 10-second budget (defaults to all of it).
    #[serde(default)]
    pub requests_per_10s: Option<usize>,
    /// A copy of the CRM object extracted into the lake, to judge `if_empty`
    /// fields without reading the CRM while it is fresh enough.
    #[serde(default)]
    pub crm_copy: Option<CrmCopy>,
    /// Record the CRM's values each run replaces (read from `crm_copy` when
    /// fresh, else from the CRM before each batch), so `ferry sync revert
    /// RUN_ID` can write them back.
    #[serde(default)]
    pub revertible: bool,
    /// `mode = "audience"`: the audience's name (a HubSpot list, a
    /// Salesforce campaign), created if absent.
    #[serde(default)]
    pub audience: Option<String>,
    /// Workers sending the changed rows, each its own partition of the keys
    /// (1 to the destination's `max_in_flight`), all under the account's one
    /// budget.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// `crm_copy = { table = "hubspot.contacts", max_age_minutes = 60 }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmCopy {
    /// A lake table with the match property, the record `id` (or
    /// `hs_object_id`) and the `if_empty` properties as columns, as the
    /// HubSpot extractor lands them.
    pub table: String,
    /// Used only if its newest row was landed at most this long ago; otherwise
    /// ferry reads the current values from the CRM in batches.
    #[serde(default = "default_copy_age")]
    pub max_age_minutes: u64,
}

fn default_copy_age() -> u64 {
    60
}

fn default_max_delete_pct() -> f64 {
    20.0
}

/// One field mapping, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub column: String,
    pub property: String,
    pub policy: Policy,
}

/// The most workers one sync may have.
pub const MAX_WORKERS: usize = 64;

/// A resolved sync.
#[derive(Debug, Clone)]
pub struct Sync {
    pub name: String,
    pub model: String,
    pub destination: String,
    pub object: String,
    pub mode: Mode,
    pub key_column: String,
    pub key_property: String,
    pub fields: Vec<Field>,
    pub batch_size: usize,
    pub max_delete_pct: f64,
    pub requests_per_10s: Option<usize>,
    pub crm_copy: Option<CrmCopy>,
    pub revertible: bool,
    /// The audience's name (`mode = "audience"`).
    pub audience: Option<String>,
    /// Workers sending changed rows, one partition of the keys each.
    pub workers: usize,
}

impl Sync {
    pub(crate) fn resolve(
        name: &str,
        s: &SyncSection,
        kind: DestinationKind,
    ) -> Result<Sync, String> {
        match (s.mode, &s.audience) {
            (Mode::Audience, None) => {
                return Err("mode = \"audience\" needs audience = \"<name>\": the HubSpot list or Salesforce campaign to keep equal to the model".into());
            }
            (Mode::Audience, Some(name)) if name.trim().is_empty() => {
                return Err(
                    "audience is empty: name the HubSpot list or Salesforce campaign".into(),
                );
            }
            (Mode::Audience, _) => {
                if !s.fields.is_empty() {
                    return Err("an audience sync has no fields: it adds and removes members; map fields in another sync".into());
                }
                if s.revertible {
                    return Err("revertible applies to field syncs; an audience's previous members are its sync log".into());
                }
            }
            (_, Some(_)) => {
                return Err("audience is for mode = \"audience\" only".into());
            }
            (_, None) if s.fields.is_empty() => {
                return Err("a sync needs at least one field under fields".into());
            }
            _ => {}
        }
        let max = kind.max_batch();
        if let Some(n) = s.batch_size
            && (n == 0 || n > max)
        {
            return Err(format!(
                "batch_size = {n} is out of range: {} takes 1 to {max} records per call",
                kind.vendor()
            ));
        }
        if s.workers.is_some_and(|w| !(1..=MAX_WORKERS).contains(&w)) {
            return Err(format!(
                "workers = {} is out of range: 1 to {MAX_WORKERS}",
                s.workers.unwrap_or_default()
            ));
        }
        if !(0.0..=100.0).contains(&s.max_delete_pct) {
            return Err("max_delete_pct must be between 0 and 100".into());
        }
        let fields: Vec<Field> = s
            .fields
            .iter()
            .map(|(column, f)| match f {
                FieldSection::Property(p) => Field {
                    column: column.clone(),
                    property: p.clone(),
                    policy: Policy::Overwrite,
                },
                FieldSection::Full { property, policy } => Field {
                    column: column.clone(),
                    property: property.clone(),
                    policy: *policy,
                },
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for f in &fields {
            if f.property.trim().is_empty() {
                return Err(format!("fields.{}: the CRM property is empty", f.column));
            }
            if !seen.insert(f.property.to_lowercase()) {
                return Err(format!(
                    "fields: two columns write the CRM property {:?}",
                    f.property
                ));
            }
            if f.property.eq_ignore_ascii_case(&s.match_key.property) {
                return Err(format!(
                    "fields.{}: {:?} is the match property; it is written from match.column",
                    f.column, f.property
                ));
            }
        }
        Ok(Sync {
            name: name.to_string(),
            model: s.model.clone(),
            destination: s.destination.clone(),
            object: s.object.clone(),
            mode: s.mode,
            key_column: s.match_key.column.clone(),
            key_property: s.match_key.property.clone(),
            fields,
            batch_size: s.batch_size.unwrap_or(max),
            max_delete_pct: s.max_delete_pct,
            requests_per_10s: s.requests_per_10s,
            crm_copy: s.crm_copy.clone(),
            revertible: s.revertible,
            audience: s.audience.clone(),
            workers: s.workers.unwrap_or(1),
        })
    }
}
