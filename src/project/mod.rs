//! A ferry project: a folder with `ferry.toml`.
//!
//! Loading goes in three steps, all without I/O beyond reading the two files:
//! parse `ferry.toml` into plain serde structs (unknown keys are errors),
//! resolve `${VAR}` secrets from the environment or `secrets.toml`, then
//! validate names. Every error names the file, line, column and dotted key.
//! Layering: built-in defaults, then the file, then `FERRY_LAKE` from the
//! environment (which replaces `lake.url`).

pub mod dbt;
pub mod init;
pub mod secret;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use secret::{Secret, SecretSource};

use crate::error::{Error, Result};
use crate::extract::config as extract_config;
use crate::sync::config as sync_config;

/// The project file's name.
pub const CONFIG_FILE: &str = "ferry.toml";
/// The git-ignored file `${VAR}` references fall back to.
pub const SECRETS_FILE: &str = "secrets.toml";
/// Environment variable that overrides `lake.url`.
pub const LAKE_ENV: &str = "FERRY_LAKE";

/// `ferry.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Project identity.
    project: ProjectSection,
    /// Where the lake lives.
    #[serde(default)]
    lake: LakeSection,
    /// Vendor sources, keyed by source name (the `<source>` in `<source>.<stream>`).
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    /// Defaults for every model (`materialized = "table"`, `tags = [...]`).
    #[serde(default)]
    models: BTreeMap<String, toml::Value>,
    /// Values for `{{ var('name') }}` in models.
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
    /// Reverse-sync destinations (accounts and credentials), by name.
    #[serde(default)]
    destinations: BTreeMap<String, sync_config::DestinationSection>,
    /// Reverse syncs (model → CRM object), by name.
    #[serde(default)]
    syncs: BTreeMap<String, sync_config::SyncSection>,
    /// Scheduled jobs `ferry serve` runs, by name.
    #[serde(default)]
    schedules: BTreeMap<String, crate::operate::schedule::ScheduleSection>,
    /// Alert rules and channels.
    #[serde(default)]
    alerts: Option<crate::operate::alerts::AlertsSection>,
    /// Per-target settings (`--target sandbox`): sources' and
    /// destinations' URLs, credentials and limits over the base ones.
    #[serde(default)]
    targets: BTreeMap<String, TargetSection>,
}

/// One `[targets.<name>]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSection {
    /// Settings over `[sources.<name>]`, key by key.
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    /// Settings over `[destinations.<name>]`, key by key; credentials given
    /// here replace the base ones as a whole.
    #[serde(default)]
    destinations: BTreeMap<String, sync_config::DestinationOverride>,
    /// Refuse `ferry build` and `ferry sync` while the project's git
    /// working tree has uncommitted changes.
    #[serde(default)]
    require_clean_git: bool,
    /// The target's lake. A target that changes a source or a destination
    /// gets its own lake by default (`<lake>/targets/<name>`): the lake's
    /// state (sync snapshots, extract cursors) describes those accounts.
    #[serde(default)]
    lake: Option<String>,
}

/// The target chosen with `--target` or `FERRY_TARGET`.
pub fn chosen_target() -> Option<String> {
    crate::models::project::TARGET
        .get()
        .cloned()
        .or_else(|| std::env::var("FERRY_TARGET").ok())
        .filter(|t| !t.trim().is_empty())
}

impl SourceConfig {
    /// The first setting given that a source of type `kind` does not use,
    /// as the error to show.
    fn foreign_setting(&self, kind: extract_config::SourceKind) -> Option<String> {
        use extract_config::SourceKind as K;
        let given = [
            (
                "url",
                self.url.is_some(),
                &[K::Rest, K::Hubspot, K::Salesforce][..],
            ),
            ("auth", self.auth.is_some(), &[K::Rest][..]),
            (
                "requests_per_second",
                self.requests_per_second.is_some(),
                &[K::Rest][..],
            ),
            ("preset", self.preset.is_some(), &[K::Webhook][..]),
            ("secret", self.secret.is_some(), &[K::Webhook][..]),
            (
                "max_body_bytes",
                self.max_body_bytes.is_some(),
                &[K::Webhook][..],
            ),
            (
                "tolerance_seconds",
                self.tolerance_seconds.is_some(),
                &[K::Webhook][..],
            ),
            ("public_url", self.public_url.is_some(), &[K::Webhook][..]),
            ("reconcile", self.reconcile.is_some(), &[K::Webhook][..]),
            ("token", self.token.is_some(), &[K::Hubspot][..]),
            (
                "requests_per_10s",
                self.requests_per_10s.is_some(),
                &[K::Hubspot][..],
            ),
            (
                "search_per_second",
                self.search_per_second.is_some(),
                &[K::Hubspot][..],
            ),
            (
                "search_lag_margin_seconds",
                self.search_lag_margin_seconds.is_some(),
                &[K::Hubspot, K::Salesforce][..],
            ),
            (
                "api_version",
                self.api_version.is_some(),
                &[K::Salesforce][..],
            ),
            ("jwt", self.jwt.is_some(), &[K::Salesforce][..]),
            ("oauth", self.oauth.is_some(), &[K::Salesforce][..]),
            (
                "bulk_threshold",
                self.bulk_threshold.is_some(),
                &[K::Salesforce][..],
            ),
            ("path", self.path.is_some(), &[K::Files][..]),
        ];
        let (name, _, kinds) = given
            .iter()
            .find(|(_, set, kinds)| *set && !kinds.contains(&kind))?;
        let owners: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let hint = if *name == "token" && kind == K::Rest {
            ": a rest source authenticates with auth = { type = \"bearer\", token = \"${TOKEN}\" }"
                .to_string()
        } else {
            format!(" (it belongs to type = {})", owners.join(" or "))
        };
        Some(format!(
            "`{name}` is not a {} setting{hint}; ferry does not ignore it",
            kind.as_str()
        ))
    }

    /// `over`'s settings replace these, key by key (streams by name).
    fn overlay(&mut self, over: &SourceConfig) {
        // Credentials given by the target replace the base's as a whole: a
        // sandbox's JWT login does not mix with prod's refresh token.
        if over.jwt.is_some() || over.oauth.is_some() {
            self.jwt = None;
            self.oauth = None;
        }
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            kind,
            url,
            auth,
            requests_per_second,
            preset,
            secret,
            max_body_bytes,
            tolerance_seconds,
            public_url,
            reconcile,
            token,
            requests_per_10s,
            search_per_second,
            search_lag_margin_seconds,
            api_version,
            jwt,
            oauth,
            bulk_threshold,
            path,
            schema
        );
        for (name, stream) in &over.streams {
            self.streams.insert(name.clone(), stream.clone());
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectSection {
    /// Project name, used in run records and logs.
    name: String,
    /// Folders holding seed CSVs (default `["seeds"]`).
    #[serde(default)]
    seed_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LakeSection {
    /// A path (relative to the project folder) or a URL: `file://`,
    /// `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`.
    #[serde(default = "default_lake_url")]
    url: String,
    /// Options handed to the object store builder (for example `aws_region`,
    /// `aws_access_key_id`). Values may use `${VAR}` and are treated as secrets.
    #[serde(default)]
    options: BTreeMap<String, Spanned<String>>,
}

impl Default for LakeSection {
    fn default() -> Self {
        LakeSection {
            url: default_lake_url(),
            options: BTreeMap::new(),
        }
    }
}

fn default_lake_url() -> String {
    "lake".to_string()
}

/// What ferry does when a batch does not match the stream's schema so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaMode {
    /// New columns are added; a value whose type changed lands in a variant
    /// column `<column>__<type>` and a warning is recorded.
    #[default]
    Evolve,
    /// The first landing fixes the schema; a later batch that adds a column or
    /// changes a type is quarantined whole and the landing fails.
    Freeze,
}

/// One `[sources.<name>]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// How `ferry extract` pulls this source (`rest`); absent for a source
    /// that is only landed into (`ferry land`).
    #[serde(default, rename = "type")]
    pub kind: Option<extract_config::SourceKind>,
    /// The API's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Credentials: `{ type = "bearer" | "api_key" | "basic" | "oauth2", ... }`.
    #[serde(default)]
    pub auth: Option<extract_config::AuthSection>,
    /// Requests per second to this API (all streams together).
    #[serde(default)]
    pub requests_per_second: Option<usize>,
    /// Webhook: `hubspot`, `stripe` or `typeform` (the signature scheme).
    #[serde(default)]
    pub preset: Option<extract_config::WebhookPreset>,
    /// Webhook: the signing secret, usually `"${STRIPE_WEBHOOK_SECRET}"`.
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    /// Webhook: largest accepted body in bytes (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Webhook: how old a signed timestamp may be, in seconds (default 300).
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// Webhook: the public URL the vendor calls (HubSpot signs it).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Webhook: poll this API stream for the events the webhooks missed
    /// (a schedule with `run = "reconcile"`).
    #[serde(default)]
    pub reconcile: Option<extract_config::ReconcileSection>,
    /// HubSpot: a private-app token, usually `"${HUBSPOT_TOKEN}"`.
    #[serde(default)]
    pub token: Option<Spanned<String>>,
    /// HubSpot: the account's budget per rolling 10 s (default 100).
    #[serde(default)]
    pub requests_per_10s: Option<usize>,
    /// HubSpot: the search endpoint's budget per second (default 4).
    #[serde(default)]
    pub search_per_second: Option<usize>,
    /// HubSpot: incremental runs read changes made up to this many seconds
    /// before the run's start (default 120), because HubSpot's search index
    /// lags writes; later changes are the next run's. Smaller is fresher,
    /// but a change the index has not caught up with would be skipped.
    #[serde(default)]
    pub search_lag_margin_seconds: Option<u64>,
    /// Salesforce: the REST API version (`v60.0`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Salesforce: the JWT bearer login.
    #[serde(default)]
    pub jwt: Option<sync_config::JwtSection>,
    /// Salesforce: the refresh-token login.
    #[serde(default)]
    pub oauth: Option<sync_config::OAuthSection>,
    /// Salesforce: a stream whose query matches this many records or more
    /// is read by a Bulk API 2.0 query job (default 10,000).
    #[serde(default)]
    pub bulk_threshold: Option<u64>,
    /// Files: the folder (relative to the project) or object-store URL
    /// (`s3://bucket/drops/`) where files are dropped.
    #[serde(default)]
    pub path: Option<String>,
    /// Schema policy for every stream of this source that does not set its own.
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// Per-stream settings, keyed by stream name.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
}

/// One `[sources.<source>.streams.<name>]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Schema policy for this stream; overrides the source's.
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// REST: path under the source's url (`/sequences/{id}/steps` for a child stream).
    #[serde(default)]
    pub path: Option<String>,
    /// REST: extra query parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// REST: dotted path of the records array in the reply (absent: the reply is the array).
    #[serde(default)]
    pub records: Option<String>,
    /// REST: dotted path of the field identifying a record.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// REST: how the endpoint pages.
    #[serde(default)]
    pub pagination: Option<extract_config::Pagination>,
    /// REST: the incremental cursor field and the parameter that sends it.
    #[serde(default)]
    pub incremental: Option<extract_config::Incremental>,
    /// REST: a parent stream whose records each give one request.
    #[serde(default)]
    pub parent: Option<extract_config::Parent>,
    /// HubSpot: the CRM object type (default: the stream's name).
    #[serde(default)]
    pub object: Option<String>,
    /// HubSpot: properties to extract (default: all, from the properties API).
    #[serde(default)]
    pub properties: Option<Vec<String>>,
    /// Salesforce: fields to extract (default: all, from `describe`).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// HubSpot: associated object types, landed as `<stream>_<type>` (from_id, to_id).
    #[serde(default)]
    pub associations: Vec<String>,
    /// Files: which file names belong to this stream (`*` wildcard).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Files: `csv`, `jsonl` or `parquet` (default: by extension).
    #[serde(default)]
    pub format: Option<extract_config::FileFormat>,
    /// Files: the CSV header this stream expects; a file whose header lacks
    /// one of these is refused before anything lands.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Files: the CSV delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
}

/// Resolved settings for landing one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub schema: SchemaMode,
}

/// Where the lake is, with its resolved options.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// As written (or from `FERRY_LAKE`): a path or a URL.
    pub url: String,
    /// Object store options; values are secrets.
    pub options: BTreeMap<String, Secret>,
}

/// A loaded, validated project.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project folder; relative lake paths resolve against it.
    pub dir: PathBuf,
    pub name: String,
    pub lake: LakeConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    /// Model configuration by folder: `(folders under a model path, settings)`,
    /// applied in order to models in that folder or below. `[models]` in
    /// `ferry.toml` is the root entry; a dbt project's `models:` tree gives more.
    pub model_configs: Vec<(Vec<String>, BTreeMap<String, serde_yaml_ng::Value>)>,
    /// Where models, seeds, macros and singular tests live.
    pub paths: Paths,
    /// `[vars]`: values for `var()` in models.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// `[destinations.<name>]`, resolved.
    pub destinations: BTreeMap<String, sync_config::Destination>,
    /// `[syncs.<name>]`, resolved.
    pub syncs: BTreeMap<String, sync_config::Sync>,
    /// Sources `ferry extract` pulls, resolved (those with a `type`).
    pub extract: BTreeMap<String, extract_config::SourceSpec>,
    /// Webhook sources `ferry serve` receives.
    pub webhooks: BTreeMap<String, extract_config::WebhookSpec>,
    /// `[schedules.<name>]`, resolved.
    pub schedules: BTreeMap<String, crate::operate::schedule::Schedule>,
    /// `[alerts]`, resolved.
    pub alerts: crate::operate::alerts::AlertsConfig,
    /// The `[targets.<name>]` in force (`--target`), if any.
    pub target: Option<String>,
    /// The target refuses to write from uncommitted changes.
    pub require_clean_git: bool,
}

impl Project {
    /// What a run writes to, for the first line of `ferry build` and
    /// `ferry sync`: the target and each destination's host.
    pub fn target_line(&self) -> String {
        let hosts: Vec<String> = self
            .destinations
            .values()
            .map(|d| format!("{} {}", d.name, crate::http::redact_url(&d.url)))
            .collect();
        format!(
            "target: {}; lake: {}{}",
            self.target
                .as_deref()
                .unwrap_or("(none: ferry.toml as written)"),
            if self.lake.url.contains("://") {
                crate::http::redact_url(&self.lake.url)
            } else {
                self.lake.url.clone()
            },
            if hosts.is_empty() {
                String::new()
            } else {
                format!("; destinations: {}", hosts.join(", "))
            }
        )
    }

    /// Refuse to write from uncommitted changes when the target says so.
    pub fn check_clean(&self) -> Result<()> {
        if !self.require_clean_git {
            return Ok(());
        }
        let t = self.target.as_deref().unwrap_or_default();
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map_err(|e| {
                Error::Input(format!(
                    "target {t} requires a clean git tree, and git cannot run here ({e})"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Input(format!(
                "target {t} requires a clean git tree, and {} is not in a git repository: commit the project, or drop require_clean_git",
                self.dir.display()
            )));
        }
        let dirty = String::from_utf8_lossy(&out.stdout);
        if !dirty.trim().is_empty() {
            let files: Vec<&str> = dirty
                .lines()
                .take(5)
                .map(|l| l.get(3..).unwrap_or(l))
                .collect();
            return Err(Error::Input(format!(
                "target {t} requires a clean git tree: commit or stash the changes first ({})",
                files.join(", ")
            )));
        }
        Ok(())
    }
}

impl Project {
    /// Load `DIR/ferry.toml` (and `DIR/secrets.toml` if present). A folder
    /// with `dbt_project.yml` and no `ferry.toml` is read as a dbt project.
    pub fn load(dir: &Path) -> Result<Project> {
        let file = dir.join(CONFIG_FILE);
        if !file.exists() && dir.join(dbt::DBT_PROJECT_FILE).exists() {
            let lake_override = std::env::var(LAKE_ENV).ok().filter(|v| !v.is_empty());
            return dbt::load(dir, lake_override);
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Project(format!(
                    "no {CONFIG_FILE} in {}: run `ferry init {}` to create a project there, \
                     or pass --project-dir to point at one",
                    display_dir(dir),
                    display_dir(dir)
                )));
            }
            Err(e) => return Err(Error::io(file, e)),
        };
        let secrets = load_secrets(&dir.join(SECRETS_FILE))?;
        let lake_override = std::env::var(LAKE_ENV).ok().filter(|v| !v.is_empty());
        Project::parse(dir, &file, &text, &secrets, lake_override)
    }

    /// Load `DIR/ferry.toml` with its tables changed by `edit` first (the
    /// demo runs the starter project on Salesforce this way). Errors point
    /// into the edited text, not the file.
    pub fn load_edited(
        dir: &Path,
        edit: impl FnOnce(&mut toml::Table) -> std::result::Result<(), String>,
    ) -> Result<Project> {
        let file = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::Project(format!("{}: {e}", file.display())))?;
        edit(&mut table).map_err(Error::Project)?;
        let text = toml::to_string(&table).map_err(|e| Error::Internal(e.to_string()))?;
        let secrets = load_secrets(&dir.join(SECRETS_FILE))?;
        let lake_override = std::env::var(LAKE_ENV).ok().filter(|v| !v.is_empty());
        Project::parse(dir, &file, &text, &secrets, lake_override)
    }

    /// Parse and validate a `ferry.toml` text. `file` is only used in messages.
    pub fn parse(
        dir: &Path,
        file: &Path,
        text: &str,
        secrets: &SecretSource,
        lake_override: Option<String>,
    ) -> Result<Project> {
        Project::parse_for(dir, file, text, secrets, lake_override, chosen_target())
    }

    /// [`Project::parse`] for the target `target` (its `[targets.<name>]`
    /// settings over the base ones).
    pub fn parse_for(
        dir: &Path,
        file: &Path,
        text: &str,
        secrets: &SecretSource,
        lake_override: Option<String>,
        target: Option<String>,
    ) -> Result<Project> {
        let mut raw: ConfigFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            config_error(file, text, offset, e.message().to_string())
        })?;

        // The chosen target's settings over the base ones.
        let mut require_clean_git = false;
        if let Some(t) = &target {
            match raw.targets.get(t).cloned() {
                Some(over) => {
                    for (name, o) in &over.sources {
                        let Some(base) = raw.sources.get_mut(name) else {
                            return Err(config_error(
                                file,
                                text,
                                find_key(text, &format!("targets.{t}.sources.{name}")),
                                format!(
                                    "target {t} sets source {name}, which [sources] does not define"
                                ),
                            ));
                        };
                        base.overlay(o);
                    }
                    for (name, o) in &over.destinations {
                        let Some(base) = raw.destinations.get_mut(name) else {
                            return Err(config_error(
                                file,
                                text,
                                find_key(text, &format!("targets.{t}.destinations.{name}")),
                                format!(
                                    "target {t} sets destination {name}, which [destinations] does not define"
                                ),
                            ));
                        };
                        o.apply(base);
                    }
                    require_clean_git = over.require_clean_git;
                    if let Some(l) = over.lake.clone() {
                        raw.lake.url = l;
                    } else if !over.sources.is_empty() || !over.destinations.is_empty() {
                        raw.lake.url =
                            format!("{}/targets/{t}", raw.lake.url.trim_end_matches('/'));
                    }
                }
                None if !raw.targets.is_empty() => {
                    let known: Vec<&String> = raw.targets.keys().collect();
                    return Err(config_error(
                        file,
                        text,
                        find_key(text, "targets"),
                        format!(
                            "--target {t}: ferry.toml has no [targets.{t}] (it has {known:?}); add one or choose another"
                        ),
                    ));
                }
                // No [targets] at all: the name is for profiles.yml alone.
                None => {}
            }
        }

        let mut options = BTreeMap::new();
        for (key, value) in &raw.lake.options {
            let secret = secrets
                .interpolate(value.get_ref())
                .map_err(|msg| config_error(file, text, value.span().start, msg))?;
            options.insert(key.clone(), secret);
        }

        let name = raw.project.name.trim().to_string();
        if name.is_empty() {
            let offset = text.find("name").unwrap_or(0);
            return Err(config_error(
                file,
                text,
                offset,
                "project name is empty: write name = \"my_project\"".into(),
            ));
        }

        for (source, cfg) in &raw.sources {
            if let Err(why) = check_identifier(source) {
                let offset = find_key(text, &format!("sources.{source}"));
                return Err(config_error(
                    file,
                    text,
                    offset,
                    format!("source name {source:?} {why}"),
                ));
            }
            if source == RESERVED_SCHEMA {
                let offset = find_key(text, &format!("sources.{source}"));
                return Err(config_error(
                    file,
                    text,
                    offset,
                    format!(
                        "source name {source:?} is reserved for ferry's own tables (ferry.ingestions...): pick another"
                    ),
                ));
            }
            for stream in cfg.streams.keys() {
                if let Err(why) = check_identifier(stream) {
                    let offset = find_key(text, &format!("streams.{stream}"));
                    return Err(config_error(
                        file,
                        text,
                        offset,
                        format!("stream name {stream:?} {why}"),
                    ));
                }
            }
        }

        let convert = |what: &str, e: String| {
            config_error(
                file,
                text,
                find_key(text, what),
                format!("cannot use this value: {e}"),
            )
        };
        let mut model_defaults = BTreeMap::new();
        for (k, v) in &raw.models {
            let y = serde_yaml_ng::to_value(v).map_err(|e| convert(k, e.to_string()))?;
            model_defaults.insert(k.clone(), y);
        }
        let mut vars = BTreeMap::new();
        for (k, v) in &raw.vars {
            let j = serde_json::to_value(v).map_err(|e| convert(k, e.to_string()))?;
            vars.insert(k.clone(), j);
        }

        let mut destinations = BTreeMap::new();
        for (dname, d) in &raw.destinations {
            let at = |what: &str| find_key(text, &format!("destinations.{dname}{what}"));
            if let Err(why) = check_identifier(dname) {
                return Err(config_error(
                    file,
                    text,
                    at(""),
                    format!("destination name {dname:?} {why}"),
                ));
            }
            let secret = |v: &Spanned<String>| {
                secrets
                    .interpolate(v.get_ref())
                    .map_err(|msg| config_error(file, text, v.span().start, msg))
            };
            if let Some(why) = d.foreign_setting() {
                return Err(config_error(file, text, at(""), why));
            }
            let auth = match d.kind {
                sync_config::DestinationKind::Hubspot => crate::sync::hubspot::auth(d, &secret),
                sync_config::DestinationKind::Salesforce => {
                    crate::sync::salesforce::auth(d, &secret)
                }
            };
            // An unset secret fails the calls that need it (with this
            // message), not commands that never call the CRM.
            let auth = match auth {
                Ok(a) => a,
                Err(crate::sync::destination::AuthProblem::Config(why)) => {
                    return Err(config_error(file, text, at(""), why));
                }
                Err(crate::sync::destination::AuthProblem::Secret(e)) => {
                    crate::http::Auth::Missing(e.to_string())
                }
            };
            let resolved = sync_config::Destination::resolve(dname, d, auth)
                .map_err(|msg| config_error(file, text, at(""), msg))?;
            destinations.insert(dname.clone(), resolved);
        }
        let mut syncs = BTreeMap::new();
        for (sname, s) in &raw.syncs {
            let at = |what: &str| find_key(text, &format!("syncs.{sname}{what}"));
            if let Err(why) = check_identifier(sname) {
                return Err(config_error(
                    file,
                    text,
                    at(""),
                    format!("sync name {sname:?} {why}"),
                ));
            }
            if !destinations.contains_key(&s.destination) {
                let known: Vec<&String> = destinations.keys().collect();
                return Err(config_error(
                    file,
                    text,
                    at(""),
                    format!(
                        "destination {:?} is not defined: add a [destinations.{}] table (defined: {known:?})",
                        s.destination, s.destination
                    ),
                ));
            }
            let kind = destinations[&s.destination].kind;
            let resolved = sync_config::Sync::resolve(sname, s, kind)
                .map_err(|msg| config_error(file, text, at(""), msg))?;
            syncs.insert(sname.clone(), resolved);
        }

        let mut extract = BTreeMap::new();
        let mut webhooks = BTreeMap::new();
        for (sname, src) in &raw.sources {
            let at = |what: &str| find_key(text, &format!("sources.{sname}{what}"));
            let Some(kind) = src.kind else {
                if src.url.is_some() || src.auth.is_some() {
                    return Err(config_error(
                        file,
                        text,
                        at(""),
                        "url and auth need a source type: add type = \"rest\"".into(),
                    ));
                }
                continue;
            };
            // A setting of another source type is refused, not ignored.
            if let Some(why) = src.foreign_setting(kind) {
                return Err(config_error(file, text, at(""), why));
            }
            match kind {
                extract_config::SourceKind::Webhook => {
                    let (Some(preset), Some(secret)) = (src.preset, &src.secret) else {
                        return Err(config_error(file, text, at(""),
                            "a webhook source needs preset = \"hubspot\" | \"stripe\" | \"typeform\" and secret = \"${WEBHOOK_SECRET}\"".into()));
                    };
                    let secret = secrets
                        .interpolate(secret.get_ref())
                        .map_err(|msg| config_error(file, text, secret.span().start, msg))?;
                    // HubSpot signs the https URL configured in the app, which
                    // ferry cannot know from the request behind a proxy.
                    if preset == extract_config::WebhookPreset::Hubspot {
                        match src.public_url.as_deref().map(url::Url::parse) {
                            Some(Ok(u)) if u.scheme() == "https" || u.scheme() == "http" => {}
                            Some(_) => return Err(config_error(file, text, at(".public_url"),
                                "public_url must be the full URL HubSpot calls, e.g. \"https://ferry.example.com/webhooks/hubspot_events\"".into())),
                            None => return Err(config_error(file, text, at(""),
                                format!("a hubspot webhook source needs public_url: HubSpot signs the URL set in the app's webhook settings (e.g. \"https://ferry.example.com/webhooks/{sname}\"), and without it no delivery can be verified"))),
                        }
                    }
                    webhooks.insert(
                        sname.clone(),
                        extract_config::WebhookSpec {
                            name: sname.clone(),
                            preset,
                            secret,
                            max_body_bytes: src.max_body_bytes.unwrap_or(1024 * 1024),
                            tolerance_seconds: src.tolerance_seconds.unwrap_or(300),
                            public_url: src.public_url.clone(),
                            reconcile: match &src.reconcile {
                                None => None,
                                Some(r) => {
                                    Some(extract_config::Reconcile::resolve(r).map_err(|msg| {
                                        config_error(file, text, at(".reconcile"), msg)
                                    })?)
                                }
                            },
                        },
                    );
                }
                extract_config::SourceKind::Salesforce => {
                    let secret = |v: &Spanned<String>| {
                        secrets
                            .interpolate(v.get_ref())
                            .map_err(|msg| config_error(file, text, v.span().start, msg))
                    };
                    // The destination's login code.
                    let auth = match crate::sync::salesforce::login_auth(
                        src.url.as_deref(),
                        src.jwt.as_ref(),
                        src.oauth.as_ref(),
                        &secret,
                    ) {
                        Ok(a) => a,
                        Err(crate::sync::destination::AuthProblem::Config(why)) => {
                            return Err(config_error(file, text, at(""), why));
                        }
                        Err(crate::sync::destination::AuthProblem::Secret(e)) => {
                            crate::http::Auth::Missing(e.to_string())
                        }
                    };
                    let streams: Vec<extract_config::SalesforceStream> = src
                        .streams
                        .iter()
                        .map(|(tname, t)| extract_config::SalesforceStream {
                            name: tname.clone(),
                            object: t.object.clone().unwrap_or_else(|| tname.clone()),
                            fields: t.fields.clone(),
                        })
                        .collect();
                    if streams.is_empty() {
                        return Err(config_error(file, text, at(""),
                            "a salesforce source needs streams, for example [sources.salesforce.streams.lead] (object = \"Lead\")".into()));
                    }
                    extract.insert(
                        sname.clone(),
                        extract_config::SourceSpec::Salesforce {
                            name: sname.clone(),
                            url: src
                                .url
                                .clone()
                                .unwrap_or_else(|| "https://login.salesforce.com".into())
                                .trim_end_matches('/')
                                .to_string(),
                            api_version: src.api_version.clone().unwrap_or_else(|| "v60.0".into()),
                            auth,
                            lag_margin: std::time::Duration::from_secs(
                                src.search_lag_margin_seconds.unwrap_or(60),
                            ),
                            bulk_threshold: src
                                .bulk_threshold
                                .unwrap_or(extract_config::DEFAULT_QUERY_BULK_THRESHOLD),
                            streams,
                        },
                    );
                }
                extract_config::SourceKind::Hubspot => {
                    let Some(token) = &src.token else {
                        return Err(config_error(file, text, at(""),
                            "a hubspot source needs token = \"${HUBSPOT_TOKEN}\" (a private-app token)".into()));
                    };
                    let auth = match secrets.interpolate(token.get_ref()) {
                        Ok(t) => crate::http::Auth::Bearer(t),
                        // Only `ferry extract` needs it: other commands work without.
                        Err(msg) => crate::http::Auth::Missing(
                            config_error(file, text, token.span().start, msg).to_string(),
                        ),
                    };
                    let streams: Vec<extract_config::HubspotStream> = src
                        .streams
                        .iter()
                        .map(|(tname, t)| extract_config::HubspotStream {
                            name: tname.clone(),
                            object: t.object.clone().unwrap_or_else(|| tname.clone()),
                            properties: t.properties.clone(),
                            associations: t.associations.clone(),
                        })
                        .collect();
                    if streams.is_empty() {
                        return Err(config_error(file, text, at(""),
                            "a hubspot source needs streams, for example [sources.hubspot.streams.contacts]".into()));
                    }
                    extract.insert(
                        sname.clone(),
                        extract_config::SourceSpec::Hubspot {
                            name: sname.clone(),
                            url: src
                                .url
                                .clone()
                                .unwrap_or_else(|| "https://api.hubapi.com".into())
                                .trim_end_matches('/')
                                .to_string(),
                            auth,
                            requests_per_10s: src.requests_per_10s.unwrap_or(100),
                            search_per_second: src.search_per_second.unwrap_or(4),
                            lag_margin: std::time::Duration::from_secs(
                                src.search_lag_margin_seconds.unwrap_or(120),
                            ),
                            streams,
                        },
                    );
                }
                extract_config::SourceKind::Files => {
                    let Some(location) = src.path.clone() else {
                        return Err(config_error(file, text, at(""),
                            "a files source needs path = \"drops/events\" (a folder or s3://, gs://, az:// URL)".into()));
                    };
                    let mut streams = Vec::new();
                    for (tname, t) in &src.streams {
                        let delimiter = match t.delimiter.as_deref() {
                            None => b',',
                            Some(d) if d.len() == 1 => d.as_bytes()[0],
                            Some("\\t") | Some("\t") => b'\t',
                            Some(d) => {
                                return Err(config_error(
                                    file,
                                    text,
                                    at(&format!(".streams.{tname}")),
                                    format!("delimiter {d:?} must be one character"),
                                ));
                            }
                        };
                        streams.push(extract_config::FileStream {
                            name: tname.clone(),
                            pattern: t.pattern.clone().unwrap_or_else(|| format!("{tname}*")),
                            format: t.format,
                            columns: t.columns.clone(),
                            delimiter,
                        });
                    }
                    if streams.is_empty() {
                        return Err(config_error(file, text, at(""),
                            "a files source needs at least one [sources.<name>.streams.<stream>] with a pattern".into()));
                    }
                    extract.insert(
                        sname.clone(),
                        extract_config::SourceSpec::Files {
                            name: sname.clone(),
                            location,
                            streams,
                        },
                    );
                }
                extract_config::SourceKind::Rest => {
                    let Some(url) = src.url.clone() else {
                        return Err(config_error(
                            file,
                            text,
                            at(""),
                            "a rest source needs url = \"https://api.vendor.com/v1\"".into(),
                        ));
                    };
                    use extract_config::AuthSection as A;
                    let auth_offset = at(".auth");
                    let secret = |v: &String| {
                        secrets
                            .interpolate(v)
                            .map_err(|msg| config_error(file, text, auth_offset, msg))
                    };
                    if let Some(A::ApiKey { header, query, .. }) = &src.auth
                        && header.is_some() == query.is_some()
                    {
                        return Err(config_error(file, text, at(".auth"),
                            "api_key auth needs exactly one of header = \"X-Api-Key\" or query = \"api_key\"".into()));
                    }
                    let resolve = || -> Result<crate::http::Auth> {
                        Ok(match &src.auth {
                            None => crate::http::Auth::None,
                            Some(A::Bearer { token }) => crate::http::Auth::Bearer(secret(token)?),
                            Some(A::ApiKey {
                                key,
                                header: Some(h),
                                ..
                            }) => crate::http::Auth::ApiKeyHeader {
                                header: h.clone(),
                                key: secret(key)?,
                            },
                            Some(A::ApiKey { key, query, .. }) => crate::http::Auth::ApiKeyQuery {
                                param: query.clone().unwrap_or_default(),
                                key: secret(key)?,
                            },
                            Some(A::Basic { username, password }) => crate::http::Auth::Basic {
                                // An access-key id is often kept with its secret.
                                username: secret(username)?,
                                password: secret(password)?,
                            },
                            Some(A::Oauth2 {
                                token_url,
                                client_id,
                                client_secret,
                                scopes,
                            }) => crate::http::Auth::ClientCredentials(
                                crate::http::ClientCredentials {
                                    token_url: token_url.clone(),
                                    client_id: client_id.clone(),
                                    client_secret: secret(client_secret)?,
                                    scopes: scopes.clone(),
                                },
                            ),
                        })
                    };
                    // An unset secret fails the calls that need it (with this
                    // message), not commands that never call the vendor.
                    let auth =
                        resolve().unwrap_or_else(|e| crate::http::Auth::Missing(e.to_string()));
                    let mut streams = Vec::new();
                    for (tname, t) in &src.streams {
                        let Some(path) = t.path.clone() else {
                            return Err(config_error(
                                file,
                                text,
                                at(&format!(".streams.{tname}")),
                                format!("stream {tname} needs path = \"/{tname}\""),
                            ));
                        };
                        streams.push(extract_config::RestStream {
                            name: tname.clone(),
                            path,
                            params: t.params.clone(),
                            records: t.records.clone().unwrap_or_default(),
                            primary_key: t.primary_key.clone(),
                            pagination: t
                                .pagination
                                .clone()
                                .unwrap_or(extract_config::Pagination::None),
                            incremental: t.incremental.clone(),
                            parent: t.parent.clone(),
                        });
                    }
                    let streams = extract_config::order_streams(streams)
                        .map_err(|msg| config_error(file, text, at(""), msg))?;
                    extract.insert(
                        sname.clone(),
                        extract_config::SourceSpec::Rest {
                            name: sname.clone(),
                            url: url.trim_end_matches('/').to_string(),
                            auth,
                            requests_per_second: src.requests_per_second,
                            streams,
                        },
                    );
                }
            }
        }

        for w in webhooks.values() {
            if let Some(r) = &w.reconcile
                && !extract.contains_key(&r.source)
            {
                return Err(config_error(
                    file,
                    text,
                    find_key(text, &format!("sources.{}.reconcile", w.name)),
                    format!(
                        "reconcile.with = \"{}.{}\": {} is not an extraction source (give [sources.{}] a type such as hubspot)",
                        r.source, r.stream, r.source, r.source
                    ),
                ));
            }
        }
        let mut schedules = BTreeMap::new();
        {
            let extract_names: std::collections::BTreeSet<String> =
                extract.keys().cloned().collect();
            let reconcilable: std::collections::BTreeSet<String> = webhooks
                .values()
                .filter(|w| w.reconcile.is_some())
                .map(|w| w.name.clone())
                .collect();
            let sync_names: std::collections::BTreeSet<String> = syncs.keys().cloned().collect();
            let schedule_names: std::collections::BTreeSet<String> =
                raw.schedules.keys().cloned().collect();
            for (name, sch) in &raw.schedules {
                let at = |what: &str| find_key(text, &format!("schedules.{name}{what}"));
                if let Err(why) = check_identifier(name) {
                    return Err(config_error(
                        file,
                        text,
                        at(""),
                        format!("schedule name {name:?} {why}"),
                    ));
                }
                let resolved = crate::operate::schedule::Schedule::resolve(
                    name,
                    sch,
                    &extract_names,
                    &sync_names,
                    &schedule_names,
                    &reconcilable,
                )
                .map_err(|msg| config_error(file, text, at(""), msg))?;
                schedules.insert(name.clone(), resolved);
            }
            crate::operate::schedule::check_chains(&schedules)
                .map_err(|msg| config_error(file, text, find_key(text, "schedules"), msg))?;
        }
        let alerts = match &raw.alerts {
            None => crate::operate::alerts::AlertsConfig::default(),
            Some(a) => crate::operate::alerts::AlertsConfig::resolve(a, secrets, &schedules)
                .map_err(|(key, msg)| {
                    config_error(file, text, find_key(text, &format!("alerts{key}")), msg)
                })?,
        };

        Ok(Project {
            extract,
            webhooks,
            schedules,
            alerts,
            destinations,
            syncs,
            model_configs: vec![(Vec::new(), model_defaults)],
            paths: Paths {
                seeds: raw
                    .project
                    .seed_paths
                    .clone()
                    .unwrap_or_else(|| Paths::default().seeds),
                ..Paths::default()
            },
            vars,
            dir: dir.to_path_buf(),
            name,
            lake: LakeConfig {
                url: lake_override.unwrap_or(raw.lake.url),
                options,
            },
            sources: raw.sources,
            target: target.filter(|t| raw.targets.contains_key(t)),
            require_clean_git,
        })
    }

    /// Landing settings for `source.stream`: the stream's own, else the
    /// source's, else the defaults. Streams not in `ferry.toml` get defaults.
    pub fn stream_options(&self, source: &str, stream: &str) -> StreamOptions {
        let src = self.sources.get(source);
        let schema = src
            .and_then(|s| s.streams.get(stream))
            .and_then(|s| s.schema)
            .or_else(|| src.and_then(|s| s.schema))
            .unwrap_or_default();
        StreamOptions { schema }
    }
}

/// Folders (relative to the project) holding each kind of file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub models: Vec<String>,
    pub seeds: Vec<String>,
    pub macros: Vec<String>,
    pub tests: Vec<String>,
    pub snapshots: Vec<String>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            models: vec!["models".into()],
            seeds: vec!["seeds".into()],
            macros: vec!["sql/macros".into(), "macros".into()],
            tests: vec!["sql/tests".into()],
            snapshots: vec!["snapshots".into()],
        }
    }
}

/// The SQL schema name of ferry's own tables; no source may take it.
pub const RESERVED_SCHEMA: &str = "ferry";

/// Source and stream names become SQL identifiers and lake folders, so they
/// are lower-case ASCII identifiers.
pub fn check_identifier(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return Err("must start with a lower-case letter or _");
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("may only use lower-case letters, digits and _");
    }
    if name.len() > 63 {
        return Err("is longer than 63 characters");
    }
    Ok(())
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_string()
    } else {
        dir.display().to_string()
    }
}

fn load_secrets(path: &Path) -> Result<SecretSource> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SecretSource::default());
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let values: BTreeMap<String, String> = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        // Never echo the secrets file's text: only the position and the reason.
        let (line, column) = line_col(&text, offset);
        Error::Config {
            file: path.to_path_buf(),
            line,
            column,
            key: key_at(&text, offset),
            message: format!(
                "{}; secrets.toml holds plain `NAME = \"value\"` lines",
                e.message()
            ),
        }
    })?;
    Ok(SecretSource::new(values))
}

fn config_error(file: &Path, text: &str, offset: usize, message: String) -> Error {
    let (line, column) = line_col(text, offset);
    Error::Config {
        file: file.to_path_buf(),
        line,
        column,
        key: key_at(text, offset),
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The dotted key at a byte offset: the enclosing `[table]` header plus the
/// `key =` on that line.
fn key_at(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line_start = text[..offset].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|p| offset + p)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    if let Some(header) = table_header(line) {
        return header;
    }
    let header = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| table_header(l.trim()))
        .unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    match (header.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".to_string(),
        (true, false) => key,
        (false, true) => header,
        (false, false) => format!("{header}.{key}"),
    }
}

fn table_header(line: &str) -> Option<String> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.split_once("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')))?;
    Some(inner.0.trim().to_string())
}

/// Byte offset of the first mention of a dotted key (best effort, for
/// validation errors raised after parsing).
fn find_key(text: &str, dotted: &str) -> usize {
    text.find(dotted)
        .or_else(|| dotted.rsplit('.').next().and_then(|last| text.find(last)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Project> {
        Project::parse(
            Path::new("proj"),
            Path::new("proj/ferry.toml"),
            text,
            &SecretSource::default(),
            None,
        )
    }

    fn config_err(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(Error::Config {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_project_gets_defaults() {
        let p = parse("[project]\nname = \"acme\"\n").unwrap();
        assert_eq!(p.name, "acme");
        assert_eq!(p.lake.url, "lake");
        assert_eq!(
            p.stream_options("crm", "contacts").schema,
            SchemaMode::Evolve
        );
    }

    #[test]
    fn stream_setting_overrides_source_setting() {
        let p = parse(
            "[project]\nname = \"acme\"\n[sources.crm]\nschema = \"freeze\"\n\
             [sources.crm.streams.contacts]\nschema = \"evolve\"\n",
        )
        .unwrap();
        assert_eq!(
            p.stream_options("crm", "contacts").schema,
            SchemaMode::Evolve
        );
        assert_eq!(p.stream_options("crm", "deals").schema, SchemaMode::Freeze);
        assert_eq!(p.stream_options("web", "visits").schema, SchemaMode::Evolve);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let (line, key, msg) =
            config_err("[project]\nname = \"acme\"\n\n[lake]\nurll = \"s3://b\"\n");
        assert_eq!(line, 5);
        assert_eq!(key, "lake.urll");
        assert!(msg.contains("unknown field `urll`"), "{msg}");
        assert!(msg.contains("url"), "should list what is expected: {msg}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let (line, key, msg) = config_err(
            "[project]\nname = \"acme\"\n[sources.crm.streams.contacts]\nschema = \"melt\"\n",
        );
        assert_eq!(line, 4);
        assert_eq!(key, "sources.crm.streams.contacts.schema");
        assert!(msg.contains("evolve") && msg.contains("freeze"), "{msg}");
    }

    #[test]
    fn missing_project_table_is_reported() {
        let (_, _, msg) = config_err("[lake]\nurl = \"lake\"\n");
        assert!(msg.contains("project"), "{msg}");
    }

    #[test]
    fn bad_source_name_is_reported_at_its_line() {
        let (line, key, msg) =
            config_err("[project]\nname = \"acme\"\n\n[sources.Hub-Spot]\nschema = \"evolve\"\n");
        assert_eq!(line, 4);
        assert_eq!(key, "sources.Hub-Spot");
        assert!(msg.contains("lower-case"), "{msg}");
        let (_, _, msg) = config_err("[project]\nname = \"acme\"\n[sources.ferry]\n");
        assert!(msg.contains("reserved"), "{msg}");
    }

    #[test]
    fn unresolved_secret_names_variable_line_and_key() {
        let (line, key, msg) = config_err(
            "[project]\nname = \"acme\"\n[lake]\nurl = \"s3://b/p\"\n\
             [lake.options]\naws_secret_access_key = \"${FERRY_TEST_UNSET_SECRET_42}\"\n",
        );
        assert_eq!(line, 6);
        assert_eq!(key, "lake.options.aws_secret_access_key");
        assert!(msg.contains("FERRY_TEST_UNSET_SECRET_42"), "{msg}");
    }

    #[test]
    fn resolved_secrets_do_not_show_in_debug() {
        let secrets = SecretSource::new(BTreeMap::from([(
            "LAKE_KEY".to_string(),
            "s3cr3t-value-9".to_string(),
        )]));
        let p = Project::parse(
            Path::new("."),
            Path::new("ferry.toml"),
            "[project]\nname = \"a\"\n[lake.options]\nkey = \"${LAKE_KEY}\"\n",
            &secrets,
            None,
        )
        .unwrap();
        assert_eq!(p.lake.options["key"].expose(), "s3cr3t-value-9");
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_target_lays_its_urls_and_credentials_over_the_base() {
        let text = r#"[project]
name = "t"

[sources.crm]
type = "hubspot"
url = "https://api.hubapi.com"
token = "prod-token"
[sources.crm.streams.contacts]

[destinations.sf]
type = "salesforce"
url = "https://login.salesforce.com"
[destinations.sf.oauth]
client_id = "prod-app"
client_secret = "s"
refresh_token = "r"

[syncs.s]
model = "m"
destination = "sf"
object = "Contact"
match = { column = "email", property = "Email" }
fields = { score = "Score__c" }

[targets.sandbox.sources.crm]
url = "http://127.0.0.1:8090"
token = "sandbox-token"

[targets.sandbox.destinations.sf]
url = "https://test.salesforce.com"
[targets.sandbox.destinations.sf.jwt]
client_id = "sandbox-app"
username = "ferry@acme.com.sandbox"
private_key = "pem"
"#;
        let parse = |t: Option<&str>| {
            Project::parse_for(
                Path::new("p"),
                Path::new("p/ferry.toml"),
                text,
                &SecretSource::default(),
                None,
                t.map(str::to_string),
            )
        };
        let base = parse(None).unwrap();
        assert_eq!(base.destinations["sf"].url, "https://login.salesforce.com");
        assert!(matches!(
            base.destinations["sf"].auth,
            crate::http::Auth::OAuth(_)
        ));
        assert_eq!(base.target, None);
        let sandbox = parse(Some("sandbox")).unwrap();
        assert_eq!(sandbox.target.as_deref(), Some("sandbox"));
        assert_eq!(
            sandbox.destinations["sf"].url,
            "https://test.salesforce.com"
        );
        // The target's JWT replaces the base's OAuth as a whole.
        match &sandbox.destinations["sf"].auth {
            crate::http::Auth::JwtBearer(j) => assert_eq!(j.username, "ferry@acme.com.sandbox"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sandbox.sources["crm"].url.as_deref(),
            Some("http://127.0.0.1:8090")
        );
        assert!(
            sandbox
                .target_line()
                .contains("sf https://test.salesforce.com")
        );
        // Its state is its own: another lake.
        assert_eq!(base.lake.url, "lake");
        assert_eq!(sandbox.lake.url, "lake/targets/sandbox");
        let e = parse(Some("prod")).unwrap_err().to_string();
        assert!(
            e.contains("--target prod: ferry.toml has no [targets.prod]") && e.contains("sandbox"),
            "{e}"
        );
    }

    #[test]
    fn a_setting_of_another_source_type_is_refused_not_ignored() {
        let e = parse(
            "[project]\nname = \"t\"\n[sources.api]\ntype = \"rest\"\nurl = \"https://x\"\ntoken = \"t\"\n[sources.api.streams.s]\npath = \"/s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`token` is not a rest setting") && e.contains("auth = { type = \"bearer\""),
            "{e}"
        );
        let e = parse(
            "[project]\nname = \"t\"\n[sources.crm]\ntype = \"hubspot\"\ntoken = \"t\"\napi_version = \"v60.0\"\n[sources.crm.streams.contacts]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`api_version` is not a hubspot setting (it belongs to type = salesforce)"),
            "{e}"
        );
    }

    #[test]
    fn identifiers() {
        assert!(check_identifier("hubspot").is_ok());
        assert!(check_identifier("_x1").is_ok());
        for bad in ["", "1x", "Hub", "a-b", "a.b", "a b"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
