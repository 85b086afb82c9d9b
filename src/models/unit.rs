//! dbt unit tests (`unit_tests:` in schema files, dbt 1.8+): a model run on
//! mock inputs and its output compared with the expected rows.
//!
//! Each test runs in its own in-memory session: every `ref` and `source`
//! the model uses reads a mock table built from `given` (a seed that is not
//! given reads its CSV), `this` reads the `this` input, so nothing in the
//! lake is read or written. Mock rows take the column types of the real
//! upstream relation when it can be planned (missing columns are NULL of
//! that type), else the types of their values. `expect` is compared on its
//! own columns, as a multiset (order does not matter); a failure prints the
//! rows that differ.
//!
//! Fixtures: `format: dict` (a list of maps, the default), `csv` (text, or
//! `fixture: name` for `<test-paths>/fixtures/name.csv`) or `sql` (a query,
//! or `fixture: name` for `.../name.sql`). Overrides: `vars`, `env_vars`,
//! `macros` (`is_incremental` picks the incremental branch; any other name,
//! or `package.name`, returns the given value).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::context::SessionContext;
use serde_yaml_ng::Value as Yaml;

use super::render::{self, RenderContext, Resolver, SourceTarget, UnitRender};
use super::{Workspace, query_only};
use crate::error::{Error, Result};

/// Where a mock comes from: `ref('m')`, `source('s', 't')` or `this`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Ref(String),
    Source(String, String),
    This,
}

/// Rows of a fixture.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// A list of `{column: value}` maps; the columns in order of appearance.
    Dict(Vec<String>, Vec<BTreeMap<String, Yaml>>),
    /// CSV text with a header.
    Csv(String),
    /// A query returning the rows.
    Sql(String),
}

/// One `unit_tests:` entry.
#[derive(Debug, Clone)]
pub struct UnitTest {
    pub name: String,
    pub model: String,
    pub given: Vec<(Input, Rows)>,
    pub expect: Rows,
    pub vars: BTreeMap<String, serde_json::Value>,
    pub env_vars: BTreeMap<String, String>,
    pub macros: BTreeMap<String, serde_json::Value>,
    pub tags: Vec<String>,
    pub enabled: bool,
    /// The schema file declaring it.
    pub origin: String,
}

/// `ref('a')`, `ref("pkg", "a")`, `source('s', 't')`, `this`.
fn parse_input(raw: &str, origin: &str) -> Result<Input> {
    let raw = raw.trim();
    let args = |body: &str| -> Vec<String> {
        body.split(',')
            .map(|p| p.trim().trim_matches(['\'', '"']).to_string())
            .filter(|p| !p.is_empty())
            .collect()
    };
    if raw == "this" {
        return Ok(Input::This);
    }
    if let Some(body) = raw.strip_prefix("ref(").and_then(|r| r.strip_suffix(')'))
        && let Some(name) = args(body).last()
    {
        return Ok(Input::Ref(name.clone()));
    }
    if let Some(body) = raw
        .strip_prefix("source(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let a = args(body);
        if a.len() == 2 {
            return Ok(Input::Source(a[0].clone(), a[1].clone()));
        }
    }
    Err(Error::Input(format!(
        "{origin}: input {raw:?}: write ref('model'), source('source', 'table') or this"
    )))
}

/// A fixture: `rows:` in `format:` (dict by default), or `fixture: name`.
fn parse_rows(node: &Yaml, fixtures: &Path, origin: &str, what: &str) -> Result<Rows> {
    let format = node.get("format").and_then(Yaml::as_str).unwrap_or("dict");
    let fixture = node.get("fixture").and_then(Yaml::as_str);
    let rows = node.get("rows");
    let from_file = |ext: &str| -> Result<String> {
        let name = fixture.unwrap_or_default();
        let path = fixtures.join(format!("{name}.{ext}"));
        std::fs::read_to_string(&path).map_err(|e| {
            Error::Input(format!(
                "{origin}: {what}: fixture {name}: cannot read {} ({e})",
                path.display()
            ))
        })
    };
    match format {
        "dict" => {
            if fixture.is_some() {
                return Err(Error::Input(format!(
                    "{origin}: {what}: a fixture file is csv or sql: set `format: csv` or `format: sql`"
                )));
            }
            let items = match rows {
                None | Some(Yaml::Null) => Vec::new(),
                Some(Yaml::Sequence(items)) => items.clone(),
                Some(_) => {
                    return Err(Error::Input(format!(
                        "{origin}: {what}: rows is a list of maps, e.g. rows: [{{id: 1, name: a}}]"
                    )));
                }
            };
            let mut out = Vec::new();
            let mut columns: Vec<String> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Yaml::Mapping(m) = item else {
                    return Err(Error::Input(format!(
                        "{origin}: {what}: row {} is not a map of column: value",
                        i + 1
                    )));
                };
                let mut row = BTreeMap::new();
                for (k, v) in m {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    if !columns.contains(&k) {
                        columns.push(k.clone());
                    }
                    row.insert(k, v.clone());
                }
                out.push(row);
            }
            Ok(Rows::Dict(columns, out))
        }
        "csv" => match (rows.and_then(Yaml::as_str), fixture) {
            (Some(t), _) => Ok(Rows::Csv(t.to_string())),
            (None, Some(_)) => Ok(Rows::Csv(from_file("csv")?)),
            (None, None) => Err(Error::Input(format!(
                "{origin}: {what}: format csv needs rows: | (CSV text with a header) or fixture: <name>"
            ))),
        },
        "sql" => match (rows.and_then(Yaml::as_str), fixture) {
            (Some(t), _) => Ok(Rows::Sql(t.to_string())),
            (None, Some(_)) => Ok(Rows::Sql(from_file("sql")?)),
            (None, None) => Err(Error::Input(format!(
                "{origin}: {what}: format sql needs rows: | (a select) or fixture: <name>"
            ))),
        },
        other => Err(Error::Input(format!(
            "{origin}: {what}: format {other:?}; expected dict, csv or sql"
        ))),
    }
}

fn json_map(v: Option<&Yaml>) -> BTreeMap<String, serde_json::Value> {
    match v {
        Some(Yaml::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str()?.to_string(),
                    serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                ))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Parse one `unit_tests:` entry of the schema file `origin`.
pub fn parse(node: &Yaml, fixtures: &Path, origin: &str) -> Result<UnitTest> {
    let name = node
        .get("name")
        .and_then(Yaml::as_str)
        .ok_or_else(|| Error::Input(format!("{origin}: a unit test needs name:")))?
        .to_string();
    let origin = format!("{origin} (unit test {name})");
    let model = node
        .get("model")
        .and_then(Yaml::as_str)
        .ok_or_else(|| Error::Input(format!("{origin}: needs model: <the model it tests>")))?
        .to_string();
    let mut given = Vec::new();
    if let Some(Yaml::Sequence(items)) = node.get("given") {
        for item in items {
            let raw = item.get("input").and_then(Yaml::as_str).ok_or_else(|| {
                Error::Input(format!(
                    "{origin}: each given entry needs input: ref('...')"
                ))
            })?;
            let input = parse_input(raw, &origin)?;
            given.push((input, parse_rows(item, fixtures, &origin, raw)?));
        }
    }
    let expect = node
        .get("expect")
        .ok_or_else(|| Error::Input(format!("{origin}: needs expect: {{rows: [...]}}")))?;
    let expect = parse_rows(expect, fixtures, &origin, "expect")?;
    let overrides = node.get("overrides");
    let config = node.get("config");
    let tags = match config.and_then(|c| c.get("tags")) {
        Some(Yaml::String(s)) => vec![s.clone()],
        Some(Yaml::Sequence(v)) => v
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    Ok(UnitTest {
        model,
        given,
        expect,
        vars: json_map(overrides.and_then(|o| o.get("vars"))),
        env_vars: json_map(overrides.and_then(|o| o.get("env_vars")))
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect(),
        macros: json_map(overrides.and_then(|o| o.get("macros"))),
        tags,
        enabled: config
            .and_then(|c| c.get("enabled"))
            .and_then(Yaml::as_bool)
            .unwrap_or(true),
        name,
        origin,
    })
}

/// One unit test's outcome.
#[derive(Debug, Clone)]
pub struct UnitResult {
    pub name: String,
    pub model: String,
    /// The rows that differ, as a printed diff; empty when it passed.
    pub diff: String,
    /// Rows that differ (actual-only plus expected-only).
    pub differing: usize,
    /// It could not run (a missing input, SQL that does not plan).
    pub error: Option<String>,
    pub seconds: f64,
}

impl UnitResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.differing == 0
    }
}

fn mock_name(input: &Input) -> String {
    match input {
        Input::Ref(n) => format!("__unit_ref__{n}"),
        Input::Source(s, t) => format!("__unit_src__{s}__{t}"),
        Input::This => "__unit_this".to_string(),
    }
}

/// A YAML scalar as a SQL literal.
fn literal(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => format!("'{}'", s.replace('\'', "''")),
        Yaml::Tagged(t) => literal(&t.value),
        other => format!(
            "'{}'",
            serde_json::to_string(other)
                .unwrap_or_default()
                .replace('\'', "''")
        ),
    }
}

fn quote(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

/// CSV text as dict rows of strings (an empty field is NULL).
/// Column names in order, and rows by column.
type Table = (Vec<String>, Vec<BTreeMap<String, Yaml>>);

fn csv_rows(text: &str, origin: &str) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.trim().as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::Input(format!("{origin}: csv header: {e}")))?
        .clone();
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::Input(format!("{origin}: csv line {}: {e}", i + 2)))?;
        let mut row = BTreeMap::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            let v = if v.is_empty() {
                Yaml::Null
            } else {
                Yaml::String(v.to_string())
            };
            row.insert(h.to_string(), v);
        }
        out.push(row);
    }
    Ok((headers.iter().map(str::to_string).collect(), out))
}

/// The SQL of a fixture as a relation. With `schema`, every column of it
/// is there, cast to its type (NULL where the rows do not give it); rows
/// naming a column the schema lacks are refused.
fn fixture_sql(rows: &Rows, schema: Option<&SchemaRef>, what: &str) -> Result<String> {
    let (order, dict) = match rows {
        Rows::Sql(sql) => return Ok(sql.trim().trim_end_matches(';').to_string()),
        Rows::Dict(c, d) => (c.clone(), d.clone()),
        Rows::Csv(text) => csv_rows(text, what)?,
    };
    let columns: Vec<(String, Option<DataType>)> = match schema {
        Some(s) => {
            for row in &dict {
                for k in row.keys() {
                    if s.field_with_name(k).is_err() {
                        let have: Vec<&str> =
                            s.fields().iter().map(|f| f.name().as_str()).collect();
                        return Err(Error::Input(format!(
                            "{what}: column {k} is not a column of the input (it has {})",
                            have.join(", ")
                        )));
                    }
                }
            }
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), Some(f.data_type().clone())))
                .collect()
        }
        None => order.into_iter().map(|c| (c, None)).collect(),
    };
    let select = |row: Option<&BTreeMap<String, Yaml>>| -> String {
        columns
            .iter()
            .map(|(c, t)| {
                let v = row
                    .and_then(|r| r.get(c))
                    .map(literal)
                    .unwrap_or_else(|| "null".into());
                match t {
                    Some(t) => format!("arrow_cast({v}, '{t}') as {}", quote(c)),
                    None => format!("{v} as {}", quote(c)),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if columns.is_empty() {
        return Err(Error::Input(format!(
            "{what}: no columns: give rows with at least one column"
        )));
    }
    if dict.is_empty() {
        return Ok(format!("select {} where false", select(None)));
    }
    Ok(dict
        .iter()
        .map(|r| format!("select {}", select(Some(r))))
        .collect::<Vec<_>>()
        .join("\nunion all\n"))
}

/// The schema of `relation` in `planning` (the project's views, seeds and
/// lake tables), if it can be planned.
async fn schema_of(planning: &SessionContext, relation: &str) -> Option<SchemaRef> {
    let df = planning.table(relation).await.ok()?;
    Some(Arc::new(df.schema().as_arrow().clone()))
}

/// Each row of `batches` (the given columns) as text.
fn row_texts(batches: &[RecordBatch], columns: &[String]) -> Result<Vec<Vec<String>>> {
    let opts = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for b in batches {
        let mut formatters = Vec::new();
        for c in columns {
            let i = b
                .schema()
                .index_of(c)
                .map_err(|_| Error::Input(format!("the model's output has no column {c}")))?;
            formatters.push(ArrayFormatter::try_new(b.column(i).as_ref(), &opts)?);
        }
        for r in 0..b.num_rows() {
            out.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Ok(out)
}

/// The rows only in `actual` (+) and only in `expected` (-), as multisets.
fn diff(actual: &[Vec<String>], expected: &[Vec<String>]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut counts: BTreeMap<&Vec<String>, i64> = BTreeMap::new();
    for r in actual {
        *counts.entry(r).or_default() += 1;
    }
    for r in expected {
        *counts.entry(r).or_default() -= 1;
    }
    let mut extra = Vec::new();
    let mut missing = Vec::new();
    for (r, n) in counts {
        for _ in 0..n.max(0) {
            extra.push(r.clone());
        }
        for _ in 0..(-n).max(0) {
            missing.push(r.clone());
        }
    }
    (extra, missing)
}

/// The diff as dbt prints it: `+++` rows the model returned but were not
/// expected, `---` expected rows it did not return, the rest matched.
fn print_diff(
    columns: &[String],
    matched: &[Vec<String>],
    extra: &[Vec<String>],
    missing: &[Vec<String>],
) -> String {
    let mut rows: Vec<(&str, &Vec<String>)> = Vec::new();
    rows.extend(matched.iter().map(|r| ("   ", r)));
    rows.extend(extra.iter().map(|r| ("+++", r)));
    rows.extend(missing.iter().map(|r| ("---", r)));
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for (_, r) in &rows {
        for (w, v) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(v.len());
        }
    }
    let line = |mark: &str, cells: &[String]| -> String {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{mark} | {} |", cells.join(" | "))
    };
    let mut out = vec![
        "actual differs from expected (+++ returned but not expected, --- expected but not returned):".to_string(),
        line("@@ ", columns),
    ];
    for (mark, r) in rows {
        out.push(line(mark, r));
    }
    out.join("\n")
}

/// Run one unit test. `planning` has the project's relations registered
/// (for the mocks' column types); the test itself runs in a session of its own.
pub async fn run_one(
    ws: &Workspace,
    planning: &SessionContext,
    t: &UnitTest,
) -> Result<UnitResult> {
    let started = Instant::now();
    let model = ws.model(&t.model).map_err(|_| {
        Error::Input(format!(
            "{}: model {} does not exist{}",
            t.origin,
            t.model,
            super::project::suggest(&t.model, ws.project.models.iter().map(|m| &m.name))
        ))
    })?;
    let given: BTreeMap<Input, &Rows> = t.given.iter().map(|(i, r)| (i.clone(), r)).collect();
    // Refs to given inputs read the mocks; ephemeral upstreams are inlined as
    // CTEs by final_sql only for real runs, so a unit test mocks them too.
    let names: BTreeSet<String> = given
        .keys()
        .filter_map(|i| match i {
            Input::Ref(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let resolve: Resolver = Arc::new(move |n: &str| {
        if names.contains(n) {
            mock_name(&Input::Ref(n.to_string()))
        } else {
            n.to_string()
        }
    });
    let mut vars = ws.project.vars.clone();
    vars.extend(t.vars.clone());
    let incremental = t
        .macros
        .get("is_incremental")
        .map(|v| v.as_bool().unwrap_or(false))
        .unwrap_or(false);
    let unit = UnitRender {
        source_prefix: "__unit_src__".into(),
        this: mock_name(&Input::This),
        macros: t.macros.clone(),
        env_vars: t.env_vars.clone(),
    };
    let ctx = RenderContext {
        vars: &vars,
        unit: Some(&unit),
        ..ws.project.render_context(incremental, resolve)
    };
    let rendered = render::render(model, &ctx)?;

    let session = crate::engine::memory_session();
    // Every input the model reads must be given, except seeds (their CSV).
    for r in &rendered.refs {
        if given.contains_key(&Input::Ref(r.name.clone())) {
            continue;
        }
        match ws.project.seeds.iter().find(|s| s.name == r.name) {
            Some(seed) => {
                let df = super::seed::read(&session, seed).await?;
                session.register_table(seed.name.as_str(), df.into_view())?;
            }
            None => {
                return Err(Error::Input(format!(
                    "{}: {}:{} reads ref('{}'), which the test does not give: add it under given: \
                     (- input: ref('{}') with rows:)",
                    t.origin, model.path, r.line, r.name, r.name
                )));
            }
        }
    }
    for (s, tb, line) in &rendered.sources {
        if !given.contains_key(&Input::Source(s.clone(), tb.clone())) {
            return Err(Error::Input(format!(
                "{}: {}:{line} reads source('{s}', '{tb}'), which the test does not give: add it under given:",
                t.origin, model.path
            )));
        }
    }
    if rendered.sql.contains(&mock_name(&Input::This)) && !given.contains_key(&Input::This) {
        return Err(Error::Input(format!(
            "{}: the model reads {{{{ this }}}} (is_incremental is true): give its rows with - input: this",
            t.origin
        )));
    }
    for (input, rows) in &t.given {
        let real = match input {
            Input::Ref(n) => Some(n.clone()),
            Input::Source(s, tb) => Some(match ws.project.source_map.target(s, tb) {
                SourceTarget::Seed(name) | SourceTarget::Stream(name) => name,
            }),
            Input::This => Some(t.model.clone()),
        };
        let schema = match real {
            Some(r) => schema_of(planning, &r).await,
            None => None,
        };
        let what = format!("{} given {input:?}", t.origin);
        let sql = fixture_sql(rows, schema.as_ref(), &what)?;
        let df = session
            .sql_with_options(&sql, query_only())
            .await
            .map_err(|e| Error::Input(format!("{what}: {e}")))?;
        session.register_table(mock_name(input).as_str(), df.into_view())?;
    }
    let sql = rendered.sql.trim().trim_end_matches(';').to_string();
    let actual_df = session
        .sql_with_options(&sql, query_only())
        .await
        .map_err(|e| super::model_error(model, &sql, &e.to_string()))?;
    let out_schema: SchemaRef = Arc::new(actual_df.schema().as_arrow().clone());
    let actual = actual_df
        .collect()
        .await
        .map_err(|e| super::model_error(model, &sql, &e.to_string()))?;
    // Expected rows take the output's types, on the columns they name.
    let expected_columns: Vec<String> = match &t.expect {
        Rows::Dict(columns, _) => columns.clone(),
        Rows::Csv(text) => csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.trim().as_bytes())
            .headers()
            .map(|h| h.iter().map(str::to_string).collect())
            .unwrap_or_default(),
        Rows::Sql(_) => Vec::new(),
    };
    let what = format!("{} expect", t.origin);
    let (expected_sql, columns) = match &t.expect {
        Rows::Sql(_) => (fixture_sql(&t.expect, None, &what)?, None),
        _ => {
            for c in &expected_columns {
                if out_schema.field_with_name(c).is_err() {
                    return Err(Error::Input(format!(
                        "{what}: column {c} is not in the output of {} (it has {})",
                        t.model,
                        out_schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            let projected = Arc::new(
                out_schema.project(
                    &expected_columns
                        .iter()
                        .filter_map(|c| out_schema.index_of(c).ok())
                        .collect::<Vec<_>>(),
                )?,
            );
            (
                fixture_sql(&t.expect, Some(&projected), &what)?,
                Some(expected_columns),
            )
        }
    };
    let expected = session
        .sql_with_options(&expected_sql, query_only())
        .await
        .map_err(|e| Error::Input(format!("{what}: {e}")))?
        .collect()
        .await
        .map_err(|e| Error::Input(format!("{what}: {e}")))?;
    let columns = match columns {
        Some(c) => c,
        None => expected
            .first()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let a = row_texts(&actual, &columns)?;
    let e = row_texts(&expected, &columns)?;
    let (extra, missing) = diff(&a, &e);
    let differing = extra.len() + missing.len();
    let text = if differing == 0 {
        String::new()
    } else {
        let (matched, _) = diff(&a, &extra);
        print_diff(&columns, &matched, &extra, &missing)
    };
    Ok(UnitResult {
        name: t.name.clone(),
        model: t.model.clone(),
        diff: text,
        differing,
        error: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Run the unit tests of the `selected` models.
pub async fn run(
    ws: &Workspace,
    planning: &SessionContext,
    selected: &BTreeSet<String>,
) -> Vec<UnitResult> {
    let mut out = Vec::new();
    for t in ws.project.unit_tests.iter().filter(|t| t.enabled) {
        if !selected.contains(&t.model) {
            continue;
        }
        let started = Instant::now();
        out.push(match run_one(ws, planning, t).await {
            Ok(r) => r,
            Err(e) => UnitResult {
                name: t.name.clone(),
                model: t.model.clone(),
                diff: String::new(),
                differing: 0,
                error: Some(e.to_string()),
                seconds: started.elapsed().as_secs_f64(),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn the_diff_is_a_multiset_difference() {
        let a = rows(&[&["1", "x"], &["1", "x"], &["2", "y"]]);
        let e = rows(&[&["1", "x"], &["3", "z"], &["2", "y"]]);
        let (extra, missing) = diff(&a, &e);
        assert_eq!(extra, rows(&[&["1", "x"]]));
        assert_eq!(missing, rows(&[&["3", "z"]]));
        let (extra, missing) = diff(&e, &e);
        assert!(extra.is_empty() && missing.is_empty());
    }

    #[test]
    fn inputs_parse_as_dbt_writes_them() {
        assert_eq!(
            parse_input("ref('stg_orders')", "x").unwrap(),
            Input::Ref("stg_orders".into())
        );
        assert_eq!(
            parse_input("ref(\"pkg\", \"m\")", "x").unwrap(),
            Input::Ref("m".into())
        );
        assert_eq!(
            parse_input("source('ecom', 'raw_orders')", "x").unwrap(),
            Input::Source("ecom".into(), "raw_orders".into())
        );
        assert_eq!(parse_input("this", "x").unwrap(), Input::This);
        assert!(parse_input("orders", "x").is_err());
    }
}
