//! The route runner: what `ferry build`, `ferry demo` and the scheduler
//! (`ferry serve`) all call to run a job. A [`Job`] is a build (extract →
//! seed → run → test → sync), an extraction of some sources, a sync of
//! some syncs, or the data tests; [`run_job`] runs it, records its stages in
//! `ferry.run_stages`, and returns an [`Outcome`] with the figures the
//! scheduler and the alerts need (rows moved, rejected, API calls, 429s,
//! whether a vendor refused the credentials).
//!
//! A [`Stop`] asks a running job to end at its next safe point: between
//! stages, between streams, between syncs. Every stage commits its own
//! state as it goes (cursors after data, sync batches after the CRM
//! confirmed), so a stopped job resumes where it stopped.

pub mod build;
pub mod check;
pub mod json;
pub mod models;

use std::time::Instant;

use chrono::Utc;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lake::tables::{self, StageRow};
use crate::lake::{Lake, RunId};
use crate::project::Project;
use crate::sync::{SyncOptions, Syncer};

pub use crate::console::{self, thousands};

/// `1 model`, `3 models`: a count and its noun, in summaries.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub use build::{BuildOptions, BuildReport, PipelineFigures, Stage};

/// `--select`, `--exclude` and `--vars`, shared by the model commands and
/// schedules.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Models to include: names, +name (with ancestors), name+ (with
    /// descendants), tag:x, path:models/marts; space = union, comma = intersection.
    #[arg(long, short = 's', num_args = 1..)]
    #[serde(default)]
    pub select: Vec<String>,
    /// Models to leave out, same syntax.
    #[arg(long, num_args = 1..)]
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Values for var(): name=value, or a YAML/JSON mapping as dbt takes it
    /// (`{"key": true}`); repeatable; override [vars] in ferry.toml.
    #[arg(long = "vars", value_name = "NAME=VALUE")]
    #[serde(default)]
    pub vars: Vec<String>,
    /// For `state:modified` / `state:new` selectors: the folder holding the
    /// manifest.json to compare with (a saved target/).
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub state: Option<std::path::PathBuf>,
}

/// Asks a running job to stop at its next safe point.
#[derive(Debug, Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// A stop that never fires.
    pub fn never() -> Stop {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Keep the sender alive for the process: the receiver then never
        // reports a change.
        std::mem::forget(tx);
        Stop(rx)
    }

    pub fn new(rx: tokio::sync::watch::Receiver<bool>) -> Stop {
        Stop(rx)
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// The underlying signal, for stages that check it themselves (syncs
    /// stop between batches).
    pub fn receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.clone()
    }
}

/// What a job runs.
#[derive(Debug, Clone)]
pub enum Job {
    Build {
        selection: Selection,
        full_refresh: bool,
        skip_extract: bool,
        skip_sync: bool,
    },
    /// `source` or `source.stream`; all extraction sources when empty.
    Extract {
        streams: Vec<String>,
    },
    /// Sync names; all syncs when empty.
    Sync {
        names: Vec<String>,
    },
    Test {
        selection: Selection,
    },
    /// Webhook sources to reconcile against their API (all with reconcile when empty).
    Reconcile {
        sources: Vec<String>,
    },
}

impl Job {
    pub fn command(&self) -> &'static str {
        match self {
            Job::Build { .. } => "build",
            Job::Extract { .. } => "extract",
            Job::Sync { .. } => "sync",
            Job::Test { .. } => "test",
            Job::Reconcile { .. } => "reconcile",
        }
    }

    /// The sources and syncs this job touches, as pipeline names
    /// (`source.stream` for extraction, `sync:<name>` for syncs).
    pub fn describe(&self) -> String {
        match self {
            Job::Build { selection, .. } if selection.select.is_empty() => "build".into(),
            Job::Build { selection, .. } => format!("build -s {}", selection.select.join(" ")),
            Job::Extract { streams } if streams.is_empty() => "extract (all sources)".into(),
            Job::Extract { streams } => format!("extract {}", streams.join(" ")),
            Job::Sync { names } if names.is_empty() => "sync (all syncs)".into(),
            Job::Sync { names } => format!("sync {}", names.join(" ")),
            Job::Test { selection } if selection.select.is_empty() => "test".into(),
            Job::Test { selection } => format!("test -s {}", selection.select.join(" ")),
            Job::Reconcile { sources } if sources.is_empty() => "reconcile webhooks".into(),
            Job::Reconcile { sources } => format!("reconcile {}", sources.join(" ")),
        }
    }
}

/// A finished job, as the scheduler and the alerts see it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub run_id: String,
    pub ok: bool,
    /// It ended early because a stop was asked for.
    pub stopped: bool,
    pub error: Option<String>,
    pub stages: Vec<Stage>,
    /// Rows extracted plus records written to a vendor.
    pub rows_moved: u64,
    /// Rows attempted (extracted + quarantined, sent + rejected) and rejected.
    pub attempted: u64,
    pub rejected: u64,
    pub api_calls: u64,
    pub rate_limited: u64,
    /// A vendor refused the credentials (401/403): a person must act.
    pub auth_refused: bool,
}

impl Outcome {
    fn from_stages(run_id: String, stages: Vec<Stage>, stopped: bool) -> Outcome {
        let failed: Vec<&Stage> = stages.iter().filter(|s| s.status == "failed").collect();
        let error = (!failed.is_empty()).then(|| {
            failed
                .iter()
                .map(|s| format!("{}: {}", s.name, s.detail))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let sum = |f: fn(&Stage) -> u64| stages.iter().map(f).sum::<u64>();
        Outcome {
            ok: failed.is_empty() && !stopped,
            stopped,
            error: error.or_else(|| stopped.then(|| "stopped before it finished".to_string())),
            rows_moved: sum(|s| if s.moves { s.rows } else { 0 }),
            attempted: sum(|s| if s.moves { s.rows + s.rejected } else { 0 }),
            rejected: sum(|s| s.rejected),
            api_calls: sum(|s| s.api_calls),
            rate_limited: sum(|s| s.rate_limited),
            auth_refused: stages.iter().any(|s| s.auth_refused),
            run_id,
            stages,
        }
    }
}

/// Run `job` and record its stages in `ferry.run_stages`. A failure of the
/// job is in the outcome; `Err` is for a job that could not be recorded.
pub async fn run_job(
    project: &Project,
    lake: &Lake,
    job: &Job,
    schedule: Option<&str>,
    stop: &Stop,
) -> Result<Outcome> {
    let started_at = Utc::now();
    let outcome = match job {
        Job::Build {
            selection,
            full_refresh,
            skip_extract,
            skip_sync,
        } => {
            let opts = BuildOptions {
                threads: 4,
                full_refresh: *full_refresh,
                skip_extract: *skip_extract,
                skip_sync: *skip_sync,
                stop: stop.clone(),
                schedule: schedule.map(str::to_string),
            };
            // The build records its own stages.
            let r = build::build(project, lake.clone(), selection, &opts).await?;
            return Ok(Outcome::from_stages(r.run_id, r.stages, r.stopped));
        }
        Job::Extract { streams } => {
            let stage = extract_stage(project, lake, streams, stop).await;
            let stopped = stage.status == "stopped";
            Outcome::from_stages(RunId::new().to_string(), vec![stage], stopped)
        }
        Job::Sync { names } => {
            let names = if names.is_empty() {
                project.syncs.keys().cloned().collect()
            } else {
                names.clone()
            };
            let (stage, stopped) = sync_stage(project, lake, &names, stop).await;
            Outcome::from_stages(RunId::new().to_string(), vec![stage], stopped)
        }
        Job::Test { selection } => {
            let t = Instant::now();
            let stage = match models::test(project, lake.clone(), selection).await {
                Ok(()) => Stage::new("test", "ok", t, String::new()),
                Err(e) => Stage::failed("test", t, &e),
            };
            Outcome::from_stages(RunId::new().to_string(), vec![stage], false)
        }
        Job::Reconcile { sources } => {
            let stage = reconcile_stage(project, lake, sources).await;
            Outcome::from_stages(RunId::new().to_string(), vec![stage], false)
        }
    };
    record_stages(
        lake,
        job.command(),
        schedule,
        &outcome.run_id,
        &outcome.stages,
        started_at,
    )
    .await?;
    Ok(outcome)
}

pub(crate) async fn record_stages(
    lake: &Lake,
    command: &str,
    schedule: Option<&str>,
    run_id: &str,
    stages: &[Stage],
    started_at: chrono::DateTime<Utc>,
) -> Result<()> {
    let rows: Vec<StageRow> = stages
        .iter()
        .map(|s| StageRow {
            run_id: run_id.to_string(),
            command: command.to_string(),
            schedule: schedule.map(str::to_string),
            stage: s.name.to_string(),
            status: s.status.to_string(),
            seconds: s.seconds,
            detail: s.detail.clone(),
            rows: s.rows as i64,
            rejected: s.rejected as i64,
            api_calls: s.api_calls as i64,
            rate_limited: s.rate_limited as i64,
            started_at: tables::ts(started_at),
        })
        .collect();
    tables::append(
        lake,
        tables::RUN_STAGES,
        tables::run_stages_schema(),
        run_id,
        &rows,
    )
    .await
}

/// Whether an error is a vendor refusing the credentials.
fn refused_credentials(e: &Error) -> bool {
    e.to_string().contains(crate::http::REFUSED_CREDENTIALS)
}

/// The extract stage: every chosen stream, figures summed; a stop is
/// honoured between streams. A failed stream fails the stage after the
/// others ran.
pub(crate) async fn extract_stage(
    project: &Project,
    lake: &Lake,
    streams: &[String],
    stop: &Stop,
) -> Stage {
    let t = Instant::now();
    console::line("== extract");
    let mut figures = Vec::new();
    let (result, calls, limited) = crate::metrics::counting(crate::extract::extract_until(
        project,
        lake,
        streams,
        |s| {
            console::line(stream_line(s));
            if s.error.is_none() {
                crate::metrics::extracted(&s.stream, s.rows, s.quarantined);
                crate::metrics::last_success(
                    &format!("stream:{}", s.stream),
                    Utc::now().timestamp_millis() as f64 / 1000.0,
                );
            }
            figures.push(PipelineFigures {
                pipeline: format!("stream:{}", s.stream),
                attempted: s.rows + s.quarantined,
                rejected: s.quarantined,
                run_id: None,
            });
        },
        || stop.requested(),
    ))
    .await;
    let mut stopped_early = false;
    let mut stage = match result {
        Ok(x) => {
            stopped_early = x.stopped;
            let done: Vec<&crate::extract::StreamSummary> =
                x.streams.iter().filter(|s| s.error.is_none()).collect();
            let rows: u64 = x.streams.iter().map(|s| s.rows).sum();
            let mut detail = format!(
                "{} rows from {}",
                console::thousands(rows),
                count(done.len(), "stream")
            );
            let rejects = rejects_detail(&x.streams);
            if !rejects.is_empty() {
                detail.push_str(&format!("; {rejects}"));
            }
            let mut st = Stage::new("extract", "ok", t, detail);
            if !x.errors.is_empty() {
                st.status = "failed";
                st.auth_refused = x.errors.iter().any(refused_credentials);
                st.detail = x
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                for e in &x.errors {
                    console::line(format!("{} {e}", console::error_prefix()));
                }
            }
            st.rows = rows;
            st.rejected = x.streams.iter().map(|s| s.rejects()).sum();
            st.streams = x.streams;
            st
        }
        Err(e) => {
            console::line(format!("{} {e}", console::error_prefix()));
            Stage::failed("extract", t, &e)
        }
    };
    if stage.status == "ok" && stopped_early {
        stage.status = "stopped";
        stage
            .detail
            .push_str("; stopped before the remaining streams");
    }
    stage.moves = true;
    stage.pipelines = figures;
    stage.api_calls = calls;
    stage.rate_limited = limited;
    stage
}

/// One line per stream, as `ferry extract` and `ferry build` print it.
pub fn stream_line(s: &crate::extract::StreamSummary) -> String {
    if let Some(e) = &s.error {
        return format!(
            "{} {:<32} {:>6} {:>16}  {:.1}s  {}",
            console::status("FAILED", 6),
            s.stream,
            count(s.pages as usize, "page"),
            format!("{} rows", console::thousands(s.rows)),
            s.seconds,
            e.lines().next().unwrap_or("")
        );
    }
    let mut line = format!(
        "{} {:<32} {:>9} {:>16} {:>8.1}s",
        console::status("OK", 6),
        s.stream,
        count(s.pages as usize, "page"),
        format!("{} rows", console::thousands(s.rows)),
        s.seconds
    );
    if s.quarantined > 0 {
        line.push_str(&format!(
            "  {} quarantined",
            console::thousands(s.quarantined)
        ));
    }
    if !s.rejected_files.is_empty() {
        line.push_str(&format!(
            "  {} refused",
            count(s.rejected_files.len(), "file")
        ));
    }
    line
}

/// "12 rows quarantined, 1 file refused (see ferry.quarantine)", or empty.
pub fn rejects_detail(streams: &[crate::extract::StreamSummary]) -> String {
    let rows: u64 = streams.iter().map(|s| s.quarantined).sum();
    let files: usize = streams.iter().map(|s| s.rejected_files.len()).sum();
    let mut parts = Vec::new();
    if rows > 0 {
        parts.push(format!(
            "{} quarantined",
            count(rows as usize, "row").replacen(&rows.to_string(), &console::thousands(rows), 1)
        ));
    }
    if files > 0 {
        parts.push(format!("{} refused", count(files, "file")));
    }
    if parts.is_empty() {
        return String::new();
    }
    let mut see = Vec::new();
    if rows > 0 {
        see.push("select * from ferry.quarantine");
    }
    if files > 0 {
        see.push("select source_file, error from ferry.ingestions where status = 'rejected'");
    }
    format!("{} (see: {})", parts.join(", "), see.join("; "))
}

/// The sync stage: each named sync in turn, stopping between syncs when
/// asked. Returns the stage and whether it stopped early.
pub(crate) async fn sync_stage(
    project: &Project,
    lake: &Lake,
    names: &[String],
    stop: &Stop,
) -> (Stage, bool) {
    let t = Instant::now();
    console::line("== sync");
    let mut syncer = Syncer::new(project, lake.clone());
    let mut problems = Vec::new();
    let mut details = Vec::new();
    let mut stage = Stage::new("sync", "ok", t, String::new());
    stage.moves = true;
    let mut stopped = false;
    for name in names {
        if stop.requested() {
            stopped = true;
            details.push(format!("stopped before {name}"));
            break;
        }
        let opts = SyncOptions {
            shutdown: Some(stop.receiver()),
            ..SyncOptions::default()
        };
        match syncer.run(name, &opts).await {
            Ok(r) => {
                let c = &r.counts;
                console::line(format!(
                    "{name}: created {}, updated {}, archived {}, unchanged {}, rejected {}, failed {}, {}",
                    thousands(c.created),
                    thousands(c.updated),
                    thousands(c.archived),
                    thousands(c.unchanged),
                    thousands(c.rejected),
                    thousands(c.failed),
                    count(r.api_calls as usize, "API call")
                ));
                stage.syncs.push(r.clone());
                let sent = c.created + c.updated + c.archived;
                crate::metrics::sync_rows(
                    name,
                    &[
                        ("created", c.created),
                        ("updated", c.updated),
                        ("archived", c.archived),
                        ("unchanged", c.unchanged),
                        ("rejected", c.rejected),
                        ("failed", c.failed),
                        ("unknown", c.unknown),
                        ("not_sent", c.not_sent),
                    ],
                );
                stage.rows += sent;
                stage.pipelines.push(PipelineFigures {
                    pipeline: format!("sync:{name}"),
                    attempted: sent + c.rejected + c.failed,
                    rejected: c.rejected + c.failed,
                    run_id: Some(r.run_id.to_string()),
                });
                stage.rejected += c.rejected + c.failed;
                stage.api_calls += r.api_calls;
                stage.rate_limited += r.rate_limited;
                details.push(format!("{name}: {} sent", thousands(sent)));
                if stop.requested()
                    && r.stopped
                        .as_deref()
                        .is_some_and(|s| s.contains(crate::sync::SHUTTING_DOWN))
                {
                    // A safe point: every batch sent was committed.
                    stopped = true;
                    details.push(format!("{name}: stopped between batches"));
                    break;
                }
                if r.stopped.is_none() && c.failed == 0 {
                    crate::metrics::last_success(
                        &format!("sync:{name}"),
                        Utc::now().timestamp_millis() as f64 / 1000.0,
                    );
                }
                if r.stopped.is_some() || c.failed > 0 {
                    let why = r
                        .stopped
                        .unwrap_or_else(|| format!("{} rows failed", c.failed));
                    stage.auth_refused |= why.contains(crate::http::REFUSED_CREDENTIALS);
                    problems.push(format!("{name}: {why}"));
                }
            }
            Err(e) => {
                eprintln!("{} sync {name}: {e}", console::error_prefix());
                stage.auth_refused |= refused_credentials(&e);
                problems.push(format!("{name}: {e}"));
            }
        }
    }
    // While the syncs' accounts are alive: their daily budgets, for
    // /metrics and the budget alert.
    crate::http::publish_budgets();
    drop(syncer);
    stage.seconds = t.elapsed().as_secs_f64();
    if problems.is_empty() {
        stage.detail = details.join("; ");
        if stopped {
            stage.status = "stopped";
        }
    } else {
        stage.status = "failed";
        stage.detail = problems.join("; ");
    }
    (stage, stopped)
}

/// The reconcile stage: each webhook source's window polled from its API,
/// what the webhooks missed landed as events.
pub(crate) async fn reconcile_stage(project: &Project, lake: &Lake, sources: &[String]) -> Stage {
    let t = Instant::now();
    console::line("== reconcile");
    let names: Vec<String> = if sources.is_empty() {
        project
            .webhooks
            .values()
            .filter(|w| w.reconcile.is_some())
            .map(|w| w.name.clone())
            .collect()
    } else {
        sources.to_vec()
    };
    let mut stage = Stage::new("reconcile", "ok", t, String::new());
    stage.moves = true;
    let mut details = Vec::new();
    let mut problems = Vec::new();
    for name in &names {
        let (r, calls, limited) = crate::metrics::counting(
            crate::extract::webhook::reconcile::run(project, lake, name, Utc::now()),
        )
        .await;
        stage.api_calls += calls;
        stage.rate_limited += limited;
        match r {
            Ok(r) => {
                console::line(format!("{name}: {}", r.describe()));
                stage.rows += r.landed;
                stage.pipelines.push(PipelineFigures {
                    pipeline: format!("stream:{name}.events"),
                    attempted: r.changed,
                    rejected: 0,
                    run_id: None,
                });
                details.push(format!("{name}: {}", r.describe()));
            }
            Err(e) => {
                eprintln!("{} reconcile {name}: {e}", console::error_prefix());
                stage.auth_refused |= refused_credentials(&e);
                problems.push(format!("{name}: {e}"));
            }
        }
    }
    stage.seconds = t.elapsed().as_secs_f64();
    if problems.is_empty() {
        stage.detail = details.join("; ");
    } else {
        stage.status = "failed";
        stage.detail = problems.join("; ");
    }
    stage
}
