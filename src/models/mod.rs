//! SQL models: the analyst's workflow (dbt-style) on DataFusion.
//!
//! Flow: [`project`] discovers models, schema files, seeds, macros and tests;
//! [`render`] turns each model's Jinja into SQL and records its `ref`s,
//! `source`s and `config`; [`dag`] orders models and resolves selections;
//! [`Workspace::compile`] plans every selected model against its upstream
//! schemas without running anything; [`run`] executes the DAG and
//! materializes results ([`delta`] for persisted models and seeds);
//! [`datatest`] runs data tests; [`seed`] loads CSV seeds.

pub mod artifacts;
pub mod contract;
pub mod dag;
pub mod datatest;
pub mod deps;
pub use crate::engine::delta;
pub mod docs;
pub mod project;
pub mod relation;
pub mod render;
pub mod run;
pub mod seed;
pub mod snapshot;
pub mod unit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::datasource::ViewTable;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::logical_expr::LogicalPlan;

pub use dag::Dag;
pub use project::{Materialized, Model, ModelProject};
pub use render::Rendered;

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::project::Project;
use render::{RenderContext, Resolver};

/// Prefix of the CTE an ephemeral model is inlined as.
const CTE_PREFIX: &str = "__ferry_cte_";

/// A loaded project: models with their final configuration, and the DAG.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub project: ModelProject,
    pub dag: Dag,
    /// Each model's first render (no incremental branch).
    pub first: BTreeMap<String, Rendered>,
}

/// One model's outcome in [`Workspace::compile_each`].
#[derive(Debug, Clone)]
pub enum Compiled {
    /// It plans; its output schema.
    Ok(arrow::datatypes::SchemaRef),
    Failed(Arc<Error>),
    /// Not checked: it reads this model, which does not compile.
    Blocked(String),
    /// Not checked yet: it reads this stream of a configured source, which
    /// the first extract lands.
    Waiting(String),
}

/// Options that refuse anything but queries: compiling and running a model
/// never creates, drops or inserts by itself.
pub fn query_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

impl Workspace {
    /// Discover and render every model, apply `config(...)`, build the DAG.
    pub fn load(project: &Project, vars: &[(String, String)]) -> Result<Workspace> {
        let mut all_vars = project.vars.clone();
        for (k, v) in vars {
            let value = serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()));
            all_vars.insert(k.clone(), value);
        }
        let mut mp = ModelProject::load(
            &project.dir,
            &project.paths,
            &project.model_configs,
            all_vars,
        )?;
        let identity: Resolver = Arc::new(|n: &str| n.to_string());
        let mut first = BTreeMap::new();
        for model in &mut mp.models {
            // Field by field: `mp.models` is borrowed mutably by the loop.
            let ctx = RenderContext {
                macros: &mp.macros,
                vars: &mp.vars,
                is_incremental: false,
                resolve: identity.clone(),
                sources: &mp.source_map,
                namespaces: &mp.namespaces,
                dispatch: &mp.dispatch,
                package_vars: &mp.package_vars,
                unit: None,
                query: None,
                graph: &mp.graph,
                target: &mp.target,
            };
            let r = render::render(model, &ctx)?;
            for (k, v) in &r.config {
                model
                    .config
                    .apply(k, v, &format!("{} (config)", model.path))?;
            }
            first.insert(model.name.clone(), r);
        }
        for m in mp.models.iter().filter(|m| !m.config.enabled) {
            mp.disabled.insert(m.name.clone());
        }
        mp.models.retain(|m| m.config.enabled);
        first.retain(|n, _| mp.models.iter().any(|m| &m.name == n));
        // Snapshots' settings, their blocks' `config(...)` included, name them.
        let mut snapshot_config = BTreeMap::new();
        for snap in &mp.snapshots {
            let (_, config, _) = snapshot::render_query(&mp, snap)?;
            snapshot_config.insert(snap.name.clone(), config);
        }
        relation::name_models(&mut mp, &snapshot_config)?;
        let dag = Dag::build(&mp, &first)?;
        // The graph's edges, now that every model has rendered once.
        let ids = artifacts::unique_ids(&mp);
        for (name, parents) in &dag.parents {
            if let (Some(id), Some(nodes)) = (ids.get(name), mp.graph.get_mut("nodes"))
                && let Some(node) = nodes.get_mut(id)
            {
                node["depends_on"]["nodes"] = serde_json::Value::from(
                    parents
                        .iter()
                        .filter_map(|p| ids.get(p).cloned())
                        .collect::<Vec<_>>(),
                );
            }
        }
        Ok(Workspace {
            project: mp,
            dag,
            first,
        })
    }

    /// Let renders run queries (`run_query`, `statement`, the adapter's
    /// relation lookups) on `ctx`: from here on, `execute` is true. Each
    /// query runs on a thread of its own (rendering is synchronous).
    pub fn attach(&self, ctx: &SessionContext) {
        let ctx = ctx.clone();
        self.project.executor.set(Arc::new(move |sql: &str| {
            let (ctx, sql) = (ctx.clone(), sql.to_string());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let df = ctx
                        .sql_with_options(&sql, query_only())
                        .await
                        .map_err(|e| e.to_string())?;
                    let names: Vec<String> = df
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    let batches = df.collect().await.map_err(|e| e.to_string())?;
                    let rows =
                        crate::lake::log::batch_rows_json(&batches).map_err(|e| e.to_string())?;
                    Ok((names, rows))
                })
            })
            .join()
            .map_err(|_| "the query panicked".to_string())?
        }));
    }

    fn resolver(&self) -> Resolver {
        let ephemeral: BTreeSet<String> = self
            .project
            .models
            .iter()
            .filter(|m| m.config.materialized == Materialized::Ephemeral)
            .map(|m| m.name.clone())
            .collect();
        Arc::new(move |n: &str| {
            if ephemeral.contains(n) {
                format!("{CTE_PREFIX}{n}")
            } else {
                n.to_string()
            }
        })
    }

    /// The SQL a model runs: rendered, with the ephemeral models it uses
    /// (directly or through other ephemerals) inlined as CTEs.
    pub fn final_sql(&self, name: &str, is_incremental: bool) -> Result<String> {
        let model = self.model(name)?;
        let resolve = self.resolver();
        let ctx = self.project.render_context(is_incremental, resolve.clone());
        let main = render::render(model, &ctx)?;
        // Ephemeral ancestors reachable through ephemerals only, parents first.
        let mut needed: Vec<String> = Vec::new();
        let mut todo: Vec<String> = main.refs.iter().map(|r| r.name.clone()).collect();
        while let Some(n) = todo.pop() {
            let Ok(m) = self.model(&n) else { continue };
            if m.config.materialized != Materialized::Ephemeral || needed.contains(&n) {
                continue;
            }
            needed.push(n.clone());
            todo.extend(self.dag.parents.get(&n).into_iter().flatten().cloned());
        }
        if needed.is_empty() {
            return Ok(strip_semicolon(&main.sql));
        }
        let order = self.dag.topo_order();
        needed.sort_by_key(|n| order.iter().position(|o| o == n));
        let mut ctes = Vec::new();
        for n in &needed {
            let m = self.model(n)?;
            let ectx = RenderContext {
                is_incremental: false,
                ..ctx.clone()
            };
            let r = render::render(m, &ectx)?;
            ctes.push(format!(
                "{CTE_PREFIX}{n} as (\n{}\n)",
                strip_semicolon(&r.sql)
            ));
        }
        Ok(inject_ctes(&strip_semicolon(&main.sql), &ctes))
    }

    pub fn model(&self, name: &str) -> Result<&Model> {
        self.project
            .model(name)
            .ok_or_else(|| Error::Input(format!("no model named {name}")))
    }

    /// Model names in run order.
    pub fn order(&self) -> Vec<String> {
        self.dag
            .topo_order()
            .into_iter()
            .filter(|n| !self.dag.is_seed(n))
            .collect()
    }

    /// Plan every model in `selected` (and the views and ephemerals they
    /// need) against upstream schemas, registering each plan as a view so
    /// downstream models see its columns. Nothing is executed. Returns each
    /// selected model's final SQL, in run order.
    pub async fn compile(
        &self,
        ctx: &SessionContext,
        lake: &Lake,
        selected: &BTreeSet<String>,
    ) -> Result<Vec<(String, String)>> {
        self.attach(ctx);
        seed::register_for_planning(ctx, lake, &self.project).await?;
        let mut out = Vec::new();
        for name in self.order() {
            let model = self.model(&name)?;
            if model.config.materialized == Materialized::Ephemeral && !selected.contains(&name) {
                continue;
            }
            let exists = ctx.table_exist(name.as_str()).unwrap_or(false);
            let incremental = model.config.materialized == Materialized::Incremental && exists;
            let sql = self.final_sql(&name, incremental)?;
            let plan = plan_model(ctx, model, &sql).await?;
            // An existing incremental table stays registered: `{{ this }}`
            // reads it. The others become empty tables of their output, so
            // their children plan against the schema alone.
            if !incremental && model.config.materialized != Materialized::Ephemeral {
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let _ = ctx.deregister_table(name.as_str());
                ctx.register_table(
                    name.as_str(),
                    Arc::new(datafusion::datasource::empty::EmptyTable::new(schema)),
                )?;
                relation::register_one(ctx, &self.project, &name).await?;
            }
            if selected.contains(&name) {
                out.push((name, sql));
            }
        }
        Ok(out)
    }
}

impl Workspace {
    /// Plan every model (as [`Workspace::compile`] does), going on after
    /// one fails: each model with its output schema, or why it does not
    /// compile. A model downstream of one that fails is [`Compiled::Blocked`]
    /// (naming it) rather than reported with a confusing missing table, and
    /// a model reading a stream of a configured source that nothing has
    /// landed yet waits for the first extract ([`Compiled::Waiting`]).
    /// `configured`: the sources whose streams an extract will land.
    pub async fn compile_each(
        &self,
        ctx: &SessionContext,
        lake: &Lake,
        configured: &BTreeSet<String>,
    ) -> Result<Vec<(String, Compiled)>> {
        self.attach(ctx);
        seed::register_for_planning(ctx, lake, &self.project).await?;
        let mut out = Vec::new();
        // Model → what it is held back by.
        let mut held: BTreeMap<String, Compiled> = BTreeMap::new();
        for name in self.order() {
            let upstream = self
                .dag
                .parents
                .get(&name)
                .into_iter()
                .flatten()
                .find_map(|p| held.get(p).cloned());
            if let Some(why) = upstream {
                held.insert(name.clone(), why.clone());
                out.push((name, why));
                continue;
            }
            let waiting = self.first.get(&name).and_then(|r| {
                r.sources
                    .iter()
                    .find_map(|(s, t, _)| match self.project.source_map.target(s, t) {
                        render::SourceTarget::Stream(n)
                            if !ctx.table_exist(n.as_str()).unwrap_or(false)
                                && n.split_once('.')
                                    .is_some_and(|(src, _)| configured.contains(src)) =>
                        {
                            Some(n)
                        }
                        _ => None,
                    })
            });
            if let Some(stream) = waiting {
                let why = Compiled::Waiting(stream);
                held.insert(name.clone(), why.clone());
                out.push((name, why));
                continue;
            }
            let result = async {
                let model = self.model(&name)?;
                let exists = ctx.table_exist(name.as_str()).unwrap_or(false);
                let incremental = model.config.materialized == Materialized::Incremental && exists;
                let sql = self.final_sql(&name, incremental)?;
                let plan = plan_model(ctx, model, &sql).await?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                if !incremental && model.config.materialized != Materialized::Ephemeral {
                    // An empty table of its output, not a view: children
                    // plan against the schema without planning it again.
                    let _ = ctx.deregister_table(name.as_str());
                    ctx.register_table(
                        name.as_str(),
                        Arc::new(datafusion::datasource::empty::EmptyTable::new(
                            schema.clone(),
                        )),
                    )?;
                    relation::register_one(ctx, &self.project, &name).await?;
                }
                Ok::<_, Error>(schema)
            }
            .await;
            match result {
                Ok(schema) => out.push((name, Compiled::Ok(schema))),
                Err(e) => {
                    held.insert(name.clone(), Compiled::Blocked(name.clone()));
                    out.push((name, Compiled::Failed(Arc::new(e))));
                }
            }
        }
        Ok(out)
    }

    /// Register every view model (planned, not run) so ad-hoc queries can
    /// use them by name. A view that cannot be planned is skipped with a warning.
    pub async fn register_views(&self, ctx: &SessionContext, lake: &Lake) -> Result<()> {
        self.attach(ctx);
        seed::register_for_planning(ctx, lake, &self.project).await?;
        for name in self.order() {
            let model = self.model(&name)?;
            if model.config.materialized != Materialized::View {
                continue;
            }
            let planned = match self.final_sql(&name, false) {
                Ok(sql) => plan_model(ctx, model, &sql).await.map(|p| (p, sql)),
                Err(e) => Err(e),
            };
            match planned {
                Ok((plan, sql)) => register_view(ctx, &name, plan, &sql)?,
                Err(e) => tracing::warn!("view {name} is not queryable: {e}"),
            }
        }
        relation::register(ctx, &self.project).await
    }
}

/// Register a plan as a view named `name` (replacing any table of that name).
pub fn register_view(ctx: &SessionContext, name: &str, plan: LogicalPlan, sql: &str) -> Result<()> {
    ctx.deregister_table(name)?;
    ctx.register_table(name, Arc::new(ViewTable::new(plan, Some(sql.to_string()))))?;
    Ok(())
}

/// Plan a model's SQL; errors point at the model file and line. The plan is
/// analyzed (names resolved, types checked and coerced) but not optimized:
/// views stay references, so planning a deep DAG stays linear.
pub async fn plan_model(ctx: &SessionContext, model: &Model, sql: &str) -> Result<LogicalPlan> {
    let df = ctx
        .sql_with_options(sql, query_only())
        .await
        .map_err(|e| plan_error(ctx, model, sql, &e.to_string()))?;
    contract::check(model, df.schema())?;
    let state = ctx.state();
    state
        .analyzer()
        .execute_and_check(
            df.into_unoptimized_plan(),
            state.config_options(),
            |_, _| {},
        )
        .map_err(|e| plan_error(ctx, model, sql, &e.to_string()))
}

/// [`model_error`], with the nearest names the session holds when a table
/// is missing.
pub fn plan_error(ctx: &SessionContext, model: &Model, rendered: &str, message: &str) -> Error {
    match missing_table(Some(ctx), message) {
        Some(friendly) => model_error(model, rendered, &format!("{friendly}\u{0}{message}")),
        None => model_error(model, rendered, message),
    }
}

/// A table the engine cannot find, in the user's words: the name as the
/// model writes it (`crm.contacts`, not `datafusion.crm.contacts`), what to
/// do, and the nearest names the lake does hold.
fn missing_table(ctx: Option<&SessionContext>, message: &str) -> Option<String> {
    let rest = message.split_once("table '")?.1;
    let (name, tail) = rest.split_once('\'')?;
    if !tail.trim_start().starts_with("not found") {
        return None;
    }
    let name = name.strip_prefix("datafusion.").unwrap_or(name);
    let mut known: Vec<String> = Vec::new();
    if let Some(catalog) = ctx.and_then(|c| c.catalog("datafusion")) {
        for schema in catalog.schema_names() {
            if let Some(sch) = catalog.schema(&schema) {
                for t in sch.table_names() {
                    known.push(if schema == "public" {
                        t
                    } else {
                        format!("{schema}.{t}")
                    });
                }
            }
        }
    }
    let hint = crate::models::project::suggest(name, known.iter());
    Some(match name.split_once('.') {
        Some((source, stream)) => format!(
            "{name} is not in the lake: nothing has been landed or extracted into {source}.{stream} yet. \
             Land it (ferry land {name} FILE) or extract it (ferry extract), or fix the name{hint}"
        ),
        None => format!("no model, seed or table named {name}{hint}"),
    })
}

/// An error in a model, located at the line of the model file it concerns.
/// A message may carry `friendly\0engine`: the first is shown, the second
/// only locates.
pub fn model_error(model: &Model, rendered: &str, message: &str) -> Error {
    let rewritten = (!message.contains('\u{0}'))
        .then(|| missing_table(None, message).map(|f| format!("{f}\u{0}{message}")))
        .flatten();
    let message = rewritten.as_deref().unwrap_or(message);
    let (shown, engine) = message.split_once('\u{0}').unwrap_or((message, message));
    let line = locate(&model.sql, rendered, engine);
    let at = line.map(|l| format!(":{l}")).unwrap_or_default();
    let message = shown;
    // Engine errors can embed whole plans; keep the message readable.
    let mut message = message.trim().to_string();
    if message.len() > 1500 {
        let mut cut = 1500;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" ...");
    }
    Error::Input(format!("{}{at}: {message}", model.path))
}

/// Best effort: the source line an engine error is about. Parser errors give
/// a line of the rendered SQL (mapped back by its text); unknown columns and
/// tables are found by name.
fn locate(source: &str, rendered: &str, message: &str) -> Option<usize> {
    let find = |needle: &str| {
        source
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
    };
    if let Some(pos) = message.find("Line: ") {
        let n: usize = message[pos + 6..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()?;
        let text = rendered.lines().nth(n.checked_sub(1)?)?.trim();
        return find(text).or(Some(n));
    }
    if let Some((_, rest)) = message.split_once("table '")
        && let Some((name, _)) = rest.split_once('\'')
    {
        let parts: Vec<&str> = name.split('.').collect();
        if let [.., schema, table] = parts.as_slice() {
            let call = source.lines().position(|l| {
                l.contains("source(")
                    && l.contains(&format!("'{schema}'"))
                    && l.contains(&format!("'{table}'"))
                    || l.contains("source(")
                        && l.contains(&format!("\"{schema}\""))
                        && l.contains(&format!("\"{table}\""))
            });
            if let Some(i) = call {
                return Some(i + 1);
            }
        }
        if let Some(table) = parts.last() {
            let call = source.lines().position(|l| {
                (l.contains("ref(") || l.contains("from") || l.contains("join"))
                    && !l.trim_start().starts_with("--")
                    && l.contains(table)
            });
            if let Some(i) = call {
                return Some(i + 1);
            }
        }
    }
    for marker in [
        "No field named ",
        "table '",
        "Invalid function '",
        "column '",
    ] {
        if let Some(pos) = message.find(marker) {
            let rest = &message[pos + marker.len()..];
            let ident: String = rest
                .trim_start_matches(['"', '\''])
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let ident = ident.trim_end_matches('.');
            let last = ident.rsplit('.').next().unwrap_or(ident).to_string();
            if !last.is_empty()
                && let Some(l) = find(&last)
            {
                return Some(l);
            }
        }
    }
    None
}

fn strip_semicolon(sql: &str) -> String {
    sql.trim().trim_end_matches(';').trim_end().to_string()
}

/// Put CTEs in front of a query, merging with its own `with` if it has one.
fn inject_ctes(sql: &str, ctes: &[String]) -> String {
    let joined = ctes.join(",\n");
    // Skip leading comments to find the first keyword.
    let mut rest = sql;
    let mut head = String::new();
    loop {
        let t = rest.trim_start();
        head.push_str(&rest[..rest.len() - t.len()]);
        if t.starts_with("--") {
            let end = t.find('\n').map(|p| p + 1).unwrap_or(t.len());
            head.push_str(&t[..end]);
            rest = &t[end..];
        } else if t.starts_with("/*") {
            let end = t.find("*/").map(|p| p + 2).unwrap_or(t.len());
            head.push_str(&t[..end]);
            rest = &t[end..];
        } else {
            rest = t;
            break;
        }
    }
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("with ") || lower.starts_with("with\n") {
        format!("{head}with {joined},\n{}", &rest[5..])
    } else {
        format!("{head}with {joined}\n{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctes_merge_with_an_existing_with_clause() {
        let ctes = vec!["__ferry_cte_a as (\nselect 1 as x\n)".to_string()];
        assert_eq!(
            inject_ctes("-- note\nselect * from __ferry_cte_a", &ctes),
            "-- note\nwith __ferry_cte_a as (\nselect 1 as x\n)\nselect * from __ferry_cte_a"
        );
        assert_eq!(
            inject_ctes("WITH b as (select 2) select * from b, __ferry_cte_a", &ctes),
            "-- note\nwith __ferry_cte_a as (\nselect 1 as x\n),\nb as (select 2) select * from b, __ferry_cte_a"
                .trim_start_matches("-- note\n")
        );
    }

    #[test]
    fn errors_are_located_in_the_source() {
        let src = "select\n  id,\n  {{ 'nope' }}\nfrom t";
        let rendered = "select\n  id,\n  nope\nfrom t";
        assert_eq!(
            locate(
                src,
                rendered,
                "Schema error: No field named nope. Valid fields are t.id."
            ),
            Some(3)
        );
        assert_eq!(
            locate(
                src,
                rendered,
                "sql parser error: Expected: end of statement, found: x at Line: 4, Column: 1"
            ),
            Some(4)
        );
    }
}
