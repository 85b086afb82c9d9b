//! The model stages: `ferry seed`, `compile`, `run`, `test` and `docs`,
//! also called by [`super::build`] and the scheduler.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::Selection as SelectArgs;
use crate::error::{Error, Result};
use crate::lake::{Lake, RunId};
use crate::models::project::Severity;
use crate::models::run::{self, RunOptions, Status};
use crate::models::{Workspace, dag, datatest, docs as model_docs, seed};
use crate::project::Project;

fn vars(args: &SelectArgs) -> Result<Vec<(String, String)>> {
    args.vars
        .iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| Error::Input(format!("--vars {v:?}: write NAME=VALUE")))
        })
        .collect()
}

pub(crate) fn load(project: &Project, args: &SelectArgs) -> Result<(Workspace, BTreeSet<String>)> {
    let ws = Workspace::load(project, &vars(args)?)?;
    let selected = dag::select(&ws.project, &ws.dag, &args.select, &args.exclude)?;
    Ok((ws, selected))
}

pub async fn seed(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let (ws, selected) = load(project, args)?;
    if ws.project.seeds.is_empty() {
        println!("no seeds: put CSV files under seeds/");
        return Ok(());
    }
    let ctx = crate::engine::session(&lake).await?;
    let only = (!args.select.is_empty()).then_some(&selected);
    for r in seed::load(&ctx, &lake, &ws.project, only).await? {
        println!(
            "seed {:<30} {:>10} rows  {:>6.2}s",
            r.name, r.rows, r.seconds
        );
    }
    Ok(())
}

pub async fn compile(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let started = Instant::now();
    let (ws, selected) = load(project, args)?;
    let ctx = crate::engine::session(&lake).await?;
    let compiled = ws.compile(&ctx, &lake, &selected).await?;
    if args.select.is_empty() {
        println!(
            "compiled {} models in {:.2}s: every model renders and plans against its inputs",
            compiled.len(),
            started.elapsed().as_secs_f64()
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
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let (ok, failed, skipped) = (
        count(Status::Success),
        count(Status::Error),
        count(Status::Skipped),
    );
    println!(
        "\n{ok} succeeded, {failed} failed, {skipped} skipped in {:.2}s (run {run_id})",
        t.elapsed().as_secs_f64()
    );
    if failed > 0 || skipped > 0 {
        return Err(Error::Input(format!(
            "{failed} model(s) failed and {skipped} were skipped; see the errors above \
             (select * from ferry.model_runs where run_id = '{run_id}')"
        )));
    }
    Ok(())
}

/// Run the selected models, printing a line per model; returns every result.
pub async fn run_models(
    project: &Project,
    lake: &Lake,
    args: &SelectArgs,
    threads: usize,
    full_refresh: bool,
) -> Result<Vec<run::ModelResult>> {
    let lake = lake.clone();
    let (ws, selected) = load(project, args)?;
    let selected: BTreeSet<String> = selected
        .into_iter()
        .filter(|n| !ws.dag.is_seed(n))
        .collect();
    let ctx = crate::engine::session(&lake).await?;
    seed::register_for_planning(&ctx, &lake, &ws.project).await?;

    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} models {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let results = run::run(
        Arc::new(ws),
        ctx,
        lake.clone(),
        selected,
        RunOptions {
            threads,
            full_refresh,
        },
        |r| {
            let rows = r.rows.map(|n| format!("{n} rows")).unwrap_or_default();
            let line = match r.status {
                Status::Success => format!(
                    "OK    {:<32} {:<12} {:>14} {:>7.2}s",
                    r.name,
                    r.materialized.as_str(),
                    rows,
                    r.seconds
                ),
                Status::Error => format!(
                    "ERROR {:<32} {:<12} {:>14} {:>7.2}s\n      {}",
                    r.name,
                    r.materialized.as_str(),
                    "",
                    r.seconds,
                    r.error.as_deref().unwrap_or("")
                ),
                Status::Skipped => {
                    format!("SKIP  {:<32} {}", r.name, r.error.as_deref().unwrap_or(""))
                }
            };
            bar.suspend(|| println!("{line}"));
            bar.inc(1);
        },
    )
    .await?;
    bar.finish_and_clear();
    Ok(results)
}

pub async fn test(project: &Project, lake: Lake, args: &SelectArgs) -> Result<()> {
    let t = Instant::now();
    let (ws, selected) = load(project, args)?;
    let ctx = crate::engine::session(&lake).await?;
    ws.register_views(&ctx, &lake).await?;
    let results = datatest::run(&ws, &ctx, &selected).await?;
    let mut blocking = 0;
    let mut warned = 0;
    for r in &results {
        if let Some(e) = &r.error {
            println!("ERROR {}: could not run: {e}", r.name);
            blocking += 1;
        } else if r.failures == 0 {
            println!("PASS  {}", r.name);
        } else {
            let label = if r.severity == Severity::Warn {
                warned += 1;
                "WARN "
            } else {
                blocking += 1;
                "FAIL "
            };
            println!(
                "{label} {} ({} failing rows)\n{}",
                r.name, r.failures, r.sample
            );
        }
    }
    let passed = results.iter().filter(|r| r.passed()).count();
    println!(
        "\n{passed} passed, {warned} warned, {blocking} failed in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    if blocking > 0 {
        return Err(Error::Input(format!(
            "{blocking} data test(s) failed with severity error"
        )));
    }
    Ok(())
}

pub async fn docs(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
    out: &std::path::Path,
) -> Result<()> {
    let (ws, _) = load(project, args)?;
    let ctx = crate::engine::session(&lake).await?;
    let mut manifest = model_docs::manifest(&ws, &ctx, &lake).await?;
    manifest.project = project.name.clone();
    model_docs::write(&manifest, out)?;
    println!(
        "documented {} models: {}/index.html and {}/manifest.json",
        manifest.models.len(),
        out.display(),
        out.display()
    );
    Ok(())
}
