//! The integration health page: one self-contained HTML page (no scripts
//! or assets from a network) read from the lake. `ferry serve` serves it at
//! `/`; `ferry health --out DIR` writes it as `DIR/index.html`.
//!
//! Per integration (each source stream and each sync): status (active,
//! degraded, down), last success and how long ago, error rate of its latest
//! run, recent errors with their records, and what it did today. Then the
//! route runs with a drill-down per run (stages, models, rows, seconds, API
//! calls, 429s), the dead-letter rows with their reasons, the schedules
//! with their next runs, and the open incidents. The queries are in
//! `sql/health/`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::log::batch_rows_json;
use crate::project::Project;

const TEMPLATE: &str = include_str!("health.html");

/// How many runs the page lists.
pub const RUNS_SHOWN: usize = 50;

/// How much history the page reads: files of ferry's tables whose names
/// carry an older time are not opened, so the page costs the same after a
/// year of runs as after a week.
pub const WINDOW_DAYS: i64 = 7;

/// The time in a ferry file name (`20261201T115725Z-...`, or with
/// fractional seconds), if it has one.
pub fn stamp(name: &str) -> Option<DateTime<Utc>> {
    let b = name.as_bytes();
    for i in 8..b.len() {
        if b[i] != b'T' || i + 7 > b.len() {
            continue;
        }
        let date = &b[i - 8..i];
        let time = &b[i + 1..i + 7];
        let after = b.get(i + 7).copied();
        if date.iter().all(u8::is_ascii_digit)
            && time.iter().all(u8::is_ascii_digit)
            && matches!(after, Some(b'Z') | Some(b'.'))
        {
            let text = std::str::from_utf8(&b[i - 8..i + 7]).ok()?;
            return chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S")
                .ok()
                .map(|t| t.and_utc());
        }
    }
    None
}

/// Read the files of one of ferry's tables written since `since` (and
/// those without a time in their name) into memory, as `name`.
async fn recent(
    ctx: &SessionContext,
    lake: &Lake,
    name: &str,
    prefix: &object_store::path::Path,
    schema: arrow::datatypes::SchemaRef,
    since: DateTime<Utc>,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use object_store::ObjectStoreExt;
    let store = lake.store().clone();
    let listed: Vec<object_store::ObjectMeta> = match store.list(Some(prefix)).try_collect().await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let wanted: Vec<object_store::path::Path> = listed
        .into_iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
        .filter(|o| {
            o.location
                .filename()
                .and_then(stamp)
                .is_none_or(|t| t >= since)
        })
        .map(|o| o.location)
        .collect();
    let read = futures::stream::iter(wanted.into_iter().map(|path| {
        let store = store.clone();
        let schema = schema.clone();
        async move {
            let bytes = store.get(&path).await?.bytes().await?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
                    .build()?;
            let mut out = Vec::new();
            for b in reader {
                out.push(align(&b?, &schema)?);
            }
            Ok::<_, Error>(out)
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<_>>()
    .await?;
    let batches: Vec<arrow::record_batch::RecordBatch> = read.into_iter().flatten().collect();
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
    let _ = ctx.deregister_table(name)?;
    ctx.register_table(name, std::sync::Arc::new(table))?;
    Ok(())
}

/// `batch` in `schema`'s columns, by name: columns a file predates are null.
fn align(
    batch: &arrow::record_batch::RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<arrow::record_batch::RecordBatch> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
            None => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let nullable = std::sync::Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let _ = nullable;
    Ok(arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        cols,
    )?)
}

/// A session whose ferry tables hold the last [`WINDOW_DAYS`] of history.
async fn window_session(lake: &Lake, now: DateTime<Utc>) -> Result<SessionContext> {
    use crate::lake::layout::meta_prefix;
    use crate::lake::tables;
    let ctx = crate::engine::session(lake).await?;
    let since = now - chrono::Duration::days(WINDOW_DAYS);
    let tables: [(&str, object_store::path::Path, arrow::datatypes::SchemaRef); 6] = [
        (
            "ferry.extract_runs",
            meta_prefix("extract_runs"),
            crate::extract::extract_runs_schema(),
        ),
        (
            "ferry.sync_runs",
            crate::sync::state::runs_root(),
            crate::sync::state::runs_schema(),
        ),
        (
            "ferry.sync_log",
            crate::sync::state::log_root(),
            crate::sync::state::log_schema(),
        ),
        (
            "ferry.run_stages",
            tables::prefix(tables::RUN_STAGES),
            tables::run_stages_schema(),
        ),
        (
            "ferry.model_runs",
            meta_prefix("model_runs"),
            crate::models::run::model_runs_schema(),
        ),
        (
            "ferry.alerts",
            tables::prefix(tables::ALERTS),
            tables::alerts_schema(),
        ),
    ];
    for (name, prefix, schema) in tables {
        recent(&ctx, lake, name, &prefix, schema, since).await?;
    }
    Ok(ctx)
}

#[derive(Debug, Clone, Serialize)]
pub struct Integration {
    /// `stream` or `sync`.
    pub kind: &'static str,
    pub name: String,
    /// active, degraded or down.
    pub status: &'static str,
    /// Why it is not active.
    pub why: Option<String>,
    pub last_run_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_success_ago: String,
    /// Rejected ÷ attempted in its latest run, in percent.
    pub error_rate: f64,
    pub rows_today: i64,
    pub rejected_today: i64,
    pub failures_today: i64,
    pub errors: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub project: String,
    /// Days of history read.
    pub window_days: i64,
    pub generated_at: String,
    pub integrations: Vec<Integration>,
    pub today: BTreeMap<&'static str, i64>,
    pub runs: Vec<Value>,
    pub dead_letter: Vec<Value>,
    pub dead_letter_total: usize,
    pub schedules: Vec<Value>,
    pub incidents: Vec<Value>,
    pub alerts: Vec<Value>,
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Value>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    batch_rows_json(&batches)
}

fn s(v: &Value, k: &str) -> Option<String> {
    match &v[k] {
        Value::Null => None,
        Value::String(x) => Some(x.clone()),
        other => Some(other.to_string()),
    }
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .or_else(|| v[k].as_f64().map(|f| f as i64))
        .unwrap_or(0)
}

/// "3 min ago", "2 h ago", "5 d ago".
pub fn ago(then: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = then.and_then(|t| DateTime::parse_from_rfc3339(&t.replace(' ', "T")).ok()) else {
        return "never".into();
    };
    let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        s if s < 90 => format!("{s} s ago"),
        s if s < 90 * 60 => format!("{} min ago", s / 60),
        s if s < 36 * 3600 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

fn status_of(
    latest_ok: bool,
    latest_partial: bool,
    rate: f64,
    threshold: f64,
    failures_today: i64,
    error: Option<String>,
) -> (&'static str, Option<String>) {
    if !latest_ok {
        return (
            "down",
            Some(error.unwrap_or_else(|| "the latest run failed".into())),
        );
    }
    if rate > threshold * 100.0 {
        return (
            "degraded",
            Some(format!(
                "{rate:.1}% of the latest run's rows were rejected (over {:.0}%)",
                threshold * 100.0
            )),
        );
    }
    if latest_partial {
        return (
            "degraded",
            Some(error.unwrap_or_else(|| "the latest run did not finish cleanly".into())),
        );
    }
    if failures_today > 0 {
        return (
            "degraded",
            Some(format!(
                "{failures_today} failed run(s) today; the latest succeeded"
            )),
        );
    }
    ("active", None)
}

/// Gather the page's data from the lake.
pub async fn gather(project: &Project, lake: &Lake, now: DateTime<Utc>) -> Result<Page> {
    let ctx = window_session(lake, now).await?;
    let today = now.format("%Y-%m-%dT00:00:00Z").to_string();
    let q = |sql: &str| sql.replace(":today", &today);
    let threshold = project.alerts.error_rate;
    let mut integrations = Vec::new();

    // Streams.
    let latest: BTreeMap<String, Value> =
        rows(&ctx, include_str!("../../sql/health/streams_latest.sql"))
            .await?
            .into_iter()
            .filter_map(|r| s(&r, "pipeline").map(|p| (p, r)))
            .collect();
    let mut errors: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in rows(&ctx, include_str!("../../sql/health/streams_errors.sql")).await? {
        let list = errors
            .entry(s(&e, "pipeline").unwrap_or_default())
            .or_default();
        if list.len() < 3 {
            list.push(e);
        }
    }
    for r in rows(&ctx, &q(include_str!("../../sql/health/streams.sql"))).await? {
        let name = s(&r, "pipeline").unwrap_or_default();
        let last = latest.get(&name).cloned().unwrap_or(Value::Null);
        let attempted = n(&last, "rows") + n(&last, "quarantined");
        let rate = if attempted > 0 {
            n(&last, "quarantined") as f64 * 100.0 / attempted as f64
        } else {
            0.0
        };
        let (status, why) = status_of(
            s(&last, "status").as_deref() == Some("ok"),
            false,
            rate,
            threshold,
            n(&r, "failures_today"),
            s(&last, "error"),
        );
        integrations.push(Integration {
            kind: "stream",
            status,
            why,
            last_run_at: s(&r, "last_run_at"),
            last_success_ago: ago(s(&r, "last_success_at").as_deref(), now),
            last_success_at: s(&r, "last_success_at"),
            error_rate: rate,
            rows_today: n(&r, "rows_today"),
            rejected_today: n(&r, "rejected_today"),
            failures_today: n(&r, "failures_today"),
            errors: errors.remove(&name).unwrap_or_default(),
            name,
        });
    }

    // Syncs.
    let latest: BTreeMap<String, Value> =
        rows(&ctx, include_str!("../../sql/health/syncs_latest.sql"))
            .await?
            .into_iter()
            .filter_map(|r| s(&r, "pipeline").map(|p| (p, r)))
            .collect();
    let dead = rows(&ctx, include_str!("../../sql/health/dead_letter.sql")).await?;
    let mut dead_by_sync: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in &dead {
        let list = dead_by_sync
            .entry(s(d, "sync").unwrap_or_default())
            .or_default();
        if list.len() < 3 {
            list.push(d.clone());
        }
    }
    for r in rows(&ctx, &q(include_str!("../../sql/health/syncs.sql"))).await? {
        let name = s(&r, "pipeline").unwrap_or_default();
        let last = latest.get(&name).cloned().unwrap_or(Value::Null);
        let attempted = n(&last, "attempted");
        let rate = if attempted > 0 {
            n(&last, "rejected") as f64 * 100.0 / attempted as f64
        } else {
            0.0
        };
        let st = s(&last, "status").unwrap_or_default();
        // Stopped on refused credentials: nothing gets through.
        let refused =
            s(&last, "error").is_some_and(|e| e.contains(crate::http::REFUSED_CREDENTIALS));
        let (status, why) = status_of(
            st != "failed" && !refused,
            st == "partial" || st == "stopped",
            rate,
            threshold,
            n(&r, "failures_today"),
            s(&last, "error"),
        );
        integrations.push(Integration {
            kind: "sync",
            status,
            why,
            last_run_at: s(&r, "last_run_at"),
            last_success_ago: ago(s(&r, "last_success_at").as_deref(), now),
            last_success_at: s(&r, "last_success_at"),
            error_rate: rate,
            rows_today: n(&r, "rows_today"),
            rejected_today: n(&r, "rejected_today"),
            failures_today: n(&r, "failures_today"),
            errors: dead_by_sync.remove(&name).unwrap_or_default(),
            name,
        });
    }

    integrations.sort_by(|a, b| b.kind.cmp(a.kind).then_with(|| a.name.cmp(&b.name)));

    // Today, over the whole route.
    let mut figures = BTreeMap::new();
    figures.insert(
        "extracted",
        integrations
            .iter()
            .filter(|i| i.kind == "stream")
            .map(|i| i.rows_today)
            .sum(),
    );
    figures.insert(
        "synced",
        integrations
            .iter()
            .filter(|i| i.kind == "sync")
            .map(|i| i.rows_today)
            .sum(),
    );
    figures.insert(
        "rejected",
        integrations.iter().map(|i| i.rejected_today).sum(),
    );
    let modeled = rows(
        &ctx,
        &q("select coalesce(sum(rows), 0) as n from ferry.model_runs where started_at >= timestamp ':today' and status = 'success'"),
    )
    .await?;
    figures.insert("modeled", modeled.first().map(|r| n(r, "n")).unwrap_or(0));

    // Runs, with their stages and models.
    let mut runs = rows(
        &ctx,
        &include_str!("../../sql/health/runs.sql").replace(":limit", &RUNS_SHOWN.to_string()),
    )
    .await?;
    if !runs.is_empty() {
        let ids = runs
            .iter()
            .filter_map(|r| s(r, "run_id"))
            .map(|id| format!("'{}'", id.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let stages = rows(
            &ctx,
            &format!("select run_id, stage, status, seconds, rows, rejected, api_calls, rate_limited, detail from ferry.run_stages where run_id in ({ids})"),
        )
        .await?;
        let models = rows(
            &ctx,
            &format!("select run_id, model, materialized, status, rows, seconds, error from ferry.model_runs where run_id in ({ids}) order by started_at"),
        )
        .await?;
        let order = ["extract", "seed", "run", "test", "sync"];
        for run in &mut runs {
            let id = s(run, "run_id").unwrap_or_default();
            let mut st: Vec<Value> = stages
                .iter()
                .filter(|x| s(x, "run_id").as_deref() == Some(id.as_str()))
                .cloned()
                .collect();
            st.sort_by_key(|x| {
                order
                    .iter()
                    .position(|o| Some(*o) == s(x, "stage").as_deref())
                    .unwrap_or(9)
            });
            run["stages"] = Value::Array(st);
            run["models"] = Value::Array(
                models
                    .iter()
                    .filter(|x| s(x, "run_id").as_deref() == Some(id.as_str()))
                    .cloned()
                    .collect(),
            );
            run["ago"] = Value::String(ago(s(run, "started_at").as_deref(), now));
        }
    }

    // Schedules.
    let schedules = super::schedule::list(project, lake, now)
        .await?
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "when": l.when,
                "job": l.job,
                "last_status": l.state.as_ref().and_then(|s| s.last_status.clone()),
                "last_run_at": l.state.as_ref().and_then(|s| s.last_started).map(|t| t.to_rfc3339()),
                "last_run_ago": ago(l.state.as_ref().and_then(|s| s.last_started).map(|t| t.to_rfc3339()).as_deref(), now),
                "last_error": l.state.as_ref().and_then(|s| s.last_error.clone()),
                "next": l.next.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
            })
        })
        .collect();

    // Incidents open now, and the latest alerts sent.
    let incidents = super::alerts::open_incidents(lake).await?;
    let alerts = rows(
        &ctx,
        "select at, severity, rule, pipeline, action, channel, delivered, summary from ferry.alerts order by at desc limit 20",
    )
    .await?;

    let dead_letter_total = dead.len();
    Ok(Page {
        project: project.name.clone(),
        window_days: WINDOW_DAYS,
        generated_at: now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        integrations,
        today: figures,
        runs,
        dead_letter: dead.into_iter().take(50).collect(),
        dead_letter_total,
        schedules,
        incidents,
        alerts,
    })
}

/// The page as HTML.
pub fn render(page: &Page) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // `.html`: every value is HTML-escaped (vendor error text included).
    env.add_template("health.html", TEMPLATE)
        .map_err(|e| Error::Internal(format!("health page template: {e}")))?;
    env.get_template("health.html")
        .and_then(|t| t.render(page))
        .map_err(|e| Error::Internal(format!("health page: {e}")))
}

/// Gather and render.
pub async fn page(project: &Project, lake: &Lake, now: DateTime<Utc>) -> Result<String> {
    render(&gather(project, lake, now).await?)
}

/// `ferry health --out DIR`: write `DIR/index.html` (atomically).
pub async fn write(
    project: &Project,
    lake: &Lake,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let html = page(project, lake, Utc::now()).await?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("index.html");
    let tmp = dir.join(".index.html.tmp");
    std::fs::write(&tmp, html).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}
