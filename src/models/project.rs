//! Discovering an analyst's project: models, schema files, seeds, macros and
//! singular tests, with each model's configuration resolved.
//!
//! Where things are (paths relative to the project folder):
//! - models: `models/**/*.sql`, schema files `models/**/*.yml|yaml`;
//! - seeds: `seeds/**/*.csv`;
//! - macros: `sql/macros/**/*.sql` (and `macros/**/*.sql`, as in dbt);
//! - singular data tests: `sql/tests/**/*.sql`.
//!
//! A dbt project names its own folders (`model-paths`, ...: see
//! [`crate::project::dbt`]). Configuration precedence, lowest first:
//! defaults, `[models]` in `ferry.toml` (or the folder tree of a dbt
//! project's `models:`), the model's `config:` in a schema file,
//! `{{ config(...) }}` in the model itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

use crate::error::{Error, Result};
use crate::project::Paths;

/// How a model is materialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Materialized {
    /// Not persisted: inlined into the plans of the models that use it.
    #[default]
    View,
    /// Rebuilt in full on every run, as a Delta table.
    Table,
    /// Appended to or merged into its Delta table on each run.
    Incremental,
    /// Inlined as a CTE into each model that refs it.
    Ephemeral,
}

impl Materialized {
    pub fn parse(s: &str) -> Option<Materialized> {
        match s {
            "view" => Some(Materialized::View),
            "table" => Some(Materialized::Table),
            "incremental" => Some(Materialized::Incremental),
            "ephemeral" => Some(Materialized::Ephemeral),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Materialized::View => "view",
            Materialized::Table => "table",
            Materialized::Incremental => "incremental",
            Materialized::Ephemeral => "ephemeral",
        }
    }

    /// Whether the model has a table in the lake.
    pub fn persisted(self) -> bool {
        matches!(self, Materialized::Table | Materialized::Incremental)
    }
}

/// How an incremental model adds rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Append,
    Merge,
}

/// A model's resolved configuration.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    pub materialized: Materialized,
    /// Columns identifying a row, for `merge`.
    pub unique_key: Vec<String>,
    /// `append` or `merge`; default `merge` when a unique key is set.
    pub incremental_strategy: Option<Strategy>,
    pub tags: Vec<String>,
    pub enabled: bool,
    /// `contract: {enforced: true}`: the output must have exactly the
    /// declared columns and types.
    pub contract_enforced: bool,
    /// `+schema`: the custom schema handed to `generate_schema_name`.
    pub schema: Option<String>,
    /// `+alias`: the custom name handed to `generate_alias_name`.
    pub alias: Option<String>,
    /// `docs: {show: false}`: left out of `ferry docs`.
    pub docs_hidden: bool,
}

impl ModelConfig {
    pub(crate) fn defaults() -> ModelConfig {
        ModelConfig {
            enabled: true,
            ..Default::default()
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.incremental_strategy
            .unwrap_or(if self.unique_key.is_empty() {
                Strategy::Append
            } else {
                Strategy::Merge
            })
    }

    /// Apply `key = value` settings (from YAML or `config(...)`); `origin`
    /// names where they came from, for errors.
    pub fn apply(&mut self, key: &str, value: &Yaml, origin: &str) -> Result<()> {
        let bad = |what: &str| Error::Input(format!("{origin}: config `{key}` {what}"));
        let key = key.trim_start_matches('+');
        match key {
            "materialized" => {
                let s = value.as_str().ok_or_else(|| bad("must be a string"))?;
                self.materialized = Materialized::parse(s).ok_or_else(|| {
                    bad(&format!(
                        "is {s:?}; expected view, table, incremental or ephemeral"
                    ))
                })?;
            }
            "unique_key" => {
                self.unique_key =
                    strings(value).ok_or_else(|| bad("must be a column name or a list of them"))?
            }
            "tags" => {
                let mut tags = strings(value).ok_or_else(|| bad("must be a string or a list"))?;
                self.tags.append(&mut tags);
                self.tags.sort();
                self.tags.dedup();
            }
            "incremental_strategy" => {
                self.incremental_strategy = Some(match value.as_str() {
                    Some("append") => Strategy::Append,
                    Some("merge") => Strategy::Merge,
                    _ => return Err(bad("must be append or merge")),
                })
            }
            "enabled" => {
                self.enabled = value
                    .as_bool()
                    .ok_or_else(|| bad("must be true or false"))?
            }
            "contract" => {
                self.contract_enforced = value
                    .get("enforced")
                    .and_then(|e| e.as_bool())
                    .ok_or_else(|| bad("must be {enforced: true} or {enforced: false}"))?
            }
            "schema" | "alias" => {
                let text = match value {
                    Yaml::Null => None,
                    Yaml::String(s) if s.trim().is_empty() => None,
                    Yaml::String(s) => Some(s.trim().to_string()),
                    _ => return Err(bad("must be a name")),
                };
                if key == "schema" {
                    self.schema = text;
                } else {
                    self.alias = text;
                }
            }
            "docs" => {
                if let Some(show) = value.get("show") {
                    self.docs_hidden = !show
                        .as_bool()
                        .ok_or_else(|| bad("show must be true or false"))?;
                }
            }
            // dbt settings that do not change what ferry does.
            "database" | "meta" | "persist_docs" | "grants" | "on_schema_change"
            | "full_refresh" | "description" | "post-hook" | "pre-hook" | "group" | "access"
            | "file_format" | "quoting" => {}
            other => {
                let known = [
                    "materialized",
                    "unique_key",
                    "incremental_strategy",
                    "tags",
                    "enabled",
                    "contract",
                    "schema",
                    "alias",
                ]
                .map(String::from);
                return Err(Error::Input(format!(
                    "{origin}: unknown config `{other}`{}; ferry knows materialized, unique_key, \
                     incremental_strategy, tags, enabled, contract, schema and alias",
                    suggest(other, known.iter()).trim_end_matches('?')
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn strings(v: &Yaml) -> Option<Vec<String>> {
    match v {
        Yaml::String(s) => Some(vec![s.clone()]),
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// A generic data test on a column (or a model, for singular ones).
#[derive(Debug, Clone, PartialEq)]
pub struct TestSpec {
    /// `unique`, `not_null`, `accepted_values`, `relationships`.
    pub kind: String,
    pub model: String,
    pub column: Option<String>,
    /// Test arguments (`values`, `to`, `field`).
    pub args: BTreeMap<String, Yaml>,
    pub severity: Severity,
    /// Where it was declared.
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

/// A column declared in a schema file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub description: Option<String>,
    pub data_type: Option<String>,
}

/// One model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// Path relative to the project folder, `/`-separated.
    pub path: String,
    pub sql: String,
    pub config: ModelConfig,
    pub description: Option<String>,
    pub columns: Vec<ColumnSpec>,
    /// The package in `dbt_packages/` it comes from (`None`: the project's own).
    pub package: Option<String>,
}

/// One seed CSV.
#[derive(Debug, Clone)]
pub struct Seed {
    pub name: String,
    pub path: PathBuf,
    /// Column type overrides (`column_types:` in YAML), as SQL types.
    pub column_types: BTreeMap<String, String>,
    /// `+schema` and `+alias` (see [`super::relation`]).
    pub schema: Option<String>,
    pub alias: Option<String>,
    /// The package in `dbt_packages/` it comes from (`None`: the project's own).
    pub package: Option<String>,
}

/// One singular test: a query that returns failing rows.
#[derive(Debug, Clone)]
pub struct SingularTest {
    pub name: String,
    pub path: String,
    pub sql: String,
}

/// Macros every project has (from the repository's `sql/macros/`).
pub const BUILTIN_MACROS: [(&str, &str); 1] = [(
    "latest_by.sql",
    include_str!("../../sql/macros/latest_by.sql"),
)];

/// Everything the model commands work on.
#[derive(Debug, Clone, Default)]
pub struct ModelProject {
    pub dir: PathBuf,
    pub models: Vec<Model>,
    pub seeds: Vec<Seed>,
    pub tests: Vec<TestSpec>,
    pub singular_tests: Vec<SingularTest>,
    /// Macro files' text, concatenated, with the files they came from.
    pub macros: Vec<(String, String)>,
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Declared sources (`sources:` in schema files), by (source, table).
    pub sources: BTreeMap<(String, String), SourceTable>,
    /// What `source()` resolves against (from `sources` and the seeds).
    pub source_map: super::render::SourceMap,
    /// Macro namespaces: `dbt`, each package in `dbt_packages/`, then the
    /// project (last).
    pub namespaces: Vec<(String, String)>,
    /// `dispatch:` in `dbt_project.yml`: a namespace's search order.
    pub dispatch: BTreeMap<String, Vec<String>>,
    /// Runs `run_query` and relation lookups once a session is attached.
    pub executor: super::render::Executor,
    /// dbt's `graph` context variable: `nodes` and `sources`.
    pub graph: serde_json::Value,
    /// Seeds and models turned off by `+enabled` (for errors naming them).
    pub disabled: std::collections::BTreeSet<String>,
    /// Node sets of selector methods computed outside the DAG
    /// (`state:modified`, `state:new`), by method.
    pub selector_sets: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// dbt's `target`: the chosen output of the project's profile.
    pub target: serde_json::Value,
    /// Snapshots (YAML with `relation:`, or `{% snapshot %}` blocks).
    pub snapshots: Vec<super::snapshot::Snapshot>,
    /// dbt unit tests (`unit_tests:` in schema files).
    pub unit_tests: Vec<super::unit::UnitTest>,
    /// Each package's vars: its own `dbt_project.yml` defaults, under the
    /// project's (global, and those under the package's name) and `--vars`.
    pub package_vars: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Each seed's, persisted or view model's and snapshot's relation
    /// `(schema, alias)`, by node name (see [`super::relation`]).
    pub relations: BTreeMap<String, (String, String)>,
}

impl ModelProject {
    /// What rendering one of this project's models needs.
    pub fn render_context(
        &self,
        is_incremental: bool,
        resolve: super::render::Resolver,
    ) -> super::render::RenderContext<'_> {
        super::render::RenderContext {
            macros: &self.macros,
            vars: &self.vars,
            is_incremental,
            resolve,
            sources: &self.source_map,
            namespaces: &self.namespaces,
            dispatch: &self.dispatch,
            package_vars: &self.package_vars,
            unit: None,
            query: self.executor.get(),
            graph: &self.graph,
            target: &self.target,
        }
    }
}

/// A schema file, as much of dbt's format as ferry uses (other keys allowed).
#[derive(Debug, Deserialize)]
struct SchemaFile {
    #[serde(default)]
    models: Vec<YamlNode>,
    #[serde(default)]
    seeds: Vec<YamlNode>,
    #[serde(default)]
    sources: Vec<YamlSource>,
    #[serde(default)]
    unit_tests: Vec<Yaml>,
    #[serde(default)]
    snapshots: Vec<Yaml>,
}

/// `sources:` in a schema file.
#[derive(Debug, Deserialize)]
struct YamlSource {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    loaded_at_field: Option<String>,
    #[serde(default)]
    freshness: Option<Yaml>,
    #[serde(default)]
    tables: Vec<YamlSourceTable>,
}

#[derive(Debug, Deserialize)]
struct YamlSourceTable {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Column descriptions, for the docs site.
    #[serde(default)]
    columns: Vec<YamlSourceColumn>,
    #[serde(default)]
    identifier: Option<String>,
    #[serde(default)]
    loaded_at_field: Option<String>,
    /// `null` turns the source's freshness off for this table.
    #[serde(default, deserialize_with = "present")]
    freshness: Option<Yaml>,
}

#[derive(Debug, Deserialize)]
struct YamlSourceColumn {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// A key that is present, even as `null` (which serde reads as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Yaml>, D::Error> {
    Ok(Some(Yaml::deserialize(d)?))
}

/// The generic tests ferry implements itself.
pub const BUILTIN_TESTS: [&str; 4] = ["unique", "not_null", "accepted_values", "relationships"];

/// Where the macro of test `kind` is: `(namespace, macro)` for
/// `package.name` (in that package) or `name` (in the project, last).
pub fn test_macro(namespaces: &[(String, String)], kind: &str) -> Option<(String, String)> {
    let (ns, name) = match kind.split_once('.') {
        Some((ns, name)) => (namespaces.iter().find(|(n, _)| n == ns)?, name),
        None => (namespaces.last()?, kind),
    };
    let mac = format!("test_{name}");
    defines_macro(&ns.1, &mac).then(|| (ns.0.clone(), mac))
}

/// dbt's `{% test name(args) %}...{% endtest %}` blocks are macros named
/// `test_<name>` (as dbt itself compiles them): rewritten so minijinja,
/// which has no `test` tag, reads them.
pub fn tests_as_macros(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{%") {
        let after = &rest[i + 2..];
        let dash = after.starts_with('-');
        let body = if dash { &after[1..] } else { after };
        let trimmed = body.trim_start();
        // `{% raw %}...{% endraw %}` is text, left as it is.
        if trimmed.starts_with("raw") && trimmed[3..].trim_start().starts_with(['%', '-']) {
            let end = rest
                .find("endraw")
                .and_then(|e| rest[e..].find("%}").map(|c| e + c + 2))
                .unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push_str(&rest[..i + 2]);
        let ws = &body[..body.len() - trimmed.len()];
        if dash {
            out.push('-');
        }
        out.push_str(ws);
        if let Some(tail) = trimmed.strip_prefix("test ") {
            out.push_str("macro test_");
            rest = tail.trim_start();
        } else if let Some(tail) = trimmed.strip_prefix("endtest") {
            out.push_str("endmacro");
            rest = tail;
        } else {
            rest = trimmed;
        }
    }
    out.push_str(rest);
    out
}

/// Whether macro text defines `macro <name>(`.
pub fn defines_macro(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].trim_end();
        before.ends_with("macro") && text[i + name.len()..].trim_start().starts_with('(')
    })
}

/// `dispatch:` in the project's `dbt_project.yml`.
fn dispatch_config(dir: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    #[derive(Deserialize)]
    struct Entry {
        macro_namespace: String,
        search_order: Vec<String>,
    }
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        dispatch: Vec<Entry>,
    }
    let path = dir.join("dbt_project.yml");
    let Ok(text) = read(&path) else {
        return Ok(BTreeMap::new());
    };
    let file: File = serde_yaml_ng::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "dbt_project.yml: dispatch: {e} (write a list of {{macro_namespace, search_order}})"
        ))
    })?;
    Ok(file
        .dispatch
        .into_iter()
        .map(|e| (e.macro_namespace, e.search_order))
        .collect())
}

/// A package installed in `dbt_packages/` (by `ferry deps` or `dbt deps`).
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub dir: PathBuf,
    pub model_paths: Vec<String>,
    pub seed_paths: Vec<String>,
    pub macro_paths: Vec<String>,
    /// Its own `vars:` (defaults for its models and macros).
    pub vars: BTreeMap<String, Yaml>,
    /// Its own `models:` tree.
    pub models: Option<Yaml>,
}

/// The root project's `dbt_project.yml` keys that configure packages.
#[derive(Debug, Default, Deserialize)]
struct RootFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    models: Option<Yaml>,
    #[serde(default)]
    seeds: Option<Yaml>,
}

/// A config value with Jinja (`+enabled: "{{ var('load_source_data', false) }}"`)
/// rendered as dbt renders `dbt_project.yml`: `var` and `env_var`, the
/// result read back as YAML (so `true` is a boolean).
fn render_config(
    v: &Yaml,
    vars: &BTreeMap<String, serde_json::Value>,
    origin: &str,
) -> Result<Yaml> {
    match v {
        Yaml::String(t) if t.contains("{{") || t.contains("{%") => {
            let mut env = minijinja::Environment::new();
            env.add_global("var", super::render::var_function(Arc::new(vars.clone())));
            env.add_global(
                "env_var",
                super::render::env_var_function(Default::default()),
            );
            let out = env
                .render_str(t, ())
                .map_err(|e| Error::Input(format!("{origin}: {t:?}: {e}")))?;
            Ok(serde_yaml_ng::from_str::<Yaml>(&out).unwrap_or(Yaml::String(out)))
        }
        Yaml::Mapping(m) => {
            let mut out = serde_yaml_ng::Mapping::new();
            for (k, v) in m {
                out.insert(k.clone(), render_config(v, vars, origin)?);
            }
            Ok(Yaml::Mapping(out))
        }
        other => Ok(other.clone()),
    }
}

/// The packages in `dir/dbt_packages/`, by folder name order.
pub fn packages(dir: &Path) -> Result<Vec<Package>> {
    #[derive(Deserialize)]
    struct PackageFile {
        name: String,
        #[serde(default, rename = "macro-paths")]
        macro_paths: Option<Vec<String>>,
        #[serde(default, rename = "model-paths", alias = "source-paths")]
        model_paths: Option<Vec<String>>,
        #[serde(default, rename = "seed-paths", alias = "data-paths")]
        seed_paths: Option<Vec<String>>,
        #[serde(default)]
        vars: BTreeMap<String, Yaml>,
        #[serde(default)]
        models: Option<Yaml>,
    }
    let root = dir.join("dbt_packages");
    let mut found: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.join("dbt_project.yml").is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&root, e)),
    };
    found.sort();
    let mut out = Vec::new();
    for pkg in found {
        let file = pkg.join("dbt_project.yml");
        let parsed: PackageFile = serde_yaml_ng::from_str(&read(&file)?)
            .map_err(|e| Error::Input(format!("{}: {e}", rel(dir, &file))))?;
        let or = |v: Option<Vec<String>>, d: &str| v.unwrap_or_else(|| vec![d.to_string()]);
        out.push(Package {
            name: parsed.name,
            dir: pkg,
            model_paths: or(parsed.model_paths, "models"),
            seed_paths: or(parsed.seed_paths, "seeds"),
            macro_paths: or(parsed.macro_paths, "macros"),
            vars: parsed.vars,
            models: parsed.models,
        });
    }
    Ok(out)
}

/// The macro namespaces of a project: `dbt`, then each package under its
/// `dbt_project.yml` name, then the project's own macros under its name.
fn namespaces(
    own: &str,
    packages: &[Package],
    macros: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut out = vec![("dbt".to_string(), super::render::DBT_MACROS.to_string())];
    for pkg in packages {
        let mut text = String::new();
        for sub in &pkg.macro_paths {
            for path in files(&pkg.dir.join(sub), &["sql"])? {
                text.push_str(&tests_as_macros(&read(&path)?));
                text.push('\n');
            }
        }
        out.push((pkg.name.clone(), text));
    }
    let text: String = macros.iter().map(|(_, t)| format!("{t}\n")).collect();
    out.push((own.to_string(), text));
    Ok(out)
}

/// A freshness threshold: `{count: 12, period: hour}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub count: u64,
    /// `minute`, `hour` or `day`.
    pub period: String,
}

impl Threshold {
    pub fn seconds(&self) -> i64 {
        let per = match self.period.as_str() {
            "minute" => 60,
            "hour" => 3_600,
            _ => 86_400,
        };
        (self.count as i64).saturating_mul(per)
    }
}

/// A table of a declared source, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTable {
    pub source: String,
    pub name: String,
    /// `schema` (default: the source's name).
    pub schema: String,
    /// `identifier` (default: the table's name).
    pub identifier: String,
    pub database: Option<String>,
    pub loaded_at_field: Option<String>,
    pub warn_after: Option<Threshold>,
    pub error_after: Option<Threshold>,
    /// A SQL condition the freshness query adds.
    pub filter: Option<String>,
    /// The schema file that declares it.
    pub origin: String,
    pub description: Option<String>,
    /// Columns the schema file describes.
    pub columns: Vec<ColumnSpec>,
}

fn threshold(v: Option<&Yaml>, what: &str, origin: &str) -> Result<Option<Threshold>> {
    let Some(v) = v else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    let count = v.get("count").and_then(Yaml::as_u64);
    let period = v.get("period").and_then(Yaml::as_str);
    match (count, period) {
        (Some(count), Some(p)) if ["minute", "hour", "day"].contains(&p) => Ok(Some(Threshold {
            count,
            period: p.to_string(),
        })),
        (None, None) => Ok(None),
        _ => Err(Error::Input(format!(
            "{origin}: freshness {what} needs count (a whole number) and period (minute, hour or day), e.g. {{count: 12, period: hour}}"
        ))),
    }
}

/// Merge a table's `freshness` over its source's (`null` turns it off).
fn freshness(
    source: Option<&Yaml>,
    table: Option<&Yaml>,
    origin: &str,
) -> Result<(Option<Threshold>, Option<Threshold>, Option<String>)> {
    // As dbt: the table's keys over the source's (`null` turns it off).
    let merged = match (source, table) {
        (Some(Yaml::Mapping(s)), Some(Yaml::Mapping(t))) => {
            let mut m = s.clone();
            for (k, v) in t {
                m.insert(k.clone(), v.clone());
            }
            Some(Yaml::Mapping(m))
        }
        (_, Some(t)) => Some(t.clone()),
        (s, None) => s.cloned(),
    };
    let Some(f) = merged.as_ref().filter(|f| !f.is_null()) else {
        return Ok((None, None, None));
    };
    Ok((
        threshold(f.get("warn_after"), "warn_after", origin)?,
        threshold(f.get("error_after"), "error_after", origin)?,
        f.get("filter").and_then(Yaml::as_str).map(str::to_string),
    ))
}

#[derive(Debug, Deserialize)]
struct YamlNode {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, Yaml>,
    #[serde(default)]
    columns: Vec<YamlColumn>,
    #[serde(default, alias = "tests")]
    data_tests: Vec<Yaml>,
}

#[derive(Debug, Deserialize)]
struct YamlColumn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    data_type: Option<String>,
    #[serde(default, alias = "tests")]
    data_tests: Vec<Yaml>,
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Files under `root` with one of `exts`, sorted, skipping hidden folders.
fn files(root: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&d, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::user_file(path, e))
}

impl ModelProject {
    /// Discover the project in `dir`. `configs` are folder-level settings
    /// (`[models]` in `ferry.toml`, or a dbt project's `models:` tree).
    pub fn load(
        dir: &Path,
        paths: &Paths,
        configs: &[(Vec<String>, BTreeMap<String, Yaml>)],
        vars: BTreeMap<String, serde_json::Value>,
    ) -> Result<ModelProject> {
        let mut project = ModelProject {
            dir: dir.to_path_buf(),
            vars,
            ..Default::default()
        };
        let in_all = |folders: &[String], exts: &[&str]| -> Result<Vec<(PathBuf, PathBuf)>> {
            let mut out = Vec::new();
            for f in folders {
                let root = dir.join(f);
                for p in files(&root, exts)? {
                    out.push((root.clone(), p));
                }
            }
            Ok(out)
        };

        let root_file: RootFile = read(&dir.join("dbt_project.yml"))
            .ok()
            .and_then(|t| serde_yaml_ng::from_str(&t).ok())
            .unwrap_or_default();
        let own = root_file.name.clone().unwrap_or_else(|| "project".into());
        let packages = packages(dir)?;
        let mut by_name: BTreeMap<String, Model> = BTreeMap::new();
        let root_roots: Vec<PathBuf> = paths.models.iter().map(|f| dir.join(f)).collect();
        load_models(dir, &root_roots, configs, None, &project.vars, &mut by_name)?;
        let mut yml_roots: Vec<PathBuf> = paths
            .models
            .iter()
            .chain(&paths.seeds)
            .map(|f| dir.join(f))
            .collect();
        let mut seed_roots: Vec<(PathBuf, Option<String>)> =
            paths.seeds.iter().map(|f| (dir.join(f), None)).collect();
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        for pkg in &packages {
            // The package's own folder settings, then the project's for it.
            let mut pkg_configs =
                crate::project::dbt::folder_configs(pkg.models.as_ref(), &pkg.name);
            pkg_configs.extend(crate::project::dbt::folder_configs(
                root_file.models.as_ref(),
                &pkg.name,
            ));
            let roots: Vec<PathBuf> = pkg.model_paths.iter().map(|f| pkg.dir.join(f)).collect();
            yml_roots.extend(roots.iter().cloned());
            yml_roots.extend(pkg.seed_paths.iter().map(|f| pkg.dir.join(f)));
            seed_roots.extend(
                pkg.seed_paths
                    .iter()
                    .map(|f| (pkg.dir.join(f), Some(pkg.name.clone()))),
            );
            // Package defaults < the project's vars (global, and under the
            // package's name) < --vars.
            let mut vars = crate::project::dbt::scoped_vars(&pkg.vars, &pkg.name, &names);
            for (k, v) in &project.vars {
                if !names.contains(k) {
                    vars.insert(k.clone(), v.clone());
                }
            }
            if let Some(serde_json::Value::Object(m)) = project.vars.get(&pkg.name) {
                for (k, v) in m {
                    vars.insert(k.clone(), v.clone());
                }
            }
            load_models(
                dir,
                &roots,
                &pkg_configs,
                Some(&pkg.name),
                &vars,
                &mut by_name,
            )?;
            project.package_vars.insert(pkg.name.clone(), vars);
        }

        let mut seed_types: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // Seeds' `schema` and `alias` from schema files, by seed name.
        let mut seed_names: BTreeMap<String, BTreeMap<&str, String>> = BTreeMap::new();
        // Legacy `{% snapshot %}` blocks first; YAML may then describe them.
        for (_, path) in in_all(&paths.snapshots, &["sql"])? {
            let relpath = rel(dir, &path);
            for (name, body) in super::snapshot::blocks(&read(&path)?, &relpath)? {
                project.snapshots.push(super::snapshot::Snapshot {
                    name,
                    path: relpath.clone(),
                    sql: body,
                    config: BTreeMap::new(),
                });
            }
        }
        yml_roots.extend(paths.snapshots.iter().map(|f| dir.join(f)));
        let mut yml_files = Vec::new();
        for root in &yml_roots {
            yml_files.extend(files(root, &["yml", "yaml"])?);
        }
        yml_files.dedup();
        for path in yml_files {
            let relpath = rel(dir, &path);
            let text = read(&path)?;
            let file: SchemaFile = serde_yaml_ng::from_str(&text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                Error::Input(format!("{relpath}{at}: {e}"))
            })?;
            for node in file.models {
                let model_line = name_line(&text, 0, &node.name);
                let origin = match model_line {
                    Some(l) => format!("{relpath}:{l} (model {})", node.name),
                    None => format!("{relpath} (model {})", node.name),
                };
                if !by_name.contains_key(&node.name) {
                    return Err(Error::Input(format!(
                        "{origin}: no model file {}.sql{}",
                        node.name,
                        suggest(&node.name, by_name.keys())
                    )));
                }
                let Some(model) = by_name.get_mut(&node.name) else {
                    continue;
                };
                for (k, v) in &node.config {
                    model.config.apply(k, v, &origin)?;
                }
                model.description = node.description;
                for t in &node.data_tests {
                    project
                        .tests
                        .push(parse_test(t, &node.name, None, &origin)?);
                }
                for c in node.columns {
                    let column_origin = match name_line(&text, model_line.unwrap_or(0), &c.name) {
                        Some(l) => {
                            format!("{relpath}:{l} (model {}, column {})", node.name, c.name)
                        }
                        None => origin.clone(),
                    };
                    for t in &c.data_tests {
                        project.tests.push(parse_test(
                            t,
                            &node.name,
                            Some(&c.name),
                            &column_origin,
                        )?);
                    }
                    model.columns.push(ColumnSpec {
                        name: c.name,
                        description: c.description,
                        data_type: c.data_type,
                    });
                }
            }
            let fixtures = dir
                .join(paths.tests.first().map(String::as_str).unwrap_or("tests"))
                .join("fixtures");
            for node in &file.snapshots {
                snapshot_entry(&mut project.snapshots, node, &relpath)?;
            }
            for node in &file.unit_tests {
                let t = super::unit::parse(node, &fixtures, &relpath)?;
                if let Some(first) = project.unit_tests.iter().find(|u| u.name == t.name) {
                    return Err(Error::Input(format!(
                        "{}: unit test {} is declared twice (also in {})",
                        t.origin, t.name, first.origin
                    )));
                }
                project.unit_tests.push(t);
            }
            for src in file.sources {
                for t in src.tables {
                    let origin = format!("{relpath} (source {}.{})", src.name, t.name);
                    let (warn_after, error_after, filter) =
                        freshness(src.freshness.as_ref(), t.freshness.as_ref(), &origin)?;
                    let table = SourceTable {
                        source: src.name.clone(),
                        schema: src.schema.clone().unwrap_or_else(|| src.name.clone()),
                        identifier: t.identifier.clone().unwrap_or_else(|| t.name.clone()),
                        database: src.database.clone(),
                        loaded_at_field: t.loaded_at_field.or_else(|| src.loaded_at_field.clone()),
                        warn_after,
                        error_after,
                        filter,
                        description: t.description.or_else(|| src.description.clone()),
                        columns: t
                            .columns
                            .into_iter()
                            .map(|c| ColumnSpec {
                                name: c.name,
                                description: c.description,
                                data_type: None,
                            })
                            .collect(),
                        name: t.name,
                        origin,
                    };
                    let key = (table.source.clone(), table.name.clone());
                    if let Some(first) = project.sources.get(&key) {
                        return Err(Error::Input(format!(
                            "{}: source {}.{} is declared twice (also in {})",
                            table.origin, key.0, key.1, first.origin
                        )));
                    }
                    project.sources.insert(key, table);
                }
            }
            for node in file.seeds {
                for key in ["schema", "alias"] {
                    if let Some(v) = node.config.get(key) {
                        let v = v.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                            Error::Input(format!(
                                "{relpath}: seed {}: config `{key}` must be a name",
                                node.name
                            ))
                        })?;
                        seed_names
                            .entry(node.name.clone())
                            .or_default()
                            .insert(key, v);
                    }
                }
                if let Some(Yaml::Mapping(types)) = node.config.get("column_types") {
                    let entry = seed_types.entry(node.name.clone()).or_default();
                    for (k, v) in types {
                        if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                            entry.insert(k.to_string(), v.to_string());
                        }
                    }
                }
            }
        }
        project.models = by_name.into_values().collect();

        // dbt_project.yml's `seeds:` tree: +enabled (Jinja allowed) and
        // +column_types by folder, the project's own and packages'.
        let mut seed_files = Vec::new();
        for (root, pkg) in &seed_roots {
            let owner = pkg.clone().unwrap_or_else(|| own.clone());
            let tree = crate::project::dbt::folder_configs(root_file.seeds.as_ref(), &owner);
            let vars = match pkg {
                Some(p) => project.package_vars.get(p).cloned().unwrap_or_default(),
                None => project.vars.clone(),
            };
            for path in files(root, &["csv"])? {
                let folders: Vec<String> = path
                    .parent()
                    .and_then(|p| p.strip_prefix(root).ok())
                    .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                let mut enabled = true;
                let mut types = BTreeMap::new();
                let mut names: BTreeMap<&str, String> = BTreeMap::new();
                for (prefix, settings) in &tree {
                    if !folders.starts_with(prefix) {
                        continue;
                    }
                    let origin = format!("dbt_project.yml seeds settings for {owner}");
                    for (k, v) in settings {
                        match (k.as_str(), render_config(v, &vars, &origin)?) {
                            ("enabled", Yaml::Bool(b)) => enabled = b,
                            ("enabled", other) => {
                                return Err(Error::Input(format!(
                                    "{origin}: +enabled is {other:?}; expected true or false"
                                )));
                            }
                            ("column_types", Yaml::Mapping(m)) => {
                                for (c, t) in m {
                                    if let (Some(c), Some(t)) = (c.as_str(), t.as_str()) {
                                        types.insert(c.to_string(), t.to_string());
                                    }
                                }
                            }
                            (key @ ("schema" | "alias"), Yaml::String(v)) => {
                                let key = if key == "schema" { "schema" } else { "alias" };
                                names.insert(key, v.trim().to_string());
                            }
                            // quote_columns, docs, tags...: do not change what ferry loads.
                            _ => {}
                        }
                    }
                }
                if enabled {
                    seed_files.push((path, types, names, pkg.clone()));
                } else if let Some(stem) = path.file_stem() {
                    project.disabled.insert(stem.to_string_lossy().into_owned());
                }
            }
        }
        for (path, tree_types, mut names, package) in seed_files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if project.models.iter().any(|m| m.name == name) {
                return Err(Error::Input(format!(
                    "seed {} has the same name as model {name}: rename one",
                    rel(dir, &path)
                )));
            }
            if let Some(other) = project.seeds.iter().find(|s| s.name == name) {
                return Err(Error::Input(format!(
                    "two seeds are named {name}: {} and {}; seed names must be unique",
                    rel(dir, &other.path),
                    rel(dir, &path)
                )));
            }
            let mut column_types = tree_types;
            column_types.extend(seed_types.remove(&name).unwrap_or_default());
            names.extend(seed_names.remove(&name).unwrap_or_default());
            project.seeds.push(Seed {
                column_types,
                name,
                path,
                schema: names.remove("schema"),
                alias: names.remove("alias"),
                package,
            });
        }

        for snap in &project.snapshots {
            if project.models.iter().any(|m| m.name == snap.name)
                || project.seeds.iter().any(|s| s.name == snap.name)
            {
                return Err(Error::Input(format!(
                    "{}: snapshot {} has the name of a model or seed: rename one",
                    snap.path, snap.name
                )));
            }
        }
        for (_, path) in in_all(&paths.macros, &["sql"])? {
            project
                .macros
                .push((rel(dir, &path), tests_as_macros(&read(&path)?)));
        }
        // ferry's built-in macros, unless the project has a file of that name.
        for (file, text) in BUILTIN_MACROS {
            let shadowed = project.macros.iter().any(|(p, _)| p.ends_with(file));
            if !shadowed {
                project
                    .macros
                    .insert(0, (format!("<ferry>/{file}"), text.to_string()));
            }
        }
        project.namespaces = namespaces(&own, &packages, &project.macros)?;
        project.dispatch = dispatch_config(dir)?;
        for t in &project.tests {
            if BUILTIN_TESTS.contains(&t.kind.as_str()) {
                continue;
            }
            if test_macro(&project.namespaces, &t.kind).is_none() {
                return Err(Error::Input(format!(
                    "{}: unknown data test `{}`; ferry has unique, not_null, accepted_values and \
                     relationships, the `{{% test %}}` macros of the project, and those of the packages in \
                     dbt_packages/ (`package.name`; fill dbt_packages/ with `dbt deps`)",
                    t.origin, t.kind
                )));
            }
        }
        {
            for (root, path) in in_all(&paths.tests, &["sql"])? {
                // Unit tests' fixtures (`<test-paths>/fixtures/`) are not tests.
                if path.starts_with(root.join("fixtures")) {
                    continue;
                }
                project.singular_tests.push(SingularTest {
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path: rel(dir, &path),
                    sql: read(&path)?,
                });
            }
        }
        project.graph = graph(&project, &own);
        project.target = target(dir)?;
        super::relation::name_seeds(&mut project)?;
        project.source_map = super::render::SourceMap {
            declared: project
                .sources
                .iter()
                .map(|(k, t)| (k.clone(), (t.schema.clone(), t.identifier.clone())))
                .collect(),
            seeds: project
                .relations
                .iter()
                .map(|(name, rel)| (rel.clone(), name.clone()))
                .collect(),
        };
        // A source that names a seed by identifier but not by schema reads
        // a lake stream, as dbt would read that table: say so.
        for t in project.sources.values() {
            let Some(seed) = project.seeds.iter().find(|s| {
                project.relations.get(&s.name).map(|r| &r.1) == Some(&t.identifier.to_lowercase())
            }) else {
                continue;
            };
            if let super::render::SourceTarget::Stream(stream) =
                project.source_map.target(&t.source, &t.name)
            {
                let (schema, alias) = &project.relations[&seed.name];
                tracing::warn!(
                    "{}: source {}.{} reads the lake stream {stream}, not seed {} (created as \
                     {schema}.{alias}); to read the seed, give the source schema: {schema}",
                    t.origin,
                    t.source,
                    t.name,
                    seed.name
                );
            }
        }
        Ok(project)
    }

    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// The target chosen with `--target` (or FERRY_TARGET); `None`: the
/// profile's default.
pub static TARGET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// dbt's `target`: the output named by `--target` (or the profile's
/// `target:`, else `dev`) of the project's profile in `profiles.yml`
/// (`DBT_PROFILES_DIR`, the project folder, then `~/.dbt/`). ferry runs
/// DataFusion whatever the profile's `type`, so `target.type` is
/// `datafusion` (and dispatch looks for `datafusion__` macros); `name`,
/// `schema`, `database` and `threads` come from the output.
fn target(dir: &Path) -> Result<serde_json::Value> {
    let chosen = TARGET
        .get()
        .cloned()
        .or_else(|| std::env::var("FERRY_TARGET").ok().filter(|t| !t.is_empty()));
    let profile_name = read(&dir.join("dbt_project.yml"))
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<Yaml>(&t).ok())
        .and_then(|y| y.get("profile").and_then(Yaml::as_str).map(str::to_string));
    let mut places: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("DBT_PROFILES_DIR") {
        places.push(PathBuf::from(d).join("profiles.yml"));
    }
    places.push(dir.join("profiles.yml"));
    if let Some(home) = std::env::var_os("HOME") {
        places.push(PathBuf::from(home).join(".dbt/profiles.yml"));
    }
    let profile = profile_name.as_ref().and_then(|name| {
        places.iter().find_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let y: Yaml = serde_yaml_ng::from_str(&text).ok()?;
            y.get(name.as_str()).cloned().map(|prof| (p.clone(), prof))
        })
    });
    let default_name = profile
        .as_ref()
        .and_then(|(_, p)| p.get("target").and_then(Yaml::as_str).map(str::to_string));
    let name = chosen
        .clone()
        .or(default_name)
        .unwrap_or_else(|| "dev".into());
    let output = profile
        .as_ref()
        .and_then(|(_, p)| p.get("outputs").and_then(|o| o.get(name.as_str())).cloned());
    if let (Some(chosen), Some((path, prof)), None) = (&chosen, &profile, &output) {
        let have: Vec<String> = prof
            .get("outputs")
            .and_then(Yaml::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return Err(Error::Input(format!(
            "--target {chosen}: {} has no output {chosen} (it has {})",
            path.display(),
            have.join(", ")
        )));
    }
    let get = |k: &str| output.as_ref().and_then(|o| o.get(k)).cloned();
    let text = |k: &str, d: &str| {
        get(k)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| d.to_string())
    };
    Ok(serde_json::json!({
        "name": name,
        "target_name": name,
        "type": "datafusion",
        "schema": text("schema", "main"),
        "database": text("database", "lake"),
        "threads": get("threads").and_then(|t| t.as_u64()).unwrap_or(4),
        "profile_name": profile_name.unwrap_or_else(|| "ferry".into()),
    }))
}

/// dbt's `graph`: `nodes` (models, seeds, snapshots) and `sources`, by
/// unique id, with the fields packages read (`resource_type`, `name`,
/// `package_name`, `config`, `tags`, `depends_on`, filled by the DAG).
fn graph(project: &ModelProject, own: &str) -> serde_json::Value {
    use serde_json::json;
    let mut nodes = serde_json::Map::new();
    for m in &project.models {
        let pkg = m.package.clone().unwrap_or_else(|| own.to_string());
        nodes.insert(
            format!("model.{pkg}.{}", m.name),
            json!({
                "unique_id": format!("model.{pkg}.{}", m.name),
                "resource_type": "model",
                "name": m.name,
                "package_name": pkg,
                "original_file_path": m.path,
                "path": m.path,
                "tags": m.config.tags,
                "config": {
                    "materialized": m.config.materialized.as_str(),
                    "tags": m.config.tags,
                    "enabled": m.config.enabled,
                    "unique_key": m.config.unique_key,
                },
                "description": m.description.clone().unwrap_or_default(),
                "columns": m.columns.iter().map(|c| (c.name.clone(), json!({"name": c.name, "data_type": c.data_type, "description": c.description}))).collect::<serde_json::Map<_, _>>(),
                "depends_on": {"nodes": [], "macros": []},
            }),
        );
    }
    for s in &project.seeds {
        let pkg = s.package.as_deref().unwrap_or(own);
        nodes.insert(
            format!("seed.{pkg}.{}", s.name),
            json!({"unique_id": format!("seed.{pkg}.{}", s.name), "resource_type": "seed", "name": s.name, "package_name": pkg, "config": {"materialized": "seed", "schema": s.schema, "alias": s.alias}, "depends_on": {"nodes": []}}),
        );
    }
    for s in &project.snapshots {
        nodes.insert(
            format!("snapshot.{own}.{}", s.name),
            json!({"unique_id": format!("snapshot.{own}.{}", s.name), "resource_type": "snapshot", "name": s.name, "package_name": own, "original_file_path": s.path, "config": {"materialized": "snapshot"}, "depends_on": {"nodes": []}}),
        );
    }
    let sources: serde_json::Map<_, _> = project
        .sources
        .values()
        .map(|t| {
            let id = format!("source.{own}.{}.{}", t.source, t.name);
            (
                id.clone(),
                json!({"unique_id": id, "resource_type": "source", "source_name": t.source, "name": t.name, "identifier": t.identifier, "schema": t.schema, "loaded_at_field": t.loaded_at_field, "package_name": own}),
            )
        })
        .collect();
    json!({"nodes": nodes, "sources": sources})
}

/// A `snapshots:` entry: with `relation:` it declares a snapshot (dbt
/// 1.9); without, it configures a `{% snapshot %}` block of that name.
fn snapshot_entry(
    snapshots: &mut Vec<super::snapshot::Snapshot>,
    node: &Yaml,
    relpath: &str,
) -> Result<()> {
    let name = node
        .get("name")
        .and_then(Yaml::as_str)
        .ok_or_else(|| Error::Input(format!("{relpath}: a snapshot needs name:")))?
        .to_string();
    let config: BTreeMap<String, Yaml> = match node.get("config") {
        Some(Yaml::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => BTreeMap::new(),
    };
    match node.get("relation").and_then(Yaml::as_str) {
        Some(relation) => {
            if let Some(first) = snapshots.iter().find(|s| s.name == name) {
                return Err(Error::Input(format!(
                    "{relpath}: snapshot {name} is declared twice (also in {})",
                    first.path
                )));
            }
            let relation = relation.trim();
            let relation = if relation.starts_with("{{") {
                relation.to_string()
            } else {
                format!("{{{{ {relation} }}}}")
            };
            snapshots.push(super::snapshot::Snapshot {
                name,
                path: relpath.to_string(),
                sql: format!("select * from {relation}"),
                config,
            });
        }
        None => match snapshots.iter_mut().find(|s| s.name == name) {
            Some(s) => s.config.extend(config),
            None => {
                return Err(Error::Input(format!(
                    "{relpath}: snapshot {name} has no relation: and no {{% snapshot {name} %}} block; \
                     give it relation: ref('model') or source('source', 'table')"
                )));
            }
        },
    }
    Ok(())
}

/// Read the models under `roots` into `by_name`, each with the folder
/// settings in `configs` that match its folder.
fn load_models(
    dir: &Path,
    roots: &[PathBuf],
    configs: &[(Vec<String>, BTreeMap<String, Yaml>)],
    package: Option<&str>,
    vars: &BTreeMap<String, serde_json::Value>,
    by_name: &mut BTreeMap<String, Model>,
) -> Result<()> {
    for root in roots {
        for path in files(root, &["sql"])? {
            let folders: Vec<String> = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let mut config = ModelConfig::defaults();
            for (prefix, settings) in configs {
                if folders.starts_with(prefix) {
                    let origin = match (package, prefix.is_empty()) {
                        (Some(p), _) => format!("model settings of package {p}"),
                        (None, true) => "project model settings".to_string(),
                        (None, false) => format!("project model settings for {}", prefix.join("/")),
                    };
                    for (k, v) in settings {
                        config.apply(k, &render_config(v, vars, &origin)?, &origin)?;
                    }
                }
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let relpath = rel(dir, &path);
            if let Some(other) = by_name.get(&name) {
                return Err(Error::Input(format!(
                    "two models are named {name}: {} and {relpath}; model names must be unique",
                    other.path
                )));
            }
            by_name.insert(
                name.clone(),
                Model {
                    name,
                    path: relpath,
                    sql: read(&path)?,
                    config,
                    description: None,
                    columns: Vec::new(),
                    package: package.map(str::to_string),
                },
            );
        }
    }
    Ok(())
}

/// `; did you mean x?` for the names closest to `name`, or nothing.
pub fn suggest<'a>(name: &str, names: impl IntoIterator<Item = &'a String>) -> String {
    let mut scored: Vec<(f64, &String)> = names
        .into_iter()
        .map(|n| (strsim::jaro_winkler(name, n), n))
        .filter(|(s, _)| *s > 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best: Vec<&str> = scored.iter().take(3).map(|(_, n)| n.as_str()).collect();
    if best.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", best.join(", "))
    }
}

/// Parse one entry of `data_tests:`: `unique`, or `{accepted_values: {values: [...]}}`
/// (arguments either directly or under `arguments:`, with `config: {severity: warn}`).
/// The 1-based line, after line `after`, of a YAML entry `name: <name>`
/// (`- name: x`, quoted or not): where a schema file declares a model or
/// a column, for messages. serde_yaml's values carry no positions.
pub fn name_line(text: &str, after: usize, name: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| {
            // `- name: x`, `name: "x"`, or flow style `- {name: x, ...}`.
            let l = l
                .trim_start()
                .trim_start_matches("- ")
                .trim_start()
                .trim_start_matches('{')
                .trim_start();
            l.strip_prefix("name:")
                .and_then(|v| v.split([',', '}', '#']).next())
                .map(|v| v.trim().trim_matches(['\'', '"']) == name)
                .unwrap_or(false)
        })
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod name_line_tests {
    use super::name_line;

    #[test]
    fn finds_block_flow_and_quoted_names_after_their_model() {
        let yml = "models:\n  - name: a\n    columns:\n      - name: id\n  - name: b\n    columns:\n      - {name: id, data_tests: [unique]}\n      - name: \"email\"  # quoted\n";
        assert_eq!(name_line(yml, 0, "b"), Some(5));
        assert_eq!(name_line(yml, 5, "id"), Some(7));
        assert_eq!(name_line(yml, 0, "id"), Some(4));
        assert_eq!(name_line(yml, 5, "email"), Some(8));
        assert_eq!(name_line(yml, 0, "missing"), None);
    }
}

fn parse_test(t: &Yaml, model: &str, column: Option<&str>, origin: &str) -> Result<TestSpec> {
    let (kind, body) = match t {
        Yaml::String(s) => (s.clone(), None),
        Yaml::Mapping(m) if m.len() == 1 => {
            let (k, v) = m
                .iter()
                .next()
                .ok_or_else(|| Error::Internal("empty map".into()))?;
            let k = k
                .as_str()
                .ok_or_else(|| Error::Input(format!("{origin}: a test name must be a string")))?;
            (k.to_string(), Some(v))
        }
        _ => {
            return Err(Error::Input(format!(
                "{origin}: a data test is a name (`- unique`) or a one-key map (`- accepted_values: {{values: [...]}}`)"
            )));
        }
    };
    let mut args = BTreeMap::new();
    let mut severity = Severity::Error;
    if let Some(Yaml::Mapping(m)) = body {
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            match k {
                "config" => {
                    if let Some(s) = v.get("severity").and_then(|s| s.as_str()) {
                        severity = parse_severity(s, origin)?;
                    }
                }
                "severity" => {
                    severity = parse_severity(v.as_str().unwrap_or(""), origin)?;
                }
                "arguments" => {
                    if let Yaml::Mapping(a) = v {
                        for (ak, av) in a {
                            if let Some(ak) = ak.as_str() {
                                args.insert(ak.to_string(), av.clone());
                            }
                        }
                    }
                }
                _ => {
                    args.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    let needs: &[&str] = match kind.as_str() {
        "unique" | "not_null" => &[],
        "accepted_values" => &["values"],
        "relationships" => &["to", "field"],
        // A generic test defined as a macro (`{% test name %}` in the
        // project's macros or a package's): checked once macros are loaded.
        _ => {
            return Ok(TestSpec {
                kind,
                model: model.to_string(),
                column: column.map(str::to_string),
                args,
                severity,
                origin: origin.to_string(),
            });
        }
    };
    for n in needs {
        if !args.contains_key(*n) {
            return Err(Error::Input(format!("{origin}: test {kind} needs `{n}:`")));
        }
    }
    if column.is_none() {
        return Err(Error::Input(format!(
            "{origin}: test {kind} is declared on the model; declare it under a column"
        )));
    }
    Ok(TestSpec {
        kind,
        model: model.to_string(),
        column: column.map(str::to_string),
        args,
        severity,
        origin: origin.to_string(),
    })
}

fn parse_severity(s: &str, origin: &str) -> Result<Severity> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(Severity::Error),
        "warn" => Ok(Severity::Warn),
        other => Err(Error::Input(format!(
            "{origin}: severity {other:?}; expected warn or error"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `{% test %}` inside `{% raw %}` (documentation of a
    /// macro, say) was rewritten too.
    #[test]
    fn test_blocks_become_macros_outside_raw_blocks_only() {
        let text = "{% raw %}{% test x(model) %}{% endraw %}\n{%- test y(model) -%}select 1{%- endtest -%}";
        assert_eq!(
            tests_as_macros(text),
            "{% raw %}{% test x(model) %}{% endraw %}\n{%- macro test_y(model) -%}select 1{%- endmacro -%}"
        );
        let wrapped = super::super::render::wrap_macros(
            "{% raw %}{% macro a() %}{% endraw %}{% macro b() %}{% endmacro %}",
        );
        assert!(
            wrapped
                .starts_with("{% raw %}{% macro a() %}{% endraw %}{% macro __ferry_macro__b() %}"),
            "{wrapped}"
        );
        assert!(
            wrapped.ends_with("{%- set b = __returning(__ferry_macro__b) -%}"),
            "{wrapped}"
        );
    }

    /// Regression: a table's `freshness` replaced its source's instead of
    /// overriding key by key, as dbt merges them.
    #[test]
    fn a_tables_freshness_overrides_its_sources_key_by_key() {
        let y = |s: &str| serde_yaml_ng::from_str::<Yaml>(s).unwrap();
        let source =
            y("{warn_after: {count: 12, period: hour}, error_after: {count: 1, period: day}}");
        let table = y("{warn_after: {count: 6, period: hour}}");
        let (warn, error, _) = freshness(Some(&source), Some(&table), "x").unwrap();
        assert_eq!(warn.unwrap().seconds(), 6 * 3600);
        assert_eq!(error.unwrap().seconds(), 86_400);
        let (warn, error, _) = freshness(Some(&source), Some(&Yaml::Null), "x").unwrap();
        assert!(warn.is_none() && error.is_none(), "null turns it off");
    }
}
