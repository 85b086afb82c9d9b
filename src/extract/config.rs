//! What the user writes for extraction, inside `[sources.<name>]` and
//! `[sources.<name>.streams.<stream>]`. A source without `type` is only a
//! landing target (`ferry land`).
//!
//! ```toml
//! [sources.outreach]
//! type = "rest"
//! url = "https://api.outreach.io/api/v2"
//! auth = { type = "bearer", token = "${OUTREACH_TOKEN}" }
//! requests_per_second = 10
//!
//! [sources.outreach.streams.prospects]
//! path = "/prospects"
//! records = "data"
//! primary_key = "id"
//! pagination = { type = "next_url", path = "links.next" }
//! incremental = { cursor_field = "attributes.updatedAt", param = "filter[updatedAt][gte]" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::http::Auth;

/// A setting that does not hold, at a key of its `[sources.<name>]` table
/// (`""` the table itself, `".auth"`, `".streams.contacts"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Formats a problem at a key as the user reads it (`ferry.toml:12: ...`),
/// for messages kept until a call needs them (a secret not set).
pub type Locate<'a> = &'a dyn Fn(&str, String) -> String;

/// A `[sources.<name>]` table, by its `type`: each connector owns its
/// settings (and refuses any other's).
#[derive(Debug, Clone)]
pub enum SourceSection {
    Rest(super::rest::config::RestSection),
    Files(super::files::config::FilesSection),
    Hubspot(super::hubspot::config::HubspotSection),
    Salesforce(super::salesforce::config::SalesforceSection),
    Webhook(super::webhook::config::WebhookSection),
}

/// A `[sources.<name>]` table without `type`: only landed into (`ferry land`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandSection {
    #[serde(default)]
    pub schema: Option<crate::project::SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, LandStreamSection>,
}

/// A stream of a source that is landed into rather than extracted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandStreamSection {
    #[serde(default)]
    pub schema: Option<crate::project::SchemaMode>,
}

/// A `[sources.<name>]` table as parsed.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per project, parsed once
pub enum SourceTable {
    Land(LandSection),
    Typed(SourceSection),
}

/// The settings each source type takes, for the error that names the owner
/// of a setting given to the wrong type.
const SETTINGS: &[(&str, &[&str])] = &[
    ("rest", &["url", "auth", "requests_per_second"]),
    ("files", &["path"]),
    (
        "hubspot",
        &[
            "url",
            "token",
            "requests_per_10s",
            "search_per_second",
            "search_lag_margin_seconds",
        ],
    ),
    (
        "salesforce",
        &[
            "url",
            "api_version",
            "jwt",
            "oauth",
            "search_lag_margin_seconds",
            "bulk_threshold",
        ],
    ),
    (
        "webhook",
        &[
            "preset",
            "secret",
            "max_body_bytes",
            "tolerance_seconds",
            "public_url",
            "reconcile",
        ],
    ),
];

impl SourceTable {
    /// Parse one `[sources.<name>]` table (targets already laid over it).
    /// The error names the offending key when there is one.
    pub fn parse(table: toml::Table) -> Result<SourceTable, Problem> {
        let kind = match table.get("type") {
            None => None,
            Some(toml::Value::String(k)) => Some(k.clone()),
            Some(_) => {
                return Err(Problem::at(
                    ".type",
                    "type must be a string such as \"rest\"",
                ));
            }
        };
        let Some(kind) = kind else {
            if table.contains_key("url") || table.contains_key("auth") {
                return Err(Problem::at(
                    "",
                    "url and auth need a source type: add type = \"rest\"",
                ));
            }
            return typed(table, None).map(SourceTable::Land);
        };
        let mut table = table;
        table.remove("type");
        let k = Some(kind.as_str());
        Ok(SourceTable::Typed(match kind.as_str() {
            "rest" => SourceSection::Rest(typed(table, k)?),
            "files" => SourceSection::Files(typed(table, k)?),
            "hubspot" => SourceSection::Hubspot(typed(table, k)?),
            "salesforce" => SourceSection::Salesforce(typed(table, k)?),
            "webhook" => SourceSection::Webhook(typed(table, k)?),
            other => {
                return Err(Problem::at(
                    ".type",
                    format!(
                        "type = {other:?} is not a source type: use rest, files, hubspot, salesforce or webhook"
                    ),
                ));
            }
        }))
    }

    pub fn schema(&self) -> Option<crate::project::SchemaMode> {
        match self {
            SourceTable::Land(s) => s.schema,
            SourceTable::Typed(SourceSection::Rest(s)) => s.schema,
            SourceTable::Typed(SourceSection::Files(s)) => s.schema,
            SourceTable::Typed(SourceSection::Hubspot(s)) => s.schema,
            SourceTable::Typed(SourceSection::Salesforce(s)) => s.schema,
            SourceTable::Typed(SourceSection::Webhook(s)) => s.schema,
        }
    }

    /// Each stream's name and its own schema policy.
    pub fn streams(&self) -> Vec<(&str, Option<crate::project::SchemaMode>)> {
        fn names<T>(
            m: &BTreeMap<String, T>,
            schema: impl Fn(&T) -> Option<crate::project::SchemaMode>,
        ) -> Vec<(&str, Option<crate::project::SchemaMode>)> {
            m.iter().map(|(k, v)| (k.as_str(), schema(v))).collect()
        }
        match self {
            SourceTable::Land(s) => names(&s.streams, |t| t.schema),
            SourceTable::Typed(SourceSection::Rest(s)) => names(&s.streams, |t| t.schema),
            SourceTable::Typed(SourceSection::Files(s)) => names(&s.streams, |t| t.schema),
            SourceTable::Typed(SourceSection::Hubspot(s)) => names(&s.streams, |t| t.schema),
            SourceTable::Typed(SourceSection::Salesforce(s)) => names(&s.streams, |t| t.schema),
            SourceTable::Typed(SourceSection::Webhook(s)) => names(&s.streams, |t| t.schema),
        }
    }
}

/// A source table as its type's section; the error names the key (a
/// stream's too) and, for a setting of another type, its owner.
fn typed<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    kind: Option<&str>,
) -> Result<T, Problem> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let r = crate::project::Refused::from(e);
        let kind_name = kind.unwrap_or("landing-only");
        let Some(field) = &r.unknown else {
            return Problem::at(r.at, r.message);
        };
        let key = format!("{}.{field}", r.at);
        if r.at.starts_with(".streams.") {
            return Problem::at(
                key,
                format!(
                    "`{field}` is not a setting of a {kind_name} stream{}; ferry does not ignore it",
                    r.expected()
                ),
            );
        }
        let owners: Vec<&str> = SETTINGS
            .iter()
            .filter(|(_, keys)| keys.contains(&field.as_str()))
            .map(|(k, _)| *k)
            .collect();
        let hint = if field == "token" && kind == Some("rest") {
            ": a rest source authenticates with auth = { type = \"bearer\", token = \"${TOKEN}\" }"
                .to_string()
        } else if !owners.is_empty() {
            format!(" (it belongs to type = {})", owners.join(" or "))
        } else {
            format!(" of any source{}", r.expected())
        };
        Problem::at(
            key,
            format!("`{field}` is not a {kind_name} setting{hint}; ferry does not ignore it"),
        )
    })
}

/// The kinds of extraction source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A declarative REST API.
    Rest,
    /// CSV, JSONL and Parquet files dropped in a folder or object-store prefix.
    Files,
    /// HubSpot CRM objects and their associations.
    Hubspot,
    /// Salesforce sObjects, by SOQL.
    Salesforce,
    /// Signed webhook deliveries received by `ferry serve`.
    Webhook,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Rest => "rest",
            SourceKind::Files => "files",
            SourceKind::Hubspot => "hubspot",
            SourceKind::Salesforce => "salesforce",
            SourceKind::Webhook => "webhook",
        }
    }
}

/// Whose signature scheme a webhook uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookPreset {
    /// `X-HubSpot-Signature-v3`: base64 HMAC-SHA256 of method + URI + body +
    /// `X-HubSpot-Request-Timestamp` (ms); the body is an array of events.
    Hubspot,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
    Stripe,
    /// `Typeform-Signature: sha256=<base64 HMAC-SHA256 of the body>`.
    Typeform,
}

/// A resolved webhook source.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub name: String,
    pub preset: WebhookPreset,
    pub secret: crate::project::Secret,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// How old a signed timestamp may be (replay protection).
    pub tolerance_seconds: u64,
    /// The URL the vendor calls, as it signs it (HubSpot signs the full URI);
    /// default `http://<Host header><path>`.
    pub public_url: Option<String>,
    /// Polling the vendor's API for what the webhooks missed.
    pub reconcile: Option<Reconcile>,
}

/// `reconcile = { with = "hubspot.contacts", ... }` on a webhook source, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// The API stream (`source.stream` of an extraction source) holding the
    /// same objects the webhooks are about.
    pub with: String,
    /// The stream's column the events point at (default `id`).
    pub key: Option<String>,
    /// The stream's last-modified column (default `updated_at`, as HubSpot streams land it).
    pub updated_at: Option<String>,
    /// The event column naming the object (default `contact_id`; or `account_id`).
    pub event_key: Option<String>,
    /// The first window reaches back this far (default 24).
    pub lookback_hours: Option<u64>,
    /// Changes younger than this are left to the next window, so webhooks
    /// still on their way are not counted missed (default 5).
    pub settle_minutes: Option<u64>,
}

/// A webhook source's reconciliation, resolved.
#[derive(Debug, Clone)]
pub struct Reconcile {
    pub source: String,
    pub stream: String,
    pub key: String,
    pub updated_at: String,
    pub event_key: String,
    pub lookback: std::time::Duration,
    pub settle: std::time::Duration,
}

impl Reconcile {
    pub fn resolve(r: &ReconcileSection) -> Result<Reconcile, String> {
        let (source, stream) = r.with.split_once('.').ok_or_else(|| {
            format!(
                "reconcile.with = {:?}: name the API stream as source.stream, e.g. \"hubspot.contacts\"",
                r.with
            )
        })?;
        let event_key = r.event_key.clone().unwrap_or_else(|| "contact_id".into());
        if event_key != "contact_id" && event_key != "account_id" {
            return Err(format!(
                "reconcile.event_key = {event_key:?}: use \"contact_id\" or \"account_id\" (the event columns naming an object)"
            ));
        }
        Ok(Reconcile {
            source: source.to_string(),
            stream: stream.to_string(),
            key: r.key.clone().unwrap_or_else(|| "id".into()),
            updated_at: r.updated_at.clone().unwrap_or_else(|| "updated_at".into()),
            event_key,
            lookback: std::time::Duration::from_secs(r.lookback_hours.unwrap_or(24) * 3600),
            settle: std::time::Duration::from_secs(r.settle_minutes.unwrap_or(5) * 60),
        })
    }
}

/// A resolved HubSpot stream.
#[derive(Debug, Clone, PartialEq)]
pub struct HubspotStream {
    pub name: String,
    /// CRM object type (`contacts`, `companies`, `deals`, a custom type id).
    pub object: String,
    /// Properties to extract; all (from the properties API) when `None`.
    pub properties: Option<Vec<String>>,
    /// Object types whose associations land in `<stream>_<type>`.
    pub associations: Vec<String>,
}

/// A dropped file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Jsonl,
    Parquet,
}

/// A resolved file-drop stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStream {
    pub name: String,
    /// File-name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Format; by extension when absent.
    pub format: Option<FileFormat>,
    /// Declared CSV header: checked before anything lands.
    pub columns: Vec<String>,
    pub delimiter: u8,
}

/// `auth = { type = ..., ... }` as written. (Plain strings: spans do not
/// survive serde's internally tagged enums; errors point at the `auth` key.)
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSection {
    Bearer {
        token: String,
    },
    ApiKey {
        key: String,
        /// Send the key in this header...
        #[serde(default)]
        header: Option<String>,
        /// ...or in this query parameter.
        #[serde(default)]
        query: Option<String>,
    },
    Basic {
        username: String,
        password: String,
    },
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scopes: Vec<String>,
    },
}

/// How an endpoint pages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request.
    None,
    /// A cursor in the body (`cursor_path`), sent back as `param`.
    Cursor {
        cursor_path: String,
        param: String,
        /// Page size parameter and value, if the API takes one.
        #[serde(default)]
        limit_param: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// The next page's URL in the body (`path`); absent or null at the end.
    NextUrl { path: String },
    /// The next page's URL in the `Link` header (`rel="next"`).
    LinkHeader,
    /// `offset`/`limit` parameters; stops at a short or empty page.
    Offset {
        #[serde(default = "default_offset")]
        param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        #[serde(default = "default_page_size")]
        limit: usize,
    },
    /// A page number; stops at an empty page (or `total_pages_path`).
    Page {
        #[serde(default = "default_page")]
        param: String,
        #[serde(default = "one")]
        start: usize,
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<usize>,
        #[serde(default)]
        total_pages_path: Option<String>,
    },
}

fn default_offset() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_page_size() -> usize {
    100
}
fn default_page() -> String {
    "page".into()
}
fn one() -> usize {
    1
}

/// `incremental = { cursor_field = ..., param = ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// Dotted path of the field that only grows as records change (an
    /// updated-at time or a sequence number).
    pub cursor_field: String,
    /// Query parameter that sends the last value seen (records with a cursor
    /// at or after it are returned).
    pub param: String,
    /// Value for the first run (omit to start from the beginning).
    #[serde(default)]
    pub start: Option<String>,
    /// How the value is written into the parameter, `{cursor}` standing for
    /// it (Outreach wants `"{cursor}..inf"`). Default: the value itself.
    #[serde(default)]
    pub template: Option<String>,
    /// For a time cursor (RFC 3339 text, or epoch seconds or milliseconds):
    /// the saved cursor is at most the run's start minus this many seconds
    /// (default 60), not the largest value seen, because a record changed
    /// while the run paged (or whose change the API had not indexed yet)
    /// could sort before it and be skipped for good. The overlap is read
    /// again next run: duplicates, which `latest_by` removes, never gaps.
    #[serde(default = "default_lag_margin_seconds")]
    pub lag_margin_seconds: u64,
}

fn default_lag_margin_seconds() -> u64 {
    60
}

/// `parent = { stream = ..., key = ... }`: one request per parent record,
/// with `{key}` in `path` replaced by the parent's value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    pub stream: String,
    #[serde(default = "default_parent_key")]
    pub key: String,
}

fn default_parent_key() -> String {
    "id".into()
}

/// A resolved REST stream.
#[derive(Debug, Clone, PartialEq)]
pub struct RestStream {
    pub name: String,
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub records: String,
    pub primary_key: Option<String>,
    pub pagination: Pagination,
    pub incremental: Option<Incremental>,
    pub parent: Option<Parent>,
}

/// A resolved extraction source.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Rest {
        name: String,
        url: String,
        auth: Auth,
        requests_per_second: Option<usize>,
        /// In dependency order: parents before children.
        streams: Vec<RestStream>,
    },
    Files {
        name: String,
        /// Folder (relative to the project) or object-store URL.
        location: String,
        streams: Vec<FileStream>,
    },
    Hubspot {
        name: String,
        url: String,
        auth: Auth,
        /// The account's budget per rolling 10 s.
        requests_per_10s: usize,
        /// The search endpoint's budget per second.
        search_per_second: usize,
        /// Incremental runs read changes up to this long before the run's
        /// start, because HubSpot's search index lags writes.
        lag_margin: std::time::Duration,
        streams: Vec<HubspotStream>,
    },
    Salesforce {
        name: String,
        /// The login host; calls go to the instance the login names.
        url: String,
        api_version: String,
        auth: Auth,
        /// Incremental runs read changes up to this long before the run's
        /// start (a transaction's `SystemModstamp` can be older than its
        /// commit, so the newest seconds are read next run).
        lag_margin: std::time::Duration,
        /// A stream whose query matches this many records or more is read
        /// by a Bulk API 2.0 query job; fewer, through the REST query API.
        bulk_threshold: u64,
        streams: Vec<SalesforceStream>,
    },
}

/// Records from which a Salesforce stream is read by a Bulk API 2.0 query
/// job (Salesforce: Bulk queries are "designed for 10,000 records or more").
pub const DEFAULT_QUERY_BULK_THRESHOLD: u64 = 10_000;

/// One Salesforce stream: an sObject and the fields to read.
#[derive(Debug, Clone)]
pub struct SalesforceStream {
    pub name: String,
    pub object: String,
    /// `None`: every field `describe` lists.
    pub fields: Option<Vec<String>>,
}

impl SourceSpec {
    pub fn name(&self) -> &str {
        match self {
            SourceSpec::Rest { name, .. }
            | SourceSpec::Files { name, .. }
            | SourceSpec::Hubspot { name, .. }
            | SourceSpec::Salesforce { name, .. } => name,
        }
    }

    /// Stream names in extraction order.
    pub fn streams(&self) -> Vec<String> {
        match self {
            SourceSpec::Rest { streams, .. } => streams.iter().map(|s| s.name.clone()).collect(),
            SourceSpec::Files { streams, .. } => streams.iter().map(|s| s.name.clone()).collect(),
            SourceSpec::Hubspot { streams, .. } => streams.iter().map(|s| s.name.clone()).collect(),
            SourceSpec::Salesforce { streams, .. } => {
                streams.iter().map(|s| s.name.clone()).collect()
            }
        }
    }
}

/// Order REST streams so parents come first; fail on unknown parents or cycles.
pub fn order_streams(mut streams: Vec<RestStream>) -> Result<Vec<RestStream>, String> {
    let names: std::collections::BTreeSet<String> =
        streams.iter().map(|s| s.name.clone()).collect();
    for s in &streams {
        if let Some(p) = &s.parent {
            if !names.contains(&p.stream) {
                return Err(format!(
                    "streams.{}: parent stream {:?} is not defined in this source",
                    s.name, p.stream
                ));
            }
            if !s.path.contains(&format!("{{{}}}", p.key)) {
                return Err(format!(
                    "streams.{}: path {:?} must contain {{{}}} for the parent's value",
                    s.name, s.path, p.key
                ));
            }
        }
    }
    let mut out: Vec<RestStream> = Vec::new();
    while !streams.is_empty() {
        let before = streams.len();
        let (ready, rest): (Vec<_>, Vec<_>) = streams.into_iter().partition(|s| {
            s.parent
                .as_ref()
                .is_none_or(|p| out.iter().any(|o| o.name == p.stream))
        });
        out.extend(ready);
        streams = rest;
        if streams.len() == before {
            return Err("streams form a parent cycle".into());
        }
    }
    Ok(out)
}
