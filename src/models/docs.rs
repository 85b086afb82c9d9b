//! `ferry docs`: a JSON manifest and a static HTML page of the project: the
//! DAG, each model's SQL, columns, types and descriptions, and column-level
//! lineage taken from DataFusion's logical plans.
//!
//! Lineage: each model is planned with its upstream models registered as
//! empty tables of their output schema, so the plan's table scans are the
//! model's direct inputs. Each output column is then traced back through the
//! plan (projections, aggregates, windows, joins, unions, subquery aliases,
//! CTEs) to the input columns it is computed from.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{JoinType, LogicalPlan};
use serde::Serialize;

use super::{Materialized, Workspace, plan_model};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// One upstream column an output column is computed from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Upstream {
    pub table: String,
    pub column: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub description: Option<String>,
    pub lineage: Vec<Upstream>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelDoc {
    pub name: String,
    pub path: String,
    pub materialized: String,
    /// Where dbt would create it (`schema.alias`); none for an ephemeral.
    pub relation: Option<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub depends_on: Vec<String>,
    pub sources: Vec<String>,
    pub referenced_by: Vec<String>,
    pub raw_sql: String,
    pub compiled_sql: String,
    pub columns: Vec<ColumnDoc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub project: String,
    pub generated_at: String,
    pub models: Vec<ModelDoc>,
    pub seeds: Vec<String>,
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

/// Build the manifest: plan every model with its inputs as empty tables.
pub async fn manifest(ws: &Workspace, ctx: &SessionContext, lake: &Lake) -> Result<Manifest> {
    super::seed::register_for_planning(ctx, lake, &ws.project).await?;
    // Seeds as plain tables, so lineage stops at them by name.
    for seed in &ws.project.seeds {
        let schema = Arc::new(
            ctx.table(seed.name.as_str())
                .await?
                .schema()
                .as_arrow()
                .clone(),
        );
        ctx.deregister_table(seed.name.as_str())?;
        ctx.register_table(seed.name.as_str(), Arc::new(EmptyTable::new(schema)))?;
    }
    let mut models = Vec::new();
    for name in ws.order() {
        let model = ws.model(&name)?;
        let sql = ws.final_sql(&name, false)?;
        // Unoptimized, so the plan mirrors the SQL as written.
        let df = ctx
            .sql_with_options(&sql, super::query_only())
            .await
            .map_err(|e| super::model_error(model, &sql, &e.to_string()))?;
        let plan = df.logical_plan().clone();
        // Validate the same way compile does.
        plan_model(ctx, model, &sql).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let mut columns = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let mut ups = BTreeSet::new();
            trace(&plan, i, &mut ups);
            columns.push(ColumnDoc {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                description: model
                    .columns
                    .iter()
                    .find(|c| &c.name == f.name())
                    .and_then(|c| c.description.clone()),
                lineage: ups
                    .into_iter()
                    .map(|u| Upstream {
                        table: u.table.trim_start_matches(super::CTE_PREFIX).to_string(),
                        column: u.column,
                    })
                    .collect(),
            });
        }
        if model.config.materialized != Materialized::Ephemeral {
            ctx.deregister_table(name.as_str())?;
            ctx.register_table(name.as_str(), Arc::new(EmptyTable::new(schema)))?;
        }
        // `docs: {show: false}`: built and traced, not listed.
        if model.config.docs_hidden {
            continue;
        }
        let first = ws.first.get(&name);
        models.push(ModelDoc {
            name: name.clone(),
            path: model.path.clone(),
            materialized: model.config.materialized.as_str().to_string(),
            relation: ws
                .project
                .relations
                .get(&name)
                .map(|(s, a)| format!("{s}.{a}")),
            tags: model.config.tags.clone(),
            description: model.description.clone(),
            depends_on: ws
                .dag
                .parents
                .get(&name)
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            sources: first
                .map(|r| {
                    r.sources
                        .iter()
                        .map(|(s, t, _)| format!("{s}.{t}"))
                        .collect()
                })
                .unwrap_or_default(),
            referenced_by: ws
                .dag
                .children
                .get(&name)
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            raw_sql: model.sql.clone(),
            compiled_sql: sql,
            columns,
        });
    }
    Ok(Manifest {
        project: ws
            .project
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        generated_at: chrono::Utc::now().to_rfc3339(),
        models,
        seeds: ws.project.seeds.iter().map(|s| s.name.clone()).collect(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The manifest as one static HTML page (no scripts, no external assets).
pub fn html(m: &Manifest) -> String {
    let mut h = String::new();
    h.push_str(&format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} models</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}\
         table{{border-collapse:collapse;margin:.5rem 0}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}}\
         pre{{background:#f6f6f6;padding:.75rem;overflow:auto}}.tag{{background:#eef;padding:0 .3rem;margin-right:.3rem}}\
         </style></head><body><h1>{} models</h1><p>Generated {}. {} models, {} seeds.</p><h2>Models</h2><ul>",
        esc(&m.project),
        esc(&m.project),
        esc(&m.generated_at),
        m.models.len(),
        m.seeds.len()
    ));
    for model in &m.models {
        h.push_str(&format!(
            "<li><a href=\"#{0}\">{0}</a> ({1})</li>",
            esc(&model.name),
            esc(&model.materialized)
        ));
    }
    h.push_str("</ul>");
    for model in &m.models {
        let link = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("<a href=\"#{0}\">{0}</a>", esc(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        h.push_str(&format!(
            "<section id=\"{}\"><h2>{}</h2><p><code>{}</code> · {}{} {}</p>",
            esc(&model.name),
            esc(&model.name),
            esc(&model.path),
            esc(&model.materialized),
            model
                .relation
                .as_ref()
                .map(|r| format!(" as <code>{}</code>", esc(r)))
                .unwrap_or_default(),
            model
                .tags
                .iter()
                .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                .collect::<String>()
        ));
        if let Some(d) = &model.description {
            h.push_str(&format!("<p>{}</p>", esc(d)));
        }
        h.push_str(&format!(
            "<p>Depends on: {} {}<br>Used by: {}</p>",
            link(&model.depends_on),
            model
                .sources
                .iter()
                .map(|s| esc(s))
                .collect::<Vec<_>>()
                .join(", "),
            link(&model.referenced_by)
        ));
        h.push_str("<table><tr><th>column</th><th>type</th><th>description</th><th>computed from</th></tr>");
        for c in &model.columns {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.name),
                esc(&c.data_type),
                esc(c.description.as_deref().unwrap_or("")),
                c.lineage
                    .iter()
                    .map(|u| format!("{}.{}", esc(&u.table), esc(&u.column)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        h.push_str(&format!(
            "</table><details><summary>SQL</summary><pre>{}</pre><p>Compiled:</p><pre>{}</pre></details></section>",
            esc(&model.raw_sql),
            esc(&model.compiled_sql)
        ));
    }
    h.push_str("</body></html>\n");
    h
}

/// Write `manifest.json` and `index.html` into `out`.
pub fn write(m: &Manifest, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_string_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
    let mj = out.join("manifest.json");
    std::fs::write(&mj, json).map_err(|e| Error::io(&mj, e))?;
    let hp = out.join("index.html");
    std::fs::write(&hp, html(m)).map_err(|e| Error::io(&hp, e))?;
    Ok(())
}
