//! `ferry build`: the whole route for a project, in dependency order:
//! extract → seed → run → test → sync. Sync runs only when every stage
//! before it succeeded, so a failing error-severity test (or a failed model)
//! keeps bad data out of the CRM. One summary at the end; the build is
//! recorded in `ferry.runs` (command `build`) with its models in
//! `ferry.model_runs`, and its stages in `ferry.run_stages`.

use std::time::Instant;

use chrono::Utc;

use super::{Selection, Stop};
use crate::error::{Error, Result};
use crate::lake::{Lake, RunId};
use crate::models::run::{self, Status};
use crate::project::Project;

/// One stage of a run, as the summary and `ferry.run_stages` show it.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: &'static str,
    /// `ok`, `failed`, `skipped` or `stopped`.
    pub status: &'static str,
    pub seconds: f64,
    pub detail: String,
    /// Rows extracted (extract), built (run) or sent (sync).
    pub rows: u64,
    /// Rows quarantined (extract) or refused (sync).
    pub rejected: u64,
    pub api_calls: u64,
    pub rate_limited: u64,
    /// Its rows moved data between a vendor and the lake.
    pub moves: bool,
    pub auth_refused: bool,
    /// Figures per stream and per sync (for error-rate alerts).
    pub pipelines: Vec<PipelineFigures>,
}

/// One stream's or sync's figures in a run.
#[derive(Debug, Clone)]
pub struct PipelineFigures {
    /// `stream:<source.stream>` or `sync:<name>`.
    pub pipeline: String,
    pub attempted: u64,
    pub rejected: u64,
    /// The sync's own run id (its rows in `ferry.sync_log`).
    pub run_id: Option<String>,
}

impl Stage {
    pub fn new(name: &'static str, status: &'static str, t: Instant, detail: String) -> Stage {
        Stage {
            name,
            status,
            seconds: t.elapsed().as_secs_f64(),
            detail,
            rows: 0,
            rejected: 0,
            api_calls: 0,
            rate_limited: 0,
            moves: false,
            auth_refused: false,
            pipelines: Vec::new(),
        }
    }

    pub fn skipped(name: &'static str, why: &str) -> Stage {
        let mut s = Stage::new(name, "skipped", Instant::now(), why.to_string());
        s.seconds = 0.0;
        s
    }

    pub fn failed(name: &'static str, t: Instant, e: &Error) -> Stage {
        let mut s = Stage::new(name, "failed", t, e.to_string());
        s.auth_refused = super::refused_credentials(e);
        s
    }
}

/// A build's stages and outcome.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub run_id: String,
    pub stages: Vec<Stage>,
    pub ok: bool,
    /// A stop was asked for and the build ended at a safe point.
    pub stopped: bool,
}

impl BuildReport {
    /// The build as a result: `Err` names the stages that failed.
    pub fn into_result(self) -> Result<BuildReport> {
        if self.ok {
            return Ok(self);
        }
        if self.stopped {
            return Err(Error::Input(format!(
                "build {} stopped before it finished; run it again to go on",
                self.run_id
            )));
        }
        Err(Error::Input(format!(
            "the build failed at: {}",
            self.stages
                .iter()
                .filter(|s| s.status == "failed")
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

pub struct BuildOptions {
    pub threads: usize,
    pub full_refresh: bool,
    pub skip_extract: bool,
    pub skip_sync: bool,
    /// Checked between stages: a stop skips the rest.
    pub stop: Stop,
    /// The schedule running it, for `ferry.run_stages`.
    pub schedule: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            threads: 4,
            full_refresh: false,
            skip_extract: false,
            skip_sync: false,
            stop: Stop::never(),
            schedule: None,
        }
    }
}

/// Run the route. A failed stage is in the report (`ok: false`); `Err` is
/// for a build that could not start (a project that does not load) or be
/// recorded. Callers that want failure as an error use
/// [`BuildReport::into_result`].
pub async fn build(
    project: &Project,
    lake: Lake,
    args: &Selection,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    // Where this writes, before anything is written.
    println!("{}", project.target_line());
    project.check_clean()?;
    let started_at = Utc::now();
    let run_id = RunId::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut model_results = Vec::new();
    let failed = |stages: &[Stage]| stages.iter().any(|s| s.status == "failed");

    // 1. extract
    if project.extract.is_empty() || opts.skip_extract {
        let why = if opts.skip_extract {
            "--skip-extract"
        } else {
            "no extraction sources"
        };
        stages.push(Stage::skipped("extract", why));
    } else {
        stages.push(super::extract_stage(project, &lake, &[], &opts.stop).await);
    }
    let stopped = |stages: &mut Vec<Stage>, next: &[&'static str]| {
        if opts.stop.requested() {
            for n in next {
                stages.push(Stage::skipped(n, "stopped: ferry is shutting down"));
            }
            true
        } else {
            false
        }
    };
    if stopped(&mut stages, &["seed", "run", "test", "sync"]) {
        return finish(&lake, opts, run_id, started_at, &[], stages, true).await;
    }

    // 2. seed, 3. run, 4. test: the same as the commands of those names.
    let (ws, chosen) = super::models::load(project, args)?;
    let t = Instant::now();
    if ws.project.seeds.is_empty() {
        stages.push(Stage::skipped("seed", "no seeds"));
    } else {
        println!("== seed");
        match super::models::seed(project, lake.clone(), args).await {
            Ok(()) => stages.push(Stage::new(
                "seed",
                "ok",
                t,
                format!("{} seeds", ws.project.seeds.len()),
            )),
            Err(e) => {
                eprintln!("error: {e}");
                stages.push(Stage::failed("seed", t, &e));
            }
        }
    }
    if !ws.project.snapshots.is_empty() {
        let t = Instant::now();
        println!("== snapshot");
        match super::models::snapshot(project, lake.clone(), args).await {
            Ok(()) => stages.push(Stage::new(
                "snapshot",
                "ok",
                t,
                format!("{} snapshots", ws.project.snapshots.len()),
            )),
            Err(e) => {
                eprintln!("error: {e}");
                stages.push(Stage::failed("snapshot", t, &e));
            }
        }
    }
    let t = Instant::now();
    println!("== run");
    match super::models::run_models_with(
        project,
        &lake,
        args,
        opts.threads,
        opts.full_refresh,
        true,
    )
    .await
    {
        Ok(results) => {
            let bad = results
                .iter()
                .filter(|r| r.status != Status::Success)
                .count();
            let mut st = Stage::new(
                "run",
                if bad == 0 { "ok" } else { "failed" },
                t,
                format!("{} models, {bad} failed or skipped", results.len()),
            );
            st.rows = results.iter().filter_map(|r| r.rows).sum::<u64>();
            stages.push(st);
            model_results = results;
        }
        Err(e) => {
            eprintln!("error: {e}");
            stages.push(Stage::failed("run", t, &e));
        }
    }
    if stopped(&mut stages, &["test", "sync"]) {
        return finish(
            &lake,
            opts,
            run_id,
            started_at,
            &model_results,
            stages,
            true,
        )
        .await;
    }
    let t = Instant::now();
    println!("== test");
    // Tests of models this build could not build would only repeat the
    // run's errors: they are left out, and the run stage has failed anyway.
    let unbuilt: Vec<String> = model_results
        .iter()
        .filter(|r| r.status != Status::Success)
        .map(|r| r.name.clone())
        .collect();
    let mut test_args = args.clone();
    test_args.exclude.extend(unbuilt.iter().cloned());
    let note = if unbuilt.is_empty() {
        String::new()
    } else {
        println!(
            "(not testing {} that failed or were skipped)",
            super::count(unbuilt.len(), "model")
        );
        format!(
            "tests of {} unbuilt not run",
            super::count(unbuilt.len(), "model")
        )
    };
    let tested = super::models::test_nodes(project, lake.clone(), &test_args).await;
    let mut nodes = super::models::model_nodes(&model_results);
    match tested {
        Ok((tests, outcome)) => {
            nodes.extend(tests);
            match outcome {
                Ok(()) => stages.push(Stage::new("test", "ok", t, note)),
                Err(e) => stages.push(Stage::failed("test", t, &e)),
            }
        }
        Err(e) => stages.push(Stage::failed("test", t, &e)),
    }
    // dbt's run_results.json: the build's models and tests.
    let doc = crate::models::artifacts::run_results(
        "build",
        &nodes,
        (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0,
    );
    if let Err(e) = crate::models::artifacts::write(&project.dir, "run_results.json", &doc) {
        tracing::warn!("target/run_results.json not written: {e}");
    }

    // 5. sync: the syncs whose model was built (all, without --select).
    if stopped(&mut stages, &["sync"]) {
        return finish(
            &lake,
            opts,
            run_id,
            started_at,
            &model_results,
            stages,
            true,
        )
        .await;
    }
    let selected: Vec<String> = if args.select.is_empty() {
        project.syncs.keys().cloned().collect()
    } else {
        project
            .syncs
            .values()
            .filter(|s| chosen.contains(&s.model))
            .map(|s| s.name.clone())
            .collect()
    };
    let mut stopped_in_sync = false;
    if selected.is_empty() || opts.skip_sync {
        let why = if opts.skip_sync {
            "--skip-sync"
        } else {
            "no syncs for the selected models"
        };
        stages.push(Stage::skipped("sync", why));
    } else if failed(&stages) {
        let first = stages
            .iter()
            .find(|s| s.status == "failed")
            .map(|s| s.name)
            .unwrap_or("?");
        println!("== sync skipped: the {first} stage failed, so nothing is sent to the CRM");
        stages.push(Stage::skipped(
            "sync",
            &format!("{first} failed: nothing sent to the CRM"),
        ));
    } else {
        let (stage, stopped) = super::sync_stage(project, &lake, &selected, &opts.stop).await;
        stopped_in_sync = stopped;
        stages.push(stage);
    }
    finish(
        &lake,
        opts,
        run_id,
        started_at,
        &model_results,
        stages,
        stopped_in_sync,
    )
    .await
}

async fn finish(
    lake: &Lake,
    opts: &BuildOptions,
    run_id: RunId,
    started_at: chrono::DateTime<Utc>,
    model_results: &[run::ModelResult],
    stages: Vec<Stage>,
    stopped: bool,
) -> Result<BuildReport> {
    let ok = !stages.iter().any(|s| s.status == "failed") && !stopped;
    run::record_as(lake, &run_id, "build", started_at, model_results, ok).await?;
    super::record_stages(
        lake,
        "build",
        opts.schedule.as_deref(),
        &run_id.to_string(),
        &stages,
        started_at,
    )
    .await?;
    println!(
        "\nbuild {run_id}: {}",
        if ok {
            "success"
        } else if stopped {
            "STOPPED"
        } else {
            "FAILED"
        }
    );
    for s in &stages {
        println!(
            "  {:<8} {:<8} {:>7.2}s  {}",
            s.name,
            s.status,
            s.seconds,
            s.detail.lines().next().unwrap_or("")
        );
    }
    Ok(BuildReport {
        run_id: run_id.to_string(),
        stages,
        ok,
        stopped,
    })
}
