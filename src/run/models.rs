//! The model stages: `ferry seed`, `compile`, `run`, `test` and `docs`,
//! also called by [`super::build`] and the scheduler.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::Selection as SelectArgs;
use crate::console;
use crate::error::{Error, Result};
use crate::lake::{Lake, RunId};
use crate::models::project::Severity;
use crate::models::render::SourceTarget;
use crate::models::run::{self, RunOptions, Status};
use crate::models::{Workspace, artifacts, dag, datatest, docs as model_docs, seed, unit};
use crate::project::Project;

fn vars(args: &SelectArgs) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in &args.vars {
        out.extend(parse_vars(v)?);
    }
    Ok(out)
}

/// One `--vars` argument: `name=value`, or dbt's YAML/JSON mapping
/// (`'{"load_source_data": true}'`, `'{start_date: 2024-01-01}'`). Values
/// come back as JSON text (strings stay strings).
pub(crate) fn parse_vars(arg: &str) -> Result<Vec<(String, String)>> {
    let trimmed = arg.trim();
    // A mapping starts with `{` or has `key: value`; anything else with `=`
    // is name=value (names may hold `:`, as dbt's "pkg:var" do).
    let mapping = trimmed.starts_with('{') || trimmed.contains(": ");
    if !mapping && let Some((k, v)) = trimmed.split_once('=') {
        return Ok(vec![(k.trim().to_string(), v.to_string())]);
    }
    let bad = |why: String| {
        Error::Input(format!(
            "--vars {arg:?}: {why}; write NAME=VALUE or a YAML/JSON mapping, e.g. --vars '{{\"load_source_data\": true}}'"
        ))
    };
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(trimmed).map_err(|e| bad(e.to_string()))?;
    let serde_yaml_ng::Value::Mapping(map) = value else {
        return Err(bad("not a mapping".into()));
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = match k {
            serde_yaml_ng::Value::String(s) => s,
            other => serde_yaml_ng::to_string(&other)
                .map(|s| s.trim().to_string())
                .map_err(|e| bad(e.to_string()))?,
        };
        let json = serde_json::to_value(&v).map_err(|e| bad(e.to_string()))?;
        // Strings are passed as themselves; everything else as JSON.
        let text = match json {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        out.push((key, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_vars;

    #[test]
    fn vars_take_name_value_and_dbt_mappings() {
        assert_eq!(
            parse_vars("as_of=2026-01-01T00:00:00Z").unwrap(),
            [("as_of".to_string(), "2026-01-01T00:00:00Z".to_string())]
        );
        assert_eq!(
            parse_vars(r#"{"load_source_data": true, "n": 3}"#).unwrap(),
            [
                ("load_source_data".to_string(), "true".to_string()),
                ("n".to_string(), "3".to_string())
            ]
        );
        assert_eq!(
            parse_vars("{start: '2024-01-01', regions: [eu, us]}").unwrap(),
            [
                ("start".to_string(), "2024-01-01".to_string()),
                ("regions".to_string(), r#"["eu","us"]"#.to_string())
            ]
        );
        assert_eq!(
            parse_vars("dbt_date:time_zone: Europe/Paris").unwrap(),
            [("dbt_date:time_zone".to_string(), "Europe/Paris".to_string())]
        );
        assert_eq!(
            parse_vars("dbt_date:time_zone=UTC").unwrap(),
            [("dbt_date:time_zone".to_string(), "UTC".to_string())]
        );
        let e = parse_vars("[1, 2]").unwrap_err().to_string();
        assert!(
            e.contains("not a mapping") && e.contains("NAME=VALUE"),
            "{e}"
        );
        let e = parse_vars("{unclosed").unwrap_err().to_string();
        assert!(e.contains("--vars"), "{e}");
    }
}

pub(crate) fn load(project: &Project, args: &SelectArgs) -> Result<(Workspace, BTreeSet<String>)> {
    let mut ws = Workspace::load(project, &vars(args)?)?;
    if let Some(dir) = &args.state {
        for method in ["modified", "new"] {
            let set = artifacts::state_selection(&ws, method, dir)?;
            ws.project
                .selector_sets
                .insert(format!("state:{method}"), set);
        }
    }
    let selected = dag::select(&ws.project, &ws.dag, &args.select, &args.exclude)?;
    // dbt's manifest, for the tools that read it (and the next --state).
    if let Err(e) = artifacts::write(&project.dir, "manifest.json", &artifacts::manifest(&ws)) {
        tracing::warn!("target/manifest.json not written: {e}");
    }
    Ok((ws, selected))
}

pub async fn seed(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let (ws, selected) = load(project, args)?;
    if ws.project.seeds.is_empty() {
        console::line("no seeds: put CSV files under seeds/");
        return Ok(());
    }
    let ctx = crate::engine::session(&lake).await?;
    let only = (!args.select.is_empty()).then_some(&selected);
    for r in seed::load(&ctx, &lake, &ws.project, only).await? {
        console::line(format!(
            "seed {:<30} {:>10} rows  {:>6.2}s",
            r.name, r.rows, r.seconds
        ));
    }
    Ok(())
}

/// `ferry snapshot`: run the snapshots (all, or the selected ones).
pub async fn snapshot(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let t = Instant::now();
    let (ws, selected) = load(project, args)?;
    if ws.project.snapshots.is_empty() {
        console::line(
            "no snapshots: put them under snapshots/ ({% snapshot name %} blocks, or YAML with relation:)",
        );
        return Ok(());
    }
    let ctx = crate::engine::session(&lake).await?;
    ws.register_views(&ctx, &lake).await?;
    let only = (!args.select.is_empty()).then_some(&selected);
    let mut failed = 0;
    let results = crate::models::snapshot::run(&ws, &ctx, &lake, only).await;
    for (name, r) in &results {
        match r {
            Ok(r) => console::line(format!(
                "OK    snapshot {:<30} {:>8} new versions {:>8} closed {:>10} rows {:>7.2}s",
                r.name, r.inserted, r.closed, r.rows, r.seconds
            )),
            Err(e) => {
                failed += 1;
                console::line(format!("ERROR snapshot {name}\n      {e}"));
            }
        }
    }
    console::line(format!(
        "\n{} snapshot(s), {failed} failed in {:.2}s",
        results.len(),
        t.elapsed().as_secs_f64()
    ));
    if failed > 0 {
        return Err(Error::Input(format!(
            "{failed} snapshot(s) failed; see the errors above"
        )));
    }
    Ok(())
}

pub async fn compile(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let started = Instant::now();
    let (ws, selected) = load(project, args)?;
    let ctx = crate::engine::session(&lake).await?;
    let compiled = ws.compile(&ctx, &lake, &selected).await?;
    // Syncs reading a compiled model: their columns are checked too.
    let names: Vec<String> = compiled.iter().map(|(n, _)| n.clone()).collect();
    let syncs = crate::sync::check_all(project, &ctx, &names).await?;
    if args.select.is_empty() {
        println!(
            "compiled {} in {:.2}s: every model renders and plans against its inputs{}",
            super::count(compiled.len(), "model"),
            started.elapsed().as_secs_f64(),
            if syncs > 0 {
                format!(
                    ", and {} map only columns their models have",
                    super::count(syncs, "sync")
                )
            } else {
                String::new()
            }
        );
    } else {
        for (name, sql) in compiled {
            println!("-- {name}\n{sql}\n");
        }
    }
    Ok(())
}

pub async fn run(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
    threads: usize,
    full_refresh: bool,
) -> Result<()> {
    let started_at = Utc::now();
    let t = Instant::now();
    let run_id = RunId::new();
    let results = run_models(project, &lake, args, threads, full_refresh).await?;
    run::record(&lake, &run_id, "run", started_at, &results).await?;
    let doc = artifacts::run_results("run", &model_nodes(&results), t.elapsed().as_secs_f64());
    if let Err(e) = artifacts::write(&project.dir, "run_results.json", &doc) {
        tracing::warn!("target/run_results.json not written: {e}");
    }
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let (ok, failed, skipped) = (
        count(Status::Success),
        count(Status::Error),
        count(Status::Skipped),
    );
    console::line(format!(
        "\n{ok} succeeded, {failed} failed, {skipped} skipped in {:.2}s (run {run_id})",
        t.elapsed().as_secs_f64()
    ));
    let outcome = if failed > 0 || skipped > 0 {
        Err(Error::Input(format!(
            "{} failed and {skipped} skipped; see the errors above \
             (select * from ferry.model_runs where run_id = '{run_id}')",
            super::count(failed, "model")
        )))
    } else {
        Ok(())
    };
    super::json::emit(
        "run",
        &outcome,
        serde_json::json!({
            "run_id": run_id.to_string(),
            "seconds": t.elapsed().as_secs_f64(),
            "counts": {"success": ok, "error": failed, "skipped": skipped},
            "models": results.iter().map(super::json::model).collect::<Vec<_>>(),
        }),
    );
    outcome
}

/// Run the selected models, printing a line per model; returns every result.
pub async fn run_models(
    project: &Project,
    lake: &Lake,
    args: &SelectArgs,
    threads: usize,
    full_refresh: bool,
) -> Result<Vec<run::ModelResult>> {
    run_models_with(project, lake, args, threads, full_refresh, false).await
}

/// [`run_models`], with each model's data tests run as soon as it is built
/// when `test_each` (a failing error-severity test skips its children).
pub async fn run_models_with(
    project: &Project,
    lake: &Lake,
    args: &SelectArgs,
    threads: usize,
    full_refresh: bool,
    test_each: bool,
) -> Result<Vec<run::ModelResult>> {
    let lake = lake.clone();
    let (ws, selected) = load(project, args)?;
    let selected: BTreeSet<String> = selected
        .into_iter()
        .filter(|n| !ws.dag.is_seed(n))
        .collect();
    let ctx = crate::engine::session(&lake).await?;
    seed::register_for_planning(&ctx, &lake, &ws.project).await?;

    let bar = console::bar(selected.len() as u64, "models");
    let results = run::run(
        Arc::new(ws),
        ctx,
        lake.clone(),
        selected,
        RunOptions {
            threads,
            full_refresh,
            test_each,
        },
        |r| {
            let rows = r
                .rows
                .map(|n| format!("{} rows", console::thousands(n)))
                .unwrap_or_default();
            let line = match r.status {
                Status::Success => format!(
                    "{} {:<32} {:<12} {:>14} {:>7.2}s",
                    console::status("OK", 5),
                    r.name,
                    r.materialized.as_str(),
                    rows,
                    r.seconds
                ),
                Status::Error => format!(
                    "{} {:<32} {:<12} {:>14} {:>7.2}s\n      {}",
                    console::status("ERROR", 5),
                    r.name,
                    r.materialized.as_str(),
                    "",
                    r.seconds,
                    r.error.as_deref().unwrap_or("")
                ),
                Status::Skipped => format!(
                    "{} {:<32} {}",
                    console::status("SKIP", 5),
                    r.name,
                    r.error.as_deref().unwrap_or("")
                ),
            };
            bar.suspend(|| console::line(&line));
            bar.inc(1);
        },
    )
    .await?;
    bar.finish_and_clear();
    Ok(results)
}

pub async fn test(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let t = Instant::now();
    let (nodes, outcome) = test_nodes(project, lake, args).await?;
    let doc = artifacts::run_results("test", &nodes, t.elapsed().as_secs_f64());
    if let Err(e) = artifacts::write(&project.dir, "run_results.json", &doc) {
        tracing::warn!("target/run_results.json not written: {e}");
    }
    let count = |s: &str| nodes.iter().filter(|n| n.status == s).count();
    super::json::emit(
        "test",
        &outcome,
        serde_json::json!({
            "seconds": t.elapsed().as_secs_f64(),
            "counts": {"pass": count("pass"), "warn": count("warn"), "fail": count("fail"), "error": count("error")},
            "tests": nodes.iter().map(super::json::test).collect::<Vec<_>>(),
        }),
    );
    outcome
}

/// Run the tests, printing each; the results as run_results entries, and
/// `Err` when any blocks.
pub(crate) async fn test_nodes(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
) -> Result<(Vec<artifacts::NodeResult>, Result<()>)> {
    let t = Instant::now();
    let own = project.name.clone();
    let mut nodes: Vec<artifacts::NodeResult> = Vec::new();
    let node = |id: String,
                status: &'static str,
                seconds: f64,
                message: Option<String>,
                failures: Option<u64>| {
        let completed_at = Utc::now();
        artifacts::NodeResult {
            unique_id: id,
            status,
            started_at: completed_at - chrono::Duration::milliseconds((seconds * 1000.0) as i64),
            completed_at,
            seconds,
            message,
            failures,
            rows: None,
        }
    };
    // `test_type:unit` / `test_type:data` pick the kind of test; the rest
    // of the selection picks models.
    let mut kinds = BTreeSet::new();
    let mut rest = args.clone();
    rest.select.clear();
    for term in args.select.iter().flat_map(|a| a.split_whitespace()) {
        let mut atoms = Vec::new();
        for atom in term.split(',') {
            match atom.strip_prefix("test_type:") {
                Some(k @ ("unit" | "data")) => {
                    kinds.insert(k.to_string());
                }
                Some(other) => {
                    return Err(Error::Input(format!(
                        "selector test_type:{other}: expected test_type:unit or test_type:data"
                    )));
                }
                None => atoms.push(atom),
            }
        }
        if !atoms.is_empty() {
            rest.select.push(atoms.join(","));
        }
    }
    let want = |k: &str| kinds.is_empty() || kinds.contains(k);
    let (ws, selected) = load(project, &rest)?;
    let ctx = crate::engine::session(&lake).await?;
    ws.register_views(&ctx, &lake).await?;
    let mut blocking = 0;
    let mut unit_passed = 0;
    if want("unit") {
        for r in unit::run(&ws, &ctx, &selected).await {
            let id = format!("unit_test.{own}.{}.{}", r.model, r.name);
            nodes.push(match (&r.error, r.differing) {
                (Some(e), _) => node(id, "error", r.seconds, Some(e.clone()), None),
                (None, 0) => node(id, "pass", r.seconds, None, Some(0)),
                (None, n) => node(id, "fail", r.seconds, Some(r.diff.clone()), Some(n as u64)),
            });
            if let Some(e) = &r.error {
                console::line(format!(
                    "{} unit test {} ({}): could not run: {e}",
                    console::status("ERROR", 5),
                    r.name,
                    r.model
                ));
                blocking += 1;
            } else if r.differing == 0 {
                console::detail(format!(
                    "{} unit test {} ({})",
                    console::status("PASS", 5),
                    r.name,
                    r.model
                ));
                unit_passed += 1;
            } else {
                console::line(format!(
                    "{} unit test {} ({}): {} rows differ\n{}",
                    console::status("FAIL", 5),
                    r.name,
                    r.model,
                    r.differing,
                    r.diff
                ));
                blocking += 1;
            }
        }
    }
    let results = if want("data") {
        datatest::run(&ws, &ctx, &selected).await?
    } else {
        Vec::new()
    };
    let mut warned = 0;
    for r in &results {
        let id = format!("test.{own}.{}", r.name);
        nodes.push(match (&r.error, r.failures) {
            (Some(e), _) => node(id, "error", r.seconds, Some(e.clone()), None),
            (None, 0) => node(id, "pass", r.seconds, None, Some(0)),
            (None, n) if r.severity == Severity::Warn => node(
                id,
                "warn",
                r.seconds,
                Some(format!("Got {n} results, configured to warn if != 0")),
                Some(n),
            ),
            (None, n) => node(
                id,
                "fail",
                r.seconds,
                Some(format!("Got {n} results, configured to fail if != 0")),
                Some(n),
            ),
        });
        if let Some(e) = &r.error {
            console::line(format!(
                "{} {}: could not run: {e}",
                console::status("ERROR", 5),
                r.name
            ));
            blocking += 1;
        } else if r.failures == 0 {
            console::detail(format!("{} {}", console::status("PASS", 5), r.name));
        } else {
            let label = if r.severity == Severity::Warn {
                warned += 1;
                "WARN"
            } else {
                blocking += 1;
                "FAIL"
            };
            console::line(format!(
                "{} {} ({})\n{}",
                console::status(label, 5),
                r.name,
                super::count(r.failures as usize, "failing row"),
                r.sample
            ));
        }
    }
    let passed = results.iter().filter(|r| r.passed()).count() + unit_passed;
    if nodes.is_empty() {
        console::line(
            "no tests selected. Add one: `data_tests: [unique, not_null]` under a column in a \
             schema.yml beside the model, or a SQL file in sql/tests/ that selects the rows \
             that break a rule",
        );
    }
    let hint = if console::verbose() == 0 && passed > 0 {
        " (-v lists each)"
    } else {
        ""
    };
    console::line(format!(
        "{}: {passed} passed, {warned} warned, {blocking} failed in {:.2}s{hint}",
        super::count(nodes.len(), "test"),
        t.elapsed().as_secs_f64()
    ));
    if blocking > 0 {
        return Ok((
            nodes,
            Err(Error::Input(format!(
                "{} failed (unit tests, and data tests with severity error)",
                super::count(blocking, "test")
            ))),
        ));
    }
    Ok((nodes, Ok(())))
}

/// run_results entries of models.
pub(crate) fn model_nodes(results: &[run::ModelResult]) -> Vec<artifacts::NodeResult> {
    results
        .iter()
        .map(|r| artifacts::NodeResult {
            unique_id: r.unique_id.clone(),
            status: r.status.as_str(),
            started_at: r.started_at,
            completed_at: r.finished_at,
            seconds: r.seconds,
            message: r.error.clone(),
            failures: None,
            rows: r.rows,
        })
        .collect()
}

/// `ferry docs`: the manifest and the page in `out`; returns the page's path.
pub async fn docs(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
    out: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let t = Instant::now();
    let (ws, _) = load(project, args)?;
    let ctx = crate::engine::session(&lake).await?;
    let mut manifest = model_docs::manifest(&ws, &ctx, &lake, &project.name).await?;
    manifest.project = project.name.clone();
    let syncs: Vec<(crate::sync::config::Sync, String)> = project
        .syncs
        .values()
        .map(|s| {
            let kind = project
                .destinations
                .get(&s.destination)
                .map(|d| d.kind.as_str())
                .unwrap_or("crm");
            (s.clone(), kind.to_string())
        })
        .collect();
    model_docs::add_syncs(&mut manifest, &syncs);
    let page = model_docs::write(&manifest, out)?;
    console::line(format!(
        "documented {}, {}, {} and {} in {:.2}s: {} (and manifest.json beside it)",
        super::count(manifest.count("model"), "model"),
        super::count(manifest.count("source"), "source"),
        super::count(manifest.count("seed"), "seed"),
        super::count(manifest.count("sync"), "sync"),
        t.elapsed().as_secs_f64(),
        page.display()
    ));
    Ok(page)
}

/// One source table's freshness.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Freshness {
    pub source: String,
    pub table: String,
    /// `pass`, `warn`, `error` or `runtime error`, as dbt writes them.
    pub status: &'static str,
    pub max_loaded_at: Option<String>,
    pub age_seconds: Option<i64>,
    pub error: Option<String>,
}

/// `ferry source freshness`: for each declared source table with a
/// `loaded_at_field` and a `freshness` threshold, the newest
/// `loaded_at_field` against `warn_after` / `error_after`, reported the way
/// dbt does; `Err` when any table is stale past `error_after` or cannot be
/// read. Results are also written to `target/sources.json`.
pub async fn source_freshness(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
) -> Result<Vec<Freshness>> {
    // --select names sources here, not models.
    let models = SelectArgs {
        select: Vec::new(),
        exclude: Vec::new(),
        vars: args.vars.clone(),
        state: None,
    };
    let (ws, _) = load(project, &models)?;
    let wanted = |t: &crate::models::project::SourceTable| {
        args.select.is_empty()
            || args.select.iter().any(|s| {
                let s = s.strip_prefix("source:").unwrap_or(s);
                s == t.source || *s == format!("{}.{}", t.source, t.name)
            })
    };
    let tables: Vec<_> = ws
        .project
        .sources
        .values()
        .filter(|t| {
            t.loaded_at_field.is_some() && (t.warn_after.is_some() || t.error_after.is_some())
        })
        .filter(|t| wanted(t))
        .cloned()
        .collect();
    if tables.is_empty() {
        println!(
            "no source to check: give a source table loaded_at_field and freshness: {{warn_after: {{count: 12, period: hour}}}} in a schema file"
        );
        return Ok(Vec::new());
    }
    let ctx = crate::engine::session(&lake).await?;
    let now = Utc::now();
    let total = tables.len();
    let mut out = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let started = Instant::now();
        let name = format!("{}.{}", t.source, t.name);
        println!(
            "{} of {total} START freshness of {name} {} [RUN]",
            i + 1,
            ".".repeat(40usize.saturating_sub(name.len()))
        );
        let relation = match ws.project.source_map.target(&t.source, &t.name) {
            SourceTarget::Seed(name) | SourceTarget::Stream(name) => name,
        };
        let field = t.loaded_at_field.clone().unwrap_or_default();
        let sql = format!(
            "select cast(max(cast({field} as timestamp)) as varchar) as max_loaded_at from {relation}{}",
            t.filter
                .as_ref()
                .map(|f| format!(" where {f}"))
                .unwrap_or_default()
        );
        let result = async {
            let batches = ctx.sql(&sql).await?.collect().await?;
            let rows = crate::lake::log::batch_rows_json(&batches)?;
            Ok::<_, Error>(
                rows.first()
                    .and_then(|r| r["max_loaded_at"].as_str().map(str::to_string)),
            )
        }
        .await;
        let mut f = Freshness {
            source: t.source.clone(),
            table: t.name.clone(),
            status: "pass",
            max_loaded_at: None,
            age_seconds: None,
            error: None,
        };
        match result {
            Ok(Some(max)) => {
                let parsed = chrono::NaiveDateTime::parse_from_str(&max, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| {
                        chrono::NaiveDateTime::parse_from_str(&max, "%Y-%m-%d %H:%M:%S%.f")
                    })
                    .map(|n| n.and_utc());
                match parsed {
                    Ok(at) => {
                        let age = (now - at).num_seconds();
                        f.age_seconds = Some(age);
                        f.max_loaded_at = Some(at.to_rfc3339());
                        if t.error_after.as_ref().is_some_and(|e| age > e.seconds()) {
                            f.status = "error";
                        } else if t.warn_after.as_ref().is_some_and(|w| age > w.seconds()) {
                            f.status = "warn";
                        }
                    }
                    Err(e) => {
                        f.status = "runtime error";
                        f.error = Some(format!("{field} = {max:?} is not a timestamp: {e}"));
                    }
                }
            }
            Ok(None) => {
                f.status = "runtime error";
                f.error = Some(format!("{relation} has no rows (no {field} to measure)"));
            }
            Err(e) => {
                f.status = "runtime error";
                f.error = Some(format!("{} ({})", e, t.origin));
            }
        }
        let label = match f.status {
            "pass" => "PASS",
            "warn" => "WARN",
            "error" => "ERROR STALE",
            _ => "ERROR",
        };
        println!(
            "{} of {total} {label} freshness of {name} {} [{label} in {:.2}s]",
            i + 1,
            ".".repeat(40usize.saturating_sub(name.len())),
            started.elapsed().as_secs_f64()
        );
        if let Some(e) = &f.error {
            println!("  {e}");
        } else if f.status != "pass" {
            println!(
                "  newest {field}: {} ({} ago)",
                f.max_loaded_at.as_deref().unwrap_or("?"),
                human_age(f.age_seconds.unwrap_or(0))
            );
        }
        out.push(f);
    }
    let count = |s: &str| out.iter().filter(|f| f.status == s).count();
    let errors = count("error") + count("runtime error");
    println!(
        "\nDone. PASS={} WARN={} ERROR={} SKIP=0 TOTAL={total}",
        count("pass"),
        count("warn"),
        errors
    );
    // dbt's artifact, for tools that read it.
    let artifact = serde_json::json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/sources/v3.json",
            "generated_at": now.to_rfc3339(),
            "invocation_id": uuid::Uuid::now_v7().to_string(),
        },
        "elapsed_time": 0,
        "results": out.iter().map(|f| serde_json::json!({
            "unique_id": format!("source.{}.{}.{}", project.name, f.source, f.table),
            "max_loaded_at": f.max_loaded_at,
            "snapshotted_at": now.to_rfc3339(),
            "max_loaded_at_time_ago_in_s": f.age_seconds,
            "status": f.status,
            "error": f.error,
        })).collect::<Vec<_>>(),
    });
    let dir = project.dir.join("target");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("sources.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&artifact).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&path, e))?;
    if errors > 0 {
        return Err(Error::Input(format!(
            "{errors} source(s) failed the freshness check (stale past error_after, or unreadable); see target/sources.json"
        )));
    }
    Ok(out)
}

fn human_age(s: i64) -> String {
    match s {
        s if s < 3_600 => format!("{} minutes", s / 60),
        s if s < 172_800 => format!("{} hours", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}
