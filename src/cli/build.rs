//! `ferry build`: the whole route for a project, in dependency order:
//! extract → seed → run → test → sync. Sync runs only when every stage
//! before it succeeded, so a failing error-severity test (or a failed model)
//! keeps bad data out of the CRM. One summary at the end; the build is
//! recorded in `ferry.runs` (command `build`) with its models in
//! `ferry.model_runs`.

use std::time::Instant;

use chrono::Utc;

use super::SelectArgs;
use crate::error::{Error, Result};
use crate::lake::{Lake, RunId};
use crate::models::run::{self, Status};
use crate::project::Project;
use crate::sync::{SyncOptions, Syncer};

/// One stage of a build, as the summary shows it.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub status: &'static str,
    pub seconds: f64,
    pub detail: String,
}

/// A successful build's stages.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub run_id: String,
    pub stages: Vec<Stage>,
}

pub struct BuildOptions {
    pub threads: usize,
    pub full_refresh: bool,
    pub skip_extract: bool,
    pub skip_sync: bool,
}

pub async fn build(
    project: &Project,
    lake: Lake,
    args: &SelectArgs,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    let started_at = Utc::now();
    let run_id = RunId::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut model_results = Vec::new();
    let failed = |stages: &[Stage]| stages.iter().any(|s| s.status == "failed");

    // 1. extract
    let t = Instant::now();
    if project.extract.is_empty() || opts.skip_extract {
        let why = if opts.skip_extract {
            "--skip-extract"
        } else {
            "no extraction sources"
        };
        stages.push(Stage {
            name: "extract",
            status: "skipped",
            seconds: 0.0,
            detail: why.into(),
        });
    } else {
        println!("== extract");
        let result = crate::extract::extract(project, &lake, &[], |s| {
            println!(
                "{:<32} {:>6} pages {:>10} rows {:>8.1}s",
                s.stream, s.pages, s.rows, s.seconds
            )
        })
        .await;
        match result {
            Ok(s) => {
                let rows: u64 = s.iter().map(|x| x.rows).sum();
                stages.push(Stage {
                    name: "extract",
                    status: "ok",
                    seconds: t.elapsed().as_secs_f64(),
                    detail: format!("{rows} rows from {} streams", s.len()),
                });
            }
            Err(e) => {
                eprintln!("error: {e}");
                stages.push(Stage {
                    name: "extract",
                    status: "failed",
                    seconds: t.elapsed().as_secs_f64(),
                    detail: e.to_string(),
                });
            }
        }
    }

    // 2. seed, 3. run, 4. test: the same as the commands of those names.
    let (ws, chosen) = super::models::load(project, args)?;
    let t = Instant::now();
    if ws.project.seeds.is_empty() {
        stages.push(Stage {
            name: "seed",
            status: "skipped",
            seconds: 0.0,
            detail: "no seeds".into(),
        });
    } else {
        println!("== seed");
        match super::models::seed(project, lake.clone(), args).await {
            Ok(()) => stages.push(Stage {
                name: "seed",
                status: "ok",
                seconds: t.elapsed().as_secs_f64(),
                detail: format!("{} seeds", ws.project.seeds.len()),
            }),
            Err(e) => {
                eprintln!("error: {e}");
                stages.push(Stage {
                    name: "seed",
                    status: "failed",
                    seconds: t.elapsed().as_secs_f64(),
                    detail: e.to_string(),
                });
            }
        }
    }
    let t = Instant::now();
    println!("== run");
    match super::models::run_models(project, &lake, args, opts.threads, opts.full_refresh).await {
        Ok(results) => {
            let bad = results
                .iter()
                .filter(|r| r.status != Status::Success)
                .count();
            stages.push(Stage {
                name: "run",
                status: if bad == 0 { "ok" } else { "failed" },
                seconds: t.elapsed().as_secs_f64(),
                detail: format!("{} models, {bad} failed or skipped", results.len()),
            });
            model_results = results;
        }
        Err(e) => {
            eprintln!("error: {e}");
            stages.push(Stage {
                name: "run",
                status: "failed",
                seconds: t.elapsed().as_secs_f64(),
                detail: e.to_string(),
            });
        }
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
            "(not testing {} model(s) that failed or were skipped)",
            unbuilt.len()
        );
        format!("tests of {} unbuilt model(s) not run", unbuilt.len())
    };
    match super::models::test(project, lake.clone(), &test_args).await {
        Ok(()) => stages.push(Stage {
            name: "test",
            status: "ok",
            seconds: t.elapsed().as_secs_f64(),
            detail: note,
        }),
        Err(e) => stages.push(Stage {
            name: "test",
            status: "failed",
            seconds: t.elapsed().as_secs_f64(),
            detail: e.to_string(),
        }),
    }

    // 5. sync: the syncs whose model was built (all, without --select).
    let t = Instant::now();
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
    if selected.is_empty() || opts.skip_sync {
        let why = if opts.skip_sync {
            "--skip-sync"
        } else {
            "no syncs for the selected models"
        };
        stages.push(Stage {
            name: "sync",
            status: "skipped",
            seconds: 0.0,
            detail: why.into(),
        });
    } else if failed(&stages) {
        let first = stages
            .iter()
            .find(|s| s.status == "failed")
            .map(|s| s.name)
            .unwrap_or("?");
        println!("== sync skipped: the {first} stage failed, so nothing is sent to the CRM");
        stages.push(Stage {
            name: "sync",
            status: "skipped",
            seconds: 0.0,
            detail: format!("{first} failed: nothing sent to the CRM"),
        });
    } else {
        println!("== sync");
        let mut syncer = Syncer::new(project, lake.clone());
        let mut problems = Vec::new();
        let mut details = Vec::new();
        for name in &selected {
            match syncer.run(name, &SyncOptions::default()).await {
                Ok(r) => {
                    let c = &r.counts;
                    println!(
                        "{name}: created {}, updated {}, archived {}, unchanged {}, rejected {}, failed {}, {} API calls",
                        c.created,
                        c.updated,
                        c.archived,
                        c.unchanged,
                        c.rejected,
                        c.failed,
                        r.api_calls
                    );
                    details.push(format!(
                        "{name}: {} sent",
                        c.created + c.updated + c.archived
                    ));
                    if r.stopped.is_some() || c.failed > 0 {
                        problems.push(format!(
                            "{name}: {}",
                            r.stopped
                                .unwrap_or_else(|| format!("{} rows failed", c.failed))
                        ));
                    }
                }
                Err(e) => {
                    eprintln!("error: sync {name}: {e}");
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
        stages.push(Stage {
            name: "sync",
            status: if problems.is_empty() { "ok" } else { "failed" },
            seconds: t.elapsed().as_secs_f64(),
            detail: if problems.is_empty() {
                details.join("; ")
            } else {
                problems.join("; ")
            },
        });
    }

    let ok = !failed(&stages);
    run::record_as(&lake, &run_id, "build", started_at, &model_results, ok).await?;
    println!(
        "\nbuild {run_id}: {}",
        if ok { "success" } else { "FAILED" }
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
    if ok {
        Ok(BuildReport {
            run_id: run_id.to_string(),
            stages,
        })
    } else {
        Err(Error::Input(format!(
            "the build failed at: {}",
            stages
                .iter()
                .filter(|s| s.status == "failed")
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}
