//! Rendering a model's Jinja into SQL with minijinja.
//!
//! Functions available in models, as in dbt: `ref('m')` (or
//! `ref('package', 'm')`), `source('src', 'stream')`, `config(...)`,
//! `var('name', default)`, `is_incremental()`, `this`; plus `{% set %}`,
//! `{% for %}`, `{% if %}` and the user's macros from `sql/macros/` (a dbt
//! project's `macros/`), which are available in every model.
//!
//! Rendering records what the model refers to and the `config(...)` it sets,
//! so the DAG and the configuration come from the same pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Rest};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use super::project::Model;
use crate::error::{Error, Result};

/// How `ref('m')` is written into SQL (`m`, or a CTE name for ephemeral models).
pub type Resolver = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// What rendering needs besides the model.
#[derive(Clone)]
pub struct RenderContext<'a> {
    pub macros: &'a [(String, String)],
    pub vars: &'a BTreeMap<String, serde_json::Value>,
    pub is_incremental: bool,
    pub resolve: Resolver,
    /// Where `source(s, t)` points: declared sources and seed names.
    pub sources: &'a SourceMap,
    /// Macro namespaces, as (name, macros' text): `dbt` (ferry's builds of
    /// dbt's built-in macros), each package in `dbt_packages/`, and the
    /// project itself (for `adapter.dispatch`).
    pub namespaces: &'a [(String, String)],
    /// `dispatch:` search orders, by namespace.
    pub dispatch: &'a BTreeMap<String, Vec<String>>,
    /// Vars as each package sees them (its models and its macros).
    pub package_vars: &'a BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Rendering for a unit test: mock relations and overrides.
    pub unit: Option<&'a UnitRender>,
    /// Runs queries (`run_query`, `statement`, relation lookups); `None`
    /// while parsing, where `execute` is false.
    pub query: Option<QueryFn>,
    /// dbt's `graph` (`graph.nodes`, `graph.sources`).
    pub graph: &'a serde_json::Value,
    /// dbt's `target` (`name`, `schema`, `type`, `threads`, ...).
    pub target: &'a serde_json::Value,
}

/// What a unit test changes in a render: `source()` and `this` name its
/// mock inputs (refs go through the resolver), and macros and env vars
/// return the test's overrides.
#[derive(Debug, Clone, Default)]
pub struct UnitRender {
    /// `source(s, t)` renders as `{prefix}{s}__{t}`.
    pub source_prefix: String,
    pub this: String,
    /// Macro name (`type_numeric`, or `dbt_utils.star`) → the value it returns.
    pub macros: BTreeMap<String, serde_json::Value>,
    pub env_vars: BTreeMap<String, String>,
}

/// Runs a query for `run_query`, `statement` and the adapter's relation
/// lookups: the rows as JSON objects and the column names, or the error.
pub type QueryFn = Arc<
    dyn Fn(&str) -> std::result::Result<(Vec<String>, Vec<serde_json::Value>), String>
        + Send
        + Sync,
>;

/// The query runner of a workspace, set once a session exists. Renders
/// before that (building the DAG: dbt's parse) have `execute` false and
/// `run_query` none, as in dbt.
#[derive(Clone, Default)]
pub struct Executor(Arc<std::sync::OnceLock<QueryFn>>);

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Executor(attached)"
        } else {
            "Executor(none)"
        })
    }
}

impl Executor {
    /// Attach `f` (the first one stays).
    pub fn set(&self, f: QueryFn) {
        let _ = self.0.set(f);
    }

    pub fn get(&self) -> Option<QueryFn> {
        self.0.get().cloned()
    }
}

/// A query's result as dbt's agate table: `.columns[i].values()`,
/// `.column_names`, `.rows`, `table[i][j]`, iteration over rows.
#[derive(Debug)]
struct AgateTable {
    names: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl AgateTable {
    fn new(names: Vec<String>, rows: Vec<serde_json::Value>) -> AgateTable {
        let rows = rows
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|n| Value::from_serialize(r.get(n).unwrap_or(&serde_json::Value::Null)))
                    .collect()
            })
            .collect();
        AgateTable { names, rows }
    }

    fn row_values(&self) -> Vec<Value> {
        self.rows.iter().map(|r| Value::from(r.clone())).collect()
    }
}

#[derive(Debug)]
struct AgateColumn {
    name: String,
    values: Vec<Value>,
}

impl minijinja::value::Object for AgateColumn {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "name" => Some(Value::from(self.name.clone())),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "values" | "values_distinct" => Ok(Value::from(self.values.clone())),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

impl minijinja::value::Object for AgateTable {
    // Plain: attributes (`.columns`) and indexes (`[0]`) both resolve
    // through get_value; iteration yields the rows.
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        if let Some(i) = key.as_usize() {
            return self.rows.get(i).map(|r| Value::from(r.clone()));
        }
        match key.as_str()? {
            "rows" => Some(Value::from(self.row_values())),
            "column_names" => Some(Value::from(self.names.clone())),
            "columns" => Some(Value::from(
                self.names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        Value::from_object(AgateColumn {
                            name: n.clone(),
                            values: self.rows.iter().map(|r| r[i].clone()).collect(),
                        })
                    })
                    .collect::<Vec<_>>(),
            )),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Values(self.row_values())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.rows.len())
    }
}

/// A column of a relation, as `adapter.get_columns_in_relation` returns:
/// `.name`, `.column`, `.quoted`, `.data_type`, `.dtype`.
fn column_value(name: &str, data_type: &str) -> Value {
    Value::from_serialize(serde_json::json!({
        "name": name,
        "column": name,
        "quoted": format!("\"{}\"", name.replace('"', "\"\"")),
        "data_type": data_type,
        "dtype": data_type,
    }))
}

/// The `dbt` namespace: dbt's built-in cross-database macros, for DataFusion.
pub const DBT_MACROS: &str = include_str!("../../sql/dbt/cross_db.sql");

/// `dbt_utils.generate_surrogate_key(...)`: a call into the macros of a
/// namespace (a template of its macros, evaluated when called).
#[derive(Debug)]
struct Namespace {
    name: String,
}

fn template_of(name: &str) -> String {
    format!("__namespace__{name}")
}

thread_local! {
    /// One slot per namespace call in progress: the value its macro gave
    /// to `return()` first (dbt's `return` ends the macro with that value).
    static RETURNS: std::cell::RefCell<Vec<Option<Value>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Namespace calls in progress on this thread (each starts a fresh
    /// template state, so minijinja's own recursion limit does not see them).
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Deepest chain of namespace and dispatch calls before it is an error.
const MAX_DEPTH: usize = 64;

struct Depth;

impl Depth {
    fn enter(namespace: &str, method: &str) -> Result<Depth, minijinja::Error> {
        let d = DEPTH.with(|d| {
            let v = d.get() + 1;
            d.set(v);
            v
        });
        let guard = Depth;
        if d > MAX_DEPTH {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "{namespace}.{method}: macro calls nest deeper than {MAX_DEPTH}: a macro calls itself (through adapter.dispatch or its namespace)"
                ),
            ));
        }
        Ok(guard)
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn call_in(
    state: &minijinja::State<'_, '_>,
    namespace: &str,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let _depth = Depth::enter(namespace, method)?;
    if let Some(o) = state
        .lookup(&format!("__unit_override__{namespace}.{method}"))
        .filter(|v| !v.is_undefined())
    {
        return o.call(state, args);
    }
    let broken = state
        .lookup(&format!("__broken__{namespace}"))
        .filter(|v| !v.is_undefined());
    if let Some(why) = broken {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the macros of {namespace} do not parse: {why}"),
        ));
    }
    let template = state.env().get_template(&template_of(namespace)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::UnknownFunction,
            format!("no macro namespace {namespace}: install the package (dbt_packages/{namespace}) or check the name"),
        )
    })?;
    let captured = render_namespace(state, &template, namespace)?;
    let module = captured.state();
    let Some(m) = module.lookup(method) else {
        return Err(minijinja::Error::new(
            ErrorKind::UnknownFunction,
            format!("{namespace} has no macro named {method}"),
        ));
    };
    m.call(module, args)
}

/// Prefix of the name a macro is defined under; its own name holds a
/// [`Returning`] wrapper of it.
const MACRO_PREFIX: &str = "__ferry_macro__";

/// A macro as dbt calls it: its value is what it first gave `return()` (a
/// list, a map, a number: typed), else its text. Every macro is wrapped
/// so, whether called directly, through its namespace or by dispatch.
#[derive(Debug)]
struct Returning(Value);

impl minijinja::value::Object for Returning {
    fn call(
        self: &Arc<Self>,
        state: &minijinja::State<'_, '_>,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        RETURNS.with(|r| r.borrow_mut().push(None));
        let out = self.0.call(state, args);
        // `return()` stops the macro by failing it; its value is the result.
        match RETURNS.with(|r| r.borrow_mut().pop().flatten()) {
            Some(v) => Ok(v),
            None => out,
        }
    }
}

/// Rename each `{% macro name(` to `MACRO_PREFIX + name` and bind `name`
/// to its [`Returning`] wrapper after the definitions (macros see later
/// top-level names, so calls between macros go through the wrappers too).
/// `{% raw %}` blocks are left as they are.
pub fn wrap_macros(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let body = after.strip_prefix('-').unwrap_or(after);
        let trimmed = body.trim_start();
        if trimmed.starts_with("raw") && trimmed[3..].trim_start().starts_with(['%', '-']) {
            let end = rest
                .find("endraw")
                .and_then(|e| rest[e..].find("%}").map(|c| e + c + 2))
                .unwrap_or(rest.len());
            out.push_str(&rest[i..end]);
            rest = &rest[end..];
            continue;
        }
        if let Some(tail) = trimmed.strip_prefix("macro ") {
            let tail_trim = tail.trim_start();
            let name: String = tail_trim
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && tail_trim[name.len()..].trim_start().starts_with('(') {
                let head_len = rest.len() - tail_trim.len();
                out.push_str(&rest[i..head_len]);
                out.push_str(MACRO_PREFIX);
                out.push_str(&name);
                if !names.contains(&name) {
                    names.push(name.clone());
                }
                rest = &tail_trim[name.len()..];
                continue;
            }
        }
        out.push_str("{%");
        rest = after;
    }
    out.push_str(rest);
    for n in names {
        out.push_str(&format!(
            "{{%- set {n} = __returning({MACRO_PREFIX}{n}) -%}}"
        ));
    }
    out
}

/// `return(x)`: ends the macro call in progress with the value `x` (the
/// call's [`Returning`] wrapper catches the stop). Outside a macro it
/// outputs `x`.
fn return_value(v: Value) -> Result<Value, minijinja::Error> {
    let in_macro = RETURNS.with(|r| match r.borrow_mut().last_mut() {
        Some(slot) => {
            if slot.is_none() {
                *slot = Some(v.clone());
            }
            true
        }
        None => false,
    });
    if in_macro {
        Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "return() outside the macro that called it",
        ))
    } else {
        Ok(v)
    }
}

/// A namespace's macros, evaluated with the namespace's own vars (a
/// package's macros see its `vars:` defaults and `pkg:` scoped values).
fn render_namespace<'env>(
    state: &minijinja::State<'_, 'env>,
    template: &minijinja::Template<'env, 'env>,
    namespace: &str,
) -> Result<minijinja::Captured<'env>, minijinja::Error> {
    let scoped = state
        .lookup(&format!("__vars__{namespace}"))
        .filter(|v| !v.is_undefined());
    match scoped {
        Some(var) => template.render_captured(minijinja::context! { var => var }),
        None => template.render_captured(()),
    }
}

impl minijinja::value::Object for Namespace {
    fn call_method(
        self: &Arc<Self>,
        state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        call_in(state, &self.name, method, args)
    }
}

/// `exceptions.raise_compiler_error(msg)` and `exceptions.warn(msg)`.
#[derive(Debug)]
struct Exceptions;

impl minijinja::value::Object for Exceptions {
    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        let msg = args.first().map(|v| v.to_string()).unwrap_or_default();
        match method {
            "raise_compiler_error" => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("compilation error: {msg}"),
            )),
            "warn" => {
                eprintln!("warning: {msg}");
                Ok(Value::from(""))
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `adapter`: `dispatch` (dbt's search order: the project, then the
/// macro's namespace; in each `datafusion__<name>`, then `default__<name>`,
/// then `<name>`) and `quote`.
struct Adapter {
    project: String,
    dispatch: BTreeMap<String, Vec<String>>,
    query: Option<QueryFn>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("project", &self.project)
            .finish()
    }
}

/// The macro `adapter.dispatch` chose, called later with the macro's arguments.
#[derive(Debug)]
struct Dispatched {
    namespace: String,
    name: String,
}

impl minijinja::value::Object for Dispatched {
    fn call(
        self: &Arc<Self>,
        state: &minijinja::State<'_, '_>,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        call_in(state, &self.namespace, &self.name, args)
    }
}

impl minijinja::value::Object for Adapter {
    fn call_method(
        self: &Arc<Self>,
        state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "dispatch" => {
                let (name, namespace, kwargs): (String, Option<String>, Kwargs) =
                    minijinja::value::from_args(args)?;
                let namespace = match namespace {
                    Some(ns) => Some(ns),
                    None => kwargs.get::<Option<String>>("macro_namespace")?,
                };
                let mut order = match namespace.as_ref().and_then(|ns| self.dispatch.get(ns)) {
                    Some(configured) => configured.clone(),
                    None => {
                        let mut o = vec![self.project.clone()];
                        o.extend(namespace.clone());
                        o
                    }
                };
                order.push("dbt".to_string());
                for ns in &order {
                    let Ok(t) = state.env().get_template(&template_of(ns)) else {
                        continue;
                    };
                    let captured = render_namespace(state, &t, ns)?;
                    let module = captured.state();
                    // As dbt: adapter-prefixed, then default__; never the
                    // bare name (that is the dispatching macro itself). The
                    // `dbt` namespace's macros are plain-named.
                    let bare = (ns == "dbt").then(|| name.clone());
                    for candidate in [format!("datafusion__{name}"), format!("default__{name}")]
                        .into_iter()
                        .chain(bare)
                    {
                        if module.lookup(&candidate).is_some() {
                            return Ok(Value::from_object(Dispatched {
                                namespace: ns.clone(),
                                name: candidate,
                            }));
                        }
                    }
                }
                Err(minijinja::Error::new(
                    ErrorKind::UnknownFunction,
                    format!(
                        "adapter.dispatch('{name}'): no datafusion__{name} or default__{name} in {}",
                        order.join(", ")
                    ),
                ))
            }
            "quote" => {
                let (id,): (String,) = minijinja::value::from_args(args)?;
                Ok(Value::from(format!("\"{}\"", id.replace('"', "\"\""))))
            }
            // The columns of a relation (a ref, a source, a name): empty
            // while parsing, as in dbt.
            "get_columns_in_relation" => {
                let (relation,): (Value,) = minijinja::value::from_args(args)?;
                let Some(q) = &self.query else {
                    return Ok(Value::from(Vec::<Value>::new()));
                };
                // `describe` gives names and types; a relation it cannot
                // describe (a subquery) gives names only.
                if let Ok((_, rows)) = q(&format!("describe {relation}")) {
                    return Ok(Value::from(
                        rows.iter()
                            .filter_map(|r| {
                                Some(column_value(
                                    r.get("column_name")?.as_str()?,
                                    r.get("data_type").and_then(|t| t.as_str()).unwrap_or(""),
                                ))
                            })
                            .collect::<Vec<_>>(),
                    ));
                }
                let (names, _) = q(&format!("select * from {relation} limit 0")).map_err(|e| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("adapter.get_columns_in_relation({relation}): {e}"),
                    )
                })?;
                Ok(Value::from(
                    names
                        .iter()
                        .map(|n| column_value(n, ""))
                        .collect::<Vec<_>>(),
                ))
            }
            // get_relation(database, schema, identifier): the relation if it
            // exists, else none.
            "get_relation" => {
                let (a, b, c, kwargs): (Option<Value>, Option<Value>, Option<Value>, Kwargs) =
                    minijinja::value::from_args(args)?;
                let pick = |k: &str, v: Option<Value>| -> Option<String> {
                    kwargs
                        .get::<Option<String>>(k)
                        .ok()
                        .flatten()
                        .or_else(|| v.filter(|v| !v.is_none()).map(|v| v.to_string()))
                };
                let _database = pick("database", a);
                let schema = pick("schema", b);
                let identifier = pick("identifier", c).ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "adapter.get_relation needs identifier=",
                    )
                })?;
                let Some(q) = &self.query else {
                    return Ok(Value::from(()));
                };
                let name = match schema.as_deref() {
                    None | Some("main") | Some("") => identifier.clone(),
                    Some(s) => format!("{s}.{identifier}"),
                };
                Ok(match q(&format!("select * from {name} limit 0")) {
                    Ok(_) => Value::from(name),
                    Err(_) => Value::from(()),
                })
            }
            _ => Err(minijinja::Error::new(
                ErrorKind::UnknownMethod,
                format!(
                    "adapter.{method} is not supported by ferry yet (dispatch, quote, get_columns_in_relation and get_relation are)"
                ),
            )),
        }
    }
}

/// dbt's `env_var(name, default)`, with a unit test's `overrides` first.
/// Also used where dbt renders YAML (packages.yml, dbt_project.yml).
pub(crate) fn env_var_function(overrides: BTreeMap<String, String>) -> Value {
    Value::from_function(
        move |name: String, default: Option<String>| -> Result<String, minijinja::Error> {
            if let Some(v) = overrides.get(&name) {
                return Ok(v.clone());
            }
            match (std::env::var(&name), default) {
                (Ok(v), _) => Ok(v),
                (Err(_), Some(d)) => Ok(d),
                (Err(_), None) => Err(minijinja::Error::new(
                    ErrorKind::UndefinedError,
                    format!(
                        "env_var('{name}') is not set: export it, or give a default: env_var('{name}', 'x')"
                    ),
                )),
            }
        },
    )
}

/// `var(name, default)` over one scope of vars.
pub(crate) fn var_function(vars: Arc<BTreeMap<String, serde_json::Value>>) -> Value {
    Value::from_function(
        move |name: String, default: Option<Value>| -> Result<Value, minijinja::Error> {
            match vars.get(&name) {
                Some(v) => Ok(Value::from_serialize(v)),
                None => default.ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::UndefinedError,
                        format!(
                            "var('{name}') is not set: add it under vars: in dbt_project.yml \
                             ([vars] in ferry.toml), pass --vars '{name}=...', or give a \
                             default: var('{name}', 'x')"
                        ),
                    )
                }),
            }
        },
    )
}

/// `config(...)` (recorded) and `config.get(key, default)` /
/// `config.require(key)`: what `config(...)` set, else the model's config.
#[derive(Debug)]
struct Config {
    capture: Arc<Mutex<Capture>>,
    model: super::project::ModelConfig,
}

impl Config {
    fn lookup(&self, key: &str) -> Option<Value> {
        if let Ok(c) = self.capture.lock()
            && let Some((_, v)) = c.config.iter().rev().find(|(k, _)| k == key)
        {
            return Some(Value::from_serialize(v));
        }
        let m = &self.model;
        match key {
            "materialized" => Some(Value::from(m.materialized.as_str())),
            "tags" => Some(Value::from(m.tags.clone())),
            "enabled" => Some(Value::from(m.enabled)),
            "unique_key" if m.unique_key.len() == 1 => Some(Value::from(m.unique_key[0].clone())),
            "unique_key" if !m.unique_key.is_empty() => Some(Value::from(m.unique_key.clone())),
            "incremental_strategy" => m.incremental_strategy.map(|s| {
                Value::from(match s {
                    super::project::Strategy::Append => "append",
                    super::project::Strategy::Merge => "merge",
                })
            }),
            _ => None,
        }
    }
}

impl minijinja::value::Object for Config {
    fn call(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        let (kwargs,): (Kwargs,) = minijinja::value::from_args(args)?;
        let mut c = self.capture.lock().map_err(|_| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "config capture poisoned")
        })?;
        for key in kwargs.args() {
            let value: Value = kwargs.get(key)?;
            let yaml = serde_yaml_ng::to_value(&value).map_err(|e| {
                minijinja::Error::new(ErrorKind::InvalidOperation, format!("config {key}: {e}"))
            })?;
            c.config.push((key.to_string(), yaml));
        }
        Ok(Value::from(""))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "get" => {
                let (key, default): (String, Option<Value>) = minijinja::value::from_args(args)?;
                Ok(self.lookup(&key).or(default).unwrap_or(Value::from(())))
            }
            "require" => {
                let (key,): (String,) = minijinja::value::from_args(args)?;
                self.lookup(&key).ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("config.require('{key}'): the model does not set {key}"),
                    )
                })
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `modules.datetime` (`datetime.now()`, `utcnow()`, `date.today()`,
/// with `strftime` and `isoformat`) and `modules.re` (`search`, `match`,
/// `fullmatch`, `sub`, `findall`, `split`), as dbt's context has them.
fn modules() -> Value {
    let mut m = BTreeMap::new();
    m.insert("datetime", Value::from_object(PyDatetime));
    m.insert("re", Value::from_object(PyRe));
    Value::from(m)
}

#[derive(Debug)]
struct PyDatetime;

#[derive(Debug)]
struct PyClock {
    date_only: bool,
}

#[derive(Debug)]
struct PyMoment {
    at: chrono::DateTime<chrono::FixedOffset>,
    date_only: bool,
}

impl minijinja::value::Object for PyDatetime {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "datetime" => Some(Value::from_object(PyClock { date_only: false })),
            "date" => Some(Value::from_object(PyClock { date_only: true })),
            _ => None,
        }
    }
}

impl minijinja::value::Object for PyClock {
    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        let now = chrono::Utc::now().fixed_offset();
        let at = match method {
            "now" | "today" => chrono::Local::now().fixed_offset(),
            "utcnow" => now,
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
        Ok(Value::from_object(PyMoment {
            at,
            date_only: self.date_only,
        }))
    }
}

impl PyMoment {
    fn iso(&self) -> String {
        if self.date_only {
            self.at.format("%Y-%m-%d").to_string()
        } else {
            self.at
                .naive_local()
                .format("%Y-%m-%dT%H:%M:%S%.6f")
                .to_string()
        }
    }
}

impl minijinja::value::Object for PyMoment {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        use chrono::{Datelike, Timelike};
        Some(Value::from(match key.as_str()? {
            "year" => self.at.year() as i64,
            "month" => self.at.month() as i64,
            "day" => self.at.day() as i64,
            "hour" => self.at.hour() as i64,
            "minute" => self.at.minute() as i64,
            "second" => self.at.second() as i64,
            _ => return None,
        }))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "strftime" => {
                let (fmt,): (String,) = minijinja::value::from_args(args)?;
                let mut out = String::new();
                use std::fmt::Write;
                write!(out, "{}", self.at.naive_local().format(&fmt)).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("strftime: bad format {fmt:?}"),
                    )
                })?;
                Ok(Value::from(out))
            }
            "isoformat" => Ok(Value::from(self.iso())),
            "date" => Ok(Value::from_object(PyMoment {
                at: self.at,
                date_only: true,
            })),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.date_only {
            f.write_str(&self.iso())
        } else {
            write!(
                f,
                "{}",
                self.at.naive_local().format("%Y-%m-%d %H:%M:%S%.6f")
            )
        }
    }
}

#[derive(Debug)]
struct PyRe;

/// A regex match: `group(n)`, `groups()`, `start()`, `end()`.
#[derive(Debug)]
struct PyMatch {
    groups: Vec<Option<String>>,
    span: (usize, usize),
}

impl minijinja::value::Object for PyMatch {
    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        let opt = |g: &Option<String>| g.clone().map(Value::from).unwrap_or(Value::from(()));
        match method {
            "group" => {
                let (n,): (Option<usize>,) = minijinja::value::from_args(args)?;
                Ok(self
                    .groups
                    .get(n.unwrap_or(0))
                    .map(opt)
                    .unwrap_or(Value::from(())))
            }
            "groups" => Ok(Value::from(
                self.groups.iter().skip(1).map(opt).collect::<Vec<_>>(),
            )),
            "start" => Ok(Value::from(self.span.0)),
            "end" => Ok(Value::from(self.span.1)),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

impl minijinja::value::Object for PyRe {
    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        let bad = |e: regex::Error| {
            minijinja::Error::new(ErrorKind::InvalidOperation, format!("modules.re: {e}"))
        };
        let found = |m: Option<regex::Captures<'_>>| -> Value {
            match m {
                Some(c) => {
                    let whole = c.get(0).map(|g| (g.start(), g.end())).unwrap_or((0, 0));
                    Value::from_object(PyMatch {
                        groups: c
                            .iter()
                            .map(|g| g.map(|g| g.as_str().to_string()))
                            .collect(),
                        span: whole,
                    })
                }
                None => Value::from(()),
            }
        };
        match method {
            "search" | "match" | "fullmatch" => {
                let (pattern, text): (String, String) = minijinja::value::from_args(args)?;
                let pattern = match method {
                    "match" => format!("^(?:{pattern})"),
                    "fullmatch" => format!("^(?:{pattern})$"),
                    _ => pattern,
                };
                let re = regex::Regex::new(&pattern).map_err(bad)?;
                Ok(found(re.captures(&text)))
            }
            "sub" => {
                let (pattern, repl, text): (String, String, String) =
                    minijinja::value::from_args(args)?;
                let re = regex::Regex::new(&pattern).map_err(bad)?;
                // Python's \1 backreferences are regex's ${1}.
                let repl = regex::Regex::new(r"\\(\d+)")
                    .map_err(bad)?
                    .replace_all(&repl, "$${$1}")
                    .to_string();
                Ok(Value::from(
                    re.replace_all(&text, repl.as_str()).to_string(),
                ))
            }
            "findall" => {
                let (pattern, text): (String, String) = minijinja::value::from_args(args)?;
                let re = regex::Regex::new(&pattern).map_err(bad)?;
                Ok(Value::from(
                    re.captures_iter(&text)
                        .map(|c| {
                            c.get(if c.len() > 1 { 1 } else { 0 })
                                .map(|g| g.as_str().to_string())
                                .unwrap_or_default()
                        })
                        .collect::<Vec<_>>(),
                ))
            }
            "split" => {
                let (pattern, text): (String, String) = minijinja::value::from_args(args)?;
                let re = regex::Regex::new(&pattern).map_err(bad)?;
                Ok(Value::from(
                    re.split(&text).map(str::to_string).collect::<Vec<_>>(),
                ))
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// What `source()` resolves against.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// (source, table) → (schema, identifier).
    pub declared: BTreeMap<(String, String), (String, String)>,
    /// Seeds by relation (schema, alias): a declared source naming a seed's
    /// relation reads the seed (dbt projects load their raw data as seeds
    /// into the source's schema).
    pub seeds: BTreeMap<(String, String), String>,
}

/// What `source()` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceTarget {
    /// The seed of that name.
    Seed(String),
    /// The lake stream `schema.identifier`.
    Stream(String),
}

impl SourceMap {
    /// What `source(source, table)` reads: the seed created at the declared
    /// `schema.identifier`, else the lake stream of that name.
    pub fn target(&self, source: &str, table: &str) -> SourceTarget {
        let (schema, identifier) = self
            .declared
            .get(&(source.to_string(), table.to_string()))
            .cloned()
            .unwrap_or_else(|| (source.to_string(), table.to_string()));
        match self
            .seeds
            .get(&(schema.to_lowercase(), identifier.to_lowercase()))
        {
            Some(seed) => SourceTarget::Seed(seed.clone()),
            None => SourceTarget::Stream(format!("{schema}.{identifier}")),
        }
    }
}

/// A reference found while rendering, with the source line that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub line: usize,
}

/// A rendered model.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub sql: String,
    pub refs: Vec<Reference>,
    /// `(source, stream, line)`.
    pub sources: Vec<(String, String, usize)>,
    /// `config(...)` settings, in call order.
    pub config: Vec<(String, serde_yaml_ng::Value)>,
}

#[derive(Debug, Default)]
struct Capture {
    refs: Vec<String>,
    sources: Vec<(String, String)>,
    config: Vec<(String, serde_yaml_ng::Value)>,
}

/// The line (1-based) of the first line of `sql` containing all of `needles`.
fn line_of(sql: &str, needles: &[&str]) -> usize {
    sql.lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// Render `model` to SQL.
pub fn render(model: &Model, ctx: &RenderContext<'_>) -> Result<Rendered> {
    let capture = Arc::new(Mutex::new(Capture::default()));
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(false);

    let c = capture.clone();
    let resolve = ctx.resolve.clone();
    env.add_function(
        "ref",
        move |args: Rest<String>| -> Result<String, minijinja::Error> {
            let name = match args.len() {
                1 => args[0].clone(),
                2 => args[1].clone(),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "ref() takes a model name: ref('customers')",
                    ));
                }
            };
            if let Ok(mut c) = c.lock() {
                c.refs.push(name.clone());
            }
            Ok(resolve(&name))
        },
    );
    let c = capture.clone();
    let sources = ctx.sources.clone();
    let resolve_seed = ctx.resolve.clone();
    let unit_sources = ctx.unit.map(|u| u.source_prefix.clone());
    env.add_function(
        "source",
        move |source: String, stream: String| -> Result<String, minijinja::Error> {
            let mut c = c.lock().map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "source capture poisoned")
            })?;
            c.sources.push((source.clone(), stream.clone()));
            if let Some(prefix) = &unit_sources {
                return Ok(format!("{prefix}{source}__{stream}"));
            }
            match sources.target(&source, &stream) {
                // Loaded as a seed: read it, and depend on it.
                SourceTarget::Seed(seed) => {
                    c.refs.push(seed.clone());
                    Ok(resolve_seed(&seed))
                }
                SourceTarget::Stream(relation) => Ok(relation),
            }
        },
    );
    env.add_global(
        "config",
        Value::from_object(Config {
            capture: capture.clone(),
            model: model.config.clone(),
        }),
    );
    let vars = model
        .package
        .as_ref()
        .and_then(|p| ctx.package_vars.get(p))
        .unwrap_or(ctx.vars);
    env.add_global("var", var_function(Arc::new(vars.clone())));
    for (ns, scoped) in ctx.package_vars {
        env.add_global(
            format!("__vars__{ns}"),
            var_function(Arc::new(scoped.clone())),
        );
    }
    let incremental = ctx.is_incremental;
    env.add_function("is_incremental", move || incremental);
    // `{{ dbt_utils.x() }}` with no dbt_packages/dbt_utils: say what is missing.
    env.set_unknown_method_callback(|state, value, method, args| {
        if value.is_undefined() {
            return Err(minijinja::Error::new(
                ErrorKind::UnknownMethod,
                format!(
                    "{method}() is called on a macro namespace that is not installed: \
                     ferry runs the packages in dbt_packages/ (fill it with `dbt deps`) \
                     and dbt's own macros as dbt.<name>"
                ),
            ));
        }
        // Python's methods (`dict.items()`, `.values()`, `str.upper()`...),
        // which dbt's Jinja has.
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
    // `{{ return(x) }}` in a macro: its value is the macro's output.
    env.add_function("return", return_value);
    env.add_function("__returning", |m: Value| Value::from_object(Returning(m)));
    // The parts of dbt's context real projects lean on.
    env.add_global(
        "env_var",
        env_var_function(ctx.unit.map(|u| u.env_vars.clone()).unwrap_or_default()),
    );
    env.add_function("log", |msg: Value, rest: Rest<Value>| {
        // log(msg, true) or log(msg, info=true)
        let info = rest.iter().any(|v| {
            v.is_true() && v.kind() != minijinja::value::ValueKind::Map
                || v.get_attr("info").map(|i| i.is_true()).unwrap_or(false)
        });
        if info {
            eprintln!("{msg}");
        } else {
            tracing::debug!("{msg}");
        }
        String::new()
    });
    env.add_function("tojson", |v: Value| -> Result<String, minijinja::Error> {
        serde_json::to_string(&v)
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_function("fromjson", |s: String| -> Result<Value, minijinja::Error> {
        serde_json::from_str::<serde_json::Value>(&s)
            .map(|v| Value::from_serialize(&v))
            .map_err(|e| {
                minijinja::Error::new(ErrorKind::InvalidOperation, format!("fromjson: {e}"))
            })
    });
    // dbt's two passes: parsing (the DAG and config) does not execute,
    // compiling and running do.
    env.add_global("execute", Value::from(ctx.query.is_some()));
    env.add_global("graph", Value::from_serialize(ctx.graph));
    let run = |q: &Option<QueryFn>, sql: &str| -> Result<Value, minijinja::Error> {
        let Some(q) = q else {
            return Ok(Value::from(()));
        };
        let (names, rows) = q(sql).map_err(|e| {
            minijinja::Error::new(ErrorKind::InvalidOperation, format!("run_query: {e}"))
        })?;
        Ok(Value::from_object(AgateTable::new(names, rows)))
    };
    let q = ctx.query.clone();
    env.add_function("run_query", move |sql: String| run(&q, &sql));
    let results: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let (q, r) = (ctx.query.clone(), results.clone());
    // {% call statement('name', fetch_result=True) %}select ...{% endcall %}
    env.add_function(
        "statement",
        move |state: &minijinja::State<'_, '_>,
              name: Option<String>,
              kwargs: Kwargs|
              -> Result<String, minijinja::Error> {
            let caller: Value = kwargs.get("caller")?;
            let fetch = kwargs.get::<Option<bool>>("fetch_result")?.unwrap_or(false);
            let _: Option<Value> = kwargs.get("auto_begin")?;
            let _: Option<Value> = kwargs.get("language")?;
            let sql = caller.call(state, &[])?.to_string();
            let table = run(&q, &sql)?;
            if let (Some(name), Ok(mut r)) = (name, r.lock()) {
                let data: Vec<Value> = if fetch && !table.is_none() {
                    table
                        .get_attr("rows")
                        .ok()
                        .and_then(|rows| rows.try_iter().ok().map(|i| i.collect()))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                r.insert(
                    name,
                    minijinja::context! {
                        table => if fetch { table } else { Value::from(()) },
                        data => data,
                        response => minijinja::context! { code => "OK", rows_affected => 0 },
                    },
                );
            }
            Ok(String::new())
        },
    );
    let r = results.clone();
    env.add_function("load_result", move |name: String| -> Value {
        r.lock()
            .ok()
            .and_then(|r| r.get(&name).cloned())
            .unwrap_or(Value::from(()))
    });
    env.add_global("target", Value::from_serialize(ctx.target));
    env.add_global("modules", modules());
    env.add_global("exceptions", Value::from_object(Exceptions));
    let mut project_ns = None;
    for (name, text) in ctx.namespaces {
        // A package whose macros minijinja cannot read fails only the calls
        // into it, not every model.
        if let Err(e) = env.add_template_owned(template_of(name), wrap_macros(text)) {
            env.add_global(format!("__broken__{name}"), Value::from(e.to_string()));
        }
        env.add_global(
            name.clone(),
            Value::from_object(Namespace { name: name.clone() }),
        );
        if project_ns.is_none() && name != "dbt" {
            project_ns = Some(name.clone());
        }
    }
    env.add_global(
        "adapter",
        Value::from_object(Adapter {
            project: ctx
                .namespaces
                .last()
                .map(|(n, _)| n.clone())
                .unwrap_or_default(),
            dispatch: ctx.dispatch.clone(),
            query: ctx.query.clone(),
        }),
    );
    let _ = project_ns;
    env.add_global(
        "this",
        Value::from(match ctx.unit {
            Some(u) => u.this.clone(),
            None => (ctx.resolve)(&model.name),
        }),
    );
    // A unit test's macro overrides: `name` is set over the macro of that
    // name (after the macros are defined); `ns.name` is checked by calls
    // into the namespace.
    let mut overrides = String::new();
    if let Some(u) = ctx.unit {
        for (name, value) in &u.macros {
            let v = Value::from_serialize(value);
            let f = Value::from_function(move |_: Rest<Value>| v.clone());
            env.add_global(format!("__unit_override__{name}"), f);
            if !name.contains('.') && name != "is_incremental" {
                overrides.push_str(&format!("{{%- set {name} = __unit_override__{name} -%}}"));
            }
        }
    }

    // Macros are prepended so every model can call them without importing.
    let mut prefix = String::new();
    let mut spans = Vec::new();
    for (path, text) in ctx.macros {
        let start = prefix.matches('\n').count();
        prefix.push_str(&wrap_macros(text));
        if !text.ends_with('\n') {
            prefix.push('\n');
        }
        spans.push((path.clone(), start, prefix.matches('\n').count()));
    }
    prefix.push_str(&overrides);
    let offset = prefix.matches('\n').count();
    let source = format!("{prefix}{}", model.sql);
    let rendered = env
        .render_str(&source, ())
        .map_err(|e| template_error(model, &e, offset, &spans))?;
    let sql = rendered.trim().to_string();

    let cap = capture
        .lock()
        .map_err(|_| Error::Internal("render capture poisoned".into()))?;
    let mut refs: Vec<Reference> = Vec::new();
    for name in &cap.refs {
        if !refs.iter().any(|r| &r.name == name) {
            refs.push(Reference {
                name: name.clone(),
                line: line_of(&model.sql, &["ref(", name]),
            });
        }
    }
    let mut sources = Vec::new();
    for (s, t) in &cap.sources {
        if !sources.iter().any(|(a, b, _)| a == s && b == t) {
            sources.push((s.clone(), t.clone(), line_of(&model.sql, &["source(", t])));
        }
    }
    Ok(Rendered {
        sql,
        refs,
        sources,
        config: cap.config.clone(),
    })
}

fn template_error(
    model: &Model,
    e: &minijinja::Error,
    offset: usize,
    spans: &[(String, usize, usize)],
) -> Error {
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    let (file, line) = match e.line() {
        Some(l) if l > offset => (model.path.clone(), Some(l - offset)),
        Some(l) => spans
            .iter()
            .find(|(_, start, end)| l > *start && l <= *end)
            .map(|(p, start, _)| (p.clone(), Some(l - start)))
            .unwrap_or((model.path.clone(), None)),
        None => (model.path.clone(), None),
    };
    let at = line.map(|l| format!(":{l}")).unwrap_or_default();
    Error::Input(format!("{file}{at}: {}{detail}", e.kind()).replace(MACRO_PREFIX, ""))
}
