//! `ferry run`: execute the selected models in DAG order.
//!
//! Independent models run concurrently (up to `threads`); a model starts as
//! soon as every selected model it refs has succeeded. A failed model skips
//! only its descendants. Each model is materialized in one step that either
//! fully happens or not at all (a Delta commit, or registering a view), so a
//! failure never leaves half a table. Results are appended to the lake as
//! `ferry.runs` (one row per run) and `ferry.model_runs` (one row per model).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::execution::context::SessionContext;
use tokio::task::JoinSet;

use super::delta::{self, MODELS};
use super::project::{Materialized, Strategy};
use super::{Workspace, model_error, plan_model, query_only, register_view};
use crate::error::{Error, Result};
use crate::lake::{Lake, RunId, layout, log};

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Models built at once.
    pub threads: usize,
    /// Rebuild incremental models from scratch.
    pub full_refresh: bool,
    /// Run each model's data tests as soon as it is built (`ferry build`,
    /// as dbt build does): a failing error-severity test fails the model,
    /// so its children are skipped.
    pub test_each: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Error,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
}

/// The outcome of one model.
#[derive(Debug, Clone)]
pub struct ModelResult {
    pub name: String,
    /// dbt's `model.<package>.<name>`.
    pub unique_id: String,
    pub materialized: Materialized,
    pub status: Status,
    /// Rows in the table after the run (persisted models only).
    pub rows: Option<u64>,
    pub seconds: f64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Rows in a registered table.
pub async fn count_rows(ctx: &SessionContext, table: &str) -> Result<u64> {
    let batches = ctx
        .sql(&format!("select count(*) from \"{table}\""))
        .await?
        .collect()
        .await?;
    let n = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0);
    Ok(n.max(0) as u64)
}

/// Build one model. Returns rows for persisted models.
async fn build(
    ws: &Workspace,
    ctx: &SessionContext,
    lake: &Lake,
    name: &str,
    full_refresh: bool,
) -> Result<Option<u64>> {
    let model = ws.model(name)?;
    let mat = model.config.materialized;
    if mat == Materialized::Ephemeral {
        // Inlined into the models that use it; plan it to surface errors here.
        let sql = ws.final_sql(name, false)?;
        plan_model(ctx, model, &sql).await?;
        return Ok(None);
    }
    let url = delta::table_url(MODELS, name)?;
    let existing = if mat == Materialized::Incremental && !full_refresh {
        delta::open(lake, &url).await?
    } else {
        None
    };
    let sql = ws.final_sql(name, existing.is_some())?;
    let df = ctx
        .sql_with_options(&sql, query_only())
        .await
        .map_err(|e| super::plan_error(ctx, model, &sql, &e.to_string()))?;
    // Checked before anything is written.
    super::contract::check(model, df.schema())?;
    let fail = |e: Error| model_error(model, &sql, &e.to_string());
    if mat == Materialized::View {
        let plan = df
            .into_optimized_plan()
            .map_err(|e| model_error(model, &sql, &e.to_string()))?;
        register_view(ctx, name, plan, &sql)?;
        super::relation::register_one(ctx, &ws.project, name).await?;
        return Ok(None);
    }
    // On the cluster, if one is configured: the rows stream back here and
    // are written as a local result is. In this process, a CTE read more
    // than once is computed once (its files live until the table is written).
    let (df, _shared) = if crate::engine::cluster::url().is_some() {
        let df = crate::engine::cluster::remote(ctx, name, df)
            .await
            .map_err(fail)?;
        (df, Default::default())
    } else {
        crate::engine::shared::computed_once(df)
            .await
            .map_err(fail)?
    };
    let table = match (mat, existing) {
        (Materialized::Incremental, Some(t)) => match model.config.strategy() {
            Strategy::Append => delta::append(lake, &url, df).await.map_err(fail)?,
            Strategy::Merge => delta::merge(t, df, &model.config.unique_key)
                .await
                .map_err(fail)?,
        },
        _ => delta::overwrite(lake, &url, df).await.map_err(fail)?,
    };
    delta::register(ctx, name, &table).await?;
    super::relation::register_one(ctx, &ws.project, name).await?;
    Ok(Some(count_rows(ctx, name).await?))
}

/// Run `selected` models; `on_done` is called as each one finishes.
pub async fn run(
    ws: Arc<Workspace>,
    ctx: SessionContext,
    lake: Lake,
    selected: BTreeSet<String>,
    options: RunOptions,
    mut on_done: impl FnMut(&ModelResult),
) -> Result<Vec<ModelResult>> {
    ws.attach(&ctx);
    let order = ws.order();
    // Views and ephemerals outside the selection are planned so selected
    // models can read them; a failure here surfaces in the model that needs it.
    for name in &order {
        let m = ws.model(name)?;
        if !selected.contains(name)
            && m.config.materialized == Materialized::View
            && let Ok(sql) = ws.final_sql(name, false)
            && let Ok(plan) = plan_model(&ctx, m, &sql).await
        {
            let _ = register_view(&ctx, name, plan, &sql);
            super::relation::register_one(&ctx, &ws.project, name).await?;
        }
    }

    let chosen: Vec<String> = order
        .iter()
        .filter(|n| selected.contains(*n))
        .cloned()
        .collect();
    let mut waiting: BTreeMap<String, usize> = chosen
        .iter()
        .map(|n| {
            let deps = ws
                .dag
                .parents
                .get(n)
                .map(|p| p.iter().filter(|x| selected.contains(*x)).count())
                .unwrap_or(0);
            (n.clone(), deps)
        })
        .collect();
    let mut ready: VecDeque<String> = chosen
        .iter()
        .filter(|n| waiting.get(*n) == Some(&0))
        .cloned()
        .collect();
    let mut results: BTreeMap<String, ModelResult> = BTreeMap::new();
    let mut running: JoinSet<(String, ModelResult)> = JoinSet::new();
    let threads = options.threads.max(1);
    let ids = Arc::new(super::artifacts::unique_ids(&ws.project));

    loop {
        while running.len() < threads {
            let Some(name) = ready.pop_front() else { break };
            if results.contains_key(&name) {
                continue;
            }
            let (ws, ctx, lake, ids) = (ws.clone(), ctx.clone(), lake.clone(), ids.clone());
            running.spawn(async move {
                let started_at = Utc::now();
                let t = Instant::now();
                let mut outcome = build(&ws, &ctx, &lake, &name, options.full_refresh).await;
                if options.test_each && outcome.is_ok() {
                    // Tests that cannot run yet (a relationship to a model
                    // not built) are left to the test stage; failures block.
                    let only = BTreeSet::from([name.clone()]);
                    if let Ok(tests) = super::datatest::run(&ws, &ctx, &only).await {
                        let failing: Vec<String> = tests
                            .iter()
                            .filter(|t| {
                                t.error.is_none()
                                    && t.failures > 0
                                    && t.severity == super::project::Severity::Error
                            })
                            .map(|t| {
                                let noun = if t.failures == 1 { "row" } else { "rows" };
                                format!("{} ({} failing {noun})", t.name, t.failures)
                            })
                            .collect();
                        if !failing.is_empty() {
                            outcome = Err(Error::Input(format!(
                                "built, but its tests failed, so its children were not built: {}",
                                failing.join(", ")
                            )));
                        }
                    }
                }
                let materialized = ws
                    .model(&name)
                    .map(|m| m.config.materialized)
                    .unwrap_or_default();
                let (status, rows, error) = match outcome {
                    Ok(rows) => (Status::Success, rows, None),
                    Err(e) => (Status::Error, None, Some(e.to_string())),
                };
                let r = ModelResult {
                    unique_id: ids.get(&name).cloned().unwrap_or_default(),
                    name: name.clone(),
                    materialized,
                    status,
                    rows,
                    seconds: t.elapsed().as_secs_f64(),
                    error,
                    started_at,
                    finished_at: Utc::now(),
                };
                (name, r)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, result) =
            joined.map_err(|e| Error::Internal(format!("a model task failed: {e}")))?;
        on_done(&result);
        if result.status == Status::Success {
            for child in ws.dag.children.get(&name).into_iter().flatten() {
                if let Some(w) = waiting.get_mut(child) {
                    *w = w.saturating_sub(1);
                    if *w == 0 && !results.contains_key(child) {
                        ready.push_back(child.clone());
                    }
                }
            }
        } else {
            for d in ws.dag.descendants(&name) {
                if selected.contains(&d) && !results.contains_key(&d) {
                    let now = Utc::now();
                    let skipped = ModelResult {
                        unique_id: ids.get(&d).cloned().unwrap_or_default(),
                        name: d.clone(),
                        materialized: ws
                            .model(&d)
                            .map(|m| m.config.materialized)
                            .unwrap_or_default(),
                        status: Status::Skipped,
                        rows: None,
                        seconds: 0.0,
                        error: Some(format!("skipped: upstream model {name} failed")),
                        started_at: now,
                        finished_at: now,
                    };
                    on_done(&skipped);
                    results.insert(d, skipped);
                }
            }
        }
        results.insert(name, result);
    }
    Ok(chosen.iter().filter_map(|n| results.remove(n)).collect())
}

pub use crate::lake::tables::{model_runs_schema, runs_schema};

/// Append one run and its model results to `ferry.runs` / `ferry.model_runs`.
pub async fn record(
    lake: &Lake,
    run_id: &RunId,
    command: &str,
    started_at: DateTime<Utc>,
    results: &[ModelResult],
) -> Result<()> {
    let ok = results.iter().all(|r| r.status == Status::Success);
    record_as(lake, run_id, command, started_at, results, ok).await
}

/// [`record`], with the run's status decided by the caller (`ferry build`
/// also fails on tests and syncs).
pub async fn record_as(
    lake: &Lake,
    run_id: &RunId,
    command: &str,
    started_at: DateTime<Utc>,
    results: &[ModelResult],
    ok: bool,
) -> Result<()> {
    let finished_at = Utc::now();
    let count = |s: Status| results.iter().filter(|r| r.status == s).count() as i64;
    let status = if ok { "success" } else { "error" };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id.to_string()])),
        Arc::new(StringArray::from(vec![command])),
        Arc::new(StringArray::from(vec![status])),
        Arc::new(Int64Array::from(vec![results.len() as i64])),
        Arc::new(Int64Array::from(vec![count(Status::Success)])),
        Arc::new(Int64Array::from(vec![count(Status::Error)])),
        Arc::new(Int64Array::from(vec![count(Status::Skipped)])),
        Arc::new(Float64Array::from(vec![
            (finished_at - started_at).num_milliseconds() as f64 / 1000.0,
        ])),
        log::ts_array([started_at].into_iter()),
        log::ts_array([finished_at].into_iter()),
    ];
    let runs = RecordBatch::try_new(runs_schema(), cols)?;
    let n = results.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id.to_string(); n])),
        Arc::new(StringArray::from(
            results.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            results
                .iter()
                .map(|r| r.materialized.as_str())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            results
                .iter()
                .map(|r| r.status.as_str())
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            results
                .iter()
                .map(|r| r.rows.map(|x| x as i64))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            results.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            results.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
        )),
        log::ts_array(results.iter().map(|r| r.started_at)),
        log::ts_array(results.iter().map(|r| r.finished_at)),
    ];
    let model_runs = RecordBatch::try_new(model_runs_schema(), cols)?;
    // Model results first: a run row always has its model rows.
    let at = Utc::now();
    if n > 0 {
        let bytes = log::encode(model_runs.schema(), &[model_runs])?;
        log::put_once(
            lake.store().as_ref(),
            &layout::meta_file("model_runs", at, run_id, 1),
            bytes,
        )
        .await?;
    }
    let bytes = log::encode(runs.schema(), &[runs])?;
    log::put_once(
        lake.store().as_ref(),
        &layout::meta_file("runs", at, run_id, 1),
        bytes,
    )
    .await
}
