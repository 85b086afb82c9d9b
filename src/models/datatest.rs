//! `ferry test`: data tests on models.
//!
//! Generic tests come from schema files (`unique`, `not_null`,
//! `accepted_values`, `relationships`); their SQL is in `sql/generic_tests/`.
//! Singular tests are queries in `sql/tests/` that return failing rows; they
//! may use `ref`, `source`, macros and `{{ config(severity='warn') }}`.
//! A test fails when its query returns rows; `severity: warn` reports the
//! failure without failing the command.

use std::collections::BTreeSet;
use std::time::Instant;

use datafusion::execution::context::SessionContext;
use minijinja::{Environment, Value};
use serde_yaml_ng::Value as Yaml;

use super::project::{Model, ModelConfig, Severity, TestSpec};
use super::render;
use super::{Workspace, query_only};
use crate::error::{Error, Result};

const UNIQUE: &str = include_str!("../../sql/generic_tests/unique.sql");
const NOT_NULL: &str = include_str!("../../sql/generic_tests/not_null.sql");
const ACCEPTED_VALUES: &str = include_str!("../../sql/generic_tests/accepted_values.sql");
const RELATIONSHIPS: &str = include_str!("../../sql/generic_tests/relationships.sql");

/// Failing rows shown per failed test.
pub const SAMPLE_ROWS: usize = 5;

/// One test's outcome.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub severity: Severity,
    /// Rows the test query returned (0 = pass).
    pub failures: u64,
    /// Up to [`SAMPLE_ROWS`] failing rows, as a printed table.
    pub sample: String,
    /// The test could not run (bad SQL, missing table).
    pub error: Option<String>,
    pub seconds: f64,
    pub sql: String,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.failures == 0
    }

    /// Whether this result fails the command.
    pub fn blocks(&self) -> bool {
        self.error.is_some() || (self.failures > 0 && self.severity == Severity::Error)
    }
}

/// `'text'` with quotes doubled, numbers and booleans as they are.
fn sql_literal(v: Value) -> String {
    if let Some(s) = v.as_str() {
        format!("'{}'", s.replace('\'', "''"))
    } else if v.is_undefined() || v.is_none() {
        "null".into()
    } else {
        v.to_string()
    }
}

/// `ref('x')` → `x`, `source('a', 'b')` → `a.b`, anything else as is.
fn relation(ws: &Workspace, raw: &str) -> String {
    let inner = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|p| p.trim().trim_matches(['\'', '"']).to_string())
            .collect()
    };
    let raw = raw.trim();
    if let Some(body) = raw.strip_prefix("ref(").and_then(|r| r.strip_suffix(')')) {
        let parts = inner(body);
        let name = parts.last().cloned().unwrap_or_default();
        return (ws.resolver())(&name);
    }
    if let Some(body) = raw
        .strip_prefix("source(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return inner(body).join(".");
    }
    raw.to_string()
}

fn yaml_to_value(y: &Yaml) -> Value {
    Value::from_serialize(y)
}

/// The name dbt would give a generic test.
pub fn test_name(t: &TestSpec) -> String {
    match &t.column {
        Some(c) => format!("{}_{}_{}", t.kind.replace('.', "_"), t.model, c),
        None => format!("{}_{}", t.kind.replace('.', "_"), t.model),
    }
}

/// A YAML value as a Jinja literal (for a test macro's arguments).
fn jinja_literal(v: &Yaml) -> String {
    match v {
        Yaml::Null => "none".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => serde_json::to_string(s).unwrap_or_else(|_| "''".into()),
        Yaml::Sequence(items) => format!(
            "[{}]",
            items
                .iter()
                .map(jinja_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Yaml::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", jinja_literal(k), jinja_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Yaml::Tagged(t) => jinja_literal(&t.value),
    }
}

/// The SQL of a generic test defined as a macro: the macro called with
/// `model` (the relation), `column_name` and the test's arguments.
fn macro_test_sql(ws: &Workspace, t: &TestSpec) -> Result<String> {
    let (ns, mac) = crate::models::project::test_macro(&ws.project.namespaces, &t.kind)
        .ok_or_else(|| Error::Input(format!("{}: unknown test {}", t.origin, t.kind)))?;
    let mut args = vec![format!(
        "model={}",
        serde_json::to_string(&(ws.resolver())(&t.model)).unwrap_or_default()
    )];
    if let Some(c) = &t.column {
        args.push(format!(
            "column_name={}",
            serde_json::to_string(c).unwrap_or_default()
        ));
    }
    // dbt's test configs travel with the arguments in YAML; they are not
    // the macro's.
    const CONFIGS: [&str; 14] = [
        "where",
        "name",
        "tags",
        "meta",
        "description",
        "limit",
        "warn_if",
        "error_if",
        "store_failures",
        "enabled",
        "alias",
        "schema",
        "database",
        "fail_calc",
    ];
    for (k, v) in &t.args {
        if CONFIGS.contains(&k.as_str()) {
            continue;
        }
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Input(format!(
                "{}: test argument `{k}` is not a name a macro can take",
                t.origin
            )));
        }
        args.push(format!("{k}={}", jinja_literal(v)));
    }
    let call = if t.kind.contains('.') {
        format!("{{{{ {ns}.{mac}({}) }}}}", args.join(", "))
    } else {
        format!("{{{{ {mac}({}) }}}}", args.join(", "))
    };
    let pseudo = Model {
        package: None,
        name: t.model.clone(),
        path: t.origin.clone(),
        sql: call,
        config: ModelConfig::default(),
        description: None,
        columns: Vec::new(),
    };
    let rctx = ws.project.render_context(false, ws.resolver());
    let rendered = render::render(&pseudo, &rctx)?;
    Ok(strip_comments(rendered.sql.trim().trim_end_matches(';')))
}

/// The SQL of a generic test.
pub fn generic_sql(ws: &Workspace, t: &TestSpec) -> Result<String> {
    let template = match t.kind.as_str() {
        "unique" => UNIQUE,
        "not_null" => NOT_NULL,
        "accepted_values" => ACCEPTED_VALUES,
        "relationships" => RELATIONSHIPS,
        _ => return macro_test_sql(ws, t),
    };
    let mut env = Environment::new();
    env.add_filter("sql_literal", sql_literal);
    let to = t
        .args
        .get("to")
        .and_then(|v| v.as_str())
        .map(|s| relation(ws, s))
        .unwrap_or_default();
    let ctx = minijinja::context! {
        model => (ws.resolver())(&t.model),
        column => t.column.clone().unwrap_or_default(),
        values => t.args.get("values").map(yaml_to_value).unwrap_or_default(),
        to => to,
        field => t.args.get("field").and_then(|v| v.as_str()).unwrap_or_default(),
    };
    let sql = env
        .render_str(template, ctx)
        .map_err(|e| Error::Input(format!("{}: {e}", t.origin)))?;
    Ok(strip_comments(&sql))
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

async fn execute(ctx: &SessionContext, sql: &str) -> Result<(u64, String)> {
    let counted = format!("select count(*) from (\n{sql}\n) as failures");
    let n = ctx
        .sql_with_options(&counted, query_only())
        .await?
        .collect()
        .await?;
    let failures = n
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0)
        .max(0) as u64;
    let sample = if failures > 0 {
        let rows = ctx
            .sql_with_options(
                &format!("select * from (\n{sql}\n) as failures limit {SAMPLE_ROWS}"),
                query_only(),
            )
            .await?
            .collect()
            .await?;
        arrow::util::pretty::pretty_format_batches(&rows)?.to_string()
    } else {
        String::new()
    };
    Ok((failures, sample))
}

async fn run_one(
    ctx: &SessionContext,
    name: String,
    severity: Severity,
    sql: String,
) -> TestResult {
    let t = Instant::now();
    let (failures, sample, error) = match execute(ctx, &sql).await {
        Ok((f, s)) => (f, s, None),
        Err(e) => (0, String::new(), Some(e.to_string())),
    };
    TestResult {
        name,
        severity,
        failures,
        sample,
        error,
        seconds: t.elapsed().as_secs_f64(),
        sql,
    }
}

/// Run the tests of `selected` models (generic ones on them, singular ones
/// that ref them; with no selection, all).
/// Why a column test cannot run because its model has no such column:
/// the schema file's line, the column, the nearest names. `None` when the
/// column is there, or the model cannot be read (the test's own run then
/// reports that).
pub async fn missing_column(ws: &Workspace, ctx: &SessionContext, t: &TestSpec) -> Option<String> {
    let column = t.column.as_ref()?;
    let relation = (ws.resolver())(&t.model);
    let df = ctx
        .sql(&format!("select * from {relation} limit 0"))
        .await
        .ok()?;
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if names.iter().any(|n| n == column) {
        return None;
    }
    Some(format!(
        "{}: test {} is declared on column {column:?}, which model {} does not have{}. \
         Fix the column's name in the schema file, or add the column to the model",
        t.origin,
        t.kind,
        t.model,
        super::project::suggest(column, &names)
    ))
}

pub async fn run(
    ws: &Workspace,
    ctx: &SessionContext,
    selected: &BTreeSet<String>,
) -> Result<Vec<TestResult>> {
    let mut out = Vec::new();
    for t in &ws.project.tests {
        if !selected.contains(&t.model) {
            continue;
        }
        let name = test_name(t);
        if let Some(why) = missing_column(ws, ctx, t).await {
            out.push(TestResult {
                name,
                severity: t.severity,
                failures: 0,
                sample: String::new(),
                error: Some(why),
                seconds: 0.0,
                sql: String::new(),
            });
            continue;
        }
        match generic_sql(ws, t) {
            Ok(sql) => out.push(run_one(ctx, name, t.severity, sql).await),
            Err(e) => out.push(TestResult {
                name,
                severity: t.severity,
                failures: 0,
                sample: String::new(),
                error: Some(e.to_string()),
                seconds: 0.0,
                sql: String::new(),
            }),
        }
    }
    for st in &ws.project.singular_tests {
        let pseudo = Model {
            package: None,
            name: st.name.clone(),
            path: st.path.clone(),
            sql: st.sql.clone(),
            config: ModelConfig::default(),
            description: None,
            columns: Vec::new(),
        };
        let rctx = ws.project.render_context(false, ws.resolver());
        let rendered = render::render(&pseudo, &rctx)?;
        let touches = rendered.refs.iter().any(|r| selected.contains(&r.name))
            || (rendered.refs.is_empty() && selected.len() == ws.dag.parents.len());
        if !touches {
            continue;
        }
        let mut severity = Severity::Error;
        for (k, v) in &rendered.config {
            if k == "severity" && v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("warn")) {
                severity = Severity::Warn;
            }
        }
        let sql = rendered.sql.trim().trim_end_matches(';').to_string();
        out.push(run_one(ctx, st.name.clone(), severity, sql).await);
    }
    Ok(out)
}
