//! Benchmark: running unattended.
//!
//! 1. **The health page on a long history.** A lake with
//!    `FERRY_BENCH_RUNS` (default 10,000) scheduled runs of history, as a
//!    deployment accumulates it: per run its stages (`ferry.run_stages`),
//!    its schedule row, a sync run (`ferry.sync_runs`) with a few
//!    dead-letter rows every 50 runs (`ferry.sync_log`), an extraction
//!    attempt per stream of three (`ferry.extract_runs`) and five model rows
//!    (`ferry.model_runs`). Times gathering and rendering the page (as `GET /`
//!    and `ferry health` do), three times, and its size.
//! 2. **The scheduler idle.** 20 schedules (cron and intervals, none due)
//!    ticked once a second for `FERRY_BENCH_IDLE_SECONDS` (default 30): CPU
//!    time used and resident memory.
//!
//! Run: `cargo bench --profile dev -- operate`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{peak_rss_mib, status_mib};
use ferry::lake::Lake;
use ferry::lake::tables;
use ferry::project::Project;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

async fn write(
    lake: &Lake,
    table: &str,
    schema: arrow::datatypes::SchemaRef,
    name: &str,
    rows: &[Value],
) {
    tables::append(lake, table, schema, name, rows)
        .await
        .expect("write");
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    tables::ts(t)
}

async fn history(lake: &Lake, runs: usize) {
    let now = chrono::Utc::now();
    let streams = ["hubspot.contacts", "hubspot.companies", "marketing.touches"];
    for i in 0..runs {
        // One run every 5 minutes, newest last.
        let at = now - chrono::Duration::minutes(5 * (runs - i) as i64);
        let run_id = format!("{}-{:08x}", at.format("%Y%m%dT%H%M%SZ"), i);
        let failed = i % 97 == 0;
        let stages: Vec<Value> = ["extract", "seed", "run", "test", "sync"]
            .iter()
            .map(|s| {
                json!({"run_id": run_id, "command": "build", "schedule": "hourly", "stage": s,
                    "status": if failed && *s == "sync" { "failed" } else { "ok" },
                    "seconds": 0.4, "detail": format!("{s} detail"), "rows": 1200, "rejected": 3,
                    "api_calls": 14, "rate_limited": i64::from(i % 13 == 0), "started_at": ts(at)})
            })
            .collect();
        write(
            lake,
            tables::RUN_STAGES,
            tables::run_stages_schema(),
            &run_id,
            &stages,
        )
        .await;
        let sched = json!({"schedule": "hourly", "run_id": run_id, "due_at": ts(at),
            "status": if failed { "failed" } else { "success" }, "error": Value::Null,
            "rows_moved": 1200, "rejected": 3, "attempted": 1203, "api_calls": 14, "rate_limited": 0,
            "auth_refused": false, "host": "bench", "lease_generation": i, "seconds": 2.0,
            "started_at": ts(at), "finished_at": ts(at)});
        write(
            lake,
            &format!("{}/hourly", tables::SCHEDULE_RUNS),
            tables::schedule_runs_schema(),
            &run_id,
            &[sched],
        )
        .await;
        let sync = json!({"run_id": run_id, "sync": "contact_scores", "mode": "upsert",
            "status": if failed { "failed" } else { "success" }, "created": 10, "updated": 200,
            "archived": 0, "unchanged": 1800, "rejected": 3, "failed": 0, "api_calls": 4,
            "rate_limited": 0, "error": Value::Null, "seconds": 1.0, "started_at": ts(at), "finished_at": ts(at)});
        write(
            lake,
            "sync_runs/contact_scores",
            ferry::sync::state::runs_schema(),
            &run_id,
            &[sync],
        )
        .await;
        let ex: Vec<Value> = streams
            .iter()
            .map(|s| {
                let (src, st) = s.split_once('.').unwrap_or(("x", "y"));
                json!({"run_id": run_id, "source": src, "stream": st, "status": "ok", "pages": 3,
                    "rows": 400, "quarantined": 0, "rejected_files": 0, "cursor_before": Value::Null,
                    "cursor_after": Value::Null, "error": Value::Null, "error_party": Value::Null,
                    "retryable": Value::Null, "seconds": 0.2, "started_at": ts(at)})
            })
            .collect();
        write(
            lake,
            "extract_runs",
            ferry::extract::extract_runs_schema(),
            &run_id,
            &ex,
        )
        .await;
        let models: Vec<Value> = (0..5)
            .map(|m| {
                json!({"run_id": run_id, "model": format!("model_{m}"), "materialized": "table",
                    "status": "success", "rows": 1000, "seconds": 0.1, "error": Value::Null,
                    "started_at": ts(at), "finished_at": ts(at)})
            })
            .collect();
        write(
            lake,
            "model_runs",
            ferry::models::run::model_runs_schema(),
            &run_id,
            &models,
        )
        .await;
        if i % 50 == 0 {
            let dead: Vec<Value> = (0..3)
                .map(|k| {
                    json!({"run_id": run_id, "sync": "contact_scores", "key": format!("p{i}-{k}@x.io"),
                        "operation": "update", "status": "rejected", "crm_id": Value::Null, "created": false,
                        "hash": Value::Null, "payload": "{}", "error_category": "VALIDATION_ERROR",
                        "error_message": "Property values were not valid", "response": Value::Null,
                        "attempts": 1, "at": ts(at)})
                })
                .collect();
            write(
                lake,
                "sync_log/contact_scores",
                ferry::sync::state::log_schema(),
                &run_id,
                &dead,
            )
            .await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
pub async fn main() {
    let runs = env_usize("FERRY_BENCH_RUNS", 10_000);
    let idle = env_usize("FERRY_BENCH_IDLE_SECONDS", 30);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mut toml = String::from("[project]\nname = \"bench\"\n\n");
    for i in 0..10 {
        toml.push_str(&format!(
            "[schedules.cron_{i}]\ncron = \"{i} 3 * * *\"\ntimezone = \"Europe/Paris\"\nrun = \"build\"\n\n\
             [schedules.every_{i}]\nevery = \"6h\"\nrun = \"test\"\njitter_seconds = 0\n\n"
        ));
    }
    std::fs::write(dir.join("ferry.toml"), toml).expect("ferry.toml");
    let project = Project::load(dir).expect("project");
    let lake = Lake::open(&project.lake, &project.dir).expect("lake");

    println!("== health page on {runs} runs of history");
    let t = Instant::now();
    history(&lake, runs).await;
    println!(
        "  history written in {:.1}s (about {} files)",
        t.elapsed().as_secs_f64(),
        runs * 5 + runs / 50
    );
    for round in 1..=3 {
        let t = Instant::now();
        let page = ferry::operate::health::gather(&project, &lake, chrono::Utc::now())
            .await
            .expect("gather");
        let gathered = t.elapsed().as_secs_f64();
        let html = ferry::operate::health::render(&page).expect("render");
        println!(
            "  round {round}: gathered in {gathered:.2}s, rendered in {:.3}s, total {:.2}s; {} KiB, {} runs listed, {} dead-letter rows",
            t.elapsed().as_secs_f64() - gathered,
            t.elapsed().as_secs_f64(),
            html.len() / 1024,
            page.runs.len(),
            page.dead_letter_total
        );
    }
    println!("  peak memory (VmHWM) {:.0} MiB", peak_rss_mib());

    println!("== scheduler idle: 20 schedules, none due, ticked every second for {idle}s");
    let idle_lake = tempfile::tempdir().expect("temp dir");
    std::fs::copy(dir.join("ferry.toml"), idle_lake.path().join("ferry.toml")).expect("copy");
    let project = Arc::new(Project::load(idle_lake.path()).expect("project"));
    let lake = Lake::open(&project.lake, &project.dir).expect("lake");
    // Anchor the interval schedules so none is due (each fired just now).
    let scheduler = Arc::new(ferry::operate::schedule::Scheduler::new(
        project.schedules.clone(),
        lake.clone(),
        Arc::new(ferry::operate::schedule::RouteRunner {
            project: project.clone(),
            lake: lake.clone(),
        }),
        Arc::new(ferry::operate::schedule::SystemClock),
    ));
    // The interval ones fire at first sight: let them run once (a test job
    // on a project without models fails fast), then measure the quiet.
    scheduler.tick().await;
    scheduler.idle().await;
    let rss_before = status_mib("VmRSS");
    let cpu0 = cpu_seconds();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(scheduler.clone().run(Duration::from_secs(1), rx));
    tokio::time::sleep(Duration::from_secs(idle as u64)).await;
    let _ = tx.send(true);
    let _ = handle.await;
    let cpu = cpu_seconds() - cpu0;
    println!(
        "  CPU {cpu:.2}s over {idle}s ({:.2}% of one core), {:.1} ms per tick; RSS {:.0} MiB (before {:.0} MiB)",
        cpu * 100.0 / idle as f64,
        cpu * 1000.0 / idle as f64,
        status_mib("VmRSS"),
        rss_before
    );
}
