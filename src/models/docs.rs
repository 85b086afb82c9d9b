//! `ferry docs`: a JSON manifest and one self-contained HTML page of the
//! project: every source, seed, model and sync as a node of the DAG, each
//! with its SQL, columns (SQL type names), descriptions, data tests and
//! their last results, last run and freshness, and column-level lineage
//! from DataFusion's logical plans: a CRM field links to the model column
//! it is sent from, and so on back to the raw vendor column.
//!
//! Lineage: each model is planned with its upstream models registered as
//! empty tables of their output schema, so the plan's table scans are the
//! model's direct inputs. Each output column is then traced back through the
//! plan (projections, aggregates, windows, joins, unions, subquery aliases,
//! CTEs) to the input columns it is computed from.
//!
//! The page is `docs.html` (beside this file) with the manifest inlined:
//! no script or style is fetched from anywhere, so it opens from disk, and
//! `ferry docs --serve` serves the same file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{JoinType, LogicalPlan};
use serde::Serialize;

use super::render::SourceTarget;
use super::{Materialized, Workspace, plan_model};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// The page; `/*FERRY_MANIFEST*/null` is replaced by the manifest.
const PAGE: &str = include_str!("docs.html");
const SLOT: &str = "/*FERRY_MANIFEST*/null";

/// The manifest's shape version (the page reads this one).
pub const VERSION: u32 = 2;

/// One upstream column an output column is computed from, as the plan
/// names it (a model, seed or lake stream).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Upstream {
    pub table: String,
    pub column: String,
}

/// A lineage link: a column of another node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LineageRef {
    /// `source.crm.contacts`, `seed.countries`, `model.stg_contacts`.
    pub node: String,
    pub column: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnDoc {
    pub name: String,
    /// SQL type name (`VARCHAR`, `BIGINT`, `TIMESTAMP`...); for a sync's
    /// fields, what the CRM calls them (`property`, `field`).
    #[serde(rename = "type")]
    pub data_type: String,
    pub description: Option<String>,
    pub lineage: Vec<LineageRef>,
    /// The kinds of data test declared on it.
    pub tests: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub column: Option<String>,
    /// From the last `ferry test` or `ferry build` (target/run_results.json):
    /// `pass`, `fail`, `warn`, `error`, or `not run`.
    pub status: String,
    pub failures: Option<u64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDoc {
    pub status: String,
    pub rows: Option<u64>,
    pub seconds: f64,
    pub finished_at: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FreshnessDoc {
    /// Sources: when the newest file landed; models: the last successful build.
    pub loaded_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: String,
    /// The CRM field records are matched on.
    #[serde(rename = "match")]
    pub key: String,
    pub mode: String,
}

/// One source, seed, model or sync.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDoc {
    /// `<kind>.<name>`.
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub path: Option<String>,
    pub folder: String,
    pub layer: String,
    pub materialized: Option<String>,
    /// Where dbt would create it (`schema.alias`).
    pub relation: Option<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub depends_on: Vec<String>,
    pub referenced_by: Vec<String>,
    pub raw_sql: Option<String>,
    pub compiled_sql: Option<String>,
    pub columns: Vec<ColumnDoc>,
    pub tests: Vec<TestDoc>,
    pub last_run: Option<RunDoc>,
    pub freshness: Option<FreshnessDoc>,
    pub destination: Option<DestinationDoc>,
    /// Why a model could not be planned (its input not landed yet, a SQL
    /// error): its columns are then the documented ones, untyped.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub version: u32,
    pub project: String,
    pub generated_at: String,
    pub nodes: Vec<NodeDoc>,
}

impl Manifest {
    pub fn node(&self, id: &str) -> Option<&NodeDoc> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn count(&self, kind: &str) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }
}

/// An Arrow type by its SQL name, as analysts write it in a cast.
pub fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Null => "NULL".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INTEGER UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Duration(_) | DataType::Interval(_) => "INTERVAL".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => format!("{}[]", sql_type(f.data_type())),
        DataType::Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::Map(f, _) => match f.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP({}, {})",
                sql_type(kv[0].data_type()),
                sql_type(kv[1].data_type())
            ),
            _ => "MAP".into(),
        },
        DataType::Dictionary(_, v) => sql_type(v),
        DataType::RunEndEncoded(_, v) => sql_type(v.data_type()),
        DataType::Union(..) => "UNION".into(),
    }
}

/// Trace output column `idx` of `plan` to the table columns it reads.
pub fn trace(plan: &LogicalPlan, idx: usize, out: &mut BTreeSet<Upstream>) {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if let Some(f) = scan.projected_schema.fields().get(idx) {
                out.insert(Upstream {
                    table: scan.table_name.to_string(),
                    column: f.name().clone(),
                });
            }
        }
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(idx) {
                trace_expr_refs(&p.input, e, out);
            }
        }
        LogicalPlan::Aggregate(a) => {
            let groups = a.group_expr.len();
            let e = if idx < groups {
                a.group_expr.get(idx)
            } else {
                a.aggr_expr.get(idx - groups)
            };
            if let Some(e) = e {
                trace_expr_refs(&a.input, e, out);
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if idx < n {
                trace(&w.input, idx, out);
            } else if let Some(e) = w.window_expr.get(idx - n) {
                trace_expr_refs(&w.input, e, out);
            }
        }
        LogicalPlan::Join(j) => {
            let n = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    trace(&j.left, idx, out)
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    trace(&j.right, idx, out)
                }
                _ if idx < n => trace(&j.left, idx, out),
                _ => trace(&j.right, idx - n, out),
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                trace(input, idx, out);
            }
        }
        other => {
            // Filters, sorts, limits, aliases, distincts...: same columns as their input.
            let inputs = other.inputs();
            if let [input] = inputs.as_slice() {
                if input.schema().fields().len() == other.schema().fields().len() {
                    trace(input, idx, out);
                    return;
                }
                // Otherwise match by name.
                if let Some(f) = other.schema().fields().get(idx)
                    && let Some(j) = input.schema().index_of_column_by_name(None, f.name())
                {
                    trace(input, j, out);
                }
            }
        }
    }
}

fn trace_expr_refs(
    input: &LogicalPlan,
    e: &datafusion::logical_expr::Expr,
    out: &mut BTreeSet<Upstream>,
) {
    for c in e.column_refs() {
        if let Some(j) = input.schema().maybe_index_of_column(c) {
            trace(input, j, out);
        }
    }
}

/// Where a model or seed file sits: its folder under the project's model
/// (or seed) folder, and the layer (the folder's first part).
fn folder_of(path: &str) -> (String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    let folder = if parts.len() > 2 {
        parts[1..parts.len() - 1].join("/")
    } else {
        String::new()
    };
    let layer = folder.split('/').next().unwrap_or("").to_string();
    (folder, layer)
}

/// Rows of a query on ferry's own tables, or none when they cannot be read
/// (a lake with no runs yet).
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<serde_json::Value> {
    let Ok(df) = ctx.sql(sql).await else {
        return Vec::new();
    };
    let Ok(batches) = df.collect().await else {
        return Vec::new();
    };
    crate::lake::log::batch_rows_json(&batches).unwrap_or_default()
}

/// Results of the last `ferry test` or `ferry build` by unique id, from
/// `target/run_results.json`.
fn test_results(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let path = dir.join("target").join("run_results.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return BTreeMap::new();
    };
    doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["unique_id"].as_str()?.to_string(), r.clone())))
        .collect()
}

fn columns_of(schema: &SchemaRef) -> Vec<ColumnDoc> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnDoc {
            name: f.name().clone(),
            data_type: sql_type(f.data_type()),
            description: None,
            lineage: Vec::new(),
            tests: Vec::new(),
        })
        .collect()
}

/// Build the manifest: plan every model with its inputs as empty tables.
pub async fn manifest(
    ws: &Workspace,
    ctx: &SessionContext,
    lake: &Lake,
    own: &str,
) -> Result<Manifest> {
    super::seed::register_for_planning(ctx, lake, &ws.project).await?;
    let project = &ws.project;
    let models: BTreeSet<String> = project.models.iter().map(|m| m.name.clone()).collect();
    let seed_names: BTreeSet<String> = project.seeds.iter().map(|s| s.name.clone()).collect();
    // A table name in a plan, as a node id.
    let id_of = |table: &str| -> String {
        let t = table
            .trim_start_matches("datafusion.")
            .trim_start_matches(super::CTE_PREFIX);
        if models.contains(t) {
            format!("model.{t}")
        } else if seed_names.contains(t) {
            format!("seed.{t}")
        } else {
            format!("source.{t}")
        }
    };
    // Seeds as plain tables, so lineage stops at them by name.
    let mut nodes: Vec<NodeDoc> = Vec::new();
    for seed in &project.seeds {
        let schema = Arc::new(
            ctx.table(seed.name.as_str())
                .await?
                .schema()
                .as_arrow()
                .clone(),
        );
        ctx.deregister_table(seed.name.as_str())?;
        ctx.register_table(
            seed.name.as_str(),
            Arc::new(EmptyTable::new(schema.clone())),
        )?;
        let path = seed
            .path
            .strip_prefix(&project.dir)
            .unwrap_or(&seed.path)
            .to_string_lossy()
            .replace('\\', "/");
        let (folder, _) = folder_of(&path);
        nodes.push(NodeDoc {
            id: format!("seed.{}", seed.name),
            kind: "seed",
            name: seed.name.clone(),
            path: Some(path),
            folder,
            layer: "seeds".into(),
            materialized: None,
            relation: project
                .relations
                .get(&seed.name)
                .map(|(s, a)| format!("{s}.{a}")),
            tags: Vec::new(),
            description: None,
            depends_on: Vec::new(),
            referenced_by: Vec::new(),
            raw_sql: None,
            compiled_sql: None,
            columns: columns_of(&schema),
            tests: Vec::new(),
            last_run: None,
            freshness: None,
            destination: None,
            error: None,
        });
    }
    let results = test_results(&project.dir);
    // Last runs and freshness from the lake's own logs.
    let mut last_runs: BTreeMap<String, RunDoc> = BTreeMap::new();
    for r in rows(
        ctx,
        "select model, status, rows, seconds, error, cast(finished_at as varchar) as finished_at \
         from (select *, row_number() over (partition by model order by finished_at desc) as n \
         from ferry.model_runs) where n = 1",
    )
    .await
    {
        if let Some(m) = r["model"].as_str() {
            last_runs.insert(
                m.to_string(),
                RunDoc {
                    status: r["status"].as_str().unwrap_or("").to_string(),
                    rows: r["rows"].as_u64(),
                    seconds: r["seconds"].as_f64().unwrap_or(0.0),
                    finished_at: r["finished_at"].as_str().unwrap_or("").to_string(),
                    error: r["error"].as_str().map(str::to_string),
                },
            );
        }
    }
    let mut built: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(
        ctx,
        "select model, cast(max(finished_at) as varchar) as at from ferry.model_runs \
         where status = 'success' group by model",
    )
    .await
    {
        if let (Some(m), Some(at)) = (r["model"].as_str(), r["at"].as_str()) {
            built.insert(m.to_string(), at.to_string());
        }
    }
    let mut landed: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(
        ctx,
        "select source || '.' || stream as s, cast(max(landed_at) as varchar) as at \
         from ferry.ingestions where status <> 'rejected' group by 1",
    )
    .await
    {
        if let (Some(s), Some(at)) = (r["s"].as_str(), r["at"].as_str()) {
            landed.insert(s.to_string(), at.to_string());
        }
    }
    let mut sources: BTreeMap<String, NodeDoc> = BTreeMap::new();
    for name in ws.order() {
        let model = ws.model(&name)?;
        let sql = ws.final_sql(&name, false)?;
        // Unoptimized, so the plan mirrors the SQL as written. A model that
        // cannot be planned (its input not landed yet) is documented from
        // its schema file, with why.
        let planned = match ctx.sql_with_options(&sql, super::query_only()).await {
            Ok(df) => match plan_model(ctx, model, &sql).await {
                Ok(_) => Ok(df.logical_plan().clone()),
                Err(e) => Err(e),
            },
            Err(e) => Err(super::plan_error(ctx, model, &sql, &e.to_string())),
        };
        let mut columns = Vec::new();
        let mut error = None;
        match planned {
            Ok(plan) => {
                let schema = Arc::new(plan.schema().as_arrow().clone());
                for (i, f) in schema.fields().iter().enumerate() {
                    let mut ups = BTreeSet::new();
                    trace(&plan, i, &mut ups);
                    columns.push(ColumnDoc {
                        name: f.name().clone(),
                        data_type: sql_type(f.data_type()),
                        description: None,
                        lineage: ups
                            .into_iter()
                            .map(|u| LineageRef {
                                node: id_of(&u.table),
                                column: u.column,
                            })
                            .collect(),
                        tests: Vec::new(),
                    });
                }
                if model.config.materialized != Materialized::Ephemeral {
                    ctx.deregister_table(name.as_str())?;
                    ctx.register_table(name.as_str(), Arc::new(EmptyTable::new(schema)))?;
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                columns = model
                    .columns
                    .iter()
                    .map(|c| ColumnDoc {
                        name: c.name.clone(),
                        data_type: c.data_type.clone().unwrap_or_default().to_uppercase(),
                        description: None,
                        lineage: Vec::new(),
                        tests: Vec::new(),
                    })
                    .collect();
            }
        }
        for c in &mut columns {
            c.description = model
                .columns
                .iter()
                .find(|x| x.name == c.name)
                .and_then(|x| x.description.clone());
            c.tests = project
                .tests
                .iter()
                .filter(|t| t.model == name && t.column.as_deref() == Some(c.name.as_str()))
                .map(|t| t.kind.clone())
                .collect();
        }
        let first = ws.first.get(&name);
        let mut depends_on: Vec<String> = ws
            .dag
            .parents
            .get(&name)
            .into_iter()
            .flatten()
            .map(|p| id_of(p))
            .collect();
        for (s, t, _) in first.map(|r| r.sources.as_slice()).unwrap_or_default() {
            let id = match project.source_map.target(s, t) {
                SourceTarget::Seed(n) => format!("seed.{n}"),
                SourceTarget::Stream(n) => {
                    let id = format!("source.{n}");
                    if !sources.contains_key(&id) {
                        let declared = project.sources.get(&(s.clone(), t.clone()));
                        let mut columns = match ctx.table(n.as_str()).await {
                            Ok(df) => columns_of(&Arc::new(df.schema().as_arrow().clone())),
                            Err(_) => Vec::new(),
                        };
                        for c in &mut columns {
                            c.description = declared.and_then(|d| {
                                d.columns
                                    .iter()
                                    .find(|x| x.name == c.name)
                                    .and_then(|x| x.description.clone())
                            });
                        }
                        let (source, _) = n.split_once('.').unwrap_or((n.as_str(), ""));
                        sources.insert(
                            id.clone(),
                            NodeDoc {
                                id: id.clone(),
                                kind: "source",
                                name: n.clone(),
                                path: declared.map(|d| d.origin.clone()),
                                folder: source.to_string(),
                                layer: "sources".into(),
                                materialized: None,
                                relation: None,
                                tags: Vec::new(),
                                description: declared.and_then(|d| d.description.clone()),
                                depends_on: Vec::new(),
                                referenced_by: Vec::new(),
                                raw_sql: None,
                                compiled_sql: None,
                                columns,
                                tests: Vec::new(),
                                last_run: None,
                                freshness: landed.get(n.as_str()).map(|at| FreshnessDoc {
                                    loaded_at: at.clone(),
                                }),
                                destination: None,
                                error: None,
                            },
                        );
                    }
                    id
                }
            };
            if !depends_on.contains(&id) {
                depends_on.push(id);
            }
        }
        // `docs: {show: false}`: built and traced, not listed.
        if model.config.docs_hidden {
            continue;
        }
        let tests = project
            .tests
            .iter()
            .filter(|t| t.model == name)
            .map(|t| {
                let test = super::datatest::test_name(t);
                let r = results.get(&format!("test.{own}.{test}"));
                TestDoc {
                    name: test,
                    kind: t.kind.clone(),
                    column: t.column.clone(),
                    status: r
                        .and_then(|r| r["status"].as_str())
                        .unwrap_or("not run")
                        .to_string(),
                    failures: r.and_then(|r| r["failures"].as_u64()),
                    message: r.and_then(|r| r["message"].as_str().map(str::to_string)),
                }
            })
            .collect();
        let (folder, layer) = folder_of(&model.path);
        nodes.push(NodeDoc {
            id: format!("model.{name}"),
            kind: "model",
            name: name.clone(),
            path: Some(model.path.clone()),
            folder,
            layer,
            materialized: Some(model.config.materialized.as_str().to_string()),
            relation: project
                .relations
                .get(&name)
                .map(|(s, a)| format!("{s}.{a}")),
            tags: model.config.tags.clone(),
            description: model.description.clone(),
            depends_on,
            referenced_by: Vec::new(),
            raw_sql: Some(model.sql.clone()),
            compiled_sql: Some(sql),
            columns,
            tests,
            last_run: last_runs.remove(&name),
            freshness: built.get(&name).map(|at| FreshnessDoc {
                loaded_at: at.clone(),
            }),
            destination: None,
            error,
        });
    }
    nodes.extend(sources.into_values());
    Ok(Manifest {
        version: VERSION,
        project: project
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        generated_at: chrono::Utc::now().to_rfc3339(),
        nodes,
    })
}

/// Add the project's syncs as exposures: each CRM field it writes, with
/// lineage to the model column it is sent from.
pub fn add_syncs(m: &mut Manifest, syncs: &[(crate::sync::config::Sync, String)]) {
    for (sync, kind) in syncs {
        let model = format!("model.{}", sync.model);
        let field_word = if kind == "salesforce" {
            "field"
        } else {
            "property"
        };
        let mut columns: Vec<ColumnDoc> = sync
            .fields
            .iter()
            .map(|f| ColumnDoc {
                name: f.property.clone(),
                data_type: field_word.into(),
                description: Some(format!("from {}.{}", sync.model, f.column)),
                lineage: vec![LineageRef {
                    node: model.clone(),
                    column: f.column.clone(),
                }],
                tests: Vec::new(),
            })
            .collect();
        columns.insert(
            0,
            ColumnDoc {
                name: sync.key_property.clone(),
                data_type: format!("{field_word} (match key)"),
                description: Some(format!(
                    "records are matched on it, from {}.{}",
                    sync.model, sync.key_column
                )),
                lineage: vec![LineageRef {
                    node: model.clone(),
                    column: sync.key_column.clone(),
                }],
                tests: Vec::new(),
            },
        );
        m.nodes.push(NodeDoc {
            id: format!("sync.{}", sync.name),
            kind: "sync",
            name: sync.name.clone(),
            path: Some(crate::project::CONFIG_FILE.to_string()),
            folder: String::new(),
            layer: "syncs".into(),
            materialized: None,
            relation: None,
            tags: Vec::new(),
            description: Some(if sync.destination == *kind {
                format!("{} {} in {kind}", sync.mode.as_str(), sync.object)
            } else {
                format!(
                    "{} {} in {kind} (destination {})",
                    sync.mode.as_str(),
                    sync.object,
                    sync.destination
                )
            }),
            depends_on: vec![model],
            referenced_by: Vec::new(),
            raw_sql: None,
            compiled_sql: None,
            columns,
            tests: Vec::new(),
            last_run: None,
            freshness: None,
            destination: Some(DestinationDoc {
                kind: kind.clone(),
                object: sync.object.clone(),
                key: sync.key_property.clone(),
                mode: sync.mode.as_str().to_string(),
            }),
            error: None,
        });
    }
    link(m);
}

/// Fill `referenced_by` from `depends_on`, and drop links to hidden nodes.
pub fn link(m: &mut Manifest) {
    let ids: BTreeSet<String> = m.nodes.iter().map(|n| n.id.clone()).collect();
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in &m.nodes {
        for p in &n.depends_on {
            children.entry(p.clone()).or_default().insert(n.id.clone());
        }
    }
    for n in &mut m.nodes {
        n.depends_on.retain(|d| ids.contains(d));
        n.referenced_by = children
            .get(&n.id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
    }
}

/// The manifest inlined into the page: safe inside `<script>` (no `</`,
/// and the two line separators JSON allows but JavaScript did not).
pub fn html(m: &Manifest) -> Result<String> {
    let json = serde_json::to_string(m).map_err(|e| Error::Internal(e.to_string()))?;
    let json = json
        .replace("</", "<\\/")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    if !PAGE.contains(SLOT) {
        return Err(Error::Internal("docs.html has no manifest slot".into()));
    }
    Ok(PAGE.replacen(SLOT, &json, 1))
}

/// Write `manifest.json` and `index.html` into `out`; returns the page's path.
pub fn write(m: &Manifest, out: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_string_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
    let mj = out.join("manifest.json");
    super::deps::write_atomic(&mj, json.as_bytes())?;
    let hp = out.join("index.html");
    super::deps::write_atomic(&hp, html(m)?.as_bytes())?;
    Ok(hp)
}
