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
    /// The extract stage's streams, failed ones included.
    pub streams: Vec<crate::extract::StreamSummary>,
    /// The sync stage's runs.
    pub syncs: Vec<crate::sync::SyncReport>,
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
            streams: Vec::new(),
            syncs: Vec::new(),
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
    pub models: Vec<run::ModelResult>,
    /// The data and unit tests' results.
    pub tests: Vec<crate::models::artifacts::NodeResult>,
    /// Rows or files refused on the way (quarantined, refused by the CRM).
    pub rejects: Vec<String>,
}

impl BuildReport {
    /// The build as a result: `Err` names the stages that failed.
    pub fn into_result(self) -> Result<BuildReport> {
        if self.ok {
            return Ok(self);
        }
        self.fail()
    }

    /// [`BuildReport::into_result`], and a build that refused rows or files
    /// on the way is [`Error::Rejected`] (exit code 3) unless `allow_rejects`.
    pub fn into_result_with(self, allow_rejects: bool) -> Result<BuildReport> {
        if !self.ok {
            return self.fail();
        }
        if !allow_rejects && !self.rejects.is_empty() {
            return Err(Error::Rejected(format!(
                "the build finished, but {}. Fix the input, or pass --allow-rejects to count this as a success",
                self.rejects.join("; ")
            )));
        }
        Ok(self)
    }

    /// The build's `--format json` document.
    pub fn json(&self, result: &Result<()>) {
        super::json::emit(
            "build",
            result,
            serde_json::json!({
                "run_id": self.run_id,
                "stopped": self.stopped,
                "stages": self.stages.iter().map(super::json::stage).collect::<Vec<_>>(),
                "streams": self.stages.iter().flat_map(|s| s.streams.iter().map(super::json::stream)).collect::<Vec<_>>(),
                "models": self.models.iter().map(super::json::model).collect::<Vec<_>>(),
                "tests": self.tests.iter().map(super::json::test).collect::<Vec<_>>(),
                "syncs": self.stages.iter().flat_map(|s| s.syncs.iter().map(super::json::sync)).collect::<Vec<_>>(),
            }),
        );
    }

    fn fail(self) -> Result<BuildReport> {
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
    crate::console::line(project.target_line());
    project.check_clean()?;
    let started_at = Utc::now();
    let run_id = RunId::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut model_results = Vec::new();
    let mut test_results = Vec::new();

    // 0. check: what can be validated without a call or a run. A project
    // that does not compile stops here; a missing secret fails only the
    // source or sync that needs it.
    let t = Instant::now();
    crate::console::line("== check");
    let checked = super::check::check(project, &lake, args).await?;
    super::check::print(&checked);
    let blocking = checked.blocking();
    if !blocking.is_empty() {
        let detail = super::check::CheckReport::summary(&blocking);
        stages.push(Stage::new("check", "failed", t, detail));
        for n in ["extract", "seed", "run", "test", "sync"] {
            stages.push(Stage::skipped(n, "the project does not check"));
        }
        return finish(&lake, opts, run_id, started_at, &[], &[], stages, false).await;
    }
    let check = Stage::new(
        "check",
        if checked.findings.is_empty() {
            "ok"
        } else {
            "failed"
        },
        t,
        if checked.findings.is_empty() {
            format!(
                "{}, {}, {}",
                super::count(checked.models, "model"),
                super::count(checked.syncs, "sync"),
                super::count(checked.tests, "test")
            )
        } else {
            super::check::CheckReport::summary(&checked.findings.iter().collect::<Vec<_>>())
        },
    );
    stages.push(check);
    let runnable: Vec<String> = project
        .extract
        .keys()
        .filter(|s| !checked.missing_secrets.contains(&format!("source {s}")))
        .cloned()
        .collect();

    // 1. extract
    if project.extract.is_empty() || opts.skip_extract || runnable.is_empty() {
        let why = if opts.skip_extract {
            "--skip-extract"
        } else if project.extract.is_empty() {
            "no extraction sources"
        } else {
            "no source has its credentials"
        };
        stages.push(Stage::skipped("extract", why));
    } else {
        let only: &[String] = if runnable.len() == project.extract.len() {
            &[]
        } else {
            &runnable
        };
        stages.push(super::extract_stage(project, &lake, only, &opts.stop).await);
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
        return finish(&lake, opts, run_id, started_at, &[], &[], stages, true).await;
    }

    // 2. seed, 3. run, 4. test: the same as the commands of those names.
    let (ws, chosen) = super::models::load(project, args)?;
    let t = Instant::now();
    if ws.project.seeds.is_empty() {
        stages.push(Stage::skipped("seed", "no seeds"));
    } else {
        crate::console::line("== seed");
        match super::models::seed(project, lake.clone(), args).await {
            Ok(()) => stages.push(Stage::new(
                "seed",
                "ok",
                t,
                format!("{} seeds", ws.project.seeds.len()),
            )),
            Err(e) => {
                eprintln!("{} {e}", crate::console::error_prefix());
                stages.push(Stage::failed("seed", t, &e));
            }
        }
    }
    if !ws.project.snapshots.is_empty() {
        let t = Instant::now();
        crate::console::line("== snapshot");
        match super::models::snapshot(project, lake.clone(), args).await {
            Ok(()) => stages.push(Stage::new(
                "snapshot",
                "ok",
                t,
                format!("{} snapshots", ws.project.snapshots.len()),
            )),
            Err(e) => {
                eprintln!("{} {e}", crate::console::error_prefix());
                stages.push(Stage::failed("snapshot", t, &e));
            }
        }
    }
    let t = Instant::now();
    crate::console::line("== run");
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
            eprintln!("{} {e}", crate::console::error_prefix());
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
            &[],
            stages,
            true,
        )
        .await;
    }
    let t = Instant::now();
    crate::console::line("== test");
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
        crate::console::line(format!(
            "(not testing {} that failed or were skipped)",
            super::count(unbuilt.len(), "model")
        ));
        format!(
            "tests of {} unbuilt not run",
            super::count(unbuilt.len(), "model")
        )
    };
    let tested = super::models::test_nodes(project, lake.clone(), &test_args).await;
    let mut nodes = super::models::model_nodes(&model_results);
    match tested {
        Ok((tests, outcome)) => {
            let warned = tests.iter().filter(|n| n.status == "warn").count();
            let passed = tests.iter().filter(|n| n.status == "pass").count();
            test_results = tests.clone();
            nodes.extend(tests);
            let mut said = format!("{} passed", super::count(passed, "test"));
            if warned > 0 {
                said.push_str(&format!(", {warned} warned"));
            }
            let note = if note.is_empty() {
                said
            } else {
                format!("{said}; {note}")
            };
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
            &test_results,
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
    let selected: Vec<String> = selected
        .into_iter()
        .filter(|n| !checked.missing_secrets.contains(&format!("sync {n}")))
        .collect();
    let mut stopped_in_sync = false;
    // A missing secret failed the check stage for its own source or sync
    // only: it does not hold the other syncs back.
    let failed = |stages: &[Stage]| {
        stages
            .iter()
            .any(|s| s.status == "failed" && s.name != "check")
    };
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
            .find(|s| s.status == "failed" && s.name != "check")
            .map(|s| s.name)
            .unwrap_or("?");
        crate::console::line(format!(
            "== sync skipped: the {first} stage failed, so nothing is sent to the CRM"
        ));
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
        &test_results,
        stages,
        stopped_in_sync,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    lake: &Lake,
    opts: &BuildOptions,
    run_id: RunId,
    started_at: chrono::DateTime<Utc>,
    model_results: &[run::ModelResult],
    tests: &[crate::models::artifacts::NodeResult],
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
    let rejects = rejects(&stages);
    let word = if !ok && stopped {
        "STOPPED"
    } else if !ok {
        "FAILED"
    } else if !rejects.is_empty() {
        "success, with rejects"
    } else {
        "success"
    };
    let elapsed = (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0;
    crate::console::line(format!(
        "\nbuild {run_id}: {} in {elapsed:.1}s",
        crate::console::status(word, 0)
    ));
    for s in &stages {
        crate::console::line(format!(
            "  {:<8} {} {:>7.2}s  {}",
            s.name,
            crate::console::status(s.status, 8),
            s.seconds,
            s.detail.lines().next().unwrap_or("")
        ));
    }
    for r in &rejects {
        crate::console::line(format!("  {} {r}", crate::console::status("WARN", 0)));
    }
    Ok(BuildReport {
        run_id: run_id.to_string(),
        stages,
        ok,
        stopped,
        models: model_results.to_vec(),
        tests: tests.to_vec(),
        rejects,
    })
}

/// What the stages refused: quarantined rows and refused files by stream,
/// rows the CRM rejected by sync.
fn rejects(stages: &[Stage]) -> Vec<String> {
    let mut out = Vec::new();
    for s in stages {
        let streams = super::rejects_detail(&s.streams);
        if !streams.is_empty() {
            out.push(format!("extract: {streams}"));
        }
        for r in &s.syncs {
            if r.counts.rejected > 0 {
                out.push(format!(
                    "sync {}: {} rejected (see: select key, error_message from ferry.sync_log where run_id = '{}' and status = 'rejected')",
                    r.sync,
                    super::count(r.counts.rejected as usize, "row"),
                    r.run_id
                ));
            }
        }
    }
    out
}
