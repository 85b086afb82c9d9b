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
    /// Vendor sources, keyed by source name (the `<source>` in
    /// `<source>.<stream>`): each parsed by its type's own section
    /// ([`extract_config::SourceTable`]) once targets are laid over it.
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
    /// Defaults for every model (`materialized = "table"`, `tags = [...]`).
    #[serde(default)]
    models: BTreeMap<String, toml::Value>,
    /// The query engine's memory limit and spill folder.
    #[serde(default)]
    engine: EngineSection,
    /// Values for `{{ var('name') }}` in models.
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
    /// Reverse-sync destinations (accounts and credentials), by name.
    #[serde(default)]
    destinations: BTreeMap<String, toml::Table>,
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
    /// Settings over `[sources.<name>]`, key by key (streams by name;
    /// credentials as a whole).
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
    /// Settings over `[destinations.<name>]`, key by key; credentials given
    /// here replace the base ones as a whole.
    #[serde(default)]
    destinations: BTreeMap<String, toml::Table>,
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

/// A setting serde refused, read off `serde_path_to_error`, for the
/// connectors' config errors.
pub struct Refused {
    /// The refused value's key (`.streams.contacts.schema`), or for an
    /// unknown key the table holding it (`""` the top, `.streams.contacts`).
    pub at: String,
    /// The unknown key, when that is the complaint.
    pub unknown: Option<String>,
    /// serde's message, without toml's "in `path`" line.
    pub message: String,
}

impl From<serde_path_to_error::Error<toml::de::Error>> for Refused {
    fn from(e: serde_path_to_error::Error<toml::de::Error>) -> Refused {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let message = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let unknown = message
            .split_once("unknown field `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| f.to_string());
        // The path may or may not name the unknown key itself.
        let table = match &unknown {
            Some(f) if path == *f => ".",
            Some(f) => path
                .strip_suffix(f.as_str())
                .map(|t| t.trim_end_matches('.'))
                .filter(|t| !t.is_empty())
                .unwrap_or(&path),
            None => &path,
        };
        Refused {
            at: if table == "." {
                String::new()
            } else {
                format!(".{table}")
            },
            unknown,
            message,
        }
    }
}

impl Refused {
    /// serde's list of the settings the table takes: `": expected one of ..."`.
    pub fn expected(&self) -> String {
        self.message
            .split_once("expected ")
            .map(|(_, e)| format!(": expected {}", e.trim()))
            .unwrap_or_default()
    }
}

/// Lay a target's `[targets.<t>.sources.<name>]` over the source's table:
/// key by key, streams by name, and credentials (`token`, `auth`, `jwt`,
/// `oauth`) as a whole, so a sandbox's login never mixes with prod's.
fn overlay(base: &mut toml::Table, over: &toml::Table) {
    const CREDENTIALS: &[&str] = &["token", "auth", "jwt", "oauth"];
    if CREDENTIALS.iter().any(|k| over.contains_key(*k)) {
        for k in CREDENTIALS {
            base.remove(*k);
        }
    }
    for (k, v) in over {
        match (k.as_str(), base.get_mut(k), v) {
            ("streams", Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                for (name, stream) in o {
                    match (b.get_mut(name), stream) {
                        (Some(toml::Value::Table(bs)), toml::Value::Table(os)) => {
                            for (k, v) in os {
                                bs.insert(k.clone(), v.clone());
                            }
                        }
                        _ => {
                            b.insert(name.clone(), stream.clone());
                        }
                    }
                }
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
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

/// `[engine]`: how much memory queries may hold, where they spill.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    /// `"8GiB"`, `"512MiB"` or a share of the machine's memory (`"50%"`).
    memory_limit: Option<String>,
    /// The folder spill files go to (relative to the project); default the
    /// OS temporary folder.
    spill_dir: Option<String>,
    /// `false`: a query past the limit fails instead of spilling.
    spill: Option<bool>,
    /// The most the spill files may hold at once (default 100GiB).
    max_spill: Option<String>,
    /// A Ballista cluster model builds run on: `df://host:port`.
    url: Option<String>,
    /// Partitions each stage of a cluster query is split into (default:
    /// this machine's cores).
    cluster_partitions: Option<usize>,
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
    /// `[sources.<name>]` as parsed, by type.
    pub sources: BTreeMap<String, extract_config::SourceTable>,
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
    /// `[engine]`, resolved: the memory limit and spill settings, applied
    /// to the process by [`crate::engine::memory::configure`].
    pub engine: crate::engine::memory::EngineSettings,
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
        let text = std::fs::read_to_string(&file).map_err(|e| Error::user_file(&file, e))?;
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

        // Every target's settings must hold over the base ones, chosen or
        // not: a typo in [targets.prod] fails `ferry compile`, not the
        // first `--target prod` run.
        for (t, over) in &raw.targets {
            let at = |what: &str, name: &str, key: &str| {
                find_key(text, &format!("targets.{t}.{what}.{name}{key}"))
            };
            for (name, o) in &over.sources {
                if let Some(base) = raw.sources.get(name) {
                    let mut table = base.clone();
                    overlay(&mut table, o);
                    if let Err(p) = extract_config::SourceTable::parse(table) {
                        return Err(config_error(
                            file,
                            text,
                            at("sources", name, &p.key),
                            format!("target {t}: {}", p.message),
                        ));
                    }
                }
            }
            for (name, o) in &over.destinations {
                if let Some(base) = raw.destinations.get(name) {
                    let mut table = base.clone();
                    overlay(&mut table, o);
                    if let Err((key, message)) = sync_config::DestinationSection::parse(table) {
                        return Err(config_error(
                            file,
                            text,
                            at("destinations", name, &key),
                            format!("target {t}: {message}"),
                        ));
                    }
                }
            }
        }

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
                        overlay(base, o);
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
                        overlay(base, o);
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

        let mut tables = BTreeMap::new();
        for (source, table) in &raw.sources {
            let parsed = extract_config::SourceTable::parse(table.clone()).map_err(|p| {
                config_error(
                    file,
                    text,
                    find_key(text, &format!("sources.{source}{}", p.key)),
                    p.message,
                )
            })?;
            tables.insert(source.clone(), parsed);
        }
        for (source, cfg) in &tables {
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
            for (stream, _) in cfg.streams() {
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
            let key = format!("models.{k}");
            let y = serde_yaml_ng::to_value(v).map_err(|e| convert(&key, e.to_string()))?;
            // Checked here, where the line is known: a typo in `[models]`
            // names its line. A Jinja value is checked once rendered.
            let templated = y.as_str().is_some_and(|s| s.contains("{{"));
            if !templated {
                crate::models::project::ModelConfig::defaults()
                    .apply(k, &y, "[models]")
                    .map_err(|e| {
                        let message = e.to_string();
                        let message = message.strip_prefix("[models]: ").unwrap_or(&message);
                        config_error(file, text, find_key(text, &key), message.to_string())
                    })?;
            }
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
            let secret = |key: &str, v: &str| {
                secrets.interpolate(v).map_err(|msg| {
                    config_error(
                        file,
                        text,
                        find_key(text, &format!("destinations.{dname}.{key}")),
                        msg,
                    )
                })
            };
            let d = sync_config::DestinationSection::parse(d.clone()).map_err(|(key, msg)| {
                config_error(
                    file,
                    text,
                    find_key(text, &format!("destinations.{dname}{key}")),
                    msg,
                )
            })?;
            let url = d.calls.url.as_deref();
            let auth = match &d.vendor {
                sync_config::VendorSection::Hubspot(h) => {
                    crate::sync::hubspot::auth(h, url, &secret)
                }
                sync_config::VendorSection::Salesforce(sf) => {
                    crate::sync::salesforce::auth(sf, url, &secret)
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
            let resolved = sync_config::Destination::resolve(dname, &d, auth)
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
        for (sname, src) in &tables {
            use extract_config::{SourceSection as S, SourceTable as T};
            let locate = |key: &str, message: String| {
                config_error(
                    file,
                    text,
                    find_key(text, &format!("sources.{sname}{key}")),
                    message,
                )
                .to_string()
            };
            let located = |p: extract_config::Problem| {
                config_error(
                    file,
                    text,
                    find_key(text, &format!("sources.{sname}{}", p.key)),
                    p.message,
                )
            };
            let spec = match src {
                T::Land(_) => continue,
                T::Typed(S::Webhook(w)) => {
                    webhooks.insert(sname.clone(), w.resolve(sname, secrets).map_err(located)?);
                    continue;
                }
                T::Typed(S::Rest(r)) => r.resolve(sname, secrets, &locate),
                T::Typed(S::Files(f)) => f.resolve(sname),
                T::Typed(S::Hubspot(h)) => h.resolve(sname, secrets, &locate),
                T::Typed(S::Salesforce(sf)) => sf.resolve(sname, secrets, &locate),
            };
            extract.insert(sname.clone(), spec.map_err(located)?);
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

        let mut engine = crate::engine::memory::EngineSettings::resolve(
            raw.engine.memory_limit.as_deref(),
            raw.engine.spill_dir.as_ref().map(|d| dir.join(d)),
            raw.engine.spill,
            raw.engine.max_spill.as_deref(),
            raw.engine.url.as_deref(),
        )
        .map_err(|(key, msg)| {
            config_error(file, text, find_key(text, &format!("engine.{key}")), msg)
        })?;
        if raw.engine.cluster_partitions == Some(0) {
            return Err(config_error(
                file,
                text,
                find_key(text, "engine.cluster_partitions"),
                "0 partitions: write the number of task slots across the cluster's executors (1 or more)".into(),
            ));
        }
        engine.cluster_partitions = raw.engine.cluster_partitions;

        Ok(Project {
            engine,
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
            sources: tables,
            target: target.filter(|t| raw.targets.contains_key(t)),
            require_clean_git,
        })
    }

    /// Landing settings for `source.stream`: the stream's own, else the
    /// source's, else the defaults. Streams not in `ferry.toml` get defaults.
    pub fn stream_options(&self, source: &str, stream: &str) -> StreamOptions {
        let src = self.sources.get(source);
        let schema = src
            .and_then(|s| {
                s.streams()
                    .into_iter()
                    .find(|(name, _)| *name == stream)
                    .and_then(|(_, schema)| schema)
            })
            .or_else(|| src.and_then(|s| s.schema()))
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
    if let Some(i) = text.find(dotted) {
        return i;
    }
    // The deepest table header that names a prefix of the key, then the
    // key's next segment (else its last) after that header.
    let parts: Vec<&str> = dotted.split('.').collect();
    for n in (1..parts.len()).rev() {
        let header = format!("[{}]", parts[..n].join("."));
        if let Some(h) = text.find(&header) {
            let after = &text[h..];
            let found = [parts[n..].join("."), parts[n].to_string()]
                .iter()
                .chain(parts.last().map(|l| l.to_string()).iter())
                .find_map(|k| after.find(k.as_str()));
            return h + found.unwrap_or(0);
        }
    }
    dotted
        .rsplit('.')
        .next()
        .and_then(|last| text.find(last))
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

    /// A mistake in a target that is not chosen fails at load, not on the
    /// first `--target prod` run; a relationship field is refused with the
    /// way to read it.
    #[test]
    fn every_target_is_checked_and_relationship_fields_are_refused() {
        let text = r#"[project]
name = "t"

[sources.sf]
type = "salesforce"
oauth = { client_id = "a", client_secret = "s", refresh_token = "r" }
[sources.sf.streams.leads]
object = "Lead"

[targets.prod.sources.sf]
api_verison = "v61.0"
"#;
        let (line, key, msg) = config_err(text);
        assert_eq!(line, 11, "{key}: {msg}");
        assert!(
            msg.contains("target prod") && msg.contains("api_verison"),
            "{msg}"
        );
        let text = text.replace(
            "[targets.prod.sources.sf]\napi_verison = \"v61.0\"\n",
            "fields = [\"Email\", \"Account.Name\"]\n",
        );
        let (_, key, msg) = config_err(&text);
        assert_eq!(key, "sources.sf.streams.leads.fields");
        assert!(msg.contains("relationship field"), "{msg}");
    }

    /// Regression: a target's `jwt` for a Salesforce source was not laid
    /// over the base (only some keys were), so `--target sandbox` read
    /// production with production's login.
    #[test]
    fn a_target_replaces_a_salesforce_sources_login_as_a_whole() {
        let text = r#"[project]
name = "t"

[sources.sf]
type = "salesforce"
url = "https://login.salesforce.com"
oauth = { client_id = "prod-app", client_secret = "s", refresh_token = "r" }
[sources.sf.streams.leads]
object = "Lead"

[targets.sandbox.sources.sf]
url = "https://test.salesforce.com"
api_version = "v61.0"
jwt = { client_id = "sandbox-app", username = "ferry@acme.com.sandbox", private_key = "pem" }
"#;
        let p = Project::parse_for(
            Path::new("p"),
            Path::new("p/ferry.toml"),
            text,
            &SecretSource::default(),
            None,
            Some("sandbox".into()),
        )
        .unwrap();
        match &p.extract["sf"] {
            extract_config::SourceSpec::Salesforce {
                url,
                api_version,
                auth,
                ..
            } => {
                assert_eq!(url, "https://test.salesforce.com");
                assert_eq!(api_version, "v61.0");
                match auth {
                    crate::http::Auth::JwtBearer(j) => {
                        assert_eq!(j.username, "ferry@acme.com.sandbox")
                    }
                    other => panic!("the sandbox login is the JWT one: {other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
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
        match &sandbox.extract["crm"] {
            extract_config::SourceSpec::Hubspot { url, auth, .. } => {
                assert_eq!(url, "http://127.0.0.1:8090");
                assert!(
                    matches!(auth, crate::http::Auth::Bearer(t) if t.expose() == "sandbox-token")
                );
            }
            other => panic!("{other:?}"),
        }
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
