//! Benchmark: `ferry run` on a 20-model GTM DAG over N raw touches
//! (default 1M; FERRY_BENCH_ROWS=10000000 for 10M), and `ferry compile` on a
//! 200-model project.
//!
//! Run: `cargo bench --profile dev -- models`.
//! Prints wall time per phase and peak memory (VmHWM).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::common::peak_rss_mib;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use ferry::lake::{Lake, Lander, RunId, StreamRef};
use ferry::models::run::{self, RunOptions, Status};
use ferry::models::{Workspace, dag};
use ferry::project::{Project, StreamOptions};

const CHANNELS: [&str; 6] = [
    "paid_search",
    "organic",
    "email",
    "events",
    "partner",
    "outbound",
];
const COUNTRIES: [&str; 5] = ["US", "USA", "France", "Germany", "United Kingdom"];

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The 20 models: 4 staging, 6 intermediate, 10 marts.
fn models(dir: &Path) {
    write(
        dir,
        "ferry.toml",
        "[project]\nname = \"bench\"\n[lake]\nurl = \"lake\"\n",
    );
    let m = |name: &str, sql: &str| write(dir, &format!("models/{name}.sql"), sql);
    m(
        "stg_touches",
        "select touch_id, contact_id, lower(channel) as channel, campaign, touched_at, revenue from {{ source('web', 'touches') }} where touch_id is not null",
    );
    m(
        "stg_contacts",
        "select contact_id, lower(email) as email, country, account_id from {{ source('crm', 'contacts') }}",
    );
    m(
        "stg_accounts",
        "select account_id, min(country) as country, count(*) as contacts from {{ ref('stg_contacts') }} group by account_id",
    );
    m(
        "stg_campaigns",
        "select campaign, min(channel) as channel, count(*) as touches from {{ ref('stg_touches') }} group by campaign",
    );
    m(
        "int_touch_seq",
        "{{ config(materialized='table') }} select t.*, row_number() over (partition by contact_id order by touched_at) as seq, count(*) over (partition by contact_id) as n from {{ ref('stg_touches') }} t",
    );
    m(
        "int_first_touch",
        "select contact_id, channel, campaign from {{ ref('int_touch_seq') }} where seq = 1",
    );
    m(
        "int_last_touch",
        "select contact_id, channel, campaign from {{ ref('int_touch_seq') }} where seq = n",
    );
    m(
        "int_engagement",
        "select contact_id, count(*) as touches, sum(exp(-(1700000000 - touched_at) / 2592000.0)) as decayed from {{ ref('stg_touches') }} group by contact_id",
    );
    m(
        "int_contact_revenue",
        "select contact_id, sum(revenue) as revenue from {{ ref('stg_touches') }} group by contact_id",
    );
    m(
        "int_linear_credit",
        "select channel, sum(revenue / n) as credit from {{ ref('int_touch_seq') }} group by channel",
    );
    m(
        "contacts_scored",
        "{{ config(materialized='table') }} select c.contact_id, c.email, c.country, coalesce(e.touches, 0) as touches, coalesce(e.decayed, 0) as engagement, coalesce(e.decayed, 0) * 10 >= 5 as is_mql from {{ ref('stg_contacts') }} c left join {{ ref('int_engagement') }} e on e.contact_id = c.contact_id",
    );
    m(
        "attribution_first",
        "{{ config(materialized='table') }} select f.channel, sum(r.revenue) as revenue from {{ ref('int_first_touch') }} f join {{ ref('int_contact_revenue') }} r using (contact_id) group by f.channel",
    );
    m(
        "attribution_last",
        "{{ config(materialized='table') }} select l.channel, sum(r.revenue) as revenue from {{ ref('int_last_touch') }} l join {{ ref('int_contact_revenue') }} r using (contact_id) group by l.channel",
    );
    m(
        "attribution_linear",
        "{{ config(materialized='table') }} select * from {{ ref('int_linear_credit') }}",
    );
    m(
        "funnel_by_country",
        "{{ config(materialized='table') }} select country, count(*) as contacts, sum(case when is_mql then 1 else 0 end) as mqls from {{ ref('contacts_scored') }} group by country",
    );
    m(
        "account_rollup",
        "{{ config(materialized='table') }} select a.account_id, a.country, sum(s.engagement) as engagement, sum(case when s.is_mql then 1 else 0 end) as mqls from {{ ref('stg_accounts') }} a join {{ ref('contacts_scored') }} s on s.contact_id is not null and s.country = a.country and s.contact_id % 1000 = a.account_id % 1000 group by a.account_id, a.country",
    );
    m(
        "campaign_report",
        "{{ config(materialized='table') }} select c.campaign, c.channel, c.touches, sum(t.revenue) as revenue from {{ ref('stg_campaigns') }} c join {{ ref('stg_touches') }} t using (campaign) group by c.campaign, c.channel, c.touches",
    );
    m(
        "channel_mix",
        "{{ config(materialized='table') }} select channel, count(*) as touches, count(distinct contact_id) as contacts from {{ ref('stg_touches') }} group by channel",
    );
    m(
        "mql_list",
        "{{ config(materialized='table') }} select contact_id, email, engagement from {{ ref('contacts_scored') }} where is_mql",
    );
    m(
        "daily_touches",
        "{{ config(materialized='table') }} select touched_at / 86400 as day, count(*) as touches from {{ ref('stg_touches') }} group by 1",
    );
}

fn touches(start: i64, n: usize, contacts: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("touch_id", DataType::Int64, false),
        Field::new("contact_id", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("campaign", DataType::Utf8, false),
        Field::new("touched_at", DataType::Int64, false),
        Field::new("revenue", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Int64Array::from(
            ids.iter()
                .map(|i| (i * 7919) % contacts)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| CHANNELS[(*i % 6) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| format!("cmp_{}", i % 500))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            ids.iter()
                .map(|i| 1_690_000_000 + (i % 10_000_000))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter().map(|i| (*i % 1000) as f64).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn contacts(start: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("contact_id", DataType::Int64, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("account_id", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| format!("User{i}@Example.com"))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| COUNTRIES[(*i % 5) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            ids.iter().map(|i| i / 20).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

async fn bench_run(rows: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir);
    let lake = Lake::from_url("lake", dir, &BTreeMap::new()).unwrap();
    let lander = Lander::new(lake.clone(), RunId::new());
    let n_contacts = (rows / 10).max(1) as i64;
    let t = Instant::now();
    let chunk = 100_000;
    let batches = (0..rows)
        .step_by(chunk)
        .map(|s| touches(s as i64, chunk.min(rows - s), n_contacts));
    lander
        .land_batches(
            &StreamRef::parse("web.touches").unwrap(),
            StreamOptions::default(),
            batches,
        )
        .await
        .unwrap();
    let cbatches = (0..n_contacts as usize)
        .step_by(chunk)
        .map(|s| contacts(s as i64, chunk.min(n_contacts as usize - s)));
    lander
        .land_batches(
            &StreamRef::parse("crm.contacts").unwrap(),
            StreamOptions::default(),
            cbatches,
        )
        .await
        .unwrap();
    let land_s = t.elapsed().as_secs_f64();

    let project = Project::load(dir).unwrap();
    let ws = Workspace::load(&project, &[]).unwrap();
    let selected = dag::select(&ws.project, &ws.dag, &[], &[]).unwrap();
    let ctx = ferry::engine::session(&lake).await.unwrap();
    let t = Instant::now();
    let results = run::run(
        Arc::new(ws),
        ctx,
        lake,
        selected,
        RunOptions {
            threads: 4,
            full_refresh: false,
            test_each: false,
        },
        |_| {},
    )
    .await
    .unwrap();
    let run_s = t.elapsed().as_secs_f64();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.status != Status::Success)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    println!("ferry run: 20 models over {rows} touches and {n_contacts} contacts");
    println!("  land raw (Arrow batches)  {land_s:>8.2} s");
    println!("  run (4 threads)           {run_s:>8.2} s");
    let mut slow: Vec<_> = results.iter().collect();
    slow.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    for r in slow.iter().take(3) {
        println!(
            "    slowest: {:<22} {:>6.2} s  {:>10} rows",
            r.name,
            r.seconds,
            r.rows.unwrap_or(0)
        );
    }
    println!("  peak memory (VmHWM)       {:>8.0} MiB", peak_rss_mib());
}

async fn bench_compile(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "ferry.toml",
        "[project]\nname = \"compile_bench\"\n[lake]\nurl = \"lake\"\n",
    );
    let lake = Lake::from_url("lake", dir, &BTreeMap::new()).unwrap();
    Lander::new(lake.clone(), RunId::new())
        .land_batches(
            &StreamRef::parse("web.touches").unwrap(),
            StreamOptions::default(),
            [touches(0, 10, 5)],
        )
        .await
        .unwrap();
    for i in 0..n {
        // A wide, layered DAG: each model reads one or two earlier ones.
        let sql = if i < 10 {
            "select contact_id, channel, revenue from {{ source('web', 'touches') }}".to_string()
        } else {
            format!(
                "select a.contact_id, a.channel, a.revenue + coalesce(b.revenue, 0) as revenue \
                 from {{{{ ref('m{:03}') }}}} a left join {{{{ ref('m{:03}') }}}} b on a.contact_id = b.contact_id",
                i - 10,
                i / 2
            )
        };
        write(dir, &format!("models/layer{}/m{i:03}.sql", i / 20), &sql);
    }
    let t = Instant::now();
    let project = Project::load(dir).unwrap();
    let ws = Workspace::load(&project, &[]).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let selected = dag::select(&ws.project, &ws.dag, &[], &[]).unwrap();
    let ctx = ferry::engine::session(&lake).await.unwrap();
    let t = Instant::now();
    let compiled = ws.compile(&ctx, &lake, &selected).await.unwrap();
    let plan_s = t.elapsed().as_secs_f64();
    println!("ferry compile: {} models", compiled.len());
    println!("  load + render + DAG       {:>8.1} ms", load_s * 1000.0);
    println!("  plan every model          {plan_s:>8.2} s");
    let t = Instant::now();
    let checked = ferry::run::check::check(&project, &lake, &Default::default())
        .await
        .unwrap();
    println!(
        "ferry check: {} models, {} problems in {:.2} s",
        checked.models,
        checked.findings.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = dir.join("target/docs");
    let page = ferry::run::models::docs(&project, lake.clone(), &Default::default(), &out)
        .await
        .unwrap();
    println!(
        "ferry docs: manifest and page in {:.2} s ({} KiB page)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&page)
            .map(|m| m.len() / 1024)
            .unwrap_or(0)
    );
    // The page's own first-render time in headless Chromium, when there is one.
    let dumped = std::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output();
    match dumped {
        Ok(o) if o.status.success() => {
            let dom = String::from_utf8_lossy(&o.stdout);
            let ms = dom
                .split("data-render-ms=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            println!("  page first render in Chromium {ms} ms (from the script's start)");
        }
        _ => println!("  (no chromium on PATH: page render time not measured)"),
    }
}

#[tokio::main]
pub async fn main() {
    let rows: usize = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    bench_compile(200).await;
    bench_run(rows).await;
}
