//! Benchmark: reverse sync.
//!
//! 1. Throughput: N changed rows (default 100,000; FERRY_BENCH_SYNC_ROWS)
//!    upserted to the HubSpot emulator at HubSpot's default limit of 100
//!    requests per 10 s, with the emulator as unkind as HubSpot (search lags
//!    writes, emails normalized). Reports the share of the limit's ceiling
//!    used, API calls per changed row (the floor is 1/100) and 429s seen.
//!    Then the same for companies matched by `domain` (not unique, so every
//!    batch is looked up through search, 4 requests per second), and for
//!    contacts where 1% of rows, then every row, is invalid (the calls per
//!    row that dead-lettering costs).
//!    Then Salesforce (its emulator): contacts upserted by an External ID
//!    through sObject Collections (200 a call), and leads matched by Email,
//!    which is not one (a SOQL lookup per 100 keys, then creates)
//!    (FERRY_BENCH_SF_ROWS, default 100,000). Then 1,000,000 contacts
//!    through Bulk API 2.0 jobs (FERRY_BENCH_SF_BULK_ROWS), and the
//!    break-even between Collections and Bulk from 200 to 20,000 rows with
//!    150 ms per emulated call (FERRY_BENCH_SF_BREAK_EVEN=0 skips it).
//!    Then revert and audiences on HubSpot (FERRY_BENCH_AUDIENCE_ROWS,
//!    default 10,000; 0 skips): a revertible run updating N contacts (the
//!    previous values read and recorded), `ferry sync revert` of that run,
//!    then a HubSpot list filled with the N contacts and 10% of them
//!    removed: seconds and API calls per row of each.
//! 2. Diff: the sync's diff (`sql/sync/diff.sql`, `src/sync/diff/`) of a 1M- and a 10M-row
//!    model (Parquet, as a persisted model) against a snapshot of the same
//!    size with 10% of rows changed (FERRY_BENCH_DIFF_ROWS=1000000,10000000
//!    to choose), read in one pass as a sync reads it (`diff::scan`), in a
//!    session with the engine's pool (FERRY_BENCH_MEMORY_LIMIT=1GiB sets
//!    the limit, which decides the key buckets; FERRY_BENCH_DIFF_STEADY=1
//!    diffs a model equal to the snapshot, a run where nothing changed).
//!    Peak memory is counted from the end of the setup.
//!
//! 3. Partitioned (`cargo bench --profile dev -- sync partitioned`): 1M new
//!    contacts (FERRY_BENCH_SYNC_ROWS) by 1 and by 4 workers
//!    (FERRY_BENCH_SYNC_WORKERS=1,4) under one ceiling of 4,000 requests per
//!    10 s (FERRY_BENCH_SYNC_LIMIT), the emulator in its own process:
//!    duplicates in the CRM, 429s, share of the ceiling reached.
//!
//! Run: `cargo bench --profile dev -- sync` (parts 1 and 2).

use std::time::Instant;

use crate::common::peak_rss_mib;
use ferry::lake::Lake;
use ferry::project::Project;
use ferry::sim::hubspot::store::PropertyDef;
use ferry::sim::hubspot::{self, SimConfig};
use ferry::sync::{SyncOptions, Syncer, diff};

fn model_sql(rows: u64, salt: &str) -> String {
    format!(
        "select concat('person', cast(value as varchar), '@example.com') as email, \
         cast((value * 7) % 100 as varchar) as lead_score, concat('{salt}-', cast(value % 5 as varchar)) as persona \
         from generate_series(1, {rows})"
    )
}

/// The two properties the benches' `scores` syncs write.
fn define_scores(sim: &hubspot::RunningSim, object: &str) {
    for (p, kind) in [("ferry_lead_score", "number"), ("ferry_persona", "string")] {
        sim.with_crm(|crm| {
            crm.types.get_mut(object).unwrap().define(PropertyDef {
                name: p.into(),
                label: p.into(),
                kind: kind.into(),
                field_type: "text".into(),
                has_unique_value: false,
            })
        });
    }
}

/// What a throughput run syncs.
#[derive(Clone, Copy)]
enum Case {
    /// Contacts by email (unique: upserts, no lookups).
    Contacts,
    /// Companies by domain (not unique: a search per batch, then writes).
    Companies,
    /// Contacts, one row in `n` with an invalid number.
    Bad(u64),
}

async fn throughput(rows: u64, case: Case) {
    let limit: usize = std::env::var("FERRY_BENCH_SYNC_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let inflight: usize = std::env::var("FERRY_BENCH_SYNC_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let sim = hubspot::start(
        SimConfig {
            ten_secondly: limit,
            daily: 10_000_000,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let object = match case {
        Case::Companies => "companies",
        _ => "contacts",
    };
    define_scores(&sim, object);
    let (key, sql) = match case {
        Case::Contacts => ("email", model_sql(rows, "a")),
        Case::Companies => (
            "domain",
            model_sql(rows, "a").replace(
                "concat('person', cast(value as varchar), '@example.com') as email",
                "concat('co', cast(value as varchar), '.example') as domain",
            ),
        ),
        Case::Bad(n) => (
            "email",
            model_sql(rows, "a").replace(
                "cast((value * 7) % 100 as varchar) as lead_score",
                &format!(
                    "case when value % {n} = 0 then 'not a number' else cast((value * 7) % 100 as varchar) end as lead_score"
                ),
            ),
        ),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "syncbench"

[destinations.hubspot]
type = "hubspot"
url = "{}"
token = "ferry-sim-token"
requests_per_10s = {limit}
max_in_flight = {inflight}

[syncs.scores]
model = "scores"
destination = "hubspot"
object = "{object}"
match = {{ column = "{key}", property = "{key}" }}

[syncs.scores.fields]
lead_score = "ferry_lead_score"
persona = "ferry_persona"
"#,
            sim.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/scores.sql"),
        format!("{{{{ config(materialized='view') }}}}\n{sql}\n"),
    )
    .unwrap();
    let project = Project::load(dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let start = Instant::now();
    let r = Syncer::new(&project, lake)
        .run("scores", &SyncOptions::default())
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (calls, limited) = sim.stats();
    // Ceiling: 100 requests per rolling 10 s. The fastest any client can
    // make C calls is 10 s for every full window after the first:
    // 10 * (ceil(C / 100) - 1) seconds. Searches (companies) are also held
    // to 4 per second: one per batch of 100 keys.
    let searches = match case {
        Case::Companies => rows.div_ceil(100),
        _ => 0,
    };
    let ideal = (10.0 * (calls.div_ceil(limit as u64).saturating_sub(1)) as f64)
        .max(searches.saturating_sub(4) as f64 / 4.0);
    let label = match case {
        Case::Contacts => "contacts by email".to_string(),
        Case::Companies => "companies by domain (search lookups, search lag on)".to_string(),
        Case::Bad(n) => format!("contacts, 1 row in {n} invalid"),
    };
    println!(
        "sync throughput, {label}: {rows} changed rows, {calls} API calls ({:.4} per row), {limited} 429s, \
         {secs:.1} s, {:.0} rows/s, {:.1} requests/s; the limit allows these calls in {ideal:.1} s at best: \
         {:.1}% of the ceiling; created {}, rejected {}, peak RSS {:.0} MiB",
        calls as f64 / rows as f64,
        rows as f64 / secs,
        calls as f64 / secs,
        if secs > 0.0 {
            ideal / secs * 100.0
        } else {
            0.0
        },
        r.counts.created,
        r.counts.rejected,
        peak_rss_mib()
    );
}

/// The HubSpot emulator in a child process (this bench binary with
/// `FERRY_BENCH_HS_SIM=<requests per 10 s>`), so that ferry's CPU and
/// memory are ferry's alone. Prints its address; on stdin's end, its calls,
/// 429s, the contacts it holds, the distinct emails among them and its peak
/// memory.
async fn hubspot_sim_child(limit: usize) {
    let sim = hubspot::start(
        SimConfig {
            ten_secondly: limit,
            daily: 100_000_000,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    define_scores(&sim, "contacts");
    println!("{}", sim.base_url());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
    })
    .await
    .unwrap();
    let (calls, limited) = sim.stats();
    let (held, distinct) = sim
        .with_crm(|crm| {
            let c = &crm.types["contacts"].records;
            let emails: std::collections::HashSet<&str> = c
                .values()
                .filter_map(|r| r.properties.get("email").map(String::as_str))
                .collect();
            (c.len(), emails.len())
        })
        .unwrap();
    println!("{calls} {limited} {held} {distinct} {:.0}", peak_rss_mib());
}

/// A partitioned sync: `rows` new contacts upserted by email by `workers`
/// workers under one account ceiling of `limit` requests per 10 s, the
/// emulator in its own process. Reports duplicates in the CRM, 429s, and
/// the share of the ceiling reached while sending.
async fn partitioned(rows: u64, workers: usize, limit: usize) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("sync")
        .env("FERRY_BENCH_HS_SIM", limit.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut base_url = String::new();
    out.read_line(&mut base_url).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "partitioned"

[destinations.hubspot]
type = "hubspot"
url = "{}"
token = "ferry-sim-token"
requests_per_10s = {limit}
max_in_flight = 32

[syncs.scores]
model = "scores"
destination = "hubspot"
object = "contacts"
match = {{ column = "email", property = "email" }}
workers = {workers}

[syncs.scores.fields]
lead_score = "ferry_lead_score"
persona = "ferry_persona"
"#,
            base_url.trim()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/scores.sql"),
        format!(
            "{{{{ config(materialized='view') }}}}\n{}\n",
            model_sql(rows, "a")
        ),
    )
    .unwrap();
    let project = Project::load(dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let start = Instant::now();
    let r = Syncer::new(&project, lake)
        .run("scores", &SyncOptions::default())
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    // The sending itself: from the first confirmed batch to the last.
    let ctx = ferry::engine::session(&Lake::open(&project.lake, &project.dir).unwrap())
        .await
        .unwrap();
    let b = ctx
        .sql(
            "select cast(date_part('epoch', max(at)) - date_part('epoch', min(at)) as double) \
             from ferry.sync_log",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let span = arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(b[0].column(0))
        .value(0);
    drop(child.stdin.take());
    let mut stats = String::new();
    out.read_line(&mut stats).unwrap();
    child.wait().unwrap();
    let v: Vec<f64> = stats
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let (calls, limited, held, distinct, sim_mib) = (v[0], v[1], v[2], v[3], v[4]);
    // The ceiling is `limit` calls in any rolling 10 s: the share reached
    // is the sending's call rate against limit / 10 per second.
    let share = calls / span.max(1e-9) / (limit as f64 / 10.0) * 100.0;
    println!(
        "partitioned sync, {workers} worker(s), ceiling {limit} requests/10 s: {rows} rows in {secs:.1} s \
         ({:.0} rows/s), sending {span:.1} s at {:.1} requests/s = {share:.1}% of the ceiling; {calls} calls, \
         {limited} 429s, CRM holds {held} contacts ({} duplicates), created {}; ferry peak RSS {:.0} MiB, \
         emulator {sim_mib} MiB",
        rows as f64 / secs,
        calls / span.max(1e-9),
        held - distinct,
        r.counts.created,
        peak_rss_mib()
    );
}

/// Revert and audiences on HubSpot, at its default 100 requests per 10 s.
async fn revert_and_audience(rows: u64) {
    let sim = hubspot::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    define_scores(&sim, "contacts");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "syncbench"

[destinations.hubspot]
type = "hubspot"
url = "{}"
token = "ferry-sim-token"

[syncs.scores]
model = "scores"
destination = "hubspot"
object = "contacts"
match = {{ column = "email", property = "email" }}
revertible = true

[syncs.scores.fields]
lead_score = "ferry_lead_score"
persona = "ferry_persona"

[syncs.segment]
model = "segment"
destination = "hubspot"
object = "contacts"
mode = "audience"
audience = "Bench MQLs"
match = {{ column = "email", property = "email" }}
"#,
            sim.base_url()
        ),
    )
    .unwrap();
    let write = |name: &str, sql: String| {
        std::fs::write(
            dir.join(format!("models/{name}.sql")),
            format!("{{{{ config(materialized='view') }}}}\n{sql}\n"),
        )
        .unwrap()
    };
    write("scores", model_sql(rows, "a"));
    let lake_of = |p: &Project| Lake::open(&p.lake, &p.dir).unwrap();
    let project = Project::load(dir).unwrap();
    // The contacts exist first (not measured).
    Syncer::new(&project, lake_of(&project))
        .run("scores", &SyncOptions::default())
        .await
        .unwrap();
    println!("\nrevert and audiences on HubSpot, {rows} contacts, 100 requests per 10 s:");
    println!("| step | seconds | API calls | calls per row |");
    println!("|---|---|---|---|");
    let step = |label: &str, secs: f64, calls: u64| {
        println!(
            "| {label} | {secs:.1} | {calls} | {:.4} |",
            calls as f64 / rows as f64
        )
    };
    write("scores", model_sql(rows, "b"));
    let project = Project::load(dir).unwrap();
    let before = sim.stats().0;
    let t = Instant::now();
    let update = Syncer::new(&project, lake_of(&project))
        .run("scores", &SyncOptions::default())
        .await
        .unwrap();
    step(
        "revertible update (previous values read and recorded)",
        t.elapsed().as_secs_f64(),
        sim.stats().0 - before,
    );
    let before = sim.stats().0;
    let t = Instant::now();
    let reverted = Syncer::new(&project, lake_of(&project))
        .revert(&update.run_id.to_string(), &SyncOptions::default())
        .await
        .unwrap();
    step(
        &format!("sync revert ({} restored)", reverted.counts.updated),
        t.elapsed().as_secs_f64(),
        sim.stats().0 - before,
    );
    let segment = |n: u64| {
        format!(
            "select concat('person', cast(value as varchar), '@example.com') as email from generate_series(1, {n})"
        )
    };
    for (label, n) in [
        ("audience: every contact added to the list", rows),
        ("audience: 10% removed", rows - rows / 10),
    ] {
        write("segment", segment(n));
        let project = Project::load(dir).unwrap();
        let before = sim.stats().0;
        let t = Instant::now();
        let r = Syncer::new(&project, lake_of(&project))
            .run("segment", &SyncOptions::default())
            .await
            .unwrap();
        step(
            &format!(
                "{label} (added {}, removed {})",
                r.counts.created, r.counts.archived
            ),
            t.elapsed().as_secs_f64(),
            sim.stats().0 - before,
        );
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
}

/// Salesforce: contacts by the External ID `Ferry_Email__c` (upserts), or
/// leads by `Email` (lookups, then creates).
/// How a Salesforce run sends.
#[derive(Clone, Copy, PartialEq)]
enum SfPath {
    Collections,
    Bulk,
}

/// The Salesforce emulator for the benches, in a child process (this bench
/// binary with `FERRY_BENCH_SF_SIM=<latency ms>`), so that ferry's peak
/// memory is ferry's alone. It prints its address, then on stdin's end its
/// API calls, Bulk jobs, bulk batches and peak memory.
async fn salesforce_sim_child(latency_ms: u64) {
    use ferry::sim::salesforce::{self as sf, FieldDef};
    let sim = sf::start(
        sf::SimConfig {
            daily: 10_000_000,
            faults: sf::Faults {
                slow: if latency_ms > 0 { 1.0 } else { 0.0 },
                slow_ms: latency_ms,
                ..sf::Faults::default()
            },
            ..sf::SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.with_org(|org| {
        let c = org.object_mut("Contact").unwrap();
        c.define(FieldDef {
            external_id: true,
            unique: true,
            ..FieldDef::new("Ferry_Email__c", "email")
        });
        c.define(FieldDef::new("Ferry_Persona__c", "string"));
        let l = org.object_mut("Lead").unwrap();
        l.define(FieldDef::new("Ferry_Persona__c", "string"));
        let mut company = l.field("Company").unwrap().clone();
        company.required = false;
        l.define(company);
    });
    println!("{}", sim.base_url());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
    })
    .await
    .unwrap();
    let (calls, logins) = sim.stats();
    println!(
        "{calls} {logins} {} {} {:.0}",
        sim.job_states().len(),
        sim.bulk_batches().1,
        peak_rss_mib()
    );
}

/// One Salesforce sync of `rows` changed rows; `latency_ms` delays every
/// emulated call (a WAN round trip). Returns (API calls, seconds).
async fn salesforce_throughput(
    rows: u64,
    by_external_id: bool,
    path: SfPath,
    latency_ms: u64,
) -> (u64, f64) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("sync")
        .env("FERRY_BENCH_SF_SIM", latency_ms.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut base_url = String::new();
    out.read_line(&mut base_url).unwrap();
    let base_url = base_url.trim().to_string();
    let (object, key) = if by_external_id {
        ("Contact", "Ferry_Email__c")
    } else {
        ("Lead", "Email")
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "sfbench"

[destinations.sf]
type = "salesforce"
url = "{}"
bulk_threshold = {}

[destinations.sf.oauth]
client_id = "ferry-sim-client"
client_secret = "ferry-sim-secret"
refresh_token = "ferry-sim-refresh"

[syncs.scores]
model = "scores"
destination = "sf"
object = "{object}"
match = {{ column = "email", property = "{key}" }}

[syncs.scores.fields]
lead_score = "Ferry_Lead_Score__c"
persona = "LastName"
"#,
            base_url,
            if path == SfPath::Bulk { 1 } else { usize::MAX }
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/scores.sql"),
        format!(
            "{{{{ config(materialized='view') }}}}\n{}\n",
            model_sql(rows, "a")
        ),
    )
    .unwrap();
    let project = Project::load(dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let start = Instant::now();
    let r = Syncer::new(&project, lake)
        .run("scores", &SyncOptions::default())
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(child.stdin.take());
    let mut stats = String::new();
    out.read_line(&mut stats).unwrap();
    child.wait().unwrap();
    let stats: Vec<f64> = stats
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [calls, logins, jobs, batches, sim_rss] = stats[..] else {
        panic!("the emulator did not report its stats");
    };
    let calls = calls as u64;
    println!(
        "sync throughput, Salesforce {object} by {key} ({}{}): {rows} changed rows, {calls} API calls \
         ({:.4} per row), {jobs} Bulk job(s), {batches} bulk batch(es), {logins} login(s), {secs:.1} s, {:.0} rows/s; \
         created {}, rejected {}, ferry's peak RSS {:.0} MiB (the emulator's {sim_rss:.0} MiB)",
        match (path, by_external_id) {
            (SfPath::Bulk, _) => "Bulk API 2.0 upserts",
            (SfPath::Collections, true) => "Collections upserts",
            (SfPath::Collections, false) => "SOQL lookups, then Collections creates",
        },
        if latency_ms > 0 {
            format!(", {latency_ms} ms per call")
        } else {
            String::new()
        },
        calls as f64 / rows as f64,
        rows as f64 / secs,
        r.counts.created,
        r.counts.rejected,
        peak_rss_mib()
    );
    (calls, secs)
}

/// Collections against Bulk at growing run sizes, with a WAN-like latency
/// per call: where Bulk starts costing fewer calls, and fewer seconds.
async fn salesforce_break_even(latency_ms: u64) {
    let mut calls_even = None;
    let mut time_even = None;
    for n in [200u64, 500, 1_000, 2_000, 5_000, 10_000, 20_000] {
        let (cc, cs) = salesforce_throughput(n, true, SfPath::Collections, latency_ms).await;
        let (bc, bs) = salesforce_throughput(n, true, SfPath::Bulk, latency_ms).await;
        if bc <= cc {
            calls_even.get_or_insert(n);
        }
        if bs <= cs {
            time_even.get_or_insert(n);
        }
    }
    println!(
        "Salesforce break-even ({latency_ms} ms per call): Bulk uses no more calls than Collections from {} rows, and no more time from {} rows",
        calls_even.map_or("beyond 20000".into(), |n| n.to_string()),
        time_even.map_or("beyond 20000".into(), |n| n.to_string()),
    );
}

async fn diff_time(rows: u64) {
    let tmp = tempfile::tempdir().unwrap();
    // The engine's memory pool and disk manager, as a sync's session has
    // (FERRY_BENCH_MEMORY_LIMIT bounds it).
    if let Ok(limit) = std::env::var("FERRY_BENCH_MEMORY_LIMIT") {
        let settings =
            ferry::engine::memory::EngineSettings::resolve(Some(&limit), None, None, None, None)
                .unwrap_or_else(|(k, e)| panic!("FERRY_BENCH_MEMORY_LIMIT: {k}: {e}"));
        let _ = ferry::engine::memory::configure(settings);
    }
    let config = ferry::engine::session_config();
    let ctx = datafusion::prelude::SessionContext::new_with_config_rt(
        config,
        ferry::engine::memory::runtime().unwrap(),
    );
    ferry::engine::functions::register(&ctx);
    // The snapshot: what a first run of version "a" confirmed, with the
    // payload each record was sent (the log's JSON of its properties).
    ctx.register_table(
        "v0",
        ctx.sql(&model_sql(rows, "a")).await.unwrap().into_view(),
    )
    .unwrap();
    let cols = ["lead_score".to_string(), "persona".to_string()];
    let first = diff::model_rows_sql("v0", "email", true, &cols).unwrap();
    let snap_dir = tmp.path().join("snap");
    ctx.sql(&format!(
        "select _key, _hash, cast(concat('id', _key) as varchar) as _crm_id, true as _created, \
         concat('{{\"email\":\"', _key, '\",\"lead_score\":\"', _v0, '\",\"persona\":\"', _v1, '\"}}') as _payload \
         from ({first})"
    ))
    .await
    .unwrap()
    .write_parquet(
        snap_dir.to_str().unwrap(),
        datafusion::dataframe::DataFrameWriteOptions::new(),
        None,
    )
    .await
    .unwrap();
    ctx.register_parquet("snap", snap_dir.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    // Version "b": every tenth row changes, 1% of rows left, 1% are new
    // (with FERRY_BENCH_DIFF_STEADY=1, version "a" again: a run where
    // nothing changed). Written as Parquet, as a persisted model is: the
    // diff reads it once per key bucket.
    let model_dir = tmp.path().join("model");
    let model = if std::env::var("FERRY_BENCH_DIFF_STEADY").is_ok_and(|v| v == "1") {
        model_sql(rows, "a")
    } else {
        format!(
            "select concat('person', cast(value as varchar), '@example.com') as email, \
             cast((value * 7) % 100 as varchar) as lead_score, \
             case when value % 10 = 0 then 'changed' else concat('a-', cast(value % 5 as varchar)) end as persona \
             from generate_series(1, {rows}) where value % 100 <> 55 \
             union all select concat('new', cast(value as varchar), '@example.com'), '1', 'x' \
             from generate_series(1, {})",
            rows / 100
        )
    };
    ctx.sql(&model)
        .await
        .unwrap()
        .write_parquet(
            model_dir.to_str().unwrap(),
            datafusion::dataframe::DataFrameWriteOptions::new(),
            None,
        )
        .await
        .unwrap();
    ctx.register_parquet("v1", model_dir.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    // What a sync registers: the snapshot as a view (its SQL filters the
    // confirmed rows, so its rows are counted, not read from statistics),
    // then the diff's plan: the counts and the key buckets under the
    // engine's memory limit.
    ctx.register_table(
        diff::SNAPSHOT,
        ctx.sql("select * from snap where _key is not null")
            .await
            .unwrap()
            .into_view(),
    )
    .unwrap();
    let base_mib = crate::common::reset_peak_rss();
    let start = Instant::now();
    let plan = diff::plan(&ctx, "v1", "email", true, &cols).await.unwrap();
    let plan_secs = start.elapsed().as_secs_f64();
    let buckets = plan.parts.len();
    // What a sync run does: one pass that counts every row and decodes the
    // rows to send (`diff::scan`).
    let start = Instant::now();
    let mut pending = 0usize;
    let tally = diff::scan(
        &ctx,
        &plan,
        || false,
        |_| {
            pending += 1;
            Ok(())
        },
    )
    .await
    .unwrap()
    .expect("never stopped");
    let secs = start.elapsed().as_secs_f64();
    let counts = [
        diff::DiffOp::Add,
        diff::DiffOp::Change,
        diff::DiffOp::Unchanged,
        diff::DiffOp::Remove,
        diff::DiffOp::Reject,
    ]
    .map(|op| format!("{op:?} {}", tally.count(op)))
    .join(", ");
    println!(
        "sync diff: {rows} model rows vs {rows}-row snapshot in {buckets} key bucket(s): planned (rows counted) in {plan_secs:.2} s, \
         then {secs:.2} s for the counts and {pending} rows to send ({:.0} model rows/s), peak RSS {:.0} MiB (from {base_mib:.0} MiB held after the setup)\n  {counts}",
        rows as f64 / secs,
        peak_rss_mib()
    );
}

#[tokio::main]
pub async fn main() {
    if let Ok(latency) = std::env::var("FERRY_BENCH_SF_SIM") {
        salesforce_sim_child(latency.parse().unwrap_or(0)).await;
        return;
    }
    if let Ok(limit) = std::env::var("FERRY_BENCH_HS_SIM") {
        hubspot_sim_child(limit.parse().unwrap_or(100)).await;
        return;
    }
    if crate::common::parts().iter().any(|p| p == "partitioned") {
        let rows = std::env::var("FERRY_BENCH_SYNC_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let limit = std::env::var("FERRY_BENCH_SYNC_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4_000);
        let workers: Vec<usize> = std::env::var("FERRY_BENCH_SYNC_WORKERS")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 4]);
        for w in workers {
            partitioned(rows, w, limit).await;
        }
        return;
    }
    let rows: u64 = std::env::var("FERRY_BENCH_SYNC_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let diffs: Vec<u64> = std::env::var("FERRY_BENCH_DIFF_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000]);
    for n in diffs {
        diff_time(n).await;
    }
    if rows > 0 {
        throughput(rows, Case::Contacts).await;
        throughput(rows, Case::Companies).await;
        throughput(rows / 10, Case::Bad(100)).await;
        throughput(rows / 10, Case::Bad(1)).await;
    }
    let audience_rows: u64 = std::env::var("FERRY_BENCH_AUDIENCE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if audience_rows > 0 {
        revert_and_audience(audience_rows).await;
    }
    let sf_rows: u64 = std::env::var("FERRY_BENCH_SF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if sf_rows > 0 {
        salesforce_throughput(sf_rows, true, SfPath::Collections, 0).await;
        salesforce_throughput(sf_rows, false, SfPath::Collections, 0).await;
    }
    let bulk_rows: u64 = std::env::var("FERRY_BENCH_SF_BULK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if bulk_rows > 0 {
        salesforce_throughput(bulk_rows, true, SfPath::Bulk, 0).await;
    }
    if std::env::var("FERRY_BENCH_SF_BREAK_EVEN").map_or(true, |v| v != "0") {
        salesforce_break_even(150).await;
    }
}
